#!/usr/bin/env bash
# Side-by-side against one stock rsync daemon serving CORPUS, in one run:
#   stock `rsync -a --numeric-ids` into a plain dir, stock `rsync --link-dest` into dated
#   dirs (the original Turku storage), and `turku-storage pull` into a store;
#   initial, unchanged, and after changing ~1% of files.
# Prints wall, CPU, peak RSS, bytes on the wire (client side), bytes and inodes stored,
# daemon-side CPU, and ratios against stock rsync.
#   benches/compare-pull.sh CORPUS [WORKDIR]     (CORPUS gets ~1% of its files appended to)
set -euo pipefail
corpus=$(realpath "${1:?usage: compare-pull.sh CORPUS [WORKDIR]}")
work=${2:-$(mktemp -d /var/tmp/turku-compare-pull.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
here=$(cd "$(dirname "$0")/.." && pwd)
command -v rsync >/dev/null || { echo "rsync is required: apt-get install -y rsync" >&2; exit 1; }
(cd "$here" && cargo build --release -q -p turku-storage)
turku="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# As root the daemon would drop to `nobody`; keep root so it reads everything. A non-root
# daemon must not set uid/gid (setgroups fails).
ids=""; [ "$(id -u)" = 0 ] && ids=$'uid = root\ngid = root'
cat > "$work/rsyncd.conf" <<CONF
use chroot = false
numeric ids = yes
$ids
[corpus]
path = $corpus
read only = true
CONF
rsync --daemon --no-detach --address=127.0.0.1 --port="$port" --config="$work/rsyncd.conf" &
daemon=$!
trap 'kill $daemon 2>/dev/null' EXIT
sleep 0.5
url="rsync://127.0.0.1:$port/corpus/"

# Daemon CPU: the daemon forks one worker per connection; its reaped children's CPU shows
# in the daemon's cutime+cstime (/proc/PID/stat fields 16 and 17, in clock ticks).
daemon_cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($16+$17)/t}' "/proc/$daemon/stat"; }

measure() { # LABEL CMD... → "LABEL wall cpu rss_kib wire_bytes daemon_cpu" on fd 3
    local label=$1; shift
    # Flush what the previous tool wrote, so its writeback does not run on this one's time.
    sync
    local d0; d0=$(daemon_cpu)
    python3 - "$label" "$@" <<'PY' > "$work/last"
import re, resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
wall = time.monotonic() - t0
out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
if r.returncode not in (0, 24):
    sys.stderr.write(out); sys.exit(f"{label}: exit {r.returncode}")
u = resource.getrusage(resource.RUSAGE_CHILDREN)
wire = 0
m = re.search(r"received ([\d,]+) bytes", out)           # rsync --stats
if m: wire = int(m.group(1).replace(",", ""))
m = re.search(r"wire-read (\d+)", out)                      # turku pull
if m: wire = int(m.group(1))
print(f"{label} {wall:.3f} {u.ru_utime + u.ru_stime:.3f} {u.ru_maxrss} {wire}")
PY
    sleep 0.2
    echo "$(cat "$work/last") $(echo "$(daemon_cpu) - $d0" | bc -l)" >&3
}

usage() { echo "$(du -s -B1 "$1" | cut -f1) $(find "$1" -printf '%i\n' | sort -u | wc -l)"; }

change_one_percent() {
    python3 - "$corpus" <<'PY'
import os, sys
files = sorted(os.path.join(r, n) for r, _, ns in os.walk(sys.argv[1]) for n in ns
               if os.path.isfile(os.path.join(r, n)) and not os.path.islink(os.path.join(r, n)))
step = max(1, len(files) // max(1, len(files) // 100))
for p in files[::step]:
    with open(p, "ab") as f: f.write(b"changed by compare-pull\n")
print(f"changed {len(files[::step])} of {len(files)} files", file=sys.stderr)
PY
}

command -v bc >/dev/null || { apt-get install -y -qq bc >/dev/null; }
exec 3>"$work/results.txt"
rm -rf "$work/plain" "$work/linkdest" "$work/store"; mkdir -p "$work/linkdest"
"$turku" --store "$work/store" init >/dev/null
prev=""
for phase in initial unchanged changed; do
    [ "$phase" = changed ] && change_one_percent
    sync
    b=$( [ -d "$work/plain" ] && usage "$work/plain" || echo "0 0")
    measure "rsync-plain:$phase" rsync -a --numeric-ids --delete --stats "$url" "$work/plain/"
    echo "usage rsync-plain:$phase $b $(usage "$work/plain")" >&3
    snap="$work/linkdest/$(date +%Y%m%d-%H%M%S)-$phase"
    b=$(usage "$work/linkdest")
    measure "rsync-linkdest:$phase" rsync -a --numeric-ids --delete --stats ${prev:+--link-dest="$prev"} "$url" "$snap/"
    echo "usage rsync-linkdest:$phase $b $(usage "$work/linkdest")" >&3
    prev=$snap
    b=$(usage "$work/store")
    measure "turku-pull:$phase" "$turku" --store "$work/store" pull --machine bench --source corpus "$url"
    echo "usage turku-pull:$phase $b $(usage "$work/store")" >&3
    # Adaptive compression leaves what it could not compress in time to gc: show that cost.
    b=$(usage "$work/store")
    measure "turku-gc:$phase" "$turku" --store "$work/store" gc
    echo "usage turku-gc:$phase $b $(usage "$work/store")" >&3
done
exec 3>&-
python3 - "$work/results.txt" <<'PY'
import sys
rows, usage = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "usage": usage[f[1]] = (int(f[4]) - int(f[2]), int(f[5]) - int(f[3]))
    else: rows[f[0]] = (float(f[1]), float(f[2]), int(f[3]), int(f[4]), float(f[5]))
print(f"{'tool:phase':26} {'wall s':>8} {'cpu s':>7} {'rss MiB':>8} {'wire bytes':>12} {'daemon cpu':>10} {'+bytes':>13} {'+inodes':>8}  {'vs plain':>8} {'vs link-dest':>12}")
for phase in ["initial", "unchanged", "changed"]:
    for t in ["rsync-plain", "rsync-linkdest", "turku-pull", "turku-gc"]:
        k = f"{t}:{phase}"
        wall, cpu, rss, wire, dcpu = rows[k]
        b, i = usage[k]
        ratios = (f"{rows['rsync-plain:'+phase][0]/wall:7.2f}x {rows['rsync-linkdest:'+phase][0]/wall:11.2f}x"
                  if t != "turku-gc" else f"{'(after the backup)':>21}")
        print(f"{k:26} {wall:8.3f} {cpu:7.3f} {rss/1024:8.1f} {wire:12d} {dcpu:10.2f} {b:13d} {i:8d}  {ratios}")
    both = rows[f"turku-pull:{phase}"][0] + rows[f"turku-gc:{phase}"][0]
    print(f"{'turku pull+gc:'+phase:26} {both:8.3f} {'':7} {'':8} {'':12} {'':10} "
          f"{usage[f'turku-pull:{phase}'][0] + usage[f'turku-gc:{phase}'][0]:13d} {'':8}  "
          f"{rows['rsync-plain:'+phase][0]/both:7.2f}x {rows['rsync-linkdest:'+phase][0]/both:11.2f}x")
print("(ratios: times faster than that rsync run of the same phase; >1 means turku is faster)")
PY
echo "work directory: $work"

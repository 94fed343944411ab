#!/usr/bin/env bash
# Side-by-side: `turku-storage ingest` against stock rsync on the same tree, in one run.
#   benches/compare-ingest.sh CORPUS [WORKDIR]
# Runs, each initial / unchanged / after changing ~1% of files:
#   rsync -a into a plain directory, rsync -a --link-dest into dated directories (the classic
#   Turku storage layout), turku-storage ingest, and borg create / restic backup if installed.
# Prints wall time, CPU time, peak RSS, bytes and inodes added, and ratios against rsync.
# CORPUS is modified (about 1% of its files are rewritten); pass a copy you can spare.
set -euo pipefail
corpus=$(realpath "${1:?usage: compare-ingest.sh CORPUS [WORKDIR]}")
work=${2:-$(mktemp -d /var/tmp/turku-compare.XXXXXX)}
mkdir -p "$work"
work=$(realpath "$work")
here=$(cd "$(dirname "$0")/.." && pwd)
command -v rsync >/dev/null || { echo "rsync is required: apt-get install -y rsync" >&2; exit 1; }
(cd "$here" && cargo build --release -q -p turku-storage)
turku="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"

# measure LABEL CMD...: runs CMD, prints "LABEL wall cpu rss_kib" on fd 3.
measure() {
    local label=$1; shift
    # Flush what the previous tool wrote, so its writeback does not run on this one's time.
    sync
    python3 - "$label" "$@" <<'PY' >&3
import os, resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.monotonic() - t0
if r.returncode not in (0, 24):
    sys.stderr.write(r.stderr.decode(errors="replace"))
    sys.exit(f"{label}: exit {r.returncode}")
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{label} {wall:.3f} {u.ru_utime + u.ru_stime:.3f} {u.ru_maxrss}")
PY
}

usage() { # prints "bytes inodes" of a directory (hard links counted once)
    local bytes inodes
    bytes=$(du -s -B1 "$1" | cut -f1)
    inodes=$(find "$1" -printf '%i\n' | sort -u | wc -l)
    echo "$bytes $inodes"
}

change_one_percent() {
    python3 - "$corpus" <<'PY'
import os, sys
files = []
for root, _, names in os.walk(sys.argv[1]):
    files += [os.path.join(root, n) for n in sorted(names) if os.path.isfile(os.path.join(root, n)) and not os.path.islink(os.path.join(root, n))]
files.sort()
step = max(1, len(files) // max(1, len(files) // 100))
for path in files[::step]:
    with open(path, "ab") as f:
        f.write(b"changed by compare-ingest\n")
print(f"changed {len(files[::step])} of {len(files)} files", file=sys.stderr)
PY
}

exec 3>"$work/results.txt"
rm -rf "$work/plain" "$work/linkdest" "$work/store" "$work/borg" "$work/restic"
mkdir -p "$work/linkdest"
"$turku" --store "$work/store" init >/dev/null
have_borg=0; have_restic=0
if command -v borg >/dev/null; then have_borg=1; BORG_PASSPHRASE= borg init -q -e none "$work/borg"; fi
if command -v restic >/dev/null; then have_restic=1; RESTIC_PASSWORD=x restic init -q -r "$work/restic"; fi

prev=""
for phase in initial unchanged changed; do
    [ "$phase" = changed ] && change_one_percent
    sync
    snap="$work/linkdest/$(date +%Y%m%d-%H%M%S)-$phase"
    before_plain=$( [ -d "$work/plain" ] && usage "$work/plain" || echo "0 0")
    measure "rsync-plain:$phase" rsync -a --numeric-ids --delete "$corpus/" "$work/plain/"
    echo "usage rsync-plain:$phase $before_plain $(usage "$work/plain")" >&3
    before=$(usage "$work/linkdest")
    if [ -n "$prev" ]; then
        measure "rsync-linkdest:$phase" rsync -a --numeric-ids --delete --link-dest="$prev" "$corpus/" "$snap/"
    else
        measure "rsync-linkdest:$phase" rsync -a --numeric-ids --delete "$corpus/" "$snap/"
    fi
    echo "usage rsync-linkdest:$phase $before $(usage "$work/linkdest")" >&3
    prev=$snap
    before=$(usage "$work/store")
    measure "turku:$phase" "$turku" --store "$work/store" ingest --machine bench --source corpus "$corpus"
    echo "usage turku:$phase $before $(usage "$work/store")" >&3
    # Adaptive compression leaves what it could not compress in time to gc: show that cost.
    before=$(usage "$work/store")
    measure "turku-gc:$phase" "$turku" --store "$work/store" gc
    echo "usage turku-gc:$phase $before $(usage "$work/store")" >&3
    if [ $have_borg = 1 ]; then
        before=$(usage "$work/borg")
        BORG_PASSPHRASE= measure "borg:$phase" borg create -q "$work/borg::$phase" "$corpus"
        echo "usage borg:$phase $before $(usage "$work/borg")" >&3
    fi
    if [ $have_restic = 1 ]; then
        before=$(usage "$work/restic")
        RESTIC_PASSWORD=x measure "restic:$phase" restic -q -r "$work/restic" backup "$corpus"
        echo "usage restic:$phase $before $(usage "$work/restic")" >&3
    fi
done
exec 3>&-

python3 - "$work/results.txt" "$have_borg" "$have_restic" <<'PY'
import sys
rows, usage = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "usage":
        usage[f[1]] = (int(f[4]) - int(f[2]), int(f[5]) - int(f[3]))
    else:
        rows[f[0]] = (float(f[1]), float(f[2]), int(f[3]))
tools = ["rsync-plain", "rsync-linkdest", "turku", "turku-gc"] + (["borg"] if sys.argv[2] == "1" else []) + (["restic"] if sys.argv[3] == "1" else [])
print(f"{'tool:phase':28} {'wall s':>8} {'cpu s':>8} {'rss MiB':>8} {'+bytes':>14} {'+inodes':>8}  {'wall vs rsync-plain':>20} {'wall vs link-dest':>18}")
for phase in ["initial", "unchanged", "changed"]:
    for t in tools:
        k = f"{t}:{phase}"
        if k not in rows:
            continue
        wall, cpu, rss = rows[k]
        b, i = usage.get(k, (0, 0))
        vs_plain = rows[f"rsync-plain:{phase}"][0] / wall if wall else 0
        vs_link = rows[f"rsync-linkdest:{phase}"][0] / wall if wall else 0
        if t == "turku-gc":
            print(f"{k:28} {wall:8.3f} {cpu:8.3f} {rss/1024:8.1f} {b:14d} {i:8d}  {'(after the backup)':>20}")
            continue
        print(f"{k:28} {wall:8.3f} {cpu:8.3f} {rss/1024:8.1f} {b:14d} {i:8d}  {vs_plain:19.2f}x {vs_link:17.2f}x")
    both = rows[f"turku:{phase}"][0] + rows[f"turku-gc:{phase}"][0]
    print(f"{'turku+gc:'+phase:28} {both:8.3f} {'':8} {'':8} {usage[f'turku:{phase}'][0] + usage[f'turku-gc:{phase}'][0]:14d} {'':8}  "
          f"{rows[f'rsync-plain:{phase}'][0] / both:19.2f}x {rows[f'rsync-linkdest:{phase}'][0] / both:17.2f}x")
for t in ["borg", "restic"]:
    if t not in tools:
        print(f"{t}: not installed, skipped")
print("(ratios: how many times faster than the rsync run of the same phase; >1 means turku is faster)")
PY
echo "work directory: $work"

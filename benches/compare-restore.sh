#!/usr/bin/env bash
# Side-by-side: a restore pushed out of the store against stock rsync pushing the tree it was
# made from, into the same stock `rsync --daemon` (a writable module, as the agent's restore
# module: as root it keeps owners and chroots).
#   benches/compare-restore.sh [CORPUS] [WORKDIR]      (ROUNDS=5 by default)
# Without CORPUS it generates the ~330 MB tree compare-tunnel.sh uses. The tree is ingested
# into a fresh store (release build, then gc so the store is compressed), then in alternating
# rounds (A B, then B A):
#   initial: `turku-storage push ... rsync://127.0.0.1:P/restore/NEW/`  against
#            `rsync -aH --numeric-ids -D CORPUS/ rsync://127.0.0.1:P/restore/NEW/`
#   delta:   the same onto a copy of the tree with ~1% of its files changed (each tool finds
#            the changes against its own copy; the copy is made outside the clock).
# Each run writes into a folder no run used before; the previous one is removed and `sync`
# run before the clock starts. Prints median wall and CPU seconds (the client's; the daemon's
# receiving side is the same program for both) and "x of stock": stock's median wall over
# ours (above 1 means ours is faster), with the range of the per-round ratios.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/tunnel-lib.sh"
work=${2:-$(mktemp -d /var/tmp/turku-compare-restore.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
rounds=${ROUNDS:-5}
need rsync rsync
if [ -n "${1:-}" ]; then
    corpus=$(realpath "$1")
else
    corpus=$work/corpus
    [ -e "$work/corpus.complete" ] || { rm -rf "$corpus"; echo "generating $corpus ..." >&2
        generate_corpus "$corpus"; touch "$work/corpus.complete"; }
fi
(cd "$here" && cargo build --release -q --locked -p turku-storage)
turku="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"
echo "corpus: $corpus: $(find "$corpus" -type f | wc -l) files, $(du -s -BM --apparent-size "$corpus" | cut -f1)"

rm -rf "$work/store" "$work/out" "$work/older"
mkdir -p "$work/out"
# The destination on tmpfs (as root; DEST_TMPFS=0 keeps the work disk): an ext4 without a
# journal makes file creation right after a mass delete several times slower, which would
# time the disk's bookkeeping rather than either sender.
if [ "$(id -u)" = 0 ] && [ "${DEST_TMPFS:-1}" = 1 ]; then
    mount -t tmpfs -o size=2g tmpfs "$work/out"
    unmount_out() { umount "$work/out" 2>/dev/null || true; }
else
    unmount_out() { :; }
fi
"$turku" --store "$work/store" init >/dev/null
"$turku" --store "$work/store" ingest --machine bench --source corpus "$corpus" >/dev/null
"$turku" --store "$work/store" gc >/dev/null
# The older copy a delta restore lands on: the tree with ~1% of its files appended to.
cp -a "$corpus" "$work/older"
python3 - "$work/older" <<'PY'
import os, sys
files = sorted(os.path.join(r, n) for r, _, ns in os.walk(sys.argv[1]) for n in ns)
for p in files[::100]:
    with open(p, "ab") as f: f.write(b"older copy\n")
PY

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ids=""; [ "$(id -u)" = 0 ] && ids=$'uid = root\ngid = root\nuse chroot = yes'
[ "$(id -u)" = 0 ] || ids="use chroot = no"
cat > "$work/rsyncd.conf" <<CONF
numeric ids = yes
$ids
[restore]
path = $work/out
read only = false
CONF
rsync --daemon --no-detach --address=127.0.0.1 --port="$port" --config="$work/rsyncd.conf" &
pids+=($!)
trap 'cleanup; unmount_out' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
url="rsync://127.0.0.1:$port/restore"

# measure LABEL CMD...: runs CMD, appends "LABEL wall cpu" to results.
measure() { measure_wall_cpu "$work/results.txt" "$@"; }

fresh() { # NAME [older]: a new destination under the module, optionally holding the older copy
    rm -rf "$work/out/$1"
    [ "${2:-}" = older ] && cp -a "$work/older" "$work/out/$1"
    sync
}

run() { # TOOL
    case $1 in
        turku-initial) fresh "$1"; measure "$1" "$turku" --store "$work/store" push --machine bench --source corpus "$url/$1/" ;;
        rsync-initial) fresh "$1"; measure "$1" rsync -aH --numeric-ids -D "$corpus/" "$url/$1/" ;;
        turku-delta) fresh "$1" older; measure "$1" "$turku" --store "$work/store" push --machine bench --source corpus "$url/$1/" ;;
        rsync-delta) fresh "$1" older; measure "$1" rsync -aH --numeric-ids -D "$corpus/" "$url/$1/" ;;
    esac
}

: >"$work/results.txt"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="turku-initial rsync-initial turku-delta rsync-delta"
    else order="rsync-initial turku-initial rsync-delta turku-delta"; fi
    for tool in $order; do run "$tool"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
# The last restores must equal the tree (stock rsync judges; a dry run prints nothing).
for d in turku-initial turku-delta; do
    diff=$(rsync -ani --checksum -H --numeric-ids -D "$corpus/" "$work/out/$d/")
    [ -z "$diff" ] || { echo "$d differs from the corpus:" >&2; echo "$diff" | head >&2; exit 1; }
done
rm -rf "${work:?}/out/"*
unmount_out

python3 - "$work/results.txt" "$rounds" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, wall, cpu = line.split()
    rows.setdefault(label, []).append((float(wall), float(cpu)))
med = statistics.median
print(f"{'':14} {'wall s (median)':>16} {'client cpu s':>13}   rounds: {sys.argv[2]}")
for label in ["turku-initial", "rsync-initial", "turku-delta", "rsync-delta"]:
    print(f"{label:14} {med([w for w, _ in rows[label]]):16.3f} {med([c for _, c in rows[label]]):13.3f}")
for case in ["initial", "delta"]:
    ours, theirs = rows[f"turku-{case}"], rows[f"rsync-{case}"]
    ratio = med([w for w, _ in theirs]) / med([w for w, _ in ours])
    per_round = [t[0] / o[0] for o, t in zip(ours, theirs)]
    print(f"restore {case:8}: {ratio:.2f}x of stock rsync's speed (per round {min(per_round):.2f}-{max(per_round):.2f})")
print("(above 1x: turku is faster)")
PY
echo "work directory: $work"

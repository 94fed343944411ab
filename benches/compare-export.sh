#!/usr/bin/env bash
# Side-by-side: getting a snapshot out of the store against copying the tree it was made from.
#   benches/compare-export.sh [CORPUS] [WORKDIR]      (ROUNDS=5 by default)
# Without CORPUS it generates the ~330 MB tree compare-tunnel.sh uses (6,030 files, 481
# folders; half random, half hex text) in WORKDIR. The tree is ingested into a fresh store
# (release build), then in alternating rounds (A B, then B A):
#   `turku-storage export --to NEW_DIR`  against  `cp -a CORPUS NEW_DIR`
#   `turku-storage export --tar -`       against  `tar -cf - -C CORPUS .`  (both into `cat >/dev/null`:
#                                         GNU tar skips reading files when it sees /dev/null)
# Each run writes into a folder no run used before, and `sync` runs before the clock starts, so
# one run's writeback is not charged to the next. Nothing is deleted until the end (it needs
# ROUNDS x 2 x the corpus of space): on ext4 without a journal every create skips inodes freed
# in the last ~90 s, which made removing the last run's output before the next one cost
# either tool up to four times its time. Prints the median wall and CPU seconds of each, and
# "x of the plain tool": the plain tool's median wall over turku's (above 1 means turku is
# faster), with the range of the per-round ratios. TURKU_BIN=path uses that binary as it is.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/tunnel-lib.sh"
work=${2:-$(mktemp -d /var/tmp/turku-compare-export.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
rounds=${ROUNDS:-5}
if [ -n "${1:-}" ]; then
    corpus=$(realpath "$1")
else
    corpus=$work/corpus
    [ -e "$work/corpus.complete" ] || { rm -rf "$corpus"; echo "generating $corpus ..." >&2
        generate_corpus "$corpus"; touch "$work/corpus.complete"; }
fi
if [ -n "${TURKU_BIN:-}" ]; then
    turku=$(realpath "$TURKU_BIN")
else
    (cd "$here" && cargo build --release -q --locked -p turku-storage)
    turku="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"
fi
echo "corpus: $corpus: $(find "$corpus" -type f | wc -l) files, $(du -s -BM --apparent-size "$corpus" | cut -f1)"

rm -rf "$work/store" "$work/out"
mkdir -p "$work/out"
if [ "$(stat -f -c %T "$work")" = ext2/ext3 ]; then
    echo "waiting 95 s: inodes freed in the last 90 s make creating files slower on ext4" >&2
    sleep 95
fi
"$turku" --store "$work/store" init >/dev/null
"$turku" --store "$work/store" ingest --machine bench --source corpus "$corpus" >/dev/null 2>&1
# Export reads what gc leaves (compressed), not what adaptive compression deferred.
"$turku" --store "$work/store" gc >/dev/null
export_args=(--store "$work/store" export --machine bench --source corpus --snapshot latest)

# measure LABEL CMD...: runs CMD, appends "LABEL wall cpu" to results.
measure() { measure_wall_cpu "$work/results.txt" "$@"; }

fresh() { # TOOL ROUND: flushes, prints a new output path
    sync
    echo "$work/out/$1-$2"
}

run() { # TOOL ROUND
    local out
    case $1 in
        turku-dir) out=$(fresh "$1" "$2"); measure "$1" "$turku" "${export_args[@]}" --to "$out" ;;
        cp-a) out=$(fresh "$1" "$2"); measure "$1" cp -a "$corpus" "$out" ;;
        turku-tar) sync; measure "$1" sh -c "\"\$0\" \"\$@\" --tar - | cat >/dev/null" "$turku" "${export_args[@]}" ;;
        tar-c) sync; measure "$1" sh -c 'tar -cf - -C "$0" . | cat >/dev/null' "$corpus" ;;
    esac
}

: >"$work/results.txt"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then pairs="turku-dir cp-a turku-tar tar-c"; else pairs="cp-a turku-dir tar-c turku-tar"; fi
    for tool in $pairs; do run "$tool" "$r"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$work/out"

python3 - "$work/results.txt" "$rounds" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, wall, cpu = line.split()
    rows.setdefault(label, []).append((float(wall), float(cpu)))
med = lambda xs: statistics.median(xs)
print(f"{'':12} {'wall s (median)':>16} {'cpu s (median)':>15}   rounds: {sys.argv[2]}")
for label in ["turku-dir", "cp-a", "turku-tar", "tar-c"]:
    print(f"{label:12} {med([w for w, _ in rows[label]]):16.3f} {med([c for _, c in rows[label]]):15.3f}")
for ours, theirs, name in [("turku-dir", "cp-a", "export --to  vs cp -a "), ("turku-tar", "tar-c", "export --tar vs tar -c")]:
    ratio = med([w for w, _ in rows[theirs]]) / med([w for w, _ in rows[ours]])
    per_round = [t[0] / o[0] for o, t in zip(rows[ours], rows[theirs])]
    print(f"{name}: {ratio:.2f}x of the plain tool's speed (per round {min(per_round):.2f}-{max(per_round):.2f})")
print("(above 1x: turku is faster)")
PY
echo "work directory: $work"

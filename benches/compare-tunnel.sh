#!/usr/bin/env bash
# The whole backup path side by side, in one run, on one tree, from one agent setup: the
# original Turku storage (stock OpenSSH sshd + stock rsync --link-dest) against
# `turku-storage serve` (see tunnel-lib.sh, "the backup path side by side").
# Cases: initial (fresh destination each round), unchanged, ~1% of files changed (a
# different 1% each round). REPS rounds each (default 3), the two alternating; medians.
#   benches/compare-tunnel.sh [CORPUS [WORKDIR]]    (CORPUS gets ~1% of its files appended
#                                                     to per round; without it the default
#                                                     ~290 MB corpus is generated)
# Environment: REPS=N; SSH_ARGS="-c aes128-gcm@openssh.com" (for both sides' ssh).
# benches/gate.sh runs the same with floors on the ratios.
set -euo pipefail
source "$(dirname "$0")/tunnel-lib.sh"
reps=${REPS:-3}
work=${2:-$(mktemp -d /var/tmp/turku-compare-tunnel.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
trap cleanup EXIT
side_by_side_tools
read -r -a ssh_args <<<"${SSH_ARGS:-}"

if [ -n "${1:-}" ]; then
    corpus=$(realpath "$1")
else
    corpus=$work/corpus
    rm -rf "$corpus"
    echo "generating $corpus ..." >&2
    generate_corpus "$corpus"
fi
echo "corpus: $corpus: $(find "$corpus" -type f | wc -l) files, $(du -s -BM --apparent-size "$corpus" | cut -f1)"

start_side_by_side "$corpus" "$work"
run_side_by_side "$corpus" "$work" "$reps" "$work/results.txt" "${ssh_args[@]}"
check_last_snapshots "$corpus" "$work"
side_by_side_table "$work/results.txt"
echo "work directory: $work"

#!/usr/bin/env bash
# Peak memory of one `turku-storage pull` from a stock rsync daemon into a new store:
# the initial pull, then an unchanged re-pull, each under `/usr/bin/time -v`.
#   benches/pull-memory.sh [CORPUS_DIR [WORKDIR]]
# Without CORPUS_DIR a deterministic tree is generated (once, kept for later runs) under
# WORKDIR (default /tmp/turku-pull-memory): ~110,000 files, ~1 GB, mostly small files plus a
# few 1-30 MB ones, pseudo-random content of which about half compresses (hex text).
# Extra arguments for every pull can be given in PULL_ARGS (e.g. PULL_ARGS="--verbose");
# TURKU_BIN measures a binary built earlier instead of building the work tree (to compare
# two builds while the tree changes).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-/tmp/turku-pull-memory}
mkdir -p "$work"; work=$(realpath "$work")
command -v rsync >/dev/null || { echo "rsync is required: apt-get install -y rsync" >&2; exit 1; }
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
if [ -n "${TURKU_BIN:-}" ]; then
    turku=$(realpath "$TURKU_BIN")
else
    (cd "$here" && cargo build --release -q --locked -p turku-storage)
    turku="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"
fi

generate() { # DIR: the default corpus, the same bytes on every run
    python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(9)
SMALL, DIRS = 109_950, 1000
def content(n):
    # Half random bytes, half hex text (compresses about 2:1): a store neither compresses
    # everything away nor nothing.
    half = n // 2
    return rng.randbytes(half) + rng.randbytes((n - half + 1) // 2).hex().encode()[: n - half]
for d in range(DIRS):
    os.makedirs(os.path.join(root, f"d{d // 40:02d}", f"e{d % 40:02d}"), exist_ok=True)
for i in range(SMALL):
    d = i % DIRS
    # Mostly a few KiB, a tail up to 64 KiB: ~4.5 KiB on average.
    n = min(int(rng.lognormvariate(7.8, 1.0)), 64 * 1024)
    with open(os.path.join(root, f"d{d // 40:02d}", f"e{d % 40:02d}", f"f{i:06d}.dat"), "wb") as f:
        f.write(content(n))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for i in range(50):
    n = rng.randint(1, 30) * 1024 * 1024 if i % 5 else 1024 * 1024
    with open(os.path.join(root, "big", f"b{i:02d}.bin"), "wb") as f:
        left = n
        while left:
            step = min(left, 4 * 1024 * 1024)
            f.write(content(step))
            left -= step
PY
}

if [ -n "${1:-}" ]; then
    corpus=$(realpath "$1")
else
    corpus=$work/corpus
    if [ ! -e "$corpus/.complete" ]; then
        rm -rf "$corpus"
        echo "generating $corpus ..." >&2
        t0=$(date +%s)
        generate "$corpus"
        touch "$corpus/.complete"
        echo "generated in $(( $(date +%s) - t0 )) s" >&2
    fi
fi
echo "corpus: $corpus: $(find "$corpus" -type f | wc -l) files, $(du -s -BM --apparent-size "$corpus" | cut -f1)"

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
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.1
done
url="rsync://127.0.0.1:$port/corpus/"

store=$work/store
rm -rf "$store"
measure() { # LABEL CMD...: runs CMD under time -v, prints its peak RSS and wall time
    local label=$1; shift
    sync
    echo "+ $*" >&2
    /usr/bin/time -v -o "$work/time-$label.txt" "$@" >"$work/out-$label.txt" 2>"$work/err-$label.txt" || {
        cat "$work/err-$label.txt" >&2; echo "$label failed" >&2; exit 1; }
    local rss wall
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time-$label.txt")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time-$label.txt")
    printf '%-10s peak RSS %7.1f MiB   wall %s\n' "$label" "$(echo "$rss / 1024" | bc -l)" "$wall"
}
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
# shellcheck disable=SC2086
measure init "$turku" --store "$store" init
# shellcheck disable=SC2086
measure initial "$turku" --store "$store" pull --machine bench --source corpus ${PULL_ARGS:-} "$url"
# shellcheck disable=SC2086
measure unchanged "$turku" --store "$store" pull --machine bench --source corpus ${PULL_ARGS:-} "$url"
echo "details: $work/time-*.txt, $work/err-*.txt"

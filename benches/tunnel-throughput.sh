#!/usr/bin/env bash
# Throughput of one large-file initial backup through `turku-storage serve`, per SSH cipher
# the agent's ssh asks for (`ssh -c`: the client's preference order decides, so forcing one
# here shows what each costs). Each round starts from an empty store; the ciphers alternate.
# Prints per cipher the median wall, MB/s and the daemon's CPU seconds (user+sys) per backup.
#   benches/tunnel-throughput.sh [SIZE_MIB [WORKDIR]]     (default 1024 MiB: half random
#                                                           bytes, half hex text)
# Environment: ROUNDS (default 3); CIPHERS (space-separated; default chacha20-poly1305,
# aes128-gcm, aes256-gcm); SSH_ARGS (more ssh arguments for every run);
# TURKU_STORAGE (another turku-storage binary to serve, e.g. an experimental build).
set -euo pipefail
source "$(dirname "$0")/tunnel-lib.sh"
size_mib=${1:-1024}
rounds=${ROUNDS:-3}
ciphers=${CIPHERS:-"chacha20-poly1305@openssh.com aes128-gcm@openssh.com aes256-gcm@openssh.com"}
read -r -a ssh_args <<<"${SSH_ARGS:-}"
work=${2:-$(mktemp -d /var/tmp/turku-tunnel-throughput.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
trap cleanup EXIT
need rsync rsync
need ssh openssh-client
build_release
turku=${TURKU_STORAGE:-$turku}

src=$work/big
if [ "$(cat "$work/big.size" 2>/dev/null)" != "$size_mib" ]; then
    rm -rf "$src"; mkdir -p "$src"
    python3 - "$src/file.bin" "$size_mib" <<'PY'
import random, sys
rng = random.Random(7)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(rng.randbytes(512 * 1024) + rng.randbytes(256 * 1024).hex().encode())
PY
    echo "$size_mib" >"$work/big.size"
fi

start_coordinator "$work/coordinator"
start_storage "$work/storage"
start_agent "$work/agent" "$src"
uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
register_machine "$uuid" "$work/agent/key.pub" "$src"
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$1/stat"; }

: >"$work/results.txt"
for r in $(seq "$rounds"); do
    for c in $ciphers; do
        stop_storage; rm -rf "$storage_dir/volume/turku-store"; restart_storage
        RUST_LOG=warn "$turku_api" backup-now "$uuid" data --db "$api_db" >/dev/null
        sync
        c0=$(cpu_of "$storage_pid")
        wall=$(PING_STDERR=$work/ping.log ping_ours "$work/agent" -c "$c" "${ssh_args[@]}")
        c1=$(cpu_of "$storage_pid")
        echo "$c $wall $(echo "$c1 - $c0" | bc -l)" >>"$work/results.txt"
        printf '%-32s round %d  %7.3f s\n' "$c" "$r" "$wall" >&2
    done
done
grep -qi 'error' "$work/ping.log" && { echo "a backup reported an error:" >&2; grep -i error "$work/ping.log" >&2; exit 1; }
python3 - "$work/results.txt" "$size_mib" <<'PY'
import statistics, sys
rows, mib = {}, int(sys.argv[2])
for line in open(sys.argv[1]):
    c, wall, cpu = line.split()
    rows.setdefault(c, []).append((float(wall), float(cpu)))
print(f"{'cipher':32} {'wall s':>7} {'MB/s':>7} {'daemon cpu s':>12}   (medians of {len(next(iter(rows.values())))})")
for c, v in rows.items():
    w = statistics.median(x for x, _ in v)
    print(f"{c:32} {w:7.2f} {mib * 1.048576 / w:7.1f} {statistics.median(y for _, y in v):12.2f}")
PY
echo "work directory: $work"

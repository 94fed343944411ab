#!/usr/bin/env bash
# `turku-storage serve` under load, with the real coordinator and stock ssh/rsync agents:
#   1. no-op pings per second (connect, auth, check in with nothing due, close), back to back
#      from one agent and from PARALLEL agents at once;
#   2. the daemon's RSS with MACHINES registered machines (default 1,000, registered through
#      the coordinator's /v1 update_config, then a SIGHUP refresh), and the ping rate again;
#   3. its RSS during BACKUPS concurrent initial backups (default 8; max_backups set to match),
#      each agent with its own stock rsync daemon serving the same tree (CORPUS, or the
#      deterministic ~300 MB / 6,000-file tree compare-tunnel.sh generates).
#   benches/daemon-load.sh [CORPUS [WORKDIR]]
# Environment: MACHINES, BACKUPS, PARALLEL (default 4), SECONDS_PER_RATE (default 15).
set -euo pipefail
source "$(dirname "$0")/tunnel-lib.sh"
machines=${MACHINES:-1000}
backups=${BACKUPS:-8}
parallel=${PARALLEL:-4}
rate_seconds=${SECONDS_PER_RATE:-15}
work=${2:-$(mktemp -d /var/tmp/turku-daemon-load.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
trap cleanup EXIT
need rsync rsync
need ssh openssh-client
build_release
if [ -n "${1:-}" ]; then
    corpus=$(realpath "$1")
else
    corpus=$work/corpus
    [ -e "$work/corpus.complete" ] || { rm -rf "$corpus"; echo "generating $corpus ..." >&2
        generate_corpus "$corpus"; touch "$work/corpus.complete"; }
fi
mkdir -p "$work/tiny"; echo tiny >"$work/tiny/file"

start_coordinator "$work/coordinator"
start_storage "$work/storage" "{\"max_backups\": $backups, \"max_sessions\": 64}"
rss() { local r; r=$(rss_of "$storage_pid"); echo "VmHWM $(( ${r% *} / 1024 )) MiB, VmRSS $(( ${r#* } / 1024 )) MiB"; }
echo "idle daemon: $(rss)"

# Agents 1..BACKUPS serve the corpus; the ping agents after them back up a one-file tree
# once, so that their later pings have nothing due (daily sources).
declare -a uuids
for i in $(seq "$backups"); do
    uuids[$i]=$(python3 -c 'import uuid; print(uuid.uuid4())')
    start_agent "$work/agent$i" "$corpus"
    register_machine "${uuids[$i]}" "$work/agent$i/key.pub" "$corpus"
done
noop=()
for i in $(seq "$parallel"); do
    n=$(( backups + i ))
    uuids[$n]=$(python3 -c 'import uuid; print(uuid.uuid4())')
    start_agent "$work/agent$n" "$work/tiny"
    register_machine "${uuids[$n]}" "$work/agent$n/key.pub" "$work/tiny"
    noop+=("$n")
done
refresh_keys $(( backups + parallel ))
for n in "${noop[@]}"; do ping_ours "$work/agent$n" >/dev/null; done   # nothing due afterwards

ping_rate() { # LABEL LANES: prints pings/s over rate_seconds
    local label=$1 n=$2 j a out=()
    for j in $(seq "$n"); do
        a=$work/agent${noop[$((j - 1))]}
        python3 "$agent_py" ping-loop "$rate_seconds" 1 127.0.0.1 "$storage_port" turku-ping "$a/key" \
            "$storage_dir/known_hosts" "$(sed -n 's/.*"port": \([0-9]*\).*/\1/p' "$a/request")" \
            "$a/request" >"$work/rate-$label-$j" &
        out+=($!)
    done
    for j in "${out[@]}"; do wait "$j"; done
    python3 - "$label" "$work"/rate-"$label"-* <<'PY'
import sys
label, files = sys.argv[1], sys.argv[2:]
rows = [open(f).read().split() for f in files]
count = sum(int(r[0]) for r in rows); rate = sum(float(r[1]) for r in rows)
fails = sum(int(r[3]) for r in rows)
p50 = sorted(float(r[2]) for r in rows)[len(rows) // 2]
print(f"{label:34} {rate:6.1f} pings/s  ({count} pings, {fails} failed, median one-ping wall {p50:.0f} ms)")
PY
}

echo "--- no-op pings ($(( ${#uuids[@]} )) machines registered)"
ping_rate "sequential" 1
ping_rate "$parallel in parallel" "$parallel"
echo "after the pings: $(rss)"

echo "--- $machines more machines"
python3 "$agent_py" register-many "$api_url" "$machine_reg" "$machines" 4 "$work/registered"
read -r done_count secs failed <"$work/registered"
echo "registered $done_count machines in $secs s ($failed failed)"
refresh_keys $(( done_count + backups + parallel ))
echo "daemon knows $(( done_count + backups + parallel )) machines: $(rss)"
ping_rate "sequential, $machines more" 1
ping_rate "$parallel in parallel, $machines more" "$parallel"
echo "after the pings: $(rss)"

echo "--- $backups concurrent initial backups of $(find "$corpus" -type f | wc -l) files, $(du -s -BM --apparent-size "$corpus" | cut -f1) each"
sampler() { # the largest VmRSS seen, every 100 ms
    local max=0 r
    while kill -0 "$storage_pid" 2>/dev/null; do
        r=$(awk '/^VmRSS/ {print $2}' "/proc/$storage_pid/status" 2>/dev/null || echo 0)
        [ "${r:-0}" -gt "$max" ] && { max=$r; echo "$max" >"$work/rss-max"; }
        sleep 0.1
    done
}
echo 0 >"$work/rss-max"
sampler & sampler_pid=$!; pids+=("$sampler_pid")
t0=$(date +%s.%N)
bpids=()
for i in $(seq "$backups"); do
    RUST_LOG=warn "$turku_api" backup-now "${uuids[$i]}" data --db "$api_db" >/dev/null
    PING_STDERR=$work/backup$i.log ping_ours "$work/agent$i" >"$work/backup$i.wall" &
    bpids+=($!)
done
for p in "${bpids[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
kill "$sampler_pid" 2>/dev/null || true
echo "$backups backups in $(echo "$t1 - $t0" | bc -l | cut -c1-6) s (each: $(cat "$work"/backup*.wall | sort -n | tr '\n' ' ')s)"
for i in $(seq "$backups"); do
    grep -qi 'error\|fail' "$work/backup$i.log" && { echo "backup $i reported:" >&2; cat "$work/backup$i.log" >&2; }
done
echo "during the backups: largest VmRSS seen $(( $(cat "$work/rss-max") / 1024 )) MiB; now $(rss)"
echo "work directory: $work"

# Shared by compare-tunnel.sh and daemon-load.sh (sourced, not run): release builds, the
# coordinator, `turku-storage serve`, and an agent as the original drives a backup (its key,
# a stock `rsync --daemon` with per-session credentials, stock `ssh -R`).
# Every process started here is recorded in `pids` and killed by `cleanup` (the callers'
# EXIT trap); every wait is bounded.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
agent_py=$here/benches/tunnel_agent.py
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

need() { # COMMAND PACKAGE
    command -v "$1" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

build_release() { # NO_BUILD=1: use the release binaries as they are
    [ -n "${NO_BUILD:-}" ] || (cd "$here" && cargo build --release -q --locked -p turku-storage \
        -p turku-coordinator --bin turku-storage --bin turku-api)
    turku="${CARGO_TARGET_DIR:-$here/target}/release/turku-storage"
    turku_api="${CARGO_TARGET_DIR:-$here/target}/release/turku-api"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT [SECONDS]
    local i
    for i in $(seq $(( ${2:-30} * 10 ))); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; return 1
}

# The coordinator on its own database: sets api_url, api_db, machine_reg, storage_reg.
start_coordinator() { # DIR
    local dir=$1 port
    mkdir -p "$dir"
    port=$(free_port)
    api_db=$dir/turku.sqlite3
    rm -f "$api_db" "$api_db"-*
    RUST_LOG=warn "$turku_api" serve --listen "127.0.0.1:$port" --db "$api_db" \
        </dev/null >/dev/null 2>"$dir/serve.log" &
    pids+=($!)
    wait_port "$port"
    api_url="http://127.0.0.1:$port/v1/"
    machine_reg=$(RUST_LOG=warn "$turku_api" auth-create machine_reg --raw --db "$api_db" | tr -d '\n')
    storage_reg=$(RUST_LOG=warn "$turku_api" auth-create storage_reg --raw --db "$api_db" | tr -d '\n')
}

# `turku-storage serve` with a fresh config, volume and var dir under DIR: sets storage_port,
# storage_pid, storage_dir. EXTRA_JSON is merged over the generated keys (limits, timers).
start_storage() { # DIR [EXTRA_JSON]
    storage_dir=$1
    local extra=${2:-"{}"}
    rm -rf "$storage_dir"
    mkdir -p "$storage_dir/etc/config.d" "$storage_dir/volume" "$storage_dir/var"
    storage_port=$(free_port)
    python3 - "$storage_dir" "$storage_port" "$api_url" "$storage_reg" "$extra" <<'PY'
import json, sys
d, port, url, reg, extra = sys.argv[1:]
config = {
    "name": "bench-storage", "secret": "bench-storage-secret-0123456789",
    "api_url": url.rstrip("/"), "api_auth_name": "Storage Registrations", "api_auth_secret": reg,
    "volumes": {"primary": {"path": f"{d}/volume"}}, "var_dir": f"{d}/var", "lock_dir": d,
    "ssh_ping_host": "127.0.0.1", "ssh_ping_port": int(port), "ssh_ping_user": "turku-ping",
    "listen": f"127.0.0.1:{port}", "log_file": "",
}
config.update(json.loads(extra))
with open(f"{d}/etc/config.d/10-storage.json", "w") as f:
    json.dump(config, f, indent=2)
PY
    restart_storage
}

# Starts the daemon of the last start_storage again (same config, port and store).
restart_storage() {
    storage_port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_ping_port"])' \
        "$storage_dir/etc/config.d/10-storage.json")
    rm -f "$storage_dir/listening"
    TURKU_LOG=${TURKU_LOG:-info} "$turku" --config-dir "$storage_dir/etc" serve \
        </dev/null >"$storage_dir/listening" 2>>"$storage_dir/serve.log" &
    storage_pid=$!
    pids+=("$storage_pid")
    local i
    for i in $(seq 600); do
        grep -q '^listening on ' "$storage_dir/listening" 2>/dev/null && break
        kill -0 "$storage_pid" 2>/dev/null || { tail -20 "$storage_dir/serve.log" >&2; return 1; }
        sleep 0.1
    done
    grep -q '^listening on ' "$storage_dir/listening" || { echo "serve did not start" >&2; return 1; }
    echo "[127.0.0.1]:$storage_port $(cat "$storage_dir/var/host_keys/ssh_host_ed25519_key.pub")" \
        >"$storage_dir/known_hosts"
}

# SIGHUP, then waits (bounded) until the daemon says it knows at least MIN machines.
refresh_keys() { # MIN
    local n=0 i
    kill -HUP "$storage_pid"
    for i in $(seq 1200); do
        n=$(grep -o 'authorized keys refreshed machines=[0-9]*' "$storage_dir/serve.log" | tail -1 | cut -d= -f2)
        [ "${n:-0}" -ge "$1" ] && return 0
        sleep 0.1
    done
    echo "the daemon knows ${n:-0} machines, not $1" >&2; return 1
}

stop_storage() {
    kill "$storage_pid" 2>/dev/null || true
    wait "$storage_pid" 2>/dev/null || true
}

# An agent in DIR: its ed25519 key, a stock rsync daemon serving SOURCE_DIR as module `data`
# with fresh per-session credentials (the original agent's rsyncd.conf), and the ping
# request. Sets agent_key, agent_rsync_port, agent_request.
start_agent() { # DIR SOURCE_DIR
    local dir=$1 src=$2 user pass ids
    mkdir -p "$dir"
    [ -e "$dir/key" ] || ssh-keygen -q -t ed25519 -N '' -C turku -f "$dir/key"
    agent_key=$dir/key
    agent_rsync_port=$(free_port)
    user=$(python3 -c 'import uuid; print(uuid.uuid4())')
    pass=$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(30)))')
    ids="use chroot = no"
    [ "$(id -u)" = 0 ] && ids=$'uid = root\ngid = *'
    cat >"$dir/rsyncd.conf" <<CONF
address = 127.0.0.1
port = $agent_rsync_port
log file = /dev/null
$ids
list = false

[data]
    path = $src
    auth users = $user
    secrets file = $dir/secrets
    read only = true
CONF
    echo "$user:$pass" >"$dir/secrets"
    chmod 600 "$dir/secrets" "$dir/rsyncd.conf"
    rsync --no-detach --daemon --config="$dir/rsyncd.conf" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$agent_rsync_port"
    printf '{"verbose": true, "action": "checkin", "port": %d, "sources": {"data": {"username": "%s", "password": "%s"}}}\n.\n' \
        "$agent_rsync_port" "$user" "$pass" >"$dir/request"
    agent_request=$dir/request
}

register_machine() { # UUID PUBKEY_FILE SOURCE_PATH
    python3 "$agent_py" register "$api_url" "$machine_reg" "$2" "$1" data "$3"
}

# One ping of the agent in AGENT_DIR to our daemon; prints its wall seconds.
ping_ours() { # AGENT_DIR [SSH_ARG]...
    local dir=$1; shift
    python3 "$agent_py" ping 127.0.0.1 "$storage_port" turku-ping "$dir/key" \
        "$storage_dir/known_hosts" "$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$dir/request")" \
        "$dir/request" "$@"
}

# Peak and current RSS of PID in KiB: "VmHWM VmRSS".
rss_of() {
    awk '/^VmHWM/ {h=$2} /^VmRSS/ {r=$2} END {print h, r}' "/proc/$1/status"
}

# The default corpus: the same bytes on every run. ~300 MB in ~6,000 files: mostly small
# files of a few KiB, a tail up to 256 KiB, and 30 files of 1-16 MiB; half of every file is
# random bytes, half hex text (compresses about 2:1).
generate_corpus() { # DIR
    python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
def content(n):
    half = n // 2
    return rng.randbytes(half) + rng.randbytes((n - half + 1) // 2).hex().encode()[: n - half]
for i in range(6000):
    d = os.path.join(root, f"d{i % 60:02d}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    n = min(int(rng.lognormvariate(8.5, 1.3)), 256 * 1024)
    with open(os.path.join(d, f"f{i:05d}.dat"), "wb") as f:
        f.write(content(n))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for i in range(30):
    n = rng.randint(1, 16) * 1024 * 1024
    with open(os.path.join(root, "big", f"b{i:02d}.bin"), "wb") as f:
        left = n
        while left:
            step = min(left, 4 * 1024 * 1024)
            f.write(content(step))
            left -= step
PY
}

# Appends to ~1% of CORPUS's files, a different 1% for each ROUND.
change_one_percent() { # CORPUS ROUND
    python3 - "$1" "$2" <<'PY'
import os, sys
root, rnd = sys.argv[1], int(sys.argv[2])
files = sorted(os.path.join(r, n) for r, _, ns in os.walk(root) for n in ns
               if os.path.isfile(os.path.join(r, n)) and not os.path.islink(os.path.join(r, n)))
step = 100
picked = files[rnd % step::step]
for p in picked:
    with open(p, "ab") as f:
        f.write(b"changed by compare-tunnel round %d\n" % rnd)
print(f"changed {len(picked)} of {len(files)} files", file=sys.stderr)
PY
}

# measure_wall_cpu RESULTS LABEL CMD...: runs CMD (its output thrown away; a failure stops the
# script with its stderr) and appends "LABEL wall_seconds cpu_seconds" to RESULTS, the CPU
# being CMD's and its children's.
measure_wall_cpu() {
    local results=$1 label=$2; shift 2
    python3 - "$label" "$@" <<'PY' >>"$results"
import resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
before = resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.monotonic()
r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.monotonic() - t0
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode(errors="replace"))
    sys.exit(f"{label}: exit {r.returncode}")
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{label} {wall:.3f} {u.ru_utime + u.ru_stime - before.ru_utime - before.ru_stime:.3f}")
PY
}

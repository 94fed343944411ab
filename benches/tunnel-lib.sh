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
    # The same packages and binaries as quickstart.sh builds, so one build serves both (a
    # different selection can unify features differently and rebuild dependencies).
    [ -n "${NO_BUILD:-}" ] || (cd "$here" && cargo build --release -q --locked \
        -p turku-coordinator --bin turku-api -p turku-storage --bin turku-storage \
        -p turku-agent --bin turku-agent)
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

# The default corpus: the same bytes on every run (seed 42), ~290 MB in ~6,100 files and 150
# symlinks under ~400 directories nested up to five deep: 6,000 text files (a Zipf vocabulary:
# gzip gets ~2.6:1) of a few KiB with a tail to 512 KiB, 120 incompressible files of 16 KiB to
# 4 MiB, six large files of 12-40 MiB (text, random, and 64 KiB runs of each), empty files and
# directories, relative symlinks to files (some dangling).
generate_corpus() { # DIR
    python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
KIB, MIB = 1024, 1024 * 1024
# Text: lines drawn from a pool made of a fixed vocabulary, so it compresses as source
# code and logs do (about 3:1 with zlib), without repeating whole files.
vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 11)))
         for _ in range(3000)]
zipf = [1 / (rank + 1) for rank in range(len(vocab))]  # word frequencies as in prose
punct = [" ", " ", " ", ", ", "(", ") ", " = ", ".", ": ", "; ", " {", "}", " -> ", "\t"]
pool = []
for _ in range(40000):
    words = rng.choices(vocab, weights=zipf, k=rng.randint(1, 14))
    line = "".join(w + rng.choice(punct) for w in words)
    pool.append(("    " * rng.randint(0, 3) + line.rstrip() + "\n").encode())
def text(n):
    out, size = [], 0
    while size < n:
        chunk = rng.choices(pool, k=256)
        out.extend(chunk)
        size += sum(map(len, chunk))
    return b"".join(out)[:n]
def binary(n):
    return rng.randbytes(n)
def mixed(n):  # a database or an archive with text inside: alternate 64 KiB runs
    parts, left = [], n
    while left:
        step = min(left, 64 * KIB)
        parts.append(binary(step) if len(parts) % 2 else text(step))
        left -= step
    return b"".join(parts)
def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
# Nested directories two to five levels deep, as a home or /srv tree.
dirs = [""]
for i in range(400):
    parent = rng.choice(dirs) if len(dirs) < 8 or rng.random() < 0.7 else ""
    if parent.count("/") >= 4:
        parent = ""
    dirs.append(f"{parent}/{rng.choice(vocab)}{i}".lstrip("/"))
files = []
# Many small text files (sources, configs, mail): median ~4 KiB, a tail to 512 KiB.
for i in range(6000):
    n = min(int(rng.lognormvariate(8.3, 1.4)), 512 * KIB)
    files.append((f"{rng.choice(dirs)}/t{i:05d}.{rng.choice(['c', 'py', 'txt', 'conf', 'md', 'log'])}", text(n)))
# Incompressible files (photos, archives): 16 KiB to 4 MiB.
for i in range(120):
    n = int(rng.uniform(16 * KIB, 1 * MIB)) if i % 12 else int(rng.uniform(2 * MIB, 4 * MIB))
    files.append((f"{rng.choice(dirs)}/b{i:04d}.{rng.choice(['jpg', 'gz', 'zip'])}", binary(n)))
# A few large files: a log, a database, a disk image, a tarball.
for i, (kind, n) in enumerate([(text, 24 * MIB), (mixed, 32 * MIB), (binary, 40 * MIB),
                                (mixed, 16 * MIB), (text, 12 * MIB), (binary, 20 * MIB)]):
    files.append((f"big/{kind.__name__}{i}.img", kind(n)))
for path, data in files:
    write(os.path.join(root, path), data)
# A few empty files and empty directories.
for i in range(20):
    write(os.path.join(root, rng.choice(dirs), f"empty{i}"), b"")
    os.makedirs(os.path.join(root, "spare", f"e{i}"), exist_ok=True)
# Symlinks: relative ones to files and directories, a few dangling.
for i in range(150):
    d = rng.choice(dirs)
    os.makedirs(os.path.join(root, d), exist_ok=True)
    target = rng.choice(files)[0] if i % 10 else f"missing/{rng.choice(vocab)}"
    rel = os.path.relpath(target, d) if d else target
    os.symlink(rel, os.path.join(root, d, f"link{i}"))
PY
}

# What generate_corpus writes, as a short hash of its own text (a cache key).
corpus_fingerprint() {
    declare -f generate_corpus | sha256sum | cut -c1-16
}

# Sets `corpus` to a copy of the default corpus at DEST (rounds change files in it), made from
# the cache in CACHE_DIR, which is filled first when it lacks this generator's corpus.
copy_cached_corpus() { # CACHE_DIR DEST
    local cache=$1/corpus-$(corpus_fingerprint)
    if [ ! -e "$cache.complete" ]; then
        rm -rf "$1"/corpus-*
        mkdir -p "$1"
        echo "generating $cache ..." >&2
        generate_corpus "$cache"
        touch "$cache.complete"
    fi
    rm -rf "$2"
    cp -a "$cache" "$2"
    corpus=$2
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

# --- the backup path side by side (compare-tunnel.sh, gate.sh) ------------------------------
# original: a private stock OpenSSH sshd whose authorized_keys line forces a small script
#           doing what turku-storage-ping does: stock rsync with the original's arguments
#           (--archive --compress --numeric-ids --delete --delete-excluded, --link-dest of the
#           newest snapshot) through the reverse tunnel into a new snapshot dir, then the
#           rename, metadata and `latest` link. It skips the original's two coordinator
#           calls, which only favours the original.
# ours:     `turku-storage serve` with the real coordinator (`turku-api serve`; each backup
#           made due by `backup-now` outside the timing), pulling into its store.
# Both are driven by one agent setup (start_agent): its key, a stock `rsync --daemon`, stock
# `ssh -R P:...:P` with the request on stdin, as the original agent runs them.

# Stock sshd, rsync, ssh and the release binaries, installed or built when missing; fails
# loudly when a tool cannot be had.
side_by_side_tools() {
    need rsync rsync
    need ssh openssh-client
    need python3 python3
    [ -x /usr/sbin/sshd ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
    local tool
    for tool in rsync ssh ssh-keygen python3 /usr/sbin/sshd; do
        command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; return 1; }
    done
    build_release
}

# The original storage in DIR for the agent of start_agent, whose machine is UUID.
start_original() { # DIR UUID
    orig=$1
    orig_uuid=$2
    mkdir -p "$orig/volume" /run/sshd
    [ -e "$orig/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$orig/ssh_host_ed25519_key"
    cat >"$orig/ping.py" <<'PY'
#!/usr/bin/python3
# What turku-storage-ping does for a link-dest source, without the coordinator calls.
import datetime, json, os, subprocess, sys, uuid
volume, machine = sys.argv[1], sys.argv[2]
lines = []
for line in sys.stdin:
    if line.strip() == ".":
        break
    lines.append(line)
req = json.loads("".join(lines))
machine_dir = os.path.join(volume, machine)
os.makedirs(machine_dir, exist_ok=True)
for name, cred in req["sources"].items():
    work = os.path.join(machine_dir, name)
    snaps = os.path.join(machine_dir, name + ".snapshots")
    os.makedirs(snaps, exist_ok=True)
    latest = os.path.join(snaps, "latest")
    argv = ["rsync", "--archive", "--compress", "--numeric-ids", "--delete",
            "--delete-excluded", "--verbose"]
    base = os.readlink(latest) if os.path.islink(latest) else None
    if base:
        argv.append(f"--link-dest={snaps}/{base}")
    argv += [f"rsync://{cred['username']}@127.0.0.1:{req['port']}/{name}/", f"{work}/"]
    begin = datetime.datetime.now().astimezone().isoformat()
    r = subprocess.run(argv, env={"RSYNC_PASSWORD": cred["password"]},
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode not in (0, 24):
        sys.stderr.write(r.stderr.decode(errors="replace"))
        sys.exit(r.returncode)
    finish = datetime.datetime.now()
    snap = f"{name}_{finish:%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:4]}"
    os.rename(work, os.path.join(snaps, snap))
    with open(os.path.join(snaps, snap + ".json"), "w") as f:
        json.dump({"base": base, "name": snap, "sync_begin": begin,
                   "sync_finish": finish.astimezone().isoformat()}, f, indent=4, sort_keys=True)
    tmp = latest + ".new"
    os.symlink(snap, tmp)
    os.rename(tmp, latest)
print("Done", file=sys.stderr)
PY
    chmod 755 "$orig/ping.py"
    echo "command=\"$orig/ping.py $orig/volume $orig_uuid\",no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc $(cat "$agent_key.pub")" \
        >"$orig/authorized_keys"
    orig_port=$(free_port)
    cat >"$orig/sshd_config" <<CONF
Port $orig_port
ListenAddress 127.0.0.1
HostKey $orig/ssh_host_ed25519_key
PidFile none
UsePAM no
PermitRootLogin prohibit-password
AuthorizedKeysFile $orig/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding remote
LogLevel ERROR
CONF
    /usr/sbin/sshd -D -e -f "$orig/sshd_config" 2>>"$orig/sshd.log" &
    pids+=($!)
    wait_port "$orig_port"
    echo "[127.0.0.1]:$orig_port $(cat "$orig/ssh_host_ed25519_key.pub")" >"$orig/known_hosts"
}

# One ping of the agent to the original storage; prints its wall seconds.
ping_original() { # [SSH_ARG]...
    python3 "$agent_py" ping 127.0.0.1 "$orig_port" "$(id -un)" "$agent_key" "$orig/known_hosts" \
        "$agent_rsync_port" "$agent_request" "$@"
}

# Both storages for CORPUS under WORK, one agent machine registered with ours: sets uuid
# and everything the start_* functions set.
start_side_by_side() { # CORPUS WORK
    start_agent "$2/agent" "$1"
    uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    start_original "$2/original" "$uuid"
    start_coordinator "$2/coordinator"
    start_storage "$2/storage"
    register_machine "$uuid" "$agent_key.pub" "$1"
}

# Waits, at most 120 s, until PID has used under 2% of a CPU for 0.3 s; prints the seconds
# waited. Our daemon's GC after a backup (compressing what the adaptive mode stored raw) runs
# after the session ends and must not slow the next timed ping, the original's included.
wait_idle() { # PID
    python3 - "$1" <<'PY'
import os, sys, time
pid, tick = sys.argv[1], os.sysconf("SC_CLK_TCK")
def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
started = time.monotonic()
before = cpu_seconds()
while time.monotonic() - started < 120:
    time.sleep(0.3)
    now = cpu_seconds()
    if now - before < 0.3 * 0.02 + 1 / tick:
        break
    before = now
else:
    sys.exit(f"process {pid} still busy after 120 s")
print(f"{time.monotonic() - started:.1f}")
PY
}

# REPS rounds of each case, the two storages alternating which goes first, into RESULTS as
# "CASE ROUND ORIGINAL_S OURS_S": initial (fresh destinations each round), unchanged, and ~1%
# of CORPUS's files changed (a different 1% each round). SSH_ARG go to both sides' ssh.
run_side_by_side() { # CORPUS WORK REPS RESULTS [SSH_ARG]...
    local corpus=$1 work=$2 reps=$3 results=$4 r
    shift 4
    : >"$results"
    _ping_ours_due() {
        RUST_LOG=warn "$turku_api" backup-now "$uuid" data --db "$api_db" >/dev/null
        PING_STDERR=$work/ours-ping.log ping_ours "$work/agent" "$@"
    }
    _round() { # CASE ROUND SSH_ARG...
        local case=$1 r=$2 a b idle
        shift 2
        sync
        if [ $((r % 2)) = 0 ]; then
            a=$(ping_original "$@"); sync; b=$(_ping_ours_due "$@"); idle=$(wait_idle "$storage_pid")
        else
            b=$(_ping_ours_due "$@"); idle=$(wait_idle "$storage_pid"); sync; a=$(ping_original "$@")
        fi
        echo "$case $r $a $b" >>"$results"
        printf '%-10s round %d  original %8.3f s   turku %8.3f s (then busy %s s)\n' \
            "$case" "$r" "$a" "$b" "$idle" >&2
    }
    for r in $(seq "$reps"); do
        rm -rf "${orig:?}/volume/$uuid"
        stop_storage; rm -rf "$storage_dir/volume/turku-store"; restart_storage
        _round initial "$r" "$@"
    done
    for r in $(seq "$reps"); do _round unchanged "$r" "$@"; done
    for r in $(seq "$reps"); do change_one_percent "$corpus" "$r"; _round changed "$r" "$@"; done
}

# The last snapshot of each storage must equal CORPUS (a bench that copies nothing is fast).
check_last_snapshots() { # CORPUS WORK
    local latest snap
    latest=$(readlink "$orig/volume/$uuid/data.snapshots/latest")
    diff -r --no-dereference "$1" "$orig/volume/$uuid/data.snapshots/$latest" >/dev/null \
        || { echo "original's last snapshot differs from the tree" >&2; return 1; }
    snap=$("$turku" --store "$storage_dir/volume/turku-store" snapshots --machine "$uuid" --source data --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')
    rm -rf "$2/export"
    "$turku" --store "$storage_dir/volume/turku-store" export --machine "$uuid" --source data \
        --snapshot "$snap" --to "$2/export" >/dev/null
    diff -r --no-dereference "$1" "$2/export" >/dev/null \
        || { echo "turku's last snapshot differs from the tree" >&2; return 1; }
    rm -rf "$2/export"
    echo "both last snapshots equal the tree" >&2
}

# The medians of RESULTS (run_side_by_side) and their ratios, original / turku. With FLOORS
# and GOALS ("initial unchanged changed", e.g. "1.0 3 1.5"), a ratio under its floor is
# marked and the function returns 1.
side_by_side_table() { # RESULTS [FLOORS GOALS]
    python3 - "$@" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    case, _, a, b = line.split()
    rows.setdefault(case, []).append((float(a), float(b)))
cases = ["initial", "unchanged", "changed"]
floors = dict(zip(cases, map(float, sys.argv[2].split()))) if len(sys.argv) > 2 else {}
goals = dict(zip(cases, map(float, sys.argv[3].split()))) if len(sys.argv) > 3 else {}
gate = " floor   goal  verdict" if floors else ""
print(f"{'case':10} {'original s':>11} {'turku s':>9} {'ratio':>7}{gate}   per-round ratios"
      f" (medians of {len(rows['initial'])})")
failed = []
for case in cases:
    a = statistics.median(x for x, _ in rows[case])
    b = statistics.median(y for _, y in rows[case])
    per = " ".join(f"{x / y:.2f}" for x, y in rows[case])
    verdict = ""
    if floors:
        ok = a / b >= floors[case]
        verdict = f" {floors[case]:5.2f}x {goals[case]:5.2f}x  {'ok' if ok else 'BELOW FLOOR'}"
        if not ok:
            failed.append(case)
    print(f"{case:10} {a:11.3f} {b:9.3f} {a / b:6.2f}x{verdict}   {per}")
print("(wall time of the agent's whole ssh session; ratio = original / turku)")
if failed:
    print(f"below the floor: {' '.join(failed)}", file=sys.stderr)
    sys.exit(1)
PY
}

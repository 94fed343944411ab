#!/usr/bin/env bash
# The whole backup path side by side, in one run, on one tree, from one agent setup (its
# ed25519 key, a stock `rsync --daemon` with per-session credentials, stock `ssh -R P:...:P`
# with the request on stdin, as the original agent runs them):
#   original: a private stock OpenSSH sshd whose authorized_keys line forces a small script
#             doing what turku-storage-ping does: stock rsync with the original's arguments
#             (--archive --compress --numeric-ids --delete --delete-excluded, --link-dest of
#             the newest snapshot) through the reverse tunnel into a new snapshot dir, then
#             the rename, metadata and `latest` link. It skips the original's two
#             coordinator calls, which only favours the original.
#   ours:     `turku-storage serve` with the real coordinator (`turku-api serve`; each
#             backup made due by `backup-now` outside the timing), pulling into its store.
# Cases: initial (fresh destination each round), unchanged, ~1% of files changed (a
# different 1% each round). REPS rounds each (default 3), the two alternating; medians.
#   benches/compare-tunnel.sh [CORPUS [WORKDIR]]    (CORPUS gets ~1% of its files appended
#                                                     to per round; without it a deterministic
#                                                     ~300 MB / 6,000-file tree is generated)
# Environment: REPS=N; SSH_ARGS="-c aes128-gcm@openssh.com" (for both sides' ssh).
set -euo pipefail
source "$(dirname "$0")/tunnel-lib.sh"
reps=${REPS:-3}
work=${2:-$(mktemp -d /var/tmp/turku-compare-tunnel.XXXXXX)}
mkdir -p "$work"; work=$(realpath "$work")
trap cleanup EXIT
need rsync rsync
need ssh openssh-client
[ -x /usr/sbin/sshd ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
build_release
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

start_agent "$work/agent" "$corpus"
uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')

# --- the original: stock sshd with a forced command -------------------------------------
orig=$work/original
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
echo "command=\"$orig/ping.py $orig/volume $uuid\",no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc $(cat "$agent_key.pub")" \
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
ping_original() {
    python3 "$agent_py" ping 127.0.0.1 "$orig_port" "$(id -un)" "$agent_key" "$orig/known_hosts" \
        "$agent_rsync_port" "$agent_request" "${ssh_args[@]}"
}

# --- ours: coordinator + turku-storage serve ----------------------------------------------
start_coordinator "$work/coordinator"
start_storage "$work/storage"
register_machine "$uuid" "$agent_key.pub" "$corpus"
ping_turku() {
    RUST_LOG=warn "$turku_api" backup-now "$uuid" data --db "$api_db" >/dev/null
    PING_STDERR=$work/ours-ping.log ping_ours "$work/agent" "${ssh_args[@]}"
}
fresh_turku() { stop_storage; rm -rf "$storage_dir/volume/turku-store"; restart_storage; }
fresh_original() { rm -rf "$orig/volume/$uuid"; }

results=$work/results.txt
: >"$results"
round() { # CASE ROUND: one of each, alternating which goes first
    local case=$1 r=$2 a b
    sync
    if [ $((r % 2)) = 0 ]; then
        a=$(ping_original); sync; b=$(ping_turku)
    else
        b=$(ping_turku); sync; a=$(ping_original)
    fi
    echo "$case $r $a $b" >>"$results"
    printf '%-10s round %d  original %8.3f s   turku %8.3f s\n' "$case" "$r" "$a" "$b" >&2
}
for r in $(seq "$reps"); do
    fresh_original; fresh_turku
    round initial "$r"
done
for r in $(seq "$reps"); do round unchanged "$r"; done
for r in $(seq "$reps"); do change_one_percent "$corpus" "$r"; round changed "$r"; done

# The last snapshot of each must equal the tree (a bench that copies nothing is fast).
latest=$(readlink "$orig/volume/$uuid/data.snapshots/latest")
diff -r "$corpus" "$orig/volume/$uuid/data.snapshots/$latest" >/dev/null \
    || { echo "original's last snapshot differs from the tree" >&2; exit 1; }
snap=$("$turku" --store "$storage_dir/volume/turku-store" snapshots --machine "$uuid" --source data --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')
"$turku" --store "$storage_dir/volume/turku-store" export --machine "$uuid" --source data \
    --snapshot "$snap" --to "$work/export" >/dev/null
diff -r "$corpus" "$work/export" >/dev/null || { echo "turku's last snapshot differs from the tree" >&2; exit 1; }
rm -rf "$work/export"
echo "both last snapshots equal the tree" >&2

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    case, _, a, b = line.split()
    rows.setdefault(case, []).append((float(a), float(b)))
print(f"{'case':10} {'original s':>11} {'turku s':>9} {'faster':>7}   (medians of {len(rows['initial'])}; per-round ratios)")
for case in ["initial", "unchanged", "changed"]:
    a = statistics.median(x for x, _ in rows[case])
    b = statistics.median(y for _, y in rows[case])
    per = " ".join(f"{x / y:.2f}" for x, y in rows[case])
    print(f"{case:10} {a:11.3f} {b:9.3f} {a / b:6.2f}x   {per}")
print("(wall time of the agent's whole ssh session; 'faster' = original / turku)")
PY
echo "work directory: $work"

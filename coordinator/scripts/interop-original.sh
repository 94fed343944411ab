#!/usr/bin/env bash
# Drive the coordinator with the ORIGINAL Python turku-storage and turku-agent.
#
#   coordinator/scripts/interop-original.sh AGENT_CHECKOUT STORAGE_CHECKOUT
#
# Needs python3 with requests and PyYAML, rsync, ssh-keygen, and a built
# target/{debug,release}/turku-api (TURKU_API_BIN overrides). Checks, in order:
# storage registration (storage_update_config), machine registration with sources
# (update_config), the storage learning the machine's key, an agent check-in with nothing
# due, `backup-now`, an agent check-in that reaches the ssh step, the storage's ping
# (storage_ping_checkin, a real rsync pull from a local rsync daemon, storage_ping_source_update),
# and the agent's restore listing (agent_ping_restore). Exits non-zero on the first failure.
set -euo pipefail

agent_src=$(realpath "$1")
storage_src=$(realpath "$2")
here=$(cd "$(dirname "$0")/../.." && pwd)
api=${TURKU_API_BIN:-$here/target/release/turku-api}
[ -x "$api" ] || api=$here/target/debug/turku-api
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

export TURKU_API_DB=$work/api.sqlite3
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rsync_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sreg=$("$api" auth-create storage_reg --raw)
mreg=$("$api" auth-create machine_reg --raw)
"$api" serve --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
pids+=($!)

mkdir -p "$work"/{agent-conf/config.d,agent-conf/sources.d,agent-var,storage-conf/config.d,lock,vol,storage-var,src}
echo hello >"$work/src/a.txt"
cat >"$work/storage-conf/config.d/10.json" <<JSON
{"name": "storage1", "secret": "storagesecret", "api_url": "http://127.0.0.1:$port/v1",
 "api_auth_name": "Storage Registrations", "api_auth_secret": "$sreg",
 "volumes": {"v1": {"path": "$work/vol"}}, "lock_dir": "$work/lock", "var_dir": "$work/storage-var",
 "ssh_ping_host": "127.0.0.1", "ssh_ping_port": 1, "ssh_ping_user": "$(id -un)",
 "ssh_ping_host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@s"],
 "authorized_keys_file": "$work/authorized_keys", "authorized_keys_user": "$(id -un)", "log_file": "$work/storage.log"}
JSON
cat >"$work/agent-conf/config.d/10.json" <<JSON
{"api_url": "http://127.0.0.1:$port/v1", "api_auth_name": "Machine Registrations", "api_auth_secret": "$mreg",
 "var_dir": "$work/agent-var", "lock_dir": "$work/lock", "unit_name": "interop-host",
 "rsyncd_user": "", "rsyncd_group": ""}
JSON
cat >"$work/agent-conf/sources.d/10.json" <<JSON
{"etc": {"path": "$work/src", "frequency": "daily", "exclude": ["*.bak"]},
 "home": {"path": "$work/src", "frequency": "cron H H * * *", "bwlimit": 1000}}
JSON
cat >"$work/rsyncd.conf" <<CONF
use chroot = no
[etc]
path = $work/src
read only = yes
CONF

py() { # py DIR MODULE ARGS...
    local dir=$1 module=$2
    shift 2
    (cd "$dir" && python3 -c "import sys; sys.argv=sys.argv[1:]; from $module import main; main()" x "$@")
}
step() { echo "== $*"; }

for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.1
done

step "storage registers"
py "$storage_src" turku_storage.update_config -c "$work/storage-conf"
step "agent registers with two sources"
py "$agent_src" turku_agent.update_config -c "$work/agent-conf" 2>/dev/null
step "storage learns the machine"
py "$storage_src" turku_storage.update_config -c "$work/storage-conf"
uuid=$(grep -o 'turku-storage-ping [0-9a-f-]*' "$work/authorized_keys" | awk '{print $2}')
[ -n "$uuid" ] || { echo "machine missing from authorized_keys"; exit 1; }
step "agent check-in, nothing due"
py "$agent_src" turku_agent.ping -c "$work/agent-conf" --debug 2>&1 | grep -q '"scheduled_sources": {}'
step "backup-now, agent check-in reaches ssh"
"$api" backup-now interop-host etc
py "$agent_src" turku_agent.ping -c "$work/agent-conf" --debug 2>&1 | grep -q "SSH request: .*'etc'"
step "storage ping pulls from an rsync daemon and reports"
rsync --daemon --no-detach --port="$rsync_port" --address=127.0.0.1 --config="$work/rsyncd.conf" >"$work/rsyncd.log" 2>&1 &
pids+=($!)
sleep 0.5
printf '{"port": %s, "action": "checkin", "sources": {"etc": {"username": "u", "password": "p"}}}\n.\n' "$rsync_port" |
    py "$storage_src" turku_storage.ping -c "$work/storage-conf" "$uuid"
python3 - "$TURKU_API_DB" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("SELECT success, snapshot FROM turku_api_backuplog").fetchall()
assert len(rows) == 1 and rows[0][0] == 1 and rows[0][1].startswith("etc_"), rows
print("backup log:", rows)
PY
step "restore listing"
py "$agent_src" turku_agent.ping -c "$work/agent-conf" --debug --restore 2>&1 | grep -q "'action': 'restore'"
"$api" list sources
echo "interop OK"

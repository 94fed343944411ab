#!/usr/bin/env bash
# The whole turku system on this machine, in one command, as the current user:
#   ./quickstart.sh [--data DIR] [--fresh] [SOURCE_DIR]
# builds turku-api, turku-storage and turku-agent (release), starts the coordinator and the
# storage daemon on loopback ports, configures an agent whose one source is SOURCE_DIR
# (default: this checkout without its build outputs), backs it up twice through the real path
# (agent -> ssh -R -> embedded SSH server -> native rsync -> store), restores the latest
# snapshot through the agent's restore mode into a fresh directory and has stock rsync check
# that it equals the source. Everything lives under one data dir (default ./turku-data, or
# TURKU_DATA); a second run reuses it and adds snapshots. No root needed, no system file
# touched; as root it installs rsync and openssh-client when missing.
#
# Environment: TURKU_DATA (data dir), TURKU_BIN_DIR (use the three binaries from there
# instead of building), CARGO_TARGET_DIR (where cargo builds), TURKU_STEP_TIMEOUT (seconds a
# build, backup or restore may take; default 3600).
set -euo pipefail
# The data dir holds secrets, keys, restores and logs with restore passwords: private.
caller_umask=$(umask)
umask 077

# Bounds on every wait (seconds).
readonly START_TIMEOUT=60      # a service listening, a registration, restore mode opening
readonly STOP_TIMEOUT=10       # a service exiting after SIGTERM/SIGINT before SIGKILL
readonly PORT_ATTEMPTS=5       # fresh ports tried when one was taken between probe and bind
STEP_TIMEOUT=${TURKU_STEP_TIMEOUT:-3600}
# The programs' test hooks and settings that would override what the configs say (a store's
# clock, another store or database, log filters the script reads lines of) must not leak in
# from the caller's environment.
unset TURKU_CLOCK_FILE TURKU_STORE TURKU_LOG RUST_LOG TURKU_API_DB TURKU_API_LISTEN \
    TURKU_API_TIME_ZONE RSYNC_PASSWORD
# The agent's ssh offers its own key only: the user's ssh-agent (many keys hit the server's
# limit on attempts) and ~/.ssh/config (a ControlPersist master outliving the agent) stay out.
unset SSH_AUTH_SOCK
# An exported CDPATH makes `cd` print where it went, into the paths captured from it.
unset CDPATH
# Names used in the generated configs.
readonly STORAGE_NAME=quickstart-storage
readonly UNIT_NAME=quickstart
readonly PING_USER=turku-ping
readonly MACHINE_AUTH_NAME="Machine Registrations"
readonly STORAGE_AUTH_NAME="Storage Registrations"
# Build outputs of this checkout, left out when the checkout itself is the source.
readonly CHECKOUT_EXCLUDES=(/target /target-lead /fuzz/target /fuzz/corpus /fuzz/artifacts /turku-quickstart)

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    printf 'quickstart: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- arguments
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd -P)
data=${TURKU_DATA:-$here/turku-data}
fresh=0
source_dir=
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --data) [ $# -ge 2 ] || die "--data needs a directory"; data=$2; shift 2 ;;
        --data=*) data=${1#--data=}; shift ;;
        --fresh) fresh=1; shift ;;
        --) shift; [ $# -le 1 ] || die "one SOURCE_DIR at most"; source_dir=${1:-}; shift $# ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$source_dir" ] || die "one SOURCE_DIR at most"; source_dir=$1; shift ;;
    esac
done
[[ $STEP_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "TURKU_STEP_TIMEOUT must be a number of seconds"

# ---------------------------------------------------------------- output helpers
t0=$EPOCHREALTIME
if [ -t 2 ]; then tty=1; else tty=0; fi

# Seconds (one decimal) since $1 (an EPOCHREALTIME).
since() {
    local now=${EPOCHREALTIME//[.,]/} then=${1//[.,]/}
    local tenths=$(((now - then) / 100000))
    printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

# $1 (a log) with restore passwords blanked: what may go to a terminal.
redacted() {
    sed -E 's/(RSYNC_PASSWORD=)[^[:space:]]*/\1<redacted>/g; s/([Pp]assword[: =]+)[^[:space:]]+/\1<redacted>/g' "$@" || true
}

say() { printf '[%6ss] %s\n' "$(since "$t0")" "$*"; }
detail() { printf '          %s\n' "$*"; }

# ---------------------------------------------------------------- processes
# Every process this run starts in the background: name -> pid, and its start time (field 22
# of /proc/PID/stat): a pid with its start time names one process, never a later one that
# was given the same pid, so nothing is signalled that this script did not start.
declare -A started=()
declare -A started_at=()
# Names whose pid leads a process group of its own (stopped as a group).
declare -A group_leaders=()
lockfd=
logs=
# A signal that arrived while spawn was between starting a process and recording it.
spawning=0
pending_signal=

# The start time of process $1, empty when there is none.
start_time_of() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # Fields after the command name (which may hold blanks and parentheses): state is the
    # first, the start time the 20th.
    read -r -a stat <<<"${stat##*) }"
    printf '%s\n' "${stat[19]:-}"
}

# Process $1 is the one that started at $2 and has not exited (a zombie has).
same_process() {
    local pid=$1 at=$2 stat
    [ -n "$pid" ] && [ -n "$at" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    read -r -a stat <<<"${stat##*) }"
    [ "${stat[0]}" != Z ] && [ "${stat[19]:-}" = "$at" ]
}

# Sends signal $3 to process $1 if it is still the one that started at $2.
signal_same() {
    if same_process "$1" "$2"; then kill "-$3" -- "$1" 2>/dev/null || true; fi
}

# Sends signal $3 to the process group led by $1 (started at $2) while the leader is that
# process, or is gone without another process having taken its pid (what is left in the
# group then is what it started, e.g. cargo's compilers).
signal_group() {
    local pid=$1 at=$2 now
    now=$(start_time_of "$pid")
    if [ -z "$now" ] || [ "$now" = "$at" ]; then kill "-$3" -- "-$pid" 2>/dev/null || true; fi
}

# Children of process $1 and theirs, as "pid start-time" lines (the agent's rsync daemon and
# ssh, which die with it anyway through the parent-death signal).
descendants_of() {
    local f stat
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        read -r -a stat <<<"${stat##*) }"
        if [ "${stat[1]:-}" = "$1" ]; then
            local child=${f#/proc/}
            child=${child%/stat}
            printf '%s %s\n' "$child" "${stat[19]}"
            descendants_of "$child"
        fi
    done
}

# In a child about to exec: its pid, start time and group flag $2 in run/$1.pid.
record_self() {
    local me=$BASHPID
    if [ -d "$data/run" ]; then
        printf '%s %s %s\n' "$me" "$(start_time_of "$me")" "$2" >"$data/run/$1.pid"
    fi
}

# Starts "$@" in the background without our lock (a daemon must not hold it after we die),
# output to $log; records its pid and start time under $name and in run/$name.pid (for the
# next run, should this one be killed with -9). With spawn_group=1 the process leads a
# process group of its own (the command must make it so, e.g. setsid). A signal arriving
# meanwhile is acted on once the process is recorded.
spawn() {
    local name=$1 log=$2 pid
    shift 2
    spawning=1
    if [ "${spawn_group:-0}" = 1 ]; then group_leaders[$name]=1; fi
    local group=${group_leaders[$name]:+group}
    # The child records itself before it becomes the command: a -9 of this script right
    # after the fork cannot leave an unrecorded process (nor its group) behind.
    if [ -n "$lockfd" ]; then
        (record_self "$name" "$group" && exec "$@") </dev/null >>"$log" 2>&1 {lockfd}>&- &
    else
        (record_self "$name" "$group" && exec "$@") </dev/null >>"$log" 2>&1 &
    fi
    pid=$!
    started[$name]=$pid
    started_at[$name]=$(start_time_of "$pid")
    spawning=0
    if [ -n "$pending_signal" ]; then interrupted "$pending_signal"; fi
    return 0
}

# Ends a process we started: $signal (to its group when it leads one), SIGKILL after
# STOP_TIMEOUT; reaps it. Each signal goes only to the process recorded (pid and start time).
stop() {
    local name=$1 signal=${2:-TERM}
    local pid=${started[$name]:-} at=${started_at[$name]:-}
    [ -n "$pid" ] || return 0
    if [ -n "${group_leaders[$name]:-}" ]; then
        signal_group "$pid" "$at" "$signal"
    else
        signal_same "$pid" "$at" "$signal"
    fi
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while same_process "$pid" "$at" && [ $SECONDS -lt $deadline ]; do
        sleep 0.1
    done
    signal_same "$pid" "$at" KILL
    # What a group leader left in its group (e.g. cargo's compilers) goes too.
    if [ -n "${group_leaders[$name]:-}" ]; then signal_group "$pid" "$at" KILL; fi
    wait "$pid" 2>/dev/null || true
    unset "started[$name]" "started_at[$name]" "group_leaders[$name]"
    rm -f "$data/run/$name.pid"
}

# The process group $1 still has a member (its leader or what the leader left in it).
group_has_members() {
    local f stat
    for f in /proc/[0-9]*/stat; do
        # read, not cat: this runs in a wait loop, over every process.
        { read -r stat <"$f"; } 2>/dev/null || continue
        read -r -a stat <<<"${stat##*) }"
        # Fields after the command name: state, ppid, pgrp.
        if [ "${stat[2]:-}" = "$1" ] && [ "${stat[0]}" != Z ]; then return 0; fi
    done
    return 1
}

# The group led by $1 (started at $2) has members that are its: the leader is that process,
# or is gone without its pid having been given to another (a pid in use as a group id is
# never handed out, so the group is still the leader's).
group_left() {
    local now
    now=$(start_time_of "$1")
    { [ -z "$now" ] || [ "$now" = "$2" ]; } && group_has_members "$1"
}

# Ends what an earlier run recorded in run/*.pid and left running (killed with -9: its
# daemons, the agent and its children, a build's process group): only processes whose start
# time still matches, never anything else that mentions the data dir. Everything is found
# before anything is signalled: a target that dies of an early signal is still ended in
# full (its group and descendants) and reported.
sweep() {
    local f pid at group targets=() deadline entry
    for f in "$data"/run/*.pid; do
        [ -e "$f" ] || continue
        read -r pid at group <"$f" 2>/dev/null || true
        rm -f "$f"
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if [ "$group" = group ] && group_left "$pid" "$at"; then targets+=("-$pid $at"); fi
        same_process "$pid" "$at" || continue
        targets+=("$pid $at")
        while read -r entry; do [ -z "$entry" ] || targets+=("$entry"); done < <(descendants_of "$pid")
    done
    [ ${#targets[@]} -gt 0 ] || return 0
    [ "${1:-}" = quiet ] || say "ending processes left by an earlier run: $(for e in "${targets[@]}"; do printf '%s ' "${e%% *}"; done)"
    for entry in "${targets[@]}"; do
        read -r pid at <<<"$entry"
        if [ "${pid:0:1}" = - ]; then signal_group "${pid#-}" "$at" TERM; else signal_same "$pid" "$at" TERM; fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        local alive=0
        for entry in "${targets[@]}"; do
            read -r pid at <<<"$entry"
            if [ "${pid:0:1}" = - ]; then
                if group_left "${pid#-}" "$at"; then alive=1; fi
            elif same_process "$pid" "$at"; then
                alive=1
            fi
        done
        [ $alive = 1 ] || break
        sleep 0.1
    done
    for entry in "${targets[@]}"; do
        read -r pid at <<<"$entry"
        if [ "${pid:0:1}" = - ]; then signal_group "${pid#-}" "$at" KILL; else signal_same "$pid" "$at" KILL; fi
    done
    return 0
}

# Stops everything, the agent first (it ends its own rsync daemon and ssh).
stop_all() {
    local name
    for name in restore-mode agent step storage coordinator; do stop "$name"; done
    for name in "${!started[@]}"; do stop "$name"; done
    sweep quiet
}

interrupted() {
    trap '' INT TERM
    if [ $tty = 1 ]; then printf '\n' >&2; fi
    printf 'quickstart: interrupted by SIG%s; stopping everything\n' "$1" >&2
    stop_all
    trap - EXIT
    [ "$1" = INT ] && exit 130
    exit 143
}

on_exit() {
    local rc=$?
    trap '' INT TERM
    stop_all
    if [ $rc -ne 0 ] && [ -n "$logs" ]; then
        printf 'quickstart: failed (exit %d); logs are in %s\n' "$rc" "$logs" >&2
    fi
    exit $rc
}
trap on_exit EXIT
on_signal() {
    if [ "$spawning" = 1 ]; then
        pending_signal=$1
    else
        interrupted "$1"
    fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# Runs "$@" in the background as step $label with output to $log, showing the time it has
# taken (updated in place on a terminal, a line every 10 s otherwise); fails after
# STEP_TIMEOUT. Returns the command's exit code. With step_group=1 the command runs in a
# process group of its own, ended as a whole (cargo's compilers would outlive cargo).
step() {
    local label=$1 log=$2
    shift 2
    local begin=$EPOCHREALTIME begin_s=$SECONDS rc=0 last=0 pid
    say "$label ..."
    if [ "${step_group:-0}" = 1 ]; then
        # Not a group leader (a job of a shell without job control), setsid execs in place.
        spawn_group=1 spawn step "$log" setsid "$@"
    else
        spawn step "$log" "$@"
    fi
    pid=${started[step]}
    while same_process "$pid" "${started_at[step]}"; do
        local secs=$((SECONDS - begin_s))
        if [ "$secs" -ge "$STEP_TIMEOUT" ]; then
            stop step
            if [ $tty = 1 ]; then printf '\r\033[K' >&2; fi
            die "$label: no end after ${STEP_TIMEOUT}s (TURKU_STEP_TIMEOUT); log: $log"
        fi
        if [ $tty = 1 ]; then
            printf '\r          ... working, %ds' "$secs" >&2
        elif [ "$secs" -ge $((last + (secs < 60 ? 10 : 60))) ]; then
            last=$secs
            detail "... still working (${secs}s)"
        fi
        sleep 0.2
    done
    wait "$pid" || rc=$?
    unset "started[step]" "started_at[step]" "group_leaders[step]"
    rm -f "$data/run/step.pid"
    if [ $tty = 1 ]; then printf '\r\033[K' >&2; fi
    detail "took $(since "$begin")s"
    return $rc
}

# Waits up to START_TIMEOUT for $file to contain a line matching $pattern (grep -E) while
# $name runs; fails with the file's tail otherwise.
wait_for_line() {
    local name=$1 file=$2 pattern=$3 what=$4
    local deadline=$((SECONDS + START_TIMEOUT)) pid=${started[$name]} at=${started_at[$name]}
    until grep -qE -- "$pattern" "$file" 2>/dev/null; do
        if ! same_process "$pid" "$at"; then
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$file" | redacted >&2
            die "$what: nothing after ${START_TIMEOUT}s; log: $file"
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- small utilities
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    s=${s//$'\n'/\\n}
    printf '"%s"' "$s"
}

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

port_in_use() {
    local hex
    hex=$(printf ':%04X' "$1")
    awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

pick_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        port_in_use "$port" || { echo "$port"; return 0; }
    done
    die "found no free TCP port on 127.0.0.1"
}

# Bytes as a short human figure.
human() {
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ }
                   fmt = i == 1 ? "%d %s" : "%.1f %s"; printf fmt, b, u[i] }'
}

# Moves $1 aside to $1.1 (replacing an older one): a wait for a line must never match an
# earlier run's (logs are appended to), nor an earlier attempt's.
rotate_log() {
    if [ -e "$1" ]; then mv -f -- "$1" "$1.1"; fi
}

# Earlier restores: a restored tree may hold read-only folders, which rm cannot empty.
remove_restores() {
    [ -d "$data/restores" ] || return 0
    chmod -R u+rwX "$data/restores" 2>/dev/null || true
    rm -rf "${data:?}"/restores/* 2>/dev/null ||
        say "warning: could not remove every earlier restore in $data/restores"
}

# ---------------------------------------------------------------- prerequisites
missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
{ command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; } || missing+=(openssh-client)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        for tool in rsync ssh ssh-keygen; do
            command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after apt-get install ${missing[*]}"
        done
    else
        die "this needs ${missing[*]}; install first (Debian/Ubuntu: sudo apt-get install -y ${missing[*]}), or run as root to have it installed"
    fi
fi
for tool in flock setsid awk od head grep sed; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool (Debian/Ubuntu: util-linux, coreutils, gawk or mawk, grep, sed)"
done

# ---------------------------------------------------------------- the data dir
mkdir -p "$data" || die "cannot create the data dir $data"
data=$(cd -- "$data" >/dev/null && pwd -P)
marker=$data/.turku-quickstart
if [ ! -e "$marker" ] && [ -n "$(ls -A "$data")" ]; then
    die "$data is not empty and was not made by quickstart.sh; choose another --data DIR"
fi
touch "$marker" 2>/dev/null || die "cannot write in $data (owned by $(stat -c %U "$data"); you are $(id -un))"
# Git ignores the whole data dir when it sits inside a checkout.
printf '*\n' >"$data/.gitignore"
mkdir -p "$data/run" "$data/logs"
logs=$data/logs
exec {lockfd}>"$data/run/lock"
# A few seconds' grace: a run killed with -9 leaves its short helpers (a sleep of its wait
# loop) holding the lock a moment longer.
flock -w 3 "$lockfd" || die "another quickstart.sh is running with $data"
sweep
rm -f "$data"/run/*.pid
for log in "$data"/logs/*.log; do rotate_log "$log"; done
if [ $fresh = 1 ]; then
    say "--fresh: removing the previous coordinator database, store, keys and restores"
    remove_restores
    rm -rf "$data/coordinator" "$data/storage" "$data/agent" "$data/secrets.env"
    rm -f "$data"/logs/*
fi
mkdir -p "$data/coordinator" "$data/storage/etc/config.d" "$data/storage/var" "$data/storage/lock" \
    "$data/agent/etc/config.d" "$data/agent/etc/sources.d" "$data/agent/var" "$data/agent/lock" \
    "$data/agent/tmp" "$data/restores"
# Private: secrets, keys, and restores that may hold setuid files and devices as backed up.
chmod 700 "$data" "$data/run" "$data/logs" "$data/coordinator" "$data/storage" "$data/agent" "$data/restores"

# ssh is given the agent's files (its key, known_hosts under TMPDIR) in -o options, which it
# splits at blanks, unquotes and %-expands: when the data dir's path holds such characters
# the agent sees the data dir through a link with a plain path, in a private dir of /tmp
# kept for the by-hand commands and reused by the next run.
agent_data=$data
if [[ $data == *[[:space:]\"\'\\%\$]* ]]; then
    alias_dir=$(cat "$data/run/agent-alias" 2>/dev/null || true)
    if ! { [[ $alias_dir == /tmp/turku-quickstart.* ]] && [ -d "$alias_dir" ] && [ ! -L "$alias_dir" ] &&
        [ -O "$alias_dir" ] && [ "$(stat -c %a "$alias_dir")" = 700 ] &&
        [ "$(readlink -- "$alias_dir/data")" = "$data" ]; }; then
        alias_dir=$(mktemp -d /tmp/turku-quickstart.XXXXXX) || die "cannot make a directory in /tmp"
        ln -s -- "$data" "$alias_dir/data"
        printf '%s\n' "$alias_dir" >"$data/run/agent-alias"
    fi
    agent_data=$alias_dir/data
    say "the data dir's path has characters ssh splits or expands: the agent sees it as $agent_data (a link)"
fi

# ---------------------------------------------------------------- the source
excludes=()
if [ -z "$source_dir" ]; then
    source_dir=$here
    excludes=("${CHECKOUT_EXCLUDES[@]}")
    source_note="this checkout"
else
    source_note="$source_dir"
fi
[ -d "$source_dir" ] || die "source $source_dir is not a directory"
source_dir=$(cd -- "$source_dir" >/dev/null && pwd -P)
# Left out when inside the source: the data dir (the store would back itself up) and cargo's
# target dir.
target_dir=${CARGO_TARGET_DIR:-$here/target}
case $target_dir in /*) ;; *) target_dir=$here/$target_dir ;; esac
for inside in "$data" "$target_dir"; do
    if [ -d "$inside" ]; then
        inside=$(cd -- "$inside" >/dev/null && pwd -P)
        if [ "$inside" != "$source_dir" ] && [[ $inside == "$source_dir"/* ]]; then
            pattern=/${inside#"$source_dir"/}
            [[ " ${excludes[*]} " == *" $pattern "* ]] || excludes+=("$pattern")
        fi
    fi
done
[ "$data" != "$source_dir" ] || die "the data dir cannot be the source"
[[ $source_dir/ != "$data"/* ]] || die "the source cannot be inside the data dir"
source_name=$(basename "$source_dir" | tr -c 'A-Za-z0-9._\n-' '_')
case $source_name in '' | . | .. | _) source_name=source ;; esac

# ---------------------------------------------------------------- build
if [ -n "${TURKU_BIN_DIR:-}" ]; then
    bin=$(cd -- "$TURKU_BIN_DIR" >/dev/null && pwd -P) || die "TURKU_BIN_DIR $TURKU_BIN_DIR is not a directory"
    say "using the binaries in $bin (TURKU_BIN_DIR)"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
    mkdir -p "$target_dir"
    bin=$(cd -- "$target_dir" >/dev/null && pwd -P)/release
    step_group=1 step "building turku-api, turku-storage and turku-agent (cargo build --release)" "$data/logs/build.log" \
        bash -c 'umask "$1" && cd -- "$2" >/dev/null && shift 2 && exec "$@"' umask "$caller_umask" "$here" \
        env CARGO_TARGET_DIR="$target_dir" cargo build --release --locked --manifest-path "$here/Cargo.toml" \
        -p turku-coordinator --bin turku-api -p turku-storage --bin turku-storage \
        -p turku-agent --bin turku-agent ||
        { tail -n 30 "$data/logs/build.log" | redacted >&2; die "the build failed; log: $data/logs/build.log"; }
fi
api=$bin/turku-api
storage=$bin/turku-storage
agent=$bin/turku-agent
for b in "$api" "$storage" "$agent"; do [ -x "$b" ] || die "no program $b"; done

# ---------------------------------------------------------------- coordinator
db=$data/coordinator/turku-api.sqlite3
coordinator_log=$data/logs/coordinator.log
: >"$coordinator_log"
spawn coordinator "$coordinator_log" env RUST_LOG=info NO_COLOR=1 "$api" serve --listen 127.0.0.1:0 --db "$db"
wait_for_line coordinator "$coordinator_log" 'serving /v1' "the coordinator" ||
    { cat "$coordinator_log" >&2; die "the coordinator did not start; log: $coordinator_log"; }
api_port=$(grep 'serving /v1' "$coordinator_log" | grep -oE '127\.0\.0\.1:[0-9]+' | head -n 1 | cut -d: -f2)
[ -n "$api_port" ] || die "no port in the coordinator's log $coordinator_log"
api_url=http://127.0.0.1:$api_port/v1
say "coordinator (turku-api serve) on $api_url, database $db"

manage() { "$api" "$@" --db "$db" 2>>"$data/logs/manage.log"; }

# The registration secrets and the storage's own secret, made once per data dir.
secrets=$data/secrets.env
if [ -f "$secrets" ]; then
    # shellcheck disable=SC1090
    . "$secrets"
    say "reusing the registration secrets in $secrets"
else
    machine_reg=$(manage auth-create machine_reg --raw) || die "auth-create machine_reg failed"
    storage_reg=$(manage auth-create storage_reg --raw) || die "auth-create storage_reg failed"
    storage_secret=$(random_hex 24)
    (umask 077 && printf 'machine_reg=%s\nstorage_reg=%s\nstorage_secret=%s\n' \
        "$machine_reg" "$storage_reg" "$storage_secret" >"$secrets.new")
    mv "$secrets.new" "$secrets"
    say "created the registration secrets (turku-api auth-create machine_reg / storage_reg) in $secrets"
fi

# ---------------------------------------------------------------- storage daemon
storage_etc=$data/storage/etc
store=$data/storage/store
storage_log=$data/logs/storage.log
write_storage_config() {
    (umask 077 && cat >"$storage_etc/config.d/10-quickstart.json" <<EOF
{
  "name": $(json_str "$STORAGE_NAME"),
  "secret": $(json_str "$storage_secret"),
  "api_url": $(json_str "$api_url"),
  "api_auth_name": $(json_str "$STORAGE_AUTH_NAME"),
  "api_auth_secret": $(json_str "$storage_reg"),
  "volumes": {"quickstart": {"path": $(json_str "$data/storage")}},
  "store": $(json_str "$store"),
  "var_dir": $(json_str "$data/storage/var"),
  "lock_dir": $(json_str "$data/storage/lock"),
  "ssh_ping_host": "127.0.0.1",
  "ssh_ping_port": $1,
  "ssh_ping_user": $(json_str "$PING_USER"),
  "listen": "127.0.0.1:$1",
  "preserve_hard_links": true,
  "log_file": ""
}
EOF
    )
}
storage_started=0
for attempt in $(seq $PORT_ATTEMPTS); do
    ssh_port=$(pick_port)
    write_storage_config "$ssh_port"
    "$storage" -c "$storage_etc" update-config >>"$data/logs/storage-update-config.log" 2>&1 ||
        { tail -n 20 "$data/logs/storage-update-config.log" | redacted >&2; die "turku-storage update-config failed"; }
    rotate_log "$storage_log"
    spawn storage "$storage_log" env TURKU_LOG=info NO_COLOR=1 "$storage" -c "$storage_etc" serve
    if wait_for_line storage "$storage_log" '^listening on ' "the storage daemon"; then
        storage_started=1
        break
    fi
    stop storage
    grep -qi 'in use' "$storage_log" || { tail -n 20 "$storage_log" | redacted >&2; die "the storage daemon did not start; log: $storage_log"; }
    say "port $ssh_port was taken meanwhile; trying another (attempt $attempt of $PORT_ATTEMPTS)"
done
[ $storage_started = 1 ] || die "the storage daemon found no free port in $PORT_ATTEMPTS attempts"
say "storage daemon (turku-storage serve) with its SSH server on 127.0.0.1:$ssh_port, store $store"

# ---------------------------------------------------------------- agent
agent_etc=$data/agent/etc
# Each run restores into a fresh folder; the previous run's (already verified) goes.
remove_restores
restore_dir=$data/restores/$(date -u +%Y%m%d-%H%M%S)-$$
mkdir -p "$restore_dir"
{
    printf '[\n'
    sep=
    for e in "${excludes[@]}"; do printf '%s      %s' "$sep" "$(json_str "$e")"; sep=$',\n'; done
    printf '\n    ]'
} >"$data/agent/excludes.json"
(umask 077 && cat >"$agent_etc/config.d/10-quickstart.json" <<EOF
{
  "api_url": $(json_str "$api_url"),
  "api_auth_name": $(json_str "$MACHINE_AUTH_NAME"),
  "api_auth_secret": $(json_str "$machine_reg"),
  "unit_name": $(json_str "$UNIT_NAME"),
  "var_dir": $(json_str "$agent_data/agent/var"),
  "lock_dir": $(json_str "$agent_data/agent/lock"),
  "restore_path": $(json_str "$restore_dir"),
  "ssh_command": ["ssh", "-F", "/dev/null", "-o", "IdentitiesOnly=yes"]
}
EOF
)
cat >"$agent_etc/sources.d/10-quickstart.json" <<EOF
{
  $(json_str "$source_name"): {
    "path": $(json_str "$source_dir"),
    "frequency": "daily",
    "exclude": $(cat "$data/agent/excludes.json")
  }
}
EOF
rm -f "$data/agent/excludes.json"
# The agent's private rsync daemon config and ssh known_hosts go to its TMPDIR.
run_agent() { env TMPDIR="$agent_data/agent/tmp" "$agent" -c "$agent_etc" "$@"; }
run_agent update-config >>"$data/logs/agent.log" 2>&1 ||
    { tail -n 20 "$data/logs/agent.log" | redacted >&2; die "turku-agent update-config failed; log: $data/logs/agent.log"; }
uuid=$(sed -n 's/.*"machine_uuid"[^"]*"\([^"]*\)".*/\1/p' "$data/agent/var/config.d/10-machine_uuid.json")
[ -n "$uuid" ] || die "turku-agent update-config wrote no machine uuid"
say "agent registered (turku-agent update-config): machine $uuid, source $source_name = $source_dir"
if [ ${#excludes[@]} -gt 0 ]; then
    detail "left out of $source_note: ${excludes[*]}"
fi

# ---------------------------------------------------------------- backups
# Snapshot lines of our source: machine, source, name, time, "N files", "N bytes", "N new bytes".
snapshot_lines() { "$storage" --store "$store" snapshots --machine "$uuid" --source "$source_name" 2>/dev/null || true; }

backup() {
    local what=$1 before line
    # The snapshot this ping makes is the one not there before: retention may delete older
    # ones meanwhile (a rerun days later), and same-second names sort by their random suffix.
    before=$(snapshot_lines | cut -f3)
    manage backup-now "$uuid" "$source_name" >/dev/null || die "turku-api backup-now failed"
    step "$what: turku-agent ping (agent -> ssh -R -> storage's SSH server -> rsync -> store)" \
        "$data/logs/agent.log" env TMPDIR="$agent_data/agent/tmp" "$agent" -c "$agent_etc" ping ||
        { tail -n 20 "$data/logs/agent.log" | redacted >&2; die "the backup failed; logs: $data/logs/agent.log, $storage_log"; }
    line=$(awk -F '\t' 'NR == FNR { seen[$0] = 1; next } !($3 in seen)' \
        <(printf '%s\n' "$before") <(snapshot_lines) | sort -t $'\t' -k4,4 | tail -n 1)
    if [ -z "$line" ]; then
        tail -n 20 "$data/logs/agent.log" | redacted >&2
        die "the ping ended but no snapshot appeared; logs: $data/logs/agent.log, $storage_log"
    fi
    local name files bytes new
    name=$(cut -f3 <<<"$line")
    files=$(cut -f5 <<<"$line" | cut -d' ' -f1)
    bytes=$(cut -f6 <<<"$line" | cut -d' ' -f1)
    new=$(cut -f7 <<<"$line" | cut -d' ' -f1)
    detail "snapshot $name: $files files, $(human "$bytes") ($bytes bytes); new data stored: $(human "$new")"
    last_snapshot=$name
    last_new=$new
}

backup "backup"
first_snapshot=$last_snapshot
backup "backup again, nothing changed"
second_new=$last_new
if [ "$second_new" = 0 ]; then
    detail "the second backup reused every file of the first: 0 new bytes"
fi

# ---------------------------------------------------------------- restore
restore_log=$data/logs/restore-mode.log
: >"$restore_log"
say "restore mode: turku-agent ping --restore (restore path $restore_dir)"
restores_before=$(grep -c 'Restore mode active on port' "$storage_log" || true)
spawn restore-mode "$restore_log" env TMPDIR="$agent_data/agent/tmp" "$agent" -c "$agent_etc" ping --restore
wait_for_line restore-mode "$restore_log" 'turku-storage restore' "turku-agent ping --restore" ||
    { redacted "$restore_log" >&2; die "restore mode ended early; log: $restore_log"; }
restore_line=$(grep -m 1 'turku-storage restore' "$restore_log")
restore_user=$(sed -n 's/.*--user \([^ ]*\).*/\1/p' <<<"$restore_line")
restore_password=$(sed -n 's/.*RSYNC_PASSWORD=\([^ ]*\).*/\1/p' <<<"$restore_line")
[ -n "$restore_user" ] && [ -n "$restore_password" ] || die "cannot read the restore credentials from: $(redacted <<<"$restore_line")"
deadline=$((SECONDS + START_TIMEOUT))
until [ "$(grep -c 'Restore mode active on port' "$storage_log" || true)" -gt "$restores_before" ]; do
    [ $SECONDS -lt $deadline ] || die "the storage daemon saw no restore session within ${START_TIMEOUT}s; log: $storage_log"
    same_process "${started[restore-mode]}" "${started_at[restore-mode]}" || die "restore mode ended early; log: $restore_log"
    sleep 0.1
done
detail "the agent is waiting; restore user $restore_user"
step "restoring $last_snapshot: turku-storage restore --machine $uuid --source $source_name" \
    "$data/logs/restore.log" env RSYNC_PASSWORD="$restore_password" \
    "$storage" -c "$storage_etc" restore --machine "$uuid" --source "$source_name" --user "$restore_user" \
    --snapshot "$last_snapshot" ||
    { tail -n 20 "$data/logs/restore.log" | redacted >&2; die "the restore failed; log: $data/logs/restore.log"; }
summary=$(tail -n 1 "$data/logs/restore.log")
[ -z "$summary" ] || detail "$summary"
# Ctrl-C ends restore mode, as an operator at the machine would.
stop restore-mode INT
say "restore mode ended (SIGINT)"

# ---------------------------------------------------------------- verify
compare=(-ani --checksum --delete -H --numeric-ids)
# Only root makes devices (the agent's restore daemon runs as this user): leave them out.
[ "$(id -u)" = 0 ] || compare+=(--no-devices)
for e in "${excludes[@]}"; do compare+=("--exclude=$e"); done
say "comparing the restore with the source: rsync ${compare[*]:0:5}$([ "$(id -u)" = 0 ] || echo ' --no-devices') (a dry run)"
# To a file: a long list piped into head would end the script by SIGPIPE before the message.
differences=$data/logs/restore-differences.log
rsync "${compare[@]}" "$source_dir/" "$restore_dir/" >"$differences" 2>&1 ||
    { head -n 40 "$differences" >&2; die "rsync could not compare $source_dir with $restore_dir; log: $differences"; }
if [ -s "$differences" ]; then
    head -n 40 "$differences" >&2
    die "the restore in $restore_dir differs from $source_dir in $(wc -l <"$differences") entries (the first above, all in $differences; a file changed since the backup shows here too)"
fi
detail "restore verified: $restore_dir equals $source_dir (rsync sees no difference)"

# ---------------------------------------------------------------- summary
stats=$("$storage" --store "$store" stats 2>/dev/null) || die "turku-storage stats failed"
stat_of() { awk -v k="$1" '{ v = $NF; $NF = ""; sub(/ +$/, ""); if ($0 == k) print v }' <<<"$stats"; }
logical=$(stat_of "logical bytes")
stored=$(stat_of "stored bytes")
say "store: $(stat_of snapshots) snapshots, $(human "$logical") backed up in all (logical), $(human "$stored") stored"
if [ -n "$stored" ] && [ "$stored" -gt 0 ]; then
    detail "dedup and compression: $(awk -v l="$logical" -v s="$stored" 'BEGIN { printf "%.1f", l / s }')x (logical / stored)"
fi
detail "snapshots of $source_name: $(snapshot_lines | cut -f3 | tr '\n' ' ')"
say "done: snapshots $first_snapshot and $last_snapshot made, restore of $last_snapshot verified in $restore_dir"

q() { printf '%q' "$1"; }
cat <<EOF

Run each program by hand from here (the services are stopped now; the generated configs name
the coordinator at 127.0.0.1:$api_port and the storage's SSH port $ssh_port, so start them on these):
  # the coordinator
  $(q "$api") serve --listen 127.0.0.1:$api_port --db $(q "$db")
  # the storage daemon (prints "listening on ADDRESS")
  $(q "$storage") -c $(q "$storage_etc") serve
  # a backup: make the source due, then the agent's ping
  $(q "$api") backup-now $uuid $(q "$source_name") --db $(q "$db")
  TMPDIR=$(q "$agent_data/agent/tmp") $(q "$agent") -c $(q "$agent_etc") ping
  # a restore: restore mode on the machine (prints user and password; Ctrl-C ends it) ...
  TMPDIR=$(q "$agent_data/agent/tmp") $(q "$agent") -c $(q "$agent_etc") ping --restore
  # ... and the push from the storage unit
  RSYNC_PASSWORD=<password> $(q "$storage") -c $(q "$storage_etc") restore --machine $uuid --source $(q "$source_name") --user <user>
  # the store: snapshots, stats, export
  $(q "$storage") --store $(q "$store") snapshots
  $(q "$storage") --store $(q "$store") stats
  $(q "$storage") --store $(q "$store") export --machine $uuid --source $(q "$source_name") --snapshot latest --to /tmp/export
Logs: $data/logs. Run ./quickstart.sh again to add snapshots; --fresh starts over.
EOF

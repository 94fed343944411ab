#!/usr/bin/env python3
"""The agent side of the tunnel benches (compare-tunnel.sh, daemon-load.sh): what the
original Turku agent does, with public tools only.

  register URL REG_SECRET PUBKEY_FILE UUID [SOURCE PATH]...   one machine via /v1 update_config
  register-many URL REG_SECRET COUNT THREADS OUT_FILE         COUNT machines, each its own key
  ping HOST PORT USER KEY KNOWN_HOSTS FWD_PORT REQUEST_FILE [SSH_ARG]...
                                                              one ping; prints its wall seconds
  ping-loop SECONDS PARALLEL HOST PORT USER KEY KNOWN_HOSTS FWD_PORT REQUEST_FILE [SSH_ARG]...
                                                              pings back to back in PARALLEL
                                                              lanes; prints count, pings/s, p50

A ping runs stock `ssh` with the original agent's arguments (-T, BatchMode, a pinned host
key, -R P:127.0.0.1:P) and writes the request to its stdin, which stays open until the
storage ends the session, as the agent's does. Every wait is bounded.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

PING_BOUND_S = 1800
HTTP_BOUND_S = 120


def update_config(url, reg_secret, uuid, public_key, sources):
    body = {
        "auth": {"name": "Machine Registrations", "secret": reg_secret},
        "machine": {
            "uuid": uuid,
            "secret": f"machine-secret-{uuid}",
            "unit_name": f"bench-{uuid[:8]}",
            "ssh_public_key": public_key,
            "sources": {name: {"path": path, "frequency": "daily"} for name, path in sources},
        },
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/update_config",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=HTTP_BOUND_S) as r:
        r.read()


def new_uuid():
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def ssh_argv(host, port, user, key, known_hosts, fwd_port, extra):
    return [
        "ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "CheckHostIP=no", "-i", key,
        "-R", f"{fwd_port}:127.0.0.1:{fwd_port}", "-p", str(port), "-l", user,
        *extra, host, "turku-ping-remote",
    ]


def ping_once(argv, request):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                                      if k != "SSH_AUTH_SOCK"})
    p.stdin.write(request)
    p.stdin.flush()
    # stdin stays open: the storage ends the session.
    try:
        out, err = p.communicate(timeout=PING_BOUND_S)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise SystemExit(f"ping did not finish within {PING_BOUND_S} s")
    wall = time.monotonic() - t0
    return p.returncode, wall, err.decode(errors="replace")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "register":
        url, secret, pub, uuid, *rest = args
        sources = list(zip(rest[0::2], rest[1::2]))
        update_config(url, secret, uuid, open(pub).read().strip(), sources)
    elif cmd == "register-many":
        url, secret, count, threads, out_file = args
        count, threads = int(count), int(threads)
        keydir = tempfile.mkdtemp(prefix="turku-bench-keys-")
        lock, done, errors = threading.Lock(), [0], []

        def lane(n):
            for i in range(n):
                key = os.path.join(keydir, f"k{threading.get_ident()}-{i}")
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench",
                                "-f", key], check=True, timeout=60)
                uuid = new_uuid()
                try:
                    update_config(url, secret, uuid, open(key + ".pub").read().strip(),
                                  [("data", "/srv/data")])
                except Exception as e:  # noqa: BLE001 - reported and counted
                    with lock:
                        errors.append(str(e))
                    continue
                with lock:
                    done[0] += 1

        per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
        t0 = time.monotonic()
        ts = [threading.Thread(target=lane, args=(n,)) for n in per]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        subprocess.run(["rm", "-rf", keydir], check=False)
        with open(out_file, "w") as f:
            f.write(f"{done[0]} {time.monotonic() - t0:.1f} {len(errors)}\n")
        if errors:
            print(f"{len(errors)} registrations failed, first: {errors[0]}", file=sys.stderr)
    elif cmd == "ping":
        host, port, user, key, kh, fwd, req, *extra = args
        rc, wall, err = ping_once(ssh_argv(host, port, user, key, kh, fwd, extra),
                                  open(req, "rb").read())
        if rc != 0:
            sys.stderr.write(err)
            raise SystemExit(f"ping: ssh exit {rc}")
        if os.environ.get("PING_STDERR"):
            with open(os.environ["PING_STDERR"], "a") as f:
                f.write(err)
        print(f"{wall:.3f}")
    elif cmd == "ping-loop":
        seconds, parallel, host, port, user, key, kh, fwd, req, *extra = args
        seconds, parallel = float(seconds), int(parallel)
        argv = ssh_argv(host, port, user, key, kh, fwd, extra)
        request = open(req, "rb").read()
        walls, failures, lock = [], [], threading.Lock()
        deadline = time.monotonic() + seconds

        def lane():
            while time.monotonic() < deadline:
                rc, wall, err = ping_once(argv, request)
                with lock:
                    (walls if rc == 0 else failures).append(wall if rc == 0 else err)

        t0 = time.monotonic()
        ts = [threading.Thread(target=lane) for _ in range(parallel)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t0
        walls.sort()
        p50 = walls[len(walls) // 2] if walls else float("nan")
        print(f"{len(walls)} {len(walls) / elapsed:.1f} {p50 * 1000:.1f} {len(failures)}")
        if failures:
            print(f"first failure: {failures[0][-500:]}", file=sys.stderr)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()

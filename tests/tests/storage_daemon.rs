//! `turku-storage serve` with its real peers, all on 127.0.0.1: our coordinator
//! (`turku-api serve`), stock OpenSSH `ssh` as the original agent runs it, and a stock
//! `rsync --daemon` configured as the original agent configures it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::{Duration, Instant};

use turku_testkit::system::{
    assert_ping_ok, backup_logs, due, eventually, stderr, Coordinator, StorageDaemon, TestAgent,
};
use turku_testkit::{assert_same_tree, make_awkward_tree, random_file};

#[test]
fn a_backup_as_the_original_agent_drives_it_then_only_changes_move() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-a",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("data");
    make_awkward_tree(&tree);
    random_file(&tree.join("big.bin"), 7, 3 << 20);
    let agent = TestAgent::register(&coordinator, "web-0", &[("data", &tree)]);
    let rsyncd = agent.start_rsyncd(&[("data", &tree)], &[]);

    // A new source waits for its first slot: the session checks in and does nothing.
    let out = agent.ping(&storage, &rsyncd);
    assert_ping_ok(&out);
    assert!(
        stderr(&out).contains("No sources to back up now"),
        "{}",
        stderr(&out)
    );
    assert!(storage.snapshots(&agent.uuid, "data").is_empty());

    agent.make_due(&coordinator, "data");
    let out = agent.ping(&storage, &rsyncd);
    assert_ping_ok(&out);
    let said = stderr(&out);
    // The original's lines, in its format, on the agent's stderr.
    for line in [
        "storage-a] INFO: Sources to back up: data",
        "storage-a] INFO: Begin: web-0 data",
        "storage-a] INFO: End: web-0 data",
        "storage-a] INFO: Done",
    ] {
        assert!(said.contains(line), "{line:?} missing from:\n{said}");
    }
    let first = storage.snapshots(&agent.uuid, "data");
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with("data_"), "{first:?}");
    let exported = storage.export(&agent.uuid, "data", &first[0]);
    assert_same_tree(&tree, &exported.path().join("tree"));
    let logs = backup_logs(&coordinator, &agent.uuid);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].0, "{logs:?}");
    assert_eq!(logs[0].1.as_deref(), Some(first[0].as_str()));
    assert!(
        due(&coordinator, &storage, &agent.uuid).is_empty(),
        "the next backup moved on"
    );

    // Change a little; the second run moves only that.
    std::fs::write(tree.join("new-file"), b"added").unwrap();
    std::fs::remove_file(tree.join("big.bin")).unwrap();
    random_file(&tree.join("big-renamed.bin"), 7, 3 << 20);
    agent.make_due(&coordinator, "data");
    let out = agent.ping(&storage, &rsyncd);
    assert_ping_ok(&out);
    let both = storage.snapshots(&agent.uuid, "data");
    assert_eq!(both.len(), 2, "{both:?}");
    let second = both.iter().find(|n| **n != first[0]).unwrap();
    let listed = storage.store_command(&["snapshots", "--machine", &agent.uuid, "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let stats = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == second.as_str())
        .unwrap()["stats"]
        .clone();
    // The renamed 3 MiB file has the same content: stored once, so new data stays small.
    assert!(stats["new_bytes"].as_u64().unwrap() < 64 * 1024, "{stats}");
    let exported = storage.export(&agent.uuid, "data", second);
    assert_same_tree(&tree, &exported.path().join("tree"));
    let logs = backup_logs(&coordinator, &agent.uuid);
    assert_eq!(logs.len(), 2, "{logs:?}");
    let summary = logs[1].2.clone().unwrap_or_default();
    assert!(
        summary.contains(&format!("Base snapshot: {}", first[0])),
        "{summary}"
    );
    storage.assert_verifies_clean();
}

#[test]
fn eight_machines_back_up_at_once() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-b",
        serde_json::json!({"max_backups": 8, "max_sessions": 8, "preserve_hard_links": true}),
    );
    // Identical trees on every machine: stored once.
    let shared = tempfile::tempdir().unwrap();
    let tree = shared.path().join("etc");
    make_awkward_tree(&tree);
    random_file(&tree.join("blob"), 11, 2 << 20);
    let agents: Vec<TestAgent> = (0..8)
        .map(|i| TestAgent::register(&coordinator, &format!("unit-{i}"), &[("etc", &tree)]))
        .collect();
    for agent in &agents {
        agent.make_due(&coordinator, "etc");
    }
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let runs: Vec<_> = agents
            .iter()
            .map(|agent| {
                let storage = &storage;
                let tree = &tree;
                scope.spawn(move || {
                    let rsyncd = agent.start_rsyncd(&[("etc", tree.as_path())], &[]);
                    agent.ping(storage, &rsyncd)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (agent, out) in agents.iter().zip(&outputs) {
        assert_ping_ok(out);
        let snaps = storage.snapshots(&agent.uuid, "etc");
        assert_eq!(snaps.len(), 1, "{}: {snaps:?}\n{}", agent.uuid, stderr(out));
        assert!(due(&coordinator, &storage, &agent.uuid).is_empty());
    }
    let stats = storage.store_command(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    // Eight copies of a >2 MiB tree, stored about once.
    assert_eq!(stats["snapshots"], 8, "{stats}");
    let stored = stats["chunk_bytes"].as_u64().unwrap();
    let logical = stats["logical_bytes"].as_u64().unwrap();
    assert!(logical > 8 * (2 << 20), "{stats}");
    assert!(stored <= logical / 8 + (64 << 10), "{stats}");
    storage.assert_verifies_clean();
    let exported = storage.export(&agents[7].uuid, "etc", "latest");
    assert_same_tree(&tree, &exported.path().join("tree"));
}

#[test]
fn a_busy_storage_leaves_sources_due_and_one_machine_has_one_session() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-c",
        serde_json::json!({"max_sessions": 1}),
    );
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("f"), b"x").unwrap();
    let holder = TestAgent::register(&coordinator, "holder", &[("data", tree.path())]);
    let other = TestAgent::register(&coordinator, "other", &[("data", tree.path())]);
    let holder_rsyncd = holder.start_rsyncd(&[("data", tree.path())], &[]);
    let other_rsyncd = other.start_rsyncd(&[("data", tree.path())], &[]);
    other.make_due(&coordinator, "data");
    holder.make_due(&coordinator, "data");

    // A restore session holds the only session slot while its stdin stays open.
    let mut restore = holder.spawn_ping(&storage, &holder_rsyncd, "restore");
    eventually(
        "the restore session is registered",
        Duration::from_secs(30),
        || storage.log().contains("Restore mode active on port"),
    );

    let out = other.ping(&storage, &other_rsyncd);
    assert!(!out.status.success(), "a session over the cap fails");
    assert!(stderr(&out).contains("Storage busy"), "{}", stderr(&out));
    assert_eq!(
        due(&coordinator, &storage, &other.uuid),
        ["data"],
        "still due"
    );
    assert!(storage.snapshots(&other.uuid, "data").is_empty());

    // The holder's machine already has a session: its own second one is refused too.
    let out = holder.ping(&storage, &holder_rsyncd);
    assert!(!out.status.success());
    assert_eq!(due(&coordinator, &storage, &holder.uuid), ["data"]);

    // Ending the restore (EOF on its stdin) frees the slot; the other machine backs up.
    drop(restore.stdin.take());
    let done =
        turku_testkit::system::wait_bounded(restore, Duration::from_secs(30), "restore session");
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(
        stderr(&done).contains("Restore mode finished"),
        "{}",
        stderr(&done)
    );
    let out = other.ping(&storage, &other_rsyncd);
    assert_ping_ok(&out);
    assert_eq!(storage.snapshots(&other.uuid, "data").len(), 1);
}

#[test]
fn an_agent_that_disconnects_mid_backup_leaves_no_snapshot_and_its_source_due() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-d", serde_json::json!({}));
    let tree = tempfile::tempdir().unwrap();
    random_file(&tree.path().join("slow.bin"), 3, 4 << 20);
    let agent = TestAgent::register(&coordinator, "flaky", &[("data", tree.path())]);
    // 4 MiB at 256 KiB/s: about 16 s, time enough to cut it.
    let rsyncd = agent.start_rsyncd(&[("data", tree.path())], &["--bwlimit=256"]);
    agent.make_due(&coordinator, "data");
    let mut ssh = agent.spawn_ping(&storage, &rsyncd, "checkin");
    eventually("the backup begins", Duration::from_secs(30), || {
        storage.log().contains("Begin: flaky data")
    });
    std::thread::sleep(Duration::from_secs(2));
    ssh.kill().unwrap();
    ssh.wait().unwrap();
    // The daemon notices, and the machine can start a new session.
    eventually(
        "the daemon ends the session",
        Duration::from_secs(60),
        || {
            let log = storage.log();
            log.contains("agent went away") || log.contains("End: flaky data")
        },
    );
    assert!(storage.snapshots(&agent.uuid, "data").is_empty());
    assert_eq!(due(&coordinator, &storage, &agent.uuid), ["data"]);
    storage.assert_verifies_clean();
    let gc = storage.store_command(&["gc"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    storage.assert_verifies_clean();
}

#[test]
fn the_coordinator_down_is_a_clear_error_and_nothing_is_lost() {
    let mut coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-e", serde_json::json!({}));
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("f"), b"content").unwrap();
    let agent = TestAgent::register(&coordinator, "patient", &[("data", tree.path())]);
    let rsyncd = agent.start_rsyncd(&[("data", tree.path())], &[]);
    agent.make_due(&coordinator, "data");
    // The daemon learns the key while the coordinator is up.
    let out = agent.ping(&storage, &rsyncd);
    assert_ping_ok(&out);
    let first = storage.snapshots(&agent.uuid, "data");
    assert_eq!(first.len(), 1);

    coordinator.stop();
    agent_ping_fails_clearly(&agent, &storage, &rsyncd);
    assert_eq!(storage.snapshots(&agent.uuid, "data"), first);

    coordinator.restart();
    agent.make_due(&coordinator, "data");
    let out = agent.ping(&storage, &rsyncd);
    assert_ping_ok(&out);
    assert_eq!(storage.snapshots(&agent.uuid, "data").len(), 2);
}

fn agent_ping_fails_clearly(
    agent: &TestAgent,
    storage: &StorageDaemon,
    rsyncd: &turku_testkit::system::AgentRsyncd,
) {
    let out = agent.ping(storage, rsyncd);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ERROR: Cannot check in with the coordinator"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_daemon_killed_mid_backup_restarts_clean_and_the_next_backup_lands() {
    let coordinator = Coordinator::start();
    let mut storage = StorageDaemon::start(
        &coordinator,
        "storage-f",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let tree = tempfile::tempdir().unwrap();
    make_awkward_tree(&tree.path().join("t"));
    random_file(&tree.path().join("slow.bin"), 5, 4 << 20);
    let agent = TestAgent::register(&coordinator, "crashy", &[("data", tree.path())]);
    let slow = agent.start_rsyncd(&[("data", tree.path())], &["--bwlimit=256"]);
    agent.make_due(&coordinator, "data");
    let ssh = agent.spawn_ping(&storage, &slow, "checkin");
    eventually("the backup begins", Duration::from_secs(30), || {
        storage.log().contains("Begin: crashy data")
    });
    std::thread::sleep(Duration::from_secs(3));
    storage.kill();
    let _ = turku_testkit::system::wait_bounded(
        ssh,
        Duration::from_secs(30),
        "ssh after the daemon died",
    );
    storage.restart();
    storage.assert_verifies_clean();
    assert!(storage.snapshots(&agent.uuid, "data").is_empty());
    assert_eq!(due(&coordinator, &storage, &agent.uuid), ["data"]);

    drop(slow);
    let rsyncd = agent.start_rsyncd(&[("data", tree.path())], &[]);
    let out = agent.ping(&storage, &rsyncd);
    assert_ping_ok(&out);
    let snaps = storage.snapshots(&agent.uuid, "data");
    assert_eq!(snaps.len(), 1);
    let exported = storage.export(&agent.uuid, "data", &snaps[0]);
    assert_same_tree(tree.path(), &exported.path().join("tree"));
    storage.assert_verifies_clean();
}

#[test]
fn unknown_keys_refresh_at_most_once_per_interval_and_sighup_refreshes() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-g",
        serde_json::json!({"refresh_min_interval": 3600}),
    );
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("f"), b"x").unwrap();
    let first = TestAgent::register(&coordinator, "first", &[("data", tree.path())]);
    let first_rsyncd = first.start_rsyncd(&[("data", tree.path())], &[]);
    // Registered after the daemon's start: its first knock refreshes the keys, and it is in.
    assert_ping_ok(&first.ping(&storage, &first_rsyncd));

    // Another new machine inside the interval: no second refresh, so it is refused.
    let second = TestAgent::register(&coordinator, "second", &[("data", tree.path())]);
    let second_rsyncd = second.start_rsyncd(&[("data", tree.path())], &[]);
    let out = second.ping(&storage, &second_rsyncd);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    // SIGHUP refreshes at once.
    let refreshes = storage.log().matches("authorized keys refreshed").count();
    let pid = nix::unistd::Pid::from_raw(storage.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually("the SIGHUP refresh", Duration::from_secs(30), || {
        storage.log().matches("authorized keys refreshed").count() > refreshes
    });
    assert!(storage.log().contains("SIGHUP"));
    assert_ping_ok(&second.ping(&storage, &second_rsyncd));
}

/// An SSH binary packet as sent before keys are agreed: length, padding length, payload,
/// padding to a multiple of 8.
fn plain_packet(payload: &[u8]) -> Vec<u8> {
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut packet = Vec::new();
    packet.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    packet.push(padding as u8);
    packet.extend_from_slice(payload);
    packet.extend(std::iter::repeat_n(0u8, padding));
    packet
}

fn name_list(out: &mut Vec<u8>, names: &str) {
    out.extend_from_slice(&(names.len() as u32).to_be_bytes());
    out.extend_from_slice(names.as_bytes());
}

/// Whether the server closed `socket` within `bound`, while `keep_busy` is sent every
/// half second.
fn closed_within(socket: &mut std::net::TcpStream, bound: Duration, keep_busy: &[u8]) -> bool {
    use std::io::{Read, Write};
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + bound;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
        if socket.write_all(keep_busy).is_err() {
            return true;
        }
    }
    false
}

/// A client that starts a key exchange and never finishes it, sending IGNORE packets to look
/// alive, is still closed at the login timeout; and one address cannot hold more than its
/// share of the connections not logged in.
#[test]
fn clients_that_never_log_in_are_closed_and_capped() {
    use std::io::{Read, Write};
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-h",
        serde_json::json!({"login_timeout": 2}),
    );
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", storage.port)).unwrap();
    socket
        .write_all(b"SSH-2.0-OpenSSH_9.2p1 stall\r\n")
        .unwrap();
    let mut kexinit = vec![20u8];
    kexinit.extend_from_slice(&[7u8; 16]);
    for names in [
        "curve25519-sha256",
        "ssh-ed25519",
        "aes128-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-256",
        "none",
        "none",
        "",
        "",
    ] {
        name_list(&mut kexinit, names);
    }
    kexinit.extend_from_slice(&[0, 0, 0, 0, 0]);
    socket.write_all(&plain_packet(&kexinit)).unwrap();
    let mut ignore = vec![2u8];
    name_list(&mut ignore, "still here");
    let ignore = plain_packet(&ignore);
    assert!(
        closed_within(&mut socket, Duration::from_secs(20), &ignore),
        "a stalled key exchange outlived the login timeout"
    );
    assert!(storage
        .log()
        .contains("not logged in within the login timeout"));

    // Connections from one address that never log in: past the per-address cap, the
    // daemon closes new ones before it says a word.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..24 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", storage.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut banner = [0u8; 8];
        match s.read(&mut banner) {
            Ok(n) if n > 0 => held.push(s),
            _ => refused += 1,
        }
    }
    assert!(refused >= 8, "held {} refused {refused}", held.len());
    assert!(held.len() <= 16, "held {}", held.len());
    // Once they time out, the address may connect again.
    drop(held);
    eventually(
        "a new connection is served again",
        Duration::from_secs(30),
        || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", storage.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut banner = [0u8; 8];
            matches!(s.read(&mut banner), Ok(n) if n > 0)
        },
    );
}

/// `update-config --openssh` for operators who keep OpenSSH: the original's authorized_keys
/// (header, the static part, one forced-command line per machine) and OpenSSH's host keys
/// published instead of the daemon's.
#[test]
fn update_config_for_openssh_writes_the_originals_authorized_keys() {
    let coordinator = Coordinator::start();
    let etc = tempfile::tempdir().unwrap();
    std::fs::write(
        etc.path().join("ssh_host_ed25519_key.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxUdRe0FRz8SELy3nByH8ZR7jc0rjXoUTbL0hGsrwYx root@h\n",
    )
    .unwrap();
    let keys_file = etc.path().join("ping-home/.ssh/authorized_keys");
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-i",
        serde_json::json!({
            "ssh_ping_host_keys_glob": format!("{}/ssh_host_*_key.pub", etc.path().display()),
            "authorized_keys_file": keys_file,
            "authorized_keys_command": "turku-storage ping",
        }),
    );
    let tree = tempfile::tempdir().unwrap();
    let agent = TestAgent::register(&coordinator, "web-9", &[("data", tree.path())]);
    std::fs::create_dir_all(keys_file.parent().unwrap()).unwrap();
    std::fs::write(
        format!("{}.static", keys_file.display()),
        "# the operator's own\n",
    )
    .unwrap();
    let child = std::process::Command::new(&storage.binary)
        .arg("--config-dir")
        .arg(&storage.config_dir)
        .args(["update-config", "--openssh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = turku_testkit::system::wait_bounded(child, Duration::from_secs(120), "update-config");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&keys_file).unwrap();
    let public = std::fs::read_to_string(agent.key.with_extension("pub")).unwrap();
    let bare: Vec<&str> = public.split_whitespace().take(2).collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "# Automatically generated, please do not edit",
        "{text}"
    );
    assert_eq!(lines[2], "# the operator's own", "{text}");
    assert_eq!(
        lines[3],
        format!(
            "no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,command=\"turku-storage ping {}\" {} (web-9)",
            agent.uuid,
            bare.join(" ")
        ),
        "{text}"
    );
    // The agents now pin OpenSSH's key, not the daemon's own.
    let db = rusqlite::Connection::open(&coordinator.db).unwrap();
    let published: String = db
        .query_row(
            "SELECT ssh_ping_host_keys FROM turku_api_storage WHERE name = 'storage-i'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(published.contains("root@h"), "{published}");
    assert!(!published.contains(&storage.host_key_line()), "{published}");
}

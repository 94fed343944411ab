//! Restores as an operator runs them: the original agent's restore mode (a stock
//! `rsync --daemon` with only the writable `turku-restore` module, stock OpenSSH `ssh -R`, the
//! `"action": "restore"` request), then `turku-storage restore` on the storage, which asks
//! the running daemon to push the snapshot through the agent's own SSH connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Output};
use std::time::Duration;

use turku_testkit::system::{
    assert_ping_ok, eventually, stderr, wait_bounded, AgentRsyncd, Coordinator, StorageDaemon,
    TestAgent,
};
use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, backdate_recent, is_root, make_awkward_tree,
    random_file,
};

const RESTORE_BOUND: Duration = Duration::from_secs(120);

/// Backs `tree` up once as source `data` and returns the snapshot's name.
fn back_up(
    coordinator: &Coordinator,
    storage: &StorageDaemon,
    agent: &TestAgent,
    tree: &std::path::Path,
) -> String {
    let rsyncd = agent.start_rsyncd(&[("data", tree)], &[]);
    agent.make_due(coordinator, "data");
    assert_ping_ok(&agent.ping(storage, &rsyncd));
    let snaps = storage.snapshots(&agent.uuid, "data");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    snaps[0].clone()
}

/// Starts the agent's restore mode and waits until the storage has registered it.
fn enter_restore_mode(storage: &StorageDaemon, agent: &TestAgent, rsyncd: &AgentRsyncd) -> Child {
    let before = storage.log().matches("Restore mode active on port").count();
    let session = agent.spawn_ping(storage, rsyncd, "restore");
    eventually(
        "the restore session is registered",
        Duration::from_secs(30),
        || storage.log().matches("Restore mode active on port").count() > before,
    );
    session
}

/// `turku-storage restore` of source `data` into the agent's restore module, with the
/// credentials its restore daemon was given; not yet started.
fn restore_command(
    storage: &StorageDaemon,
    agent: &TestAgent,
    rsyncd: &AgentRsyncd,
    extra: &[&str],
) -> std::process::Command {
    let (_, user, password) = &rsyncd.credentials[0];
    let mut command = storage.command(&[
        "restore",
        "--machine",
        &agent.uuid,
        "--source",
        "data",
        "--user",
        user,
    ]);
    command.args(extra).env("RSYNC_PASSWORD", password);
    command
}

fn restore(
    storage: &StorageDaemon,
    agent: &TestAgent,
    rsyncd: &AgentRsyncd,
    extra: &[&str],
) -> Output {
    let child = restore_command(storage, agent, rsyncd, extra)
        .spawn()
        .unwrap();
    wait_bounded(child, RESTORE_BOUND, "turku-storage restore")
}

fn end_session(mut session: Child) {
    drop(session.stdin.take());
    let done = wait_bounded(session, Duration::from_secs(30), "restore session");
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(
        stderr(&done).contains("Restore mode finished"),
        "{}",
        stderr(&done)
    );
}

#[test]
fn a_restore_puts_the_snapshot_into_the_agents_restore_path() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-r",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    make_awkward_tree(&tree);
    random_file(&tree.join("big.bin"), 11, 3 << 20);
    backdate_recent(&tree);
    let agent = TestAgent::register(&coordinator, "web-r", &[("data", &tree)]);
    let snapshot = back_up(&coordinator, &storage, &agent, &tree);

    // Before the agent enters restore mode there is nothing to push into.
    let restore_path = work.path().join("restore");
    std::fs::create_dir(&restore_path).unwrap();
    let rsyncd = agent.start_restore_rsyncd(&restore_path);
    let out = restore(&storage, &agent, &rsyncd, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no restore session is open"),
        "{}",
        stderr(&out)
    );

    let session = enter_restore_mode(&storage, &agent, &rsyncd);
    let out = restore(&storage, &agent, &rsyncd, &["--snapshot", &snapshot]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("pushed snapshot {snapshot}")),
        "{summary}"
    );
    assert_rsync_sees_no_difference(&tree, &restore_path);
    if is_root() {
        assert_same_tree(&tree, &restore_path);
    }

    // A part of it, into the same session, lands beside.
    let out = restore(&storage, &agent, &rsyncd, &["--path", "deep/a"]);
    assert!(out.status.success(), "restore --path: {}", stderr(&out));
    assert!(restore_path.join("b/c/d/e/f/g/h/i/j/leaf").exists());

    end_session(session);
    let out = restore(&storage, &agent, &rsyncd, &[]);
    assert!(!out.status.success(), "the session is over");
    assert!(
        stderr(&out).contains("no restore session is open"),
        "{}",
        stderr(&out)
    );
    storage.assert_verifies_clean();
}

/// The children of `pid` (the agent's rsync daemon forks one per connection).
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits (bounded) for the agent's rsync daemon to fork the receiver of a push, and stops
/// it (SIGSTOP): the push then waits on it for as long as the test wants.
fn hold_receiver_still(rsyncd: &AgentRsyncd) -> nix::unistd::Pid {
    let mut receiver = None;
    eventually(
        "the restore reaches the agent's rsync",
        Duration::from_secs(30),
        || {
            receiver = children(rsyncd.pid()).first().copied();
            receiver.is_some()
        },
    );
    let receiver = nix::unistd::Pid::from_raw(receiver.unwrap());
    let _ = nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGSTOP);
    receiver
}

#[test]
fn an_agent_that_goes_away_mid_restore_is_a_clear_error_and_changes_nothing() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-s", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    std::fs::create_dir(&tree).unwrap();
    random_file(&tree.join("big.bin"), 12, 32 << 20);
    let agent = TestAgent::register(&coordinator, "web-s", &[("data", &tree)]);
    let snapshot = back_up(&coordinator, &storage, &agent, &tree);

    let restore_path = work.path().join("restore");
    std::fs::create_dir(&restore_path).unwrap();
    let rsyncd = agent.start_restore_rsyncd(&restore_path);
    let mut session = enter_restore_mode(&storage, &agent, &rsyncd);
    let running = restore_command(&storage, &agent, &rsyncd, &[])
        .spawn()
        .unwrap();
    // Hold the receiving rsync still as soon as it exists, then take the agent away.
    let receiver = hold_receiver_still(&rsyncd);
    session.kill().unwrap();
    let _ = session.wait();
    let out = wait_bounded(running, RESTORE_BOUND, "turku-storage restore");
    let _ = nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGKILL);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let said = stderr(&out);
    assert!(said.contains("closed midway"), "{said}");
    assert!(said.contains("nothing on the storage changed"), "{said}");
    assert_eq!(storage.snapshots(&agent.uuid, "data"), [snapshot]);
    storage.assert_verifies_clean();
}

#[test]
fn a_restore_whose_command_goes_away_stops_and_frees_the_session() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-t", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    std::fs::create_dir(&tree).unwrap();
    random_file(&tree.join("big.bin"), 13, 32 << 20);
    std::fs::write(tree.join("small"), b"small").unwrap();
    let agent = TestAgent::register(&coordinator, "web-t", &[("data", &tree)]);
    back_up(&coordinator, &storage, &agent, &tree);

    let restore_path = work.path().join("restore");
    std::fs::create_dir(&restore_path).unwrap();
    let rsyncd = agent.start_restore_rsyncd(&restore_path);
    let session = enter_restore_mode(&storage, &agent, &rsyncd);
    let mut running = restore_command(&storage, &agent, &rsyncd, &[])
        .spawn()
        .unwrap();
    // The receiving rsync held still: the push waits on it, and the operator gives up.
    let receiver = hold_receiver_still(&rsyncd);
    running.kill().unwrap();
    let _ = running.wait();
    // The daemon noticed, dropped that push and lets the next restore in, while the first
    // receiver still holds its connection open (only its I/O timeout, minutes away, would
    // end that push otherwise).
    let mut last = String::new();
    eventually(
        "the session takes a new restore",
        Duration::from_secs(60),
        || {
            let out = restore(&storage, &agent, &rsyncd, &[]);
            last = stderr(&out);
            assert!(
                out.status.success() || last.contains("already running"),
                "{last}"
            );
            out.status.success()
        },
    );
    let _ = nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(std::fs::read(restore_path.join("small")).unwrap(), b"small");
    end_session(session);
}

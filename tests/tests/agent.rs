//! Our agent (`turku-agent`) with its real peers, all on 127.0.0.1: our coordinator, our
//! storage daemon (`turku-storage serve`), stock `rsync --daemon` and stock OpenSSH `ssh`
//! started by the agent itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use turku_testkit::system::{
    backup_logs, daemons_with, eventually, stderr, wait_bounded, Agent, Coordinator, StorageDaemon,
};
use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, backdate_recent, make_awkward_tree,
    random_file,
};

fn make_due(coordinator: &Coordinator, uuid: &str, source: &str) {
    coordinator.manage(&["backup-now", uuid, source]);
}

#[test]
fn update_config_then_a_ping_backs_up_and_a_ping_with_nothing_due_is_quiet() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-a",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    make_awkward_tree(&tree);
    random_file(&tree.join("big.bin"), 3, 1 << 20);
    let agent = Agent::new(
        &coordinator,
        serde_json::json!({"data": {"path": tree, "frequency": "daily", "future_key": [1]},
                           "no-path": {"comment": "dropped"}}),
    );

    // Before registration a ping has nothing to do.
    let out = agent.run_ok(&["ping"]);
    assert!(out.stdout.is_empty());

    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.var.join("config.d/10-machine_uuid.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(agent.var.join("ssh_key").is_file() && agent.var.join("ssh_key.pub").is_file());
    // Again: the same machine, no new key.
    let key = std::fs::read(agent.var.join("ssh_key.pub")).unwrap();
    agent.run_ok(&["update-config"]);
    assert_eq!(agent.uuid(), uuid);
    assert_eq!(std::fs::read(agent.var.join("ssh_key.pub")).unwrap(), key);

    make_due(&coordinator, &uuid, "data");
    let out = agent.run_ok(&["ping"]);
    let said = stderr(&out);
    assert!(
        said.contains("storage-a] INFO: End: agent-test data"),
        "{said}"
    );
    let snaps = storage.snapshots(&uuid, "data");
    assert_eq!(snaps.len(), 1, "{snaps:?}\n{said}");
    let exported = storage.export(&uuid, "data", &snaps[0]);
    assert_same_tree(&tree, &exported.path().join("tree"));
    let logs = backup_logs(&coordinator, &uuid);
    assert!(logs.len() == 1 && logs[0].0, "{logs:?}");
    agent.assert_nothing_left();

    // Nothing due: no session, no output, no new snapshot.
    let started = Instant::now();
    let out = agent.run_ok(&["ping"]);
    let took = started.elapsed();
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
    assert_eq!(storage.snapshots(&uuid, "data").len(), 1);
    eprintln!("a ping with nothing due took {took:?}");
    agent.assert_nothing_left();
}

/// Registers `agent`, backs `tree` up once as `data`; returns the machine uuid.
fn register_and_back_up(
    coordinator: &Coordinator,
    storage: &StorageDaemon,
    agent: &Agent,
) -> String {
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();
    make_due(coordinator, &uuid, "data");
    agent.run_ok(&["ping"]);
    assert_eq!(storage.snapshots(&uuid, "data").len(), 1);
    uuid
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

#[test]
fn restore_mode_prints_the_storage_command_and_takes_the_push() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-r",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    make_awkward_tree(&tree);
    random_file(&tree.join("big.bin"), 5, 1 << 20);
    backdate_recent(&tree);
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    let uuid = register_and_back_up(&coordinator, &storage, &agent);

    let session = agent.enter_restore_mode(&storage);
    // RSYNC_PASSWORD=<pw> turku-storage restore --machine <uuid> --source data --user <user>
    let words: Vec<&str> = session.command.split_whitespace().collect();
    assert_eq!(
        &words[1..9],
        [
            "turku-storage",
            "restore",
            "--machine",
            &uuid,
            "--source",
            "data",
            "--user",
            &session.user
        ]
    );

    let out = session.restore(&storage, &uuid, "data", &[]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_rsync_sees_no_difference(&tree, &agent.restore);
    if turku_testkit::is_root() {
        assert_same_tree(&tree, &agent.restore);
    }

    // Ctrl-C from a terminal (to the whole process group) ends restore mode cleanly.
    let done = session.end();
    assert!(
        done.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );
    agent.assert_nothing_left();
}

#[test]
fn a_failing_ssh_leaves_nothing_behind_and_the_source_stays_due() {
    let coordinator = Coordinator::start();
    let mut storage = StorageDaemon::start(&coordinator, "storage-f", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = one_file_source(work.path());
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    let uuid = register_and_back_up(&coordinator, &storage, &agent);
    make_due(&coordinator, &uuid, "data");
    storage.kill();
    let out = agent.run(&["ping"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ssh to"), "{}", stderr(&out));
    agent.assert_nothing_left();
    // Still due: the next ping, with the storage back, backs it up.
    storage.restart();
    agent.run_ok(&["ping"]);
    assert_eq!(storage.snapshots(&uuid, "data").len(), 2);
}

/// A ping slowed down by the daemon's bandwidth limit is interrupted mid-transfer; a second
/// ping meanwhile exits on the lock.
fn interrupted_mid_backup(sig: nix::sys::signal::Signal, exit_code: i32) {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-i", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = empty_source(work.path());
    random_file(&tree.join("slow.bin"), 2, 4 << 20);
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.etc.join("config.d/10-agent.json")).unwrap())
            .unwrap();
    config["rsyncd_command"] = serde_json::json!(["rsync", "--bwlimit=100"]);
    agent.write_config(config);
    make_due(&coordinator, &uuid, "data");
    // Output to a file, not a pipe: an agent killed outright would leave its daemon holding
    // a pipe open, and the test would wait on it instead of failing.
    let log_path = work.path().join("ping.log");
    let ping = agent
        .command(&["ping"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    eventually("the transfer begins", Duration::from_secs(30), || {
        storage.log().contains("Begin: agent-test data")
    });
    assert!(!daemons_with(&agent.tmp).is_empty(), "the daemon runs");

    let second = agent.run(&["ping"]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("is running"),
        "{}",
        stderr(&second)
    );

    signal(&ping, sig);
    let out = wait_bounded(ping, Duration::from_secs(20), "the interrupted ping");
    let said = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(out.status.code(), Some(exit_code), "{said}");
    agent.assert_nothing_left();
    assert!(storage.snapshots(&uuid, "data").is_empty());
}

#[test]
fn sigterm_mid_ping_stops_the_daemon_and_removes_the_temp_files() {
    interrupted_mid_backup(nix::sys::signal::Signal::SIGTERM, 143);
}

#[test]
fn sigint_mid_ping_stops_the_daemon_and_removes_the_temp_files() {
    interrupted_mid_backup(nix::sys::signal::Signal::SIGINT, 130);
}

/// A stand-in in front of the real coordinator for `agent_ping_checkin` only: it answers
/// with the real answers for the asking machine and for `other` merged. One machine's
/// sources all live on its storage, so this is how one ping gets sources due on two
/// storages (as the original's per-source grouping allows).
fn merging_checkin_proxy(
    coordinator: &Coordinator,
    other: turku_api_types::v1::MachineCredentials,
) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let client = coordinator.client();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let reply = if head.starts_with("POST /v1/agent_ping_checkin ") {
                let asked: turku_api_types::v1::AgentPingRequest =
                    serde_json::from_slice(&body).unwrap();
                let mut merged = client.agent_ping_checkin(&asked).unwrap();
                let extra = client
                    .agent_ping_checkin(&turku_api_types::v1::AgentPingRequest {
                        machine: other.clone(),
                    })
                    .unwrap();
                merged
                    .machine
                    .scheduled_sources
                    .extend(extra.machine.scheduled_sources);
                let json = serde_json::to_vec(&merged).unwrap();
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    json.len()
                )
                .into_bytes();
                r.extend(json);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&reply);
        }
    });
    url
}

/// Puts a machine on `storage`. Registration may already have placed it there, and the
/// coordinator refuses a move to where a machine is: that counts as done.
fn move_to(coordinator: &Coordinator, uuid: &str, storage: &str) {
    let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        coordinator.manage(&["move", uuid, storage]);
    }));
    if let Err(panic) = moved {
        let said = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            said.contains("is already on"),
            "move {uuid} to {storage}: {said}"
        );
    }
}

#[test]
fn two_storages_with_due_sources_are_both_served_in_one_ping() {
    let coordinator = Coordinator::start();
    let storage_a = StorageDaemon::start(&coordinator, "storage-one", serde_json::json!({}));
    let storage_b = StorageDaemon::start(&coordinator, "storage-two", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let (tree_a, tree_b) = (work.path().join("a"), work.path().join("b"));
    for (tree, seed) in [(&tree_a, 1), (&tree_b, 2)] {
        std::fs::create_dir(tree).unwrap();
        random_file(&tree.join("f"), seed, 100_000);
    }
    let agent = Agent::new(
        &coordinator,
        serde_json::json!({"a1": {"path": tree_a}, "b1": {"path": tree_b}}),
    );
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();
    move_to(&coordinator, &uuid, "storage-one");
    // A second machine with the same key, on the other storage, owning `b1`.
    let other = turku_api_types::v1::MachineCredentials {
        uuid: turku_testkit::system::random_uuid(),
        secret: "other-machine-secret-0123456789".into(),
    };
    let public = std::fs::read_to_string(agent.var.join("ssh_key.pub")).unwrap();
    coordinator
        .client()
        .update_config(&turku_api_types::v1::UpdateConfigRequest {
            auth: Some(turku_api_types::v1::AuthCredentials {
                name: turku_api_types::constants::defaults::MACHINE_AUTH_NAME.into(),
                secret: coordinator.machine_registration(),
            }),
            machine: turku_api_types::v1::MachineConfig {
                uuid: other.uuid.clone(),
                secret: other.secret.clone(),
                unit_name: Some("agent-test-other".into()),
                ssh_public_key: Some(public.trim().to_owned()),
                sources: [(
                    "b1".to_owned(),
                    turku_api_types::v1::SourceConfig {
                        path: Some(tree_b.display().to_string()),
                        ..Default::default()
                    },
                )]
                .into_iter()
                .collect(),
                ..Default::default()
            },
        })
        .unwrap();
    move_to(&coordinator, &other.uuid, "storage-two");
    make_due(&coordinator, &uuid, "a1");
    make_due(&coordinator, &other.uuid, "b1");

    let proxy = merging_checkin_proxy(&coordinator, other.clone());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.etc.join("config.d/10-agent.json")).unwrap())
            .unwrap();
    config["api_url"] = serde_json::json!(proxy);
    agent.write_config(config);
    let out = agent.run_ok(&["ping"]);
    let said = stderr(&out);
    assert!(
        said.contains("storage-one] INFO: End: agent-test a1"),
        "{said}"
    );
    assert!(
        said.contains("storage-two] INFO: End: agent-test-other b1"),
        "{said}"
    );
    assert_eq!(storage_a.snapshots(&uuid, "a1").len(), 1);
    assert_eq!(storage_b.snapshots(&other.uuid, "b1").len(), 1);
    agent.assert_nothing_left();
}

#[test]
fn hooks_run_around_the_session_and_a_failing_pre_command_skips_its_source() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-h", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let (dump_dir, other) = (work.path().join("dump"), work.path().join("other"));
    std::fs::create_dir(&dump_dir).unwrap();
    std::fs::create_dir(&other).unwrap();
    random_file(&other.join("f"), 4, 1000);
    let dump = dump_dir.join("all.sql");
    let agent = Agent::new(
        &coordinator,
        serde_json::json!({
            "db": {"path": dump_dir,
                   "pre_command": ["sh", "-c", format!("echo dumped > '{}'", dump.display())],
                   "post_command": format!("rm -f '{}'", dump.display())},
            "broken": {"path": other, "pre_command": "false"},
        }),
    );
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();
    make_due(&coordinator, &uuid, "db");
    make_due(&coordinator, &uuid, "broken");
    let out = agent.run(&["ping"]);
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("source broken: pre_command failed"), "{said}");
    let snaps = storage.snapshots(&uuid, "db");
    assert_eq!(snaps.len(), 1, "{said}");
    let exported = storage.export(&uuid, "db", &snaps[0]);
    assert_eq!(
        std::fs::read_to_string(exported.path().join("tree/all.sql")).unwrap(),
        "dumped\n"
    );
    assert!(!dump.exists(), "post_command ran");
    assert!(storage.snapshots(&uuid, "broken").is_empty());
    assert!(
        turku_testkit::system::due(&coordinator, &storage, &uuid).contains(&"broken".to_owned()),
        "the skipped source stays due"
    );
    agent.assert_nothing_left();
}

#[test]
fn ctrl_c_to_the_whole_process_group_during_a_pre_command_is_an_interruption() {
    let coordinator = Coordinator::start();
    let _storage = StorageDaemon::start(&coordinator, "storage-c", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = empty_source(work.path());
    let mark = work.path().join("hook-started");
    let agent = Agent::new(
        &coordinator,
        serde_json::json!({"data": {"path": tree, "pre_command":
            ["sh", "-c", format!("touch '{}'; sleep 30", mark.display())]}}),
    );
    agent.run_ok(&["update-config"]);
    make_due(&coordinator, &agent.uuid(), "data");
    let log_path = work.path().join("ping.log");
    let ping = agent
        .command(&["ping"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    eventually("the pre_command runs", Duration::from_secs(30), || {
        mark.exists()
    });
    let group = nix::unistd::Pid::from_raw(ping.id() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = wait_bounded(ping, Duration::from_secs(20), "the interrupted ping");
    let said = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(out.status.code(), Some(130), "{said}");
    agent.assert_nothing_left();
}

#[test]
fn update_config_interrupted_during_its_wait_registers_nothing() {
    let coordinator = Coordinator::start();
    let agent = Agent::new(&coordinator, serde_json::json!({}));
    let log_path = agent.tmp.with_file_name("update-config.log");
    let child = agent
        .command(&["--debug", "update-config", "--wait", "100000"])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    eventually("the random wait begins", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("waiting")
    });
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let out = wait_bounded(
        child,
        Duration::from_secs(20),
        "the interrupted update-config",
    );
    let said = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(out.status.code(), Some(143), "{said}");
    assert!(
        !agent.var.join("config.d/10-machine_uuid.json").exists(),
        "nothing generated after the signal: {said}"
    );
}

#[test]
fn a_ping_before_registration_is_silent() {
    let coordinator = Coordinator::start();
    let agent = Agent::new(&coordinator, serde_json::json!({}));
    let out = agent.run_ok(&["ping"]);
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
}

/// ssh splits the file names of `-o` options at blanks, takes quotes as its config file does
/// and expands `%` in known_hosts and key names: an agent whose TMPDIR (the pinned
/// known_hosts) and var_dir (its key) have blanks, quotes and a `%` still backs up.
#[test]
fn blanks_quotes_and_percent_in_tmpdir_and_var_dir_reach_ssh_intact() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-awkward-dirs", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = one_file_source(work.path());
    let mut agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    let awkward = work.path().join("it's a \"dir\" \\ here");
    agent.tmp = awkward.join("tmp  dir");
    agent.var = awkward.join("var 100%h");
    std::fs::create_dir_all(&agent.tmp).unwrap();
    agent.write_test_config(&coordinator);
    register_and_back_up(&coordinator, &storage, &agent);
    agent.assert_nothing_left();
}

/// An rsync daemon that cannot be executed is reported at once with the OS's reason, not
/// taken for a taken port and tried again on other ports.
#[test]
fn an_rsyncd_command_that_cannot_be_executed_is_reported_at_once() {
    let coordinator = Coordinator::start();
    let storage = StorageDaemon::start(&coordinator, "storage-noexec", serde_json::json!({}));
    let work = tempfile::tempdir().unwrap();
    let tree = one_file_source(work.path());
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    let uuid = register_and_back_up(&coordinator, &storage, &agent);
    let not_executable = work.path().join("rsync-without-x-bit");
    std::fs::write(&not_executable, "#!/bin/sh\nexec rsync \"$@\"\n").unwrap();
    let config_file = agent.etc.join("config.d/10-agent.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    config["rsyncd_command"] = serde_json::json!([not_executable]);
    agent.write_config(config);
    make_due(&coordinator, &uuid, "data");
    let out = agent.run(&["ping"]);
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert_eq!(said.matches("Permission denied").count(), 1, "{said}");
    assert!(said.contains("cannot run the rsync daemon"), "{said}");
    agent.assert_nothing_left();
}

/// An empty source folder `data` under `work`.
fn empty_source(work: &Path) -> PathBuf {
    let tree = work.join("data");
    std::fs::create_dir(&tree).unwrap();
    tree
}

/// A source folder `data` under `work` holding one small file.
fn one_file_source(work: &Path) -> PathBuf {
    let tree = empty_source(work);
    random_file(&tree.join("f"), 1, 4096);
    tree
}

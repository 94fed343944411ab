//! What `turku-storage serve` refuses (DESIGN.md §6, issue 9 "Refusals"), driven by stock
//! OpenSSH `ssh` against the real daemon, our coordinator and a stock `rsync --daemon`, all
//! on 127.0.0.1; and the same session as an OpenSSH forced command (`turku-storage ping`).
//!
//! Every refusal is set up so that a looser daemon would do visible work: the agent's
//! request names a due source its rsync daemon really serves, so a shell, a forward or an
//! oversize request that slipped through would land a snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use turku_testkit::system::{
    backup_logs, due, eventually, free_port, generate_key, hold_stdin, stderr, wait_bounded,
    AgentRsyncd, Coordinator, StorageDaemon, TestAgent, PING_BOUND,
};

/// Bound on a refused connection or session (they end in well under a second).
const REFUSAL_BOUND: Duration = Duration::from_secs(60);

/// The source is untouched: no snapshot, and the coordinator still has it due.
fn assert_nothing_backed_up(
    coordinator: &Coordinator,
    storage: &StorageDaemon,
    agent: &TestAgent,
    what: &str,
) {
    assert!(
        storage.snapshots(&agent.uuid, "data").is_empty(),
        "{what}: a snapshot landed"
    );
    assert_eq!(
        due(coordinator, storage, &agent.uuid),
        ["data"],
        "{what}: the source is no longer due"
    );
}

/// A stock `ssh` to the daemon under full control of the test: any key, any user, any
/// forwards, with or without a command (the kit's `ssh_command` always forwards the
/// agent's port and runs `turku-ping-remote`).
struct Ssh {
    known_hosts: tempfile::NamedTempFile,
    port: u16,
}

impl Ssh {
    fn to(storage: &StorageDaemon) -> Self {
        let mut known_hosts = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            known_hosts,
            "[127.0.0.1]:{} {}",
            storage.port,
            storage.host_key_line()
        )
        .unwrap();
        Ssh {
            known_hosts,
            port: storage.port,
        }
    }

    fn command(&self, key: &Path, user: &str, args: &[&str], remote: Option<&str>) -> Command {
        let mut ssh = Command::new(turku_testkit::require_binary("ssh"));
        ssh.args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts.path().display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "CheckHostIP=no"])
            .args(["-o", "ConnectTimeout=30"])
            .arg("-i")
            .arg(key)
            .args(["-p", &self.port.to_string(), "-l", user])
            .args(args)
            .arg("127.0.0.1")
            .args(remote)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ssh
    }

    /// Runs `ssh` with `stdin` written and then held open (as the original agent does)
    /// until ssh ends, within `bound`.
    fn run(&self, mut command: Command, stdin: &str, bound: Duration) -> Output {
        let mut child = command.spawn().expect("ssh");
        hold_stdin(&mut child, stdin);
        wait_bounded(child, bound, "ssh")
    }

    /// Runs `ssh` with `stdin` written and then closed.
    fn run_to_eof(&self, mut command: Command, stdin: &str, bound: Duration) -> Output {
        let mut child = command.spawn().expect("ssh");
        let mut input = child.stdin.take().expect("stdin");
        let text = stdin.as_bytes().to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&text);
        });
        wait_bounded(child, bound, "ssh")
    }
}

/// A fresh ed25519 key the coordinator has never seen.
fn unknown_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("stranger_key");
    generate_key(&key, "stranger");
    key
}

/// A ping request for `port` with the agent's real credentials.
fn request_for_port(agent: &TestAgent, rsyncd: &AgentRsyncd, port: u16) -> String {
    let text = agent.request(rsyncd, "checkin");
    let mut value: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    value["port"] = port.into();
    format!("{value}\n.\n")
}

/// When the coordinator last heard a check-in for the machine (any storage's).
fn checked_in(coordinator: &Coordinator, uuid: &str) -> Option<String> {
    let db = rusqlite::Connection::open(&coordinator.db).unwrap();
    db.query_row(
        "SELECT date_checked_in FROM turku_api_machine \
         WHERE uuid = ?1 OR uuid = replace(?1, '-', '')",
        [uuid],
        |row| row.get(0),
    )
    .unwrap()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn refusals_do_no_work_and_leave_the_daemon_healthy() {
    let coordinator = Coordinator::start();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("file"), b"backed up only by the last ping").unwrap();
    let storage = StorageDaemon::start(&coordinator, "storage-r", serde_json::json!({}));
    let agent = TestAgent::register(&coordinator, "refused-0", &[("data", tree.path())]);
    // The daemon learns the key by SIGHUP, so the unknown-key refresh is still unused.
    let refreshed = count(&storage.log(), "authorized keys refreshed");
    let hup = Command::new("kill")
        .args(["-HUP", &storage.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("the SIGHUP refresh", REFUSAL_BOUND, || {
        count(&storage.log(), "authorized keys refreshed") > refreshed
    });
    let rsyncd = agent.start_rsyncd(&[("data", tree.path())], &[]);
    agent.make_due(&coordinator, "data");
    let ssh = Ssh::to(&storage);
    let user = storage.ping_user.as_str();
    let p = rsyncd.port;
    let forward = format!("{p}:127.0.0.1:{p}");
    let request = agent.request(&rsyncd, "checkin");
    let keys = tempfile::tempdir().unwrap();
    let stranger = unknown_key(keys.path());

    // An unknown key: refused after one refresh, however many times it knocks.
    let refreshes = count(&storage.log(), "authorized keys refreshed");
    for _ in 0..2 {
        let out = ssh.run(
            ssh.command(
                &stranger,
                user,
                &["-R", &forward],
                Some("turku-ping-remote"),
            ),
            &request,
            REFUSAL_BOUND,
        );
        assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("Permission denied (publickey)"),
            "{}",
            stderr(&out)
        );
    }
    eventually("both refusals logged", REFUSAL_BOUND, || {
        count(&storage.log(), "refused login: unknown key") >= 2
    });
    assert_eq!(
        count(&storage.log(), "authorized keys refreshed"),
        refreshes + 1,
        "one rate-limited refresh for unknown keys:\n{}",
        storage.log()
    );

    // The machine's own key under another user name.
    let out = ssh.run(
        ssh.command(
            &agent.key,
            "root",
            &["-R", &forward],
            Some("turku-ping-remote"),
        ),
        &request,
        REFUSAL_BOUND,
    );
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Permission denied (publickey)"),
        "{}",
        stderr(&out)
    );
    eventually("the wrong user logged", REFUSAL_BOUND, || {
        storage.log().contains("refused login: not the ping user")
    });

    // A shell (no command) and a subsystem, with a whole valid request on stdin: OpenSSH
    // sends the request before it hears the refusal, and the daemon must not take it for one.
    let not_a_shell = "ERROR turku_storage::session: Only the ping command runs here";
    for (what, args, remote, says) in [
        ("a shell", &["-T"][..], None, "shell request failed"),
        (
            "a subsystem",
            &["-T", "-s"][..],
            Some("sftp"),
            "subsystem request failed",
        ),
    ] {
        let before = checked_in(&coordinator, &agent.uuid);
        let (refusals, ended) = (
            count(&storage.log(), "refused"),
            count(&storage.log(), not_a_shell),
        );
        let mut args = args.to_vec();
        args.extend(["-R", &forward]);
        let out = ssh.run(
            ssh.command(&agent.key, user, &args, remote),
            &request,
            REFUSAL_BOUND,
        );
        assert!(!out.status.success(), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
        eventually("the refusal logged", REFUSAL_BOUND, || {
            count(&storage.log(), "refused") > refusals
        });
        // A check-in would follow the refusal within moments: watch for one a while.
        let quiet_until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < quiet_until {
            assert_eq!(
                checked_in(&coordinator, &agent.uuid),
                before,
                "the daemon checked in for {what}:\n{}",
                storage.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eventually("the session ends saying why", REFUSAL_BOUND, || {
            count(&storage.log(), not_a_shell) > ended
        });
        assert_nothing_backed_up(&coordinator, &storage, &agent, what);
    }

    // A forward on every address, and on 0.0.0.0: refused, so ssh gives up.
    for bind in ["0.0.0.0", "*"] {
        let remote = format!("{bind}:{p}:127.0.0.1:{p}");
        let out = ssh.run(
            ssh.command(
                &agent.key,
                user,
                &["-T", "-o", "ExitOnForwardFailure=yes", "-R", &remote],
                Some("turku-ping-remote"),
            ),
            &request,
            REFUSAL_BOUND,
        );
        assert!(!out.status.success(), "-R {remote}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "remote port forwarding failed for listen port {p}"
            )),
            "-R {remote}: {}",
            stderr(&out)
        );
    }
    assert_nothing_backed_up(&coordinator, &storage, &agent, "non-loopback forwards");

    // More than 1 MiB before the `.` line: otherwise a valid request for the due source.
    let mut oversize: serde_json::Value =
        serde_json::from_str(request.lines().next().unwrap()).unwrap();
    oversize["padding"] = "x".repeat((1 << 20) + 1024).into();
    let out = agent.ping_with(&storage, p, &format!("{oversize}\n.\n"), &[]);
    assert!(!out.status.success(), "oversize: {}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR: ping request exceeds 1048576 bytes"),
        "{}",
        stderr(&out)
    );
    assert_nothing_backed_up(&coordinator, &storage, &agent, "an oversize request");

    // Malformed JSON.
    let out = agent.ping_with(
        &storage,
        p,
        "{\"action\": \"checkin\", \"port\": \n.\n",
        &[],
    );
    assert!(!out.status.success(), "malformed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR: Invalid input JSON"),
        "{}",
        stderr(&out)
    );
    assert_nothing_backed_up(&coordinator, &storage, &agent, "malformed JSON");

    // A -L forward while a session is open: the channel is refused and nothing is dialled.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let target_port = target.local_addr().unwrap().port();
    let local = free_port();
    let local_forward = format!("{local}:127.0.0.1:{target_port}");
    let mut held = agent
        .ssh_command(&storage, p, &["-L", &local_forward])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_stdin = held.stdin.take().unwrap();
    held_stdin
        .write_all(agent.request(&rsyncd, "restore").as_bytes())
        .unwrap();
    held_stdin.flush().unwrap();
    eventually("the restore session is open", REFUSAL_BOUND, || {
        storage.log().contains("Restore mode active on port")
    });
    let mut through = None;
    eventually("ssh listens on the -L port", REFUSAL_BOUND, || {
        through = TcpStream::connect(("127.0.0.1", local)).ok();
        through.is_some()
    });
    let mut through = through.unwrap();
    through
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    // ssh closes the local connection once the daemon refuses the channel.
    assert_eq!(
        through.read(&mut buf).unwrap(),
        0,
        "the -L connection is closed"
    );
    eventually("the -L refusal logged", REFUSAL_BOUND, || {
        storage
            .log()
            .contains(&format!("refused a -L forward to 127.0.0.1:{target_port}"))
    });
    match target.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the daemon dialled the -L target: {other:?}"),
    }
    drop(held_stdin);
    let held = wait_bounded(held, REFUSAL_BOUND, "the restore session");
    assert!(
        stderr(&held).contains("open failed: administratively prohibited"),
        "{}",
        stderr(&held)
    );
    assert!(held.status.success(), "{}", stderr(&held));

    // No refusal so far reached the coordinator's logs.
    assert!(backup_logs(&coordinator, &agent.uuid).is_empty());
    assert_nothing_backed_up(&coordinator, &storage, &agent, "the refusals");

    // The request names a port that the session forwarded under another number: the pull
    // must not reach it, the failure is reported, and the source stays due.
    let other = free_port();
    let out = ssh.run(
        ssh.command(
            &agent.key,
            user,
            &["-T", "-R", &format!("{other}:127.0.0.1:{p}")],
            Some("turku-ping-remote"),
        ),
        &request_for_port(&agent, &rsyncd, p),
        PING_BOUND,
    );
    let said = stderr(&out);
    assert!(
        said.contains(&format!("port {p} was never forwarded")),
        "{said}"
    );
    let logs = backup_logs(&coordinator, &agent.uuid);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(!logs[0].0, "a failed BackupLog row: {logs:?}");
    assert!(
        logs[0]
            .2
            .as_deref()
            .unwrap_or_default()
            .contains("never forwarded"),
        "{logs:?}"
    );
    assert_nothing_backed_up(&coordinator, &storage, &agent, "an unforwarded port");

    // A pty is refused and OpenSSH, told to insist (-tt), gives up. A restore request
    // (then EOF) would end cleanly had the pty been granted.
    let out = ssh.run_to_eof(
        ssh.command(
            &agent.key,
            user,
            &["-tt", "-R", &forward],
            Some("turku-ping-remote"),
        ),
        &agent.request(&rsyncd, "restore"),
        REFUSAL_BOUND,
    );
    assert!(
        stderr(&out).contains("PTY allocation request failed"),
        "{}",
        stderr(&out)
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    eventually("the pty refusal logged", REFUSAL_BOUND, || {
        storage.log().contains("refused a pty")
    });

    // After all that, the daemon still backs the machine up as the original agent drives it.
    let out = agent.ping(&storage, &rsyncd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(storage.snapshots(&agent.uuid, "data").len(), 1);
    assert!(due(&coordinator, &storage, &agent.uuid).is_empty());
    storage.assert_verifies_clean();
}

#[test]
fn a_client_that_never_sends_its_request_is_timed_out() {
    let coordinator = Coordinator::start();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("file"), b"x").unwrap();
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-idle",
        serde_json::json!({"idle_timeout": 2}),
    );
    let agent = TestAgent::register(&coordinator, "silent", &[("data", tree.path())]);
    let rsyncd = agent.start_rsyncd(&[("data", tree.path())], &[]);
    agent.make_due(&coordinator, "data");

    let started = Instant::now();
    let out = agent.ping_with(&storage, rsyncd.port, "", &[]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR: No complete ping request arrived in time (2 s)"),
        "{}\ndaemon log:\n{}",
        stderr(&out),
        storage.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_nothing_backed_up(&coordinator, &storage, &agent, "a silent client");

    // The daemon still serves the machine.
    let out = agent.ping(&storage, &rsyncd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(storage.snapshots(&agent.uuid, "data").len(), 1);
}

/// `turku-storage -c DIR ping UUID` as sshd runs it for a forced command.
fn forced_ping(storage: &StorageDaemon, uuid: &str) -> Command {
    let mut ping = Command::new(&storage.binary);
    ping.arg("-c")
        .arg(&storage.config_dir)
        .args(["ping", uuid])
        .env("TURKU_LOG", "warn")
        .env_remove("TURKU_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ping
}

/// Runs a forced ping with `stdin` (then EOF, as sshd gives when the agent's ssh ends).
fn run_forced(storage: &StorageDaemon, uuid: &str, stdin: &str) -> Output {
    let mut child = forced_ping(storage, uuid).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let text = stdin.as_bytes().to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&text);
    });
    wait_bounded(child, PING_BOUND, "turku-storage ping")
}

#[test]
fn the_forced_command_backs_up_into_the_same_store_one_session_at_a_time() {
    let coordinator = Coordinator::start();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("data");
    turku_testkit::make_awkward_tree(&tree);
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-forced",
        serde_json::json!({"preserve_hard_links": true}),
    );
    let agent = TestAgent::register(&coordinator, "forced-0", &[("data", &tree)]);
    let rsyncd = agent.start_rsyncd(&[("data", &tree)], &[]);
    agent.make_due(&coordinator, "data");

    // Malformed stdin: the same clear error as the daemon's.
    let out = run_forced(&storage, &agent.uuid, "{\"port\": 1,\n.\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ERROR: Invalid input JSON"),
        "{}",
        stderr(&out)
    );

    // A restore session holds the machine's lock until its stdin ends.
    let mut holder = forced_ping(&storage, &agent.uuid).spawn().unwrap();
    let mut holder_stdin = holder.stdin.take().unwrap();
    holder_stdin
        .write_all(agent.request(&rsyncd, "restore").as_bytes())
        .unwrap();
    holder_stdin.flush().unwrap();
    let holder_err = holder.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(holder_err).lines() {
            let line = line.unwrap_or_default();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Restore mode active") {
                let _ = tx.send(());
            }
        }
        seen
    });
    rx.recv_timeout(REFUSAL_BOUND)
        .expect("the forced restore session started");

    let out = run_forced(&storage, &agent.uuid, &agent.request(&rsyncd, "checkin"));
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("another session of machine {}", agent.uuid)),
        "{}",
        stderr(&out)
    );
    assert_nothing_backed_up(&coordinator, &storage, &agent, "a second forced session");

    drop(holder_stdin);
    holder.stderr = None;
    let done = wait_bounded(holder, REFUSAL_BOUND, "the forced restore session");
    assert!(done.status.success());
    let said = reader.join().unwrap();
    assert!(said.contains("Restore mode finished"), "{said}");

    // Now a backup lands in the daemon's store, and the daemon is unbothered.
    let out = run_forced(&storage, &agent.uuid, &agent.request(&rsyncd, "checkin"));
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = storage.snapshots(&agent.uuid, "data");
    assert_eq!(snaps.len(), 1, "{snaps:?}\n{}", stderr(&out));
    let exported = storage.export(&agent.uuid, "data", &snaps[0]);
    turku_testkit::assert_same_tree(&tree, &exported.path().join("tree"));
    let logs = backup_logs(&coordinator, &agent.uuid);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].0, "{logs:?}");
    assert!(due(&coordinator, &storage, &agent.uuid).is_empty());
    storage.assert_verifies_clean();
}

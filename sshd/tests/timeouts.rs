//! `turku-storage pull` time bounds and password-file checks, as a user meets them: hostile
//! daemons written here (silent, stalling, trickling) end the run with a clear message and
//! no new snapshot, earlier snapshots intact; a real stock `rsync --daemon` pulled with a
//! short `--timeout` still succeeds; a password file that is no regular file (a FIFO) is
//! refused at once, a symlinked one judged by its target. Every child process and peer
//! thread is bounded.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use turku_proto_rsync::codec::flist::{FlistEncoder, FlistOptions};
use turku_proto_rsync::codec::mux::{encode_data, encode_frame, MsgTag};
use turku_proto_rsync::codec::prim::{put_i32, put_varint};
use turku_proto_rsync::constants::{S_IFDIR, S_IFREG};
use turku_proto_rsync::FileEntry;
use turku_testkit::{assert_same_tree, random_bytes, RsyncDaemon};

mod common;
use common::{export_within, init, run_bounded, run_within, turku, CHILD_BOUND};

/// The protocol the fake daemons speak: multiplexed, without checksum negotiation.
const PROTOCOL: u32 = 31;

/// `turku-storage pull` of machine `m`, source `data`, from `rsync://127.0.0.1:PORT/data/`.
fn pull(store: &Path, port: u16, extra: &[&str]) -> Output {
    let mut c = turku(store);
    c.args(["pull", "--machine", "m", "--source", "data"])
        .args(extra)
        .arg(format!("rsync://127.0.0.1:{port}/data/"));
    run_bounded(c)
}

fn snapshot_names(store: &Path) -> Vec<String> {
    let mut c = turku(store);
    c.arg("snapshots");
    let out = run_bounded(c);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap().to_owned())
        .collect()
}

fn verify(store: &Path) {
    let mut c = turku(store);
    c.arg("verify");
    let out = run_bounded(c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A stock daemon serving `src` as `data` (no auth), a store holding one good snapshot of
/// it, and that snapshot's name.
fn store_with_one_snapshot(dir: &Path, src: &Path) -> (RsyncDaemon, PathBuf, String) {
    let daemon = RsyncDaemon::start(&dir.join("daemon"), &[("data", src)], None);
    let store = dir.join("store");
    init(&store);
    let out = pull(&store, daemon.port, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (daemon, store, name)
}

/// After a failed pull: it said `expect`, made no snapshot, and the earlier one is whole.
fn assert_failed_cleanly(out: &Output, expect: &str, dir: &Path, store: &Path, src: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull succeeded: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(err.contains("no snapshot was made"), "{err}");
    let names = snapshot_names(store);
    assert_eq!(names.len(), 1, "{names:?}");
    verify(store);
    let restored = dir.join(format!("restored-{}", names.len()));
    export_within(store, &names[0], &restored, CHILD_BOUND);
    assert_same_tree(src, &restored);
}

fn small_tree(src: &Path) {
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a"), b"first").unwrap();
    fs::write(src.join("sub/b"), random_bytes(7, 100_000)).unwrap();
}

// ------------------------------------------------------------------ hostile daemons

fn entry(name: &str, mode: u32, size: i64) -> FileEntry {
    FileEntry {
        mtime: 1_700_000_000,
        top_dir: name == ".",
        ..FileEntry::new(name.as_bytes().to_vec(), mode, size)
    }
}

/// Greeting, `OK`, compat flags, seed, then a file list of `.` and one new file: enough for
/// the client to start requesting.
fn greeting_and_file_list() -> Vec<u8> {
    let mut b = format!("@RSYNCD: {PROTOCOL}.0\n@RSYNCD: OK\n").into_bytes();
    put_varint(&mut b, 0);
    put_i32(&mut b, 1);
    let mut enc = FlistEncoder::new(FlistOptions::archive(PROTOCOL, 0, false));
    let mut list = Vec::new();
    enc.encode(&entry(".", S_IFDIR | 0o755, 4096), &mut list);
    enc.encode(&entry("new-file", S_IFREG | 0o644, 5), &mut list);
    enc.encode_end(0, &mut list);
    encode_data(&list, &mut b);
    b
}

/// A one-connection fake daemon on 127.0.0.1: `script` runs on the accepted socket, then
/// the socket is drained until the client closes it. Returns the port.
fn fake_daemon(script: impl FnOnce(&mut TcpStream) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        // Bounded even if the client never closes: the test fails on its own bound first.
        sock.set_read_timeout(Some(CHILD_BOUND)).unwrap();
        script(&mut sock);
        let mut buf = [0u8; 4096];
        while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
    });
    port
}

#[test]
fn a_daemon_that_accepts_and_says_nothing_hits_the_contimeout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (_daemon, store, _) = store_with_one_snapshot(tmp.path(), &src);
    let port = fake_daemon(|_| {});
    let out = pull(&store, port, &["--contimeout", "1"]);
    assert_failed_cleanly(
        &out,
        "the rsync daemon did not finish its greeting and authentication within 1 s",
        tmp.path(),
        &store,
        &src,
    );
}

#[test]
fn a_daemon_that_stalls_mid_transfer_hits_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (_daemon, store, _) = store_with_one_snapshot(tmp.path(), &src);
    let port = fake_daemon(|sock| {
        sock.write_all(&greeting_and_file_list()).unwrap();
    });
    let started = Instant::now();
    let out = pull(&store, port, &["--timeout", "1"]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_failed_cleanly(
        &out,
        "no data from the rsync daemon for 1 s",
        tmp.path(),
        &store,
        &src,
    );
}

#[test]
fn a_daemon_trickling_keepalives_hits_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let (_daemon, store, _) = store_with_one_snapshot(tmp.path(), &src);
    let port = fake_daemon(|sock| {
        sock.write_all(&greeting_and_file_list()).unwrap();
        // One byte of an empty data frame (a keep-alive) every 500 ms, well under the 3 s
        // timeout, until the client hangs up. Without the trickle the timeout would fire
        // 3 s before the 6 s deadline.
        let mut keepalive = Vec::new();
        encode_frame(MsgTag::Data, &[], &mut keepalive);
        for b in keepalive.iter().cycle() {
            std::thread::sleep(Duration::from_millis(500));
            if sock.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
        }
    });
    let out = pull(&store, port, &["--timeout", "3", "--deadline", "6"]);
    assert_failed_cleanly(
        &out,
        "the pull did not finish within its deadline of 6 s",
        tmp.path(),
        &store,
        &src,
    );
}

/// A stock `rsync --daemon` serving `src` as `data`, sending at most `bwlimit` KiB/s, so a
/// transfer of a few MiB lasts several seconds with data trickling steadily. Killed on drop.
struct SlowDaemon {
    child: std::process::Child,
    port: u16,
}

impl Drop for SlowDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SlowDaemon {
    fn start(dir: &Path, src: &Path, bwlimit_kib: u32) -> SlowDaemon {
        let rsync = turku_testkit::require_binary("rsync");
        fs::create_dir_all(dir).unwrap();
        let ids = if turku_testkit::is_root() {
            "uid = root\ngid = root\n"
        } else {
            ""
        };
        let conf = dir.join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "use chroot = false\nnumeric ids = yes\n{ids}[data]\npath = {}\nread only = true\n",
                src.display()
            ),
        )
        .unwrap();
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(&rsync)
                .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--bwlimit={bwlimit_kib}"))
                .arg(format!("--config={}", conf.display()))
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            for _ in 0..100 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return SlowDaemon { child, port };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("rsync --daemon did not start");
    }
}

/// A stock daemon, told our 5 s timeout (so it enforces it on us as well: it needs our
/// keep-alives while it streams and we have nothing to ask), sending at a limited rate: the
/// first pull lasts longer than the timeout, with our local work (chunking, compressing,
/// the store) between waits; the second pulls a delta against the previous version read
/// back from the store. No false timeout on either side. The timeout is short but not so
/// short that a busy machine stalling either process for a moment would trip it.
#[test]
fn a_short_timeout_against_stock_rsync_is_no_false_positive() {
    const SIZE: usize = 4 * 1024 * 1024;
    /// About 8 s for `SIZE`: comfortably past the timeout.
    const BWLIMIT_KIB: u32 = 512;
    const TIMEOUT_SECS: u64 = 5;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let mut data = random_bytes(11, SIZE);
    fs::write(src.join("big"), &data).unwrap();
    for i in 0..300 {
        fs::write(src.join("sub").join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let daemon = SlowDaemon::start(&tmp.path().join("daemon"), &src, BWLIMIT_KIB);
    let store = tmp.path().join("store");
    init(&store);
    let timeout = TIMEOUT_SECS.to_string();
    let flags = [
        "--timeout",
        &timeout,
        "--contimeout",
        &timeout,
        "--deadline",
        "300",
    ];
    let started = Instant::now();
    let out = pull(&store, daemon.port, &flags);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "false timeout? {err}");
    // Not a speed check: the run must have outlasted the timeout for the test to mean
    // anything (the rate limit guarantees it).
    assert!(
        started.elapsed() > Duration::from_secs(TIMEOUT_SECS),
        "{:?}",
        started.elapsed()
    );

    data[SIZE / 2..SIZE / 2 + 4096].copy_from_slice(&random_bytes(12, 4096));
    fs::write(src.join("big"), &data).unwrap();
    fs::write(src.join("a"), b"second").unwrap();
    let out = pull(&store, daemon.port, &flags);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "false timeout? {err}");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let restored = tmp.path().join("restored");
    export_within(&store, &name, &restored, CHILD_BOUND);
    assert_same_tree(&src, &restored);
    assert_eq!(snapshot_names(&store).len(), 2);
}

#[test]
fn a_password_file_open_to_others_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    init(&store);
    let pw = tmp.path().join("pw");
    fs::write(&pw, "secret\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    // Refused before any connection: the port need not be served.
    let out = pull(&store, 9, &["--password-file", pw.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("must not be accessible by group or others"),
        "{err}"
    );
    assert!(snapshot_names(&store).is_empty());
}

/// Refused before any connection: a pull with `--password-file pw` to a port nobody serves.
fn pull_with_password_file(store: &Path, pw: &Path, bound: Duration) -> Output {
    let mut c = turku(store);
    c.args([
        "pull",
        "--machine",
        "m",
        "--source",
        "data",
        "--password-file",
    ])
    .arg(pw)
    .arg("rsync://127.0.0.1:9/data/");
    run_within(c, bound)
}

/// A FIFO as password file (directly or behind a symlink) is refused at once: opening it
/// must not wait for a writer that never comes.
#[test]
fn a_fifo_as_password_file_is_refused_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    init(&store);
    let fifo = tmp.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let link = tmp.path().join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for pw in [&fifo, &link] {
        // Generous for a loaded machine, yet far shorter than forever.
        let out = pull_with_password_file(&store, pw, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("is not a regular file"), "{err}");
    }
    assert!(snapshot_names(&store).is_empty());
}

/// A symlink is followed, as stock rsync follows it (secret mounts hand out symlinks), and
/// judged by its target: a link to a 0600 file authenticates, a link to a file open to
/// others is refused although the link itself shows mode 0777.
#[test]
fn a_symlinked_password_file_is_judged_by_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let daemon = RsyncDaemon::start(
        &tmp.path().join("daemon"),
        &[("data", &src)],
        Some(("backup", "Pw-8a1")),
    );
    let store = tmp.path().join("store");
    init(&store);

    let open_to_others = tmp.path().join("pw-644");
    fs::write(&open_to_others, "Pw-8a1\n").unwrap();
    fs::set_permissions(&open_to_others, fs::Permissions::from_mode(0o644)).unwrap();
    let link = tmp.path().join("link-644");
    std::os::unix::fs::symlink(&open_to_others, &link).unwrap();
    let out = pull_with_password_file(&store, &link, CHILD_BOUND);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("must not be accessible by group or others"),
        "{err}"
    );

    let private = tmp.path().join("secrets").join("pw");
    fs::create_dir_all(private.parent().unwrap()).unwrap();
    fs::write(&private, "Pw-8a1\n").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let link = tmp.path().join("link-600");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    let mut c = turku(&store);
    c.args([
        "pull",
        "--machine",
        "m",
        "--source",
        "data",
        "--password-file",
    ])
    .arg(&link)
    .arg(format!("rsync://backup@127.0.0.1:{}/data/", daemon.port));
    let out = run_bounded(c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let restored = tmp.path().join("restored");
    export_within(&store, &name, &restored, CHILD_BOUND);
    assert_same_tree(&src, &restored);
}

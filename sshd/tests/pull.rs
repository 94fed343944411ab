//! `turku-storage pull` against a real stock `rsync --daemon` on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, make_awkward_tree, random_bytes, RsyncDaemon,
};

const USER: &str = "turku";
const PASSWORD: &str = "s3cret-pw";

fn turku(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_turku-storage"));
    c.env_remove("TURKU_STORE")
        .env_remove("RSYNC_PASSWORD")
        .arg("--store")
        .arg(store);
    c
}

fn pull(
    store: &Path,
    daemon: &RsyncDaemon,
    module: &str,
    password: &str,
    extra: &[&str],
) -> Output {
    turku(store)
        .args(["pull", "--machine", "m", "--source", module])
        .args(extra)
        .arg(format!(
            "rsync://{USER}@127.0.0.1:{}/{module}/",
            daemon.port
        ))
        .env("RSYNC_PASSWORD", password)
        .output()
        .unwrap()
}

fn pull_ok(store: &Path, daemon: &RsyncDaemon, module: &str, extra: &[&str]) -> (String, String) {
    let out = pull(store, daemon, module, PASSWORD, extra);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pull failed: {err}");
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), err)
}

/// A `key value` figure from the stats line.
fn stat(stderr: &str, key: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("files ")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == key)
        .unwrap_or_else(|| panic!("{key} not in {line}"));
    words[i + 1].parse().unwrap()
}

fn init(store: &Path) {
    let out = turku(store).arg("init").output().unwrap();
    assert!(out.status.success());
}

/// A daemon serving `src` as module `data` (with auth) and a new store, both under `dir`.
fn serve_and_init(dir: &Path, src: &Path) -> (RsyncDaemon, PathBuf) {
    let daemon = RsyncDaemon::start(
        &dir.join("daemon"),
        &[("data", src)],
        Some((USER, PASSWORD)),
    );
    let store = dir.join("store");
    init(&store);
    (daemon, store)
}

fn export(store: &Path, snapshot: &str, to: &Path) {
    let out = turku(store)
        .args([
            "export",
            "--machine",
            "m",
            "--source",
            "data",
            "--snapshot",
            snapshot,
            "--to",
        ])
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn snapshot_count(store: &Path) -> usize {
    let out = turku(store).arg("snapshots").output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn pulled_tree_exports_identical_and_an_unchanged_pull_moves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_awkward_tree(&src);
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let (first, err) = pull_ok(&store, &daemon, "data", &["--hard-links"]);
    assert!(first.starts_with("data_"), "{first}");
    assert!(stat(&err, "literal") > 5_000_000, "{err}");
    let out = tmp.path().join("out");
    export(&store, &first, &out);
    assert_same_tree(&src, &out);
    assert_rsync_sees_no_difference(&src, &out);

    let (second, err) = pull_ok(&store, &daemon, "data", &["--hard-links"]);
    assert_eq!(stat(&err, "transferred"), 0, "{err}");
    assert_eq!(stat(&err, "new-bytes"), 0, "{err}");
    assert_eq!(stat(&err, "stored"), 0, "{err}");
    assert!(stat(&err, "wire-read") < 20_000, "{err}");
    let out2 = tmp.path().join("out2");
    export(&store, &second, &out2);
    assert_same_tree(&src, &out2);
    let verify = turku(&store).arg("verify").output().unwrap();
    assert!(verify.status.success());
}

#[test]
fn a_rewrite_in_the_middle_of_a_big_file_moves_a_small_delta() {
    const SIZE: usize = 256 * 1024 * 1024;
    const REWRITE: usize = 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut data = random_bytes(1, SIZE);
    fs::write(src.join("big"), &data).unwrap();
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    pull_ok(&store, &daemon, "data", &[]);
    data[SIZE / 2..SIZE / 2 + REWRITE].copy_from_slice(&random_bytes(2, REWRITE));
    fs::write(src.join("big"), &data).unwrap();
    let (second, err) = pull_ok(&store, &daemon, "data", &[]);
    let wire = stat(&err, "wire-read");
    assert!(wire < (SIZE / 20) as u64, "{wire} bytes on the wire: {err}");
    assert!(stat(&err, "matched") > (SIZE - 4 * REWRITE) as u64, "{err}");
    assert!(stat(&err, "new-bytes") < 16 * 1024 * 1024, "{err}");
    let out = tmp.path().join("out");
    export(&store, &second, &out);
    assert!(fs::read(out.join("big")).unwrap() == data);
}

#[test]
fn filters_and_excludes_are_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("cache/big"), b"cached").unwrap();
    fs::write(src.join("keep/a.tmp"), b"tmp").unwrap();
    fs::write(src.join("keep/b.txt"), b"txt").unwrap();
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let (snap, _) = pull_ok(
        &store,
        &daemon,
        "data",
        &[
            "--filter",
            "- *.tmp",
            "--filter",
            "merge /etc/passwd",
            "--exclude",
            "cache",
        ],
    );
    let out = tmp.path().join("out");
    export(&store, &snap, &out);
    assert!(out.join("keep/b.txt").exists());
    assert!(!out.join("keep/a.tmp").exists());
    assert!(!out.join("cache").exists());
}

#[test]
fn refusals_are_clear_and_make_no_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let out = pull(&store, &daemon, "data", "wrong", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pull(&store, &daemon, "nosuchmodule", PASSWORD, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuchmodule"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = turku(&store)
        .args(["pull", "--machine", "m", "--source", "s", "ftp://x/y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(snapshot_count(&store), 0);
    // The password file form works.
    let pw = tmp.path().join("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = turku(&store)
        .args([
            "pull",
            "--machine",
            "m",
            "--source",
            "data",
            "--password-file",
        ])
        .arg(&pw)
        .arg(format!("rsync://{USER}@127.0.0.1:{}/data/", daemon.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_count(&store), 1);
}

#[test]
fn daemon_killed_mid_transfer_fails_cleanly_and_keeps_earlier_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small"), b"first version").unwrap();
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let (first, _) = pull_ok(&store, &daemon, "data", &[]);
    for i in 0..8u64 {
        fs::write(
            src.join(format!("big-{i}")),
            random_bytes(10 + i, 64 * 1024 * 1024),
        )
        .unwrap();
    }
    let child = turku(&store)
        .args(["pull", "--machine", "m", "--source", "data"])
        .arg(format!("rsync://{USER}@127.0.0.1:{}/data/", daemon.port))
        .env("RSYNC_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // Kill the daemon's per-connection worker(s) mid-transfer.
    let killed = Command::new("pkill")
        .args(["-KILL", "-P", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "no transfer worker was running");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a broken transfer must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        snapshot_count(&store),
        1,
        "no snapshot from the broken pull"
    );
    let verify = turku(&store).arg("verify").output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let out = tmp.path().join("out");
    export(&store, &first, &out);
    assert_eq!(fs::read(out.join("small")).unwrap(), b"first version");
}

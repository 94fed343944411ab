//! `turku-storage pull` against a real stock `rsync --daemon` on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, make_awkward_tree, random_bytes, RsyncDaemon,
};

mod common;
use common::{export_within, init, stat, turku};

/// Exports here include 1 GiB and sparse 4 GiB files: generous, but never endless.
const EXPORT_BOUND: Duration = Duration::from_secs(600);
const USER: &str = "turku";
const PASSWORD: &str = "s3cret-pw";

/// `turku-storage pull` of `module` from `daemon`, not yet run.
fn pull_command(
    store: &Path,
    daemon: &RsyncDaemon,
    module: &str,
    password: &str,
    extra: &[&str],
) -> Command {
    let mut c = turku(store);
    c.args(["pull", "--machine", "m", "--source", module])
        .args(extra)
        .arg(format!(
            "rsync://{USER}@127.0.0.1:{}/{module}/",
            daemon.port
        ))
        .env("RSYNC_PASSWORD", password);
    c
}

fn pull(
    store: &Path,
    daemon: &RsyncDaemon,
    module: &str,
    password: &str,
    extra: &[&str],
) -> Output {
    pull_command(store, daemon, module, password, extra)
        .output()
        .unwrap()
}

/// Starts a pull of module `data` in the background, its output captured.
fn spawn_pull(store: &Path, daemon: &RsyncDaemon) -> std::process::Child {
    pull_command(store, daemon, "data", PASSWORD, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn pull_ok(store: &Path, daemon: &RsyncDaemon, module: &str, extra: &[&str]) -> (String, String) {
    let out = pull(store, daemon, module, PASSWORD, extra);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pull failed: {err}");
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), err)
}

/// A daemon serving `src` as module `data` (with auth) and a new store, both under `dir`.
fn serve_and_init(dir: &Path, src: &Path) -> (RsyncDaemon, PathBuf) {
    serve_with_and_init(dir, src, "")
}

/// Like [`serve_and_init`], with `module_conf` lines added to the module.
fn serve_with_and_init(dir: &Path, src: &Path, module_conf: &str) -> (RsyncDaemon, PathBuf) {
    let daemon = RsyncDaemon::start_with(
        &dir.join("daemon"),
        &[("data", src)],
        Some((USER, PASSWORD)),
        module_conf,
    );
    let store = dir.join("store");
    init(&store);
    (daemon, store)
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
    export_within(&store, &first, &out, EXPORT_BOUND);
    assert_same_tree(&src, &out);
    assert_rsync_sees_no_difference(&src, &out);

    let (second, err) = pull_ok(&store, &daemon, "data", &["--hard-links"]);
    assert_eq!(stat(&err, "transferred"), 0, "{err}");
    assert_eq!(stat(&err, "new-bytes"), 0, "{err}");
    assert_eq!(stat(&err, "stored"), 0, "{err}");
    assert!(stat(&err, "wire-read") < 20_000, "{err}");
    let out2 = tmp.path().join("out2");
    export_within(&store, &second, &out2, EXPORT_BOUND);
    assert_same_tree(&src, &out2);
    let verify = turku(&store).arg("verify").output().unwrap();
    assert!(verify.status.success());
}

#[test]
fn a_rewrite_in_the_middle_of_a_big_file_moves_a_small_delta() {
    const SIZE: usize = 1024 * 1024 * 1024;
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
    export_within(&store, &second, &out, EXPORT_BOUND);
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
    export_within(&store, &snap, &out, EXPORT_BOUND);
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
    fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
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
    let child = spawn_pull(&store, &daemon);
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
    export_within(&store, &first, &out, EXPORT_BOUND);
    assert_eq!(fs::read(out.join("small")).unwrap(), b"first version");
}

/// Whether two files hold the same bytes, read in pieces (they may be many GiB).
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// A sparse file over 4 GiB, pulled from a daemon with `timeout = 2` (the store reads and
/// checksums a 4 GiB basis on the second pull while the daemon waits), restored sparse.
#[test]
fn a_file_over_4_gib_round_trips_and_its_edit_moves_a_delta() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let len: u64 = (4 << 30) + 12345;
    let f = fs::File::create(src.join("huge")).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(b"THE-START", 0).unwrap();
    f.write_all_at(b"THE-END-MARKER!!", len - 16).unwrap();
    drop(f);
    let (daemon, store) = serve_with_and_init(tmp.path(), &src, "timeout = 2\n");
    let (first, err) = pull_ok(&store, &daemon, "data", &[]);
    assert_eq!(stat(&err, "bytes"), len, "{err}");
    let out = tmp.path().join("out");
    export_within(&store, &first, &out, EXPORT_BOUND);
    assert!(same_content(&src.join("huge"), &out.join("huge")));
    let allocated = fs::metadata(out.join("huge")).unwrap().blocks() * 512;
    assert!(
        allocated < 64 << 20,
        "restored with {allocated} bytes allocated"
    );
    fs::remove_dir_all(&out).unwrap();

    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.join("huge"))
        .unwrap();
    f.write_all_at(b"edited past the 4 GiB mark", (4 << 30) + 100)
        .unwrap();
    drop(f);
    let (second, err) = pull_ok(&store, &daemon, "data", &[]);
    assert!(stat(&err, "wire-read") < len / 20, "{err}");
    assert!(stat(&err, "matched") > len - (64 << 20), "{err}");
    export_within(&store, &second, &out, EXPORT_BOUND);
    assert!(same_content(&src.join("huge"), &out.join("huge")));
}

#[test]
fn a_hundred_thousand_files_pull_identical_and_then_move_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in 0..100 {
        let dir = src.join(format!("dir-{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            fs::write(dir.join(format!("file-{f:04}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let (first, err) = pull_ok(&store, &daemon, "data", &[]);
    assert_eq!(stat(&err, "files"), 100_000, "{err}");
    let out = tmp.path().join("out");
    export_within(&store, &first, &out, EXPORT_BOUND);
    assert_same_tree(&src, &out);
    let (_, err) = pull_ok(&store, &daemon, "data", &[]);
    assert_eq!(stat(&err, "transferred"), 0, "{err}");
    assert_eq!(stat(&err, "stored"), 0, "{err}");
}

/// A file deleted after the daemon listed it and before it sent it: rsync's exit code 24,
/// which Turku counts as success. The snapshot is made without it, with a warning.
#[test]
fn a_file_vanishing_mid_transfer_is_a_warning_not_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    // Sent first and slow enough to delete the victim while it streams.
    fs::write(src.join("a-big"), random_bytes(3, 512 * 1024 * 1024)).unwrap();
    fs::write(src.join("z-victim"), b"here at listing time").unwrap();
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let child = spawn_pull(&store, &daemon);
    // Content is flowing (the file list is long done) once the first pack is being written.
    let tmp_dir = store.join("tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fs::read_dir(&tmp_dir).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "no pack was started");
        std::thread::sleep(Duration::from_millis(5));
    }
    fs::remove_file(src.join("z-victim")).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("vanished"), "{err}");
    assert_eq!(stat(&err, "exit-code"), 24, "{err}");
    let snap = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let restored = tmp.path().join("out");
    export_within(&store, &snap, &restored, EXPORT_BOUND);
    assert!(restored.join("a-big").exists());
    assert!(!restored.join("z-victim").exists());
}

/// A file the daemon cannot read: exit code 23, which fails the pull (as in Turku) with an
/// error naming the file; no snapshot, the earlier one intact.
#[test]
fn an_unreadable_file_fails_the_pull_and_is_named() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        turku_testkit::is_root(),
        "this test needs root: the daemon module runs as nobody to be denied a root-only file"
    );
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::set_permissions(src.join("readable"), fs::Permissions::from_mode(0o644)).unwrap();
    let (daemon, store) = serve_with_and_init(tmp.path(), &src, "uid = nobody\ngid = nogroup\n");
    let (first, _) = pull_ok(&store, &daemon, "data", &[]);
    fs::write(src.join("secret"), b"root only").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = pull(&store, &daemon, "data", PASSWORD, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("exit code 23") && err.contains("secret"),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(snapshot_count(&store), 1);
    let restored = tmp.path().join("out");
    export_within(&store, &first, &restored, EXPORT_BOUND);
    assert_eq!(fs::read(restored.join("readable")).unwrap(), b"fine");
}

/// The daemon's file list is bounded by its estimated memory, per pull: over the bound
/// the pull fails clearly and makes no snapshot.
#[test]
fn a_file_list_over_its_byte_bound_fails_the_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("file-{i:02}")), b"x").unwrap();
    }
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let out = pull(
        &store,
        &daemon,
        "data",
        PASSWORD,
        &["--max-file-list-bytes", "4096"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("file list would cost more than 4096 bytes"),
        "{err}"
    );
    assert_eq!(snapshot_count(&store), 0);
    pull_ok(&store, &daemon, "data", &[]);
    assert_eq!(snapshot_count(&store), 1);
}

/// A source's `bwlimit` paces the pull: 384 KiB at 128 KiB/s cannot take under 2.5 s
/// (only the lower bound is checked: a loaded machine may be slower, never faster), and
/// the content still arrives whole.
#[test]
fn bwlimit_paces_the_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    turku_testkit::random_file(&src.join("f"), 9, 384 * 1024);
    let (daemon, store) = serve_and_init(tmp.path(), &src);
    let started = std::time::Instant::now();
    let (first, _) = pull_ok(&store, &daemon, "data", &["--bwlimit", "128"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    let out = tmp.path().join("out");
    export_within(&store, &first, &out, EXPORT_BOUND);
    assert_eq!(
        std::fs::read(out.join("f")).unwrap(),
        std::fs::read(src.join("f")).unwrap()
    );
}

//! `turku-storage push`: snapshots pushed from the store into a real stock `rsync --daemon`'s
//! writable module arrive exactly as they were backed up, and a destination holding an older
//! copy receives only the differences.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{init, run_bounded, turku};
use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, backdate_recent, is_root, make_awkward_tree,
    random_bytes, RsyncDaemon,
};

const USER: &str = "restorer";
const PASSWORD: &str = "restore-password";

fn ingest(store: &Path, dir: &Path) -> String {
    let mut c = turku(store);
    c.args(["ingest", "--machine", "m", "--source", "data"])
        .arg(dir);
    let out = run_bounded(c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A temporary folder with an initialised store in it, and where a source tree and a
/// destination go: `(tmp, store, src, dst)`.
fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (store, src, dst) = (
        tmp.path().join("store"),
        tmp.path().join("src"),
        tmp.path().join("dst"),
    );
    init(&store);
    (tmp, store, src, dst)
}

/// A stock rsync daemon with a writable module `restore` at `dst`, as the agent's.
fn receiver(tmp: &Path, dst: &Path) -> RsyncDaemon {
    RsyncDaemon::start_writable(&tmp.join("rsyncd"), "restore", dst, Some((USER, PASSWORD)))
}

fn push(store: &Path, port: u16, extra: &[&str]) -> Output {
    let mut c = turku(store);
    c.env("RSYNC_PASSWORD", PASSWORD)
        .args(["push", "--machine", "m", "--source", "data"])
        .args(extra)
        .arg(format!("rsync://{USER}@127.0.0.1:{port}/restore/"));
    run_bounded(c)
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "push failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The figure after `label` in the push's summary line (`..., 1234 bytes written, ...`).
fn summary_figure(out: &Output, label: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("pushed snapshot"))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    let before = line
        .split(label)
        .next()
        .unwrap_or_else(|| panic!("no {label} in {line}"));
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no figure before {label} in {line}"))
}

#[test]
fn the_whole_awkward_tree_arrives_as_it_was_backed_up() {
    let (tmp, store, src, dst) = workspace();
    make_awkward_tree(&src);
    backdate_recent(&src);
    ingest(&store, &src);
    fs::create_dir(&dst).unwrap();
    let daemon = receiver(tmp.path(), &dst);
    let out = push(&store, daemon.port, &[]);
    assert_ok(&out);
    assert_rsync_sees_no_difference(&src, &dst);
    if is_root() {
        assert_same_tree(&src, &dst);
    }
    assert_eq!(
        fs::read_link(dst.join("abs-link")).unwrap(),
        Path::new("/etc/hostname")
    );
}

#[test]
fn a_destination_with_an_older_copy_receives_only_the_changes() {
    let (tmp, store, src, dst) = workspace();
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    let size = 8 << 20;
    let old = random_bytes(7, size);
    let mut new = old.clone();
    // Three small edits, one of which changes the length.
    new[100_000..104_096].copy_from_slice(&random_bytes(8, 4096));
    new[5_000_000..5_000_100].fill(0xab);
    new.splice(7_000_000..7_000_000, random_bytes(9, 3000));
    fs::write(src.join("big.bin"), &new).unwrap();
    fs::write(dst.join("big.bin"), &old).unwrap();
    ingest(&store, &src);
    let daemon = receiver(tmp.path(), &dst);
    let out = push(&store, daemon.port, &[]);
    assert_ok(&out);
    assert_eq!(fs::read(dst.join("big.bin")).unwrap(), new);
    let written = summary_figure(&out, " bytes written");
    let literal = summary_figure(&out, " literal bytes");
    // The changes are ~7 KiB; blocks of ~2.9 KiB around each, plus the file list and
    // the receiver's block sums (which it sends, not we).
    assert!(
        written < (size as u64) / 50,
        "wrote {written} bytes for ~7 KiB of changes to an 8 MiB file"
    );
    assert!(literal < 64 * 1024, "sent {literal} literal bytes");
}

#[test]
fn a_sub_path_of_an_older_snapshot_can_be_pushed() {
    let (tmp, store, src, dst) = workspace();
    fs::create_dir_all(src.join("keep/inner")).unwrap();
    fs::write(src.join("keep/inner/a"), b"first").unwrap();
    fs::write(src.join("other"), b"not this").unwrap();
    let first = ingest(&store, &src);
    fs::write(src.join("keep/inner/a"), b"second").unwrap();
    ingest(&store, &src);
    fs::create_dir(&dst).unwrap();
    let daemon = receiver(tmp.path(), &dst);
    let out = push(
        &store,
        daemon.port,
        &["--snapshot", &first, "--path", "keep"],
    );
    assert_ok(&out);
    assert_eq!(fs::read(dst.join("inner/a")).unwrap(), b"first");
    assert!(!dst.join("other").exists());
    assert!(!dst.join("keep").exists());
}

#[test]
fn refusals_are_clear_errors() {
    let (tmp, store, src, dst) = workspace();
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    ingest(&store, &src);
    fs::create_dir(&dst).unwrap();
    let daemon = receiver(tmp.path(), &dst);
    // Wrong password.
    let mut c = turku(&store);
    c.env("RSYNC_PASSWORD", "wrong")
        .args(["push", "--machine", "m", "--source", "data"])
        .arg(format!("rsync://{USER}@127.0.0.1:{}/restore/", daemon.port));
    let out = run_bounded(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth"), "{err}");
    // No such snapshot.
    let out = push(&store, daemon.port, &["--snapshot", "no-such-snapshot"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-snapshot"), "{err}");
    // No such module.
    let mut c = turku(&store);
    c.env("RSYNC_PASSWORD", PASSWORD)
        .args(["push", "--machine", "m", "--source", "data"])
        .arg(format!("rsync://{USER}@127.0.0.1:{}/nothere/", daemon.port));
    let out = run_bounded(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothere"), "{err}");
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0, "nothing arrived");
}

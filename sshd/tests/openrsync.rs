//! `turku-storage pull` and `push` against a real openrsync daemon (the rsync of macOS 15+,
//! protocol 29), with stock rsync pulling from and pushing into the same daemon as the bar:
//! what stock rsync gets from openrsync, we must get too, not more and not less.
//!
//! openrsync is in no package registry, so these tests run only when `TURKU_OPENRSYNC` names
//! a binary (proto-rsync/tests/fixtures/README.md says how to build one). Without it they are
//! listed as ignored, and running them anyway (`--ignored`) fails naming the variable: they
//! never pass as if they had run. CI proves protocol-29 interop with the recorded
//! conversations replayed by proto-rsync/tests/openrsync.rs instead.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{export_within, init, run_bounded, turku, CHILD_BOUND};
use turku_testkit::openrsync::{openrsync_binary, OpenrsyncDaemon, OpenrsyncModule};
use turku_testkit::{
    assert_same_tree, backdate_recent, make_awkward_tree, observe, require_binary,
};

const USER: &str = "mac";
const PASSWORD: &str = "mac-secret";
/// An unchanged re-pull moves the file list and a few protocol words; the awkward tree's
/// list is a few KiB, its content over 5 MiB.
const UNCHANGED_WIRE_BOUND: u64 = 64 * 1024;

fn openrsync(dir: &Path, modules: &[OpenrsyncModule<'_>]) -> OpenrsyncDaemon {
    OpenrsyncDaemon::start(
        &openrsync_binary(),
        &dir.join("openrsyncd"),
        modules,
        Some((USER, PASSWORD)),
    )
}

fn url(daemon: &OpenrsyncDaemon, module: &str) -> String {
    format!("rsync://{USER}@127.0.0.1:{}/{module}/", daemon.port)
}

fn pull(store: &Path, daemon: &OpenrsyncDaemon, password: &str) -> Output {
    let mut c = turku(store);
    c.args(["pull", "--machine", "m", "--source", "data", "--hard-links"])
        .arg(url(daemon, "data"))
        .env("RSYNC_PASSWORD", password);
    run_bounded(c)
}

fn assert_ok(what: &str, out: &Output, daemon: &OpenrsyncDaemon) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}\nopenrsync log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
}

/// A `key value` figure from the pull's stats line.
fn stat(out: &Output, key: &str) -> u64 {
    common::stat(&String::from_utf8_lossy(&out.stderr), key)
}

/// Stock rsync (the bar) run with `args`, password given, bounded.
fn stock_rsync(args: &[&str], from: &str, to: &str) -> Output {
    let mut c = Command::new(require_binary("rsync"));
    c.args(args)
        .arg(from)
        .arg(to)
        .env("RSYNC_PASSWORD", PASSWORD);
    common::run_within(c, CHILD_BOUND)
}

/// At protocol 29 stock rsync leaves a symlink's own time alone (the flag that says a
/// sender sends it is 30's), so its copy keeps the time it made the link at. openrsync
/// does send it: the source's, to the second, which is what we keep. The bar takes that
/// time, so only a symlink time we got wrong shows as a difference.
fn adopt_symlink_times(src: &Path, stock: &Path) {
    for (name, o) in observe(src) {
        if o.target.is_none() {
            continue;
        }
        let path = stock.join(std::ffi::OsStr::from_bytes(&name));
        let out = Command::new("touch")
            .args(["-h", "-m", "-d"])
            .arg(format!("@{}", o.mtime.0))
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "touch {}: {out:?}", path.display());
    }
}

/// An awkward tree at `dir/src`, backdated: stock rsync takes an entry made in the second
/// of its source's mtime as right.
fn awkward_source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    make_awkward_tree(&src);
    backdate_recent(&src);
    src
}

/// openrsync serving `src` read-only as module `data`, configured under `dir`.
fn serve_data(dir: &Path, src: &Path) -> OpenrsyncDaemon {
    openrsync(
        dir,
        &[OpenrsyncModule {
            name: "data",
            path: src,
            writable: false,
        }],
    )
}

fn snapshot_count(store: &Path) -> usize {
    let out = run_bounded({
        let mut c = turku(store);
        c.arg("snapshots");
        c
    });
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
#[ignore = "needs an openrsync binary: TURKU_OPENRSYNC=/path/to/openrsync"]
fn a_pull_from_openrsync_equals_stock_rsyncs_and_an_unchanged_pull_moves_only_the_list() {
    let tmp = tempfile::tempdir().unwrap();
    let src = awkward_source(tmp.path());
    let daemon = serve_data(tmp.path(), &src);

    // The bar: stock rsync 3.x pulling the same module (it speaks 29 with openrsync).
    let stock = tmp.path().join("stock");
    let out = stock_rsync(
        &["-aH", "--numeric-ids"],
        &url(&daemon, "data"),
        &format!("{}/", stock.display()),
    );
    assert_ok("stock rsync's pull", &out, &daemon);
    adopt_symlink_times(&src, &stock);

    let store = tmp.path().join("store");
    init(&store);
    let first = pull(&store, &daemon, PASSWORD);
    assert_ok("our pull", &first, &daemon);
    let first_name = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    assert!(
        stat(&first, "literal") > 5_000_000,
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let ours = tmp.path().join("ours");
    export_within(&store, &first_name, &ours, CHILD_BOUND);
    // Whole seconds on both sides (protocol 29 carries no nanoseconds), and whatever
    // openrsync did to pre-1970 times, the same on both sides.
    assert_same_tree(&stock, &ours);

    // Unchanged: only the file list moves; nothing is received or stored.
    let second = pull(&store, &daemon, PASSWORD);
    assert_ok("the unchanged pull", &second, &daemon);
    let err = String::from_utf8_lossy(&second.stderr).into_owned();
    assert_eq!(stat(&second, "transferred"), 0, "{err}");
    assert_eq!(stat(&second, "literal"), 0, "{err}");
    assert_eq!(stat(&second, "matched"), 0, "{err}");
    assert_eq!(stat(&second, "new-bytes"), 0, "{err}");
    assert!(stat(&second, "wire-read") < UNCHANGED_WIRE_BOUND, "{err}");
    let second_name = String::from_utf8_lossy(&second.stdout).trim().to_owned();
    let ours2 = tmp.path().join("ours2");
    export_within(&store, &second_name, &ours2, CHILD_BOUND);
    assert_same_tree(&stock, &ours2);
    let verify = run_bounded({
        let mut c = turku(&store);
        c.arg("verify");
        c
    });
    assert!(verify.status.success());
}

#[test]
#[ignore = "needs an openrsync binary: TURKU_OPENRSYNC=/path/to/openrsync"]
fn a_wrong_password_is_refused_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let daemon = serve_data(tmp.path(), &src);
    let store = tmp.path().join("store");
    init(&store);
    let out = pull(&store, &daemon, "not-the-password");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // openrsync's words: "@ERROR: data: authentication failed" (stock says "auth failed").
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(snapshot_count(&store), 0);
    // The right password then works: the refusal was the password's.
    assert_ok("the pull", &pull(&store, &daemon, PASSWORD), &daemon);
    assert_eq!(snapshot_count(&store), 1);
}

/// Which entries share an inode, as sets of names (one line per set).
fn hard_link_sets(root: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut sets: std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>> = Default::default();
    for (name, o) in observe(root) {
        if let Some(leader) = o.link_leader {
            sets.entry(leader).or_default().push(name);
        }
    }
    sets.into_values().collect()
}

/// Our push equals stock rsync's push of the same tree into the same daemon, except for
/// hard links: openrsync's receiver links all of a set as we send it at protocol 29, but
/// only part of it as stock 3.x sends it (`hard-a`, `deep/hard-b`, `hard-c` arrive as
/// `hard-a` apart and the other two linked), so ours must hold the source's sets instead.
fn assert_same_as_stocks_push(src: &Path, theirs: &Path, ours: &Path) {
    let unlinked = |root: &Path| {
        let mut o = observe(root);
        for v in o.values_mut() {
            v.link_leader = None;
        }
        o
    };
    let (want, got) = (unlinked(theirs), unlinked(ours));
    for (name, w) in &want {
        let n = String::from_utf8_lossy(name);
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{n} missing from our push"));
        assert_eq!(w, g, "{n} differs from stock's push");
    }
    for name in got.keys() {
        assert!(
            want.contains_key(name),
            "{} is extra in our push",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(hard_link_sets(ours), hard_link_sets(src), "hard-link sets");
}

/// Our push (a restore) into an openrsync module's root and into a directory below it that
/// does not exist yet, against stock rsync's pushes of the same trees into the same daemon.
/// The module root goes as `MODULE/./`: a bare `MODULE/` becomes an empty path openrsync's
/// receiver fails to make, for stock's client too.
#[test]
#[ignore = "needs an openrsync binary: TURKU_OPENRSYNC=/path/to/openrsync"]
fn a_push_into_an_openrsync_module_equals_stock_rsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = awkward_source(tmp.path());
    let store = tmp.path().join("store");
    init(&store);
    let mut c = turku(&store);
    c.args(["ingest", "--machine", "m", "--source", "data"])
        .arg(&src);
    let out = run_bounded(c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dirs = ["ours", "theirs", "ours-sub", "theirs-sub"].map(|d| tmp.path().join(d));
    for d in &dirs {
        fs::create_dir(d).unwrap();
    }
    let modules: Vec<OpenrsyncModule<'_>> = ["ours", "theirs", "ours-sub", "theirs-sub"]
        .iter()
        .zip(&dirs)
        .map(|(name, path)| OpenrsyncModule {
            name,
            path,
            writable: true,
        })
        .collect();
    let daemon = openrsync(tmp.path(), &modules);
    let push = |path: Option<&str>, dest: String| {
        let mut c = turku(&store);
        c.env("RSYNC_PASSWORD", PASSWORD)
            .args(["push", "--machine", "m", "--source", "data"]);
        if let Some(p) = path {
            c.args(["--path", p]);
        }
        c.arg(dest);
        run_bounded(c)
    };

    // The whole snapshot into the module root. The bar: stock rsync pushing the same tree
    // (its destination spelled so openrsync can receive it, as ours is).
    let out = stock_rsync(
        &["-aH", "--numeric-ids"],
        &format!("{}/", src.display()),
        &format!("{}./", url(&daemon, "theirs")),
    );
    assert_ok("stock rsync's push", &out, &daemon);
    assert_ok("our push", &push(None, url(&daemon, "ours")), &daemon);
    assert_same_as_stocks_push(&src, &dirs[1], &dirs[0]);

    // Part of the snapshot into a directory the module does not hold yet.
    let out = stock_rsync(
        &["-aH", "--numeric-ids"],
        &format!("{}/", src.join("deep").display()),
        &format!("{}restored/", url(&daemon, "theirs-sub")),
    );
    assert_ok("stock rsync's push of deep/", &out, &daemon);
    let out = push(
        Some("deep"),
        format!("{}restored/", url(&daemon, "ours-sub")),
    );
    assert_ok("our push of deep/", &out, &daemon);
    assert!(dirs[2].join("restored/a/b/c/d/e/f/g/h/i/j/leaf").is_file());
    assert_same_tree(&dirs[3], &dirs[2]);
}

//! `export --to` runs as root on the storage unit: a local user whose uid appears in the
//! snapshot must not be able to steer it. The export's race hook plays that user at the exact
//! moments a real one would race it, so these tests are deterministic. They need root.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use turku_store::{
    make_dev, EntryKind, ExportOptions, ExportStep, Metadata, Snapshot, Store, StoreConfig,
    StoreError,
};

/// An owner that exists nowhere on this machine: a restore must set it, never guess.
const SNAPSHOT_UID: u32 = 4242;
const SNAPSHOT_GID: u32 = 4343;
/// `nobody`, for the export run by a real unprivileged process.
const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests restore owners and devices and play a hostile user: run them as root"
    );
}

fn meta(perm: u32) -> Metadata {
    Metadata {
        perm,
        uid: SNAPSHOT_UID,
        gid: SNAPSHOT_GID,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 123_456_789,
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Everything under `dir` with its mode, owner and content, to see that nothing changed.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let m = fs::symlink_metadata(dir).unwrap();
    let content = if m.is_file() {
        fs::read(dir).unwrap()
    } else {
        Vec::new()
    };
    out.push((dir.to_path_buf(), m.mode(), m.uid(), m.gid(), content));
    if m.is_dir() {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            out.extend(fingerprint(&p));
        }
    }
    out
}

/// A snapshot with nested folders, files, a hard link and a symlink, all owned by
/// `SNAPSHOT_UID` and open to everyone (what an attacker would like root to leave behind).
fn nested_snapshot(store: &Store) -> Snapshot {
    let mut w = store.begin_snapshot("m", "nested").unwrap();
    w.set_root_meta(meta(0o755));
    w.add_dir(b"d", meta(0o777)).unwrap();
    w.add_dir(b"d/sub", meta(0o777)).unwrap();
    w.add_dir(b"e", meta(0o777)).unwrap();
    for (path, group) in [
        (&b"d/f"[..], 0),
        (b"d/sub/g", 7),
        (b"e/h", 0),
        (b"e/g-again", 7),
    ] {
        let mut f = w.add_file(path, meta(0o666), group).unwrap();
        f.write_all(b"from the snapshot").unwrap();
        f.finish().unwrap();
    }
    w.add_symlink(b"e/link", meta(0o777), b"../d/f").unwrap();
    w.commit().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    store: Store,
    /// Outside the destination: nothing of it may change.
    victim: PathBuf,
    dest: PathBuf,
}

fn fixture() -> Fixture {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(victim.join("keep"), b"precious").unwrap();
    fs::set_permissions(victim.join("keep"), fs::Permissions::from_mode(0o600)).unwrap();
    let dest = tmp.path().join("out");
    Fixture {
        _tmp: tmp,
        store,
        victim,
        dest,
    }
}

/// Between the creation of a folder and root's work in it, the owner-to-be swaps it for a
/// symlink to a folder of root's: the export must not write through it.
#[test]
fn a_folder_swapped_for_a_symlink_is_never_followed() {
    for swapped in ["d", "d/sub", "e"] {
        let fx = fixture();
        let snap = nested_snapshot(&fx.store);
        let before = fingerprint(&fx.victim);
        let target = fx.dest.join(swapped);
        let hook = |step: ExportStep<'_>| {
            if let ExportStep::FolderCreated(path) = step {
                if path == target {
                    fs::remove_dir(path).unwrap();
                    std::os::unix::fs::symlink(&fx.victim, path).unwrap();
                }
            }
        };
        let options = ExportOptions {
            race_hook: Some(&hook),
            ..ExportOptions::default()
        };
        let result = fx.store.export_to_dir_with(&snap, b"", &fx.dest, &options);
        assert_eq!(fingerprint(&fx.victim), before, "{swapped}: victim changed");
        // Decided: a folder replaced under us ends the export with a clear error.
        let err = result.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Io { .. }) && msg.contains("replaced"),
            "{swapped}: {msg}"
        );
        assert!(msg.contains(swapped), "{msg}");
        // A failed export stays private.
        assert_eq!(mode_of(&fx.dest), 0o700);
    }
}

/// After a file's content is written and before its mode is set, the file is swapped for a
/// symlink to a file of root's: the chmod and chown must not reach that file.
#[test]
fn a_file_swapped_for_a_symlink_before_its_chmod_leaves_the_target_alone() {
    let fx = fixture();
    let mut w = fx.store.begin_snapshot("m", "files").unwrap();
    w.set_root_meta(meta(0o755));
    w.add_dir(b"d", meta(0o755)).unwrap();
    let mut f = w.add_file(b"d/f", meta(0o4777), 0).unwrap();
    f.write_all(b"x").unwrap();
    f.finish().unwrap();
    let snap = w.commit().unwrap();
    let victim_file = fx.victim.join("keep");
    let before = fingerprint(&fx.victim);
    let target = fx.dest.join("d/f");
    let swapped = RefCell::new(false);
    let hook = |step: ExportStep<'_>| {
        if let ExportStep::FileWritten(path) = step {
            if path == target {
                fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink(&victim_file, path).unwrap();
                *swapped.borrow_mut() = true;
            }
        }
    };
    let options = ExportOptions {
        race_hook: Some(&hook),
        ..ExportOptions::default()
    };
    // Decided: the export completes; what it set, it set on the file it created.
    fx.store
        .export_to_dir_with(&snap, b"", &fx.dest, &options)
        .unwrap();
    assert!(*swapped.borrow());
    assert_eq!(fingerprint(&fx.victim), before, "victim changed");
    assert_eq!(mode_of(&victim_file), 0o600);
    assert!(fs::symlink_metadata(&target).unwrap().is_symlink());
}

/// Every folder, the destination included, stays private to root until all content is in;
/// then each gets the snapshot's owner and mode.
#[test]
fn folders_stay_private_until_the_export_is_complete() {
    let fx = fixture();
    let snap = nested_snapshot(&fx.store);
    let seen = RefCell::new(Vec::new());
    let hook = |step: ExportStep<'_>| {
        let path = match step {
            ExportStep::FolderCreated(p) | ExportStep::FileWritten(p) => p,
        };
        let mut ancestors = Vec::new();
        let mut p = path.parent();
        while let Some(dir) = p {
            ancestors.push(dir.to_path_buf());
            if dir == fx.dest {
                break;
            }
            p = dir.parent();
        }
        for dir in ancestors {
            let m = fs::symlink_metadata(&dir).unwrap();
            seen.borrow_mut()
                .push((dir, m.mode() & 0o7777, m.uid(), m.gid()));
        }
    };
    let options = ExportOptions {
        race_hook: Some(&hook),
        ..ExportOptions::default()
    };
    let stats = fx
        .store
        .export_to_dir_with(&snap, b"", &fx.dest, &options)
        .unwrap();
    assert_eq!((stats.dirs, stats.files, stats.hard_links), (3, 3, 1));
    let seen = seen.into_inner();
    assert!(seen.iter().any(|(dir, ..)| *dir == fx.dest));
    assert!(seen.iter().any(|(dir, ..)| *dir == fx.dest.join("d/sub")));
    for (dir, mode, uid, gid) in &seen {
        assert_eq!(
            (*mode, *uid, *gid),
            (0o700, 0, 0),
            "{} during the export",
            dir.display()
        );
    }
    let m = fs::metadata(&fx.dest).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o755, SNAPSHOT_UID, SNAPSHOT_GID)
    );
    assert_eq!(m.mtime(), 1_600_000_000);
    for dir in ["d", "d/sub", "e"] {
        let m = fs::metadata(fx.dest.join(dir)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.mtime_nsec()),
            (0o777, SNAPSHOT_UID, 123_456_789),
            "{dir}"
        );
    }
    let link = fs::symlink_metadata(fx.dest.join("e/link")).unwrap();
    assert_eq!((link.uid(), link.mtime()), (SNAPSHOT_UID, 1_600_000_000));
    assert_eq!(
        fs::metadata(fx.dest.join("e/g-again")).unwrap().ino(),
        fs::metadata(fx.dest.join("d/sub/g")).unwrap().ino()
    );
}

/// Setuid files, setgid folders and devices, the way a restore of a system needs them.
fn privileged_snapshot(store: &Store) -> Snapshot {
    let mut w = store.begin_snapshot("m", "privileged").unwrap();
    w.set_root_meta(meta(0o751));
    w.add_dir(b"shared", meta(0o2775)).unwrap();
    for (path, perm) in [
        (&b"suid"[..], 0o4755),
        (b"sgid", 0o2755),
        (b"shared/plain", 0o644),
    ] {
        let mut f = w.add_file(path, meta(perm), 0).unwrap();
        f.write_all(b"#!/bin/sh\n").unwrap();
        f.finish().unwrap();
    }
    w.add_special(b"null", EntryKind::CharDevice, meta(0o666), make_dev(1, 3))
        .unwrap();
    w.add_special(b"pipe", EntryKind::Fifo, meta(0o4640), 0)
        .unwrap();
    w.commit().unwrap()
}

#[test]
fn as_root_owners_devices_and_setid_bits_are_restored_as_the_snapshot_says() {
    let fx = fixture();
    let snap = privileged_snapshot(&fx.store);
    let stats = fx.store.export_to_dir(&snap, b"", &fx.dest).unwrap();
    assert_eq!(stats.skipped, 0);
    for (name, perm) in [
        ("suid", 0o4755),
        ("sgid", 0o2755),
        ("shared", 0o2775),
        ("shared/plain", 0o644),
        ("null", 0o666),
        ("pipe", 0o4640),
        ("", 0o751),
    ] {
        let m = fs::symlink_metadata(fx.dest.join(name)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (perm, SNAPSHOT_UID, SNAPSHOT_GID),
            "{name:?}"
        );
    }
    let null = fs::symlink_metadata(fx.dest.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), make_dev(1, 3));
    assert!(fs::symlink_metadata(fx.dest.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
}

/// The path a non-root exporter takes (chosen here by option, as the test runs as root):
/// setuid and setgid bits are dropped from files, devices skipped, owners left to the
/// exporting user.
#[test]
fn without_restoring_owners_setid_bits_and_devices_are_dropped() {
    let fx = fixture();
    let snap = privileged_snapshot(&fx.store);
    let options = ExportOptions {
        restore_owners: false,
        ..ExportOptions::default()
    };
    let stats = fx
        .store
        .export_to_dir_with(&snap, b"", &fx.dest, &options)
        .unwrap();
    assert_eq!(stats.skipped, 1, "the device");
    assert!(!fx.dest.join("null").exists());
    for (name, perm) in [
        ("suid", 0o755),
        ("sgid", 0o755),
        // A folder's setgid only passes its group on to new entries: kept.
        ("shared", 0o2775),
        ("shared/plain", 0o644),
        ("pipe", 0o640),
        ("", 0o751),
    ] {
        let m = fs::symlink_metadata(fx.dest.join(name)).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (perm, 0), "{name:?}");
    }
}

#[test]
fn the_destination_must_be_the_exporters_own_empty_folder_and_no_symlink() {
    let fx = fixture();
    let snap = nested_snapshot(&fx.store);
    // Owned by someone else: they could swap things in it while root works.
    fs::create_dir(&fx.dest).unwrap();
    std::os::unix::fs::chown(&fx.dest, Some(SNAPSHOT_UID), Some(SNAPSHOT_GID)).unwrap();
    let err = fx.store.export_to_dir(&snap, b"", &fx.dest).unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("belongs to uid 4242"), "{err}");
    assert_eq!(fs::read_dir(&fx.dest).unwrap().count(), 0);
    fs::remove_dir(&fx.dest).unwrap();

    // A symlink to a folder of root's is not followed.
    std::os::unix::fs::symlink(&fx.victim, &fx.dest).unwrap();
    let before = fingerprint(&fx.victim);
    let result = fx.store.export_to_dir(&snap, b"", &fx.dest);
    assert_eq!(fingerprint(&fx.victim), before);
    assert!(result.is_err());
    fs::remove_file(&fx.dest).unwrap();

    // A non-empty folder is refused and left as it was.
    fs::create_dir(&fx.dest).unwrap();
    fs::set_permissions(&fx.dest, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(fx.dest.join("x"), b"").unwrap();
    fx.store.export_to_dir(&snap, b"", &fx.dest).unwrap_err();
    assert_eq!(mode_of(&fx.dest), 0o755);
    fs::remove_file(fx.dest.join("x")).unwrap();

    // An existing empty folder of our own is used, private while the export runs.
    let during = RefCell::new(Vec::new());
    let hook = |_: ExportStep<'_>| during.borrow_mut().push(mode_of(&fx.dest));
    let options = ExportOptions {
        race_hook: Some(&hook),
        ..ExportOptions::default()
    };
    fx.store
        .export_to_dir_with(&snap, b"", &fx.dest, &options)
        .unwrap();
    assert!(!during.borrow().is_empty());
    assert!(during.borrow().iter().all(|&m| m == 0o700), "{during:?}");
    assert_eq!(mode_of(&fx.dest), 0o755);

    // A single entry lands in a folder that gets its usual mode back at the end.
    let single = fx.dest.with_file_name("single");
    fs::create_dir(&single).unwrap();
    fs::set_permissions(&single, fs::Permissions::from_mode(0o711)).unwrap();
    fx.store.export_to_dir(&snap, b"d/f", &single).unwrap();
    assert_eq!(mode_of(&single), 0o711);
    assert_eq!(mode_of(&single.join("f")), 0o666);
}

/// As root, the folders above the destination must be ones only root can change: a user
/// who owns one (or may write to one that is not sticky) could swap a folder on the path for
/// a symlink mid-export. A symlink on a path of root's own folders is fine.
#[test]
fn as_root_the_folders_above_the_destination_must_be_roots() {
    let fx = fixture();
    let snap = nested_snapshot(&fx.store);
    let base = fx.dest.with_file_name("parents");
    fs::create_dir(&base).unwrap();

    let users = base.join("users");
    fs::create_dir(&users).unwrap();
    std::os::unix::fs::chown(&users, Some(SNAPSHOT_UID), Some(SNAPSHOT_GID)).unwrap();
    let err = fx
        .store
        .export_to_dir(&snap, b"", &users.join("sub").join("dest"))
        .unwrap_err();
    assert!(
        err.to_string().contains("can be changed by uid 4242"),
        "{err}"
    );
    assert!(!users.join("sub").join("dest").exists());

    let open = base.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = fx
        .store
        .export_to_dir(&snap, b"", &open.join("dest"))
        .unwrap_err();
    assert!(err.to_string().contains("can be changed"), "{err}");

    let sticky = base.join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    fx.store
        .export_to_dir(&snap, b"", &sticky.join("dest"))
        .unwrap();

    let real = base.join("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
    fx.store
        .export_to_dir(&snap, b"", &base.join("link").join("dest"))
        .unwrap();
    assert!(real.join("dest").join("d").is_dir());
}

const CHILD_ENV: &str = "TURKU_EXPORT_SAFETY_CHILD";

/// Runs in a process of its own as `nobody` (started by the test below), exporting with the
/// default options, which an unprivileged process must get right by itself.
#[test]
#[ignore = "started by export_by_an_unprivileged_process_drops_setid_bits"]
fn unprivileged_child_export() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (store, dest) = spec.split_once('\n').unwrap();
    let store = Store::open(Path::new(store)).unwrap();
    let snap = store.snapshot("m", "privileged", "latest").unwrap();
    let stats = store.export_to_dir(&snap, b"", Path::new(dest)).unwrap();
    assert_eq!(stats.skipped, 1);
}

#[test]
fn export_by_an_unprivileged_process_drops_setid_bits() {
    let fx = fixture();
    let snap = privileged_snapshot(&fx.store);
    drop(snap);
    let base = fx.dest.parent().unwrap().to_path_buf();
    // `nobody` must reach the store (and own it, for its lock and index) and the output.
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = base.join("nobody");
    fs::create_dir(&theirs).unwrap();
    let status = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(fx.store.path())
        .arg(&theirs)
        .status()
        .unwrap();
    assert!(status.success());
    let dest = theirs.join("out");
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "unprivileged_child_export",
            "--ignored",
            "--nocapture",
        ])
        .env(
            CHILD_ENV,
            format!("{}\n{}", fx.store.path().display(), dest.display()),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 passed"));
    for (name, perm) in [("suid", 0o755), ("sgid", 0o755), ("shared", 0o2775)] {
        let m = fs::symlink_metadata(dest.join(name)).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (perm, NOBODY), "{name}");
    }
}

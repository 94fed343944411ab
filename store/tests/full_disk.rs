//! The store on a real full file system: a small tmpfs mounted for the test (we run as root
//! in CI; without root this test fails loudly rather than skip).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use turku_store::{Metadata, Snapshot, Store, StoreConfig, StoreError};
use turku_testkit::{is_root, random_bytes};

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert!(
            is_root(),
            "this test mounts a tmpfs to fill a real file system: run it as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a handle open in a failing test): detach it instead of leaking it.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn small_chunks() -> StoreConfig {
    StoreConfig {
        chunk_min: 16 * 1024,
        chunk_avg: 64 * 1024,
        chunk_max: 256 * 1024,
        ..StoreConfig::default()
    }
}

fn tar_of(store: &Store, snap: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    store.export_to_tar(snap, b"", &mut out).unwrap();
    out
}

/// Backs up one file of `len` random bytes made from `seed`, streamed a MiB at a time.
fn backup(store: &Store, seed: u64, len: usize) -> Result<Snapshot, StoreError> {
    let mut w = store.begin_snapshot("m", "s")?;
    let mut f = w.add_file(b"f", Metadata::default(), 0)?;
    for (i, piece) in (0..len).step_by(1 << 20).enumerate() {
        let n = (len - piece).min(1 << 20);
        f.write_content(&random_bytes(seed * 1000 + i as u64, n))?;
    }
    f.finish()?;
    w.commit()
}

/// Fills the file system holding `path` to the last byte with a file there.
fn fill(path: &Path) -> PathBuf {
    let filler = path.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![0x5au8; 4096];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    let _ = f.sync_all();
    filler
}

fn libc_enospc() -> i32 {
    28
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// A backup that runs out of space fails with a disk-full error and leaves the store as it
/// was; on a disk then filled to the last byte, `forget` and `gc` still work and make room,
/// and a new backup fits.
#[test]
fn a_full_disk_fails_a_backup_cleanly_and_forget_and_gc_make_room() {
    let mnt = Tmpfs::mount("16m");
    let root = mnt.path().join("store");
    let store = Store::init(&root, small_chunks()).unwrap();
    let first = backup(&store, 1, 4 << 20).unwrap();
    let first_tar = tar_of(&store, &first);

    let err = backup(&store, 2, 64 << 20).unwrap_err();
    assert!(err.is_disk_full(), "not a disk-full error: {err}");
    assert!(err.to_string().contains("disk"), "{err}");
    assert_eq!(store.snapshots(None, None).unwrap(), vec![first.clone()]);
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(tar_of(&store, &first), first_tar);
    drop(store);

    // Nothing left at all, as when something else on the disk took the rest.
    let filler = fill(mnt.path());
    assert!(free_bytes(mnt.path()) < 64 * 1024);
    let store = Store::open(&root).unwrap();
    assert!(backup(&store, 3, 1 << 20).unwrap_err().is_disk_full());
    store.forget(&first).unwrap();
    drop(store);
    let store = Store::open(&root).unwrap();
    let gc = store.gc().unwrap();
    assert!(gc.deleted_packs >= 1, "{gc:?}");
    assert!(store.snapshots(None, None).unwrap().is_empty());
    assert!(free_bytes(mnt.path()) >= 1 << 20);

    let small = backup(&store, 4, 256 << 10).unwrap();
    assert_eq!(store.snapshots(None, None).unwrap(), vec![small.clone()]);
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    drop(store);
    fs::remove_file(filler).unwrap();
}

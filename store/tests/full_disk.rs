//! The store on a real full file system: a small tmpfs mounted for the test (we run as root
//! in CI; without root this test fails loudly rather than skip).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{small_chunks, tar_of};
use turku_store::{Metadata, Snapshot, Store, StoreError};
use turku_testkit::random_bytes;
use turku_testkit::tmpfs::Tmpfs;

/// Backs up files `(name, seed, len)` of random bytes, streamed a MiB at a time.
fn backup(store: &Store, files: &[(&str, u64, usize)]) -> Result<Snapshot, StoreError> {
    let mut w = store.begin_snapshot("m", "s")?;
    for &(name, seed, len) in files {
        let mut f = w.add_file(name.as_bytes(), Metadata::default(), 0)?;
        for (i, piece) in (0..len).step_by(1 << 20).enumerate() {
            let n = (len - piece).min(1 << 20);
            f.write_content(&random_bytes(seed * 1000 + i as u64, n))?;
        }
        f.finish()?;
    }
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
/// was; on a disk then filled to the last byte, `forget` and `gc` still work and make room
/// (deleting a wholly dead pack before repacking one that needs room to be copied), and a
/// new backup fits.
#[test]
fn a_full_disk_fails_a_backup_cleanly_and_forget_and_gc_make_room() {
    const MIB: usize = 1 << 20;
    let mnt = Tmpfs::mount(16);
    let root = mnt.path().join("store");
    let store = Store::init(&root, small_chunks()).unwrap();
    // `a` and `b` share `y`: once `a` is forgotten its pack is 40 % dead (repacked, which
    // needs room for `y`'s 3 MiB); `c`'s pack is then wholly dead.
    let a = backup(&store, &[("x", 1, 2 * MIB), ("y", 2, 3 * MIB)]).unwrap();
    let b = backup(&store, &[("y", 2, 3 * MIB)]).unwrap();
    let c = backup(&store, &[("z", 3, 4 * MIB)]).unwrap();
    let tars: Vec<Vec<u8>> = [&a, &b, &c].iter().map(|s| tar_of(&store, s)).collect();

    let err = backup(&store, &[("big", 4, 64 * MIB)]).unwrap_err();
    assert!(err.is_disk_full(), "not a disk-full error: {err}");
    assert!(err.to_string().contains("disk"), "{err}");
    assert_eq!(
        store.snapshots(None, None).unwrap(),
        vec![a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    for (snap, tar) in [&a, &b, &c].iter().zip(&tars) {
        assert!(tar_of(&store, snap) == *tar);
    }
    drop(store);

    // Nothing left at all, as when something else on the disk took the rest.
    let filler = fill(mnt.path());
    assert!(free_bytes(mnt.path()) < 64 * 1024);
    let store = Store::open(&root).unwrap();
    assert!(backup(&store, &[("f", 5, MIB)]).unwrap_err().is_disk_full());
    store.forget(&a).unwrap();
    drop(store);
    let store = Store::open(&root).unwrap();
    store.forget(&c).unwrap();
    let gc = store.gc().unwrap();
    assert_eq!((gc.deleted_packs, gc.repacked_packs), (1, 1), "{gc:?}");
    assert_eq!(store.snapshots(None, None).unwrap(), vec![b.clone()]);
    assert!(tar_of(&store, &b) == tars[1]);
    assert!(free_bytes(mnt.path()) >= MIB as u64);

    let small = backup(&store, &[("f", 6, MIB / 4)]).unwrap();
    assert_eq!(
        store.snapshots(None, None).unwrap(),
        vec![b.clone(), small.clone()]
    );
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);

    // A pack that needs repacking on a disk without room for the copy: gc still succeeds,
    // leaving the repack for later.
    fs::remove_file(filler).unwrap();
    let d = backup(&store, &[("p", 7, 3 * MIB / 2), ("q", 8, 5 * MIB / 2)]).unwrap();
    let e = backup(&store, &[("q", 8, 5 * MIB / 2)]).unwrap();
    let e_tar = tar_of(&store, &e);
    let filler = fill(mnt.path());
    store.forget(&d).unwrap();
    let gc = store.gc().unwrap();
    assert_eq!((gc.deleted_packs, gc.repacked_packs), (0, 0), "{gc:?}");
    assert!(gc.freed_blobs > 0, "{gc:?}");
    assert_eq!(
        store.snapshots(None, None).unwrap(),
        vec![b, small, e.clone()]
    );
    assert!(tar_of(&store, &e) == e_tar);
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    drop(store);
    fs::remove_file(filler).unwrap();
}

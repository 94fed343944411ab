//! `repair` on a store whose blobs are damaged or cannot be read: it never lets a bad copy
//! hide a good one, and never drops the references below a tree it merely failed to read.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{pack_files, small_chunks_fast};
use turku_store::Store;
use turku_testkit::{assert_same_tree, random_bytes};

const TRAILER_RECORD_LEN: usize = 50;
const FOOTER_LEN: usize = 28;

/// A pack's trailer records as (kind, offset, stored length), read by the layout
/// docs/store.md gives: 50-byte records (id, kind, compression, offset, stored length, raw
/// length) before a 28-byte footer that starts with the trailer's length.
fn blobs_of(pack: &[u8]) -> Vec<(u8, usize, usize)> {
    let footer = pack.len() - FOOTER_LEN;
    let trailer_len = u32::from_le_bytes(pack[footer..footer + 4].try_into().unwrap()) as usize;
    pack[footer - trailer_len..footer]
        .chunks(TRAILER_RECORD_LEN)
        .map(|r| {
            let offset = u64::from_le_bytes(r[34..42].try_into().unwrap()) as usize;
            let stored = u32::from_le_bytes(r[42..46].try_into().unwrap()) as usize;
            (r[32], offset, stored)
        })
        .collect()
}

/// Flips a byte in the middle of every blob of `kind` (all kinds if `None`) in the pack at
/// `path`, leaving its trailer intact: the blobs fail their hash check, the pack still lists.
/// Returns how many it damaged.
fn corrupt_blobs(path: &Path, kind: Option<u8>) -> usize {
    let mut bytes = fs::read(path).unwrap();
    let mut n = 0;
    for (k, offset, stored) in blobs_of(&bytes) {
        if kind.is_none_or(|want| want == k) {
            bytes[offset + stored / 2] ^= 0x5a;
            n += 1;
        }
    }
    fs::write(path, bytes).unwrap();
    n
}

/// A store with two snapshots of a small nested folder (the second changed); returns the
/// store's folder and each snapshot's name with its source.
fn store_with_snapshots(dir: &Path) -> (PathBuf, Vec<(String, PathBuf)>) {
    let root = dir.join("store");
    let store = Store::init(&root, small_chunks_fast()).unwrap();
    let mut snaps = Vec::new();
    for round in 0..2u64 {
        let src = dir.join(format!("src-{round}"));
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::create_dir_all(src.join("other")).unwrap();
        fs::write(src.join("top"), random_bytes(round, 300_000)).unwrap();
        fs::write(src.join("sub/a"), random_bytes(10, 200_000)).unwrap();
        fs::write(src.join("sub/deeper/b"), format!("round {round}")).unwrap();
        fs::write(src.join("other/c"), random_bytes(11, 50_000)).unwrap();
        let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
        snaps.push((snap.name, src));
    }
    (root, snaps)
}

fn assert_verifies_and_exports(root: &Path, snaps: &[(String, PathBuf)], out: &Path) {
    let store = Store::open(root).unwrap();
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    for (name, src) in snaps {
        let to = out.join(name);
        store
            .export_to_dir(&store.snapshot("m", "s", name).unwrap(), b"", &to)
            .unwrap();
        assert_same_tree(src, &to);
    }
}

/// Every pack stored twice (as a repack killed before it deleted the old pack leaves it),
/// the copy `repair` lists first with every blob corrupt: repair indexes the good copies, so
/// the store verifies and every snapshot exports, before and after `gc` (which must drop
/// the bad copies as dead bytes, not the good ones). Before the fix the first listed
/// copy won, corrupt or not.
#[test]
fn a_corrupt_first_copy_does_not_hide_a_good_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = store_with_snapshots(dir.path());
    let mut damaged = 0;
    for pack in pack_files(&root) {
        let name = pack.file_stem().unwrap().to_str().unwrap().to_string();
        let twin = format!("000000{}", &name[6..]);
        let twin_path = root.join("packs/00").join(format!("{twin}.pack"));
        assert!(twin < name, "the damaged twin must be listed first");
        fs::create_dir_all(twin_path.parent().unwrap()).unwrap();
        fs::copy(&pack, &twin_path).unwrap();
        damaged += corrupt_blobs(&twin_path, None);
    }

    let report = Store::repair(&root).unwrap();
    assert!(report.unreadable_trees.is_empty(), "{report:?}");
    assert_eq!(report.duplicate_blobs as usize, damaged, "{report:?}");
    assert_eq!(
        report.blobs_moved_to_good_copy as usize, damaged,
        "{report:?}"
    );
    assert_verifies_and_exports(&root, &snaps, &dir.path().join("out1"));

    let gc = Store::open(&root).unwrap().gc().unwrap();
    assert_eq!(gc.freed_blobs, 0, "{gc:?}");
    let left: Vec<PathBuf> = pack_files(&root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("000000")
        })
        .collect();
    assert!(
        left.is_empty(),
        "gc keeps the damaged copies: {left:?} {gc:?}"
    );
    assert_verifies_and_exports(&root, &snaps, &dir.path().join("out2"));
}

/// A tree whose only copy fails its hash check: repair goes on (nothing can read what is
/// below it anyway) but names it in its report, with the snapshots whose root it is.
#[test]
fn a_tree_corrupt_in_every_copy_is_named_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = store_with_snapshots(dir.path());
    let mut trees = 0;
    for pack in pack_files(&root) {
        trees += corrupt_blobs(&pack, Some(turku_store::format::BLOB_KIND_TREE));
    }
    assert!(trees > 0);

    let report = Store::repair(&root).unwrap();
    assert_eq!(report.unreadable_trees.len(), trees, "{report:?}");
    for (name, _) in &snaps {
        assert!(
            report
                .unreadable_trees
                .iter()
                .any(|t| t.contains(&format!("root of m/s/{name}"))),
            "{report:?}"
        );
    }
    let verify = Store::open(&root).unwrap().verify(None).unwrap();
    assert!(!verify.is_clean());
}

/// An I/O error reading a tree stops the repair before the swap: the old index stays in
/// place byte for byte, and the store still verifies and exports. Before the fix the tree
/// was skipped, the children below it got no reference, and the next `gc` freed them.
#[test]
fn an_io_error_reading_a_tree_stops_the_repair_and_keeps_the_old_index() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = store_with_snapshots(dir.path());
    let index = root.join("index.sqlite");
    let before = {
        let store = Store::open(&root).unwrap();
        store.inject_write_error("tree-read", 1, libc::EIO).unwrap();
        drop(store);
        fs::read(&index).unwrap()
    };

    let err = Store::repair(&root).unwrap_err().to_string();
    assert!(err.contains("tree") && err.contains("pack"), "{err}");
    assert_eq!(
        fs::read(&index).unwrap(),
        before,
        "the old index is untouched"
    );
    assert!(!root.join("index.sqlite.old").exists());
    assert!(!root.join("index.sqlite.rebuild").exists());

    let gc = Store::open(&root).unwrap().gc().unwrap();
    assert_eq!(gc.freed_blobs, 0, "{gc:?}");
    assert_verifies_and_exports(&root, &snaps, &dir.path().join("out"));
}

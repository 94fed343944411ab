//! `repair` as a crash or a damaged disk leaves a store: it never makes things worse, and
//! nothing it or `gc` does afterwards deletes a pack file the index does not account for.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{pack_files, small_chunks_fast};
use turku_store::{Store, StoreError};
use turku_testkit::{assert_same_tree, random_bytes};

/// Sets every pack's mtime two hours back: older than GC's grace period for files the
/// index does not know, as in any store that has been running a while.
fn age_packs(root: &Path) {
    let then = SystemTime::now() - Duration::from_secs(2 * 3600);
    for p in pack_files(root) {
        fs::File::open(&p).unwrap().set_modified(then).unwrap();
    }
}

/// Whether the pack at `path` holds a tree blob (read from its trailer, whose layout
/// docs/store.md gives: 50-byte records before a 28-byte footer; the kind is byte 32).
fn holds_trees(path: &Path) -> bool {
    let bytes = fs::read(path).unwrap();
    let footer = bytes.len() - 28;
    let trailer_len = u32::from_le_bytes(bytes[footer..footer + 4].try_into().unwrap()) as usize;
    bytes[footer - trailer_len..footer]
        .chunks(50)
        .any(|record| record[32] == turku_store::format::BLOB_KIND_TREE)
}

/// Breaks a pack's trailer checksum, as a bad sector in its last block would.
fn damage_trailer(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.len() - 12;
    bytes[at] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

/// Two sources, each a directory with a file big enough to fill more than one pack; returns
/// the store, each source's snapshot name and folder, and the packs source `a` wrote.
fn store_with_two_sources(dir: &Path) -> (PathBuf, Vec<(String, PathBuf)>, Vec<PathBuf>) {
    let root = dir.join("store");
    let store = Store::init(&root, small_chunks_fast()).unwrap();
    let mut snaps = Vec::new();
    let mut packs_of_a = Vec::new();
    for (i, source) in ["a", "b"].into_iter().enumerate() {
        let src = dir.join(format!("src-{source}"));
        fs::create_dir(&src).unwrap();
        fs::write(src.join("big"), random_bytes(i as u64, 40_000_000)).unwrap();
        fs::write(src.join("small"), format!("source {source}")).unwrap();
        let (snap, _) = store.ingest_dir("m", source, &src, None).unwrap();
        snaps.push((snap.name, src));
        if packs_of_a.is_empty() {
            packs_of_a = pack_files(&root);
        }
    }
    (root, snaps, packs_of_a)
}

/// A repair that fails part-way (here the snapshot log cannot be read, after every pack
/// went into the new index) leaves the old index in place and the store as it was: the next
/// `gc` frees nothing a snapshot needs. A half-built index in place lists packs without
/// snapshots, and that `gc` would free everything.
#[test]
fn a_repair_that_stops_part_way_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    for j in 0..20u64 {
        fs::write(src.join(format!("f{j}")), random_bytes(j, 100_000)).unwrap();
    }
    let snap = {
        let store = Store::init(&root, small_chunks_fast()).unwrap();
        store.ingest_dir("m", "s", &src, None).unwrap().0
    };
    let log = root.join("snapshots/records.log");
    let log_aside = root.join("records.log.aside");
    fs::rename(&log, &log_aside).unwrap();
    fs::create_dir(&log).unwrap();
    assert!(Store::repair(&root).is_err());
    fs::remove_dir(&log).unwrap();
    fs::rename(&log_aside, &log).unwrap();
    assert!(
        !root.join("index.sqlite.rebuild").exists(),
        "a failed repair removes its half-built index"
    );

    let store = Store::open(&root).unwrap();
    let gc = store.gc().unwrap();
    assert_eq!(gc.freed_blobs, 0, "{gc:?}");
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let out = dir.path().join("out");
    store
        .export_to_dir(&store.snapshot("m", "s", &snap.name).unwrap(), b"", &out)
        .unwrap();
    assert_same_tree(&src, &out);
}

/// Only `init` and `repair` create an index: a store whose index is lost (or emptied)
/// refuses to open with an error naming `repair`, and creates nothing.
#[test]
fn a_store_without_its_index_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    drop(Store::init(&root, small_chunks_fast()).unwrap());
    let index = root.join("index.sqlite");
    for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = fs::remove_file(root.join(f));
    }
    let err = Store::open(&root).unwrap_err();
    assert!(matches!(err, StoreError::IndexMissing(_)), "{err:?}");
    assert!(err.to_string().contains("run `repair`"), "{err}");
    assert!(!index.exists(), "open created an index");

    fs::write(&index, b"").unwrap();
    let err = Store::open(&root).unwrap_err();
    assert!(matches!(err, StoreError::IndexMissing(_)), "{err:?}");

    Store::repair(&root).unwrap();
    let store = Store::open(&root).unwrap();
    assert!(store.snapshots(None, None).unwrap().is_empty());
}

/// What a killed repair leaves (its half-built index, with a journal) is ignored by every
/// other command and removed by the next repair; the old index (and its write-ahead log) is
/// kept aside as a backup once a repair completes.
#[test]
fn a_killed_repairs_leftovers_are_ignored_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), random_bytes(5, 300_000)).unwrap();
    let store = Store::init(&root, small_chunks_fast()).unwrap();
    let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    drop(store);
    let rebuild = root.join("index.sqlite.rebuild");
    fs::write(&rebuild, b"SQLite format 3\0 and then nothing").unwrap();
    fs::write(root.join("index.sqlite.rebuild-journal"), b"junk").unwrap();

    let store = Store::open(&root).unwrap();
    assert_eq!(store.gc().unwrap().freed_blobs, 0);
    assert!(store.verify(None).unwrap().is_clean());
    drop(store);

    let report = Store::repair(&root).unwrap();
    assert_eq!((report.packs, report.snapshots), (1, 1), "{report:?}");
    assert!(!rebuild.exists());
    assert!(!root.join("index.sqlite.rebuild-journal").exists());
    assert!(
        root.join("index.sqlite.old").exists(),
        "the old index is kept"
    );
    let store = Store::open(&root).unwrap();
    assert_eq!(store.snapshots(None, None).unwrap(), vec![snap]);
    assert!(store.verify(None).unwrap().is_clean());
    // A second repair replaces the backup rather than piling them up.
    drop(store);
    Store::repair(&root).unwrap();
    let backups = fs::read_dir(&root)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("index.sqlite.old")
        })
        .count();
    assert!(backups <= 3, "one backup and its side files: {backups}");
}

/// A pack whose trailer cannot be read is moved to quarantine by `repair`, never deleted
/// (not by `gc` either), and `verify` names what it held for each affected snapshot; the
/// other source is untouched.
#[test]
fn a_damaged_pack_is_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps, packs_of_a) = store_with_two_sources(dir.path());
    let a_name = &snaps[0].0;
    // A pack of source a's chunks only (no trees): its snapshot keeps its row and walks.
    let victim = packs_of_a
        .iter()
        .find(|p| !holds_trees(p))
        .expect("a pack of chunks only")
        .clone();
    age_packs(&root);
    damage_trailer(&victim);

    let report = Store::repair(&root).unwrap();
    assert_eq!(report.unreadable_packs.len(), 1, "{report:?}");
    assert_eq!(report.quarantined_packs.len(), 1, "{report:?}");
    let quarantined = root.join("quarantine").join(victim.file_name().unwrap());
    assert_eq!(
        report.quarantined_packs[0],
        quarantined.display().to_string()
    );
    assert!(quarantined.exists() && !victim.exists());

    let store = Store::open(&root).unwrap();
    store.gc().unwrap();
    assert!(quarantined.exists(), "gc deleted a quarantined pack");
    let verify = store.verify(None).unwrap();
    assert!(!verify.is_clean());
    assert!(
        verify.affected.contains(&format!("m/a/{a_name}: big")),
        "{:?}",
        verify.affected
    );
    assert!(
        !verify.affected.iter().any(|a| a.starts_with("m/b/")),
        "{:?}",
        verify.affected
    );
    let out = dir.path().join("out-b");
    let snap_b = store.snapshot("m", "b", &snaps[1].0).unwrap();
    store.export_to_dir(&snap_b, b"", &out).unwrap();
    assert_same_tree(&snaps[1].1, &out);
}

/// A damaged pack holding a snapshot's root: the snapshot keeps its row, so `verify` names
/// it, instead of silently vanishing from the listing.
#[test]
fn a_snapshot_whose_root_is_lost_is_kept_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps, packs_of_a) = store_with_two_sources(dir.path());
    let with_trees: Vec<&PathBuf> = packs_of_a.iter().filter(|p| holds_trees(p)).collect();
    assert_eq!(with_trees.len(), 1, "one pack of a's trees");
    age_packs(&root);
    damage_trailer(with_trees[0]);
    let report = Store::repair(&root).unwrap();
    assert_eq!(report.damaged_snapshots.len(), 1, "{report:?}");
    assert!(
        report.damaged_snapshots[0].starts_with(&format!("m/a/{}", snaps[0].0)),
        "{report:?}"
    );
    assert_eq!(report.snapshots, 2, "{report:?}");
    let store = Store::open(&root).unwrap();
    store.gc().unwrap();
    assert_eq!(store.snapshots(None, None).unwrap().len(), 2);
    let verify = store.verify(None).unwrap();
    assert!(
        verify.affected.contains(&format!("m/a/{}: /", snaps[0].0)),
        "{:?}",
        verify.affected
    );
    let out = dir.path().join("out-b");
    let snap_b = store.snapshot("m", "b", &snaps[1].0).unwrap();
    store.export_to_dir(&snap_b, b"", &out).unwrap();
    assert_same_tree(&snaps[1].1, &out);
}

/// A complete pack the index does not know (its row lost, say) is never deleted by `gc`,
/// however old: it is counted, and `repair` indexes it.
#[test]
fn gc_leaves_an_unindexed_pack_for_repair() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), random_bytes(8, 500_000)).unwrap();
    let store = Store::init(&root, small_chunks_fast()).unwrap();
    store.ingest_dir("m", "s", &src, None).unwrap();
    let packs = pack_files(&root);
    assert_eq!(packs.len(), 1);
    let stray = root.join("packs/01/0123456789abcdef0123456789abcdef.pack");
    fs::create_dir_all(stray.parent().unwrap()).unwrap();
    fs::copy(&packs[0], &stray).unwrap();
    age_packs(&root);
    let gc = store.gc().unwrap();
    assert!(stray.exists(), "gc deleted an unindexed pack");
    assert_eq!(gc.unindexed_packs, 1, "{gc:?}");
    drop(store);
    let report = Store::repair(&root).unwrap();
    assert_eq!(report.packs, 2, "{report:?}");
    let store = Store::open(&root).unwrap();
    assert_eq!(store.gc().unwrap().unindexed_packs, 0);
    assert!(store.verify(None).unwrap().is_clean());
}

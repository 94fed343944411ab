//! The store end to end through its public API, on real files.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use turku_store::{
    CompressionMode, EntryData, EntryKind, Metadata, Store, StoreConfig, StoreError,
};
use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, make_awkward_tree, random_bytes,
};

fn small_chunks() -> StoreConfig {
    // Small chunks so modest test files span many chunks.
    StoreConfig {
        chunk_min: 16 * 1024,
        chunk_avg: 64 * 1024,
        chunk_max: 256 * 1024,
        zstd_level: 3,
        ..StoreConfig::default()
    }
}

fn new_store(dir: &Path) -> Store {
    Store::init(&dir.join("store"), small_chunks()).unwrap()
}

/// Removes the SQLite index (and its WAL) of the closed store at `root`, as if lost.
fn delete_index(root: &Path) {
    for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = fs::remove_file(root.join(f));
    }
}

/// Every file and folder under the store (inodes the store uses).
fn all_inodes(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        n += 1;
        if e.file_type().unwrap().is_dir() {
            n += all_inodes(&e.path());
        }
    }
    n
}

fn pack_files(store: &Store) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(store.path().join("packs")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn awkward_tree_round_trips_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_awkward_tree(&src);
    let store = new_store(tmp.path());
    let (snap, progress) = store.ingest_dir("m1", "root", &src, None).unwrap();
    assert!(progress.warnings.is_empty(), "{:?}", progress.warnings);
    assert_eq!(snap.machine, "m1");
    assert!(snap.name.starts_with("root_"), "{}", snap.name);
    let out = tmp.path().join("out");
    let stats = store.export_to_dir(&snap, b"", &out).unwrap();
    assert_eq!(stats.hard_links, 2);
    assert_same_tree(&src, &out);
    assert_rsync_sees_no_difference(&src, &out);
    assert!(store.verify(None).unwrap().is_clean());

    // The tar stream extracts (with GNU tar) to the same tree.
    let tar_path = tmp.path().join("t.tar");
    store
        .export_to_tar(&snap, b"", fs::File::create(&tar_path).unwrap())
        .unwrap();
    let untar = tmp.path().join("untar");
    fs::create_dir(&untar).unwrap();
    let status = std::process::Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&untar)
        .status()
        .unwrap();
    assert!(status.success());
    // POSIX tar has no sockets: compare without it.
    fs::remove_file(src.join("socket")).unwrap();
    fs::remove_file(out.join("socket")).unwrap();
    assert_same_tree(&src, &untar);
}

#[test]
fn metadata_is_kept_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let mut w = store.begin_snapshot("m", "s").unwrap();
    let meta = Metadata {
        perm: 0o7777,
        uid: u32::MAX,
        gid: 0,
        mtime_sec: i64::MIN / 2,
        mtime_nsec: 999_999_999,
    };
    w.add_dir(b"d", meta).unwrap();
    w.add_symlink(b"d/l", meta, b"\xff\x00-ok-to-store?")
        .unwrap_err();
    w.add_symlink(b"d/l", meta, b"\xff target").unwrap();
    w.add_special(
        b"d/c",
        EntryKind::CharDevice,
        meta,
        turku_store::make_dev(4095, 1 << 19),
    )
    .unwrap();
    let mut f = w.add_file(b"d/f", meta, 42).unwrap();
    f.write_all(b"content").unwrap();
    f.finish().unwrap();
    let snap = w.commit().unwrap();
    let entries = store.list_dir(&snap, b"d").unwrap();
    assert_eq!(entries.len(), 3);
    for e in &entries {
        assert_eq!(e.meta, meta, "{:?}", e.name);
    }
    let dev = entries.iter().find(|e| e.name == b"c").unwrap();
    assert_eq!(
        dev.data,
        EntryData::Device {
            rdev: turku_store::make_dev(4095, 1 << 19)
        }
    );
    let link = entries.iter().find(|e| e.name == b"l").unwrap();
    assert_eq!(
        link.data,
        EntryData::Symlink {
            target: b"\xff target".to_vec()
        }
    );
    let file = store.lookup(&snap, b"d/f").unwrap();
    assert!(matches!(
        file.data,
        EntryData::File {
            link_group: 42,
            size: 7,
            ..
        }
    ));
    let mut content = String::new();
    store
        .open_file(&file)
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "content");
}

#[test]
fn paths_from_callers_never_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let mut w = store.begin_snapshot("m", "s").unwrap();
    let meta = Metadata::default();
    for bad in [&b"../x"[..], b"a/../../x", b"a/\0b"] {
        assert!(
            matches!(w.add_dir(bad, meta), Err(StoreError::InvalidArgument(_))),
            "{bad:?}"
        );
        assert!(w.add_file(bad, meta, 0).is_err());
    }
    assert!(store.begin_snapshot("m/../x", "s").is_err());
    assert!(store.begin_snapshot("m", "").is_err());
}

#[test]
fn unchanged_snapshot_reads_nothing_and_writes_no_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_awkward_tree(&src);
    let store = new_store(tmp.path());
    let (first, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    let packs_before = pack_files(&store);
    let inodes_before = all_inodes(store.path());
    let (second, progress) = store.ingest_dir("m", "s", &src, None).unwrap();
    let (_third, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    assert_eq!(
        all_inodes(store.path()),
        inodes_before,
        "unchanged snapshots add no inodes"
    );
    assert_eq!(
        second.root, first.root,
        "an unchanged tree has the same root"
    );
    assert_eq!(second.base.as_deref(), Some(first.name.as_str()));
    assert_eq!(progress.bytes_read, 0, "unchanged files are not read");
    assert_eq!(second.stats.new_chunks, 0);
    assert_eq!(second.stats.new_trees, 0);
    assert_eq!(second.stats.new_stored_bytes, 0);
    assert_eq!(pack_files(&store), packs_before, "no new pack files");
    assert_eq!(second.stats.files, first.stats.files);
}

#[test]
fn identical_trees_of_two_machines_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_awkward_tree(&src);
    let store = new_store(tmp.path());
    let (a, _) = store.ingest_dir("machine-a", "root", &src, None).unwrap();
    let chunks_after_a = store.stats().unwrap().chunk_bytes;
    let (b, _) = store.ingest_dir("machine-b", "root", &src, None).unwrap();
    assert!(a.stats.new_bytes > 0);
    assert_eq!(
        b.stats.new_bytes, 0,
        "the second machine's data is already stored"
    );
    assert_eq!(b.stats.new_trees, 0);
    assert_eq!(store.stats().unwrap().chunk_bytes, chunks_after_a);
}

#[test]
fn an_edit_in_the_middle_of_a_big_file_stores_little() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut data = random_bytes(7, 16 * 1024 * 1024);
    fs::write(src.join("big"), &data).unwrap();
    let (first, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    assert!(
        first.stats.new_chunks > 30,
        "{} chunks",
        first.stats.new_chunks
    );
    // Insert 100 bytes in the middle: content-defined chunking resynchronises.
    data.splice(8_000_000..8_000_000, random_bytes(8, 100));
    fs::write(src.join("big"), &data).unwrap();
    let (second, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    assert!(
        second.stats.new_bytes < 1024 * 1024,
        "{} new bytes",
        second.stats.new_bytes
    );
    let entry = store.lookup(&second, b"big").unwrap();
    let mut back = Vec::new();
    store
        .open_file(&entry)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data);
    // Random access reads the right bytes across chunk boundaries.
    let mut reader = store.open_file(&entry).unwrap();
    let mut buf = vec![0u8; 100_000];
    let mut got = 0;
    while got < buf.len() {
        got += reader
            .read_at(7_990_000 + got as u64, &mut buf[got..])
            .unwrap();
    }
    assert!(buf[..] == data[7_990_000..8_090_000]);
}

#[test]
fn huge_directories_split_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let meta = Metadata {
        perm: 0o644,
        ..Metadata::default()
    };
    let mut w = store.begin_snapshot("m", "s").unwrap();
    for i in 0..40_000u32 {
        w.add_special(
            format!("dir/entry-{i:06}").as_bytes(),
            EntryKind::Fifo,
            meta,
            0,
        )
        .unwrap();
    }
    let snap = w.commit().unwrap();
    assert!(
        snap.stats.new_trees > 3,
        "split into parts: {}",
        snap.stats.new_trees
    );
    let entries = store.list_dir(&snap, b"dir").unwrap();
    assert_eq!(entries.len(), 40_000);
    assert!(entries.windows(2).all(|p| p[0].name < p[1].name));
    assert_eq!(
        store.lookup(&snap, b"dir/entry-031337").unwrap().kind,
        EntryKind::Fifo
    );
    // Adding one name rewrites one part and the split node, not all parts.
    let mut w = store.begin_snapshot("m", "s").unwrap();
    for i in 0..40_000u32 {
        w.add_special(
            format!("dir/entry-{i:06}").as_bytes(),
            EntryKind::Fifo,
            meta,
            0,
        )
        .unwrap();
    }
    w.add_special(b"dir/entry-020000x", EntryKind::Fifo, meta, 0)
        .unwrap();
    let snap2 = w.commit().unwrap();
    assert!(
        snap2.stats.new_trees <= 4,
        "{} new trees",
        snap2.stats.new_trees
    );
    assert!(store.verify(None).unwrap().is_clean());
}

#[test]
fn abandoned_snapshot_is_invisible_and_collected() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    {
        let mut w = store.begin_snapshot("m", "s").unwrap();
        let mut f = w.add_file(b"f", Metadata::default(), 0).unwrap();
        f.write_all(&random_bytes(1, 40 * 1024 * 1024)).unwrap();
        f.finish().unwrap();
        // dropped without commit; its first pack was already flushed and indexed
    }
    assert!(store.snapshots(None, None).unwrap().is_empty());
    assert!(!pack_files(&store).is_empty());
    let gc = store.gc().unwrap();
    assert!(gc.freed_blobs > 0);
    assert!(pack_files(&store).is_empty(), "all packs reclaimed");
    assert!(store.verify(None).unwrap().is_clean());
}

#[test]
fn gc_keeps_what_a_live_writer_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let content = random_bytes(7, 40 * 1024 * 1024);
    let mut w = store.begin_snapshot("m", "s").unwrap();
    let mut f = w.add_file(b"f", Metadata::default(), 0).unwrap();
    f.write_all(&content).unwrap();
    f.finish().unwrap();
    // Wait until the writer's first full pack is indexed: its blobs have no references yet
    // and no pins, only the live session's ownership of the pack protects them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.stats().unwrap().chunks == 0 {
        assert!(std::time::Instant::now() < deadline, "no pack was indexed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let gc = store.gc().unwrap();
    assert_eq!(gc.freed_blobs, 0, "{gc:?}");
    let snap = w.commit().unwrap();
    assert!(store.verify(None).unwrap().is_clean());
    let mut back = Vec::new();
    store
        .open_file(&store.lookup(&snap, b"f").unwrap())
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == content, "content differs after a concurrent gc");
}

/// A writer takes a stored chunk as reused and pins it later, in a batch: if GC frees the
/// chunk in between, the writer stores it again from the bytes it kept.
#[test]
fn a_reused_chunk_freed_before_its_pin_is_stored_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let content = random_bytes(11, 100_000);
    fs::write(src.join("f"), &content).unwrap();
    let (old, _) = store.ingest_dir("a", "s", &src, None).unwrap();
    store.forget(&old).unwrap();

    let mut w = store.begin_snapshot("b", "s").unwrap();
    let mut f = w.add_file(b"f", Metadata::default(), 0).unwrap();
    f.write_all(&content).unwrap();
    f.finish().unwrap();
    assert_eq!(w.stats().new_chunks, 0, "the chunk was taken as reused");
    let gc = store.gc().unwrap();
    assert!(gc.freed_blobs > 0, "{gc:?}");
    let snap = w.commit().unwrap();
    assert!(snap.stats.new_chunks > 0, "{:?}", snap.stats);

    let verify = store.verify(None).unwrap();
    assert!(verify.is_clean(), "{:?}", verify.problems);
    let mut back = Vec::new();
    store
        .open_file(&store.lookup(&snap, b"f").unwrap())
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == content);
}

#[test]
fn forget_and_gc_reclaim_exactly_what_is_unreferenced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("keep"), random_bytes(1, 2_000_000)).unwrap();
    fs::write(src.join("gone"), random_bytes(2, 3_000_000)).unwrap();
    let (old, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    fs::remove_file(src.join("gone")).unwrap();
    fs::write(src.join("new"), random_bytes(3, 1_000_000)).unwrap();
    let (new, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    let before = store.stats().unwrap();
    store.forget(&old).unwrap();
    let gc = store.gc().unwrap();
    let after = store.stats().unwrap();
    assert!(gc.freed_bytes >= 3_000_000, "{gc:?}");
    assert_eq!(before.chunk_bytes - after.chunk_bytes, 3_000_000);
    assert!(gc.repacked_packs + gc.deleted_packs >= 1, "{gc:?}");
    assert_eq!(after.dead_bytes, 0, "garbage was repacked away");
    let out = tmp.path().join("out");
    store.export_to_dir(&new, b"", &out).unwrap();
    assert_same_tree(&src, &out);
    assert!(store.verify(None).unwrap().is_clean());
    assert!(matches!(
        store.snapshot("m", "s", &old.name),
        Err(StoreError::NoSuchSnapshot { .. })
    ));
    // A second GC has nothing left to do.
    let again = store.gc().unwrap();
    assert_eq!(
        (again.freed_blobs, again.deleted_packs, again.repacked_packs),
        (0, 0, 0)
    );
}

#[test]
fn gc_and_backups_run_safely_together() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    // Shared content that every snapshot reuses, so forgotten and new snapshots overlap.
    fs::write(src.join("shared"), random_bytes(99, 1_500_000)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops the collector however the writer ends, so a failing writer fails the test
    /// instead of hanging it.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let _stop = StopOnDrop(&stop);
            let mut committed = Vec::new();
            for round in 0..25u64 {
                fs::write(src.join("changing"), random_bytes(round, 300_000)).unwrap();
                if round % 3 == 0 {
                    fs::write(
                        src.join(format!("extra-{round}")),
                        random_bytes(1000 + round, 50_000),
                    )
                    .unwrap();
                }
                let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
                committed.push(snap);
            }
            committed
        });
        let collector = s.spawn(|| {
            let mut runs = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let snaps = store.snapshots(Some("m"), Some("s")).unwrap();
                // Every other round forgets everything, including the base an in-flight
                // backup is reusing unchanged files from; the others keep the newest.
                let keep = if runs.is_multiple_of(2) { 0 } else { 1 };
                for old in snaps.iter().rev().skip(keep) {
                    store.forget(old).unwrap();
                }
                match store.gc() {
                    Ok(_) => runs += 1,
                    Err(StoreError::Busy(_)) => {}
                    Err(e) => panic!("gc failed: {e}"),
                }
            }
            runs
        });
        let committed = writer.join().unwrap();
        let runs = collector.join().unwrap();
        assert_eq!(committed.len(), 25);
        assert!(runs > 3, "gc ran {runs} times concurrently");
    });
    // Whatever survived must be whole: a reference to a freed blob shows up here.
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    for snap in store.snapshots(None, None).unwrap() {
        let out = tmp.path().join(format!("out-{}", snap.name));
        store.export_to_dir(&snap, b"", &out).unwrap();
        assert_eq!(
            fs::read(out.join("shared")).unwrap(),
            random_bytes(99, 1_500_000)
        );
    }
    let (last, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    let out = tmp.path().join("out-final");
    store.export_to_dir(&last, b"", &out).unwrap();
    assert_same_tree(&src, &out);
    store.gc().unwrap();
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn repair_rebuilds_the_index_from_packs_and_records() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_awkward_tree(&src);
    let root = tmp.path().join("store");
    let names = {
        let store = Store::init(&root, small_chunks()).unwrap();
        let (a, _) = store.ingest_dir("m", "s", &src, None).unwrap();
        fs::write(src.join("added"), b"more").unwrap();
        let (b, _) = store.ingest_dir("m", "s", &src, None).unwrap();
        let (c, _) = store.ingest_dir("other", "s", &src, None).unwrap();
        store.forget(&a).unwrap();
        vec![b.name, c.name]
    };
    delete_index(&root);
    // A torn last line (a crash mid-append) is ignored.
    let log = root.join("snapshots/records.log");
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"op\":\"add\",\"record\":{\"form").unwrap();
    drop(f);
    assert!(
        Store::open(&root).is_err(),
        "a missing index is reported, not silently empty"
    );
    let report = Store::repair(&root).unwrap();
    assert_eq!(report.snapshots, 2);
    let store = Store::open(&root).unwrap();
    let listed: Vec<String> = store
        .snapshots(None, None)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, names);
    let verify = store.verify(None).unwrap();
    assert!(verify.is_clean(), "{:?}", verify.problems);
    let out = tmp.path().join("out");
    store
        .export_to_dir(&store.snapshot("other", "s", "latest").unwrap(), b"", &out)
        .unwrap();
    assert_same_tree(&src, &out);
    // Reference counts were rebuilt: forgetting everything lets GC free everything.
    for s in store.snapshots(None, None).unwrap() {
        store.forget(&s).unwrap();
    }
    store.gc().unwrap();
    assert_eq!(store.stats().unwrap().chunks, 0);
    assert!(pack_files(&store).is_empty());
}

/// A writer that defers compression stores blobs raw; `gc` compresses them in place of
/// the packs they were in, and what a repair rebuilds still knows which are deferred.
#[test]
fn deferred_compression_is_finished_by_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for j in 0..40 {
        let text: String = (0..4000)
            .map(|i| format!("line {i} of file {j}\n"))
            .collect();
        fs::write(src.join(format!("text{j}")), text).unwrap();
    }
    fs::write(src.join("noise"), random_bytes(9, 300_000)).unwrap();
    let root = tmp.path().join("store");
    let config = StoreConfig {
        compression: CompressionMode::Deferred,
        ..small_chunks()
    };
    let store = Store::init(&root, config).unwrap();
    let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    let before = store.stats().unwrap();
    // Everything, trees included, went in raw.
    assert_eq!(before.stored_bytes, before.deferred_bytes);
    assert!(before.stored_bytes > before.chunk_bytes);

    // Repair rebuilds the deferred accounting from the packs alone.
    drop(store);
    delete_index(&root);
    Store::repair(&root).unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(store.stats().unwrap(), before);

    let gc = store.gc().unwrap();
    let after = store.stats().unwrap();
    assert_eq!(after.deferred_bytes, 0);
    assert!(gc.compressed_blobs > 0);
    // The text compresses well; the noise stays raw.
    assert!(after.stored_bytes * 3 < before.stored_bytes, "{after:?}");
    assert_eq!(
        gc.compression_saved_bytes,
        before.stored_bytes - after.stored_bytes,
        "{gc:?}"
    );
    let verify = store.verify(None).unwrap();
    assert!(verify.is_clean(), "{:?}", verify.problems);
    let out = tmp.path().join("out");
    store.export_to_dir(&snap, b"", &out).unwrap();
    assert_same_tree(&src, &out);
    // Nothing is left to do.
    let again = store.gc().unwrap();
    assert_eq!((again.compressed_blobs, again.repacked_packs), (0, 0));
}

#[test]
fn verify_names_the_files_a_corrupt_chunk_affects() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/victim"), random_bytes(5, 100_000)).unwrap();
    fs::write(src.join("fine"), b"fine").unwrap();
    let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    let packs = pack_files(&store);
    assert_eq!(packs.len(), 1);
    // Flip a byte inside the first blob (the victim's chunk is stored first).
    let mut bytes = fs::read(&packs[0]).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&packs[0], &bytes).unwrap();
    let report = store.verify(None).unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .affected
            .iter()
            .any(|a| a.ends_with(": sub/victim") && a.contains(&snap.name)),
        "{:?}",
        report.affected
    );
    let entry = store.lookup(&snap, b"sub/victim").unwrap();
    let err = store
        .open_file(&entry)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("does not match its hash"), "{err}");
    // Truncated pack: a clear error naming the pack, not a panic.
    fs::write(&packs[0], &bytes[..bytes.len() - 5]).unwrap();
    let report = store.verify(Some(&snap)).unwrap();
    assert!(!report.is_clean());
    let report = store.verify(None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.subject.starts_with("pack ") && p.reason.contains("end magic")),
        "{:?}",
        report.problems
    );
}

#[test]
fn bad_lookups_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    make_awkward_tree(&src);
    let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    assert!(matches!(
        store.snapshot("m", "s", "nope"),
        Err(StoreError::NoSuchSnapshot { .. })
    ));
    assert!(matches!(
        store.snapshot("m", "other", "latest"),
        Err(StoreError::NoSuchSnapshot { .. })
    ));
    assert!(matches!(
        store.lookup(&snap, b"no/such"),
        Err(StoreError::NoSuchPath(_))
    ));
    assert!(matches!(
        store.list_dir(&snap, b"small.txt"),
        Err(StoreError::NotADirectory(_))
    ));
    assert!(matches!(
        store.lookup(&snap, b"../etc"),
        Err(StoreError::InvalidArgument(_))
    ));
    // A sub-path export.
    let out = tmp.path().join("out");
    store.export_to_dir(&snap, b"deep/a", &out).unwrap();
    assert_same_tree(&src.join("deep/a"), &out);
    let out2 = tmp.path().join("out2");
    store.export_to_dir(&snap, b"small.txt", &out2).unwrap();
    assert_eq!(fs::read(out2.join("small.txt")).unwrap(), b"hello world\n");
    // Export refuses to write into a non-empty folder.
    assert!(store.export_to_dir(&snap, b"", &out).is_err());
}

#[test]
fn init_validates_parameters_and_refuses_an_existing_store() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = StoreConfig {
        chunk_avg: 1000,
        ..small_chunks()
    };
    assert!(Store::init(&tmp.path().join("a"), bad).is_err());
    let bad = StoreConfig {
        zstd_level: 40,
        ..small_chunks()
    };
    assert!(Store::init(&tmp.path().join("b"), bad).is_err());
    Store::init(&tmp.path().join("c"), small_chunks()).unwrap();
    assert!(matches!(
        Store::init(&tmp.path().join("c"), small_chunks()),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        Store::open(&tmp.path().join("nothing")),
        Err(StoreError::NotAStore(_))
    ));
    let reopened = Store::open(&tmp.path().join("c")).unwrap();
    assert_eq!(reopened.config(), small_chunks());
}

#[test]
fn zero_runs_export_as_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let len: u64 = 64 * 1024 * 1024 + 7;
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"middle", len / 2).unwrap();
    drop(f);
    // A trailing zero run too: the exported length must still be exact.
    fs::File::create(src.join("tail-hole"))
        .unwrap()
        .set_len(3 * 1024 * 1024)
        .unwrap();
    let (snap, _) = store.ingest_dir("m", "s", &src, None).unwrap();
    let out = tmp.path().join("out");
    store.export_to_dir(&snap, b"", &out).unwrap();
    assert_same_tree(&src, &out);
    assert!(fs::read(out.join("sparse")).unwrap() == fs::read(src.join("sparse")).unwrap());
    let allocated = fs::metadata(out.join("sparse")).unwrap().blocks() * 512;
    assert!(allocated < 4 * 1024 * 1024, "{allocated} bytes allocated");
    assert_eq!(
        fs::metadata(out.join("tail-hole")).unwrap().len(),
        3 * 1024 * 1024
    );
}

//! A damaged snapshot log (a flipped bit, a bad edit): no line of it can stop `gc` or
//! `repair`, `verify` and `repair` name the damaged line, and compaction never drops it, so
//! the record it may be is not lost for good.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::new_store;
use turku_store::{Metadata, Snapshot, Store};
use turku_testkit::random_bytes;

fn log_path(root: &Path) -> PathBuf {
    root.join("snapshots").join("records.log")
}

/// Commits a snapshot of one file made from `seed`.
fn commit_file(store: &Store, seed: u64) -> Snapshot {
    let mut w = store.begin_snapshot("m", "s").unwrap();
    let mut f = w.add_file(b"f", Metadata::default(), 0).unwrap();
    f.write_content(&random_bytes(seed, 50_000)).unwrap();
    f.finish().unwrap();
    w.commit().unwrap()
}

fn log_lines(root: &Path) -> Vec<Vec<u8>> {
    fs::read(log_path(root))
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn shown(lines: &[Vec<u8>]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

fn write_log_lines(root: &Path, lines: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    fs::write(log_path(root), bytes).unwrap();
}

/// The index of the log line that adds `snap`.
fn line_of(lines: &[Vec<u8>], snap: &Snapshot) -> usize {
    let needle = format!("\"name\":\"{}\"", snap.name);
    lines
        .iter()
        .position(|l| String::from_utf8_lossy(l).contains(&needle))
        .unwrap()
}

/// A record line that is valid JSON but names a root that is not hex (before: a fatal
/// error in replay, so every `gc` and `repair` failed until the log was edited by hand).
#[test]
fn a_malformed_record_blocks_neither_gc_nor_repair() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let root = store.path().to_path_buf();
    let damaged = commit_file(&store, 1);
    let intact = commit_file(&store, 2);
    let mut lines = log_lines(&root);
    let n = line_of(&lines, &damaged);
    let text = String::from_utf8(lines[n].clone()).unwrap();
    let hex = damaged.root.to_hex();
    lines[n] = text.replace(&hex, &"z".repeat(hex.len())).into_bytes();
    write_log_lines(&root, &lines);

    store.gc().unwrap();
    let report = store.verify(None).unwrap();
    let subject = format!("snapshot log line {}", n + 1);
    let problem = report.problems.iter().find(|p| p.subject == subject);
    assert!(
        problem.is_some_and(|p| p.reason.contains("bad root id")),
        "{:?}",
        report.problems
    );
    drop(store);

    let repair = Store::repair(&root).unwrap();
    assert_eq!(repair.damaged_log_lines.len(), 1, "{repair:?}");
    assert!(
        repair.damaged_log_lines[0].starts_with(&format!("line {}:", n + 1)),
        "{repair:?}"
    );
    let store = Store::open(&root).unwrap();
    assert_eq!(store.snapshots(None, None).unwrap(), vec![intact]);
    store.gc().unwrap();
}

/// A flipped byte breaks a committed snapshot's record line in the middle of the log; then
/// enough forgets for `gc` to compact the log. The damaged line keeps its exact bytes and
/// place (before: it counted towards compaction and was dropped, and the next repair lost
/// the snapshot for good), so once it is mended a repair brings the snapshot back.
#[test]
fn a_damaged_line_survives_compaction_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let root = store.path().to_path_buf();
    let first = commit_file(&store, 1);
    let damaged = commit_file(&store, 2);
    let kept = commit_file(&store, 3);
    let mut lines = log_lines(&root);
    let n = line_of(&lines, &damaged);
    let original = lines[n].clone();
    // `{"op":…` becomes `{#op":…`: no longer JSON.
    lines[n][1] ^= 0x01;
    let flipped = lines[n].clone();
    write_log_lines(&root, &lines);
    for seed in 10..14 {
        let snap = commit_file(&store, seed);
        store.forget(&snap).unwrap();
    }
    let before = log_lines(&root).len();

    store.gc().unwrap();
    let after = log_lines(&root);
    assert!(after.len() < before, "the log was not compacted");
    let expected: Vec<Vec<u8>> = vec![
        lines[line_of(&lines, &first)].clone(),
        flipped.clone(),
        lines[line_of(&lines, &kept)].clone(),
    ];
    assert!(after == expected, "{:?}", shown(&after));
    let report = store.verify(None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.subject == "snapshot log line 2"),
        "{:?}",
        report.problems
    );
    // Another gc neither drops it nor rewrites the log again.
    store.gc().unwrap();
    assert!(
        log_lines(&root) == expected,
        "{:?}",
        shown(&log_lines(&root))
    );
    drop(store);

    // Mended by hand: repair finds the snapshot again.
    let mut mended = expected.clone();
    mended[1] = original;
    write_log_lines(&root, &mended);
    let repair = Store::repair(&root).unwrap();
    assert!(repair.damaged_log_lines.is_empty(), "{repair:?}");
    let store = Store::open(&root).unwrap();
    let mut names: Vec<String> = store
        .snapshots(None, None)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    let mut want = vec![first.name, damaged.name, kept.name];
    want.sort();
    assert_eq!(names, want);
    let report = store.verify(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A forget whose record is a damaged line stays through compaction, after it: were the
/// line mended, the snapshot (whose blobs gc may have freed) must stay forgotten.
#[test]
fn a_forget_of_a_damaged_record_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let root = store.path().to_path_buf();
    let gone = commit_file(&store, 1);
    let mut lines = log_lines(&root);
    let original = lines[0].clone();
    lines[0][1] ^= 0x01;
    write_log_lines(&root, &lines);
    store.forget(&gone).unwrap();
    let kept = commit_file(&store, 2);
    for seed in 10..14 {
        let snap = commit_file(&store, seed);
        store.forget(&snap).unwrap();
    }
    store.gc().unwrap();
    let mut after = log_lines(&root);
    assert_eq!(after.len(), 3, "{:?}", shown(&after));
    assert!(String::from_utf8_lossy(&after[1]).contains("\"op\":\"forget\""));
    drop(store);
    after[0] = original;
    write_log_lines(&root, &after);
    Store::repair(&root).unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(store.snapshots(None, None).unwrap(), vec![kept]);
}

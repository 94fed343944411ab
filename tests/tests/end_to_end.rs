//! The whole system, as the end-to-end scenarios: all three programs as separate
//! processes (`turku-api serve`, `turku-storage serve`, our `turku-agent`) with stock rsync
//! and stock ssh, on 127.0.0.1 only. Registration, incremental backups, restore mode, two
//! machines sharing one store, and a coordinator restarted between pings. The trees are a
//! few MiB of incompressible random files, so what a backup moves and stores is plain to
//! measure against what the tree holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use std::time::Duration;

use turku_testkit::system::{
    backup_logs, due, eventually, stderr, Agent, Coordinator, StorageDaemon,
};
use turku_testkit::{
    assert_rsync_sees_no_difference, assert_same_tree, backdate_recent, is_root, pack_files_bytes,
    random_bytes, random_file,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A tree of `MIB`-sized random files in a few folders, small text files, a renamed-later
/// file, a folder renamed later and one deleted later: about 5 MiB in all.
fn make_tree(root: &Path, seed: u64) {
    for dir in ["media", "docs", "old-dir", "gone-dir"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (i, name) in [
        "media/a.bin",
        "media/b.bin",
        "media/c.bin",
        "big-1.bin",
        "big-2.bin",
    ]
    .iter()
    .enumerate()
    {
        random_file(&root.join(name), seed * 100 + i as u64, MIB as usize);
    }
    random_file(
        &root.join("docs/to-rename.bin"),
        seed * 100 + 10,
        64 * KIB as usize,
    );
    std::fs::write(root.join("docs/log.txt"), "line 1\nline 2\n").unwrap();
    for i in 0..3 {
        std::fs::write(
            root.join(format!("old-dir/note-{i}")),
            format!("note {i}\n"),
        )
        .unwrap();
        std::fs::write(root.join(format!("gone-dir/x-{i}")), format!("x {i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("media/a.bin", root.join("link-to-a")).unwrap();
    backdate_recent(root);
}

/// Sum of the regular files' sizes below `root`.
fn tree_bytes(root: &Path) -> u64 {
    turku_testkit::observe(root)
        .values()
        .filter(|o| o.content.is_some())
        .map(|o| o.size)
        .sum()
}

/// `cp -a`: the tree as a backup captured it, to compare its snapshot with later.
fn keep_copy(tree: &Path, to: &Path) -> PathBuf {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(tree)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {}", stderr(&out));
    to.to_path_buf()
}

/// Overwrites `len` bytes at `offset` with new random bytes, keeping the size, and moves the
/// mtime an hour back: a stock rsync sender then sees the file as changed (its quick check
/// compares size and whole-second mtime) though its size is the same.
fn rewrite_in_place(path: &Path, offset: u64, len: usize, seed: u64) {
    use std::os::unix::fs::FileExt as _;
    let before = std::fs::metadata(path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&random_bytes(seed, len), offset).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(path).unwrap().len(), before.len());
    let earlier = filetime::FileTime::from_unix_time(
        filetime::FileTime::from_last_modification_time(&before).unix_seconds() - 3600,
        0,
    );
    filetime::set_file_mtime(path, earlier).unwrap();
}

fn make_due(coordinator: &Coordinator, uuid: &str, source: &str) {
    coordinator.manage(&["backup-now", uuid, source]);
}

/// Makes `source` due and runs one ping; returns the newest snapshot's name, checking the
/// ping added exactly one.
fn back_up(
    coordinator: &Coordinator,
    storage: &StorageDaemon,
    agent: &Agent,
    source: &str,
) -> String {
    let uuid = agent.uuid();
    let before = storage.snapshots(&uuid, source);
    make_due(coordinator, &uuid, source);
    let out = agent.run_ok(&["ping"]);
    let after = storage.snapshots(&uuid, source);
    assert_eq!(after.len(), before.len() + 1, "{after:?}\n{}", stderr(&out));
    let new = after.iter().find(|n| !before.contains(n)).unwrap().clone();
    agent.assert_nothing_left();
    new
}

/// The snapshot exports equal to `expected` (the tree as it was at that backup).
fn assert_exports(storage: &StorageDaemon, uuid: &str, snapshot: &str, expected: &Path) {
    let exported = storage.export(uuid, "data", snapshot);
    assert_same_tree(expected, &exported.path().join("tree"));
}

/// The stats the store keeps for `snapshot` of `uuid`.
fn snapshot_stats(storage: &StorageDaemon, uuid: &str, snapshot: &str) -> serde_json::Value {
    let out = storage.store_command(&["snapshots", "--machine", uuid, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == snapshot)
        .unwrap_or_else(|| panic!("{snapshot} not listed: {list}"))["stats"]
        .clone()
}

/// `turku-storage stats --json` of the daemon's store.
fn store_stats(storage: &StorageDaemon) -> serde_json::Value {
    let out = storage.store_command(&["stats", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The number after `label` in a backup summary line such as
/// `...; received 1234 bytes, ...`.
fn summary_figure(summary: &str, label: &str) -> u64 {
    let at = summary
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} missing from the summary:\n{summary}"));
    summary[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure after {label:?} in:\n{summary}"))
}

/// A storage keeping hard links, as the original's `rsync -H`.
fn start_storage(coordinator: &Coordinator, name: &str) -> StorageDaemon {
    StorageDaemon::start(
        coordinator,
        name,
        serde_json::json!({"preserve_hard_links": true}),
    )
}

/// Waits (bounded) until the daemon's log shows `runs` GC runs after backups.
fn wait_for_gc_runs(storage: &StorageDaemon, runs: usize) {
    eventually(
        "the daemon's GC after the backup",
        Duration::from_secs(60),
        || storage.log().matches("gc after backups").count() >= runs,
    );
}

#[test]
fn a_second_backup_moves_only_the_changes_and_every_snapshot_exports_its_tree() {
    let coordinator = Coordinator::start();
    let storage = start_storage(&coordinator, "storage-e2e");
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    make_tree(&tree, 1);
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();

    let first = back_up(&coordinator, &storage, &agent, "data");
    let at_first = keep_copy(&tree, &work.path().join("at-first"));
    let size = tree_bytes(&tree);

    // Modify (same size, and grown), add, delete and rename files and folders.
    rewrite_in_place(&tree.join("media/a.bin"), 300 * KIB, 4 * KIB as usize, 77);
    std::fs::OpenOptions::new()
        .append(true)
        .open(tree.join("docs/log.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"line 3\n"))
        .unwrap();
    let added = 200 * KIB;
    random_file(&tree.join("docs/added.bin"), 78, added as usize);
    std::fs::remove_file(tree.join("big-2.bin")).unwrap();
    std::fs::remove_dir_all(tree.join("gone-dir")).unwrap();
    std::fs::rename(
        tree.join("docs/to-rename.bin"),
        tree.join("docs/renamed.bin"),
    )
    .unwrap();
    std::fs::rename(tree.join("old-dir"), tree.join("new-dir")).unwrap();
    backdate_recent(&tree);
    let second = back_up(&coordinator, &storage, &agent, "data");
    let at_second = keep_copy(&tree, &work.path().join("at-second"));

    // Every snapshot is the tree it captured.
    assert_exports(&storage, &uuid, &first, &at_first);
    assert_exports(&storage, &uuid, &second, &at_second);

    // The coordinator has both backups, the second based on the first, and the source is
    // no longer due.
    let logs = backup_logs(&coordinator, &uuid);
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs.iter().all(|l| l.0), "{logs:?}");
    assert_eq!(logs[0].1.as_deref(), Some(first.as_str()));
    assert_eq!(logs[1].1.as_deref(), Some(second.as_str()));
    let summary = logs[1].2.clone().unwrap_or_default();
    assert!(
        summary.contains(&format!("Base snapshot: {first}")),
        "{summary}"
    );
    assert!(due(&coordinator, &storage, &uuid).is_empty());

    // What moved. A rename is new to rsync (it has no rename detection), so the renamed
    // 64 KiB file and the renamed folder's notes cross the wire again; the 1 MiB file
    // changed in place sends its changed blocks only.
    let first_summary = logs[0].2.clone().unwrap_or_default();
    let first_received = summary_figure(&first_summary, "received");
    let received = summary_figure(&summary, "received");
    let literal = summary_figure(&summary, "literal data:");
    let matched = summary_figure(&summary, "matched data:");
    let stats = snapshot_stats(&storage, &uuid, &second);
    let new_bytes = stats["new_bytes"].as_u64().unwrap();
    eprintln!(
        "tree {size} bytes; first backup received {first_received} bytes; second: received \
         {received} bytes, literal {literal}, matched {matched}, new data {new_bytes} bytes \
         ({} stored), {} files reused",
        stats["new_stored_bytes"], stats["reused_files"]
    );
    assert!(first_received >= size, "{first_summary}");
    let changed = added + 64 * KIB + 4 * KIB;
    assert!(
        literal >= added + 64 * KIB && literal < changed + 64 * KIB,
        "literal data {literal} bytes for {changed} changed bytes:\n{summary}"
    );
    assert!(
        received < changed + 128 * KIB && received < size / 10,
        "received {received} bytes of a {size}-byte tree for {changed} changed bytes:\n{summary}"
    );
    // The file changed in place: most of it came from the previous snapshot; the unchanged
    // files were not transferred at all (not even as matched blocks).
    assert!((MIB - 64 * KIB..=MIB).contains(&matched), "{summary}");
    // a.bin, log.txt, added.bin, renamed.bin and the three notes of the renamed folder.
    assert_eq!(summary_figure(&summary, "Transferred:"), 7, "{summary}");
    assert_eq!(stats["reused_files"], 3, "{stats}");
    // Stored anew: the added file and the chunks around the rewritten region (chunks
    // average 1 MiB, so up to that whole file); the renamed file's chunk is stored once.
    assert!(
        new_bytes >= added && new_bytes <= added + MIB + 64 * KIB && new_bytes < size / 3,
        "new data {new_bytes} bytes: {stats}"
    );
    storage.assert_verifies_clean();
}

/// Removes everything inside `dir`, keeping `dir` (the agent's restore module path).
fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// Restored files equal `expected`: stock rsync as the judge, and `lstat` too when owners
/// can be kept (as root).
fn assert_restored(expected: &Path, restored: &Path) {
    assert_rsync_sees_no_difference(expected, restored);
    if is_root() {
        assert_same_tree(expected, restored);
    }
}

fn assert_restore_ok(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

#[test]
fn restore_mode_puts_a_chosen_snapshot_or_a_part_of_it_into_the_restore_path() {
    let coordinator = Coordinator::start();
    let storage = start_storage(&coordinator, "storage-restore");
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    make_tree(&tree, 2);
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();

    // Three backups, each of different content (also below `media`, restored alone later).
    let mut kept = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            rewrite_in_place(&tree.join("media/b.bin"), round * 1000, 512, 200 + round);
            random_file(
                &tree.join(format!("media/round-{round}.bin")),
                300 + round,
                100_000,
            );
            std::fs::remove_file(tree.join("big-1.bin")).ok();
            std::fs::write(tree.join("docs/log.txt"), format!("round {round}\n")).unwrap();
            backdate_recent(&tree);
        }
        let snapshot = back_up(&coordinator, &storage, &agent, "data");
        let copy = keep_copy(&tree, &work.path().join(format!("at-{round}")));
        kept.push((snapshot, copy));
    }
    let (first, at_first) = &kept[0];

    let session = agent.enter_restore_mode(&storage);
    // A part of the first snapshot: only that subtree lands, at the restore path's root.
    let out = session.restore(
        &storage,
        &uuid,
        "data",
        &["--snapshot", first, "--path", "media"],
    );
    assert_restore_ok(&out, "restore --path media");
    assert_restored(&at_first.join("media"), &agent.restore);
    assert!(!agent.restore.join("docs").exists());

    // The whole first snapshot, not the latest.
    empty_dir(&agent.restore);
    let out = session.restore(&storage, &uuid, "data", &["--snapshot", first]);
    assert_restore_ok(&out, "restore --snapshot");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("pushed snapshot {first}")), "{said}");
    assert_restored(at_first, &agent.restore);
    session.end();
    agent.assert_nothing_left();
    storage.assert_verifies_clean();
}

#[test]
fn two_machines_with_identical_trees_store_the_data_once() {
    let coordinator = Coordinator::start();
    // GC after every backup, so the pack files hold still once it has run.
    let storage = StorageDaemon::start(
        &coordinator,
        "storage-dedup",
        serde_json::json!({"preserve_hard_links": true, "gc_min_interval": 0.001}),
    );
    let work = tempfile::tempdir().unwrap();
    let tree_one = work.path().join("one");
    make_tree(&tree_one, 3);
    let tree_two = keep_copy(&tree_one, &work.path().join("two"));
    let size = tree_bytes(&tree_one);
    let agent_one = Agent::new(
        &coordinator,
        serde_json::json!({"data": {"path": tree_one}}),
    );
    let agent_two = Agent::new(
        &coordinator,
        serde_json::json!({"data": {"path": tree_two}}),
    );
    agent_one.run_ok(&["update-config"]);
    agent_two.run_ok(&["update-config"]);
    let (uuid_one, uuid_two) = (agent_one.uuid(), agent_two.uuid());
    assert_ne!(uuid_one, uuid_two);

    // Two witnesses of what is stored: the store's own stats, and the pack files on disk
    // (so a counting bug in the stats cannot pass). The daemon's GC after a backup rewrites
    // packs, so the files are measured once it has finished.
    let empty = store_stats(&storage);
    let packs_empty = pack_files_bytes(&storage.store);
    let snap_one = back_up(&coordinator, &storage, &agent_one, "data");
    wait_for_gc_runs(&storage, 1);
    let after_one = store_stats(&storage);
    let packs_one = pack_files_bytes(&storage.store);
    let snap_two = back_up(&coordinator, &storage, &agent_two, "data");
    wait_for_gc_runs(&storage, 2);
    let after_two = store_stats(&storage);
    let packs_two = pack_files_bytes(&storage.store);

    let stored = |s: &serde_json::Value| s["stored_bytes"].as_u64().unwrap();
    let logical = |s: &serde_json::Value| s["logical_bytes"].as_u64().unwrap();
    let (first_grew, second_grew) = (
        stored(&after_one) - stored(&empty),
        stored(&after_two) - stored(&after_one),
    );
    eprintln!(
        "tree {size} bytes; stored bytes: first machine +{first_grew}, second machine \
         +{second_grew}; logical bytes {}",
        logical(&after_two)
    );
    eprintln!(
        "pack files: {packs_empty} bytes empty, {packs_one} after the first machine, \
         {packs_two} after the second"
    );
    // Random data does not compress: the first machine stores the tree...
    assert!(first_grew >= size, "{after_one}");
    assert!(
        packs_one - packs_empty >= size,
        "pack files {packs_one} bytes"
    );
    // ...the second one only its own folder listings.
    assert!(second_grew < size / 20, "{after_one}\n{after_two}");
    assert!(
        packs_two - packs_one < size / 20,
        "pack files grew from {packs_one} to {packs_two} bytes for the second machine"
    );
    // The stats count what the files hold.
    assert_eq!(
        after_two["pack_bytes"].as_u64(),
        Some(packs_two),
        "pack bytes against the pack files on disk: {after_two}"
    );
    assert!(stored(&after_two) <= packs_two, "{after_two}");
    assert_eq!(logical(&after_two), 2 * size, "{after_two}");
    assert_eq!(after_two["machines"], 2, "{after_two}");
    let stats = snapshot_stats(&storage, &uuid_two, &snap_two);
    assert_eq!(stats["new_bytes"], 0, "{stats}");

    assert_exports(&storage, &uuid_one, &snap_one, &tree_one);
    assert_exports(&storage, &uuid_two, &snap_two, &tree_two);
    storage.assert_verifies_clean();
}

#[test]
fn a_restarted_coordinator_is_picked_up_and_a_ping_while_it_is_down_fails_clearly() {
    let mut coordinator = Coordinator::start();
    let storage = start_storage(&coordinator, "storage-restart");
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("data");
    make_tree(&tree, 4);
    let agent = Agent::new(&coordinator, serde_json::json!({"data": {"path": tree}}));
    agent.run_ok(&["update-config"]);
    let uuid = agent.uuid();
    let first = back_up(&coordinator, &storage, &agent, "data");

    // Restarted between pings: neither the agent nor the storage needs anything done.
    coordinator.restart();
    random_file(&tree.join("after-restart.bin"), 41, 10_000);
    backdate_recent(&tree);
    let second = back_up(&coordinator, &storage, &agent, "data");
    assert_exports(&storage, &uuid, &second, &tree);

    // Down: the ping says which peer failed, and leaves nothing behind.
    make_due(&coordinator, &uuid, "data");
    coordinator.stop();
    let out = agent.run(&["ping"]);
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("cannot check in with the coordinator")
            && said.contains(&format!("127.0.0.1:{}", coordinator.port)),
        "{said}"
    );
    agent.assert_nothing_left();
    assert_eq!(
        storage.snapshots(&uuid, "data"),
        [first.clone(), second.clone()]
    );

    // Back: the source made due before is still due, and the next ping backs it up.
    coordinator.restart();
    random_file(&tree.join("after-outage.bin"), 42, 10_000);
    backdate_recent(&tree);
    assert_eq!(due(&coordinator, &storage, &uuid), ["data"]);
    let out = agent.run_ok(&["ping"]);
    let snaps = storage.snapshots(&uuid, "data");
    assert_eq!(snaps.len(), 3, "{snaps:?}\n{}", stderr(&out));
    assert_exports(&storage, &uuid, &snaps[2], &tree);
    let logs = backup_logs(&coordinator, &uuid);
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert!(logs.iter().all(|l| l.0), "{logs:?}");
    assert!(due(&coordinator, &storage, &uuid).is_empty());
    agent.assert_nothing_left();
}

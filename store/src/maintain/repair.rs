//! `repair`: rebuild the index from packs and snapshot records alone, under a temporary
//! name swapped in only when complete; unreadable packs go to quarantine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::TransactionBehavior;
use serde::Serialize;

use crate::error::{IoContext, Result, StoreError};
use crate::format::id::Id;
use crate::format::pack;
use crate::format::pack::{list_pack_files, pack_name_of, pack_path, BlobLocation};
use crate::format::tree::{self};
use crate::format::*;
use crate::fsutil::remove_if_exists;
use crate::index;
use crate::index::IndexedBlob;
use crate::snapshot::{self};
use crate::store::{LockMode, Store};

/// What `repair` rebuilt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    pub duplicate_blobs: u64,
    pub snapshots: u64,
    /// Lines of the snapshot log that are no record and no torn append (`line N: why`):
    /// damage that may have cost a snapshot, kept in the log for an operator to mend.
    pub damaged_log_lines: Vec<String>,
    /// Pack files whose trailer could not be read, with why (nothing in them is indexed).
    pub unreadable_packs: Vec<String>,
    /// Where those were moved, under `quarantine/`.
    pub quarantined_packs: Vec<String>,
    /// Snapshots whose root tree is in no readable pack: kept, for `verify` to name and
    /// the operator to forget or restore.
    pub damaged_snapshots: Vec<String>,
    /// Blobs whose first listed copy failed its hash check and which are now indexed at a
    /// duplicate copy that passed it.
    pub blobs_moved_to_good_copy: u64,
    /// Trees no stored copy of which passes its hash check (id, why, packs, and the
    /// snapshots whose root it is): their children get no reference from them. `verify`
    /// names the paths they affect.
    pub unreadable_trees: Vec<String>,
}

/// What reading every stored copy of one blob found.
struct CopyCheck {
    /// The first copy that passed its hash check: its index among the copies, and the plaintext.
    good: Option<(usize, Vec<u8>)>,
    /// The first copy that could not be read at all (not a hash mismatch), with why.
    io_error: Option<(usize, StoreError)>,
}

impl Store {
    /// Rebuilds the index from packs and snapshot records. Needs the store to itself.
    ///
    /// The new index is built under a temporary name while the old one stays in place, and
    /// renamed over it only once complete and durable, under the exclusive store lock: a
    /// repair killed at any point leaves the store as it found it. (An index half rebuilt in
    /// place would list packs but no snapshots, and the next `gc` would free everything.)
    /// Packs whose trailer cannot be read are moved to `quarantine/` once the new index is in
    /// place, never deleted.
    pub fn repair(path: &Path) -> Result<RepairReport> {
        let (config, id, lock) = Store::lock_store(path, LockMode::Exclusive)?;
        let rebuild_path = path.join(INDEX_REBUILD_FILE);
        // A killed repair's half-built index.
        remove_with_side_files(&rebuild_path)?;
        let built = (|| -> Result<(RepairReport, Vec<PathBuf>)> {
            let conn = index::create_for_rebuild(&rebuild_path)?;
            // The handle holds a duplicate of the lock's descriptor: the lock outlives it.
            let held = lock
                .try_clone()
                .io_ctx("duplicate the store lock", path.join(LOCK_FILE))?;
            let store = Store::assemble(path, config, id, conn, held)?;
            let built = store.rebuild_index()?;
            index::finish_rebuild(store.into_index_connection()?, &rebuild_path)?;
            Ok(built)
        })();
        let (mut report, damaged) = match built {
            Ok(built) => built,
            Err(e) => {
                let _ = remove_with_side_files(&rebuild_path);
                return Err(e);
            }
        };
        swap_in_rebuilt_index(path)?;
        // Back to write-ahead logging, as every other user of the index expects.
        drop(index::open(&path.join(INDEX_FILE))?);
        // Only now: until the swap the old index may still read blobs from these packs by the
        // offsets it knows, trailer or not.
        for file in damaged {
            let moved = quarantine(path, &file)?;
            tracing::warn!(
                "repair: moved unreadable pack {} to {}",
                file.display(),
                moved.display()
            );
            report.quarantined_packs.push(moved.display().to_string());
        }
        drop(lock);
        Ok(report)
    }

    /// Fills this handle's (new, empty) index from the packs and the snapshot log; returns
    /// what it did and the pack files it could not read.
    fn rebuild_index(&self) -> Result<(RepairReport, Vec<PathBuf>)> {
        let mut report = RepairReport::default();
        let mut damaged = Vec::new();
        let mut trees: Vec<Id> = Vec::new();
        // Every copy of each blob stored more than once, the indexed one first: a corrupt
        // first copy must not hide a good one (nor a repack discard that as dead bytes).
        let mut duplicates: BTreeMap<Id, Vec<IndexedBlob>> = BTreeMap::new();
        for file in list_pack_files(&self.packs_dir())? {
            let Some(name) = pack_name_of(&file) else {
                continue;
            };
            let blobs = match pack::read_pack_trailer(&file, &name) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("repair: cannot read pack {name}: {e}; it goes to quarantine");
                    report.unreadable_packs.push(format!("{name}: {e}"));
                    damaged.push(file);
                    continue;
                }
            };
            let size = fs::metadata(&file).io_ctx("stat", &file)?.len();
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let before: i64 = tx.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?;
            let pack_id = index::insert_pack(&tx, &name, size, &blobs, &|_| None, None)?;
            let after: i64 = tx.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?;
            if ((after - before) as usize) < blobs.len() {
                for b in &blobs {
                    let Some(indexed) = index::find_blob(&tx, &b.id)? else {
                        continue;
                    };
                    if indexed.pack_id == pack_id && indexed.location.offset == b.offset {
                        continue;
                    }
                    duplicates
                        .entry(b.id)
                        .or_insert_with(|| vec![indexed])
                        .push(IndexedBlob {
                            location: *b,
                            pack_id,
                            pack_name: name.clone(),
                        });
                }
            }
            tx.commit()?;
            report.packs += 1;
            report.blobs += (after - before) as u64;
            report.duplicate_blobs += blobs.len() as u64 - (after - before) as u64;
            trees.extend(
                blobs
                    .iter()
                    .filter(|b| b.kind == BLOB_KIND_TREE)
                    .map(|b| b.id),
            );
        }
        self.settle_duplicate_chunks(&duplicates, &mut report)?;
        trees.sort();
        trees.dedup();
        // Trees no copy of which verifies: why, and the packs holding them.
        let mut unreadable_trees: BTreeMap<Id, String> = BTreeMap::new();
        for batch in trees.chunks(1024) {
            let mut children = Vec::new();
            let mut moves = Vec::new();
            for id in batch {
                let copies = match duplicates.get(id) {
                    Some(copies) => copies.clone(),
                    None => index::find_blob(&self.db(), id)?.into_iter().collect(),
                };
                let check = self.check_copies(&copies, true)?;
                let decoded = match check.good {
                    Some((at, raw)) => {
                        if at > 0 {
                            moves.push((copies[0].clone(), copies[at].clone()));
                        }
                        tree::decode(&raw).map_err(|e| format!("does not decode: {e}"))
                    }
                    None => match check.io_error {
                        // Skipping it would leave its children unreferenced, and the next
                        // `gc` would free them although the tree may be intact on disk.
                        Some((at, error)) => return Err(tree_read_failed(&copies[at], error)),
                        None => Err("no stored copy passes its hash check".to_string()),
                    },
                };
                match decoded {
                    Ok(node) => children.extend(node.children()),
                    Err(why) => {
                        let packs: Vec<&str> =
                            copies.iter().map(|c| c.pack_name.as_str()).collect();
                        let what = format!("{why} (pack {})", packs.join(", "));
                        tracing::error!(
                            "repair: tree {id}: {what}; nothing below it gets a reference from it"
                        );
                        unreadable_trees.insert(*id, what);
                    }
                }
            }
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (from, to) in &moves {
                move_blob_row(&tx, from, to)?;
            }
            report.blobs_moved_to_good_copy += moves.len() as u64;
            {
                let mut inc =
                    tx.prepare_cached("UPDATE blobs SET refs = refs + 1 WHERE id = ?1")?;
                for child in children {
                    inc.execute([child.as_bytes().as_slice()])?;
                }
            }
            tx.commit()?;
        }
        let mut roots_of: BTreeMap<Id, Vec<String>> = BTreeMap::new();
        let logged = snapshot::read_log(self)?;
        report.damaged_log_lines = logged.damaged_lines().map(|l| l.to_string()).collect();
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for snap in logged.snapshots {
            let label = format!("{}/{}/{}", snap.machine, snap.source, snap.name);
            if unreadable_trees.contains_key(&snap.root) {
                roots_of.entry(snap.root).or_default().push(label.clone());
            }
            // A snapshot whose root is in no readable pack keeps its row: `verify` names it
            // and the operator decides (dropping it would also hide it from them).
            if !index::insert_snapshot_row(&tx, &snap.to_row())? {
                tracing::warn!(
                    "repair: snapshot {label}: root tree {} is in no pack",
                    snap.root
                );
                report
                    .damaged_snapshots
                    .push(format!("{label}: root tree {} is in no pack", snap.root));
            }
            report.snapshots += 1;
        }
        tx.commit()?;
        for (id, what) in unreadable_trees {
            let roots = match roots_of.get(&id) {
                Some(snaps) => format!("; root of {}", snaps.join(", ")),
                None => String::new(),
            };
            report.unreadable_trees.push(format!("{id}: {what}{roots}"));
        }
        Ok((report, damaged))
    }

    /// Indexes each chunk stored more than once at a copy that passes its hash check, when
    /// the first listed one does not. (Trees are settled as the reference walk reads them.)
    fn settle_duplicate_chunks(
        &self,
        duplicates: &BTreeMap<Id, Vec<IndexedBlob>>,
        report: &mut RepairReport,
    ) -> Result<()> {
        let chunks: Vec<&Vec<IndexedBlob>> = duplicates
            .values()
            .filter(|copies| copies[0].location.kind != BLOB_KIND_TREE)
            .collect();
        for batch in chunks.chunks(1024) {
            let mut moves = Vec::new();
            for copies in batch {
                let check = self.check_copies(copies, false)?;
                match check.good {
                    Some((0, _)) => {}
                    Some((at, _)) => moves.push((copies[0].clone(), copies[at].clone())),
                    // A chunk refers to nothing: whichever copy stays indexed, no reference
                    // is lost, and `verify` names the files that need it.
                    None => tracing::warn!(
                        "repair: no copy of chunk {} passes its hash check",
                        copies[0].location.id
                    ),
                }
            }
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (from, to) in &moves {
                move_blob_row(&tx, from, to)?;
            }
            tx.commit()?;
            report.blobs_moved_to_good_copy += moves.len() as u64;
        }
        Ok(())
    }

    /// Reads the copies of one blob in order until one passes its hash check.
    fn check_copies(&self, copies: &[IndexedBlob], is_tree: bool) -> Result<CopyCheck> {
        let mut io_error = None;
        for (at, copy) in copies.iter().enumerate() {
            let injected = if is_tree {
                crate::fault::check(Some(self.path()), crate::fault::TREE_READ)
                    .io_ctx("read pack", pack_path(&self.packs_dir(), &copy.pack_name))
            } else {
                Ok(())
            };
            let decoded = injected
                .and_then(|()| self.read_stored(&copy.pack_name, &copy.location))
                .and_then(|stored| self.decode_stored(&copy.pack_name, &copy.location, &stored));
            match decoded {
                Ok(raw) => {
                    if at > 0 {
                        tracing::warn!(
                            "repair: blob {} is now indexed at its copy in pack {}: the one in pack {} fails its hash check",
                            copy.location.id,
                            copy.pack_name,
                            copies[0].pack_name
                        );
                    }
                    return Ok(CopyCheck {
                        good: Some((at, raw)),
                        io_error: None,
                    });
                }
                Err(StoreError::CorruptBlob { .. }) => {}
                Err(e) => {
                    if io_error.is_none() {
                        io_error = Some((at, e));
                    }
                }
            }
        }
        Ok(CopyCheck {
            good: None,
            io_error,
        })
    }
}

/// Points a blob's row at another copy, moving its bytes between the packs' dead (and
/// deferred) counts so a repack drops the bad copy, not the good one.
fn move_blob_row(
    tx: &rusqlite::Transaction<'_>,
    from: &IndexedBlob,
    to: &IndexedBlob,
) -> Result<()> {
    let (old, new): (&BlobLocation, &BlobLocation) = (&from.location, &to.location);
    tx.prepare_cached(
        "UPDATE blobs SET kind = ?2, pack = ?3, offset = ?4, stored_len = ?5, raw_len = ?6,
         compression = ?7 WHERE id = ?1",
    )?
    .execute(rusqlite::params![
        new.id.as_bytes().as_slice(),
        new.kind,
        to.pack_id,
        new.offset as i64,
        new.stored_len,
        new.raw_len,
        new.compression
    ])?;
    let mut counts = tx.prepare_cached(
        "UPDATE packs SET dead_bytes = dead_bytes + ?2, deferred_bytes = deferred_bytes + ?3
         WHERE id = ?1",
    )?;
    let deferred = |l: &BlobLocation| {
        if l.compression == COMPRESSION_DEFERRED {
            i64::from(l.stored_len)
        } else {
            0
        }
    };
    counts.execute(rusqlite::params![
        from.pack_id,
        i64::from(old.stored_len),
        -deferred(old)
    ])?;
    counts.execute(rusqlite::params![
        to.pack_id,
        -i64::from(new.stored_len),
        deferred(new)
    ])?;
    Ok(())
}

/// The error that stops a repair when a tree cannot be read (rather than failing its hash
/// check), naming the blob and its pack.
fn tree_read_failed(copy: &IndexedBlob, error: StoreError) -> StoreError {
    let kind = match &error {
        StoreError::Io { source, .. } | StoreError::DiskFull { source, .. } => source.kind(),
        _ => std::io::ErrorKind::Other,
    };
    let what = format!(
        "tree {} at offset {}: {error}",
        copy.location.id, copy.location.offset
    );
    StoreError::Io {
        op: "repair stopped, the old index stays in place: cannot read a tree in pack",
        path: PathBuf::from(&copy.pack_name),
        source: std::io::Error::new(kind, what),
    }
}

/// Removes the database at `db` and the files SQLite keeps beside it.
fn remove_with_side_files(db: &Path) -> Result<()> {
    for suffix in SQLITE_SIDE_SUFFIXES {
        remove_if_exists(&index::side_file(db, suffix))?;
    }
    remove_if_exists(db)
}

/// Renames the rebuilt index over the store's index, keeping the old one (with its side
/// files) as `INDEX_BACKUP_FILE`. The old index moves aside first: if this is cut short the
/// store has no index, and nothing opens it until the next repair, which is safe; an old
/// index missing its write-ahead log, or the new one beside the old log (SQLite would replay
/// it into the wrong database), would not be.
fn swap_in_rebuilt_index(root: &Path) -> Result<()> {
    let current = root.join(INDEX_FILE);
    let backup = root.join(INDEX_BACKUP_FILE);
    let rebuilt = root.join(INDEX_REBUILD_FILE);
    if current.exists() {
        remove_with_side_files(&backup)?;
        fs::rename(&current, &backup).io_ctx("move the old index aside", &current)?;
        crate::fsutil::sync_dir(root)?;
    }
    // Side files left beside no index belong with the backup (a swap cut short above).
    for suffix in SQLITE_SIDE_SUFFIXES {
        let side = index::side_file(&current, suffix);
        if side.exists() {
            let aside = index::side_file(&backup, suffix);
            if aside.exists() {
                remove_if_exists(&side)?;
            } else {
                fs::rename(&side, &aside).io_ctx("move the old index aside", &side)?;
            }
        }
    }
    crate::fsutil::sync_dir(root)?;
    fs::rename(&rebuilt, &current).io_ctx("put the rebuilt index in place", &rebuilt)?;
    crate::fsutil::sync_dir(root)
}

/// Moves a pack file `repair` cannot read to `quarantine/`, for an operator to look at:
/// a pack is never deleted for being unreadable (it may hold the only copy of some data).
fn quarantine(root: &Path, file: &Path) -> Result<PathBuf> {
    let dir = root.join(QUARANTINE_DIR);
    fs::create_dir_all(&dir).io_ctx("create folder", &dir)?;
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    let mut target = dir.join(file_name.as_ref());
    if target.exists() {
        target = dir.join(format!("{file_name}.{}", crate::index::session::now_ns()));
    }
    fs::rename(file, &target).io_ctx("move to quarantine", file)?;
    crate::fsutil::sync_dir(&dir)?;
    if let Some(shard) = file.parent() {
        crate::fsutil::sync_dir(shard)?;
    }
    Ok(target)
}

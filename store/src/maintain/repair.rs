//! `repair`: rebuild the index from packs and snapshot records alone, under a temporary
//! name swapped in only when complete; unreadable packs go to quarantine.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::TransactionBehavior;
use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::format::id::Id;
use crate::format::pack;
use crate::format::pack::{list_pack_files, pack_name_of};
use crate::format::tree::{self};
use crate::format::*;
use crate::fsutil::remove_if_exists;
use crate::index;
use crate::snapshot::{self};
use crate::store::{LockMode, Store};

/// What `repair` rebuilt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    pub duplicate_blobs: u64,
    pub snapshots: u64,
    /// Pack files whose trailer could not be read, with why (nothing in them is indexed).
    pub unreadable_packs: Vec<String>,
    /// Where those were moved, under `quarantine/`.
    pub quarantined_packs: Vec<String>,
    /// Snapshots whose root tree is in no readable pack: kept, for `verify` to name and
    /// the operator to forget or restore.
    pub damaged_snapshots: Vec<String>,
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
            index::insert_pack(&tx, &name, size, &blobs, &|_| None, None)?;
            let after: i64 = tx.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?;
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
        trees.sort();
        trees.dedup();
        for batch in trees.chunks(1024) {
            let mut children = Vec::new();
            for id in batch {
                match self
                    .read_blob(id)
                    .ok()
                    .and_then(|raw| tree::decode(&raw).ok())
                {
                    Some(node) => children.extend(node.children()),
                    None => tracing::warn!("repair: tree {id} is unreadable"),
                }
            }
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut inc =
                    tx.prepare_cached("UPDATE blobs SET refs = refs + 1 WHERE id = ?1")?;
                for child in children {
                    inc.execute([child.as_bytes().as_slice()])?;
                }
            }
            tx.commit()?;
        }
        let logged = snapshot::read_log(self)?;
        if logged.bad_lines > 0 {
            tracing::warn!(
                "repair: {} unreadable snapshot log lines ignored",
                logged.bad_lines
            );
        }
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for snap in logged.snapshots {
            // A snapshot whose root is in no readable pack keeps its row: `verify` names it
            // and the operator decides (dropping it would also hide it from them).
            if !index::insert_snapshot_row(&tx, &snap.to_row())? {
                let label = format!("{}/{}/{}", snap.machine, snap.source, snap.name);
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
        Ok((report, damaged))
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

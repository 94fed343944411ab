//! Forgetting snapshots and reclaiming space.
//!
//! `forget` removes a snapshot's record and row and drops its root's reference. `gc` then
//! frees every blob whose reference count reached zero and that no live session pins or owns,
//! cascading into the children of freed trees, deletes packs that became empty and repacks
//! those with enough garbage, or with enough blobs whose compression a writer deferred
//! (compressing them on the way). Each step costs in proportion to what it frees or moves.
//! See `index/session.rs` for why this is safe while backups run.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::error::{IoContext, Result, StoreError};
use crate::format::id::Id;
use crate::format::pack::{
    self, list_pack_files, pack_name_of, pack_path, BlobLocation, Compressor, PackWriter,
};
use crate::format::tree;
use crate::format::*;
use crate::fsutil::remove_if_exists;
use crate::index;
use crate::index::session;
use crate::snapshot::{self, Snapshot};
use crate::store::{check_stored, new_decompressor, Store};
use crate::tuning::*;

/// What a GC run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GcStats {
    pub dead_sessions: u64,
    /// Snapshot commits interrupted by a crash, rolled back.
    pub rolled_back_commits: u64,
    /// Forgets a crash cut short (logged, row left), completed.
    pub completed_forgets: u64,
    pub freed_blobs: u64,
    pub freed_bytes: u64,
    pub deleted_packs: u64,
    pub repacked_packs: u64,
    pub moved_blobs: u64,
    /// Blobs a writer stored raw that this run compressed, and the bytes that saved.
    pub compressed_blobs: u64,
    pub compression_saved_bytes: u64,
    pub removed_orphans: u64,
    /// Pack files no index row knows, past the grace period: left in place, since a pack
    /// may hold data a lost row referenced; `repair` indexes those it can read.
    pub unindexed_packs: u64,
    /// Tree blobs that could not be decoded while freeing (their children may leak until
    /// `repair`); a non-zero value is worth an operator's look.
    pub unreadable_trees: u64,
    /// Packs due for repacking that could not be (a live blob failed its check, or the pack
    /// could not be read): left untouched, each named in a warning; `verify` names the damage.
    pub packs_not_repacked: u64,
}

impl Store {
    /// Removes a snapshot. Its data is reclaimed by the next `gc`. Works on a full disk: it
    /// appends one line to the snapshot log and deletes a row, for which the store's space
    /// reserve is freed if need be.
    pub fn forget(&self, snap: &Snapshot) -> Result<()> {
        self.with_room(|| self.forget_once(snap))
    }

    fn forget_once(&self, snap: &Snapshot) -> Result<()> {
        // Record first: a crash in between leaves a row without a record, which `repair`
        // drops, never a record whose data GC may already have freed.
        snapshot::remove_record(self, snap)?;
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        index::delete_snapshot(&tx, &snap.to_row())?;
        tx.commit()?;
        Ok(())
    }

    /// Reclaims space; safe to run while backups write. Only one GC runs at a time.
    pub fn gc(&self) -> Result<GcStats> {
        let lock_path = self.path().join(GC_LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .io_ctx("open gc lock", &lock_path)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Busy("another gc is running".into()));
        }
        // GC unlinks pack files once rows no longer point at them: those row changes must be
        // on disk first, or a power cut could bring back rows naming deleted packs. Every
        // commit of this run is synced (a few per batch, off the backup's path).
        self.db().pragma_update(None, "synchronous", "FULL")?;
        // Every step is safe to run again, so a run cut short by a full disk starts over
        // once the reserve is freed.
        let collected = self.with_room(|| self.collect());
        let restored = self.db().pragma_update(None, "synchronous", "NORMAL");
        let stats = collected?;
        restored?;
        if let Err(e) = crate::space::ensure_reserve(self.path()) {
            tracing::warn!("gc: the space reserve is not restored: {e}");
        }
        drop(lock);
        Ok(stats)
    }

    /// Runs `step`; if it fails for want of space and the store's space reserve was there to
    /// free, frees it and runs `step` once more.
    fn with_room<T>(&self, mut step: impl FnMut() -> Result<T>) -> Result<T> {
        match step() {
            Err(e) if e.is_disk_full() && crate::space::release_reserve(self.path()) => step(),
            result => result,
        }
    }

    /// One GC run, under the GC lock.
    fn collect(&self) -> Result<GcStats> {
        let mut stats = GcStats::default();
        // Before anything is freed: a rolled-back commit must never be resurrected by a
        // repair once its blobs are gone.
        let dead = self.roll_back_dead_writers(&mut stats)?;
        let logged = snapshot::read_log(self)?;
        stats.completed_forgets = self.complete_interrupted_forgets(&logged)? as u64;
        self.end_dead_sessions(&dead, &logged, &mut stats)?;
        // Packs whose every blob is freed are deleted batch by batch, before anything is
        // repacked: on a full disk that is what makes room (repacking needs some first).
        let mut batch = FREE_BATCH;
        loop {
            match self.free_batch(batch, &mut stats) {
                Ok(packs) if packs.is_empty() => break,
                Ok(packs) => self.delete_dead_packs(&packs, &mut stats)?,
                Err(e) if e.is_disk_full() && batch > FREE_BATCH_FULL_DISK => {
                    tracing::warn!("gc: the disk is full; freeing in small batches");
                    batch = FREE_BATCH_FULL_DISK;
                }
                Err(e) => return Err(e),
            }
            if batch == FREE_BATCH_FULL_DISK {
                // Lets the next transaction reuse the write-ahead log from its start.
                self.db()
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            }
        }
        self.sweep_packs(&mut stats)?;
        self.remove_orphans(&mut stats)?;
        match snapshot::compact_log(self) {
            // Forgotten lines only take room; compaction waits for a disk with some.
            Err(e) if e.is_disk_full() => tracing::warn!("gc: log not compacted: {e}"),
            result => {
                result?;
            }
        }
        Ok(stats)
    }

    /// Decides which writer sessions are dead, once, and rolls back their interrupted
    /// commits; returns those sessions, the only ones [`Self::end_dead_sessions`] may end.
    /// The set is taken before the rollback: a writer that dies during this run is seen
    /// alive here, so its record and its session both wait for the next run.
    fn roll_back_dead_writers(&self, stats: &mut GcStats) -> Result<Vec<i64>> {
        let dead = session::dead_sessions(&self.db())?;
        stats.rolled_back_commits += snapshot::roll_back_interrupted_commits(self)? as u64;
        Ok(dead)
    }

    /// Ends the sessions `dead` (from [`Self::roll_back_dead_writers`]), dropping their pins,
    /// name reservations and pack ownership, after taking back any record of theirs still
    /// without a row in `logged` (the log as replayed after the rollback): once a session is
    /// ended, its record would read as a snapshot whose row the index lost, and `repair`
    /// would bring it back with its data freed.
    fn end_dead_sessions(
        &self,
        dead: &[i64],
        logged: &snapshot::Replayed,
        stats: &mut GcStats,
    ) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let dead_set: std::collections::HashSet<i64> = dead.iter().copied().collect();
        for (snap, _) in snapshot::records_without_rows(self, logged)? {
            if logged
                .writers
                .get(&snap.key())
                .is_some_and(|writer| dead_set.contains(writer))
            {
                tracing::info!(
                    "rolling back the interrupted commit of {}/{}/{}",
                    snap.machine,
                    snap.source,
                    snap.name
                );
                snapshot::remove_record(self, &snap)?;
                stats.rolled_back_commits += 1;
            }
        }
        for &id in dead {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            session::end(&tx, id)?;
            tx.commit()?;
            stats.dead_sessions += 1;
        }
        Ok(())
    }

    /// Deletes those of `packs` whose every blob is freed.
    fn delete_dead_packs(
        &self,
        packs: &std::collections::BTreeSet<i64>,
        stats: &mut GcStats,
    ) -> Result<()> {
        for &pack_id in packs {
            let dead: Option<String> = self
                .db()
                .query_row(
                    "SELECT name FROM packs WHERE id = ?1 AND dead_bytes >= data_bytes
                     AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = packs.session)",
                    [pack_id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(name) = dead {
                self.delete_pack(pack_id, &name, stats)?;
            }
        }
        Ok(())
    }

    /// Deletes a pack none of whose blobs is indexed: its row first, then its file (a crash
    /// in between leaves a file no row knows, never a row whose file is gone).
    fn delete_pack(&self, pack_id: i64, name: &str, stats: &mut GcStats) -> Result<()> {
        self.db()
            .execute("DELETE FROM packs WHERE id = ?1", [pack_id])?;
        remove_if_exists(&pack_path(&self.packs_dir(), name))?;
        stats.deleted_packs += 1;
        Ok(())
    }

    /// Frees up to `limit` unreferenced, unpinned blobs in one transaction; returns the packs
    /// they were in.
    fn free_batch(
        &self,
        limit: usize,
        stats: &mut GcStats,
    ) -> Result<std::collections::BTreeSet<i64>> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let victims: Vec<(Id, i64, String, BlobLocation)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT b.id, b.kind, b.compression, b.offset, b.stored_len, b.raw_len, b.pack, p.name
                 FROM blobs b JOIN packs p ON p.id = b.pack
                 WHERE b.refs <= 0
                   AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = p.session)
                   AND NOT EXISTS (SELECT 1 FROM pins WHERE pins.blob = b.id)
                 LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                let id: Vec<u8> = r.get(0)?;
                let id = Id::from_slice(&id).unwrap_or(Id([0; 32]));
                Ok((
                    id,
                    r.get(6)?,
                    r.get(7)?,
                    BlobLocation {
                        id,
                        kind: r.get(1)?,
                        compression: r.get(2)?,
                        offset: r.get::<_, i64>(3)? as u64,
                        stored_len: r.get(4)?,
                        raw_len: r.get(5)?,
                    },
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id, pack_id, pack_name, location) in &victims {
            if location.kind == BLOB_KIND_TREE {
                let children = self
                    .read_stored(pack_name, location)
                    .and_then(|stored| self.decode_stored(pack_name, location, &stored))
                    .ok()
                    .and_then(|raw| tree::decode(&raw).ok())
                    .map(|node| node.children());
                match children {
                    Some(children) => {
                        let mut dec =
                            tx.prepare_cached("UPDATE blobs SET refs = refs - 1 WHERE id = ?1")?;
                        for child in children {
                            dec.execute([child.as_bytes().as_slice()])?;
                        }
                    }
                    None => {
                        tracing::warn!("gc: tree {id} is unreadable; its children may leak");
                        stats.unreadable_trees += 1;
                    }
                }
            }
            tx.execute(
                "DELETE FROM blobs WHERE id = ?1",
                [id.as_bytes().as_slice()],
            )?;
            tx.execute(
                "UPDATE packs SET dead_bytes = dead_bytes + ?1 WHERE id = ?2",
                params![location.stored_len, pack_id],
            )?;
        }
        tx.commit()?;
        for (_, _, _, location) in &victims {
            stats.freed_blobs += 1;
            stats.freed_bytes += u64::from(location.stored_len);
        }
        Ok(victims.iter().map(|(_, pack, _, _)| *pack).collect())
    }

    fn sweep_packs(&self, stats: &mut GcStats) -> Result<()> {
        let candidates: Vec<(i64, String, u64, u64, u64)> = {
            let db = self.db();
            // A pack a live session owns protects its blobs by that ownership, which a copy
            // would not carry: it waits for a later GC.
            let mut stmt = db.prepare(
                "SELECT id, name, data_bytes, dead_bytes, deferred_bytes FROM packs p
                 WHERE (dead_bytes > 0 OR deferred_bytes > 0)
                 AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = p.session)",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, i64>(4)? as u64,
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // Wholly dead packs first: deleting them makes room, repacking takes some.
        let (dead, rest): (Vec<_>, Vec<_>) = candidates
            .into_iter()
            .partition(|(_, _, data_bytes, dead_bytes, _)| dead_bytes >= data_bytes);
        for (pack_id, name, ..) in dead {
            self.delete_pack(pack_id, &name, stats)?;
        }
        for (pack_id, name, data_bytes, dead_bytes, deferred_bytes) in rest {
            if dead_bytes * 100 >= data_bytes * REPACK_DEAD_PERCENT
                || deferred_bytes * 100 >= data_bytes * COMPACT_DEFERRED_PERCENT
            {
                match self.repack(pack_id, &name, stats) {
                    // Repacking only saves room and needs some first: it waits for a later
                    // run, and the space reserve stays for what cannot wait.
                    Err(e) if e.is_disk_full() => {
                        tracing::warn!("gc: no room to repack pack {name}; left for later: {e}");
                        break;
                    }
                    // One unreadable pack (a corrupt live blob, a damaged trailer) must not
                    // stop every later gc: it stays as it is, for `verify` to name and the
                    // operator to deal with, and the rest of the run goes on.
                    Err(e) => {
                        tracing::warn!("gc: pack {name} not repacked; left as it is: {e}");
                        stats.packs_not_repacked += 1;
                    }
                    Ok(()) => {}
                }
            }
        }
        Ok(())
    }

    /// Copies a pack's live blobs into a new pack, compressing those a writer deferred and
    /// copying the rest as they are, repoints them, and deletes the old one. The new pack is
    /// durable before any row points at it.
    fn repack(&self, pack_id: i64, name: &str, stats: &mut GcStats) -> Result<()> {
        let old_path = pack_path(&self.packs_dir(), name);
        let blobs = pack::read_pack_trailer(&old_path, name)?;
        // At most one pack's blobs are held at once.
        let mut live: Vec<(BlobLocation, Vec<u8>)> = Vec::new();
        for b in &blobs {
            let is_live = {
                let db = self.db();
                let mut stmt = db.prepare_cached("SELECT pack, offset FROM blobs WHERE id = ?1")?;
                stmt.query_row([b.id.as_bytes().as_slice()], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .optional()?
                    == Some((pack_id, b.offset))
            };
            if is_live {
                live.push((*b, self.read_stored(name, b)?));
            }
        }
        let deferred_before: u64 = live
            .iter()
            .filter(|(b, _)| b.compression == COMPRESSION_DEFERRED)
            .map(|(b, _)| u64::from(b.stored_len))
            .sum();
        let encoded = self.verify_and_compress(name, live)?;
        let mut writer = PackWriter::create(&self.tmp_dir())?;
        let mut moved: Vec<(BlobLocation, BlobLocation)> = Vec::with_capacity(encoded.len());
        for (old, compression, stored) in &encoded {
            let new = writer.add_stored(old.id, old.kind, *compression, stored, old.raw_len)?;
            moved.push((*old, new));
        }
        let finished = if moved.is_empty() {
            None
        } else {
            Some(writer.finish(&self.packs_dir())?)
        };
        {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(done) = &finished {
                let data_bytes: u64 = done.blobs.iter().map(|b| u64::from(b.stored_len)).sum();
                tx.execute(
                    "INSERT INTO packs(name, size, data_bytes) VALUES (?1, ?2, ?3)",
                    params![done.name, done.size as i64, data_bytes as i64],
                )?;
                let new_id = tx.last_insert_rowid();
                let mut dead = 0u64;
                let mut repoint = tx.prepare_cached(
                    "UPDATE blobs SET pack = ?1, offset = ?2, stored_len = ?3,
                     compression = ?4 WHERE id = ?5 AND pack = ?6",
                )?;
                for (old, new) in &moved {
                    let n = repoint.execute(params![
                        new_id,
                        new.offset as i64,
                        new.stored_len,
                        new.compression,
                        old.id.as_bytes().as_slice(),
                        pack_id
                    ])?;
                    if n == 0 {
                        dead += u64::from(new.stored_len);
                    }
                }
                if dead > 0 {
                    tx.execute(
                        "UPDATE packs SET dead_bytes = ?1 WHERE id = ?2",
                        params![dead as i64, new_id],
                    )?;
                }
            }
            tx.execute("DELETE FROM packs WHERE id = ?1", [pack_id])?;
            tx.commit()?;
        }
        remove_if_exists(&old_path)?;
        stats.repacked_packs += 1;
        stats.moved_blobs += moved.len() as u64;
        let (compressed, after): (u64, u64) = moved
            .iter()
            .filter(|(old, _)| old.compression == COMPRESSION_DEFERRED)
            .fold((0, 0), |(n, bytes), (_, new)| {
                (n + 1, bytes + u64::from(new.stored_len))
            });
        stats.compressed_blobs += compressed;
        stats.compression_saved_bytes += deferred_before.saturating_sub(after);
        Ok(())
    }

    /// Removes stale temp files, after a grace period, and counts pack files no index row
    /// knows (a writer renames its pack into place just before indexing it).
    fn remove_orphans(&self, stats: &mut GcStats) -> Result<()> {
        let grace = Duration::from_secs(ORPHAN_PACK_GRACE_SECS);
        let old_enough = |path: &Path| {
            fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > grace)
        };
        for file in list_pack_files(&self.packs_dir())? {
            let Some(name) = pack_name_of(&file) else {
                continue;
            };
            let known: Option<i64> = self
                .db()
                .query_row("SELECT id FROM packs WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            // Never deleted: it may hold the only copy of what a lost index row referenced
            // (a killed writer's or gc's leftover is mere garbage, which `repair` indexes and
            // the next gc then frees through the index).
            if known.is_none() && old_enough(&file) {
                stats.unindexed_packs += 1;
            }
        }
        if stats.unindexed_packs > 0 {
            tracing::warn!(
                "gc: {} pack files are in no index row; left in place: run `repair` to index them",
                stats.unindexed_packs
            );
        }
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).io_ctx("list", &tmp)? {
            let path = entry.io_ctx("list", &tmp)?.path();
            if old_enough(&path) && !held_by_a_writer(&path) {
                remove_if_exists(&path)?;
                stats.removed_orphans += 1;
            }
        }
        Ok(())
    }

    /// Encodes the live blobs of pack `name` for their new pack, on as many threads as a
    /// writer would use: each is verified (repacking must never spread corruption), and
    /// those stored deferred are compressed (kept raw when that does not pay); the others
    /// keep their encoding.
    fn verify_and_compress(
        &self,
        name: &str,
        blobs: Vec<(BlobLocation, Vec<u8>)>,
    ) -> Result<Vec<(BlobLocation, u8, Vec<u8>)>> {
        let mut encoded: Vec<(BlobLocation, u8, Vec<u8>)> = blobs
            .into_iter()
            .map(|(location, stored)| (location, location.compression, stored))
            .collect();
        let threads = crate::write::packer::compression_threads();
        let level = self.config().zstd_level;
        // Parts of about equal bytes: a pack mixes many small files with big chunks.
        let total: usize = encoded.iter().map(|(_, _, b)| b.len()).sum();
        let mut parts: Vec<&mut [(BlobLocation, u8, Vec<u8>)]> = Vec::with_capacity(threads);
        let mut rest = encoded.as_mut_slice();
        for k in 1..threads {
            let target = total * k / threads - (total * (k - 1) / threads);
            let mut bytes = 0;
            let cut = rest
                .iter()
                .position(|(_, _, b)| {
                    bytes += b.len();
                    bytes >= target
                })
                .map_or(rest.len(), |i| i + 1);
            let (part, tail) = rest.split_at_mut(cut);
            parts.push(part);
            rest = tail;
        }
        parts.push(rest);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    scope.spawn(move || -> Result<()> {
                        let mut compressor = Compressor::new(level)?;
                        let mut decompressor = new_decompressor(self.path())?;
                        for (location, compression, bytes) in part {
                            check_stored(name, location, bytes, &mut decompressor)?;
                            if *compression == COMPRESSION_DEFERRED {
                                let (chosen, stored) =
                                    compressor.compress_owned(std::mem::take(bytes));
                                *compression = chosen;
                                *bytes = stored;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for worker in workers {
                worker
                    .join()
                    .map_err(|_| StoreError::Busy("a gc compression thread panicked".into()))??;
            }
            Ok(())
        })?;
        Ok(encoded)
    }
}

/// Whether a live writer holds the temp file at `path` (a pack writer locks its temp pack
/// until the pack is durable, however long a slow pull leaves it without writes). The lock
/// is tested, not kept: a file nobody holds is left by a writer that is gone.
fn held_by_a_writer(path: &Path) -> bool {
    match fs::File::open(path).map(|f| f.try_lock()) {
        Ok(Err(fs::TryLockError::WouldBlock)) => true,
        Ok(_) => false,
        // Gone already, or not ours to judge: leave it to the removal, which says why.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::EntryData;
    use crate::store::StoreConfig;

    fn new_store(dir: &Path) -> Store {
        Store::init(&dir.join("store"), StoreConfig::default()).unwrap()
    }

    /// Backs up a folder holding `files` (name, seed, length of pseudo-random content).
    fn backup(store: &Store, dir: &Path, source: &str, files: &[(&str, u64, usize)]) -> Snapshot {
        let src = dir.join(format!("src-{source}-{}", files.len()));
        fs::create_dir_all(&src).unwrap();
        for (name, seed, len) in files {
            fs::write(src.join(name), turku_testkit::random_bytes(*seed, *len)).unwrap();
        }
        store.ingest_dir("m", source, &src, None).unwrap().0
    }

    fn repaired(store: Store) -> Store {
        let path = store.path().to_path_buf();
        drop(store);
        Store::repair(&path).unwrap();
        Store::open(&path).unwrap()
    }

    /// A writer that dies while gc runs, after gc decided which writers are dead and before
    /// it ends their sessions (SIGKILL, or a failed commit marking its session abandoned):
    /// its session must outlive this run, or its record would read as a snapshot whose row
    /// the index lost while its data is freed, and `repair` would bring that back.
    #[test]
    fn a_writer_dying_during_gc_keeps_its_session_until_its_commit_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_store(dir.path());
        let done = backup(&store, dir.path(), "s", &[("f", 1, 100_000)]);
        // A writer between appending its record and inserting its row, built by hand: its
        // data is the forgotten snapshot's (every pack owned by its session), its record
        // logged under another name, its session registered to this (running) process.
        store.forget(&done).unwrap();
        let writer = session::register(&store.db()).unwrap();
        store
            .db()
            .execute("UPDATE packs SET session = ?1", [writer])
            .unwrap();
        let mut committing = done.clone();
        committing.name = format!("{}-committing", done.name);
        snapshot::write_record(&store, &committing, writer).unwrap();

        let mut stats = GcStats::default();
        let dead = store.roll_back_dead_writers(&mut stats).unwrap();
        assert_eq!(stats.rolled_back_commits, 0, "the writer was alive");
        // It dies now: the start time no process has, as a kill then a reused pid show.
        store
            .db()
            .execute("UPDATE sessions SET pid_start = -1 WHERE id = ?1", [writer])
            .unwrap();
        let logged = snapshot::read_log(&store).unwrap();
        store.end_dead_sessions(&dead, &logged, &mut stats).unwrap();
        let state = session::state(&store.db(), writer).unwrap();
        let record_left = snapshot::read_log(&store)
            .unwrap()
            .snapshots
            .iter()
            .any(|s| s.name == committing.name);
        assert!(
            state != session::SessionState::Ended || !record_left,
            "the session ended with its record still logged"
        );
        let report = store.verify(None).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);

        // The next run rolls the commit back, ends the session and frees the data.
        let gc = store.gc().unwrap();
        assert_eq!((gc.rolled_back_commits, gc.dead_sessions), (1, 1), "{gc:?}");
        assert!(gc.deleted_packs >= 1, "{gc:?}");
        let report = store.verify(None).unwrap();
        assert!(
            report.is_clean() && report.interrupted_commits.is_empty(),
            "{report:?}"
        );
        let store = repaired(store);
        assert_eq!(store.snapshots(None, None).unwrap(), Vec::new());
        assert!(store.verify(None).unwrap().is_clean());
    }

    /// Ending a dead session takes back any record of its that is still without a row, even
    /// when the rollback pass missed it.
    #[test]
    fn a_dead_session_is_never_ended_with_its_record_still_logged() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_store(dir.path());
        let done = backup(&store, dir.path(), "s", &[("f", 2, 100_000)]);
        let writer = session::register(&store.db()).unwrap();
        let mut committing = done.clone();
        committing.name = format!("{}-committing", done.name);
        snapshot::write_record(&store, &committing, writer).unwrap();

        let mut stats = GcStats::default();
        let logged = snapshot::read_log(&store).unwrap();
        store
            .end_dead_sessions(&[writer], &logged, &mut stats)
            .unwrap();
        assert_eq!((stats.rolled_back_commits, stats.dead_sessions), (1, 1));
        assert_eq!(
            session::state(&store.db(), writer).unwrap(),
            session::SessionState::Ended
        );
        let report = store.verify(None).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        let store = repaired(store);
        assert_eq!(store.snapshots(None, None).unwrap(), vec![done]);
    }

    /// One corrupt live blob in a pack due for repacking: gc leaves that pack as it is,
    /// reports it, and does the rest of its work, run after run.
    #[test]
    fn a_corrupt_blob_in_a_pack_due_for_repacking_does_not_stop_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_store(dir.path());
        let both = backup(
            &store,
            dir.path(),
            "s",
            &[("keep", 3, 100_000), ("gone", 4, 200_000)],
        );
        let kept = backup(&store, dir.path(), "s", &[("keep", 3, 100_000)]);
        let other = backup(&store, dir.path(), "other", &[("x", 5, 50_000)]);
        store.forget(&both).unwrap();
        store.forget(&other).unwrap();
        let EntryData::File { chunks, .. } = store.lookup(&kept, b"keep").unwrap().data else {
            panic!("keep is a file");
        };
        let (pack_name, offset, stored_len): (String, i64, i64) = store
            .db()
            .query_row(
                "SELECT p.name, b.offset, b.stored_len FROM blobs b JOIN packs p ON p.id = b.pack
                 WHERE b.id = ?1",
                [chunks[0].id.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let damaged = pack_path(&store.packs_dir(), &pack_name);
        let mut bytes = fs::read(&damaged).unwrap();
        bytes[(offset + stored_len / 2) as usize] ^= 0xff;
        fs::write(&damaged, &bytes).unwrap();

        let gc = store.gc().unwrap();
        assert_eq!(gc.packs_not_repacked, 1, "{gc:?}");
        assert_eq!(gc.repacked_packs, 0, "{gc:?}");
        assert!(
            gc.deleted_packs >= 1,
            "the other snapshot's pack went: {gc:?}"
        );
        assert!(gc.freed_bytes >= 250_000, "{gc:?}");
        assert_eq!(
            fs::read(&damaged).unwrap(),
            bytes,
            "the pack is left as it was"
        );
        let again = store.gc().unwrap();
        assert_eq!(again.packs_not_repacked, 1, "{again:?}");

        let report = store.verify(None).unwrap();
        assert!(
            report
                .affected
                .iter()
                .any(|a| a.contains(&kept.name) && a.ends_with(": keep")),
            "{report:?}"
        );
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.subject.contains(&chunks[0].id.to_string())),
            "{report:?}"
        );
    }
}

//! The packing pipeline behind a snapshot writer: blobs are compressed on the process's
//! shared compression threads ([`super::pool`]), appended to packs in the order they were submitted by one pack thread, and each complete
//! pack is made durable and then indexed (pinned for the writer's session) by a sync thread
//! with its own index connection, so neither fsync nor indexing stalls chunking or zstd.
//!
//! Blobs travel in batches of about [`BATCH_BYTES`]: a tree of many small files would
//! otherwise cost several thread hand-offs per file.
//!
//! Compression threads run at a lower priority than the transfer they serve. In adaptive
//! mode a batch that finds every compression thread already with work queued (by this or
//! another writer of the process) goes to the pack thread raw, marked deferred, for `gc`
//! to compress; so does every batch in deferred mode. Compression then never holds up a
//! backup: it takes the CPU left over.
//!
//! Chunk batches are appended as they come out of compression, in any order, so a batch
//! that a deprioritised compression thread still holds never keeps the ones behind it (and
//! the in-flight budget they hold) waiting. A batch with a tree blob, and a flush, waits
//! until every batch submitted before it is appended: a tree never lands in a pack indexed
//! before the packs holding its children, which gain their reference when its pack is
//! indexed and must be indexed by then.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Result, StoreError};
use crate::format::id::Id;
use crate::format::pack::{FinishedPack, PackWriter, WrittenPack};
use crate::format::*;
use crate::index;
use crate::store::{CompressionMode, Store};
use crate::tuning::*;
use crate::write::pool::{CompressionPool, Job};

/// A blob on its way into a pack: raw before the compression threads, stored after.
pub(crate) struct Blob {
    id: Id,
    kind: u8,
    pub(crate) compression: u8,
    pub(crate) bytes: Vec<u8>,
    raw_len: u32,
    /// What a tree blob references.
    children: Option<Vec<Id>>,
}

/// Work through the pipeline, numbered in submission order.
pub(crate) struct Batch {
    seq: u64,
    pub(crate) blobs: Vec<Blob>,
    /// What the batch counts against the in-flight budget.
    cost: u64,
    /// After this batch, finish the current pack and answer `Flushed`.
    flush: bool,
    /// Appended only after every earlier batch: it holds a tree blob, or it is a flush.
    ordered: bool,
}

impl Batch {
    fn new(seq: u64, blobs: Vec<Blob>, cost: u64, flush: bool) -> Batch {
        let ordered = flush || blobs.iter().any(|b| b.kind == BLOB_KIND_TREE);
        Batch {
            seq,
            blobs,
            cost,
            flush,
            ordered,
        }
    }
}

/// What the pipeline reports to the writer.
enum Done {
    /// A pack became durable and indexed; it takes this many bytes.
    Indexed(u64),
    Flushed,
    Failed(StoreError),
}

/// Bytes submitted but not yet appended to a pack: bounds the pipeline's memory.
#[derive(Default)]
struct InFlight {
    bytes: Mutex<u64>,
    drained: Condvar,
    /// Set when the pack thread is gone: nothing will drain the budget any more, and the
    /// writer learns why from the closed result channel instead of waiting.
    closed: AtomicBool,
}

impl InFlight {
    /// Takes `cost` from the budget if it fits (or if nothing is in flight, so a batch
    /// larger than the budget still passes); waits at most `wait` for room otherwise.
    fn try_take(&self, cost: u64, wait: Duration) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut bytes) = self.bytes.lock() else {
            return true;
        };
        if *bytes > 0 && *bytes + cost > IN_FLIGHT_BYTES {
            bytes = match self.drained.wait_timeout(bytes, wait) {
                Ok((b, _)) => b,
                Err(_) => return true,
            };
            if *bytes > 0 && *bytes + cost > IN_FLIGHT_BYTES {
                return false;
            }
        }
        *bytes += cost;
        true
    }

    fn give_back(&self, cost: u64) {
        if let Ok(mut bytes) = self.bytes.lock() {
            *bytes = bytes.saturating_sub(cost);
            self.drained.notify_all();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drained.notify_all();
    }
}

/// How many compression threads the process runs: one per core, within bounds (a writer's
/// own thread chunks and hashes meanwhile, so more would only contend).
pub(crate) fn compression_threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, MAX_COMPRESSION_THREADS)
}

/// What the pack thread hands the sync thread, in order.
enum ToSync {
    /// A written pack and the children of the tree blobs in it.
    Pack(WrittenPack, HashMap<Id, Vec<Id>>),
    Flush,
}

/// The pack thread: appends blobs in submission order and returns each batch's share of the
/// in-flight budget; complete packs go to the sync thread, so an fsync never stalls it.
fn pack_worker(
    tmp_dir: PathBuf,
    compressed: mpsc::Receiver<Batch>,
    in_flight: Arc<InFlight>,
    to_sync: (mpsc::SyncSender<ToSync>, Arc<AtomicUsize>),
    done: mpsc::Sender<Done>,
) {
    let (to_sync, unsynced_packs) = to_sync;
    /// Closes the budget however the thread ends, unwinding included.
    struct CloseOnExit(Arc<InFlight>);
    impl Drop for CloseOnExit {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseOnExit(in_flight.clone());
    let mut packing = Packing {
        tmp_dir,
        pack: None,
        children: HashMap::new(),
    };
    // Every batch numbered below `appended_below` is appended; `appended_above` holds the
    // appended ones above it, `held` the ordered batches waiting for it to reach them.
    let mut appended_below: u64 = 0;
    let mut appended_above: BTreeSet<u64> = BTreeSet::new();
    let mut held: BTreeMap<u64, Batch> = BTreeMap::new();
    while let Ok(batch) = compressed.recv() {
        let mut ready = if batch.ordered && batch.seq > appended_below {
            held.insert(batch.seq, batch);
            None
        } else {
            Some(batch)
        };
        while let Some(batch) = ready.take() {
            let seq = batch.seq;
            in_flight.give_back(batch.cost);
            let result = packing.append(batch.blobs).and_then(|mut out| {
                if batch.flush {
                    out.extend(packing.finish()?);
                    out.push(ToSync::Flush);
                }
                Ok(out)
            });
            match result {
                Ok(out) => {
                    for item in out {
                        if matches!(item, ToSync::Pack(..)) {
                            unsynced_packs.fetch_add(1, Ordering::AcqRel);
                        }
                        if to_sync.send(item).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = done.send(Done::Failed(e));
                    return;
                }
            }
            appended_above.insert(seq);
            while appended_above.remove(&appended_below) {
                appended_below += 1;
            }
            ready = held.remove(&appended_below);
        }
    }
}

/// The pack being written by the pack thread.
struct Packing {
    tmp_dir: PathBuf,
    pack: Option<PackWriter>,
    /// Children of the tree blobs in `pack`.
    children: HashMap<Id, Vec<Id>>,
}

impl Packing {
    /// Appends blobs, returning the packs they filled.
    fn append(&mut self, blobs: Vec<Blob>) -> Result<Vec<ToSync>> {
        let mut full = Vec::new();
        for blob in blobs {
            let pack = match self.pack.as_mut() {
                Some(p) => p,
                None => self.pack.insert(PackWriter::create(&self.tmp_dir)?),
            };
            pack.add_stored(
                blob.id,
                blob.kind,
                blob.compression,
                &blob.bytes,
                blob.raw_len,
            )?;
            if let Some(children) = blob.children {
                self.children.insert(blob.id, children);
            }
            if pack.size() >= PACK_TARGET_SIZE {
                full.extend(self.finish()?);
            }
        }
        Ok(full)
    }

    /// Writes the current pack's trailer, if it holds anything.
    fn finish(&mut self) -> Result<Option<ToSync>> {
        let children = std::mem::take(&mut self.children);
        match self.pack.take() {
            Some(p) if !p.is_empty() => Ok(Some(ToSync::Pack(p.finish_writing()?, children))),
            _ => Ok(None),
        }
    }
}

/// The sync thread: makes each written pack durable, then indexes it pinned for `session`,
/// in order, and reports it.
fn sync_worker(
    packs_dir: PathBuf,
    mut db: Connection,
    session: i64,
    to_sync: (mpsc::Receiver<ToSync>, Arc<AtomicUsize>),
    done: mpsc::Sender<Done>,
) {
    let (to_sync, unsynced_packs) = to_sync;
    while let Ok(item) = to_sync.recv() {
        let reply = match item {
            ToSync::Pack(written, children) => {
                let indexed = written
                    .make_durable(&packs_dir)
                    .and_then(|finished| {
                        index_pack(&mut db, &packs_dir, session, &finished, &children)
                    })
                    .map_or_else(Done::Failed, Done::Indexed);
                unsynced_packs.fetch_sub(1, Ordering::AcqRel);
                indexed
            }
            ToSync::Flush => Done::Flushed,
        };
        let failed = matches!(reply, Done::Failed(_));
        if done.send(reply).is_err() || failed {
            return;
        }
    }
}

/// Indexes a durable pack, pinned for `session`; returns the bytes its blobs take.
///
/// When the row surely did not commit, the pack file goes at once: nothing can reference its
/// blobs, and `gc` never deletes a pack no row knows (it leaves it for `repair`), so a full
/// disk at this step would otherwise keep the pack's bytes for good. A failed COMMIT is not
/// always a rolled-back one (the WAL may hold the whole transaction when a later step, such
/// as growing the shared-memory index or a sync, failed; recovery would bring the row back),
/// so after a COMMIT error the pack is deleted only when appending to the WAL itself ran out
/// of space: the commit frame is written last and cannot have landed.
fn index_pack(
    db: &mut Connection,
    packs_dir: &Path,
    session: i64,
    pack: &FinishedPack,
    children: &HashMap<Id, Vec<Id>>,
) -> Result<u64> {
    let remove = || {
        let _ = std::fs::remove_file(crate::format::pack::pack_path(packs_dir, &pack.name));
    };
    let tx = db
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .inspect_err(|_| remove())?;
    index::insert_pack(
        &tx,
        &pack.name,
        pack.size,
        &pack.blobs,
        &|id| children.get(id).cloned(),
        Some(session),
    )
    .inspect_err(|_| remove())?;
    tx.commit().inspect_err(|e| {
        if is_disk_full(e) {
            remove();
        }
    })?;
    Ok(pack.blobs.iter().map(|b| u64::from(b.stored_len)).sum())
}

fn is_disk_full(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Sends blobs through the pipeline and learns when their packs are durable and indexed.
pub(crate) struct Packer {
    store: Store,
    session: i64,
    mode: CompressionMode,
    /// The process's compression threads, shared with every other writer.
    pool: Arc<CompressionPool>,
    level: i32,
    /// This writer's pack thread: compressed batches come back to it through the pool,
    /// deferred ones go straight to it. Dropped when the pipeline stops, once no job of
    /// this writer is left in the pool the pack thread ends.
    to_pack: Option<mpsc::Sender<Batch>>,
    /// Packs written but not yet durable and indexed.
    unsynced_packs: Arc<AtomicUsize>,
    in_flight: Arc<InFlight>,
    /// Blobs gathered for the next batch, and their raw bytes.
    batch: Vec<Blob>,
    batch_bytes: usize,
    next_seq: u64,
    done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Blobs this session may reference: written by it, pinned by it, or reachable from its
    /// pinned base.
    pub(crate) known: HashSet<Id>,
    /// Bytes the packs this session wrote take (after compression).
    pub(crate) stored_bytes: u64,
    /// Chunks found in the index but not pinned yet, with their bytes (see `reuse_chunk`).
    tentative: Vec<(Id, Vec<u8>)>,
    tentative_bytes: usize,
}

impl Packer {
    pub(crate) fn start(store: &Store, session: i64, known: HashSet<Id>) -> Result<Packer> {
        let pool = CompressionPool::get()?;
        let sync_db = store.open_index_connection()?;
        let in_flight = Arc::new(InFlight::default());
        let (to_pack, to_pack_rx) = mpsc::channel();
        let (sync_tx, sync_rx) = mpsc::sync_channel(PACKS_AWAITING_SYNC);
        let (done_tx, done) = mpsc::channel();
        let spawn = |name: &str, work: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(work)
                .map_err(|e| StoreError::Io {
                    op: "start packing thread",
                    path: store.path().to_path_buf(),
                    source: e,
                })
        };
        let unsynced_packs = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::with_capacity(2);
        let (tmp, budget, pack_done) = (store.tmp_dir(), in_flight.clone(), done_tx.clone());
        let (written, synced) = (unsynced_packs.clone(), unsynced_packs.clone());
        threads.push(spawn(
            "turku-pack",
            Box::new(move || pack_worker(tmp, to_pack_rx, budget, (sync_tx, written), pack_done)),
        )?);
        let packs = store.packs_dir();
        threads.push(spawn(
            "turku-sync",
            Box::new(move || sync_worker(packs, sync_db, session, (sync_rx, synced), done_tx)),
        )?);
        Ok(Packer {
            store: store.clone(),
            session,
            mode: store.config().compression,
            pool,
            level: store.config().zstd_level,
            to_pack: Some(to_pack),
            unsynced_packs,
            in_flight,
            batch: Vec::new(),
            batch_bytes: 0,
            next_seq: 0,
            done,
            threads,
            known,
            stored_bytes: 0,
            tentative: Vec::new(),
            tentative_bytes: 0,
        })
    }

    /// Makes sure `id` is available to this session, returning whether it already was.
    pub(crate) fn reuse(&mut self, id: &Id) -> Result<bool> {
        if self.known.contains(id) {
            return Ok(true);
        }
        let db = self.store.db();
        if index::blob_exists(&db, id)? && index::pin_if_exists(&db, self.session, id)? {
            drop(db);
            self.known.insert(*id);
            return Ok(true);
        }
        Ok(false)
    }

    /// Like [`Packer::reuse`] for a chunk whose bytes the caller holds, but cheaper: a chunk
    /// the index has is taken as reused at once and pinned later, with others, in one
    /// transaction (one per chunk made already-stored data slower to back up than new
    /// data). Until then its bytes are kept: a chunk GC freed in between is stored from
    /// them. [`Packer::pin_tentative`] must run before any tree referencing it is added.
    pub(crate) fn reuse_chunk(&mut self, id: &Id, data: &[u8]) -> Result<bool> {
        if self.known.contains(id) {
            return Ok(true);
        }
        if !index::blob_exists(&self.store.db(), id)? {
            return Ok(false);
        }
        self.known.insert(*id);
        self.tentative.push((*id, data.to_vec()));
        self.tentative_bytes += data.len();
        if self.tentative.len() >= TENTATIVE_REUSE_CHUNKS
            || self.tentative_bytes >= TENTATIVE_REUSE_BYTES
        {
            self.pin_tentative()?;
        }
        Ok(true)
    }

    /// Pins the chunks taken as reused so far; stores those GC freed meanwhile, returning
    /// how many and their bytes.
    pub(crate) fn pin_tentative(&mut self) -> Result<(u64, u64)> {
        let tentative = std::mem::take(&mut self.tentative);
        self.tentative_bytes = 0;
        if tentative.is_empty() {
            return Ok((0, 0));
        }
        let mut lost = Vec::new();
        {
            let mut db = self.store.db();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (id, data) in tentative {
                if !index::pin_if_exists(&tx, self.session, &id)? {
                    lost.push((id, data));
                }
            }
            tx.commit()?;
        }
        let (mut chunks, mut bytes) = (0, 0);
        for (id, data) in lost {
            self.add(id, BLOB_KIND_CHUNK, &data, None)?;
            chunks += 1;
            bytes += data.len() as u64;
        }
        Ok((chunks, bytes))
    }

    fn pipeline_gone() -> StoreError {
        StoreError::Busy("the packing threads stopped".into())
    }

    /// Queues a new blob. `children` lists what a tree blob references.
    pub(crate) fn add(
        &mut self,
        id: Id,
        kind: u8,
        raw: &[u8],
        children: Option<Vec<Id>>,
    ) -> Result<()> {
        self.known.insert(id);
        self.batch_bytes += raw.len();
        self.batch.push(Blob {
            id,
            kind,
            compression: COMPRESSION_NONE,
            bytes: raw.to_vec(),
            raw_len: raw.len() as u32,
            children,
        });
        if self.batch_bytes >= BATCH_BYTES {
            // Takes in what the pipeline reported while it waits for room.
            self.submit(false)
        } else {
            self.index_finished_packs()
        }
    }

    /// Sends the gathered batch once the in-flight budget has room for it, indexing packs
    /// that became durable meanwhile.
    fn submit(&mut self, flush: bool) -> Result<()> {
        let blobs = std::mem::take(&mut self.batch);
        let cost = std::mem::take(&mut self.batch_bytes) as u64
            + blobs.len() as u64 * IN_FLIGHT_BLOB_OVERHEAD;
        loop {
            self.index_finished_packs()?;
            if self
                .in_flight
                .try_take(cost, Duration::from_millis(IN_FLIGHT_POLL_MS))
            {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let to_pack = self.to_pack.as_ref().ok_or_else(Self::pipeline_gone)?;
        let mut batch = Batch::new(seq, blobs, cost, flush);
        if self.defers_next_batch() {
            for blob in &mut batch.blobs {
                blob.compression = COMPRESSION_DEFERRED;
            }
            if to_pack.send(batch).is_err() {
                return Err(self.collect_failure());
            }
            return Ok(());
        }
        let job = Job {
            batch,
            level: self.level,
            reply: to_pack.clone(),
        };
        if self.pool.submit(job).is_err() {
            return Err(Self::pipeline_gone());
        }
        Ok(())
    }

    /// Whether the next batch is stored raw for `gc` to compress.
    fn defers_next_batch(&self) -> bool {
        match self.mode {
            CompressionMode::Inline => false,
            CompressionMode::Deferred => true,
            // Every compression thread already has a batch waiting: this one would only
            // wait behind them, and the transfer with it. Unless the disk is what is behind
            // (every slot for packs awaiting their fsync is taken, and the pack thread is
            // about to wait too): raw bytes would only make it more so.
            CompressionMode::Adaptive => {
                self.pool.saturated()
                    && self.unsynced_packs.load(Ordering::Acquire) <= PACKS_AWAITING_SYNC
            }
        }
    }

    /// The pipeline's error, once it hung up.
    fn collect_failure(&mut self) -> StoreError {
        while let Ok(d) = self.done.recv() {
            if let Done::Failed(e) = d {
                return e;
            }
        }
        Self::pipeline_gone()
    }

    /// Takes in what the pipeline reported so far, without waiting.
    fn index_finished_packs(&mut self) -> Result<()> {
        loop {
            match self.done.try_recv() {
                Ok(d) => self.handle(d)?,
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err(Self::pipeline_gone()),
            }
        }
    }

    fn handle(&mut self, done: Done) -> Result<()> {
        match done {
            Done::Indexed(bytes) => {
                self.stored_bytes += bytes;
                Ok(())
            }
            Done::Flushed => Ok(()),
            Done::Failed(e) => Err(e),
        }
    }

    /// Waits until every blob added so far is in a durable, indexed pack.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.submit(true)?;
        loop {
            match self.done.recv() {
                Ok(Done::Flushed) => return Ok(()),
                Ok(d) => self.handle(d)?,
                Err(_) => return Err(Self::pipeline_gone()),
            }
        }
    }

    /// Stops the threads; an unfinished pack's temp file is removed.
    pub(crate) fn stop(&mut self) {
        self.to_pack = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, kind: u8) -> Blob {
        let bytes = vec![n; 100];
        Blob {
            id: Id::of(&bytes),
            kind,
            compression: COMPRESSION_DEFERRED,
            raw_len: bytes.len() as u32,
            bytes,
            children: None,
        }
    }

    /// Batches come out of compression in any order. Chunk batches are appended as they
    /// come; a tree batch and a flush wait for every batch submitted before them.
    #[test]
    fn trees_and_flushes_wait_for_earlier_batches_and_chunks_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let (sync_tx, sync_rx) = mpsc::sync_channel(8);
        let (done_tx, _done_rx) = mpsc::channel();
        let in_flight = Arc::new(InFlight::default());
        let tmp = dir.path().to_path_buf();
        let unsynced = Arc::new(AtomicUsize::new(0));
        let worker = std::thread::spawn(move || {
            pack_worker(tmp, rx, in_flight, (sync_tx, unsynced), done_tx)
        });
        let (c0, c1, c3, t2) = (
            blob(0, BLOB_KIND_CHUNK),
            blob(1, BLOB_KIND_CHUNK),
            blob(3, BLOB_KIND_CHUNK),
            blob(2, BLOB_KIND_TREE),
        );
        let ids = [c0.id, c1.id, t2.id, c3.id];
        tx.send(Batch::new(4, vec![], 1, true)).unwrap();
        tx.send(Batch::new(2, vec![t2], 1, false)).unwrap();
        tx.send(Batch::new(1, vec![c1], 1, false)).unwrap();
        tx.send(Batch::new(3, vec![c3], 1, false)).unwrap();
        tx.send(Batch::new(0, vec![c0], 1, false)).unwrap();
        let ToSync::Pack(pack, _) = sync_rx.recv().unwrap() else {
            panic!("expected the flushed pack first");
        };
        assert!(matches!(sync_rx.recv().unwrap(), ToSync::Flush));
        let order: Vec<Id> = pack.blobs().iter().map(|b| b.id).collect();
        // Chunk 1 came before chunk 0 and went in at once; the tree waited for 0 and 1,
        // chunk 3 did not wait for the tree; the flush came last.
        assert_eq!(order, vec![ids[1], ids[3], ids[0], ids[2]]);
        drop(tx);
        worker.join().unwrap();
    }
}

//! The streaming snapshot writer.
//!
//! A backup adds entries (in any order; rsync's sorted order is the usual one), each either
//! with new content streamed through a [`FileWriter`] (chunked as bytes arrive, so memory is
//! bounded whatever the file size) or reusing the previous snapshot's content for that path.
//! `commit` builds the directory trees bottom-up, makes every pack durable, writes the
//! snapshot record and then, in one transaction, makes the snapshot visible. Dropping the
//! writer without committing leaves nothing visible; GC later reclaims what it stored.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::format::codec::Reader;
use crate::format::id::Id;
use crate::format::tree::{self, ChunkRef, EntryData, EntryKind, Metadata, TreeEntry};
use crate::format::*;
use crate::index;
use crate::index::session;
use crate::snapshot::{self, split_path, Snapshot, SnapshotStats};
use crate::store::Store;
use crate::tuning::BASE_CACHE_ENTRIES;
use crate::write::chunker::Chunker;
use crate::write::packer::Packer;

/// Writes one snapshot. See the module documentation.
pub struct SnapshotWriter {
    store: Store,
    session: i64,
    finished: bool,
    machine: String,
    source: String,
    base: Option<Snapshot>,
    /// Base directories read lately (`None`: absent from the base). Bounded: a backup walks
    /// the tree in order, so a directory it has left is rarely wanted again.
    base_dirs: HashMap<Vec<u8>, Option<Arc<Vec<TreeEntry>>>>,
    /// Entries held by `base_dirs`, against [`BASE_CACHE_ENTRIES`].
    base_dirs_entries: usize,
    /// Each directory's entries as added (a name added again replaces the earlier one):
    /// sorted only at commit, since a sorted map of every entry of a large tree took twice
    /// the memory.
    dirs: HashMap<Vec<u8>, PendingDir>,
    root_meta: Metadata,
    packer: Packer,
    chunker: Chunker,
    stats: SnapshotStats,
    time_begin_ns: i64,
    /// The file whose content is streaming in, if any.
    pending: Option<PendingFile>,
    /// Draws the random suffix of the snapshot's name (tests make it collide on purpose).
    pub(crate) name_suffix: fn() -> [u8; 2],
}

/// A directory's entries until commit, each encoded as a tree leaf holds it. A backup holds
/// every entry of its tree until then: encoded, a one-chunk file costs ~65 bytes and its
/// share of the buffer's slack (~82 measured), decoded it cost a 104-byte entry plus its
/// name and chunk list (~171); on a 110,000-file pull the peak fell by ~13 MiB.
#[derive(Default)]
struct PendingDir {
    encoded: Vec<u8>,
}

impl PendingDir {
    fn push(&mut self, entry: &TreeEntry) {
        tree::encode_entry(&mut self.encoded, entry);
    }

    /// Heap bytes held.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.encoded.capacity()
    }

    /// The entries in the order they were added.
    fn entries(&self) -> Result<Vec<TreeEntry>> {
        let mut r = Reader::new(&self.encoded);
        let mut entries = Vec::new();
        while !r.is_empty() {
            entries.push(tree::decode_entry(&mut r).map_err(|e| {
                StoreError::InvalidArgument(format!("entry the writer encoded itself: {e}"))
            })?);
        }
        Ok(entries)
    }
}

/// A regular file whose content is arriving: bounded to one max-size chunk in memory.
struct PendingFile {
    path: Vec<u8>,
    meta: Metadata,
    link_group: u64,
    buf: Vec<u8>,
    start: usize,
    chunks: Vec<ChunkRef>,
    size: u64,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("machine", &self.machine)
            .field("source", &self.source)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn check_label(what: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > 255
        || value.contains('/')
        || value.chars().any(char::is_control)
    {
        return Err(StoreError::InvalidArgument(format!(
            "{what} {value:?} must be 1-255 characters without `/` or control characters"
        )));
    }
    Ok(())
}

fn parent_and_name(path: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let parts = split_path(path)?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(StoreError::InvalidArgument(
            "the root directory is set with set_root_meta".into(),
        ));
    };
    Ok((parents.join(&b'/'), name.to_vec()))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        p.extend_from_slice(dir);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// A directory's entries sorted by name; of entries added under one name, the last.
fn sorted_last_wins(mut entries: Vec<TreeEntry>) -> Vec<TreeEntry> {
    // Stable, so equal names stay in the order they were added.
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|later, kept| {
        let same = later.name == kept.name;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    entries.shrink_to_fit();
    entries
}

impl Store {
    /// Starts a snapshot of `source` on `machine`, based on the newest existing one.
    pub fn begin_snapshot(&self, machine: &str, source: &str) -> Result<SnapshotWriter> {
        check_label("machine", machine)?;
        check_label("source", source)?;
        let time_begin_ns = crate::clock::now_ns()?;
        // A backup never takes the space reserve, which lets `forget` and `gc` make room on
        // a full disk: without room for it the disk is full already.
        match crate::space::ensure_reserve(self.path()) {
            Err(e) if e.is_disk_full() => return Err(e),
            Err(e) => tracing::warn!("no space reserve: {e}"),
            Ok(()) => {}
        }
        // Durable: a power cut must not lose a session that a logged record may name.
        let session = index::durably(&mut self.db(), |db| session::register(db))?;
        let mut known = HashSet::new();
        let mut base = self.latest_snapshot(machine, source)?;
        if let Some(b) = &base {
            if index::pin_if_exists(&self.db(), session, &b.root)? {
                known.insert(b.root);
            } else {
                // Forgotten and collected between listing and pinning: start afresh.
                base = None;
            }
        }
        let packer = match Packer::start(self, session, known) {
            Ok(p) => p,
            Err(e) => {
                let _ = session::end(&self.db(), session);
                return Err(e);
            }
        };
        Ok(SnapshotWriter {
            store: self.clone(),
            session,
            finished: false,
            machine: machine.to_string(),
            source: source.to_string(),
            base,
            base_dirs: HashMap::new(),
            base_dirs_entries: 0,
            dirs: HashMap::from([(Vec::new(), PendingDir::default())]),
            root_meta: Metadata {
                perm: 0o755,
                ..Metadata::default()
            },
            packer,
            chunker: Chunker::new(&self.config()),
            stats: SnapshotStats::default(),
            time_begin_ns,
            pending: None,
            name_suffix: rand::random,
        })
    }
}

impl SnapshotWriter {
    /// The snapshot this one is based on (the newest of the source when it began).
    pub fn base(&self) -> Option<&Snapshot> {
        self.base.as_ref()
    }

    pub fn stats(&self) -> &SnapshotStats {
        &self.stats
    }

    /// Overrides the begin time (defaults to when the writer was created).
    pub fn set_time_begin_ns(&mut self, ns: i64) {
        self.time_begin_ns = ns;
    }

    pub fn set_root_meta(&mut self, meta: Metadata) {
        self.root_meta = meta;
    }

    /// The base snapshot's entries of directory `dir` (cached; `None` if absent).
    fn base_dir(&mut self, dir: &[u8]) -> Result<Option<Arc<Vec<TreeEntry>>>> {
        if let Some(cached) = self.base_dirs.get(dir) {
            return Ok(cached.clone());
        }
        let Some(base) = &self.base else {
            return Ok(None);
        };
        let tree = if dir.is_empty() {
            Some(base.root)
        } else {
            let (parent, name) = parent_and_name(dir)?;
            self.base_dir(&parent)?.and_then(|entries| {
                entries
                    .binary_search_by(|e| e.name.as_slice().cmp(&name))
                    .ok()
                    .and_then(|i| match entries[i].data {
                        EntryData::Dir { tree } => Some(tree),
                        _ => None,
                    })
            })
        };
        let loaded = match tree {
            Some(id) => {
                let entries = self.store.read_tree(&id)?;
                // Everything reachable from the pinned base is safe to reference.
                self.packer.known.insert(id);
                Some(Arc::new(entries))
            }
            None => None,
        };
        let entries = loaded.as_ref().map_or(0, |e| e.len());
        if self.base_dirs_entries + entries > BASE_CACHE_ENTRIES {
            self.base_dirs.clear();
            self.base_dirs_entries = 0;
        }
        self.base_dirs_entries += entries;
        self.base_dirs.insert(dir.to_vec(), loaded.clone());
        Ok(loaded)
    }

    /// The base snapshot's entry at `path`, if any: the rsync basis for that file.
    pub fn base_entry(&mut self, path: &[u8]) -> Result<Option<TreeEntry>> {
        let found = self.base_lookup(path)?;
        if let Some(TreeEntry {
            data: EntryData::File { chunks, .. },
            ..
        }) = &found
        {
            self.packer.known.extend(chunks.iter().map(|c| c.id));
        }
        Ok(found)
    }

    /// The base snapshot's entry at `path`, leaving `known` as it is: a file reused whole
    /// needs no record of its chunks (the pinned base keeps them), and recording every
    /// chunk of an unchanged tree cost memory for nothing.
    fn base_lookup(&mut self, path: &[u8]) -> Result<Option<TreeEntry>> {
        let (parent, name) = parent_and_name(path)?;
        Ok(self.base_dir(&parent)?.and_then(|entries| {
            entries
                .binary_search_by(|e| e.name.as_slice().cmp(&name))
                .ok()
                .map(|i| entries[i].clone())
        }))
    }

    fn ensure_dir(&mut self, dir: &[u8]) -> Result<()> {
        if self.dirs.contains_key(dir) {
            return Ok(());
        }
        // A parent the caller never announced: keep its contents reachable with default
        // metadata rather than failing the whole backup.
        let meta = Metadata {
            perm: 0o755,
            ..Metadata::default()
        };
        self.add_dir(dir, meta)
    }

    fn insert(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        meta: Metadata,
        data: EntryData,
    ) -> Result<()> {
        let (parent, name) = parent_and_name(path)?;
        self.ensure_dir(&parent)?;
        let entry = TreeEntry {
            name,
            kind,
            meta: Metadata {
                perm: meta.perm & 0o7777,
                mtime_nsec: meta.mtime_nsec.min(999_999_999),
                ..meta
            },
            data,
        };
        if let Some(dir) = self.dirs.get_mut(&parent) {
            dir.push(&entry);
        }
        Ok(())
    }

    pub fn add_dir(&mut self, path: &[u8], meta: Metadata) -> Result<()> {
        let parts = split_path(path)?;
        if parts.is_empty() {
            self.root_meta = meta;
            return Ok(());
        }
        let canonical = parts.join(&b'/');
        self.insert(
            &canonical,
            EntryKind::Dir,
            meta,
            EntryData::Dir { tree: Id([0; 32]) },
        )?;
        self.dirs.entry(canonical).or_default();
        Ok(())
    }

    pub fn add_symlink(&mut self, path: &[u8], meta: Metadata, target: &[u8]) -> Result<()> {
        if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
            return Err(StoreError::InvalidArgument(
                "symlink target must be 1 to 65536 bytes without NUL".into(),
            ));
        }
        self.insert(
            path,
            EntryKind::Symlink,
            meta,
            EntryData::Symlink {
                target: target.to_vec(),
            },
        )
    }

    /// Adds a device node, FIFO or socket.
    pub fn add_special(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        meta: Metadata,
        rdev: u64,
    ) -> Result<()> {
        let data = match kind {
            EntryKind::CharDevice | EntryKind::BlockDevice => EntryData::Device { rdev },
            EntryKind::Fifo | EntryKind::Socket => EntryData::Special,
            _ => {
                return Err(StoreError::InvalidArgument(format!(
                    "{kind:?} is not a special file"
                )))
            }
        };
        self.insert(path, kind, meta, data)
    }

    /// Records a regular file whose chunks are already known (e.g. a hard link's content).
    pub fn add_file_with_chunks(
        &mut self,
        path: &[u8],
        meta: Metadata,
        link_group: u64,
        chunks: Vec<ChunkRef>,
    ) -> Result<()> {
        for c in &chunks {
            if !self.packer.reuse(&c.id)? {
                return Err(StoreError::MissingBlob(c.id.to_hex()));
            }
        }
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        self.insert_file(path, meta, size, link_group, chunks)
    }

    fn insert_file(
        &mut self,
        path: &[u8],
        meta: Metadata,
        size: u64,
        link_group: u64,
        chunks: Vec<ChunkRef>,
    ) -> Result<()> {
        let data = EntryData::File {
            size,
            link_group,
            chunks,
        };
        self.insert(path, EntryKind::File, meta, data)
    }

    /// If the base snapshot has a regular file at `path` with this size and mtime, records
    /// it with the base's content without reading anything, and returns true.
    pub fn reuse_unchanged(
        &mut self,
        path: &[u8],
        meta: Metadata,
        size: u64,
        link_group: u64,
    ) -> Result<bool> {
        let Some(base) = self.base_lookup(path)? else {
            return Ok(false);
        };
        let EntryData::File {
            size: base_size,
            chunks,
            ..
        } = base.data
        else {
            return Ok(false);
        };
        if base_size != size
            || base.meta.mtime_sec != meta.mtime_sec
            || base.meta.mtime_nsec != meta.mtime_nsec
        {
            return Ok(false);
        }
        self.stats.reused_files += 1;
        self.insert_file(path, meta, size, link_group, chunks)?;
        Ok(true)
    }

    /// Starts a regular file whose content the caller streams into the returned writer.
    pub fn add_file(
        &mut self,
        path: &[u8],
        meta: Metadata,
        link_group: u64,
    ) -> Result<FileWriter<'_>> {
        self.begin_file(path, meta, link_group)?;
        Ok(FileWriter {
            writer: self,
            done: false,
        })
    }

    /// Starts streaming a regular file's content (for callers that cannot hold a
    /// [`FileWriter`] borrow, such as a protocol sink): follow with [`Self::write_file`] and
    /// [`Self::finish_file`] or [`Self::discard_file`]. A file still pending is discarded.
    pub fn begin_file(&mut self, path: &[u8], meta: Metadata, link_group: u64) -> Result<()> {
        // Validate now so a bad path fails before any content is streamed.
        parent_and_name(path)?;
        self.pending = Some(PendingFile {
            path: path.to_vec(),
            meta,
            link_group,
            buf: Vec::new(),
            start: 0,
            chunks: Vec::new(),
            size: 0,
        });
        Ok(())
    }

    /// Appends content to the pending file, storing every chunk FastCDC cuts.
    pub fn write_file(&mut self, data: &[u8]) -> Result<()> {
        let mut file = self
            .pending
            .take()
            .ok_or_else(|| StoreError::InvalidArgument("no file is being written".into()))?;
        file.buf.extend_from_slice(data);
        file.size += data.len() as u64;
        let max = self.chunker.max();
        // Cut only with a max-size chunk buffered: FastCDC needs that much to choose freely.
        let result = self.store_chunks(&mut file, max);
        if file.start >= max {
            file.buf.drain(..file.start);
            file.start = 0;
        }
        self.pending = Some(file);
        result
    }

    /// Stores the pending file's last chunks and records its entry; returns its chunk list.
    pub fn finish_file(&mut self) -> Result<Vec<ChunkRef>> {
        let mut file = self
            .pending
            .take()
            .ok_or_else(|| StoreError::InvalidArgument("no file is being written".into()))?;
        self.store_chunks(&mut file, 1)?;
        let chunks = file.chunks.clone();
        self.insert_file(&file.path, file.meta, file.size, file.link_group, chunks)?;
        Ok(file.chunks)
    }

    /// Cuts and stores chunks from `file`'s buffer while at least `min_buffered` bytes remain.
    fn store_chunks(&mut self, file: &mut PendingFile, min_buffered: usize) -> Result<()> {
        while file.buf.len() - file.start >= min_buffered.max(1) {
            let len = self.chunker.cut(&file.buf[file.start..]);
            let chunk = self.store_chunk(&file.buf[file.start..file.start + len])?;
            file.chunks.push(chunk);
            file.start += len;
        }
        Ok(())
    }

    /// Drops the pending file's content (its chunks already stored become garbage for GC).
    pub fn discard_file(&mut self) {
        self.pending = None;
    }

    fn store_chunk(&mut self, data: &[u8]) -> Result<ChunkRef> {
        let id = Id::of(data);
        if !self.packer.reuse_chunk(&id, data)? {
            self.packer.add(id, BLOB_KIND_CHUNK, data, None)?;
            self.stats.new_chunks += 1;
            self.stats.new_bytes += data.len() as u64;
        }
        Ok(ChunkRef {
            id,
            len: data.len() as u32,
        })
    }

    fn store_tree(&mut self, bytes: Vec<u8>, children: Vec<Id>) -> Result<Id> {
        let id = Id::of(&bytes);
        if !self.packer.reuse(&id)? {
            self.packer
                .add(id, BLOB_KIND_TREE, &bytes, Some(children))?;
            self.stats.new_trees += 1;
        }
        Ok(id)
    }

    fn store_dir(&mut self, entries: Vec<TreeEntry>) -> Result<Id> {
        let ranges = tree::split_points(&entries);
        if ranges.len() <= 1 {
            let mut children = Vec::new();
            entries.iter().for_each(|e| e.children(&mut children));
            return self.store_tree(tree::encode_leaf(&entries), children);
        }
        let mut parts = Vec::with_capacity(ranges.len());
        for range in ranges {
            let slice = &entries[range];
            let mut children = Vec::new();
            slice.iter().for_each(|e| e.children(&mut children));
            let id = self.store_tree(tree::encode_leaf(slice), children)?;
            parts.push((slice[0].name.clone(), id));
        }
        let children = parts.iter().map(|(_, id)| *id).collect();
        self.store_tree(tree::encode_split(&parts), children)
    }

    /// Builds the trees, makes everything durable and makes the snapshot visible.
    pub fn commit(mut self) -> Result<Snapshot> {
        // Before any tree: a tree's children must be pinned or stored when it is indexed.
        let (chunks, bytes) = self.packer.pin_tentative()?;
        self.stats.new_chunks += chunks;
        self.stats.new_bytes += bytes;
        let mut paths: Vec<Vec<u8>> = self.dirs.keys().cloned().collect();
        // Deepest first, so every directory's children are built before it.
        paths.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                1 + p.iter().filter(|&&b| b == b'/').count()
            })
        });
        let mut built: HashMap<Vec<u8>, Id> = HashMap::new();
        for path in paths {
            let pending = self.dirs.remove(&path).unwrap_or_default();
            let mut list = sorted_last_wins(pending.entries()?);
            drop(pending);
            for e in &mut list {
                match &mut e.data {
                    EntryData::Dir { tree } => {
                        let child = join(&path, &e.name);
                        *tree = built.remove(&child).ok_or_else(|| {
                            StoreError::InvalidArgument("directory built out of order".into())
                        })?;
                        self.stats.dirs += 1;
                    }
                    EntryData::File { size, .. } => {
                        self.stats.files += 1;
                        self.stats.bytes += *size;
                    }
                    EntryData::Symlink { .. } => self.stats.symlinks += 1,
                    _ => self.stats.specials += 1,
                }
            }
            let id = self.store_dir(list)?;
            built.insert(path, id);
        }
        let root = built
            .remove(&Vec::new())
            .ok_or_else(|| StoreError::InvalidArgument("no root directory".into()))?;
        self.packer.flush()?;
        self.stats.new_stored_bytes = self.packer.stored_bytes;
        let time_end_ns = crate::clock::now_ns()?.max(self.time_begin_ns);
        let name = session::reserve_snapshot_name(
            &mut self.store.db(),
            self.session,
            &self.machine,
            &self.source,
            time_end_ns,
            self.name_suffix,
        )?;
        let snap = Snapshot {
            machine: self.machine.clone(),
            source: self.source.clone(),
            name,
            root,
            root_meta: self.root_meta,
            base: self.base.as_ref().map(|b| b.name.clone()),
            time_begin_ns: self.time_begin_ns,
            time_end_ns,
            stats: self.stats,
        };
        // The record is durable before the row, so `repair` never loses a visible snapshot.
        if let Err(failure) = snapshot::write_record(&self.store, &snap, self.session) {
            if !failure.log_restored {
                self.keep_session_for_rollback();
            }
            return Err(failure.error);
        }
        let result = (|| -> Result<()> {
            crate::fault::check(Some(self.store.path()), crate::fault::COMMIT_ROW)
                .map_err(|e| StoreError::io("insert snapshot row", INDEX_FILE, e))?;
            // Durable before commit returns: the snapshot is reported done from here on.
            index::durably(&mut self.store.db(), |db| {
                let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                index::insert_snapshot(&tx, &snap.to_row())?;
                session::end(&tx, self.session)?;
                tx.commit()?;
                Ok(())
            })
        })();
        if let Err(e) = result {
            if let Err(removal) = snapshot::remove_record(&self.store, &snap) {
                tracing::warn!(
                    "could not take back the record of {}/{}/{} after a failed commit: {removal}",
                    snap.machine,
                    snap.source,
                    snap.name
                );
                self.keep_session_for_rollback();
            }
            return Err(e);
        }
        self.finished = true;
        Ok(snap)
    }

    /// After a failed commit whose record may stay in the log: the session must outlive
    /// this writer, or the record would look like one whose row the index lost, and a later
    /// `repair` would resurrect a snapshot whose blobs `gc` had freed. Marked abandoned, the
    /// session makes the record an interrupted commit, which `gc` rolls back before it frees
    /// what the session protects. If even the mark cannot be written, the session stays
    /// registered to this process and is treated so once the process ends.
    fn keep_session_for_rollback(&mut self) {
        self.finished = true;
        self.packer.stop();
        if let Err(e) = session::abandon(&self.store.db(), self.session) {
            tracing::warn!(
                "could not mark writer session {} abandoned: {e}; it is rolled back once this process ends",
                self.session
            );
        }
    }

    /// Abandons the snapshot: nothing becomes visible.
    pub fn abort(mut self) {
        self.end_session();
    }

    fn end_session(&mut self) {
        if !self.finished {
            self.finished = true;
            self.packer.stop();
            if let Err(e) = session::end(&self.store.db(), self.session) {
                tracing::warn!("could not end writer session {}: {e}", self.session);
            }
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.end_session();
    }
}

/// Streams one file's content into the store, chunking as bytes arrive. Dropping it
/// without `finish` discards the file.
pub struct FileWriter<'w> {
    writer: &'w mut SnapshotWriter,
    done: bool,
}

impl std::fmt::Debug for FileWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("size", &self.len())
            .finish_non_exhaustive()
    }
}

impl FileWriter<'_> {
    /// Accepts content; errors are the store's typed errors.
    pub fn write_content(&mut self, data: &[u8]) -> Result<()> {
        self.writer.write_file(data)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.writer.pending.as_ref().map_or(0, |p| p.size)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores the last chunks and records the entry; returns the file's chunk list.
    pub fn finish(mut self) -> Result<Vec<ChunkRef>> {
        self.done = true;
        self.writer.finish_file()
    }
}

impl Drop for FileWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.writer.discard_file();
        }
    }
}

impl Write for FileWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_content(data).map_err(io::Error::other)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_meta() -> Metadata {
        Metadata {
            perm: 0o777,
            ..Metadata::default()
        }
    }

    /// A backup of a large tree looks up every path of its base: the decoded base
    /// directories it keeps stay within the cache's bound (a whole base tree in memory was
    /// most of an unchanged pull's peak), and every lookup still finds its entry.
    #[test]
    fn base_lookups_keep_a_bounded_cache_and_still_find_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store"), Default::default()).unwrap();
        let (dirs, per_dir) = (40usize, 1000usize);
        assert!(dirs * per_dir > 2 * BASE_CACHE_ENTRIES);
        let path = |d: usize, f: usize| format!("d{d:02}/l{f:04}").into_bytes();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        for d in 0..dirs {
            w.add_dir(format!("d{d:02}").as_bytes(), Metadata::default())
                .unwrap();
            for f in 0..per_dir {
                w.add_symlink(&path(d, f), link_meta(), &path(f, d))
                    .unwrap();
            }
        }
        w.commit().unwrap();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        let mut most_cached = 0;
        for d in 0..dirs {
            for f in 0..per_dir {
                let entry = w.base_entry(&path(d, f)).unwrap().unwrap();
                assert_eq!(entry.data, EntryData::Symlink { target: path(f, d) });
                most_cached = most_cached.max(w.base_dirs_entries);
            }
        }
        assert!(
            most_cached <= BASE_CACHE_ENTRIES + per_dir,
            "{most_cached} base entries cached"
        );
        w.abort();
    }

    /// What the writer holds per entry until commit, for files of one chunk in directories
    /// of 100 named as a backup's usually are: decoded, each took its 104-byte entry plus
    /// its name and chunk list (over 150 bytes); encoded as its tree will hold it, about 65
    /// plus the slack of its directory's buffer.
    #[test]
    fn pending_entries_are_held_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store"), Default::default()).unwrap();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        let meta = |i: u32| Metadata {
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_sec: 1_700_000_000 + i64::from(i),
            mtime_nsec: 123_456_789 + i,
        };
        let mut seed = w.add_file(b"seed", meta(0), 0).unwrap();
        seed.write_content(b"the one chunk every file shares")
            .unwrap();
        let chunks = seed.finish().unwrap();
        let (dirs, per_dir) = (100u32, 100u32);
        let paths: Vec<Vec<u8>> = (0..dirs * per_dir)
            .map(|i| format!("d{:03}/f{i:06}.dat", i % dirs).into_bytes())
            .collect();
        for (i, path) in paths.iter().enumerate() {
            w.add_file_with_chunks(path, meta(i as u32), 0, chunks.clone())
                .unwrap();
        }
        let held: usize = w.dirs.values().map(PendingDir::held_bytes).sum();
        let per_entry = held / paths.len();
        assert!(
            per_entry <= 100,
            "{per_entry} bytes held per pending entry ({held} in all)"
        );
        let snap = w.commit().unwrap();
        let entry = store.lookup(&snap, &paths[4321]).unwrap();
        assert_eq!(entry.meta, meta(4321));
        assert_eq!(entry.file_size(), 31);
        assert_eq!(store.lookup(&snap, b"d021").unwrap().kind, EntryKind::Dir);
    }

    /// Entries are kept unsorted until commit: the snapshot still lists each directory in
    /// name order, and a name added twice keeps what was added last.
    #[test]
    fn entries_added_in_any_order_commit_sorted_and_the_last_of_a_name_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store"), Default::default()).unwrap();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        for name in ["c", "a", "b/x", "a", "d"] {
            w.add_symlink(
                name.as_bytes(),
                link_meta(),
                format!("first {name}").as_bytes(),
            )
            .unwrap();
        }
        w.add_symlink(b"a", link_meta(), b"second a").unwrap();
        w.add_dir(b"b", link_meta()).unwrap();
        let snap = w.commit().unwrap();
        let root = store.read_tree(&snap.root).unwrap();
        let names: Vec<&[u8]> = root.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"c", b"d"]);
        assert_eq!(
            root[0].data,
            EntryData::Symlink {
                target: b"second a".to_vec()
            }
        );
        assert_eq!(
            root[1].meta.perm, 0o777,
            "the announced directory replaced the implied one"
        );
        assert_eq!(
            store.lookup(&snap, b"b/x").unwrap().kind,
            EntryKind::Symlink
        );
    }
}

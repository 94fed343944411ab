//! Fetching file chunks for one reader (a restore's file, an export's content thread):
//! each chunk is read from its pack into a buffer the reader reuses, decompressed straight
//! into a second reused buffer, and verified against its id there, before the caller sees
//! a byte of it. No per-chunk allocation and no store-wide lock on decompression: the
//! reader has its own zstd context, taken from the store's pool and given back on drop.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Result, StoreError};
use crate::format::id::Id;
use crate::format::pack::pack_path;
use crate::format::tree::ChunkRef;
use crate::format::{COMPRESSION_DEFERRED, COMPRESSION_NONE, COMPRESSION_ZSTD};
use crate::index::{self, IndexedBlob};
use crate::store::{corrupt_blob, new_decompressor, PackFiles, Store};
use crate::tuning::{READ_SCRATCH_KEPT_BYTES, READ_SCRATCH_POOLED};

/// A reader's buffers and decompression context. Both buffers only grow (their length is
/// their high-water mark, so a smaller chunk after a larger one zeroes nothing); the
/// current chunk is `plain[..plain_len]`.
#[derive(Default)]
pub(crate) struct ReadScratch {
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    stored: Vec<u8>,
    plain: Vec<u8>,
    plain_len: usize,
}

/// Grows `buf` to at least `len` bytes (zeroing only the growth) and returns them.
fn room(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

impl ReadScratch {
    /// Reads the blob's stored bytes from `file` and leaves its verified plaintext in
    /// `plain`. A raw blob is read straight into `plain`.
    fn load(&mut self, file: &File, blob: &IndexedBlob, store: &Store) -> Result<LoadOutcome> {
        let location = &blob.location;
        let stored_len = location.stored_len as usize;
        let pack_file = || pack_path(&store.packs_dir(), &blob.pack_name);
        self.plain_len = 0;
        match location.compression {
            COMPRESSION_NONE | COMPRESSION_DEFERRED => {
                if location.stored_len != location.raw_len {
                    return Err(corrupt_blob(
                        &blob.pack_name,
                        location,
                        "stored length does not match",
                    ));
                }
                let into = room(&mut self.plain, stored_len);
                if let Err(e) = file.read_exact_at(into, location.offset) {
                    return Ok(LoadOutcome::ReadFailed(StoreError::io(
                        "read pack",
                        pack_file(),
                        e,
                    )));
                }
                self.plain_len = stored_len;
            }
            COMPRESSION_ZSTD => {
                let into = room(&mut self.stored, stored_len);
                if let Err(e) = file.read_exact_at(into, location.offset) {
                    return Ok(LoadOutcome::ReadFailed(StoreError::io(
                        "read pack",
                        pack_file(),
                        e,
                    )));
                }
                let raw_len = location.raw_len as usize;
                let decompressor = match &mut self.decompressor {
                    Some(d) => d,
                    empty @ None => empty.insert(new_decompressor(store.path())?),
                };
                let out = room(&mut self.plain, raw_len);
                let n = decompressor
                    .decompress_to_buffer(&self.stored[..stored_len], out)
                    .map_err(|_| corrupt_blob(&blob.pack_name, location, "zstd data is corrupt"))?;
                if n != raw_len {
                    return Err(corrupt_blob(
                        &blob.pack_name,
                        location,
                        "decompressed length does not match",
                    ));
                }
                self.plain_len = raw_len;
            }
            _ => {
                return Err(corrupt_blob(
                    &blob.pack_name,
                    location,
                    "unknown compression",
                ))
            }
        }
        if Id::of(&self.plain[..self.plain_len]) != location.id {
            self.plain_len = 0;
            return Err(corrupt_blob(
                &blob.pack_name,
                location,
                "content does not match its hash",
            ));
        }
        Ok(LoadOutcome::Loaded)
    }

    /// Whether the store should keep this scratch for the next reader.
    fn trim_for_pool(mut self) -> Self {
        for buf in [&mut self.stored, &mut self.plain] {
            if buf.len() > READ_SCRATCH_KEPT_BYTES {
                *buf = Vec::new();
            }
        }
        self.plain_len = 0;
        self
    }
}

enum LoadOutcome {
    Loaded,
    /// The pack could not be read (GC may have replaced it since it was opened).
    ReadFailed(StoreError),
}

/// One reader's chunk fetching; the last chunk fetched stays available, so a run of one
/// repeated chunk (zeros) is read and checked once.
pub(crate) struct ChunkReader {
    store: Store,
    packs: PackFiles,
    scratch: ReadScratch,
    /// The chunk whose verified plaintext `scratch` holds.
    current: Option<Id>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl ChunkReader {
    pub(crate) fn new(store: &Store) -> ChunkReader {
        let pooled = store
            .inner
            .read_scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        ChunkReader {
            store: store.clone(),
            packs: PackFiles::default(),
            scratch: pooled.unwrap_or_default(),
            current: None,
        }
    }

    /// Whether `chunk` is the one held (reading it again would fetch nothing).
    pub(crate) fn holds(&self, chunk: &ChunkRef) -> bool {
        self.current == Some(chunk.id)
    }

    /// The verified plaintext of `chunk`, fetched unless it is the one held.
    pub(crate) fn read(&mut self, chunk: &ChunkRef) -> Result<&[u8]> {
        if !self.holds(chunk) {
            self.current = None;
            self.fetch(chunk)?;
            self.current = Some(chunk.id);
        }
        // Checked for a held chunk too: a tree may name one id with two lengths.
        if self.scratch.plain_len != chunk.len as usize {
            return Err(StoreError::CorruptBlob {
                id: chunk.id.to_hex(),
                pack: String::new(),
                offset: 0,
                reason: "chunk length differs from the tree".into(),
            });
        }
        Ok(self.held())
    }

    /// The plaintext of the chunk held (empty if none).
    pub(crate) fn held(&self) -> &[u8] {
        &self.scratch.plain[..self.scratch.plain_len]
    }

    /// Looks the chunk up and loads it; looks it up once more, afresh, if its pack could
    /// not be read (GC replaced it since we opened it).
    fn fetch(&mut self, chunk: &ChunkRef) -> Result<()> {
        let mut last_error = None;
        for _ in 0..2 {
            let found = index::find_blob(&self.store.db(), &chunk.id)?;
            let Some(blob) = found else {
                return Err(StoreError::MissingBlob(chunk.id.to_hex()));
            };
            // Checked before anything is allocated for it: the tree says how long it is.
            if blob.location.raw_len != chunk.len {
                return Err(StoreError::CorruptBlob {
                    id: chunk.id.to_hex(),
                    pack: blob.pack_name,
                    offset: blob.location.offset,
                    reason: "chunk length differs from the tree".into(),
                });
            }
            let outcome = match self.packs.open(&self.store.packs_dir(), &blob.pack_name) {
                Ok(file) => self.scratch.load(file, &blob, &self.store)?,
                Err(e) => LoadOutcome::ReadFailed(e),
            };
            match outcome {
                LoadOutcome::Loaded => return Ok(()),
                LoadOutcome::ReadFailed(e) => {
                    self.packs.forget(&blob.pack_name);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| StoreError::MissingBlob(chunk.id.to_hex())))
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        let scratch = std::mem::take(&mut self.scratch).trim_for_pool();
        let mut pool = self
            .store
            .inner
            .read_scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pool.len() < READ_SCRATCH_POOLED {
            pool.push(scratch);
        }
    }
}

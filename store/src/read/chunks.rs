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
                // Sized from the index before anything is read: a corrupt row must not make a
                // reader allocate (and keep) more than any compressor could have produced.
                if stored_len > zstd::zstd_safe::compress_bound(location.raw_len as usize) {
                    return Err(corrupt_blob(
                        &blob.pack_name,
                        location,
                        "stored length exceeds what zstd can produce for its size",
                    ));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::{EntryData, Metadata};
    use crate::snapshot::Snapshot;
    use crate::store::{CompressionMode, StoreConfig};
    use std::io::{Read, Write};

    fn meta() -> Metadata {
        Metadata {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 1,
            mtime_nsec: 0,
        }
    }

    /// Half pseudo-random, half text: chunks of both kinds, compressible and not.
    fn body(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if (i / 4096) % 2 == 0 {
                    x as u8
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect()
    }

    fn store_with(
        mode: CompressionMode,
        files: &[(&str, Vec<u8>)],
    ) -> (tempfile::TempDir, Store, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            compression: mode,
            ..StoreConfig::default()
        };
        let store = Store::init(&dir.path().join("s"), config).unwrap();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        w.set_root_meta(meta());
        for (name, content) in files {
            let mut f = w.add_file(name.as_bytes(), meta(), 0).unwrap();
            f.write_all(content).unwrap();
            f.finish().unwrap();
        }
        let snap = w.commit().unwrap();
        (dir, store, snap)
    }

    fn chunks_of(store: &Store, snap: &Snapshot, name: &str) -> Vec<ChunkRef> {
        match store.lookup(snap, name.as_bytes()).unwrap().data {
            EntryData::File { chunks, .. } => chunks,
            _ => panic!("not a file"),
        }
    }

    /// Readers reuse one another's buffers (largest first, then smaller, then larger
    /// again): each sees exactly its own content, compressed or raw, through `read`,
    /// `peek` and `next_chunk`, and the pool stays bounded.
    #[test]
    fn reused_buffers_hold_exactly_each_chunk() {
        let files = [
            ("big", body(5 << 20, 1)),
            ("small", body(300, 2)),
            ("mid", body(700_000, 3)),
            ("empty", Vec::new()),
            ("big2", body(3 << 20, 4)),
        ];
        for mode in [CompressionMode::Inline, CompressionMode::Deferred] {
            let (_dir, store, snap) = store_with(mode, &files);
            for (name, want) in &files {
                let entry = store.lookup(&snap, name.as_bytes()).unwrap();
                let mut read = Vec::new();
                store
                    .open_file(&entry)
                    .unwrap()
                    .read_to_end(&mut read)
                    .unwrap();
                assert!(read == *want, "{name} read ({mode:?})");
                let mut lent = Vec::new();
                let mut reader = store.open_file(&entry).unwrap();
                loop {
                    let piece = reader.peek().unwrap().to_vec();
                    if piece.is_empty() {
                        break;
                    }
                    lent.extend_from_slice(&piece[..piece.len().min(100_000)]);
                    reader.consume(piece.len().min(100_000));
                }
                assert!(lent == *want, "{name} lent ({mode:?})");
                let mut whole = Vec::new();
                let mut reader = store.open_file(&entry).unwrap();
                while let Some(chunk) = reader.next_chunk().unwrap() {
                    whole.extend_from_slice(chunk);
                }
                assert!(whole == *want, "{name} by chunk ({mode:?})");
            }
            // One reader handed from file to file (as a restore does), each file twice in
            // a row (its last chunk held over).
            let first = store.lookup(&snap, b"big").unwrap();
            let mut reader = store.open_file(&first).unwrap();
            for (name, want) in files.iter().chain(files.iter().rev()).flat_map(|f| [f, f]) {
                let entry = store.lookup(&snap, name.as_bytes()).unwrap();
                reader = store.reopen_file(&entry, reader).unwrap();
                assert_eq!(reader.size(), want.len() as u64);
                let mut read = Vec::new();
                reader.read_to_end(&mut read).unwrap();
                assert!(read == *want, "{name} through a reopened reader ({mode:?})");
            }
            drop(reader);
            let readers: Vec<_> = (0..READ_SCRATCH_POOLED + 3)
                .map(|_| ChunkReader::new(&store))
                .collect();
            drop(readers);
            let pooled = store.inner.read_scratch.lock().unwrap().len();
            assert_eq!(pooled, READ_SCRATCH_POOLED);
        }
    }

    /// A zero-length chunk in a file's list (the tree format allows one) shares its start
    /// with the next chunk: reading goes on past it instead of ending the file there.
    #[test]
    fn a_zero_length_chunk_does_not_end_the_file() {
        let content = body(5 << 20, 7);
        let (_dir, store, snap) = store_with(CompressionMode::Inline, &[("f", content.clone())]);
        let chunks = chunks_of(&store, &snap, "f");
        assert!(chunks.len() >= 3, "several chunks: {}", chunks.len());
        // A binary search over repeated starts may land on any of them: try runs of 1 to 4
        // zero-length chunks before each chunk.
        for (at, zeros) in (1..chunks.len()).flat_map(|at| (1..=4).map(move |z| (at, z))) {
            let mut with_empty = chunks.clone();
            let empty = ChunkRef {
                id: chunks[at].id,
                len: 0,
            };
            for _ in 0..zeros {
                with_empty.insert(at, empty);
            }
            let mut read = Vec::new();
            store
                .open_chunks(&with_empty)
                .read_to_end(&mut read)
                .unwrap();
            assert!(
                read == content,
                "zero-length chunks at {at}: read {} bytes",
                read.len()
            );
            let mut reader = store.open_chunks(&with_empty);
            let mut lent = Vec::new();
            loop {
                let piece = reader.peek().unwrap().to_vec();
                if piece.is_empty() {
                    break;
                }
                lent.extend_from_slice(&piece);
                reader.consume(piece.len());
            }
            assert!(
                lent == content,
                "zero-length chunks at {at}: lent {} bytes",
                lent.len()
            );
        }
    }

    /// A damaged chunk read into buffers that held a good one is an error, never the
    /// stale content; the reader then reads good chunks again.
    #[test]
    fn a_damaged_chunk_in_a_reused_buffer_is_an_error() {
        let files = [("good", body(600_000, 5)), ("bad", body(400_000, 6))];
        for mode in [CompressionMode::Inline, CompressionMode::Deferred] {
            let (_dir, store, snap) = store_with(mode, &files);
            let good = chunks_of(&store, &snap, "good");
            let bad = chunks_of(&store, &snap, "bad");
            let found = index::find_blob(&store.db(), &bad[0].id).unwrap().unwrap();
            let pack = pack_path(&store.packs_dir(), &found.pack_name);
            let mut bytes = std::fs::read(&pack).unwrap();
            let at = found.location.offset as usize + found.location.stored_len as usize / 2;
            bytes[at] ^= 0xff;
            std::fs::write(&pack, &bytes).unwrap();

            let mut reader = ChunkReader::new(&store);
            assert_eq!(
                reader.read(&good[0]).unwrap(),
                &files[0].1[..good[0].len as usize]
            );
            let err = reader.read(&bad[0]).unwrap_err();
            assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
            assert!(!reader.holds(&bad[0]));
            let err = reader.read(&bad[0]).unwrap_err();
            assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
            assert_eq!(
                reader.read(&good[0]).unwrap(),
                &files[0].1[..good[0].len as usize]
            );
            // A tree naming the held chunk with another length is refused too.
            let mut wrong = good[0];
            wrong.len -= 1;
            assert!(reader.read(&wrong).is_err());
        }
    }
}

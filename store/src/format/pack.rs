//! Pack files: immutable, self-describing containers of blobs.
//!
//! Layout: `PACK_MAGIC`, then the blobs back to back, then a trailer of fixed-size records
//! (one per blob), then a footer giving the trailer's length and a hash prefix of it.
//! The trailer is enough to rebuild the index from packs alone (`repair`).
//! A pack is written under `tmp/`, fsynced, renamed into `packs/xx/`, and the directory is
//! fsynced before any index row may point at it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{DecodeError, IoContext, Result, StoreError};
use crate::fault;
use crate::format::codec::Reader;
use crate::format::id::Id;
use crate::format::*;
use crate::fsutil::sync_dir;
use crate::tuning::*;

/// Where one blob sits in its pack and how it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub id: Id,
    pub kind: u8,
    pub compression: u8,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

impl BlobLocation {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.kind);
        out.push(self.compression);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }
}

pub fn random_pack_name() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub fn pack_path(packs_dir: &Path, name: &str) -> PathBuf {
    let shard = name.get(..2).unwrap_or("00");
    packs_dir.join(shard).join(format!("{name}{PACK_SUFFIX}"))
}

/// Compresses blobs with a reusable zstd context, keeping the raw bytes when compression
/// does not pay.
pub struct Compressor {
    ctx: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    pub fn new(level: i32) -> Result<Self> {
        let ctx = zstd::bulk::Compressor::new(level)
            .map_err(|e| StoreError::Config(format!("zstd level {level}: {e}")))?;
        Ok(Compressor { ctx })
    }

    /// Returns the encoding chosen and the bytes to store; an incompressible blob is handed
    /// back as it came, uncopied.
    pub fn compress_owned(&mut self, raw: Vec<u8>) -> (u8, Vec<u8>) {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        let worth_it = raw.len() - (raw.len() >> COMPRESSION_MIN_SAVING_SHIFT);
        match self.ctx.compress_to_buffer(raw.as_slice(), &mut out) {
            Ok(n) if n < worth_it => {
                out.truncate(n);
                (COMPRESSION_ZSTD, out)
            }
            _ => (COMPRESSION_NONE, raw),
        }
    }
}

/// Appends blobs to a new pack under `tmp/`.
#[derive(Debug)]
pub struct PackWriter {
    name: String,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    offset: u64,
    blobs: Vec<BlobLocation>,
}

/// A pack that is durable under its final name.
#[derive(Debug, Clone)]
pub struct FinishedPack {
    pub name: String,
    pub size: u64,
    pub blobs: Vec<BlobLocation>,
}

impl PackWriter {
    pub fn create(tmp_dir: &Path) -> Result<Self> {
        let name = random_pack_name();
        let tmp_path = tmp_dir.join(format!("{name}{PACK_SUFFIX}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .io_ctx("create pack", &tmp_path)?;
        // Held until the pack is durable: GC leaves a locked temp file alone however old it
        // is (a slow pull may add nothing for hours), and removes it once its writer is gone.
        if let Err(e) = file.lock() {
            let _ = fs::remove_file(&tmp_path);
            return Err(e).io_ctx("lock pack", &tmp_path);
        }
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(PACK_MAGIC).io_ctx("write pack", &tmp_path)?;
        Ok(PackWriter {
            name,
            tmp_path,
            file: Some(file),
            offset: PACK_MAGIC.len() as u64,
            blobs: Vec::new(),
        })
    }

    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Appends already-encoded bytes (used by compression and by repacking, which copies
    /// stored bytes without recompressing).
    pub fn add_stored(
        &mut self,
        id: Id,
        kind: u8,
        compression: u8,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<BlobLocation> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StoreError::InvalidArgument("pack already finished".into()))?;
        fault::check(
            self.tmp_path.parent().and_then(Path::parent),
            fault::PACK_WRITE,
        )
        .and_then(|()| file.write_all(stored))
        .io_ctx("write pack", &self.tmp_path)?;
        let location = BlobLocation {
            id,
            kind,
            compression,
            offset: self.offset,
            stored_len: stored.len() as u32,
            raw_len,
        };
        self.offset += stored.len() as u64;
        self.blobs.push(location);
        Ok(location)
    }

    /// Writes the trailer, makes the pack durable and moves it to its final name.
    pub fn finish(self, packs_dir: &Path) -> Result<FinishedPack> {
        self.finish_writing()?.make_durable(packs_dir)
    }

    /// Writes the trailer; the pack still has to be made durable (which a caller may hand
    /// to another thread, so that fsync does not stall the writing of the next pack).
    pub fn finish_writing(mut self) -> Result<WrittenPack> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StoreError::InvalidArgument("pack already finished".into()))?;
        let mut trailer = Vec::with_capacity(self.blobs.len() * PACK_TRAILER_RECORD_LEN);
        for blob in &self.blobs {
            blob.encode(&mut trailer);
        }
        let digest = blake3::hash(&trailer);
        let tmp_path = std::mem::take(&mut self.tmp_path);
        let written = (|| -> std::io::Result<File> {
            file.write_all(&trailer)?;
            file.write_all(&(trailer.len() as u32).to_le_bytes())?;
            file.write_all(&digest.as_bytes()[..16])?;
            file.write_all(PACK_END_MAGIC)?;
            file.into_inner().map_err(|e| e.into_error())
        })();
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                return Err(StoreError::io("write pack", tmp_path, e));
            }
        };
        let written = WrittenPack {
            name: std::mem::take(&mut self.name),
            size: self.offset + trailer.len() as u64 + PACK_FOOTER_LEN as u64,
            blobs: std::mem::take(&mut self.blobs),
            file: Some(file),
            tmp_path,
        };
        Ok(written)
    }
}

/// A complete pack under `tmp/`, not yet durable. Dropped unfinished, its file is removed.
#[derive(Debug)]
pub struct WrittenPack {
    name: String,
    size: u64,
    blobs: Vec<BlobLocation>,
    file: Option<File>,
    tmp_path: PathBuf,
}

impl WrittenPack {
    /// The blobs it holds, in pack order.
    #[cfg(test)]
    pub(crate) fn blobs(&self) -> &[BlobLocation] {
        &self.blobs
    }

    /// Fsyncs the pack, renames it into `packs/` and fsyncs that folder.
    pub fn make_durable(mut self, packs_dir: &Path) -> Result<FinishedPack> {
        let file = self
            .file
            .take()
            .ok_or_else(|| StoreError::InvalidArgument("pack already durable".into()))?;
        let synced = file.sync_all().io_ctx("fsync pack", &self.tmp_path);
        drop(file);
        if let Err(e) = synced {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        let final_path = pack_path(packs_dir, &self.name);
        let shard = final_path.parent().unwrap_or(packs_dir).to_path_buf();
        let moved = fs::create_dir_all(&shard)
            .io_ctx("create pack folder", &shard)
            .and_then(|()| {
                fs::rename(&self.tmp_path, &final_path).io_ctx("rename pack", &final_path)
            });
        if let Err(e) = moved {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        sync_dir(&shard)?;
        Ok(FinishedPack {
            name: std::mem::take(&mut self.name),
            size: self.size,
            blobs: std::mem::take(&mut self.blobs),
        })
    }
}

impl Drop for WrittenPack {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Decodes a pack trailer from the pack's full length and a function reading byte ranges.
/// Every record is checked to lie inside the blob area.
pub fn decode_trailer(
    pack_len: u64,
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::result::Result<Vec<BlobLocation>, TrailerError> {
    let min_len = (PACK_MAGIC.len() + PACK_FOOTER_LEN) as u64;
    if pack_len < min_len {
        return Err(TrailerError::Decode(DecodeError {
            offset: 0,
            reason: "file too short to be a pack",
        }));
    }
    let head = read_at(0, PACK_MAGIC.len())?;
    if head != PACK_MAGIC {
        return Err(TrailerError::Decode(DecodeError {
            offset: 0,
            reason: "bad pack magic",
        }));
    }
    let footer_at = pack_len - PACK_FOOTER_LEN as u64;
    let footer = read_at(footer_at, PACK_FOOTER_LEN)?;
    let at = |reason| {
        TrailerError::Decode(DecodeError {
            offset: footer_at as usize,
            reason,
        })
    };
    let mut r = Reader::new(&footer);
    let trailer_len = r.u32_le().map_err(TrailerError::Decode)?;
    let digest: [u8; 16] = r.array().map_err(TrailerError::Decode)?;
    let end_magic: [u8; 8] = r.array().map_err(TrailerError::Decode)?;
    if &end_magic != PACK_END_MAGIC {
        return Err(at("bad pack end magic (truncated or not a pack)"));
    }
    if trailer_len > MAX_TRAILER_LEN
        || !(trailer_len as usize).is_multiple_of(PACK_TRAILER_RECORD_LEN)
        || u64::from(trailer_len) > footer_at - PACK_MAGIC.len() as u64
    {
        return Err(at("bad trailer length"));
    }
    let data_end = footer_at - u64::from(trailer_len);
    let trailer = read_at(data_end, trailer_len as usize)?;
    if blake3::hash(&trailer).as_bytes()[..16] != digest {
        return Err(TrailerError::Decode(DecodeError {
            offset: data_end as usize,
            reason: "trailer checksum mismatch",
        }));
    }
    let mut r = Reader::new(&trailer);
    let mut blobs = Vec::with_capacity(trailer.len() / PACK_TRAILER_RECORD_LEN);
    let mut expected_offset = PACK_MAGIC.len() as u64;
    while !r.is_empty() {
        let rec_at = data_end as usize + r.position();
        let fail = |reason| {
            TrailerError::Decode(DecodeError {
                offset: rec_at,
                reason,
            })
        };
        let id = Id(r.array().map_err(TrailerError::Decode)?);
        let kind = r.u8().map_err(TrailerError::Decode)?;
        let compression = r.u8().map_err(TrailerError::Decode)?;
        let offset = r.u64_le().map_err(TrailerError::Decode)?;
        let stored_len = r.u32_le().map_err(TrailerError::Decode)?;
        let raw_len = r.u32_le().map_err(TrailerError::Decode)?;
        if kind != BLOB_KIND_CHUNK && kind != BLOB_KIND_TREE {
            return Err(fail("unknown blob kind"));
        }
        if ![COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_DEFERRED].contains(&compression) {
            return Err(fail("unknown blob compression"));
        }
        if stored_len > MAX_BLOB_LEN || raw_len > MAX_BLOB_LEN {
            return Err(fail("blob length over the limit"));
        }
        if compression != COMPRESSION_ZSTD && stored_len != raw_len {
            return Err(fail("raw blob with stored length != raw length"));
        }
        if offset != expected_offset || offset + u64::from(stored_len) > data_end {
            return Err(fail("blob outside the pack's data area"));
        }
        expected_offset = offset + u64::from(stored_len);
        blobs.push(BlobLocation {
            id,
            kind,
            compression,
            offset,
            stored_len,
            raw_len,
        });
    }
    Ok(blobs)
}

#[derive(Debug, thiserror::Error)]
pub enum TrailerError {
    #[error("{0}")]
    Decode(DecodeError),
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the trailer of a pack file on disk.
pub fn read_pack_trailer(path: &Path, name: &str) -> Result<Vec<BlobLocation>> {
    let file = File::open(path).io_ctx("open pack", path)?;
    let len = file.metadata().io_ctx("stat pack", path)?.len();
    let mut read_at = |offset: u64, len: usize| -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    };
    decode_trailer(len, &mut read_at).map_err(|e| match e {
        TrailerError::Decode(error) => StoreError::CorruptPack {
            pack: name.to_string(),
            error,
        },
        TrailerError::Io(source) => StoreError::io("read pack", path, source),
    })
}

/// Decodes stored blob bytes into plaintext and checks the hash. Pure: no I/O.
pub fn decode_blob(
    location: &BlobLocation,
    stored: &[u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> std::result::Result<Vec<u8>, &'static str> {
    plaintext(location, stored, decompressor).map(std::borrow::Cow::into_owned)
}

/// Checks stored blob bytes as [`decode_blob`] does, without copying a raw blob's bytes.
pub fn check_blob(
    location: &BlobLocation,
    stored: &[u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> std::result::Result<(), &'static str> {
    plaintext(location, stored, decompressor).map(|_| ())
}

/// The checked plaintext of stored blob bytes: borrowed when stored raw.
fn plaintext<'a>(
    location: &BlobLocation,
    stored: &'a [u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> std::result::Result<std::borrow::Cow<'a, [u8]>, &'static str> {
    if stored.len() != location.stored_len as usize {
        return Err("stored length does not match the index");
    }
    let raw = match location.compression {
        COMPRESSION_NONE | COMPRESSION_DEFERRED => std::borrow::Cow::Borrowed(stored),
        COMPRESSION_ZSTD => {
            let raw = decompressor
                .decompress(stored, location.raw_len as usize)
                .map_err(|_| "zstd data is corrupt")?;
            if raw.len() != location.raw_len as usize {
                return Err("decompressed length does not match");
            }
            std::borrow::Cow::Owned(raw)
        }
        _ => return Err("unknown compression"),
    };
    if Id::of(&raw) != location.id {
        return Err("content does not match its hash");
    }
    Ok(raw)
}

/// The pack name of a file under `packs/`, if its name is one.
pub(crate) fn pack_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file.strip_suffix(PACK_SUFFIX)?;
    (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_string())
}

pub(crate) fn list_pack_files(packs_dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for shard in fs::read_dir(packs_dir).io_ctx("list", packs_dir)? {
        let shard = shard.io_ctx("list", packs_dir)?.path();
        if !shard.is_dir() {
            continue;
        }
        for f in fs::read_dir(&shard).io_ctx("list", &shard)? {
            let f = f.io_ctx("list", &shard)?.path();
            if f.extension().is_some_and(|e| e == "pack") {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let packs = dir.path().join("packs");
        fs::create_dir_all(&tmp).unwrap();
        fs::create_dir_all(&packs).unwrap();
        let mut comp = Compressor::new(3).unwrap();
        let mut w = PackWriter::create(&tmp).unwrap();
        let a = vec![7u8; 100_000];
        let mut b = vec![0u8; 5000];
        blake3::Hasher::new().finalize_xof().fill(&mut b);
        let mut add = |kind, raw: &Vec<u8>| {
            let (compression, stored) = comp.compress_owned(raw.clone());
            w.add_stored(Id::of(raw), kind, compression, &stored, raw.len() as u32)
                .unwrap()
        };
        let la = add(BLOB_KIND_CHUNK, &a);
        let lb = add(BLOB_KIND_TREE, &b);
        assert_eq!(la.compression, COMPRESSION_ZSTD);
        assert_eq!(lb.compression, COMPRESSION_NONE, "random bytes stay raw");
        let done = w.finish(&packs).unwrap();
        let path = pack_path(&packs, &done.name);
        assert_eq!(fs::metadata(&path).unwrap().len(), done.size);
        let blobs = read_pack_trailer(&path, &done.name).unwrap();
        assert_eq!(blobs, vec![la, lb]);
        let bytes = fs::read(&path).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let stored = &bytes[la.offset as usize..(la.offset + u64::from(la.stored_len)) as usize];
        assert_eq!(decode_blob(&la, stored, &mut d).unwrap(), a);
        // flip one byte in the first blob: its hash check fails
        let mut broken = stored.to_vec();
        broken[3] ^= 0x55;
        assert!(decode_blob(&la, &broken, &mut d).is_err());
        // truncating the pack breaks its footer
        let mut trunc = bytes.clone();
        trunc.truncate(bytes.len() - 3);
        let mut read_at = |o: u64, l: usize| -> std::io::Result<Vec<u8>> {
            trunc
                .get(o as usize..o as usize + l)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| std::io::Error::other("eof"))
        };
        assert!(decode_trailer((bytes.len() - 3) as u64, &mut read_at).is_err());
    }

    #[test]
    fn abandoned_pack_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = PackWriter::create(dir.path()).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

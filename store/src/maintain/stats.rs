//! `stats`: what the store holds and what deduplication saves.

use serde::Serialize;

use crate::error::Result;
use crate::format::*;
use crate::store::Store;

/// What `stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub snapshots: u64,
    pub machines: u64,
    pub sources: u64,
    /// Sum of file sizes over all snapshots (what plain copies would take).
    pub logical_bytes: u64,
    pub chunks: u64,
    pub trees: u64,
    /// Plaintext bytes of all stored chunks.
    pub chunk_bytes: u64,
    /// Bytes those blobs take in packs.
    pub stored_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Bytes in packs that GC can reclaim or has yet to repack.
    pub dead_bytes: u64,
    /// Bytes stored raw because compression was deferred; the next `gc` compresses them.
    pub deferred_bytes: u64,
    pub live_sessions: u64,
}

impl Store {
    pub fn stats(&self) -> Result<StoreStats> {
        let db = self.db();
        let mut s = StoreStats::default();
        let one = |sql: &str| -> Result<u64> {
            Ok(db
                .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?
                .unwrap_or(0) as u64)
        };
        s.snapshots = one("SELECT COUNT(*) FROM snapshots")?;
        s.machines = one("SELECT COUNT(DISTINCT machine) FROM snapshots")?;
        s.sources = one("SELECT COUNT(*) FROM (SELECT DISTINCT machine, source FROM snapshots)")?;
        s.logical_bytes = one("SELECT SUM(json_extract(stats, '$.bytes')) FROM snapshots")?;
        s.chunks = one(&format!(
            "SELECT COUNT(*) FROM blobs WHERE kind = {BLOB_KIND_CHUNK}"
        ))?;
        s.trees = one(&format!(
            "SELECT COUNT(*) FROM blobs WHERE kind = {BLOB_KIND_TREE}"
        ))?;
        s.chunk_bytes = one(&format!(
            "SELECT SUM(raw_len) FROM blobs WHERE kind = {BLOB_KIND_CHUNK}"
        ))?;
        s.stored_bytes = one("SELECT SUM(stored_len) FROM blobs")?;
        s.packs = one("SELECT COUNT(*) FROM packs")?;
        s.pack_bytes = one("SELECT SUM(size) FROM packs")?;
        s.dead_bytes = one("SELECT SUM(dead_bytes) FROM packs")?;
        s.deferred_bytes = one("SELECT SUM(deferred_bytes) FROM packs")?;
        s.live_sessions = crate::index::session::live_count(&db)? as u64;
        Ok(s)
    }
}

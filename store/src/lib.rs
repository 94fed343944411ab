//! The turku content-addressed store.
//!
//! Brief overview:
//! - [`Store`] opens or creates a store directory: `config`, `index.sqlite` (SQLite, WAL),
//!   `packs/` (immutable, self-describing pack files), `snapshots/` (one record per
//!   snapshot), `tmp/`.
//! - [`SnapshotWriter`] streams a backup in: files are cut by FastCDC, identified by blake3,
//!   compressed with zstd and appended to packs; unchanged files reuse the previous
//!   snapshot's chunks; `commit` makes the snapshot visible atomically.
//! - Reading: [`Store::snapshots`], [`Store::lookup`], [`Store::list_dir`],
//!   [`Store::open_file`] (streaming, every chunk verified), exports to a directory or tar.
//! - Maintenance: [`retention`] selects snapshots to forget, [`Store::forget`] and
//!   [`Store::gc`] reclaim space in proportion to what is freed, [`Store::verify`] re-hashes
//!   everything, [`Store::repair`] rebuilds the index from packs and snapshot records.
//!
//! Order of operations for a backup: `begin_snapshot` → `add_*` / `reuse_unchanged` /
//! `add_file` + `write_content` + `finish` → `commit` (or drop to abandon).

mod check;
mod codec;
mod error;
mod export;
mod export_dir;
pub mod format;
mod gc;
mod id;
mod index;
mod ingest;
mod pack;
mod packer;
mod reader;
pub mod retention;
mod session;
mod snapshot;
mod store;
pub mod tree;
mod writer;

pub use check::{Problem, RepairReport, StoreStats, VerifyReport};
pub use error::{DecodeError, Result, StoreError};
pub use export::{dev_major, dev_minor, make_dev, ExportOptions, ExportStats, ExportStep};
pub use gc::GcStats;
pub use id::Id;
pub use ingest::{link_group_for, metadata_of, IngestProgress};
pub use reader::FileReader;
pub use snapshot::{format_ns, snapshot_name, split_path, Snapshot, SnapshotStats};
pub use store::{CompressionMode, Store, StoreConfig};
pub use tree::{ChunkRef, EntryData, EntryKind, Metadata, TreeEntry};
pub use writer::{chunk_lengths, FileWriter, SnapshotWriter};

/// Decoders of on-disk bytes, exposed for fuzzing. They never panic on any input.
pub mod decode {
    pub use crate::pack::{decode_blob, decode_trailer, BlobLocation, TrailerError};
    /// The zstd context `decode_blob` takes.
    pub type Decompressor = zstd::bulk::Decompressor<'static>;
    pub use crate::snapshot::decode_log as decode_snapshot_log;
    pub use crate::tree::decode as decode_tree;
}

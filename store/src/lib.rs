//! The turku content-addressed store.
//!
//! Brief overview:
//! - [`Store`] opens or creates a store directory: `config`, `index.sqlite` (SQLite, WAL),
//!   `packs/` (immutable, self-describing pack files), `snapshots/records.log` (the
//!   snapshot record log), `tmp/`.
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
//!
//! Modules by role: `format` (on-disk format, never changes), `tuning` (knobs), `index`
//! (SQLite index, writer sessions), `write`, `read`, `snapshot` (snapshots and their log),
//! `maintain` (gc, verify, repair, stats, retention); docs/store.md has the map.

pub mod clock;
mod error;
mod fault;
pub mod format;
mod fsutil;
/// The fuzz targets' bodies, shared with the replay of their committed seeds.
#[doc(hidden)]
pub mod fuzzing;
mod index;
pub mod maintain;
mod read;
mod snapshot;
mod space;
mod store;
pub mod tuning;
mod write;

pub use error::{DecodeError, Result, StoreError};
pub use format::id::Id;
pub use format::tree::{self, dev_major, dev_minor, link_group_for, make_dev};
pub use format::tree::{ChunkRef, EntryData, EntryKind, Metadata, TreeEntry};
pub use maintain::gc::GcStats;
pub use maintain::repair::RepairReport;
pub use maintain::retention;
pub use maintain::stats::StoreStats;
pub use maintain::verify::{Problem, VerifyReport};
pub use read::export_dir::{ExportOptions, ExportStep};
pub use read::reader::FileReader;
pub use read::walk::{HardLink, SnapshotWalk, WalkEntry, WalkEvent};
pub use read::ExportStats;
pub use snapshot::{format_ns, snapshot_name, split_path, Snapshot, SnapshotStats};
pub use store::{CompressionMode, Store, StoreConfig};
pub use write::chunker::chunk_lengths;
pub use write::ingest::{metadata_of, IngestProgress};
pub use write::writer::{FileWriter, SnapshotWriter};

/// Decoders of on-disk bytes, exposed for fuzzing. They never panic on any input.
pub mod decode {
    pub use crate::format::pack::{decode_blob, decode_trailer, BlobLocation, TrailerError};
    /// The zstd context `decode_blob` takes.
    pub type Decompressor = zstd::bulk::Decompressor<'static>;
    pub use crate::format::tree::decode as decode_tree;
    pub use crate::snapshot::decode_log as decode_snapshot_log;
}

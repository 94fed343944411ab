//! The store's on-disk format: file names, magics, format versions, encodings, and the
//! limits decoders enforce. These values are what existing stores are made of: they never
//! change. A new format gets new constants and a new version; tuning knobs live in
//! `tuning.rs`.
//!
//! The encodings themselves: [`codec`] (varints), [`id`] (blake3 ids), [`pack`] (pack files),
//! [`tree`] (directory objects).

pub(crate) mod codec;
pub(crate) mod id;
pub(crate) mod pack;
pub mod tree;

/// Current version of the store layout (written to the `config` file).
pub const STORE_FORMAT_VERSION: u32 = 1;

/// File names and folders inside a store directory.
pub const CONFIG_FILE: &str = "config";
pub const INDEX_FILE: &str = "index.sqlite";

/// `repair` builds the new index under this name and renames it over `INDEX_FILE` only once
/// it is complete and durable; a leftover from a killed repair is removed by the next one.
pub const INDEX_REBUILD_FILE: &str = "index.sqlite.rebuild";

/// The index `repair` replaced, kept (with its write-ahead log) until the next repair.
pub const INDEX_BACKUP_FILE: &str = "index.sqlite.old";

/// Files SQLite keeps beside a database, named after it: they must move with it or go.
pub const SQLITE_SIDE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Pack files `repair` could not read are moved here (never deleted) for an operator.
pub const QUARANTINE_DIR: &str = "quarantine";
pub const PACKS_DIR: &str = "packs";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const TMP_DIR: &str = "tmp";
pub const LOCK_FILE: &str = "store.lock";
pub const GC_LOCK_FILE: &str = "gc.lock";
pub const PACK_SUFFIX: &str = ".pack";

/// Append-only log of snapshot records (adds and forgets), one JSON object per line.
pub const SNAPSHOT_LOG_FILE: &str = "records.log";

/// What an append writes after a torn fragment it finds at the end of the snapshot log,
/// before its newline: marks the line as a cut-short append, not damage. No single flipped
/// byte turns a record line (ending in `}`) into one ending with it.
pub const SNAPSHOT_LOG_TORN_MARK: &[u8] = b" #torn";

/// Space held back for `forget` and `gc` on a full disk (see `FULL_DISK_RESERVE_BYTES`).
pub const RESERVE_FILE: &str = "space.reserve";

/// First line of the `config` file: identifies a turku store.
pub const CONFIG_MAGIC: &str = "turku-store";

/// Pack file framing: `PACK_MAGIC`, blobs, trailer, footer.
/// The footer is `trailer_len:u32 le, trailer_blake3[0..16], PACK_END_MAGIC`.
pub const PACK_MAGIC: &[u8; 8] = b"TRKPACK1";
pub const PACK_END_MAGIC: &[u8; 8] = b"TRKPEND1";
pub const PACK_FOOTER_LEN: usize = 4 + 16 + 8;

/// One trailer record: id(32) kind(1) compression(1) offset(u64) stored_len(u32) raw_len(u32).
pub const PACK_TRAILER_RECORD_LEN: usize = 32 + 1 + 1 + 8 + 4 + 4;

/// Largest blob a decoder accepts (a max-size chunk plus zstd's worst-case overhead).
pub const MAX_BLOB_LEN: u32 = 32 * 1024 * 1024;

/// Largest trailer a decoder accepts (bounds allocation on corrupt footers).
pub const MAX_TRAILER_LEN: u32 = 64 * 1024 * 1024;

/// Blob kinds (stored in pack trailers and the index).
pub const BLOB_KIND_CHUNK: u8 = 1;
pub const BLOB_KIND_TREE: u8 = 2;

/// Blob encodings.
pub const COMPRESSION_NONE: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;

/// Stored raw because compression could not keep up with the backup (or the store defers
/// it by choice); `gc` compresses it later. Read exactly like `COMPRESSION_NONE`.
pub const COMPRESSION_DEFERRED: u8 = 2;

/// Tree object framing.
pub const TREE_MAGIC: &[u8; 4] = b"TRKT";
pub const TREE_FORMAT_VERSION: u8 = 1;

/// A tree blob is either a leaf (entries) or an interior node listing leaf parts.
pub const TREE_NODE_LEAF: u8 = 0;
pub const TREE_NODE_SPLIT: u8 = 1;

/// Huge directories are cut into parts of at least MIN and at most MAX entries; a cut
/// happens where an entry name's hash has its low bits zero, so inserting one name disturbs
/// only one part.
pub const TREE_SPLIT_MIN_ENTRIES: usize = 1024;
pub const TREE_SPLIT_MAX_ENTRIES: usize = 16384;
pub const TREE_SPLIT_MASK: u64 = 4095;

/// Decoder bounds for tree objects.
pub const MAX_NAME_LEN: usize = 4096;
pub const MAX_SYMLINK_LEN: usize = 64 * 1024;
pub const MAX_TREE_ENTRIES: usize = 1 << 24;

/// Largest file: 2^62 bytes (chunk count bounded by size / min chunk size).
pub const MAX_CHUNKS_PER_FILE: usize = 1 << 32;

/// Entry types inside trees.
pub const ENTRY_FILE: u8 = 1;
pub const ENTRY_DIR: u8 = 2;
pub const ENTRY_SYMLINK: u8 = 3;
pub const ENTRY_CHAR_DEVICE: u8 = 4;
pub const ENTRY_BLOCK_DEVICE: u8 = 5;
pub const ENTRY_FIFO: u8 = 6;
pub const ENTRY_SOCKET: u8 = 7;

/// Snapshot records (the source of truth `repair` rebuilds snapshot rows from).
pub const SNAPSHOT_RECORD_MAGIC: &str = "turku-snapshot 1";

/// Schema version of the index (PRAGMA user_version).
pub const INDEX_SCHEMA_VERSION: i32 = 4;

/// What a writer session's `pid_start` is set to when its commit failed half-way: no process
/// matches it, so GC rolls back its snapshot record and then clears it as a dead session.
pub const SESSION_ABANDONED_PID_START: i64 = -1;

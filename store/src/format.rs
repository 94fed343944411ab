//! Every on-disk constant of the store lives here: file names, magics, format versions,
//! limits that decoders enforce, and the defaults recorded at `init`.

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
/// A pack is closed once it reaches this size; blobs never straddle packs.
pub const PACK_TARGET_SIZE: u64 = 32 * 1024 * 1024;
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
/// A compressed blob is kept only if it saves at least 1/32 of the raw size.
pub const COMPRESSION_MIN_SAVING_SHIFT: u32 = 5;

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

/// Chunker defaults (DESIGN.md §4) and the bounds `init` accepts (those of fastcdc v2020).
pub const DEFAULT_CHUNK_MIN: u32 = 256 * 1024;
pub const DEFAULT_CHUNK_AVG: u32 = 1024 * 1024;
pub const DEFAULT_CHUNK_MAX: u32 = 4 * 1024 * 1024;
pub const CHUNK_MIN_RANGE: (u32, u32) = (64, 1024 * 1024);
pub const CHUNK_AVG_RANGE: (u32, u32) = (256, 4 * 1024 * 1024);
pub const CHUNK_MAX_RANGE: (u32, u32) = (1024, 16 * 1024 * 1024);
/// zstd level 1 by default: on two cores level 3 costs ~40% more compression CPU for ~5%
/// less space (see docs/DESIGN.md, living notes); `init --zstd-level` chooses per store.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
pub const ZSTD_LEVEL_RANGE: (i32, i32) = (1, 19);

/// A snapshot writer runs one compression thread per core, up to this many.
pub const MAX_COMPRESSION_THREADS: usize = 4;
/// Compression threads run at this nice value, so the transfer they serve comes first and
/// compression takes the CPU left over; in adaptive mode what it cannot take is deferred.
pub const COMPRESSION_THREAD_NICE: i32 = 19;
/// `gc` compresses a pack's deferred blobs once they are at least this share of its data.
pub const COMPACT_DEFERRED_PERCENT: u64 = 10;
/// A writer hands blobs to its compression threads in batches of about this many bytes.
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Bytes of blobs a writer keeps queued for compression and packing (bounds its memory).
pub const IN_FLIGHT_BYTES: u64 = 32 * 1024 * 1024;
/// What each queued blob counts against that budget beyond its size.
pub const IN_FLIGHT_BLOB_OVERHEAD: u64 = 512;
/// Written packs a writer lets wait for their fsync before it stops packing more.
pub const PACKS_AWAITING_SYNC: usize = 2;
/// A writer pins the stored chunks it reuses in one transaction per this many chunks or
/// bytes, keeping their bytes until then in case GC freed one meanwhile.
pub const TENTATIVE_REUSE_CHUNKS: usize = 1024;
pub const TENTATIVE_REUSE_BYTES: usize = 16 * 1024 * 1024;
/// How often a writer waiting for room in that budget indexes packs that became durable.
pub const IN_FLIGHT_POLL_MS: u64 = 5;

/// How long `repair` waits for the store lock before calling the store busy, and how often it
/// tries. A holder can be transient: a child some process forked holds copies of that
/// process's descriptors until it execs.
pub const EXCLUSIVE_LOCK_PATIENCE_MS: u64 = 2_000;
pub const EXCLUSIVE_LOCK_RETRY_MS: u64 = 20;

/// Export leaves a hole for an all-zero chunk at least this long.
pub const SPARSE_MIN_HOLE: usize = 64 * 1024;

/// SQLite: how long a writer waits for another process's transaction.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 120_000;
/// SQLite page cache per connection, in KiB: room for one pack's worth of random-order
/// blob inserts (a few thousand leaf pages) without spilling mid-transaction.
pub const SQLITE_CACHE_KIB: i64 = 32_768;
/// Schema version of the index (PRAGMA user_version).
pub const INDEX_SCHEMA_VERSION: i32 = 4;

/// GC: a pack whose dead bytes reach this fraction (in percent) is repacked.
pub const REPACK_DEAD_PERCENT: u64 = 30;
/// What a writer session's `pid_start` is set to when its commit failed half-way: no process
/// matches it, so GC rolls back its snapshot record and then clears it as a dead session.
pub const SESSION_ABANDONED_PID_START: i64 = -1;
/// Snapshot names carry a 16-bit random suffix after the second; a commit draws again while
/// its name is taken, at most this many times.
pub const SNAPSHOT_NAME_ATTEMPTS: u32 = 4096;
/// Bytes the store keeps allocated in `RESERVE_FILE` (recreated by every backup and `gc`
/// when there is room): on a full disk `forget` and `gc` free it to make room for the index's
/// write-ahead log and the snapshot log, then free space by deleting packs.
pub const FULL_DISK_RESERVE_BYTES: u64 = 2 * 1024 * 1024;
/// GC frees blobs in transactions of this many; on a full disk, of `FREE_BATCH_FULL_DISK`,
/// checkpointing the index in between so its write-ahead log stays small.
pub const FREE_BATCH: usize = 2000;
pub const FREE_BATCH_FULL_DISK: usize = 64;
/// Pack files on disk that no index row knows are removed by GC only after this long,
/// since a writer renames its pack into place just before indexing it.
pub const ORPHAN_PACK_GRACE_SECS: u64 = 3600;

//! Tuning knobs: defaults recorded at `init`, the bounds `init` accepts, and the sizes,
//! batches, timeouts and thresholds of writing, packing, GC and SQLite. Changing one changes
//! how the store behaves, never how existing stores are read.

/// A pack is closed once it reaches this size; blobs never straddle packs.
pub const PACK_TARGET_SIZE: u64 = 32 * 1024 * 1024;

/// A compressed blob is kept only if it saves at least 1/32 of the raw size.
pub const COMPRESSION_MIN_SAVING_SHIFT: u32 = 5;

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
/// Eight batches keep two compression threads and the pack thread busy: a 110,000-file
/// pull took as long with 8 MiB as with 32 MiB, and each backup of a daemon holds its own.
pub const IN_FLIGHT_BYTES: u64 = 8 * 1024 * 1024;

/// What each queued blob counts against that budget beyond its size.
pub const IN_FLIGHT_BLOB_OVERHEAD: u64 = 512;

/// Written packs a writer lets wait for their fsync before it stops packing more.
pub const PACKS_AWAITING_SYNC: usize = 2;

/// A writer pins the stored chunks it reuses in one transaction per this many chunks or
/// bytes, keeping their bytes until then in case GC freed one meanwhile.
pub const TENTATIVE_REUSE_CHUNKS: usize = 1024;
pub const TENTATIVE_REUSE_BYTES: usize = 16 * 1024 * 1024;

/// Entries of the base snapshot's directories a writer keeps decoded (more when one
/// directory alone is larger). Past it the cache starts afresh: a backup visits directories
/// in tree order, so it rarely returns to one it has left, and a whole base tree in memory
/// cost ~170 bytes a file.
pub const BASE_CACHE_ENTRIES: usize = 16 * 1024;

/// How often a writer waiting for room in that budget indexes packs that became durable.
pub const IN_FLIGHT_POLL_MS: u64 = 5;

/// How long `repair` waits for the store lock before calling the store busy, and how often it
/// tries. A holder can be transient: a child some process forked holds copies of that
/// process's descriptors until it execs.
pub const EXCLUSIVE_LOCK_PATIENCE_MS: u64 = 2_000;
pub const EXCLUSIVE_LOCK_RETRY_MS: u64 = 20;

/// Export leaves a hole for an all-zero chunk at least this long.
pub const SPARSE_MIN_HOLE: usize = 64 * 1024;

/// Export to a folder walks the snapshot on one thread, making folders, symlinks and special
/// files and setting each file's owner, mode and times, while this many threads create
/// regular files and read, verify and write their content (creating inodes is most of an
/// export's time on ext4, and runs in parallel). The walk runs at most `EXPORT_FILES_AHEAD`
/// files ahead; each file stays open until its metadata is set, so about twice that many
/// descriptors at most.
pub const EXPORT_CONTENT_THREADS: usize = 2;
pub const EXPORT_FILES_AHEAD: usize = 64;

/// Export to tar buffers this much output before writing it.
pub const EXPORT_TAR_BUFFER: usize = 1024 * 1024;

/// Pack files one reader (an export, a file reader) keeps open: consecutive chunks of a
/// snapshot mostly come from the same few packs, and opening the pack again for every chunk
/// was a third of an export's system calls. Deleted packs stay allocated while held, so few.
pub const PACK_FILES_KEPT_OPEN: usize = 4;

/// Content readers' scratch (a zstd context, the stored and plaintext buffers of a chunk)
/// the store keeps between readers: a restore opens one reader per file, an export one
/// per content thread. A buffer grown past `READ_SCRATCH_KEPT_BYTES` (a chunk larger than
/// the default maximum) is dropped rather than kept for the handle's lifetime.
pub const READ_SCRATCH_POOLED: usize = 4;
pub const READ_SCRATCH_KEPT_BYTES: usize = DEFAULT_CHUNK_MAX as usize;

/// SQLite: how long a writer waits for another process's transaction.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 120_000;

/// SQLite page cache, in KiB, of a store's own connection: chunk existence probes, pins and
/// snapshot rows. Probes are by random id, so beyond the b-tree's interior pages a larger
/// cache buys few hits.
pub const SQLITE_CACHE_KIB: i64 = 8 * 1024;

/// SQLite page cache, in KiB, of the connection a writer's sync thread indexes packs with.
/// It only inserts, one pack per transaction, in random key order, so its cache filled to
/// whatever it was allowed; past this, dirty pages spill to the WAL before the commit. On a
/// 110,001-file pull (benches/pull-memory.sh, medians of 8 runs) 8 MiB here and 2 MiB
/// there took as long as 32 MiB each (4.4 s against 4.3 s) and peaked 11 MiB lower (68.5
/// against 79 MiB RSS); 8 MiB for both peaked at 77 MiB.
pub const SQLITE_INDEXER_CACHE_KIB: i64 = 2 * 1024;

/// SQLite memory the whole process may use before page caches stop growing (SQLite's soft
/// heap limit, shared by every connection of every store open in the process): a daemon
/// running several backups keeps one budget of cached index pages, not one per backup.
/// One backup uses at most the two caches above and their statements' memory.
pub const SQLITE_SOFT_HEAP_LIMIT_BYTES: i64 = 32 * 1024 * 1024;

/// GC: a pack whose dead bytes reach this fraction (in percent) is repacked.
pub const REPACK_DEAD_PERCENT: u64 = 30;

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

/// A test hook, not an operator setting: names a file whose time replaces the system clock
/// for snapshot times, snapshot names and retention (see `clock`).
pub const CLOCK_FILE_ENV: &str = "TURKU_CLOCK_FILE";

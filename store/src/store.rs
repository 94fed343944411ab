//! Opening and initialising a store, and the read side every other module builds on.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::error::{IoContext, Result, StoreError};
use crate::format::id::Id;
use crate::format::pack::{self, pack_path, BlobLocation};
use crate::format::tree::{self, TreeEntry, TreeNode};
use crate::format::*;
use crate::index;
use crate::tuning::*;

/// Parameters fixed when a store is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub zstd_level: i32,
    pub compression: CompressionMode,
}

/// When a writer compresses new blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionMode {
    /// Every blob is compressed before it is written, however long the backup waits.
    Inline,
    /// Compression takes the CPU the transfer leaves; blobs it cannot keep up with are
    /// written raw and compressed by a later `gc`. The backup window stays short.
    #[default]
    Adaptive,
    /// Blobs are written raw and `gc` compresses them.
    Deferred,
}

impl CompressionMode {
    pub const ALL: [CompressionMode; 3] = [
        CompressionMode::Inline,
        CompressionMode::Adaptive,
        CompressionMode::Deferred,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CompressionMode::Inline => "inline",
            CompressionMode::Adaptive => "adaptive",
            CompressionMode::Deferred => "deferred",
        }
    }
}

impl std::fmt::Display for CompressionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CompressionMode {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        CompressionMode::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = CompressionMode::ALL.iter().map(|m| m.name()).collect();
                StoreError::Config(format!(
                    "compression mode `{s}` is not one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_min: DEFAULT_CHUNK_MIN,
            chunk_avg: DEFAULT_CHUNK_AVG,
            chunk_max: DEFAULT_CHUNK_MAX,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            compression: CompressionMode::default(),
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<()> {
        let in_range = |v: u32, (lo, hi): (u32, u32), what: &str| {
            if v < lo || v > hi {
                Err(StoreError::Config(format!(
                    "{what} {v} outside {lo}..={hi}"
                )))
            } else {
                Ok(())
            }
        };
        in_range(self.chunk_min, CHUNK_MIN_RANGE, "chunk minimum")?;
        in_range(self.chunk_avg, CHUNK_AVG_RANGE, "chunk average")?;
        in_range(self.chunk_max, CHUNK_MAX_RANGE, "chunk maximum")?;
        if !(self.chunk_min < self.chunk_avg && self.chunk_avg < self.chunk_max) {
            return Err(StoreError::Config(
                "chunk sizes must satisfy min < avg < max".into(),
            ));
        }
        if !self.chunk_avg.is_power_of_two() {
            return Err(StoreError::Config(
                "chunk average must be a power of two".into(),
            ));
        }
        if self.zstd_level < ZSTD_LEVEL_RANGE.0 || self.zstd_level > ZSTD_LEVEL_RANGE.1 {
            return Err(StoreError::Config(format!(
                "zstd level {} outside {}..={}",
                self.zstd_level, ZSTD_LEVEL_RANGE.0, ZSTD_LEVEL_RANGE.1
            )));
        }
        Ok(())
    }

    fn encode(&self, store_id: &str) -> String {
        format!(
            "{CONFIG_MAGIC}\nformat = {STORE_FORMAT_VERSION}\nid = {store_id}\nchunk_min = {}\nchunk_avg = {}\nchunk_max = {}\nzstd_level = {}\ncompression = {}\n",
            self.chunk_min,
            self.chunk_avg,
            self.chunk_max,
            self.zstd_level,
            self.compression.name()
        )
    }

    fn decode(text: &str) -> Result<(StoreConfig, String)> {
        let mut lines = text.lines();
        if lines.next() != Some(CONFIG_MAGIC) {
            return Err(StoreError::Config("missing turku-store header".into()));
        }
        let mut values = std::collections::HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once('=') {
                values.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let get = |key: &str| {
            values
                .get(key)
                .ok_or_else(|| StoreError::Config(format!("missing `{key}`")))
        };
        let num = |key: &str| -> Result<i64> {
            get(key)?
                .parse()
                .map_err(|_| StoreError::Config(format!("`{key}` is not a number")))
        };
        if num("format")? != i64::from(STORE_FORMAT_VERSION) {
            return Err(StoreError::Config(format!(
                "store format {} is not supported by this version",
                num("format")?
            )));
        }
        let config = StoreConfig {
            chunk_min: num("chunk_min")? as u32,
            chunk_avg: num("chunk_avg")? as u32,
            chunk_max: num("chunk_max")? as u32,
            zstd_level: num("zstd_level")? as i32,
            // Stores made before the setting existed compressed inline.
            compression: match values.get("compression") {
                Some(mode) => mode.parse()?,
                None => CompressionMode::Inline,
            },
        };
        config.validate()?;
        Ok((config, get("id")?.clone()))
    }
}

/// A zstd decompression context; `path` names the store in the error.
pub(crate) fn new_decompressor(path: &Path) -> Result<zstd::bulk::Decompressor<'static>> {
    zstd::bulk::Decompressor::new().map_err(|e| StoreError::Io {
        op: "create zstd context",
        path: path.to_path_buf(),
        source: e,
    })
}

/// Checks a blob read from pack `pack_name` without keeping its plaintext.
pub(crate) fn check_stored(
    pack_name: &str,
    location: &BlobLocation,
    stored: &[u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> Result<()> {
    pack::check_blob(location, stored, decompressor)
        .map_err(|reason| corrupt_blob(pack_name, location, reason))
}

pub(crate) fn corrupt_blob(pack_name: &str, location: &BlobLocation, reason: &str) -> StoreError {
    StoreError::CorruptBlob {
        id: location.id.to_hex(),
        pack: pack_name.to_string(),
        offset: location.offset,
        reason: reason.to_string(),
    }
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) id: String,
    pub(crate) config: StoreConfig,
    db: Mutex<Connection>,
    decompressor: Mutex<zstd::bulk::Decompressor<'static>>,
    /// Content readers' buffers and decompression contexts, handed back when a reader is
    /// done: a restore opens a reader per file, and a fresh zstd context and fresh buffers
    /// per file cost allocations and page faults (see `read::chunks`).
    pub(crate) read_scratch: Mutex<Vec<crate::read::chunks::ReadScratch>>,
    // Held for the handle's lifetime: shared by readers and writers, exclusive for repair.
    _lock: File,
}

/// Pack files a reader keeps open between blobs, the most recently used last. Owned by one
/// reader for its lifetime, never by the store: a pack GC deletes must not stay allocated
/// because a long-lived handle still holds it open.
#[derive(Default)]
pub(crate) struct PackFiles {
    open: Vec<(String, File)>,
}

impl PackFiles {
    pub(crate) fn open(&mut self, packs_dir: &Path, name: &str) -> Result<&File> {
        match self.open.iter().position(|(n, _)| n == name) {
            Some(i) => {
                let found = self.open.remove(i);
                self.open.push(found);
            }
            None => {
                let path = pack_path(packs_dir, name);
                let file = File::open(&path).io_ctx("open pack", &path)?;
                if self.open.len() >= PACK_FILES_KEPT_OPEN {
                    self.open.remove(0);
                }
                self.open.push((name.to_string(), file));
            }
        }
        match self.open.last() {
            Some((_, file)) => Ok(file),
            None => Err(StoreError::MissingBlob(name.to_string())),
        }
    }

    pub(crate) fn forget(&mut self, name: &str) {
        self.open.retain(|(n, _)| n != name);
    }
}

/// A handle on a store directory. Cheap to clone; usable from several threads.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// How `open` takes the store lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

impl Store {
    /// Creates a new store at `path` (an empty or missing directory).
    pub fn init(path: &Path, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        fs::create_dir_all(path).io_ctx("create store folder", path)?;
        let config_path = path.join(CONFIG_FILE);
        if config_path.exists() {
            return Err(StoreError::AlreadyExists(path.to_path_buf()));
        }
        for dir in [PACKS_DIR, SNAPSHOTS_DIR, TMP_DIR] {
            let d = path.join(dir);
            fs::create_dir_all(&d).io_ctx("create folder", &d)?;
        }
        let store_id = hex::encode(rand::random::<[u8; 16]>());
        let tmp = path.join(format!("{CONFIG_FILE}.tmp"));
        {
            let mut f = File::create(&tmp).io_ctx("write config", &tmp)?;
            f.write_all(config.encode(&store_id).as_bytes())
                .io_ctx("write config", &tmp)?;
            f.sync_all().io_ctx("fsync config", &tmp)?;
        }
        index::create(&path.join(INDEX_FILE))?;
        fs::rename(&tmp, &config_path).io_ctx("rename config", &config_path)?;
        crate::fsutil::sync_dir(path)?;
        Store::open(path)
    }

    /// Opens an existing store for reading and writing snapshots.
    pub fn open(path: &Path) -> Result<Store> {
        let (config, id, lock) = Self::lock_store(path, LockMode::Shared)?;
        let index_path = path.join(INDEX_FILE);
        // Only `init` and `repair` create an index: an empty one in place of a lost one would
        // show an empty store, and `gc` would then take every pack for an orphan.
        if !index_path.exists() {
            return Err(StoreError::IndexMissing(index_path));
        }
        // On a full disk SQLite cannot even map its shared memory: the space reserve makes
        // room, so that `forget` and `gc` can run and free more.
        let conn = match index::open(&index_path) {
            Err(e) if e.is_disk_full() && crate::space::release_reserve(path) => {
                index::open(&index_path)?
            }
            opened => opened?,
        };
        Self::assemble(path, config, id, conn, lock)
    }

    /// Reads the config and takes the store lock; returns the lock file, which holds the
    /// lock until it (and every duplicate of its descriptor) is closed.
    pub(crate) fn lock_store(path: &Path, mode: LockMode) -> Result<(StoreConfig, String, File)> {
        let config_path = path.join(CONFIG_FILE);
        let text = match fs::read_to_string(&config_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore(path.to_path_buf()))
            }
            Err(e) => return Err(e).io_ctx("read config", config_path),
        };
        let (config, id) = StoreConfig::decode(&text)?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .io_ctx("open lock", &lock_path)?;
        let locked = match mode {
            LockMode::Shared => lock.try_lock_shared(),
            LockMode::Exclusive => {
                let patience = std::time::Duration::from_millis(EXCLUSIVE_LOCK_PATIENCE_MS);
                let started = std::time::Instant::now();
                loop {
                    match lock.try_lock() {
                        Err(_) if started.elapsed() < patience => std::thread::sleep(
                            std::time::Duration::from_millis(EXCLUSIVE_LOCK_RETRY_MS),
                        ),
                        result => break result,
                    }
                }
            }
        };
        if locked.is_err() {
            return Err(StoreError::Busy(match mode {
                LockMode::Shared => "a repair is running on this store".into(),
                LockMode::Exclusive => {
                    "other processes are using the store (stop backups first)".into()
                }
            }));
        }
        Ok((config, id, lock))
    }

    /// A handle on the store at `path` reading and writing the index through `conn` (which
    /// `repair` points at the index it is building), holding `lock`.
    pub(crate) fn assemble(
        path: &Path,
        config: StoreConfig,
        id: String,
        conn: Connection,
        lock: File,
    ) -> Result<Store> {
        let decompressor = new_decompressor(path)?;
        Ok(Store {
            inner: Arc::new(Inner {
                root: path.to_path_buf(),
                id,
                config,
                db: Mutex::new(conn),
                decompressor: Mutex::new(decompressor),
                read_scratch: Mutex::new(Vec::new()),
                _lock: lock,
            }),
        })
    }

    /// Closes this handle (it must be the last clone) and returns its index connection.
    pub(crate) fn into_index_connection(self) -> Result<Connection> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Ok(inner.db.into_inner().unwrap_or_else(|p| p.into_inner())),
            Err(_) => Err(StoreError::Busy(
                "the store handle is still shared within this process".into(),
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn config(&self) -> StoreConfig {
        self.inner.config
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection cannot leave SQLite inconsistent (transactions
        // roll back on drop), so a poisoned lock is still safe to use.
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of its own to the index, for a thread that writes while this handle's
    /// connection serves lookups (WAL lets them proceed together). It only inserts, so it
    /// keeps a smaller page cache.
    pub(crate) fn open_index_connection(&self) -> Result<Connection> {
        let conn = index::open(&self.inner.root.join(INDEX_FILE))?;
        conn.pragma_update(None, "cache_size", -SQLITE_INDEXER_CACHE_KIB)?;
        Ok(conn)
    }

    pub(crate) fn packs_dir(&self) -> PathBuf {
        self.inner.root.join(PACKS_DIR)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join(TMP_DIR)
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.inner.root.join(SNAPSHOTS_DIR)
    }

    /// Reads stored bytes of a blob from its pack.
    pub(crate) fn read_stored(&self, pack_name: &str, location: &BlobLocation) -> Result<Vec<u8>> {
        let path = pack_path(&self.packs_dir(), pack_name);
        let file = File::open(&path).io_ctx("open pack", &path)?;
        let mut buf = vec![0u8; location.stored_len as usize];
        file.read_exact_at(&mut buf, location.offset)
            .io_ctx("read pack", &path)?;
        Ok(buf)
    }

    pub(crate) fn decode_stored(
        &self,
        pack_name: &str,
        location: &BlobLocation,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let mut d = self
            .inner
            .decompressor
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pack::decode_blob(location, stored, &mut d)
            .map_err(|reason| corrupt_blob(pack_name, location, reason))
    }

    /// Reads a blob and checks its hash. Retries once through the index if GC moved it.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        self.read_blob_with(id, &mut PackFiles::default())
    }

    /// [`Store::read_blob`] reading packs through `packs`, which keeps the last packs it
    /// opened: a reader going through many blobs of the same few packs (an export) opens
    /// each once instead of once a blob. A raw blob's bytes are returned as read, not copied.
    pub(crate) fn read_blob_with(&self, id: &Id, packs: &mut PackFiles) -> Result<Vec<u8>> {
        let mut last_error = None;
        for _ in 0..2 {
            let found = index::find_blob(&self.db(), id)?;
            let Some(blob) = found else {
                return Err(StoreError::MissingBlob(id.to_hex()));
            };
            let read = packs
                .open(&self.packs_dir(), &blob.pack_name)
                .and_then(|file| {
                    let mut buf = vec![0u8; blob.location.stored_len as usize];
                    file.read_exact_at(&mut buf, blob.location.offset)
                        .io_ctx("read pack", pack_path(&self.packs_dir(), &blob.pack_name))?;
                    Ok(buf)
                });
            match read {
                Ok(stored) => return self.decode_owned(&blob.pack_name, &blob.location, stored),
                Err(e) => {
                    // A pack GC replaced since we opened it: look the blob up again, afresh.
                    packs.forget(&blob.pack_name);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| StoreError::MissingBlob(id.to_hex())))
    }

    /// [`Store::decode_stored`] taking the stored bytes, which a raw blob returns as they
    /// are once checked.
    fn decode_owned(
        &self,
        pack_name: &str,
        location: &BlobLocation,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>> {
        if !matches!(
            location.compression,
            COMPRESSION_NONE | COMPRESSION_DEFERRED
        ) {
            return self.decode_stored(pack_name, location, &stored);
        }
        let mut d = self
            .inner
            .decompressor
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pack::check_blob(location, &stored, &mut d)
            .map_err(|reason| corrupt_blob(pack_name, location, reason))?;
        Ok(stored)
    }

    /// Decodes one tree blob (a leaf or a split node).
    pub(crate) fn read_tree_node(&self, id: &Id) -> Result<TreeNode> {
        let bytes = self.read_blob(id)?;
        tree::decode(&bytes).map_err(|error| StoreError::CorruptTree {
            id: id.to_hex(),
            error,
        })
    }

    /// All entries of a directory tree, in name order.
    pub fn read_tree(&self, id: &Id) -> Result<Vec<TreeEntry>> {
        match self.read_tree_node(id)? {
            TreeNode::Leaf(entries) => Ok(entries),
            TreeNode::Split(parts) => {
                let mut all = Vec::new();
                for (_, part) in parts {
                    match self.read_tree_node(&part)? {
                        TreeNode::Leaf(entries) => all.extend(entries),
                        TreeNode::Split(_) => {
                            return Err(StoreError::CorruptTree {
                                id: part.to_hex(),
                                error: crate::error::DecodeError {
                                    offset: 0,
                                    reason: "split part is itself split",
                                },
                            })
                        }
                    }
                }
                Ok(all)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer's sync thread only inserts into its own connection, so that one keeps a
    /// small page cache; together a backup's two caches stay a fraction of the memory a
    /// 110,000-file pull may use (32 MiB each made SQLite its largest item).
    #[test]
    fn the_indexing_connection_keeps_a_smaller_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
        let cache_kib = |conn: &Connection| -> i64 {
            -conn
                .pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let own = cache_kib(&store.db());
        let indexer = cache_kib(&store.open_index_connection().unwrap());
        assert_eq!(own, SQLITE_CACHE_KIB);
        assert_eq!(indexer, SQLITE_INDEXER_CACHE_KIB);
        assert!(indexer < own);
        assert!(
            own + indexer <= 16 * 1024,
            "{own} + {indexer} KiB of page cache"
        );
    }

    #[test]
    fn the_compression_mode_round_trips_and_old_configs_compress_inline() {
        for mode in CompressionMode::ALL {
            let config = StoreConfig {
                compression: mode,
                ..StoreConfig::default()
            };
            let (decoded, id) = StoreConfig::decode(&config.encode("abc")).unwrap();
            assert_eq!((decoded, id.as_str()), (config, "abc"));
        }
        let text = StoreConfig::default().encode("abc");
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("compression"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (old, _) = StoreConfig::decode(&without).unwrap();
        assert_eq!(old.compression, CompressionMode::Inline);
        let bad = text.replace("compression = adaptive", "compression = sometimes");
        assert!(matches!(
            StoreConfig::decode(&bad),
            Err(StoreError::Config(_))
        ));
    }
}

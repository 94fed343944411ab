use std::path::PathBuf;

/// Why a byte-level decoder rejected its input: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct DecodeError {
    pub offset: usize,
    pub reason: &'static str,
}

/// Every failure the store reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file system holding the store ran out of space (or quota) for `op`.
    #[error("the disk holding {} is full: {op} failed ({source})", path.display())]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index database: {0}")]
    Sqlite(rusqlite::Error),
    #[error("{} is not a turku store (no readable `config`); run `init` first", .0.display())]
    NotAStore(PathBuf),
    /// Only `init` and `repair` create an index, so a lost one stops every other command.
    #[error("the store's index {} is missing or empty: run `repair` to rebuild it from the packs and snapshot records", .0.display())]
    IndexMissing(PathBuf),
    #[error("{} already holds a store", .0.display())]
    AlreadyExists(PathBuf),
    #[error("store config: {0}")]
    Config(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("pack {pack}: {error}")]
    CorruptPack { pack: String, error: DecodeError },
    #[error("blob {id} in pack {pack} at offset {offset}: {reason}")]
    CorruptBlob {
        id: String,
        pack: String,
        offset: u64,
        reason: String,
    },
    #[error("tree {id}: {error}")]
    CorruptTree { id: String, error: DecodeError },
    #[error("snapshot record {}: {reason}", path.display())]
    CorruptSnapshotRecord { path: PathBuf, reason: String },
    #[error("blob {0} is referenced but not in the store")]
    MissingBlob(String),
    #[error("no snapshot {name} for machine {machine} source {source_name}")]
    NoSuchSnapshot {
        machine: String,
        source_name: String,
        name: String,
    },
    #[error("no such path in snapshot: {0}")]
    NoSuchPath(String),
    #[error("{0} is not a directory in the snapshot")]
    NotADirectory(String),
    #[error("{0} is not a regular file in the snapshot")]
    NotAFile(String),
    #[error("the store is busy: {0}")]
    Busy(String),
    #[error(transparent)]
    Clock(#[from] crate::clock::ClockError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// An I/O failure of `op` on `path`; out of space or quota becomes [`StoreError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { op, path, source },
            _ => StoreError::Io { op, path, source },
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            // SQLite maps ENOSPC to SQLITE_FULL, except where it extends the shared-memory
            // file of its write-ahead log, which a full disk fails as IOERR_SHMSIZE.
            rusqlite::Error::SqliteFailure(code, _)
                if code.code == rusqlite::ErrorCode::DiskFull
                    || code.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE =>
            {
                StoreError::DiskFull {
                    op: "write index",
                    path: PathBuf::from(crate::format::INDEX_FILE),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                }
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Attach the operation and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn io_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::io(op, path, source))
    }
}

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
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{} is not a turku store (no readable `config`); run `init` first", .0.display())]
    NotAStore(PathBuf),
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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach the operation and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn io_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

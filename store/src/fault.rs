//! Injected I/O errors, for tests of what a failing disk does to the store.
//!
//! A test arms a fault with [`crate::Store::inject_write_error`]: the `nth` call (from 1)
//! of the named site in that store fails with `errno`, once. Faults are kept per store
//! folder, so tests running in parallel in one process do not see each other's. When none is
//! armed a site costs one relaxed atomic load. The sites:
//! - [`PACK_WRITE`]: appending a blob to a pack under `tmp/`;
//! - [`SNAPSHOT_LOG_WRITE`]: appending a line to the snapshot log: half the line is written,
//!   then the write fails (a torn append, as a full disk or a crash leaves);
//! - [`SNAPSHOT_LOG_TRUNCATE`]: cutting a failed append back off the log;
//! - [`COMMIT_ROW`]: the transaction that inserts a committed snapshot's row;
//! - [`TREE_READ`]: `repair` reading a tree blob from its pack (a read site).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub(crate) const PACK_WRITE: &str = "pack-write";
pub(crate) const SNAPSHOT_LOG_WRITE: &str = "snapshot-log-write";
pub(crate) const SNAPSHOT_LOG_TRUNCATE: &str = "snapshot-log-truncate";
pub(crate) const COMMIT_ROW: &str = "commit-row";
pub(crate) const TREE_READ: &str = "tree-read";
pub(crate) const SITES: [&str; 5] = [
    PACK_WRITE,
    SNAPSHOT_LOG_WRITE,
    SNAPSHOT_LOG_TRUNCATE,
    COMMIT_ROW,
    TREE_READ,
];

struct Fault {
    store: PathBuf,
    site: &'static str,
    /// Calls of the site still to pass before the failing one.
    pass: u64,
    errno: i32,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

pub(crate) fn arm(store: &Path, site: &'static str, nth: u64, errno: i32) {
    let mut faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults.push(Fault {
        store: store.to_path_buf(),
        site,
        pass: nth.saturating_sub(1),
        errno,
    });
    ARMED.store(true, Ordering::Release);
}

/// The injected error for this call of `site` in the store at `store`, if one is due.
pub(crate) fn check(store: Option<&Path>, site: &'static str) -> std::io::Result<()> {
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let Some(store) = store else {
        return Ok(());
    };
    let mut faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(at) = faults
        .iter()
        .position(|f| f.site == site && f.store == store)
    else {
        return Ok(());
    };
    if faults[at].pass > 0 {
        faults[at].pass -= 1;
        return Ok(());
    }
    let fault = faults.swap_remove(at);
    tracing::warn!(
        "injected error {} at {site} in {}",
        fault.errno,
        store.display()
    );
    Err(std::io::Error::from_raw_os_error(fault.errno))
}

use crate::error::{Result, StoreError};
use crate::store::Store;

impl Store {
    /// Arms an injected I/O error (a test seam, see this module): the
    /// `nth` call (from 1) of `site` in this store fails with `errno`, once.
    #[doc(hidden)]
    pub fn inject_write_error(&self, site: &str, nth: u64, errno: i32) -> Result<()> {
        let known = SITES.into_iter().find(|s| *s == site).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "no fault site {site:?} (known: {})",
                SITES.join(", ")
            ))
        })?;
        arm(self.path(), known, nth, errno);
        Ok(())
    }
}

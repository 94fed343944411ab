//! The space reserve: a file of allocated bytes that `forget` and `gc` free on a full disk,
//! so they can always write what making room needs (the index's write-ahead log, a line of
//! the snapshot log) before they delete packs.

use std::fs::{self, OpenOptions};
use std::path::Path;

use crate::error::{Result, StoreError};
use crate::format::RESERVE_FILE;
use crate::tuning::FULL_DISK_RESERVE_BYTES;

/// Makes sure the store's space reserve exists (see `FULL_DISK_RESERVE_BYTES`); fails with
/// [`StoreError::DiskFull`] when there is no room for it.
pub(crate) fn ensure_reserve(store_root: &Path) -> Result<()> {
    let path = store_root.join(RESERVE_FILE);
    if fs::metadata(&path).is_ok_and(|m| m.len() >= FULL_DISK_RESERVE_BYTES) {
        return Ok(());
    }
    let made = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|f| {
            // Allocated, not merely sized: a sparse file would hold nothing back.
            nix::fcntl::posix_fallocate(&f, 0, FULL_DISK_RESERVE_BYTES as libc::off_t)
                .map_err(std::io::Error::from)
        });
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(StoreError::io("reserve space in", path, e));
    }
    Ok(())
}

/// Frees the store's space reserve; returns whether there was one to free.
pub(crate) fn release_reserve(store_root: &Path) -> bool {
    let path = store_root.join(RESERVE_FILE);
    let released = fs::remove_file(&path).is_ok();
    if released {
        tracing::warn!(
            "the disk is full: released the space reserve {}",
            path.display()
        );
    }
    released
}

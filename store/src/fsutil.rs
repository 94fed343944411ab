//! File-system steps every part of the store takes the same way.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{IoContext, Result};

/// Makes a folder's entries (new, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .io_ctx("fsync folder", dir)
}

/// Removes a file; one already gone is no error.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).io_ctx("remove", path),
    }
}

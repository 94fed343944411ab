//! Reading snapshots back: streaming file readers, and exports to a directory or a tar
//! stream. Every chunk read is verified against its id.

use serde::Serialize;

pub(crate) mod chunks;
pub(crate) mod export_dir;
pub(crate) mod export_tar;
pub(crate) mod reader;
pub(crate) mod walk;

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExportStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub specials: u64,
    pub bytes: u64,
    /// Devices (and, without privileges, owners) that could not be restored.
    pub skipped: u64,
}

/// `name` inside the snapshot folder `dir` (both raw path bytes; the root is empty).
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

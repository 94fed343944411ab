//! The storage daemon's wire constants and limits, in one place.

/// Port of an `rsync://` URL that names none.
pub const RSYNC_DEFAULT_PORT: u16 = 873;

/// How many of the peer's messages a failed pull quotes in its error.
pub const MAX_REASONS_SHOWN: usize = 5;

/// Largest password file read: stock reads only a short first line, and a bound keeps a
/// mistaken path (a log, a device) from being read whole.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// Chunk bytes one rsync basis may fetch from the store: this many times the basis and the
/// new file's sizes together, plus `BASIS_FETCH_SLACK`. An in-order reader fetches each
/// chunk once; a sender that jumps between chunks on purpose hits the bound.
pub const BASIS_FETCH_FACTOR: u64 = 4;
pub const BASIS_FETCH_SLACK: u64 = 64 * 1024 * 1024;

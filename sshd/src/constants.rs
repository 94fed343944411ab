//! The storage daemon's wire constants and limits, in one place.

/// Port of an `rsync://` URL that names none.
pub const RSYNC_DEFAULT_PORT: u16 = 873;

/// How many of the peer's messages a failed pull quotes in its error.
pub const MAX_REASONS_SHOWN: usize = 5;

/// Largest password file read: stock reads only a short first line, and a bound keeps a
/// mistaken path (a log, a device) from being read whole.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

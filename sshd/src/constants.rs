//! The storage daemon's wire constants and limits, in one place.

/// Port of an `rsync://` URL that names none.
pub const RSYNC_DEFAULT_PORT: u16 = 873;

/// How many of the peer's messages a failed pull quotes in its error.
pub const MAX_REASONS_SHOWN: usize = 5;

//! The storage daemon's wire constants and limits, in one place.

/// Port of an `rsync://` URL that names none.
pub const RSYNC_DEFAULT_PORT: u16 = 873;

/// How many of the peer's messages a failed pull quotes in its error.
pub const MAX_REASONS_SHOWN: usize = 5;

/// Largest password file read: stock reads only a short first line, and a bound keeps a
/// mistaken path (a log, a device) from being read whole.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// Chunk bytes one rsync basis may fetch from the store, in this many times its size plus
/// `BASIS_SPILL_SLACK`, before it is copied once to a temporary file and read from there:
/// an in-order reader fetches each chunk once; a sender that jumps between chunks would
/// otherwise cost a whole chunk per 4-byte block token.
pub const BASIS_SPILL_FACTOR: u64 = 2;
pub const BASIS_SPILL_SLACK: u64 = 64 * 1024 * 1024;

// The agent's ping request (`ping.rs`).
/// Largest ping request, counting every byte up to and including the terminating `.` line.
/// A real agent sends well under 1 KiB per source.
pub const MAX_PING_REQUEST_BYTES: usize = 1 << 20;
/// Most sources one request may carry credentials for.
pub const MAX_PING_SOURCES: usize = 4096;
/// Longest source name, in characters: the API stores names in a 255-character column.
pub const MAX_SOURCE_NAME_CHARS: usize = 255;
/// Longest machine uuid accepted from the forced command (canonical form is 36).
pub const MAX_MACHINE_UUID_BYTES: usize = 64;
/// Longest per-session rsync username (the agent sends a 36-character uuid4).
pub const MAX_RSYNC_USERNAME_BYTES: usize = 256;
/// Longest per-session rsync password (the agent sends 30 alphanumerics).
pub const MAX_RSYNC_PASSWORD_BYTES: usize = 1024;

//! Typed errors. Decoding errors carry the offending values in fields so callers (and fuzz
//! triage) can tell them apart without parsing messages.

use thiserror::Error;

/// A peer sent bytes that can never become valid, whatever follows. Partial input is never
/// an error: codecs report it as [`crate::Decoded::Incomplete`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("varint lead byte {lead:#04x} announces more bytes than the type holds")]
    VarintOverflow { lead: u8 },
    #[error("{what} length {len} exceeds the limit {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("negative {what}: {value}")]
    Negative { what: &'static str, value: i64 },
    #[error("file index {0} out of range")]
    BadNdx(i64),
    #[error("multiplex frame with tag byte {0} below MPLEX_BASE")]
    BadFrameTag(u8),
    #[error("unexpected multiplexed message tag {0}")]
    UnknownMessage(u8),
    #[error("file mode {0:#o} has an unknown file type")]
    BadMode(u32),
    #[error("file name rejected: {reason}")]
    BadName { reason: &'static str },
    #[error("nanoseconds {0} out of range")]
    BadNsec(u32),
    #[error("hard-link leader index {index} does not name an earlier entry (list has {count})")]
    BadHardLink { index: i64, count: usize },
    #[error("bad sum head: count {count}, block length {blength}, strong length {s2length}, remainder {remainder}")]
    BadSumHead {
        count: i32,
        blength: i32,
        s2length: i32,
        remainder: i32,
    },
    #[error("bad delta token {token} (basis has {count} blocks)")]
    BadToken { token: i32, count: u32 },
    #[error("handshake line is not valid: {0}")]
    BadLine(String),
    #[error("file list holds more than {0} entries")]
    TooManyEntries(usize),
    #[error("vstring length marker {0:#04x} invalid")]
    BadVstring(u8),
    #[error("file list would cost more than {max} bytes of memory (limit max_file_list_bytes)")]
    FileListTooBig { max: u64 },
    #[error("{0}")]
    Other(&'static str),
}

/// Anything that ends a session.
#[derive(Debug, Error)]
pub enum Error {
    #[error("protocol decode error: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("peer speaks protocol {0}, which this client does not support")]
    UnsupportedProtocol(u32),
    #[error("daemon refused: {0}")]
    Daemon(String),
    #[error("daemon requires authentication but no password was given")]
    PasswordRequired,
    #[error("checksum negotiation failed: peer offers {0:?}")]
    ChecksumNegotiation(String),
    #[error("remote rsync reported a fatal error (exit code {code}): {message}")]
    RemoteExit { code: i32, message: String },
    #[error("remote rsync closed the connection after reporting: {message}")]
    ClosedAfterError { message: String },
    #[error("connection closed unexpectedly ({0})")]
    UnexpectedEof(&'static str),
    #[error("file {name:?} failed its whole-file checksum twice")]
    ChecksumMismatch { name: String },
    #[error("receiver sink failed: {0}")]
    Sink(#[source] SinkError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} {value:?} contains a newline, carriage return or NUL, which would break the daemon protocol")]
    BadArgument { what: &'static str, value: String },
    #[error("the sender ended the run without sending {missing} requested file(s) or saying why (first: {first:?}); the transfer is incomplete")]
    Incomplete { missing: u64, first: String },
    #[error("file {name:?} was announced at {announced} bytes but its content passed {max} bytes")]
    RebuiltTooLarge {
        name: String,
        announced: i64,
        max: u64,
    },
    #[error(transparent)]
    Timeout(#[from] Timeout),
    #[error("the receiver's request for file {ndx} is invalid: {reason}")]
    BadRequest { ndx: i64, reason: &'static str },
    #[error("file list entry {index} cannot be sent: {reason}")]
    BadFileList { index: usize, reason: &'static str },
    #[error("filter rule {rule:?} is too modern for protocol {protocol}: below 29 only \"+ \" and \"- \" rules travel")]
    FilterTooModern { rule: String, protocol: u32 },
}

/// Which time bound of [`crate::config::Timeouts`] ended a session, and its length.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    #[error("could not connect to the rsync daemon within {} s", secs(.0))]
    Connect(std::time::Duration),
    #[error("the rsync daemon did not finish its greeting and authentication within {} s", secs(.0))]
    Greeting(std::time::Duration),
    #[error("no data from the rsync daemon for {} s", secs(.0))]
    Idle(std::time::Duration),
    #[error("the pull did not finish within its deadline of {} s", secs(.0))]
    Deadline(std::time::Duration),
}

/// Seconds as given on the command line: whole when whole, else with milliseconds.
fn secs(d: &std::time::Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.3}", d.as_secs_f64())
    }
}

impl Error {
    /// Whether retrying the whole pull later may succeed (network, daemon busy).
    pub fn is_transient(&self) -> bool {
        match self {
            // A stalled peer or tunnel may be back by the next run.
            Error::Io(_) | Error::UnexpectedEof(_) | Error::Timeout(_) => true,
            Error::Daemon(m) => m.contains("max connections"),
            _ => false,
        }
    }
}

/// Errors raised by a caller-supplied sink or basis; kept opaque so the protocol crate does
/// not know the store's error types.
pub type SinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

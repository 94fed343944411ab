//! Role state machines. They consume raw bytes, queue raw bytes to send, and call the
//! caller's [`ReceiveSink`]; they never touch a socket.

pub mod args;
pub mod demux;
pub mod handshake;
mod messages;
pub mod receiver;
pub mod sender;

/// What one step of a role's phase did with the input it had. Both roles (the receiver
/// and the sender) are written as one module per phase, each state's step returning this.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Not enough input is buffered: the machine stays in the state it is in.
    NeedInput,
    /// This state is done; go on in the one given (possibly of the next phase).
    Next(T),
}

use crate::codec::flist::FileEntry;
use crate::error::SinkError;

/// Random-access view of a basis file (the previous version of a file).
pub trait Basis {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether the basis is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `offset`; must fill it completely.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SinkError>;
}

/// An in-memory basis (tests, small files).
impl Basis for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SinkError> {
        let start = usize::try_from(offset)?;
        let src = self
            .get(start..start + buf.len())
            .ok_or("read past the end of the basis")?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What to do with a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryAction {
    /// Request its content (a delta against [`ReceiveSink::basis`] if one is given).
    Transfer,
    /// Unchanged (e.g. same size and mtime as the previous snapshot): request nothing.
    Skip,
}

/// Severity of a text message from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Info,
    Warning,
    /// Non-fatal transfer error (stock counts it toward exit 23).
    ErrorXfer,
    Error,
}

/// The caller's side of a pull. Calls arrive in this order: for every entry, in sorted
/// order, `entry` (and for transferred regular files `basis`); interleaved with that, for each
/// transferred file, `begin_content`, any number of `content`, then `end_content` — or
/// `file_failed`. A file whose checksum fails is ended with `verified = false` and may begin
/// again in the redo phase. Calls never overlap (one `&mut self`).
///
/// Hard-link followers (`HardLink::Follower { first }`, where `first` is the leader's
/// *sorted* index here) are never transferred: link them to the leader's content. A leader
/// may sort after its followers, so link once the run is over. Below protocol 30 groups
/// travel as (dev, ino); they are delivered in the same Leader/Follower form.
///
/// The sink is called from the task driving the connection: a call that blocks for longer
/// than the peer's I/O timeout stalls keep-alives too.
pub trait ReceiveSink {
    type Basis: Basis;

    /// Metadata of entry `ndx`. For regular files the answer decides whether content is
    /// requested; for other kinds it is ignored.
    fn entry(&mut self, ndx: u32, entry: &FileEntry) -> Result<EntryAction, SinkError>;

    /// The basis for a regular file to be transferred, or `None` for a whole-file transfer.
    /// May be called again for the same file (once per pass that needs it) and must return
    /// the same bytes each time.
    fn basis(&mut self, ndx: u32, entry: &FileEntry) -> Result<Option<Self::Basis>, SinkError>;

    /// Reconstructed content of `ndx` starts.
    fn begin_content(&mut self, ndx: u32, entry: &FileEntry) -> Result<(), SinkError>;

    /// The next slice of reconstructed content, in order.
    fn content(&mut self, data: &[u8]) -> Result<(), SinkError>;

    /// Content ended. `verified` is false when the whole-file checksum did not match: the
    /// content must be discarded (a redo may follow).
    fn end_content(&mut self, ndx: u32, entry: &FileEntry, verified: bool)
        -> Result<(), SinkError>;

    /// The sender could not send this file (vanished, unreadable) or it failed twice.
    fn file_failed(&mut self, ndx: u32, entry: &FileEntry, reason: &str) -> Result<(), SinkError> {
        let _ = (ndx, reason);
        tracing::warn!(name = %entry.name_lossy(), reason, "file not received");
        Ok(())
    }

    /// A text message from the peer.
    fn message(&mut self, kind: MessageKind, text: &str) {
        match kind {
            MessageKind::Info => tracing::info!(target: "rsync", "{}", text.trim_end()),
            MessageKind::Warning => tracing::warn!(target: "rsync", "{}", text.trim_end()),
            MessageKind::ErrorXfer | MessageKind::Error => {
                tracing::error!(target: "rsync", "{}", text.trim_end())
            }
        }
    }
}

/// The sender's end-of-run statistics (spec §6.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub total_read: i64,
    pub total_written: i64,
    pub total_size: i64,
    pub flist_buildtime_ms: i64,
    pub flist_xfertime_ms: i64,
}

/// What a finished pull reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Negotiated protocol version.
    pub protocol: u32,
    /// Negotiated transfer checksum name.
    pub checksum: String,
    /// The session's checksum seed as sent by the server.
    pub checksum_seed: i32,
    /// Entries in the file list (after clearing duplicates).
    pub entries: u64,
    /// Regular files whose content was requested (first pass).
    pub files_requested: u64,
    /// Files received and verified.
    pub files_received: u64,
    /// Files the sender could not send or that failed verification twice.
    pub failed: Vec<String>,
    /// Files that needed a redo pass.
    pub redone: u64,
    /// Bytes reconstructed from literal data and from basis blocks.
    pub literal_bytes: u64,
    pub matched_bytes: u64,
    /// Raw bytes read from and written to the connection after the handshake began.
    pub wire_bytes_read: u64,
    pub wire_bytes_written: u64,
    /// io_error bits from the list end marker and `MSG_IO_ERROR`.
    pub io_error: u32,
    /// Warning and error texts received, up to `Limits::max_messages_kept` and
    /// `max_message_bytes_kept` (the sink saw the same ones).
    pub warnings: Vec<String>,
    /// Text messages past those bounds: counted, neither kept nor passed to the sink.
    pub messages_dropped: u64,
    pub sender_stats: SenderStats,
    /// The stock exit code this run corresponds to: 0, 23 (partial) or 24 (vanished).
    pub exit_code: i32,
    /// Daemon MOTD lines, up to `Limits::max_motd_lines` and `max_motd_bytes`.
    pub motd: Vec<String>,
    /// MOTD lines past those bounds, read and dropped.
    pub motd_dropped: u64,
}

impl Outcome {
    /// Success as the original Turku counts it: 0, or 24 (source files vanished).
    pub fn is_success(&self) -> bool {
        self.exit_code == crate::constants::RERR_OK
            || self.exit_code == crate::constants::RERR_VANISHED
    }
}

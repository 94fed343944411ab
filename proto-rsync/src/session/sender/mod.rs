//! The client sender (spec §6, §10b): a push into a daemon's writable module, e.g. a
//! restore. One module per phase, in the order a run goes through them:
//!
//! 1. [`flist`]: the filter list (only with `--delete`), then the caller's file list
//!    encoded in the caller's order, its end marker and (without `--numeric-ids`) the id
//!    lists. Both sides then sort it; every later index is a sorted position.
//! 2. [`transfer`]: the generator's requests (index, item flags, sum head, block sums),
//!    each answered with the file's content as tokens (literal runs of at most 32 KiB and
//!    copies of the receiver's blocks found by [`matcher`]) and its whole-file checksum;
//!    the `NDX_DONE` echoes that close phases 0 and 1.
//! 3. [`finish`]: our final `NDX_DONE` and the receiver's goodbye. A client sender writes
//!    no statistics.
//!
//! Sans-io like the receiver: [`ClientSender::feed`] raw input, [`ClientSender::step`],
//! send what [`ClientSender::take_output`] returns. Content comes through [`SendSource`].
//! Protocols 27–32. Below 30 (stock 2.6.x, openrsync) a client's output is a plain byte
//! stream: no out-of-band messages go out (no `MSG_NO_SEND`: a file we cannot open simply
//! gets no reply, as stock does; our errors stay in our log and outcome), no keep-alives;
//! indexes are plain int32s, hard links travel as dev/ino pairs, the list's io_error as an
//! int32 after it; below 29 requests carry no item flags.

pub mod dir;
pub mod finish;
pub mod flist;
pub mod matcher;
pub mod output;
pub mod transfer;

use super::demux::{Demux, InMsg};
use super::handshake::Negotiated;
use super::messages::{Handled, MessageTally, PeerMessages};
use super::{MessageKind, Step};
use crate::codec::flist::FileEntry;
use crate::codec::mux::{encode_data, encode_frame, MsgTag};
use crate::codec::ndx::NdxCodec;
use crate::codec::prim::{run, Decoded};
use crate::constants::*;
use crate::error::{DecodeError, Error, SinkError};
use crate::limits::Limits;

/// Stop producing output while this much is unsent: the driver reads while it writes, so
/// a peer blocked writing to us is never kept waiting on a full buffer of ours.
pub(crate) const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Content bytes (read and matched) one `step` may process before handing control back,
/// so the driver moves I/O and keep-alives while a large file streams.
pub(crate) const STEP_WORK_BUDGET: u64 = 8 * 1024 * 1024;
/// Stop reading from the connection while this much received data is unprocessed: the
/// receiver's generator pipelines requests (block sums included) without waiting for our
/// replies, and a restore onto a large older tree would otherwise pile them all up here.
/// Every phase consumes its input a record at a time, so this never stalls the run.
pub(crate) const INPUT_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Largest read of a file's content at once.
pub const CONTENT_READ_SIZE: usize = 256 * 1024;
/// Lowest protocol the sender speaks.
pub const MIN_SENDER_PROTOCOL: u32 = MIN_SUPPORTED_SESSION_PROTOCOL;

/// One regular file's content, read sequentially. `read` returns 0 at the end; a file may
/// turn out shorter or longer than listed, which the protocol carries (the receiver
/// keeps what arrives).
pub trait FileContent {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError>;

    /// Content the source already holds in memory, from its current position on (empty
    /// at the end), for the sender to frame from where it is rather than have it copied
    /// into the sender's buffer first; `None` (the default) when the source only copies
    /// out through [`Self::read`]. The sender takes what it wants and [`Self::consume`]s
    /// that much. Used for whole-file transfers; matching against block sums reads.
    fn peek(&mut self) -> Option<Result<&[u8], SinkError>> {
        None
    }

    /// Advances past `n` bytes of what [`Self::peek`] showed.
    fn consume(&mut self, _n: usize) {}
}

/// In-memory content (tests, small files).
impl FileContent for std::io::Cursor<Vec<u8>> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError> {
        Ok(std::io::Read::read(self, buf)?)
    }
}

/// The caller's side of a push: the content of the files the receiver asks for.
///
/// `ndx` is the entry's position in the list as given to [`ClientSender::new`] (the
/// caller's order, not the sorted one). A file that cannot be opened is reported to the
/// receiver the way stock does (`MSG_NO_SEND`, an error text, exit 23, or 24 when the
/// error is an `std::io::Error` of kind `NotFound`: the file vanished); the run goes on.
pub trait SendSource {
    type Content: FileContent;

    fn open(&mut self, ndx: u32, entry: &FileEntry) -> Result<Self::Content, SinkError>;

    /// io_error bits (`IOERR_*`) of the listing: with `IOERR_GENERAL` a receiver skips
    /// deletions, since the list may be incomplete.
    fn list_io_error(&self) -> u32 {
        0
    }

    /// Called after each file's reply is queued and at the end of the run.
    fn progress(&mut self, progress: &PushProgress) {
        let _ = progress;
    }

    /// A text message from the peer (a receiver's error about one file, `--delete`'s
    /// deletions, daemon warnings).
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

/// Options of the sending side.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// `-H`: hard-link groups travel as leader + followers.
    pub hard_links: bool,
    /// `--numeric-ids`: no uid/gid name lists. Without it the lists are built from the
    /// entries' `user_name`/`group_name`.
    pub numeric_ids: bool,
    /// `--delete` was passed: the receiver reads a filter list, which we then send.
    pub delete: bool,
    /// Filter rules sent with `--delete` (e.g. `"P keep/"` to protect receiver files).
    pub filter_rules: Vec<String>,
    pub limits: Limits,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            hard_links: false,
            numeric_ids: true,
            delete: false,
            filter_rules: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// Counters a caller may show while a push runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushProgress {
    /// Entries in the list.
    pub entries: u64,
    /// Content requests received (a redo counts again).
    pub files_requested: u64,
    /// Files whose content was sent in full.
    pub files_sent: u64,
    /// Content bytes sent as literal data, and found in the receiver's copy.
    pub literal_bytes: u64,
    pub matched_bytes: u64,
    /// Raw bytes taken from and queued to the connection by the machine (the driver adds
    /// the handshake's in the final outcome).
    pub wire_bytes_read: u64,
    pub wire_bytes_written: u64,
}

/// Deletion counts the receiver reports with `--delete` (protocol 31+).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteStats {
    pub files: i32,
    pub dirs: i32,
    pub symlinks: i32,
    pub devices: i32,
    pub specials: i32,
}

/// What a finished push reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOutcome {
    pub protocol: u32,
    pub checksum: String,
    pub checksum_seed: i32,
    pub progress: PushProgress,
    /// Files that could not be opened or read (named as in the list).
    pub failed: Vec<String>,
    /// io_error bits: ours (listing, opening, reading) and the receiver's `MSG_IO_ERROR`.
    pub io_error: u32,
    /// Warning and error texts received, within `Limits::max_messages_kept`.
    pub warnings: Vec<String>,
    pub messages_dropped: u64,
    /// `MSG_DELETED` notices received (one per entry the receiver deleted).
    pub deleted: u64,
    pub delete_stats: Option<DeleteStats>,
    /// 0, 23 (some files failed) or 24 (some vanished), as stock would exit.
    pub exit_code: i32,
    pub motd: Vec<String>,
}

impl PushOutcome {
    /// Everything arrived (0), or only files that vanished since listing are missing (24).
    pub fn is_success(&self) -> bool {
        self.exit_code == RERR_OK || self.exit_code == RERR_VANISHED
    }
}

/// Status after a [`ClientSender::step`].
#[derive(Debug)]
pub enum Status {
    /// Move I/O (send pending output, feed input), then step again.
    NeedInput,
    /// The run is over; send remaining output, then close.
    Finished(Box<PushOutcome>),
}

/// The list as sent: entries in the caller's order plus the sorted view the receiver's
/// indexes refer to.
#[derive(Debug)]
pub(crate) struct SentList {
    pub(crate) entries: Vec<FileEntry>,
    /// `sorted[i]` = position in `entries` of sorted index `i`.
    pub(crate) sorted: Vec<u32>,
}

impl SentList {
    /// The entry a receiver's index names, with its position in the caller's list.
    pub(crate) fn by_ndx(&self, ndx: u32) -> Option<(u32, &FileEntry)> {
        let w = *self.sorted.get(ndx as usize)?;
        Some((w, self.entries.get(w as usize)?))
    }
}

/// State shared by the phases: buffers, codecs, the list, counters.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) neg: Negotiated,
    pub(crate) opts: SenderOptions,
    demux: Demux,
    data: Vec<u8>,
    data_pos: usize,
    msgs: Vec<InMsg>,
    out: Vec<u8>,
    pending: Vec<u8>,
    pub(crate) ndx_in: NdxCodec,
    pub(crate) ndx_out: NdxCodec,
    pub(crate) list: SentList,
    pub(crate) outcome: PushOutcome,
    pub(crate) work_left: u64,
    /// What the receiver's messages have told us.
    peer: PeerMessages,
}

impl Ctx {
    /// Queues protocol data (multiplexed when flushed).
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= IO_BUFFER_SIZE {
            self.flush_pending();
        }
    }

    /// Room for protocol data, flushed by the caller through [`Self::sent`].
    pub(crate) fn pending_mut(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Flushes after writing through [`Self::pending_mut`].
    pub(crate) fn sent(&mut self) {
        if self.pending.len() >= IO_BUFFER_SIZE {
            self.flush_pending();
        }
    }

    pub(crate) fn send_ndx(&mut self, ndx: i32) {
        let mut b = Vec::with_capacity(6);
        self.ndx_out.encode(ndx, &mut b);
        self.send(&b);
    }

    /// Whether our output is multiplexed: from protocol 30 on (spec §3.6). Below, it is
    /// the bare protocol stream and nothing can travel out of band.
    pub(crate) fn multiplexed(&self) -> bool {
        self.neg.protocol >= 30
    }

    /// An out-of-band message, after the data queued before it. Dropped below protocol
    /// 30, where the stream has no room for one (stock keeps such texts local too).
    pub(crate) fn send_msg(&mut self, tag: MsgTag, payload: &[u8]) {
        if !self.multiplexed() {
            return;
        }
        self.flush_pending();
        encode_frame(tag, payload, &mut self.out);
    }

    pub(crate) fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            if self.multiplexed() {
                encode_data(&self.pending, &mut self.out);
            } else {
                self.out.extend_from_slice(&self.pending);
            }
            self.pending.clear();
        }
    }

    /// Runs `f` with a writer that frames protocol data straight into the output, after
    /// what is already queued (bulk data: literal runs go out without a staging copy).
    pub(crate) fn with_data_writer<T>(
        &mut self,
        f: impl FnOnce(&mut output::DataWriter<'_>) -> T,
    ) -> T {
        self.flush_pending();
        let multiplexed = self.multiplexed();
        f(&mut output::DataWriter::new(&mut self.out, multiplexed))
    }

    pub(crate) fn output_full(&self) -> bool {
        self.out.len() + self.pending.len() >= OUTPUT_HIGH_WATER
    }

    /// Whether a phase must stop producing for now (output full or budget spent).
    pub(crate) fn must_pause(&self) -> bool {
        self.output_full() || self.work_left == 0
    }

    pub(crate) fn spend(&mut self, bytes: u64) {
        self.work_left = self.work_left.saturating_sub(bytes);
    }

    pub(crate) fn avail(&self) -> &[u8] {
        &self.data[self.data_pos..]
    }

    /// Decodes with `f` from the input; `None` when more input is needed.
    pub(crate) fn take<T>(
        &mut self,
        f: impl FnOnce(&[u8]) -> Result<Decoded<T>, DecodeError>,
    ) -> Result<Option<T>, Error> {
        match f(&self.data[self.data_pos..])? {
            Decoded::Complete { value, consumed } => {
                self.data_pos += consumed;
                Ok(Some(value))
            }
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.data_pos += n;
    }

    /// Reads the next file index, taking any `NDX_DEL_STATS` report (index + five
    /// varints, 31+) on the way: it may come wherever the receiver's generator writes an
    /// index. `None` when more input is needed.
    pub(crate) fn read_ndx(&mut self) -> Result<Option<i32>, Error> {
        loop {
            let mut codec = self.ndx_in.clone();
            let (ndx, used) = match codec.decode(self.avail())? {
                Decoded::Complete { value, consumed } => (value, consumed),
                Decoded::Incomplete { .. } => return Ok(None),
            };
            // Deletion stats exist from 31 on; below, -3 is just a bad index.
            if ndx != NDX_DEL_STATS || self.neg.protocol < 31 {
                self.ndx_in = codec;
                self.consume(used);
                return Ok(Some(ndx));
            }
            let stats = run(&self.avail()[used..], |c| {
                let mut v = [0i32; 5];
                for x in &mut v {
                    *x = c.varint()?;
                }
                Ok(v)
            })?;
            let Decoded::Complete { value: v, consumed } = stats else {
                return Ok(None);
            };
            self.ndx_in = codec;
            self.consume(used + consumed);
            self.outcome.delete_stats = Some(DeleteStats {
                files: v[0],
                dirs: v[1],
                symlinks: v[2],
                devices: v[3],
                specials: v[4],
            });
        }
    }

    pub(crate) fn progress(&self) -> PushProgress {
        self.outcome.progress
    }

    fn compact_input(&mut self) {
        if self.data_pos > 0 {
            self.data.drain(..self.data_pos);
            self.data_pos = 0;
        }
    }

    /// A problem with one file of ours: an error text to the receiver (stock's wording
    /// starts with the operation), the io_error bit, the file named in the outcome.
    pub(crate) fn file_error(&mut self, name: &str, text: String, vanished: bool) {
        let tag = if vanished {
            MsgTag::Warning
        } else {
            MsgTag::ErrorXfer
        };
        let mut payload = text.clone().into_bytes();
        payload.truncate(self.opts.limits.max_line);
        payload.push(b'\n');
        self.send_msg(tag, &payload);
        self.outcome.io_error |= if vanished {
            IOERR_VANISHED
        } else {
            IOERR_GENERAL
        };
        tracing::warn!(name, "{text}");
        if self.outcome.failed.len() < self.opts.limits.max_messages_kept {
            self.outcome.failed.push(name.to_owned());
        }
    }

    fn handle_messages<S: SendSource>(&mut self, source: &mut S) -> Result<(), Error> {
        for m in std::mem::take(&mut self.msgs) {
            let tally = MessageTally {
                io_error: &mut self.outcome.io_error,
                warnings: &mut self.outcome.warnings,
                dropped: &mut self.outcome.messages_dropped,
            };
            match self
                .peer
                .take(m, self.neg.protocol, &self.opts.limits, tally)
            {
                Handled::Done => {}
                Handled::Show(kind, text) => source.message(kind, &text),
                Handled::Exit { acknowledge, error } => {
                    if acknowledge {
                        self.send_msg(MsgTag::ErrorExit, &[]);
                    }
                    return Err(error);
                }
                Handled::Role(InMsg::Deleted(_)) => self.outcome.deleted += 1,
                // Only a sender sends MSG_NO_SEND; stock ignores SUCCESS without
                // --remove-source-files. Neither changes what we send.
                Handled::Role(_) => {}
            }
        }
        Ok(())
    }
}

/// The sender's phases.
#[derive(Debug)]
pub(crate) enum State<C> {
    FileList(flist::ListPhase),
    Transfer(transfer::TransferPhase<C>),
    Finish(finish::FinishPhase),
    Finished,
}

/// The client sender machine.
pub struct ClientSender<S: SendSource> {
    ctx: Ctx,
    state: State<S::Content>,
}

impl<S: SendSource> std::fmt::Debug for ClientSender<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSender")
            .field("protocol", &self.ctx.neg.protocol)
            .field("entries", &self.ctx.list.entries.len())
            .finish_non_exhaustive()
    }
}

impl<S: SendSource> ClientSender<S> {
    /// A sender for `entries`, given in walk order: parents before their contents, the
    /// first entry the top directory `.` (as stock sends it; its attributes are applied
    /// to the destination directory itself), hard-link followers naming their leader's
    /// position in this same list (the leader earlier and marked [`HardLink::Leader`]).
    /// `list_io_error` is the listing's io_error (see [`SendSource::list_io_error`]).
    ///
    /// [`HardLink::Leader`]: crate::HardLink::Leader
    pub fn new(
        neg: Negotiated,
        opts: SenderOptions,
        entries: Vec<FileEntry>,
        list_io_error: u32,
    ) -> Result<Self, Error> {
        let p = neg.protocol;
        if p < MIN_SENDER_PROTOCOL {
            return Err(Error::UnsupportedProtocol(p));
        }
        flist::check_filter_rules(&opts, p)?;
        let list = flist::prepare(entries, p, &opts)?;
        let outcome = PushOutcome {
            protocol: p,
            checksum: neg.checksum.name().to_owned(),
            checksum_seed: neg.seed,
            motd: neg.motd.clone(),
            progress: PushProgress {
                entries: list.entries.len() as u64,
                ..PushProgress::default()
            },
            ..PushOutcome::default()
        };
        let mut ctx = Ctx {
            demux: Demux::new(opts.limits.clone()),
            data: Vec::new(),
            data_pos: 0,
            msgs: Vec::new(),
            out: Vec::new(),
            pending: Vec::new(),
            ndx_in: NdxCodec::new(p),
            ndx_out: NdxCodec::new(p),
            list,
            outcome,
            work_left: STEP_WORK_BUDGET,
            peer: PeerMessages::default(),
            neg,
            opts,
        };
        let phase = flist::ListPhase::start(&mut ctx, list_io_error);
        Ok(ClientSender {
            ctx,
            state: State::FileList(phase),
        })
    }

    /// Raw bytes from the connection.
    pub fn feed(&mut self, raw: &[u8]) -> Result<(), Error> {
        self.ctx.outcome.progress.wire_bytes_read += raw.len() as u64;
        self.ctx
            .demux
            .push(raw, &mut self.ctx.data, &mut self.ctx.msgs)?;
        Ok(())
    }

    /// Bytes to send now (multiplexed).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.ctx.flush_pending();
        self.ctx.outcome.progress.wire_bytes_written += self.ctx.out.len() as u64;
        // The next output starts with room for a full round (a step fills up to the high
        // water mark and one content read past it), not grown by doubling from nothing:
        // each doubling copies all that was written so far.
        let room = if self.ctx.out.len() >= OUTPUT_HIGH_WATER / 2 {
            OUTPUT_HIGH_WATER + 2 * CONTENT_READ_SIZE
        } else {
            0
        };
        std::mem::replace(&mut self.ctx.out, Vec::with_capacity(room))
    }

    /// Whether the driver should read more input now: false while enough received data
    /// waits to be processed (see [`Self::step`]); reading resumes as it is used.
    pub fn wants_input(&self) -> bool {
        self.ctx.data.len() - self.ctx.data_pos < INPUT_HIGH_WATER
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.ctx.out.is_empty() || !self.ctx.pending.is_empty()
    }

    /// Queues an empty data frame (stock's keep-alive), once the list is out: before it,
    /// data frames are the list itself. Nothing below protocol 30: no frames go out.
    pub fn keepalive(&mut self) {
        if !self.file_list_done() || !self.ctx.multiplexed() {
            return;
        }
        self.ctx.flush_pending();
        encode_frame(MsgTag::Data, &[], &mut self.ctx.out);
    }

    /// Whether the file list has been queued in full.
    pub fn file_list_done(&self) -> bool {
        !matches!(self.state, State::FileList(_))
    }

    /// Whether [`Self::step`] stopped only because its work budget ran out: call it again
    /// without waiting for input.
    pub fn has_local_work(&self) -> bool {
        let working = match &self.state {
            State::FileList(_) => true,
            State::Transfer(t) => t.is_sending(),
            State::Finish(_) | State::Finished => false,
        };
        working && !self.ctx.output_full()
    }

    /// The I/O timeout the daemon announced (`MSG_IO_TIMEOUT`), in seconds.
    pub fn peer_timeout(&self) -> Option<u32> {
        self.ctx.peer.timeout()
    }

    /// The last error text the peer sent: explains an abrupt close.
    pub fn last_error(&self) -> Option<&str> {
        self.ctx.peer.last_error()
    }

    /// Counters so far.
    pub fn progress(&self) -> PushProgress {
        self.ctx.progress()
    }

    /// Processes buffered input and produces output while there is room.
    pub fn step(&mut self, source: &mut S) -> Result<Status, Error> {
        self.ctx.work_left = STEP_WORK_BUDGET;
        loop {
            self.ctx.handle_messages(source)?;
            let next = match &mut self.state {
                State::FileList(s) => s.step(&mut self.ctx)?,
                State::Transfer(s) => s.step(&mut self.ctx, source)?,
                State::Finish(s) => s.step(&mut self.ctx)?,
                State::Finished => Step::NeedInput,
            };
            match next {
                Step::Next(state) => self.state = state,
                Step::NeedInput => break,
            }
        }
        self.ctx.handle_messages(source)?;
        self.ctx.compact_input();
        if let State::Finished = self.state {
            self.ctx.flush_pending();
            let mut o = std::mem::take(&mut self.ctx.outcome);
            o.exit_code = if o.io_error & IOERR_GENERAL != 0 {
                RERR_PARTIAL
            } else if o.io_error & IOERR_VANISHED != 0 {
                RERR_VANISHED
            } else {
                RERR_OK
            };
            source.progress(&o.progress);
            self.ctx.outcome.progress = o.progress;
            return Ok(Status::Finished(Box::new(o)));
        }
        self.ctx.flush_pending();
        Ok(Status::NeedInput)
    }
}

#[cfg(test)]
pub(crate) mod tests;

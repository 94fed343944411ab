//! The client receiver (spec §6, §10a): reads the file list, then runs the generator
//! (requests with block sums) and the receiver (replies, tokens, checksums) side by side.
//!
//! Concurrency without threads: the generator only produces output while less than
//! `OUTPUT_HIGH_WATER` bytes wait to be sent, and input is always consumed whenever it is
//! fed, so a driver that reads and writes concurrently can never deadlock with a peer that
//! is itself blocked writing to us.

use super::demux::{Demux, InMsg};
use super::handshake::Negotiated;
use super::{Basis, EntryAction, MessageKind, Outcome, ReceiveSink, SenderStats};
use crate::checksum::FileHasher;
use crate::codec::flist::{
    decode_id_list, FileEntry, FlistDecoder, FlistItem, FlistOptions, HardLink,
};
use crate::codec::mux::{encode_data, encode_frame, MsgTag};
use crate::codec::ndx::NdxCodec;
use crate::codec::prim::{run, Decoded};
use crate::codec::sums::SumHead;
use crate::codec::token::{decode_token, Token};
use crate::constants::*;
use crate::delta::write_block_signature;
use crate::error::{DecodeError, Error};
use crate::limits::Limits;
use crate::sort::sort_order;
use std::collections::{HashMap, HashSet};

/// Stop generating requests while this much output is unsent.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Local work one `step` may do before handing control back, so the driver can move I/O
/// and send keep-alives while a huge basis is checksummed or a huge list is decided
/// (spec §15): basis bytes checksummed (at least `MIN_WORK_COST` a block, since each
/// block is a read of the basis), plus `MIN_WORK_COST` per entry decided.
const STEP_WORK_BUDGET: u64 = 8 * 1024 * 1024;
/// The least one basis block or one file-list decision counts against the budget.
const MIN_WORK_COST: u64 = 32 * 1024;
/// Largest input chunk the machine asks for at once.
pub const READ_CHUNK: usize = 64 * 1024;

/// Options of the receiving side.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    pub hard_links: bool,
    pub numeric_ids: bool,
    /// Filter rules in rsync syntax (`"- *.tmp"`), sent before the file list.
    pub filter_rules: Vec<String>,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    NotRequested,
    Requested,
    Done,
    Failed,
}

#[derive(Debug)]
enum Rx<B> {
    FileList,
    IdLists {
        uid_done: bool,
    },
    IoErrorPre30,
    ExpectNdx,
    Iflags {
        ndx: u32,
    },
    SumHead {
        ndx: u32,
    },
    Tokens {
        ndx: u32,
        head: SumHead,
        basis: Option<B>,
        hasher: Box<FileHasher>,
        literal: u32,
        /// Bytes copied from the basis by block tokens so far, against `Limits::max_rebuilt`
        /// (literal bytes cost the sender one wire byte each and are not counted).
        rebuilt: u64,
    },
    FileSum {
        ndx: u32,
        sum: Vec<u8>,
    },
    Stats,
    ExtraDoneEcho,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gen {
    /// Waiting for the file list.
    Idle,
    /// Phase 0: next sorted index to consider.
    Files(usize),
    /// Phase 1: re-requesting the files queued in `redo_queue`.
    Redo,
    /// Sent the DONE closing a phase; waiting for the sender's echo.
    Waiting,
}

/// A request whose block sums are partly written.
#[derive(Debug)]
struct SigJob<B> {
    basis: B,
    head: SumHead,
    next: u32,
}

/// A file-list entry as the receiver keeps it once the list is complete: 64 bytes, a third
/// of a [`FileEntry`], since the fields a plain file or directory leaves empty (names of
/// owners, device numbers, link target, checksum) live in a box only when one is set.
/// Sinks still see a whole [`FileEntry`], rebuilt when they are called.
#[derive(Debug)]
struct ListedEntry {
    name: Box<[u8]>,
    size: i64,
    mtime: i64,
    mode: u32,
    mtime_nsec: u32,
    uid: u32,
    gid: u32,
    /// Resolved by `finish_file_list`: never `DevIno` (kept whole in `rare` if it were).
    link: ListedLink,
    rare: Option<Box<RareFields>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListedLink {
    None,
    Leader,
    Follower(u32),
}

/// The fields of a [`FileEntry`] most entries leave empty.
#[derive(Debug, Default)]
struct RareFields {
    user_name: Option<Vec<u8>>,
    group_name: Option<Vec<u8>>,
    rdev: Option<(u32, u32)>,
    symlink: Option<Vec<u8>>,
    checksum: Option<Vec<u8>>,
    dev_ino: Option<(i64, i64)>,
    top_dir: bool,
    no_content_dir: bool,
}

impl From<FileEntry> for ListedEntry {
    fn from(e: FileEntry) -> ListedEntry {
        // Destructured whole: a field added to FileEntry must be placed here too.
        let FileEntry {
            name,
            mode,
            size,
            mtime,
            mtime_nsec,
            uid,
            gid,
            user_name,
            group_name,
            rdev,
            symlink,
            hard_link,
            checksum,
            top_dir,
            no_content_dir,
        } = e;
        let (link, dev_ino) = match hard_link {
            HardLink::None => (ListedLink::None, None),
            HardLink::Leader => (ListedLink::Leader, None),
            HardLink::Follower { first } => (ListedLink::Follower(first), None),
            HardLink::DevIno { dev, ino } => (ListedLink::None, Some((dev, ino))),
        };
        let rare = RareFields {
            user_name,
            group_name,
            rdev,
            symlink,
            checksum,
            dev_ino,
            top_dir,
            no_content_dir,
        };
        let empty = rare.user_name.is_none()
            && rare.group_name.is_none()
            && rare.rdev.is_none()
            && rare.symlink.is_none()
            && rare.checksum.is_none()
            && rare.dev_ino.is_none()
            && !rare.top_dir
            && !rare.no_content_dir;
        ListedEntry {
            name: name.into_boxed_slice(),
            size,
            mtime,
            mode,
            mtime_nsec,
            uid,
            gid,
            link,
            rare: (!empty).then(|| Box::new(rare)),
        }
    }
}

impl ListedEntry {
    fn to_entry(&self) -> FileEntry {
        let mut e = FileEntry::new(self.name.to_vec(), self.mode, self.size);
        e.mtime = self.mtime;
        e.mtime_nsec = self.mtime_nsec;
        e.uid = self.uid;
        e.gid = self.gid;
        e.hard_link = self.hard_link();
        if let Some(rare) = &self.rare {
            e.user_name = rare.user_name.clone();
            e.group_name = rare.group_name.clone();
            e.rdev = rare.rdev;
            e.symlink = rare.symlink.clone();
            e.checksum = rare.checksum.clone();
            e.top_dir = rare.top_dir;
            e.no_content_dir = rare.no_content_dir;
        }
        e
    }

    fn hard_link(&self) -> HardLink {
        match (self.link, self.rare.as_ref().and_then(|r| r.dev_ino)) {
            (_, Some((dev, ino))) => HardLink::DevIno { dev, ino },
            (ListedLink::None, None) => HardLink::None,
            (ListedLink::Leader, None) => HardLink::Leader,
            (ListedLink::Follower(first), None) => HardLink::Follower { first },
        }
    }

    fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Puts `entries` in sorted order in place: position `i` gets the entry at `order[i]`.
/// In place, because a second list of every entry was most of the receiver's peak memory
/// on a large tree. `order` is used up. A repeated index in `order` is an error.
fn sort_in_place<T>(entries: &mut [T], order: &mut [usize]) -> Result<(), Error> {
    const PLACED: usize = usize::MAX;
    let bad = || Error::Protocol("sort produced a duplicate slot".into());
    if order.len() != entries.len() {
        return Err(bad());
    }
    // Each cycle of the permutation is followed once, swapping every entry into its place.
    for start in 0..order.len() {
        let mut at = start;
        while order[at] != PLACED {
            let from = order[at];
            order[at] = PLACED;
            if from == start {
                break;
            }
            if from >= entries.len() || order[from] == PLACED {
                return Err(bad());
            }
            entries.swap(at, from);
            at = from;
        }
    }
    Ok(())
}

/// Status after a [`ClientReceiver::step`].
#[derive(Debug)]
pub enum Status {
    /// Feed more input (and send pending output).
    NeedInput,
    /// The run is over; send remaining output, then close.
    Finished(Box<Outcome>),
}

/// The client receiver machine.
#[derive(Debug)]
pub struct ClientReceiver<S: ReceiveSink> {
    neg: Negotiated,
    opts: ReceiverOptions,
    demux: Demux,
    data: Vec<u8>,
    data_pos: usize,
    msgs: Vec<InMsg>,
    out: Vec<u8>,
    pending: Vec<u8>,
    ndx_in: NdxCodec,
    ndx_out: NdxCodec,
    flist: FlistDecoder,
    wire: Vec<FileEntry>,
    entries: Vec<ListedEntry>,
    cleared: Vec<bool>,
    state: Vec<FileState>,
    redo: Vec<u32>,
    redo_queue: Vec<u32>,
    /// Block sums of the current request still to be sent; big bases are summed a slice
    /// at a time so input keeps flowing.
    sig: Option<SigJob<S::Basis>>,
    /// What is left of this step's `STEP_WORK_BUDGET`.
    work_left: u64,
    rx: Rx<S::Basis>,
    gen: Gen,
    phase: u32,
    scratch: Vec<u8>,
    last_error: String,
    outcome: Outcome,
    flist_done: bool,
    peer_timeout: Option<u32>,
    /// Phase-closing DONEs we queued: the sender only ever echoes ours, so it may not
    /// close a phase we have not closed (an early DONE would end the run short).
    phase_dones_sent: u32,
    /// The sum head of each request awaiting its reply: the sender must echo it, or it
    /// could choose block sizes that make each token cost far more than we planned.
    sent_heads: HashMap<u32, SumHead>,
    /// Text messages kept (and passed to the sink) so far, and their bytes.
    messages_kept: usize,
    message_bytes_kept: usize,
}

impl<S: ReceiveSink> ClientReceiver<S> {
    pub fn new(neg: Negotiated, opts: ReceiverOptions) -> Self {
        let p = neg.protocol;
        let fo = FlistOptions::archive(p, neg.compat_flags, opts.hard_links);
        let mut r = ClientReceiver {
            demux: Demux::new(opts.limits.clone()),
            flist: FlistDecoder::new(fo, opts.limits.clone()),
            data: Vec::new(),
            data_pos: 0,
            msgs: Vec::new(),
            out: Vec::new(),
            pending: Vec::new(),
            ndx_in: NdxCodec::new(p),
            ndx_out: NdxCodec::new(p),
            wire: Vec::new(),
            entries: Vec::new(),
            cleared: Vec::new(),
            state: Vec::new(),
            redo: Vec::new(),
            redo_queue: Vec::new(),
            sig: None,
            work_left: STEP_WORK_BUDGET,
            rx: Rx::FileList,
            gen: Gen::Idle,
            phase: 0,
            scratch: Vec::new(),
            last_error: String::new(),
            outcome: Outcome {
                protocol: p,
                checksum: neg.checksum.name().to_owned(),
                checksum_seed: neg.seed,
                motd: neg.motd.clone(),
                motd_dropped: neg.motd_dropped,
                ..Outcome::default()
            },
            flist_done: false,
            peer_timeout: None,
            phase_dones_sent: 0,
            sent_heads: HashMap::new(),
            messages_kept: 0,
            message_bytes_kept: 0,
            neg,
            opts,
        };
        // A pull always sends the filter list, even when empty (spec §4).
        let mut fl = Vec::new();
        super::args::encode_filter_list(&r.opts.filter_rules, &mut fl);
        r.send(&fl);
        r.flush_pending();
        r
    }

    /// Raw bytes from the connection.
    pub fn feed(&mut self, raw: &[u8]) -> Result<(), Error> {
        self.outcome.wire_bytes_read += raw.len() as u64;
        self.demux.push(raw, &mut self.data, &mut self.msgs)?;
        Ok(())
    }

    /// Bytes to send now (already multiplexed).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.flush_pending();
        self.outcome.wire_bytes_written += self.out.len() as u64;
        std::mem::take(&mut self.out)
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.pending.is_empty()
    }

    /// Whether the file list has been received (keep-alives are only safe after it).
    pub fn file_list_done(&self) -> bool {
        self.flist_done
    }

    /// Queues an empty data frame: the keep-alive stock 3.1+ uses.
    /// Does nothing below protocol 30, where our output is not multiplexed.
    pub fn keepalive(&mut self) {
        if self.neg.protocol < 30 {
            return;
        }
        self.flush_pending();
        encode_frame(MsgTag::Data, &[], &mut self.out);
    }

    /// Whether the generator has local work it stopped only because this step's budget
    /// ran out: the driver must call [`Self::step`] again without waiting for input.
    pub fn has_local_work(&self) -> bool {
        (self.sig.is_some() || !matches!(self.gen, Gen::Idle | Gen::Waiting)) && !self.output_full()
    }

    /// Whether unsent output reached the high-water mark.
    fn output_full(&self) -> bool {
        self.out.len() + self.pending.len() >= OUTPUT_HIGH_WATER
    }

    /// Whether the generator must stop for now: output is full or this step's budget is spent.
    fn must_pause_generating(&self) -> bool {
        self.output_full() || self.work_left == 0
    }

    /// The I/O timeout the peer announced (`MSG_IO_TIMEOUT`), in seconds.
    pub fn peer_timeout(&self) -> Option<u32> {
        self.peer_timeout
    }

    /// The last error text the peer sent, if any: explains an abrupt close.
    pub fn last_error(&self) -> Option<&str> {
        Some(self.last_error.as_str()).filter(|s| !s.is_empty())
    }

    /// How many entries the sorted file list has (valid once received).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Entry `ndx` of the sorted file list (valid once received).
    pub fn entry(&self, ndx: u32) -> Option<FileEntry> {
        self.entries.get(ndx as usize).map(ListedEntry::to_entry)
    }

    /// Processes buffered input and generates requests while output has room.
    pub fn step(&mut self, sink: &mut S) -> Result<Status, Error> {
        self.work_left = STEP_WORK_BUDGET;
        loop {
            self.handle_messages(sink)?;
            let progressed_rx = self.step_rx(sink)?;
            self.handle_messages(sink)?;
            if let Rx::Finished = self.rx {
                self.flush_pending();
                self.finish_outcome();
                return Ok(Status::Finished(Box::new(std::mem::take(
                    &mut self.outcome,
                ))));
            }
            let progressed_gen = self.step_gen(sink)?;
            if !progressed_rx && !progressed_gen {
                break;
            }
        }
        // Keep the data buffer compact: everything before data_pos is consumed.
        if self.data_pos > 0 {
            self.data.drain(..self.data_pos);
            self.data_pos = 0;
        }
        self.flush_pending();
        Ok(Status::NeedInput)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= IO_BUFFER_SIZE {
            self.flush_pending();
        }
    }

    /// Closes a transfer phase on our side.
    fn send_phase_done(&mut self) {
        self.send_ndx(NDX_DONE);
        self.phase_dones_sent += 1;
    }

    fn send_ndx(&mut self, ndx: i32) {
        let mut b = Vec::with_capacity(6);
        self.ndx_out.encode(ndx, &mut b);
        self.send(&b);
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            // Below 30 a client receiver's output is a plain byte stream (spec §3.6).
            if self.neg.protocol >= 30 {
                encode_data(&self.pending, &mut self.out);
            } else {
                self.out.extend_from_slice(&self.pending);
            }
            self.pending.clear();
        }
    }

    fn handle_messages(&mut self, sink: &mut S) -> Result<(), Error> {
        for m in std::mem::take(&mut self.msgs) {
            match m {
                InMsg::Text(kind, text) => {
                    // The meaning of a message is kept whatever its rank; its text only
                    // while within bounds, so a chatty or hostile peer cannot fill memory
                    // or the log.
                    if kind == MessageKind::ErrorXfer || kind == MessageKind::Error {
                        self.last_error = text.trim_end().to_owned();
                    }
                    if kind == MessageKind::ErrorXfer {
                        self.outcome.io_error |= IOERR_GENERAL;
                    }
                    let lim = &self.opts.limits;
                    if self.messages_kept >= lim.max_messages_kept
                        || self.message_bytes_kept + text.len() > lim.max_message_bytes_kept
                    {
                        self.outcome.messages_dropped += 1;
                        continue;
                    }
                    self.messages_kept += 1;
                    self.message_bytes_kept += text.len();
                    if kind != MessageKind::Info {
                        self.outcome.warnings.push(text.trim_end().to_owned());
                    }
                    sink.message(kind, &text);
                }
                InMsg::IoError(bits) => self.outcome.io_error |= bits & IOERR_KNOWN_BITS,
                InMsg::IoTimeout(secs) => {
                    tracing::debug!(secs, "peer announced its I/O timeout");
                    // Like 3.5.0, ignore nonsense values; only ever shorten our interval.
                    if (1..=86_400).contains(&secs) {
                        self.peer_timeout = Some(secs as u32);
                    }
                }
                InMsg::NoSend(ndx) => {
                    let i = usize::try_from(ndx)
                        .ok()
                        .filter(|&i| i < self.entries.len());
                    let i = i.ok_or(DecodeError::BadNdx(ndx.into()))?;
                    if self.state[i] == FileState::Requested {
                        self.state[i] = FileState::Failed;
                        self.sent_heads.remove(&(i as u32));
                        self.outcome.failed.push(self.entries[i].name_lossy());
                        sink.file_failed(
                            i as u32,
                            &self.entries[i].to_entry(),
                            "sender could not send it",
                        )
                        .map_err(Error::Sink)?;
                    }
                }
                InMsg::ErrorExit(code) => {
                    // Acknowledge as a stock client does, then stop (spec §3.3).
                    if self.neg.protocol >= 31 {
                        self.flush_pending();
                        encode_frame(MsgTag::ErrorExit, &[], &mut self.out);
                    }
                    return Err(Error::RemoteExit {
                        code: code.unwrap_or(RERR_PARTIAL),
                        message: std::mem::take(&mut self.last_error),
                    });
                }
                InMsg::Deleted(_) | InMsg::Success(_) | InMsg::Noop => {}
            }
        }
        Ok(())
    }

    fn avail(&self) -> &[u8] {
        &self.data[self.data_pos..]
    }

    /// Decodes with `f` from the data buffer; `None` when more input is needed.
    fn take<T>(
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

    fn step_rx(&mut self, sink: &mut S) -> Result<bool, Error> {
        let mut progressed = false;
        loop {
            let p = self.neg.protocol;
            let lim = self.opts.limits.clone();
            let rx = std::mem::replace(&mut self.rx, Rx::Finished);
            let next = match rx {
                Rx::FileList => {
                    let so_far = std::mem::take(&mut self.wire);
                    let item = match self.flist.decode(&self.data[self.data_pos..], &so_far)? {
                        Decoded::Complete { value, consumed } => {
                            self.data_pos += consumed;
                            Some(value)
                        }
                        Decoded::Incomplete { .. } => None,
                    };
                    self.wire = so_far;
                    match item {
                        None => {
                            self.rx = Rx::FileList;
                            return Ok(progressed);
                        }
                        Some(FlistItem::Entry(e)) => {
                            self.wire.push(e);
                            Rx::FileList
                        }
                        Some(FlistItem::End { io_error }) => {
                            self.outcome.io_error |= io_error & IOERR_KNOWN_BITS;
                            if !self.opts.numeric_ids {
                                Rx::IdLists { uid_done: false }
                            } else if p < 30 {
                                Rx::IoErrorPre30
                            } else {
                                self.finish_file_list()?;
                                Rx::ExpectNdx
                            }
                        }
                    }
                }
                Rx::IdLists { uid_done } => {
                    let id0 = self.neg.compat_flags & CF_ID0_NAMES != 0;
                    match self.take(|b| decode_id_list(b, p, id0, &lim))? {
                        None => {
                            self.rx = Rx::IdLists { uid_done };
                            return Ok(progressed);
                        }
                        Some(_names) if !uid_done => Rx::IdLists { uid_done: true },
                        Some(_) if p < 30 => Rx::IoErrorPre30,
                        Some(_) => {
                            self.finish_file_list()?;
                            Rx::ExpectNdx
                        }
                    }
                }
                Rx::IoErrorPre30 => match self.take(|b| run(b, |c| c.i32()))? {
                    None => {
                        self.rx = Rx::IoErrorPre30;
                        return Ok(progressed);
                    }
                    Some(e) => {
                        self.outcome.io_error |= (e as u32) & IOERR_KNOWN_BITS;
                        self.finish_file_list()?;
                        Rx::ExpectNdx
                    }
                },
                Rx::ExpectNdx => {
                    let mut codec = self.ndx_in.clone();
                    let r = codec.decode(self.avail())?;
                    match r {
                        Decoded::Incomplete { .. } => {
                            self.rx = Rx::ExpectNdx;
                            return Ok(progressed);
                        }
                        Decoded::Complete { value, consumed } => {
                            self.ndx_in = codec;
                            self.data_pos += consumed;
                            self.on_ndx(sink, value)?
                        }
                    }
                }
                Rx::Iflags { ndx } => {
                    let r = run(self.avail(), |c| {
                        let iflags = c.u16()?;
                        if iflags & ITEM_BASIS_TYPE_FOLLOWS != 0 {
                            c.u8()?;
                        }
                        if iflags & ITEM_XNAME_FOLLOWS != 0 {
                            c.vstring(lim.max_vstring)?;
                        }
                        Ok(iflags)
                    })?;
                    match r {
                        Decoded::Incomplete { .. } => {
                            self.rx = Rx::Iflags { ndx };
                            return Ok(progressed);
                        }
                        Decoded::Complete {
                            value: iflags,
                            consumed,
                        } => {
                            self.data_pos += consumed;
                            if ndx as usize == self.entries.len() && iflags == ITEM_IS_NEW && p < 30
                            {
                                // Protocol 29 keep-alive.
                                Rx::ExpectNdx
                            } else if ndx as usize >= self.entries.len() {
                                return Err(DecodeError::BadNdx(ndx.into()).into());
                            } else if iflags & ITEM_TRANSFER == 0 {
                                // An echo of an itemization; no data follows.
                                Rx::ExpectNdx
                            } else {
                                self.check_requested(ndx)?;
                                Rx::SumHead { ndx }
                            }
                        }
                    }
                }
                Rx::SumHead { ndx } => {
                    let xfer = self.neg.checksum.len();
                    match self.take(|b| SumHead::decode(b, p, xfer, &lim))? {
                        None => {
                            self.rx = Rx::SumHead { ndx };
                            return Ok(progressed);
                        }
                        Some(head) => self.begin_file(sink, ndx, head)?,
                    }
                }
                Rx::Tokens {
                    ndx,
                    head,
                    mut basis,
                    mut hasher,
                    literal,
                    rebuilt,
                } => {
                    if literal > 0 {
                        let n = (literal as usize).min(self.avail().len());
                        if n == 0 {
                            self.rx = Rx::Tokens {
                                ndx,
                                head,
                                basis,
                                hasher,
                                literal,
                                rebuilt,
                            };
                            return Ok(progressed);
                        }
                        let start = self.data_pos;
                        let chunk = &self.data[start..start + n];
                        hasher.update(chunk);
                        sink.content(chunk).map_err(Error::Sink)?;
                        self.data_pos += n;
                        self.outcome.literal_bytes += n as u64;
                        Rx::Tokens {
                            ndx,
                            head,
                            basis,
                            hasher,
                            literal: literal - n as u32,
                            rebuilt,
                        }
                    } else {
                        match self.take(|b| decode_token(b, head.count, &lim))? {
                            None => {
                                self.rx = Rx::Tokens {
                                    ndx,
                                    head,
                                    basis,
                                    hasher,
                                    literal,
                                    rebuilt,
                                };
                                return Ok(progressed);
                            }
                            Some(Token::Literal(n)) => Rx::Tokens {
                                ndx,
                                head,
                                basis,
                                hasher,
                                literal: n,
                                rebuilt,
                            },
                            Some(Token::Block(k)) => {
                                let b = basis.as_mut().ok_or(DecodeError::BadToken {
                                    token: -(k as i32) - 1,
                                    count: 0,
                                })?;
                                let len = head.block_len(k) as usize;
                                // Before reading: one 4-byte token names a whole block.
                                let rebuilt =
                                    self.check_rebuilt(ndx, b.len(), rebuilt, len as u32)?;
                                let off = u64::from(k) * u64::from(head.blength);
                                self.scratch.resize(len, 0);
                                b.read_at(off, &mut self.scratch).map_err(Error::Sink)?;
                                hasher.update(&self.scratch);
                                sink.content(&self.scratch).map_err(Error::Sink)?;
                                self.outcome.matched_bytes += len as u64;
                                Rx::Tokens {
                                    ndx,
                                    head,
                                    basis,
                                    hasher,
                                    literal: 0,
                                    rebuilt,
                                }
                            }
                            Some(Token::End) => Rx::FileSum {
                                ndx,
                                sum: hasher.finish(),
                            },
                        }
                    }
                }
                Rx::FileSum { ndx, sum } => {
                    let n = sum.len();
                    match self.take(|b| run(b, |c| c.bytes(n).map(<[u8]>::to_vec)))? {
                        None => {
                            self.rx = Rx::FileSum { ndx, sum };
                            return Ok(progressed);
                        }
                        Some(theirs) => {
                            self.end_file(sink, ndx, theirs == sum)?;
                            Rx::ExpectNdx
                        }
                    }
                }
                Rx::Stats => {
                    let n = if p >= 29 { 5 } else { 3 };
                    let r = run(self.avail(), |c| {
                        let mut v = [0i64; 5];
                        for x in v.iter_mut().take(n) {
                            *x = c.varlong30(p, 3)?;
                        }
                        Ok(v)
                    })?;
                    match r {
                        Decoded::Incomplete { .. } => {
                            self.rx = Rx::Stats;
                            return Ok(progressed);
                        }
                        Decoded::Complete { value: v, consumed } => {
                            self.data_pos += consumed;
                            self.outcome.sender_stats = SenderStats {
                                total_read: v[0],
                                total_written: v[1],
                                total_size: v[2],
                                flist_buildtime_ms: v[3],
                                flist_xfertime_ms: v[4],
                            };
                            if p >= 31 {
                                // The extra DONE round of 31+ (spec §6.8).
                                self.send_ndx(NDX_DONE);
                                Rx::ExtraDoneEcho
                            } else {
                                self.send_ndx(NDX_DONE);
                                Rx::Finished
                            }
                        }
                    }
                }
                Rx::ExtraDoneEcho => {
                    let mut codec = self.ndx_in.clone();
                    match codec.decode(self.avail())? {
                        Decoded::Incomplete { .. } => {
                            self.rx = Rx::ExtraDoneEcho;
                            return Ok(progressed);
                        }
                        Decoded::Complete { value, consumed } => {
                            self.ndx_in = codec;
                            self.data_pos += consumed;
                            if value != NDX_DONE {
                                return Err(Error::Protocol(format!(
                                    "expected the final NDX_DONE echo, got {value}"
                                )));
                            }
                            // Final goodbye.
                            self.send_ndx(NDX_DONE);
                            Rx::Finished
                        }
                    }
                }
                Rx::Finished => {
                    self.rx = Rx::Finished;
                    return Ok(true);
                }
            };
            self.rx = next;
            progressed = true;
            if matches!(self.rx, Rx::Finished) {
                return Ok(true);
            }
        }
    }

    fn finish_file_list(&mut self) -> Result<(), Error> {
        let p = self.neg.protocol;
        let mut wire = std::mem::take(&mut self.wire);
        let mut order = sort_order(&wire, p);
        let mut wire_to_sorted = vec![0u32; wire.len()];
        for (sorted, &w) in order.iter().enumerate() {
            wire_to_sorted[w] = sorted as u32;
        }
        for e in &mut wire {
            if let HardLink::Follower { first } = e.hard_link {
                let s = wire_to_sorted.get(first as usize).copied().ok_or(
                    DecodeError::BadHardLink {
                        index: first.into(),
                        count: wire_to_sorted.len(),
                    },
                )?;
                e.hard_link = HardLink::Follower { first: s };
            }
            validate_name(&e.name, e.is_dir())?;
        }
        drop(wire_to_sorted);
        // Below 30 groups are identified by (dev, ino): present them like 30+ groups, the
        // first member in sorted order leading, so sinks see one model.
        let mut groups: std::collections::HashMap<(i64, i64), u32> =
            std::collections::HashMap::new();
        let mut sizes: std::collections::HashMap<(i64, i64), u32> =
            std::collections::HashMap::new();
        for e in &wire {
            if let HardLink::DevIno { dev, ino } = e.hard_link {
                *sizes.entry((dev, ino)).or_default() += 1;
            }
        }
        for (sorted, &w) in order.iter().enumerate() {
            let e = wire
                .get_mut(w)
                .ok_or(Error::Protocol("sort produced a bad slot".into()))?;
            if let HardLink::DevIno { dev, ino } = e.hard_link {
                e.hard_link = if sizes.get(&(dev, ino)).copied().unwrap_or(0) < 2 {
                    HardLink::None
                } else if let Some(&first) = groups.get(&(dev, ino)) {
                    HardLink::Follower { first }
                } else {
                    groups.insert((dev, ino), sorted as u32);
                    HardLink::Leader
                };
            }
        }
        drop((groups, sizes));
        // Kept compact from here on: the full entries of a large tree were the receiver's
        // largest allocation, and most of their fields are empty.
        let mut entries: Vec<ListedEntry> = wire.into_iter().map(ListedEntry::from).collect();
        // The collect above reuses the received list's buffer, three times too large now.
        entries.shrink_to_fit();
        sort_in_place(&mut entries, &mut order)?;
        drop(order);
        // Later duplicates are cleared but keep their slot so indexes stay aligned.
        let mut cleared = vec![false; entries.len()];
        let mut seen: HashSet<&[u8]> = HashSet::with_capacity(entries.len());
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        for e in &entries {
            if e.is_dir() {
                dirs.insert(&e.name[..]);
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if !seen.insert(&e.name[..]) || (!e.is_dir() && dirs.contains(&e.name[..])) {
                cleared[i] = true;
            }
            // A sender lists a directory before recursing into it. A parent that is not
            // a listed directory (a symlink `a` followed by `a/x`) would make the sink
            // write through a symlink or invent a directory.
            if let Some(slash) = e.name.iter().rposition(|&c| c == b'/') {
                if !dirs.contains(&e.name[..slash]) {
                    return Err(DecodeError::BadName {
                        reason: "parent is not a directory of the list",
                    }
                    .into());
                }
            }
        }
        self.outcome.entries = cleared.iter().filter(|c| !**c).count() as u64;
        self.state = vec![FileState::NotRequested; entries.len()];
        self.entries = entries;
        self.cleared = cleared;
        self.gen = Gen::Files(0);
        self.flist_done = true;
        tracing::debug!(entries = self.entries.len(), "file list received");
        Ok(())
    }

    /// Adds `more` bytes copied from the basis (of `basis_len` bytes) to file `ndx`'s
    /// `rebuilt`, within its bound.
    fn check_rebuilt(
        &self,
        ndx: u32,
        basis_len: u64,
        rebuilt: u64,
        more: u32,
    ) -> Result<u64, Error> {
        let e = &self.entries[ndx as usize];
        let max = self.opts.limits.max_rebuilt(e.size, basis_len);
        let total = rebuilt.saturating_add(u64::from(more));
        if total > max {
            return Err(Error::RebuiltTooLarge {
                name: e.name_lossy(),
                announced: e.size,
                max,
            });
        }
        Ok(total)
    }

    /// Every phase is closed: each file we requested must have arrived or been reported
    /// as not sent. At 30+ a sender reports every file it does not send (`MSG_NO_SEND`),
    /// so a silent gap means it cut the run short. Below 30 it has no such notice (a
    /// stock sender says nothing at all about a file that vanished after listing, and a
    /// stock receiver exits 0): the files count as vanished (24, a success as Turku counts
    /// it) and each is named in a warning. A sender that closes its phases early is caught
    /// before this, at every protocol, so what remains below 30 is a file the sender left
    /// out: a vanished file on a live system far more often than a lie, and a lying agent
    /// can only omit its own machine's data.
    fn check_complete(&mut self, sink: &mut S) -> Result<(), Error> {
        let missing: Vec<usize> = (0..self.state.len())
            .filter(|&i| self.state[i] == FileState::Requested)
            .collect();
        let Some(&first) = missing.first() else {
            return Ok(());
        };
        if self.neg.protocol >= 30 {
            return Err(Error::Incomplete {
                missing: missing.len() as u64,
                first: self.entries[first].name_lossy(),
            });
        }
        self.outcome.io_error |= IOERR_VANISHED;
        for i in missing {
            self.state[i] = FileState::Failed;
            let name = self.entries[i].name_lossy();
            self.outcome.failed.push(name.clone());
            if self.outcome.warnings.len() < self.opts.limits.max_messages_kept {
                self.outcome.warnings.push(format!(
                    "{name}: requested but not sent (vanished? below protocol 30 the sender does not say)"
                ));
            }
            sink.file_failed(
                i as u32,
                &self.entries[i].to_entry(),
                "the sender did not send it (vanished?)",
            )
            .map_err(Error::Sink)?;
        }
        Ok(())
    }

    fn check_requested(&self, ndx: u32) -> Result<(), Error> {
        match self.state.get(ndx as usize) {
            Some(FileState::Requested) => Ok(()),
            _ => Err(Error::Protocol(format!(
                "sender replied for file {ndx}, which was not requested"
            ))),
        }
    }

    fn on_ndx(&mut self, sink: &mut S, ndx: i32) -> Result<Rx<S::Basis>, Error> {
        let p = self.neg.protocol;
        if ndx == NDX_DONE {
            if self.phase >= self.phase_dones_sent {
                return Err(Error::Protocol(format!(
                    "the sender ended phase {} before we did",
                    self.phase
                )));
            }
            self.phase += 1;
            let max_phase = if p >= 29 { 2 } else { 1 };
            if self.phase > max_phase {
                self.check_complete(sink)?;
                return Ok(Rx::Stats);
            }
            if self.phase == 1 {
                // The sender finished phase 0, so every verification failure is known now;
                // the generator re-requests them and closes phase 1 itself.
                let mut q = std::mem::take(&mut self.redo);
                q.reverse();
                self.outcome.redone += q.len() as u64;
                self.redo_queue = q;
                self.gen = Gen::Redo;
            } else {
                self.send_phase_done();
            }
            return Ok(Rx::ExpectNdx);
        }
        if ndx < 0 {
            return Err(Error::Protocol(format!(
                "unexpected negative file index {ndx} without incremental recursion"
            )));
        }
        let ndx = ndx as u32;
        if p >= 29 {
            Ok(Rx::Iflags { ndx })
        } else {
            if (ndx as usize) >= self.entries.len() {
                return Err(DecodeError::BadNdx(ndx.into()).into());
            }
            self.check_requested(ndx)?;
            Ok(Rx::SumHead { ndx })
        }
    }

    /// Writes one request: ndx, iflags, sum head and the basis's block sums.
    fn request(&mut self, sink: &mut S, ndx: u32, redo: bool) -> Result<(), Error> {
        let p = self.neg.protocol;
        let kind = self.neg.checksum;
        let basis = sink
            .basis(ndx, &self.entries[ndx as usize].to_entry())
            .map_err(Error::Sink)?;
        let head = match &basis {
            Some(b) if !b.is_empty() => SumHead::for_basis(b.len(), p, kind.len(), redo),
            _ => SumHead::default(),
        };
        if head.count > self.opts.limits.max_blocks {
            return Err(Error::Protocol(format!(
                "basis of file {ndx} needs {} blocks, over the limit",
                head.count
            )));
        }
        self.send_ndx(ndx as i32);
        if p >= 29 {
            let mut iflags = ITEM_TRANSFER;
            if head.count == 0 {
                iflags |= ITEM_IS_NEW;
            }
            self.send(&iflags.to_le_bytes());
        }
        let mut h = Vec::with_capacity(16);
        head.encode(p, &mut h);
        self.send(&h);
        self.sent_heads.insert(ndx, head);
        if let Some(b) = basis.filter(|_| head.count > 0) {
            self.sig = Some(SigJob {
                basis: b,
                head,
                next: 0,
            });
            self.pump_signature()?;
        }
        self.state[ndx as usize] = FileState::Requested;
        Ok(())
    }

    fn begin_file(&mut self, sink: &mut S, ndx: u32, head: SumHead) -> Result<Rx<S::Basis>, Error> {
        if self.sent_heads.remove(&ndx) != Some(head) {
            return Err(Error::Protocol(format!(
                "sender's sum head for file {ndx} is not the one we sent"
            )));
        }
        let e = &self.entries[ndx as usize].to_entry();
        let basis = if head.count > 0 {
            let b = sink.basis(ndx, e).map_err(Error::Sink)?;
            let b = b.ok_or_else(|| {
                Error::Protocol(format!(
                    "basis of {} disappeared between passes",
                    e.name_lossy()
                ))
            })?;
            let need = u64::from(head.count - 1) * u64::from(head.blength)
                + u64::from(head.block_len(head.count - 1));
            if b.len() < need {
                return Err(Error::Protocol(format!(
                    "basis of {} shrank between passes",
                    e.name_lossy()
                )));
            }
            Some(b)
        } else {
            None
        };
        sink.begin_content(ndx, e).map_err(Error::Sink)?;
        let hasher = Box::new(FileHasher::new(self.neg.checksum, self.neg.seed));
        Ok(Rx::Tokens {
            ndx,
            head,
            basis,
            hasher,
            literal: 0,
            rebuilt: 0,
        })
    }

    fn end_file(&mut self, sink: &mut S, ndx: u32, verified: bool) -> Result<(), Error> {
        let i = ndx as usize;
        sink.end_content(ndx, &self.entries[i].to_entry(), verified)
            .map_err(Error::Sink)?;
        if verified {
            self.state[i] = FileState::Done;
            self.outcome.files_received += 1;
        } else if self.phase == 0 {
            tracing::debug!(name = %self.entries[i].name_lossy(), "checksum mismatch; will redo");
            self.redo.push(ndx);
        } else {
            self.state[i] = FileState::Failed;
            let name = self.entries[i].name_lossy();
            self.outcome.failed.push(name.clone());
            self.outcome.io_error |= IOERR_GENERAL;
            self.outcome
                .warnings
                .push(format!("{name} failed verification -- update discarded"));
            sink.file_failed(
                ndx,
                &self.entries[i].to_entry(),
                "whole-file checksum failed twice",
            )
            .map_err(Error::Sink)?;
        }
        Ok(())
    }

    /// Writes block sums of the pending request until output reaches the high-water mark.
    /// Returns true when the request is complete.
    fn pump_signature(&mut self) -> Result<bool, Error> {
        let Some(mut job) = self.sig.take() else {
            return Ok(true);
        };
        let (kind, seed) = (self.neg.checksum, self.neg.seed);
        let head = job.head;
        self.scratch.resize(head.blength as usize, 0);
        let mut sig = Vec::with_capacity(4 + head.s2length as usize);
        while job.next < head.count {
            if self.must_pause_generating() {
                self.sig = Some(job);
                return Ok(false);
            }
            let k = job.next;
            let len = head.block_len(k) as usize;
            job.basis
                .read_at(
                    u64::from(k) * u64::from(head.blength),
                    &mut self.scratch[..len],
                )
                .map_err(Error::Sink)?;
            sig.clear();
            write_block_signature(
                &self.scratch[..len],
                kind,
                seed,
                head.s2length as usize,
                &mut sig,
            );
            self.send(&sig);
            job.next += 1;
            self.work_left = self
                .work_left
                .saturating_sub((len as u64).max(MIN_WORK_COST));
        }
        Ok(true)
    }

    fn step_gen(&mut self, sink: &mut S) -> Result<bool, Error> {
        // With the output full, nothing can progress until the driver drains it; saying
        // otherwise would spin `step`.
        if matches!(self.gen, Gen::Idle | Gen::Waiting) || self.must_pause_generating() {
            return Ok(false);
        }
        let mut progressed = false;
        loop {
            if self.sig.is_some() {
                progressed = true;
                if !self.pump_signature()? {
                    return Ok(true);
                }
            }
            if self.must_pause_generating() {
                return Ok(progressed);
            }
            match self.gen {
                Gen::Files(i) if i < self.entries.len() => {
                    self.gen = Gen::Files(i + 1);
                    progressed = true;
                    self.work_left = self.work_left.saturating_sub(MIN_WORK_COST);
                    if self.cleared[i] {
                        continue;
                    }
                    let action = sink
                        .entry(i as u32, &self.entries[i].to_entry())
                        .map_err(Error::Sink)?;
                    let e = &self.entries[i];
                    let wants = e.is_regular()
                        && action == EntryAction::Transfer
                        && !matches!(e.hard_link(), HardLink::Follower { .. });
                    if wants {
                        self.outcome.files_requested += 1;
                        self.request(sink, i as u32, false)?;
                    }
                }
                Gen::Redo if !self.redo_queue.is_empty() => {
                    progressed = true;
                    if let Some(ndx) = self.redo_queue.pop() {
                        self.request(sink, ndx, true)?;
                    }
                }
                Gen::Files(_) | Gen::Redo => {
                    // Every request of this phase is out: close it.
                    self.send_phase_done();
                    self.gen = Gen::Waiting;
                    return Ok(true);
                }
                Gen::Idle | Gen::Waiting => return Ok(progressed),
            }
        }
    }

    fn finish_outcome(&mut self) {
        let o = &mut self.outcome;
        o.exit_code = if o.io_error & IOERR_GENERAL != 0 || o.failed.len() > vanished_count(o) {
            RERR_PARTIAL
        } else if o.io_error & IOERR_VANISHED != 0 || !o.failed.is_empty() {
            RERR_VANISHED
        } else {
            RERR_OK
        };
    }
}

/// Failures explained by vanished files (the sender said so with IOERR_VANISHED).
fn vanished_count(o: &Outcome) -> usize {
    if o.io_error & IOERR_VANISHED != 0 {
        o.failed.len()
    } else {
        0
    }
}

/// Rejects names that could escape the destination (spec §9.16).
fn validate_name(n: &[u8], is_dir: bool) -> Result<(), Error> {
    let bad = |reason: &'static str| Error::Decode(DecodeError::BadName { reason });
    if n == b"." {
        return if is_dir {
            Ok(())
        } else {
            Err(bad("transfer root is not a directory"))
        };
    }
    if n.first() == Some(&b'/') {
        return Err(bad("absolute path"));
    }
    if n.contains(&0) {
        return Err(bad("NUL in name"));
    }
    for comp in n.split(|&c| c == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(bad("empty, '.' or '..' path component"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::ChecksumKind;
    use crate::codec::flist::FlistEncoder;
    use crate::codec::mux::{encode_data, encode_frame};
    use crate::codec::prim::put_varlong;
    use crate::codec::token::{encode_end, encode_literal};
    use crate::session::demux::Demux;

    #[derive(Default)]
    struct MemSink {
        files: Vec<(String, Vec<u8>, bool)>,
        current: Vec<u8>,
        failed: Vec<String>,
        messages: Vec<String>,
        seen: Vec<String>,
        /// The basis offered for every file.
        basis: Option<Vec<u8>>,
    }

    impl ReceiveSink for MemSink {
        type Basis = Vec<u8>;
        fn entry(&mut self, _: u32, e: &FileEntry) -> Result<EntryAction, crate::SinkError> {
            self.seen.push(e.name_lossy());
            Ok(EntryAction::Transfer)
        }
        fn basis(&mut self, _: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, crate::SinkError> {
            Ok(self.basis.clone())
        }
        fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), crate::SinkError> {
            self.current.clear();
            Ok(())
        }
        fn content(&mut self, d: &[u8]) -> Result<(), crate::SinkError> {
            self.current.extend_from_slice(d);
            Ok(())
        }
        fn end_content(&mut self, _: u32, e: &FileEntry, ok: bool) -> Result<(), crate::SinkError> {
            self.files
                .push((e.name_lossy(), std::mem::take(&mut self.current), ok));
            Ok(())
        }
        fn file_failed(&mut self, _: u32, e: &FileEntry, _: &str) -> Result<(), crate::SinkError> {
            self.failed.push(e.name_lossy());
            Ok(())
        }
        fn message(&mut self, _: MessageKind, t: &str) {
            self.messages.push(t.to_owned());
        }
    }

    fn entry(name: &str, mode: u32, size: i64) -> FileEntry {
        FileEntry {
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            symlink: if mode & S_IFMT == S_IFLNK {
                Some(b"a".to_vec())
            } else {
                None
            },
            top_dir: name == ".",
            ..FileEntry::new(name.as_bytes().to_vec(), mode, size)
        }
    }

    fn neg() -> Negotiated {
        Negotiated {
            protocol: 31,
            compat_flags: 0x1fe,
            checksum: ChecksumKind::Xxh128,
            seed: 1,
            motd: Vec::new(),
            motd_dropped: 0,
        }
    }

    fn opts() -> ReceiverOptions {
        ReceiverOptions {
            hard_links: false,
            numeric_ids: true,
            filter_rules: vec!["- *.o".into()],
            limits: Limits::default(),
        }
    }

    /// Feeds `raw` one byte at a time (every field straddles reads) and collects output.
    fn run_bytes(
        rx: &mut ClientReceiver<MemSink>,
        sink: &mut MemSink,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Outcome>, Error> {
        for b in raw {
            rx.feed(std::slice::from_ref(b))?;
            if let Status::Finished(o) = rx.step(sink)? {
                out.extend(rx.take_output());
                return Ok(Some(*o));
            }
            out.extend(rx.take_output());
        }
        Ok(None)
    }

    /// Feeds a file list of `files`, steps once, then steps without input while the
    /// generator says it has local work; returns how many steps the generator took.
    fn steps_to_generate(sink: &mut MemSink, files: &[FileEntry]) -> usize {
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        rx.take_output();
        let mut data = Vec::new();
        let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
        enc.encode(&entry(".", S_IFDIR | 0o755, 4096), &mut data);
        for e in files {
            enc.encode(e, &mut data);
        }
        enc.encode_end(0, &mut data);
        let mut raw = Vec::new();
        encode_data(&data, &mut raw);
        rx.feed(&raw).unwrap();
        let mut steps = 0;
        loop {
            assert!(matches!(rx.step(sink).unwrap(), Status::NeedInput));
            rx.take_output();
            steps += 1;
            if !rx.has_local_work() {
                return steps;
            }
        }
    }

    #[test]
    fn a_step_decides_a_bounded_number_of_entries() {
        let mut sink = MemSink::default();
        let files: Vec<FileEntry> = (0..5000)
            .map(|i| entry(&format!("f{i:05}"), S_IFREG | 0o644, 1))
            .collect();
        let steps = steps_to_generate(&mut sink, &files);
        assert_eq!(sink.seen.len(), 5001, "every entry is decided in the end");
        // With the budget at 8 MiB and 32 KiB an entry, 256 entries a step: 20 steps.
        assert!(steps >= 10, "{steps} steps");
    }

    #[test]
    fn a_step_checksums_a_bounded_part_of_a_basis() {
        let len = 64 * 1024 * 1024;
        let mut sink = MemSink {
            basis: Some(vec![0; len]),
            ..MemSink::default()
        };
        let steps = steps_to_generate(&mut sink, &[entry("big", S_IFREG | 0o644, len as i64)]);
        // 8192 blocks of 8 KiB, each counted as MIN_WORK_COST: with the budget at 8 MiB,
        // 256 blocks a step, 32 steps.
        assert!(steps >= 16, "{steps} steps");
    }

    #[test]
    fn scripted_session_with_messages_mid_stream() {
        let mut sink = MemSink::default();
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        let mut out = rx.take_output();
        // Server: file list in wire order (unsorted on purpose).
        let mut data = Vec::new();
        let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
        for e in [
            entry(".", S_IFDIR | 0o755, 4096),
            entry("b", S_IFREG | 0o644, 3),
            entry("a", S_IFREG | 0o644, 5),
            entry("l", S_IFLNK | 0o777, 1),
        ] {
            enc.encode(&e, &mut data);
        }
        enc.encode_end(0, &mut data);
        let mut raw = Vec::new();
        encode_data(&data, &mut raw);
        assert!(run_bytes(&mut rx, &mut sink, &raw, &mut out)
            .unwrap()
            .is_none());
        // Sorted: ".", "a", "b", "l" — requests for 1 and 2, then DONE.
        assert_eq!(sink.seen, [".", "a", "b", "l"]);
        let (mut got, mut msgs) = (Vec::new(), Vec::new());
        Demux::new(Limits::default())
            .push(&out, &mut got, &mut msgs)
            .unwrap();
        let mut want = Vec::new();
        crate::session::args::encode_filter_list(&["- *.o".into()], &mut want);
        let mut nd = NdxCodec::new(31);
        for ndx in [1, 2] {
            nd.encode(ndx, &mut want);
            want.extend_from_slice(&(ITEM_TRANSFER | ITEM_IS_NEW).to_le_bytes());
            SumHead::default().encode(31, &mut want);
        }
        nd.encode(NDX_DONE, &mut want);
        assert_eq!(got, want);

        // Server: reply for "a" with a message and a keep-alive inside the token stream,
        // MSG_NO_SEND for "b", the phase DONEs, stats and the extra DONE echo.
        let mut sn = NdxCodec::new(31);
        let mut raw = Vec::new();
        let mut d = Vec::new();
        sn.encode(1, &mut d);
        d.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
        SumHead::default().encode(31, &mut d);
        encode_literal(b"hel", &mut d);
        encode_data(&d[..d.len() - 1], &mut raw);
        encode_frame(MsgTag::Info, b"info in the middle\n", &mut raw);
        encode_data(&[], &mut raw);
        let mut d2 = vec![d[d.len() - 1]];
        encode_literal(b"lo", &mut d2);
        encode_end(&mut d2);
        let mut h = FileHasher::new(ChecksumKind::Xxh128, 1);
        h.update(b"hello");
        d2.extend_from_slice(&h.finish());
        encode_data(&d2, &mut raw);
        encode_frame(MsgTag::Warning, b"file has vanished: \"b\"\n", &mut raw);
        encode_frame(MsgTag::NoSend, &2i32.to_le_bytes(), &mut raw);
        encode_frame(
            MsgTag::IoError,
            &(IOERR_VANISHED as i32).to_le_bytes(),
            &mut raw,
        );
        let mut d3 = Vec::new();
        for _ in 0..3 {
            sn.encode(NDX_DONE, &mut d3);
        }
        for v in [10i64, 20, 8, 0, 1] {
            put_varlong(&mut d3, v, 3);
        }
        sn.encode(NDX_DONE, &mut d3);
        encode_data(&d3, &mut raw);
        let o = run_bytes(&mut rx, &mut sink, &raw, &mut out)
            .unwrap()
            .expect("finished");
        assert_eq!(sink.files, [("a".to_string(), b"hello".to_vec(), true)]);
        assert_eq!(sink.failed, ["b"]);
        assert_eq!(sink.messages.len(), 2);
        assert_eq!(o.exit_code, RERR_VANISHED);
        assert_eq!(o.literal_bytes, 5);
        assert_eq!(o.sender_stats.total_size, 8);
        assert_eq!(o.files_requested, 2);
        assert_eq!(o.files_received, 1);
        // Our side: 3 phase DONEs in total after the requests, the extra DONE and the goodbye.
        let (mut got, mut msgs) = (Vec::new(), Vec::new());
        Demux::new(Limits::default())
            .push(&out, &mut got, &mut msgs)
            .unwrap();
        assert_eq!(&got[got.len() - 5..], [0, 0, 0, 0, 0]);
    }

    #[test]
    fn error_exit_is_acknowledged() {
        let mut sink = MemSink::default();
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        let _ = rx.take_output();
        let mut raw = Vec::new();
        encode_frame(MsgTag::Error, b"rsync: something broke\n", &mut raw);
        encode_frame(MsgTag::ErrorExit, &12i32.to_le_bytes(), &mut raw);
        rx.feed(&raw).unwrap();
        match rx.step(&mut sink) {
            Err(Error::RemoteExit { code, message }) => {
                assert_eq!(code, 12);
                assert_eq!(message, "rsync: something broke");
            }
            other => panic!("expected RemoteExit, got {other:?}"),
        }
        assert_eq!(rx.take_output(), [0, 0, 0, 0x5d]);
    }

    #[test]
    fn rejects_unsafe_names_and_unrequested_replies() {
        let mut sink = MemSink::default();
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        let mut data = Vec::new();
        let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
        enc.encode(&entry("x/../../etc/passwd", S_IFREG | 0o644, 1), &mut data);
        enc.encode_end(0, &mut data);
        let mut raw = Vec::new();
        encode_data(&data, &mut raw);
        rx.feed(&raw).unwrap();
        assert!(matches!(
            rx.step(&mut sink),
            Err(Error::Decode(DecodeError::BadName { .. }))
        ));

        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        let mut data = Vec::new();
        let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
        enc.encode(&entry("d", S_IFDIR | 0o755, 1), &mut data);
        enc.encode_end(0, &mut data);
        NdxCodec::new(31).encode(0, &mut data);
        data.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
        let mut raw = Vec::new();
        encode_data(&data, &mut raw);
        rx.feed(&raw).unwrap();
        assert!(matches!(rx.step(&mut sink), Err(Error::Protocol(_))));
    }

    proptest::proptest! {
        /// Hostile data (well-framed, arbitrary content) after a valid list start: errors,
        /// never panics, never unbounded buffering.
        #[test]
        fn arbitrary_stream_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), proto in 27u32..=32, varint in proptest::prelude::any::<bool>()) {
            let n = Negotiated { protocol: proto, compat_flags: if varint && proto >= 30 { 0x1fe } else { 0x2e }, checksum: ChecksumKind::Md5 { seed_fix: true }, seed: 3, motd: Vec::new(), motd_dropped: 0 };
            let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(n, opts());
            let mut sink = MemSink::default();
            let mut data = Vec::new();
            let mut enc = FlistEncoder::new(FlistOptions::archive(proto, if varint && proto >= 30 { 0x1fe } else { 0x2e }, false));
            enc.encode(&entry(".", S_IFDIR | 0o755, 1), &mut data);
            enc.encode(&entry("f", S_IFREG | 0o644, 10), &mut data);
            data.extend_from_slice(&body);
            let mut raw = Vec::new();
            encode_data(&data, &mut raw);
            for c in raw.chunks(97) {
                if rx.feed(c).is_err() { break; }
                match rx.step(&mut sink) {
                    Ok(Status::NeedInput) => { let _ = rx.take_output(); }
                    _ => break,
                }
                proptest::prop_assert!(rx.data.len() <= 64 * 1024);
            }
        }
    }

    /// A finished file list is kept compact (a third of the entries as received: on a
    /// tree of 110,000 files those were the receiver's largest allocation), sorted, and
    /// gives sinks back every field as it was received.
    #[test]
    fn a_finished_file_list_is_kept_compact_sorted_and_whole() {
        assert!(
            std::mem::size_of::<ListedEntry>() <= 64,
            "{} bytes an entry",
            std::mem::size_of::<ListedEntry>()
        );
        let count = 4_000;
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        let mut wire = vec![entry(".", S_IFDIR | 0o755, 1)];
        for d in 0..40 {
            wire.push(entry(&format!("d{d:02}"), S_IFDIR | 0o755, 1));
        }
        // Wire order is not sorted order: the list is permuted, not just taken over.
        for i in (0..count).rev() {
            let mut e = entry(&format!("d{:02}/f{i:05}", i % 40), S_IFREG | 0o644, i);
            e.uid = i as u32;
            if i % 7 == 0 {
                e.checksum = Some(vec![i as u8; 16]);
                e.user_name = Some(b"alice".to_vec());
            }
            wire.push(e);
        }
        let mut link = entry("d00/link", S_IFLNK | 0o777, 1);
        link.symlink = Some(b"../target".to_vec());
        wire.push(link);
        let mut dev = entry("d01/dev", S_IFCHR | 0o600, 0);
        dev.rdev = Some((8, 1));
        wire.push(dev);
        rx.wire = wire.clone();
        rx.finish_file_list().unwrap();
        assert_eq!(rx.entry_count(), wire.len());
        assert_eq!(
            rx.entries.capacity(),
            rx.entries.len(),
            "no room kept for more"
        );
        let got: Vec<FileEntry> = (0..wire.len() as u32)
            .map(|i| rx.entry(i).unwrap())
            .collect();
        let order = crate::sort::sort_order(&got, 31);
        assert!(order.iter().enumerate().all(|(i, &o)| i == o), "sorted");
        let mut want = wire;
        want.sort_by(|a, b| a.name.cmp(&b.name));
        let mut got = got;
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got, want);
    }

    #[test]
    fn sorting_in_place_follows_the_order_and_refuses_a_repeated_index() {
        let mut entries: Vec<FileEntry> = (0..7)
            .map(|i| entry(&format!("f{i}"), S_IFREG | 0o644, i))
            .collect();
        let mut order = vec![3, 0, 6, 1, 2, 5, 4];
        let want: Vec<i64> = order.iter().map(|&i| i as i64).collect();
        sort_in_place(&mut entries, &mut order).unwrap();
        assert_eq!(entries.iter().map(|e| e.size).collect::<Vec<_>>(), want);
        for bad in [vec![1, 1, 0], vec![0, 2, 2], vec![0, 1, 7], vec![0, 1]] {
            let mut entries: Vec<FileEntry> = (0..3)
                .map(|i| entry(&format!("f{i}"), S_IFREG | 0o644, i))
                .collect();
            let mut order = bad.clone();
            assert!(sort_in_place(&mut entries, &mut order).is_err(), "{bad:?}");
        }
    }
}

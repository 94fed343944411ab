//! The client receiver (spec §6, §10a): reads the file list, then runs the generator
//! (requests with block sums) and the receiver (replies, tokens, checksums) side by side.
//!
//! Concurrency without threads: the generator only produces output while less than
//! `OUTPUT_HIGH_WATER` bytes wait to be sent, and input is always consumed whenever it is
//! fed, so a driver that reads and writes concurrently can never deadlock with a peer that
//! is itself blocked writing to us.
//!
//! One module per phase, each state's handler returning [`Step`]: `flist` (the file
//! list and what follows it), `generator` (requests, block sums, the redo queue),
//! `transfer` (the sender's replies: ndx, iflags, sum head, tokens, file sum) and `finish`
//! (phase DONEs, completeness, stats, goodbye). This module holds the machine, its public
//! API, the step loop, messages and output buffering.

mod finish;
mod flist;
mod generator;
mod transfer;

use self::flist::ListedEntry;
use self::generator::{Gen, SigJob};
use self::transfer::TokenRun;
use super::demux::{Demux, InMsg};
use super::handshake::Negotiated;
use super::messages::{Handled, MessageTally, PeerMessages};
use super::{Outcome, ReceiveSink, Step};
use crate::codec::flist::{FileEntry, FlistDecoder, FlistOptions};
use crate::codec::mux::{encode_data, encode_frame, MsgTag};
use crate::codec::ndx::NdxCodec;
use crate::codec::prim::Decoded;
use crate::codec::sums::SumHead;
use crate::constants::*;
use crate::error::{DecodeError, Error};
use crate::limits::Limits;
use std::collections::HashMap;

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

/// Where the receiving side is. Each state's handler is in the module of its phase:
/// `flist` (the list), `transfer` (replies), `finish` (end of run).
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
    /// Rebuilding a file from its tokens.
    Tokens(TokenRun<B>),
    FileSum {
        ndx: u32,
        sum: Vec<u8>,
    },
    Stats,
    ExtraDoneEcho,
    Finished,
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
    outcome: Outcome,
    flist_done: bool,
    /// What the sender's messages have told us.
    peer: PeerMessages,
    /// Phase-closing DONEs we queued: the sender only ever echoes ours, so it may not
    /// close a phase we have not closed (an early DONE would end the run short).
    phase_dones_sent: u32,
    /// The sum head of each request awaiting its reply: the sender must echo it, or it
    /// could choose block sizes that make each token cost far more than we planned.
    sent_heads: HashMap<u32, SumHead>,
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
            outcome: Outcome {
                protocol: p,
                checksum: neg.checksum.name().to_owned(),
                checksum_seed: neg.seed,
                motd: neg.motd.clone(),
                motd_dropped: neg.motd_dropped,
                ..Outcome::default()
            },
            flist_done: false,
            peer: PeerMessages::default(),
            phase_dones_sent: 0,
            sent_heads: HashMap::new(),
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
        self.peer.timeout()
    }

    /// The last error text the peer sent, if any: explains an abrupt close.
    pub fn last_error(&self) -> Option<&str> {
        self.peer.last_error()
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
                Handled::Show(kind, text) => sink.message(kind, &text),
                Handled::Exit { acknowledge, error } => {
                    if acknowledge {
                        self.flush_pending();
                        encode_frame(MsgTag::ErrorExit, &[], &mut self.out);
                    }
                    return Err(error);
                }
                Handled::Role(InMsg::NoSend(ndx)) => {
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
                // A receiver is told of deletions and successes only by its own sender.
                Handled::Role(_) => {}
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

    /// Decodes one ndx with the incoming codec (which keeps the previous one for its
    /// deltas); `None` when more input is needed.
    fn take_ndx(&mut self) -> Result<Option<i32>, Error> {
        let mut codec = self.ndx_in.clone();
        match codec.decode(self.avail())? {
            Decoded::Incomplete { .. } => Ok(None),
            Decoded::Complete { value, consumed } => {
                self.ndx_in = codec;
                self.data_pos += consumed;
                Ok(Some(value))
            }
        }
    }

    /// Runs the receiving side's states over the buffered input; true if any input was
    /// consumed (every state change consumes some). Each state's handler lives in its
    /// phase's module and says whether it needs more input or which state comes next.
    fn step_rx(&mut self, sink: &mut S) -> Result<bool, Error> {
        let mut progressed = false;
        loop {
            let consumed_before = self.data_pos;
            // Taken out while its handler runs; an error leaves the machine finished.
            let mut rx = std::mem::replace(&mut self.rx, Rx::Finished);
            let step = match &mut rx {
                Rx::FileList => self.rx_file_list()?,
                Rx::IdLists { uid_done } => self.rx_id_lists(*uid_done)?,
                Rx::IoErrorPre30 => self.rx_io_error_pre30()?,
                Rx::ExpectNdx => self.rx_ndx(sink)?,
                Rx::Iflags { ndx } => self.rx_iflags(*ndx)?,
                Rx::SumHead { ndx } => self.rx_sum_head(sink, *ndx)?,
                Rx::Tokens(run) => self.rx_tokens(sink, run)?,
                Rx::FileSum { ndx, sum } => self.rx_file_sum(sink, *ndx, sum)?,
                Rx::Stats => self.rx_stats()?,
                Rx::ExtraDoneEcho => self.rx_extra_done_echo()?,
                Rx::Finished => Step::Next(Rx::Finished),
            };
            match step {
                Step::NeedInput => {
                    self.rx = rx;
                    // A token run may have consumed literal data before it ran dry.
                    return Ok(progressed || self.data_pos != consumed_before);
                }
                Step::Next(next) => {
                    self.rx = next;
                    progressed = true;
                    if matches!(self.rx, Rx::Finished) {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

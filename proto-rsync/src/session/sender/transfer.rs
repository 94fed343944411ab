//! Phase 2 of a push: the receiver's generator asks for files and we answer (spec §6.2,
//! §6.6). A request is an index, item flags (with an optional basis type and name), and
//! for a transfer a sum head and the receiver's block sums; the reply echoes all but the
//! sums, then the content as tokens and the whole-file checksum. `NDX_DONE` closes phase
//! 0 (all files) and phase 1 (redo of files that failed their checksum), each echoed;
//! the third ends the loop (spec §6.8).
//!
//! Everything read here comes from the network and is bounded before use: the index
//! names an entry of the list, a transfer names a regular file and comes before phase 2,
//! the sum head passes stock 3.5.0's checks (count not negative, block length
//! 1..=131072, strong sums no longer than the checksum, remainder within a block).
//! Sums beyond `Limits::max_blocks` or `Limits::max_sum_bytes` (a stock generator sends
//! up to 32 M blocks for a basis above 2 TiB) are read and dropped as they arrive, exactly
//! the `count * (4 + s2length)` bytes the head announces, and the file goes out whole as
//! literal data: any mix of tokens is a valid reply, so this costs bandwidth, not memory.

use super::matcher::{BlockTable, Delta};
use super::{Ctx, SendSource, State, CONTENT_READ_SIZE, OUTPUT_HIGH_WATER};
use crate::codec::mux::MsgTag;
use crate::codec::prim::{put_i32, put_u16, put_vstring, run};
use crate::codec::sums::SumHead;
use crate::constants::*;
use crate::error::{DecodeError, Error};
use crate::limits::Limits;
use crate::session::Step;

/// The last phase that may carry transfer requests (1 = the redo phase).
const LAST_TRANSFER_PHASE: u32 = 1;
/// `NDX_DONE`s the generator sends before the sender leaves its loop: 29 added the
/// delay-updates phase to phase 0 and the redo phase.
fn max_phase(protocol: u32) -> u32 {
    if protocol >= 29 {
        2
    } else {
        1
    }
}

/// One request's item fields, echoed in the reply.
#[derive(Debug, Clone)]
struct Item {
    ndx: u32,
    iflags: u16,
    basis_type: Option<u8>,
    xname: Option<Vec<u8>>,
}

/// A reply being streamed.
struct Sending<C> {
    ndx: u32,
    content: C,
    delta: Delta,
}

impl<C> std::fmt::Debug for Sending<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending")
            .field("ndx", &self.ndx)
            .field("delta", &self.delta)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Req<C> {
    /// Waiting for the next index (or `NDX_DONE`).
    Ndx,
    Attrs {
        ndx: u32,
    },
    Head {
        item: Item,
    },
    Sums {
        item: Item,
        table: BlockTable,
    },
    /// Sums too many to keep: `left` bytes of them still to drop.
    SkipSums {
        item: Item,
        head: SumHead,
        left: u64,
    },
    Send(Box<Sending<C>>),
}

/// The request loop.
#[derive(Debug)]
pub(crate) struct TransferPhase<C> {
    phase: u32,
    req: Req<C>,
    /// io_error bits of our own failures (open, read), reported with `MSG_IO_ERROR`.
    own_io_error: u32,
    /// The content buffer, reused from file to file.
    spare: Vec<u8>,
}

impl<C> TransferPhase<C> {
    pub(crate) fn new() -> Self {
        TransferPhase {
            phase: 0,
            req: Req::Ndx,
            own_io_error: 0,
            spare: Vec::new(),
        }
    }

    /// Whether a reply is being streamed (work that needs no input).
    pub(crate) fn is_sending(&self) -> bool {
        matches!(self.req, Req::Send(_))
    }
}

impl<C: super::FileContent> TransferPhase<C> {
    pub(crate) fn step<S: SendSource<Content = C>>(
        &mut self,
        ctx: &mut Ctx,
        source: &mut S,
    ) -> Result<Step<State<C>>, Error> {
        let p = ctx.neg.protocol;
        let lim = ctx.opts.limits.clone();
        loop {
            let req = std::mem::replace(&mut self.req, Req::Ndx);
            self.req = match req {
                Req::Ndx => match ctx.read_ndx()? {
                    None => {
                        self.req = Req::Ndx;
                        return Ok(Step::NeedInput);
                    }
                    Some(NDX_DONE) => {
                        self.phase += 1;
                        if self.phase > max_phase(p) {
                            return Ok(Step::Next(self.end_of_transfer(ctx)));
                        }
                        ctx.send_ndx(NDX_DONE);
                        Req::Ndx
                    }
                    Some(n) if n < 0 => {
                        return Err(Error::BadRequest {
                            ndx: n.into(),
                            reason: "negative index without incremental recursion",
                        })
                    }
                    // 29's keep-alive names the index past the list (checked with its
                    // item flags below).
                    Some(n) if p == 29 && n as usize == ctx.list.entries.len() => {
                        Req::Attrs { ndx: n as u32 }
                    }
                    Some(n) => {
                        if n as usize >= ctx.list.entries.len() {
                            return Err(DecodeError::BadNdx(n.into()).into());
                        }
                        if p < 29 {
                            // No item flags before 29: every request is a transfer.
                            let item = Item {
                                ndx: n as u32,
                                iflags: ITEM_TRANSFER,
                                basis_type: None,
                                xname: None,
                            };
                            self.check_transfer(ctx, item.ndx)?;
                            ctx.outcome.progress.files_requested += 1;
                            Req::Head { item }
                        } else {
                            Req::Attrs { ndx: n as u32 }
                        }
                    }
                },
                Req::Attrs { ndx } => {
                    let max_x = lim.max_vstring.min(lim.max_name);
                    let attrs = ctx.take(|b| {
                        run(b, |c| {
                            let iflags = c.u16()?;
                            let basis_type = if iflags & ITEM_BASIS_TYPE_FOLLOWS != 0 {
                                Some(c.u8()?)
                            } else {
                                None
                            };
                            let xname = if iflags & ITEM_XNAME_FOLLOWS != 0 {
                                Some(c.vstring(max_x)?.to_vec())
                            } else {
                                None
                            };
                            Ok((iflags, basis_type, xname))
                        })
                    })?;
                    let Some((iflags, basis_type, xname)) = attrs else {
                        self.req = Req::Attrs { ndx };
                        return Ok(Step::NeedInput);
                    };
                    if ndx as usize == ctx.list.entries.len() {
                        if iflags == ITEM_IS_NEW && basis_type.is_none() && xname.is_none() {
                            continue;
                        }
                        return Err(DecodeError::BadNdx(ndx.into()).into());
                    }
                    let item = Item {
                        ndx,
                        iflags,
                        basis_type,
                        xname,
                    };
                    if iflags & ITEM_TRANSFER == 0 {
                        // An itemization only: echoed so the receiving side can log it.
                        write_item(ctx, &item);
                        Req::Ndx
                    } else {
                        self.check_transfer(ctx, ndx)?;
                        ctx.outcome.progress.files_requested += 1;
                        Req::Head { item }
                    }
                }
                Req::Head { item } => {
                    let xfer = ctx.neg.checksum.len();
                    // Stock bounds the count only by its sign: larger heads than we keep
                    // are valid and answered whole (see `SkipSums`).
                    let as_stock = Limits {
                        max_blocks: i32::MAX as u32,
                        ..lim.clone()
                    };
                    let Some(head) = ctx.take(|b| SumHead::decode(b, p, xfer, &as_stock))? else {
                        self.req = Req::Head { item };
                        return Ok(Step::NeedInput);
                    };
                    let bytes = u64::from(head.count) * (4 + u64::from(head.s2length));
                    if head.count == 0 {
                        self.open(ctx, source, item, head, None)
                    } else if head.count > lim.max_blocks || bytes > lim.max_sum_bytes {
                        tracing::warn!(
                            ndx = item.ndx,
                            blocks = head.count,
                            sum_bytes = bytes,
                            "more block sums than we keep: dropping them, sending the file whole"
                        );
                        Req::SkipSums {
                            item,
                            head,
                            left: bytes,
                        }
                    } else {
                        Req::Sums {
                            item,
                            table: BlockTable::new(head),
                        }
                    }
                }
                Req::Sums { item, mut table } => {
                    read_sums(ctx, &mut table);
                    if !table.is_complete() {
                        self.req = Req::Sums { item, table };
                        return Ok(Step::NeedInput);
                    }
                    table.index();
                    let head = table.head();
                    self.open(ctx, source, item, head, Some(table))
                }
                Req::SkipSums { item, head, left } => {
                    let n = (ctx.avail().len() as u64).min(left);
                    ctx.consume(n as usize);
                    ctx.spend(n);
                    let left = left - n;
                    if left > 0 {
                        self.req = Req::SkipSums { item, head, left };
                        return Ok(Step::NeedInput);
                    }
                    self.open(ctx, source, item, head, None)
                }
                Req::Send(mut s) => {
                    if ctx.must_pause() {
                        self.req = Req::Send(s);
                        return Ok(Step::NeedInput);
                    }
                    let mut budget = ctx.work_left;
                    let Sending { content, delta, .. } = &mut *s;
                    let done = ctx.with_data_writer(|out| {
                        delta.pump(content, out, OUTPUT_HIGH_WATER, &mut budget)
                    });
                    ctx.work_left = budget;
                    if done {
                        self.finish_file(ctx, source, *s);
                        Req::Ndx
                    } else {
                        Req::Send(s)
                    }
                }
            };
        }
    }

    /// A transfer must name a regular file and come before phase 2 (stock 3.5.0's rule).
    fn check_transfer(&self, ctx: &Ctx, ndx: u32) -> Result<(), Error> {
        let bad = |reason| Error::BadRequest {
            ndx: ndx.into(),
            reason,
        };
        if self.phase > LAST_TRANSFER_PHASE {
            return Err(bad("transfer requested after the redo phase"));
        }
        match ctx.list.by_ndx(ndx) {
            Some((_, e)) if e.is_regular() => Ok(()),
            _ => Err(bad(
                "transfer requested for an entry that is not a regular file",
            )),
        }
    }

    /// Opens the file and starts the reply (echoing `head`; matching against `table`
    /// if any, else all literal), or tells the receiver it will not come.
    fn open<S: SendSource<Content = C>>(
        &mut self,
        ctx: &mut Ctx,
        source: &mut S,
        item: Item,
        head: SumHead,
        table: Option<BlockTable>,
    ) -> Req<C> {
        let Some((wire, entry)) = ctx.list.by_ndx(item.ndx) else {
            // Checked when the index arrived.
            return Req::Ndx;
        };
        match source.open(wire, entry) {
            Ok(content) => {
                write_item(ctx, &item);
                head.encode(ctx.neg.protocol, ctx.pending_mut());
                let buf = std::mem::take(&mut self.spare);
                let delta = Delta::new(
                    table,
                    ctx.neg.checksum,
                    ctx.neg.seed,
                    buf,
                    CONTENT_READ_SIZE,
                );
                Req::Send(Box::new(Sending {
                    ndx: item.ndx,
                    content,
                    delta,
                }))
            }
            Err(e) => {
                let name = entry.name_lossy();
                let vanished = e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                let text = if vanished {
                    format!("file has vanished: \"{name}\"")
                } else {
                    format!("send_files failed to open \"{name}\": {e}")
                };
                ctx.file_error(&name, text, vanished);
                self.own_io_error |= if vanished {
                    IOERR_VANISHED
                } else {
                    IOERR_GENERAL
                };
                // No reply follows: the receiver must not wait for one (spec §6.6). Below
                // 30 it cannot be told; it finds the file missing at the end, as with stock.
                ctx.send_msg(MsgTag::NoSend, &(item.ndx as i32).to_le_bytes());
                Req::Ndx
            }
        }
    }

    /// The end token and the whole-file sum; counters; the caller's progress callback.
    fn finish_file<S: SendSource<Content = C>>(
        &mut self,
        ctx: &mut Ctx,
        source: &mut S,
        s: Sending<C>,
    ) {
        let Sending { ndx, delta, .. } = s;
        let failed = delta.read_error.as_ref().map(|e| e.to_string());
        ctx.outcome.progress.literal_bytes += delta.literal_bytes;
        ctx.outcome.progress.matched_bytes += delta.matched_bytes;
        let (sum, buf) = delta.finish();
        self.spare = buf;
        put_i32(ctx.pending_mut(), 0);
        ctx.send(&sum);
        match failed {
            Some(err) => {
                let name = ctx
                    .list
                    .by_ndx(ndx)
                    .map(|(_, e)| e.name_lossy())
                    .unwrap_or_default();
                ctx.file_error(
                    &name,
                    format!("read errors mapping \"{name}\": {err}"),
                    false,
                );
                self.own_io_error |= IOERR_GENERAL;
            }
            None => ctx.outcome.progress.files_sent += 1,
        }
        source.progress(&ctx.progress());
    }

    /// The third `NDX_DONE`: our own errors' io_error, then our final `NDX_DONE`.
    fn end_of_transfer(&mut self, ctx: &mut Ctx) -> State<C> {
        if self.own_io_error != 0 {
            ctx.send_msg(MsgTag::IoError, &(self.own_io_error as i32).to_le_bytes());
        }
        ctx.send_ndx(NDX_DONE);
        ctx.flush_pending();
        State::Finish(super::finish::FinishPhase::new())
    }
}

/// Takes as many complete block sums as the input holds.
fn read_sums(ctx: &mut Ctx, table: &mut BlockTable) {
    let head = table.head();
    let per = 4 + head.s2length as usize;
    let want = head.count as usize - table.len();
    let n = (ctx.avail().len() / per).min(want);
    for rec in ctx.avail()[..n * per].chunks_exact(per) {
        let weak = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        table.push(weak, &rec[4..]);
    }
    ctx.consume(n * per);
    ctx.spend((n * per) as u64);
}

/// Index, item flags and their optional fields, as a reply starts (the flags and fields
/// from protocol 29 on).
fn write_item(ctx: &mut Ctx, item: &Item) {
    ctx.send_ndx(item.ndx as i32);
    if ctx.neg.protocol < 29 {
        ctx.sent();
        return;
    }
    let out = ctx.pending_mut();
    put_u16(out, item.iflags);
    if let Some(t) = item.basis_type {
        out.push(t);
    }
    if let Some(x) = &item.xname {
        put_vstring(out, x);
    }
    ctx.sent();
}

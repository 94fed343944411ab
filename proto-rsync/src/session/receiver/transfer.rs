//! The receiver proper (spec §6.3–§6.5, §10a): the sender's replies, each an ndx, its
//! iflags, the echoed sum head, the tokens that rebuild the file from literal data and
//! basis blocks, and the whole-file checksum that decides between keeping the file and
//! a redo.

use super::{ClientReceiver, FileState, Rx};
use crate::checksum::FileHasher;
use crate::codec::prim::{run, Decoded};
use crate::codec::sums::SumHead;
use crate::codec::token::{decode_token, Token};
use crate::constants::*;
use crate::error::{DecodeError, Error};
use crate::session::{Basis, ReceiveSink, Step};

/// A file being rebuilt from its tokens.
#[derive(Debug)]
pub(super) struct TokenRun<B> {
    ndx: u32,
    head: SumHead,
    basis: Option<B>,
    hasher: Box<FileHasher>,
    /// Literal bytes of the current run still to come.
    literal: u32,
    /// Bytes copied from the basis by block tokens so far, against `Limits::max_rebuilt`
    /// (literal bytes cost the sender one wire byte each and are not counted).
    rebuilt: u64,
}

impl<S: ReceiveSink> ClientReceiver<S> {
    /// The ndx opening a reply, or a DONE closing a phase.
    pub(super) fn rx_ndx(&mut self, sink: &mut S) -> Result<Step<Rx<S::Basis>>, Error> {
        let Some(ndx) = self.take_ndx()? else {
            return Ok(Step::NeedInput);
        };
        if ndx == NDX_DONE {
            return self.on_phase_done(sink).map(Step::Next);
        }
        if ndx < 0 {
            return Err(Error::Protocol(format!(
                "unexpected negative file index {ndx} without incremental recursion"
            )));
        }
        let ndx = ndx as u32;
        if self.neg.protocol >= 29 {
            return Ok(Step::Next(Rx::Iflags { ndx }));
        }
        if (ndx as usize) >= self.entries.len() {
            return Err(DecodeError::BadNdx(ndx.into()).into());
        }
        self.check_requested(ndx)?;
        Ok(Step::Next(Rx::SumHead { ndx }))
    }

    /// The reply's iflags (29+), with the basis type and name they may announce.
    pub(super) fn rx_iflags(&mut self, ndx: u32) -> Result<Step<Rx<S::Basis>>, Error> {
        let p = self.neg.protocol;
        let max_vstring = self.opts.limits.max_vstring;
        let r = run(self.avail(), |c| {
            let iflags = c.u16()?;
            if iflags & ITEM_BASIS_TYPE_FOLLOWS != 0 {
                c.u8()?;
            }
            if iflags & ITEM_XNAME_FOLLOWS != 0 {
                c.vstring(max_vstring)?;
            }
            Ok(iflags)
        })?;
        let Decoded::Complete {
            value: iflags,
            consumed,
        } = r
        else {
            return Ok(Step::NeedInput);
        };
        self.data_pos += consumed;
        Ok(Step::Next(
            if ndx as usize == self.entries.len() && iflags == ITEM_IS_NEW && p < 30 {
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
            },
        ))
    }

    /// The sum head, which must echo the one we requested the file with.
    pub(super) fn rx_sum_head(
        &mut self,
        sink: &mut S,
        ndx: u32,
    ) -> Result<Step<Rx<S::Basis>>, Error> {
        let p = self.neg.protocol;
        let xfer = self.neg.checksum.len();
        let lim = self.opts.limits.clone();
        let Some(head) = self.take(|b| SumHead::decode(b, p, xfer, &lim))? else {
            return Ok(Step::NeedInput);
        };
        self.begin_file(sink, ndx, head).map(Step::Next)
    }

    /// Tokens until the file's end: literal runs go to the sink as they arrive, block
    /// tokens are copied from the basis.
    pub(super) fn rx_tokens(
        &mut self,
        sink: &mut S,
        run: &mut TokenRun<S::Basis>,
    ) -> Result<Step<Rx<S::Basis>>, Error> {
        loop {
            if run.literal > 0 {
                let n = (run.literal as usize).min(self.avail().len());
                if n == 0 {
                    return Ok(Step::NeedInput);
                }
                let start = self.data_pos;
                let chunk = &self.data[start..start + n];
                run.hasher.update(chunk);
                sink.content(chunk).map_err(Error::Sink)?;
                self.data_pos += n;
                self.outcome.literal_bytes += n as u64;
                run.literal -= n as u32;
                continue;
            }
            let lim = self.opts.limits.clone();
            let count = run.head.count;
            let Some(token) = self.take(|b| decode_token(b, count, &lim))? else {
                return Ok(Step::NeedInput);
            };
            match token {
                Token::Literal(n) => run.literal = n,
                Token::Block(k) => {
                    let b = run.basis.as_mut().ok_or(DecodeError::BadToken {
                        token: -(k as i32) - 1,
                        count: 0,
                    })?;
                    let len = run.head.block_len(k) as usize;
                    // Before reading: one 4-byte token names a whole block.
                    run.rebuilt = self.check_rebuilt(run.ndx, b.len(), run.rebuilt, len as u32)?;
                    let off = u64::from(k) * u64::from(run.head.blength);
                    self.scratch.resize(len, 0);
                    b.read_at(off, &mut self.scratch).map_err(Error::Sink)?;
                    run.hasher.update(&self.scratch);
                    sink.content(&self.scratch).map_err(Error::Sink)?;
                    self.outcome.matched_bytes += len as u64;
                }
                Token::End => {
                    // The run is over: its hasher is finished (the fresh one left in its
                    // place is dropped with the run).
                    let fresh = FileHasher::new(self.neg.checksum, self.neg.seed);
                    let hasher = std::mem::replace(&mut *run.hasher, fresh);
                    return Ok(Step::Next(Rx::FileSum {
                        ndx: run.ndx,
                        sum: hasher.finish(),
                    }));
                }
            }
        }
    }

    /// The sender's whole-file checksum, compared with ours.
    pub(super) fn rx_file_sum(
        &mut self,
        sink: &mut S,
        ndx: u32,
        sum: &[u8],
    ) -> Result<Step<Rx<S::Basis>>, Error> {
        let n = sum.len();
        let Some(theirs) = self.take(|b| run(b, |c| c.bytes(n).map(<[u8]>::to_vec)))? else {
            return Ok(Step::NeedInput);
        };
        self.end_file(sink, ndx, theirs == sum)?;
        Ok(Step::Next(Rx::ExpectNdx))
    }

    fn check_requested(&self, ndx: u32) -> Result<(), Error> {
        match self.state.get(ndx as usize) {
            Some(FileState::Requested) => Ok(()),
            _ => Err(Error::Protocol(format!(
                "sender replied for file {ndx}, which was not requested"
            ))),
        }
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
        Ok(Rx::Tokens(TokenRun {
            ndx,
            head,
            basis,
            hasher,
            literal: 0,
            rebuilt: 0,
        }))
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
}

//! The generator (spec §6.2, §10a): walks the sorted list asking the sink what to
//! transfer, writes each request (ndx, iflags, sum head, the basis's block sums) while
//! output has room and the step's budget lasts, then re-requests the files that failed
//! verification (the redo phase) and closes each phase with a DONE.

use super::{ClientReceiver, FileState, MIN_WORK_COST};
use crate::codec::flist::HardLink;
use crate::codec::sums::SumHead;
use crate::constants::*;
use crate::delta::write_block_signature;
use crate::error::Error;
use crate::session::{Basis, EntryAction, ReceiveSink};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gen {
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
pub(super) struct SigJob<B> {
    basis: B,
    head: SumHead,
    next: u32,
}

impl<S: ReceiveSink> ClientReceiver<S> {
    pub(super) fn step_gen(&mut self, sink: &mut S) -> Result<bool, Error> {
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

    /// The sender finished phase 0, so every verification failure is known now; the
    /// generator re-requests them and closes phase 1 itself.
    pub(super) fn start_redo_phase(&mut self) {
        let mut q = std::mem::take(&mut self.redo);
        q.reverse();
        self.outcome.redone += q.len() as u64;
        self.redo_queue = q;
        self.gen = Gen::Redo;
    }
}

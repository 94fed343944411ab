//! The end of a run (spec §6.7, §6.8, §10a): the phase-closing DONEs and their echoes,
//! the check that every requested file was accounted for, the sender's statistics, the
//! extra DONE round of 31+, our goodbye, and the exit code the run corresponds to.

use super::{ClientReceiver, FileState, Rx};
use crate::codec::prim::{run, Decoded};
use crate::constants::*;
use crate::error::Error;
use crate::session::{Outcome, ReceiveSink, SenderStats, Step};

impl<S: ReceiveSink> ClientReceiver<S> {
    /// The sender echoed the DONE closing the current phase.
    pub(super) fn on_phase_done(&mut self, sink: &mut S) -> Result<Rx<S::Basis>, Error> {
        let p = self.neg.protocol;
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
            self.start_redo_phase();
        } else {
            self.send_phase_done();
        }
        Ok(Rx::ExpectNdx)
    }

    /// The sender's statistics, then our DONE (the extra round at 31+, else the goodbye).
    pub(super) fn rx_stats(&mut self) -> Result<Step<Rx<S::Basis>>, Error> {
        let p = self.neg.protocol;
        let n = if p >= 29 { 5 } else { 3 };
        let r = run(self.avail(), |c| {
            let mut v = [0i64; 5];
            for x in v.iter_mut().take(n) {
                *x = c.varlong30(p, 3)?;
            }
            Ok(v)
        })?;
        let Decoded::Complete { value: v, consumed } = r else {
            return Ok(Step::NeedInput);
        };
        self.data_pos += consumed;
        self.outcome.sender_stats = SenderStats {
            total_read: v[0],
            total_written: v[1],
            total_size: v[2],
            flist_buildtime_ms: v[3],
            flist_xfertime_ms: v[4],
        };
        Ok(Step::Next(if p >= 31 {
            // The extra DONE round of 31+ (spec §6.8).
            self.send_ndx(NDX_DONE);
            Rx::ExtraDoneEcho
        } else {
            self.send_ndx(NDX_DONE);
            Rx::Finished
        }))
    }

    /// The sender's echo of the extra DONE (31+), answered with the final goodbye.
    pub(super) fn rx_extra_done_echo(&mut self) -> Result<Step<Rx<S::Basis>>, Error> {
        let Some(ndx) = self.take_ndx()? else {
            return Ok(Step::NeedInput);
        };
        if ndx != NDX_DONE {
            return Err(Error::Protocol(format!(
                "expected the final NDX_DONE echo, got {ndx}"
            )));
        }
        // Final goodbye.
        self.send_ndx(NDX_DONE);
        Ok(Step::Next(Rx::Finished))
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

    pub(super) fn finish_outcome(&mut self) {
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

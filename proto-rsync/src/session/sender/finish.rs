//! Phase 3 of a push: the goodbye (spec §6.8). Our final `NDX_DONE` is queued when the
//! transfer loop ends; then the receiver's generator says goodbye: at protocol 31+ an
//! optional `NDX_DEL_STATS` report (taken wherever an index is read), an `NDX_DONE` we
//! answer with one of ours, and a last `NDX_DONE`; at 30 a single `NDX_DONE`. A client
//! sender writes no statistics (only a server sender does).

use super::{Ctx, State};
use crate::constants::NDX_DONE;
use crate::error::Error;
use crate::session::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The generator's goodbye `NDX_DONE`.
    Goodbye,
    /// 31+: the `NDX_DONE` that follows our answer.
    Last,
}

#[derive(Debug)]
pub(crate) struct FinishPhase {
    wait: Wait,
}

impl FinishPhase {
    pub(crate) fn new() -> Self {
        FinishPhase {
            wait: Wait::Goodbye,
        }
    }

    pub(crate) fn step<C>(&mut self, ctx: &mut Ctx) -> Result<Step<State<C>>, Error> {
        loop {
            let Some(ndx) = ctx.read_ndx()? else {
                return Ok(Step::NeedInput);
            };
            if ndx != NDX_DONE {
                return Err(Error::Protocol(format!(
                    "expected NDX_DONE in the receiver's goodbye, got index {ndx}"
                )));
            }
            match self.wait {
                Wait::Goodbye if ctx.neg.protocol >= 31 => {
                    ctx.send_ndx(NDX_DONE);
                    ctx.flush_pending();
                    self.wait = Wait::Last;
                }
                Wait::Goodbye | Wait::Last => return Ok(Step::Next(State::Finished)),
            }
        }
    }
}

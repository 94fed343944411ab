//! The peer's messages as both roles take them: texts kept within bounds, the `io_error`
//! bits, the announced I/O timeout, and the fatal-exit handshake (spec §3.3).

use super::demux::InMsg;
use super::MessageKind;
use crate::constants::{IOERR_GENERAL, IOERR_KNOWN_BITS, RERR_PARTIAL};
use crate::error::Error;
use crate::limits::Limits;

/// What the peer's messages have told a session so far.
#[derive(Debug, Default)]
pub(crate) struct PeerMessages {
    /// The peer's last error text: it explains a fatal exit or a close that follows it.
    last_error: String,
    /// The I/O timeout the peer announced, which our keep-alives must stay inside.
    timeout: Option<u32>,
    kept: usize,
    bytes_kept: usize,
}

/// The parts of a role's outcome that the peer's messages add to.
#[derive(Debug)]
pub(crate) struct MessageTally<'a> {
    pub io_error: &'a mut u32,
    pub warnings: &'a mut Vec<String>,
    pub dropped: &'a mut u64,
}

/// What is left to the role after [`PeerMessages::take`].
#[derive(Debug)]
pub(crate) enum Handled {
    /// Nothing.
    Done,
    /// A text kept within the bounds, for the caller's sink or source.
    Show(MessageKind, String),
    /// The peer is exiting on a fatal error: from protocol 31 on, queue the empty
    /// `ERROR_EXIT` acknowledgement a stock client sends, then stop with `error`.
    Exit { acknowledge: bool, error: Error },
    /// A message only this role acts on.
    Role(InMsg),
}

impl PeerMessages {
    pub(crate) fn last_error(&self) -> Option<&str> {
        Some(self.last_error.as_str()).filter(|s| !s.is_empty())
    }

    pub(crate) fn timeout(&self) -> Option<u32> {
        self.timeout
    }

    /// Takes in one message from the peer at `protocol`.
    pub(crate) fn take(
        &mut self,
        m: InMsg,
        protocol: u32,
        limits: &Limits,
        tally: MessageTally<'_>,
    ) -> Handled {
        match m {
            InMsg::Text(kind, text) => {
                if kind == MessageKind::ErrorXfer {
                    *tally.io_error |= IOERR_GENERAL;
                }
                // openrsync writes an error's text and its newline as two frames: the bare
                // newline adds nothing, and must not replace the error it ends.
                if text.trim().is_empty() {
                    return Handled::Done;
                }
                // The meaning of a message is kept whatever its rank; its text only while
                // within bounds, so a chatty or hostile peer cannot fill memory or the log.
                if kind == MessageKind::ErrorXfer || kind == MessageKind::Error {
                    self.last_error = text.trim_end().to_owned();
                }
                if self.kept >= limits.max_messages_kept
                    || self.bytes_kept + text.len() > limits.max_message_bytes_kept
                {
                    *tally.dropped += 1;
                    return Handled::Done;
                }
                self.kept += 1;
                self.bytes_kept += text.len();
                if kind != MessageKind::Info {
                    tally.warnings.push(text.trim_end().to_owned());
                }
                Handled::Show(kind, text)
            }
            InMsg::IoError(bits) => {
                *tally.io_error |= bits & IOERR_KNOWN_BITS;
                Handled::Done
            }
            InMsg::IoTimeout(secs) => {
                tracing::debug!(secs, "peer announced its I/O timeout");
                // Like 3.5.0, ignore nonsense values; only ever shorten our interval.
                if (1..=86_400).contains(&secs) {
                    self.timeout = Some(secs as u32);
                }
                Handled::Done
            }
            InMsg::ErrorExit(code) => Handled::Exit {
                acknowledge: protocol >= 31,
                error: Error::RemoteExit {
                    code: code.unwrap_or(RERR_PARTIAL),
                    message: std::mem::take(&mut self.last_error),
                },
            },
            other => Handled::Role(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openrsync's daemon reports a refusal after multiplexing starts as two `ERROR_XFER`
    /// frames, the text then `"\n"`: the error kept is the text, shown once.
    #[test]
    fn an_error_split_from_its_newline_keeps_its_text() {
        let mut m = PeerMessages::default();
        let (mut io_error, mut warnings, mut dropped) = (0, Vec::new(), 0);
        let mut shown = Vec::new();
        for text in ["mod: chroot failed", "\n"] {
            let tally = MessageTally {
                io_error: &mut io_error,
                warnings: &mut warnings,
                dropped: &mut dropped,
            };
            let msg = InMsg::Text(MessageKind::ErrorXfer, text.into());
            if let Handled::Show(_, t) = m.take(msg, 29, &Limits::default(), tally) {
                shown.push(t);
            }
        }
        assert_eq!(m.last_error(), Some("mod: chroot failed"));
        assert_eq!(shown, ["mod: chroot failed"]);
        assert_eq!(warnings, ["mod: chroot failed"]);
        assert_eq!(io_error, IOERR_GENERAL);
    }
}

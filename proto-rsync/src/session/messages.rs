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
                // The meaning of a message is kept whatever its rank; its text only while
                // within bounds, so a chatty or hostile peer cannot fill memory or the log.
                if kind == MessageKind::ErrorXfer || kind == MessageKind::Error {
                    self.last_error = text.trim_end().to_owned();
                }
                if kind == MessageKind::ErrorXfer {
                    *tally.io_error |= IOERR_GENERAL;
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

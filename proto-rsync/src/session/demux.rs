//! Incoming multiplexed stream → protocol data bytes + out-of-band messages. Data payloads
//! are passed through as they arrive (a frame may be split across reads and fields may
//! straddle frames); message payloads are bounded by `Limits::max_message`.

use super::MessageKind;
use crate::codec::mux::{decode_header, MsgTag};
use crate::codec::Decoded;
use crate::error::DecodeError;
use crate::limits::Limits;

/// An out-of-band message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InMsg {
    Text(MessageKind, String),
    IoError(u32),
    IoTimeout(i32),
    NoSend(i32),
    /// `None` = the empty acknowledgement form.
    ErrorExit(Option<i32>),
    Deleted(Vec<u8>),
    Success(i32),
    Noop,
}

#[derive(Debug, Clone)]
enum State {
    Header { buf: [u8; 4], have: usize },
    Data { remaining: usize },
    Msg { tag: MsgTag, len: usize },
}

/// Demultiplexer state.
#[derive(Debug, Clone)]
pub struct Demux {
    limits: Limits,
    state: State,
    msg: Vec<u8>,
}

impl Demux {
    pub fn new(limits: Limits) -> Self {
        Demux {
            limits,
            state: State::Header {
                buf: [0; 4],
                have: 0,
            },
            msg: Vec::new(),
        }
    }

    /// Consumes all of `raw`, appending data to `data` and decoded messages to `msgs`.
    pub fn push(
        &mut self,
        mut raw: &[u8],
        data: &mut Vec<u8>,
        msgs: &mut Vec<InMsg>,
    ) -> Result<(), DecodeError> {
        while !raw.is_empty() {
            match &mut self.state {
                State::Header { buf, have } => {
                    let n = (4 - *have).min(raw.len());
                    buf[*have..*have + n].copy_from_slice(&raw[..n]);
                    *have += n;
                    raw = &raw[n..];
                    if *have == 4 {
                        let hdr = match decode_header(&buf[..], &self.limits)? {
                            Decoded::Complete { value, .. } => value,
                            Decoded::Incomplete { .. } => {
                                return Err(DecodeError::Other("header state"))
                            }
                        };
                        self.state = if hdr.tag == MsgTag::Data {
                            State::Data { remaining: hdr.len }
                        } else {
                            self.msg.clear();
                            State::Msg {
                                tag: hdr.tag,
                                len: hdr.len,
                            }
                        };
                        self.finish_if_complete(msgs)?;
                    }
                }
                State::Data { remaining } => {
                    let n = (*remaining).min(raw.len());
                    data.extend_from_slice(&raw[..n]);
                    *remaining -= n;
                    raw = &raw[n..];
                    self.finish_if_complete(msgs)?;
                }
                State::Msg { len, .. } => {
                    let n = (*len - self.msg.len()).min(raw.len());
                    self.msg.extend_from_slice(&raw[..n]);
                    raw = &raw[n..];
                    self.finish_if_complete(msgs)?;
                }
            }
        }
        Ok(())
    }

    fn finish_if_complete(&mut self, msgs: &mut Vec<InMsg>) -> Result<(), DecodeError> {
        match self.state {
            State::Data { remaining: 0 } => {}
            State::Msg { tag, len } if self.msg.len() == len => {
                msgs.push(parse_msg(tag, &self.msg)?);
                self.msg.clear();
            }
            _ => return Ok(()),
        }
        self.state = State::Header {
            buf: [0; 4],
            have: 0,
        };
        Ok(())
    }
}

fn int_payload(tag: MsgTag, p: &[u8]) -> Result<i32, DecodeError> {
    let b: [u8; 4] = p.try_into().map_err(|_| DecodeError::TooLong {
        what: "int message",
        len: p.len() as u64,
        max: 4,
    })?;
    let _ = tag;
    Ok(i32::from_le_bytes(b))
}

/// Parses one complete message payload.
pub fn parse_msg(tag: MsgTag, p: &[u8]) -> Result<InMsg, DecodeError> {
    let text = || String::from_utf8_lossy(p).into_owned();
    Ok(match tag {
        MsgTag::Info => InMsg::Text(MessageKind::Info, text()),
        MsgTag::Warning => InMsg::Text(MessageKind::Warning, text()),
        MsgTag::ErrorXfer => InMsg::Text(MessageKind::ErrorXfer, text()),
        MsgTag::Error => InMsg::Text(MessageKind::Error, text()),
        MsgTag::IoError => InMsg::IoError(int_payload(tag, p)? as u32),
        MsgTag::IoTimeout => InMsg::IoTimeout(int_payload(tag, p)?),
        MsgTag::NoSend => InMsg::NoSend(int_payload(tag, p)?),
        MsgTag::Success => InMsg::Success(int_payload(tag, p)?),
        MsgTag::ErrorExit => InMsg::ErrorExit(if p.is_empty() {
            None
        } else {
            Some(int_payload(tag, p)?)
        }),
        MsgTag::Deleted => InMsg::Deleted(p.to_vec()),
        MsgTag::Noop => InMsg::Noop,
        MsgTag::Data => return Err(DecodeError::Other("data is not a message")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::mux::{encode_data, encode_frame};
    use proptest::prelude::*;

    #[test]
    fn splits_data_and_messages_at_any_boundary() {
        let mut raw = Vec::new();
        encode_data(b"hello ", &mut raw);
        encode_frame(MsgTag::Warning, b"careful\n", &mut raw);
        encode_data(b"", &mut raw);
        encode_frame(MsgTag::NoSend, &5i32.to_le_bytes(), &mut raw);
        encode_data(b"world", &mut raw);
        encode_frame(MsgTag::ErrorExit, &[], &mut raw);
        for step in 1..raw.len() {
            let mut d = Demux::new(Limits::default());
            let (mut data, mut msgs) = (Vec::new(), Vec::new());
            for c in raw.chunks(step) {
                d.push(c, &mut data, &mut msgs).unwrap();
            }
            assert_eq!(data, b"hello world");
            assert_eq!(
                msgs,
                [
                    InMsg::Text(MessageKind::Warning, "careful\n".into()),
                    InMsg::NoSend(5),
                    InMsg::ErrorExit(None),
                ]
            );
        }
    }

    #[test]
    fn rejects_bad_int_payload() {
        let mut raw = Vec::new();
        encode_frame(MsgTag::IoError, &[1, 2], &mut raw);
        let mut d = Demux::new(Limits::default());
        assert!(d.push(&raw, &mut Vec::new(), &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Demux::new(Limits { max_message: 64, ..Limits::default() });
            let _ = d.push(&b, &mut Vec::new(), &mut Vec::new());
        }
    }
}

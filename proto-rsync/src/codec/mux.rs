//! Multiplexed frames (spec §3.3): a 4-byte little-endian header `((MPLEX_BASE + tag) << 24)
//! | len`, then `len` payload bytes. Data frames may cut protocol fields anywhere.

use super::prim::{run, Decoded};
use crate::constants::*;
use crate::error::DecodeError;
use crate::limits::Limits;

/// Message tags that may appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgTag {
    Data,
    ErrorXfer,
    Info,
    Error,
    Warning,
    IoError,
    IoTimeout,
    Noop,
    ErrorExit,
    Success,
    Deleted,
    NoSend,
}

impl MsgTag {
    pub fn from_wire(tag: u8) -> Option<MsgTag> {
        Some(match tag {
            MSG_DATA => MsgTag::Data,
            MSG_ERROR_XFER => MsgTag::ErrorXfer,
            MSG_INFO => MsgTag::Info,
            MSG_ERROR => MsgTag::Error,
            MSG_WARNING => MsgTag::Warning,
            MSG_IO_ERROR => MsgTag::IoError,
            MSG_IO_TIMEOUT => MsgTag::IoTimeout,
            MSG_NOOP => MsgTag::Noop,
            MSG_ERROR_EXIT => MsgTag::ErrorExit,
            MSG_SUCCESS => MsgTag::Success,
            MSG_DELETED => MsgTag::Deleted,
            MSG_NO_SEND => MsgTag::NoSend,
            _ => return None,
        })
    }

    pub fn to_wire(self) -> u8 {
        match self {
            MsgTag::Data => MSG_DATA,
            MsgTag::ErrorXfer => MSG_ERROR_XFER,
            MsgTag::Info => MSG_INFO,
            MsgTag::Error => MSG_ERROR,
            MsgTag::Warning => MSG_WARNING,
            MsgTag::IoError => MSG_IO_ERROR,
            MsgTag::IoTimeout => MSG_IO_TIMEOUT,
            MsgTag::Noop => MSG_NOOP,
            MsgTag::ErrorExit => MSG_ERROR_EXIT,
            MsgTag::Success => MSG_SUCCESS,
            MsgTag::Deleted => MSG_DELETED,
            MsgTag::NoSend => MSG_NO_SEND,
        }
    }

    /// Text-carrying messages.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            MsgTag::ErrorXfer | MsgTag::Info | MsgTag::Error | MsgTag::Warning | MsgTag::Deleted
        )
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: MsgTag,
    pub len: usize,
}

pub fn encode_header(tag: MsgTag, len: usize, out: &mut Vec<u8>) {
    debug_assert!(len <= MAX_FRAME_PAYLOAD);
    let h = (u32::from(MPLEX_BASE + tag.to_wire()) << 24) | (len.min(MAX_FRAME_PAYLOAD) as u32);
    out.extend_from_slice(&h.to_le_bytes());
}

/// Decodes a header. Non-data payloads are bounded by `limits.max_message` here, before
/// anyone buffers them; data payloads are streamed by the caller.
pub fn decode_header(buf: &[u8], limits: &Limits) -> Result<Decoded<FrameHeader>, DecodeError> {
    run(buf, |c| {
        let h = u32::from_le_bytes(
            c.bytes(4)?
                .try_into()
                .map_err(|_| DecodeError::Other("header"))?,
        );
        let tag_byte = (h >> 24) as u8;
        let len = (h & 0x00FF_FFFF) as usize;
        let raw = tag_byte
            .checked_sub(MPLEX_BASE)
            .ok_or(DecodeError::BadFrameTag(tag_byte))?;
        let tag = MsgTag::from_wire(raw).ok_or(DecodeError::UnknownMessage(raw))?;
        if tag != MsgTag::Data && len > limits.max_message {
            return Err(DecodeError::TooLong {
                what: "message",
                len: len as u64,
                max: limits.max_message as u64,
            }
            .into());
        }
        Ok(FrameHeader { tag, len })
    })
}

/// A whole frame with an owned payload (used for messages and by fuzzing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: MsgTag,
    pub payload: Vec<u8>,
}

/// Decodes a whole frame (header + payload). Data payloads are bounded by
/// `limits.max_message` too when decoded this way.
pub fn decode_frame(buf: &[u8], limits: &Limits) -> Result<Decoded<Frame>, DecodeError> {
    run(buf, |c| {
        let h = c.bytes(4)?;
        let hdr = match decode_header(h, limits)? {
            Decoded::Complete { value, .. } => value,
            Decoded::Incomplete { .. } => {
                return Err(DecodeError::Other("unreachable header state").into())
            }
        };
        if hdr.len > limits.max_message {
            return Err(DecodeError::TooLong {
                what: "frame",
                len: hdr.len as u64,
                max: limits.max_message as u64,
            }
            .into());
        }
        let payload = c.bytes(hdr.len)?.to_vec();
        Ok(Frame {
            tag: hdr.tag,
            payload,
        })
    })
}

/// Appends `data` as MSG_DATA frames of at most `IO_BUFFER_SIZE` bytes.
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(IO_BUFFER_SIZE) {
        encode_header(MsgTag::Data, chunk.len(), out);
        out.extend_from_slice(chunk);
    }
}

/// Appends one message frame; payload must be ≤ 0xFFFFFF bytes.
pub fn encode_frame(tag: MsgTag, payload: &[u8], out: &mut Vec<u8>) {
    let p = &payload[..payload.len().min(MAX_FRAME_PAYLOAD)];
    encode_header(tag, p.len(), out);
    out.extend_from_slice(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_captures() {
        let mut o = Vec::new();
        encode_header(MsgTag::Data, 4, &mut o);
        assert_eq!(o, [0x04, 0, 0, 0x07]);
        let mut o = Vec::new();
        encode_header(MsgTag::ErrorExit, 0, &mut o);
        assert_eq!(o, [0, 0, 0, 0x5d]);
        let l = Limits::default();
        let f = decode_frame(&[0x04, 0, 0, 0x5d, 1, 0, 0, 0], &l)
            .unwrap()
            .complete()
            .unwrap();
        assert_eq!(
            f.0,
            Frame {
                tag: MsgTag::ErrorExit,
                payload: vec![1, 0, 0, 0]
            }
        );
    }

    #[test]
    fn rejects_unknown_and_internal_tags() {
        let l = Limits::default();
        assert_eq!(
            decode_header(&[0, 0, 0, 7 + 9], &l),
            Err(DecodeError::UnknownMessage(9))
        );
        assert_eq!(
            decode_header(&[0, 0, 0, 3], &l),
            Err(DecodeError::BadFrameTag(3))
        );
    }

    #[test]
    fn bounds_message_before_buffering() {
        let l = Limits {
            max_message: 10,
            ..Limits::default()
        };
        assert!(decode_header(&[11, 0, 0, 7 + 3], &l).is_err());
        assert!(decode_header(&[0xff, 0xff, 0xff, 7], &l).is_ok());
    }

    fn tag() -> impl Strategy<Value = MsgTag> {
        prop_oneof![
            Just(MsgTag::Data),
            Just(MsgTag::ErrorXfer),
            Just(MsgTag::Info),
            Just(MsgTag::Error),
            Just(MsgTag::Warning),
            Just(MsgTag::IoError),
            Just(MsgTag::IoTimeout),
            Just(MsgTag::Noop),
            Just(MsgTag::ErrorExit),
            Just(MsgTag::Success),
            Just(MsgTag::Deleted),
            Just(MsgTag::NoSend),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(t in tag(), p in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut o = Vec::new();
            encode_frame(t, &p, &mut o);
            let l = Limits::default();
            prop_assert_eq!(decode_frame(&o, &l).unwrap(), Decoded::Complete { value: Frame { tag: t, payload: p }, consumed: o.len() });
            for cut in 0..o.len().min(10) {
                prop_assert!((decode_frame(&o[..cut], &l).unwrap()).is_incomplete());
            }
        }
    }
}

//! Protocol data written straight into the output buffer, framed as it lands: a file's
//! literal runs (most of a restore's bytes) are copied once, from the content into the
//! bytes that go to the socket, instead of into a staging buffer first and into frames
//! after.

use crate::codec::mux::{encode_header, MsgTag};
use crate::constants::IO_BUFFER_SIZE;

/// Where the token stream goes: a plain buffer (tests, the staging buffer) or a
/// [`DataWriter`].
pub trait TokenOut {
    fn put(&mut self, bytes: &[u8]);
    /// Bytes in the buffer so far (output limits are checked against it).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenOut for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// Appends protocol data to `out`: from protocol 30 as `MSG_DATA` frames of at most
/// `IO_BUFFER_SIZE` bytes (the size stock frames by; fields straddle frames freely), below
/// it bare. The frame being filled gets its header when full or when the writer is
/// dropped, so `out` holds only complete frames whenever the caller sees it.
pub(crate) struct DataWriter<'a> {
    out: &'a mut Vec<u8>,
    multiplexed: bool,
    /// Where the open frame's header goes (its payload follows up to the end of `out`).
    open_frame: Option<usize>,
}

/// A frame header's length, written as a placeholder while its payload is appended.
const HEADER_LEN: usize = 4;

impl<'a> DataWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>, multiplexed: bool) -> DataWriter<'a> {
        DataWriter {
            out,
            multiplexed,
            open_frame: None,
        }
    }

    fn close_frame(&mut self) {
        if let Some(at) = self.open_frame.take() {
            let len = self.out.len() - at - HEADER_LEN;
            let mut header = Vec::with_capacity(HEADER_LEN);
            encode_header(MsgTag::Data, len, &mut header);
            self.out[at..at + HEADER_LEN].copy_from_slice(&header);
        }
    }
}

impl TokenOut for DataWriter<'_> {
    fn put(&mut self, mut bytes: &[u8]) {
        if !self.multiplexed {
            self.out.extend_from_slice(bytes);
            return;
        }
        while !bytes.is_empty() {
            let at = match self.open_frame {
                Some(at) => at,
                None => {
                    let at = self.out.len();
                    self.out.extend_from_slice(&[0; HEADER_LEN]);
                    self.open_frame = Some(at);
                    at
                }
            };
            let used = self.out.len() - at - HEADER_LEN;
            let n = (IO_BUFFER_SIZE - used).min(bytes.len());
            self.out.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if used + n == IO_BUFFER_SIZE {
                self.close_frame();
            }
        }
    }

    fn len(&self) -> usize {
        self.out.len()
    }
}

impl Drop for DataWriter<'_> {
    fn drop(&mut self) {
        self.close_frame();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::mux::encode_data;

    /// Whatever the pieces, the frames are those the staging path made of the same bytes.
    #[test]
    fn frames_as_the_staging_path_does() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for pieces in [1usize, 4, 37, 32_768, 32_772, 100_000, 200_000] {
            let mut out = b"before".to_vec();
            {
                let mut w = DataWriter::new(&mut out, true);
                for piece in data.chunks(pieces) {
                    w.put(piece);
                }
                w.put(&[]);
            }
            let mut want = b"before".to_vec();
            encode_data(&data, &mut want);
            assert_eq!(out, want, "pieces of {pieces}");
        }
        let mut bare = Vec::new();
        DataWriter::new(&mut bare, false).put(&data);
        assert_eq!(bare, data);
        let mut nothing = Vec::new();
        drop(DataWriter::new(&mut nothing, true));
        assert!(nothing.is_empty(), "no empty frame for no data");
    }
}

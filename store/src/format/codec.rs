//! Small byte codecs shared by the pack and tree formats: LEB128 varints, zigzag signed
//! varints and a bounds-checked reader that never panics and never over-allocates.

use crate::error::DecodeError;

pub fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_ivarint(out: &mut Vec<u8>, value: i64) {
    put_uvarint(out, ((value << 1) ^ (value >> 63)) as u64);
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn fail<T>(&self, reason: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError {
            offset: self.pos,
            reason,
        })
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.fail("unexpected end of data"),
        }
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len());
        match end {
            Some(end) => {
                let slice = &self.buf[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => self.fail("length runs past the end of data"),
        }
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub fn u32_le(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64_le(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return self.fail("varint overflows 64 bits");
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                // Only the shortest encoding is accepted, so every value has one encoding and
                // tree ids stay canonical.
                if byte == 0 && shift > 0 {
                    return self.fail("varint is not minimally encoded");
                }
                return Ok(value);
            }
        }
        self.fail("varint longer than 10 bytes")
    }

    pub fn ivarint(&mut self) -> Result<i64, DecodeError> {
        let raw = self.uvarint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// A varint that must not exceed `max` (checked before anything is allocated for it).
    pub fn bounded(&mut self, max: u64, reason: &'static str) -> Result<u64, DecodeError> {
        let value = self.uvarint()?;
        if value > max {
            return self.fail(reason);
        }
        Ok(value)
    }

    pub fn bytes(&mut self, max: usize, reason: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.bounded(max as u64, reason)? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uvarint_round_trips(value: u64) {
            let mut out = Vec::new();
            put_uvarint(&mut out, value);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.uvarint().unwrap(), value);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn ivarint_round_trips(value: i64) {
            let mut out = Vec::new();
            put_ivarint(&mut out, value);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.ivarint().unwrap(), value);
        }

        #[test]
        fn reader_never_panics(bytes: Vec<u8>) {
            let mut r = Reader::new(&bytes);
            let _ = r.uvarint();
            let _ = r.bytes(1 << 20, "too long");
            let _ = r.u64_le();
        }
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let bytes = [0xffu8; 11];
        assert!(Reader::new(&bytes).uvarint().is_err());
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&bytes).uvarint().is_err());
    }

    #[test]
    fn non_minimal_varint_is_an_error() {
        assert!(Reader::new(&[0x80, 0x00]).uvarint().is_err());
        assert_eq!(Reader::new(&[0x80, 0x01]).uvarint().unwrap(), 128);
        assert_eq!(Reader::new(&[0x00]).uvarint().unwrap(), 0);
    }

    #[test]
    fn truncated_length_is_an_error() {
        let mut out = Vec::new();
        put_uvarint(&mut out, 100);
        out.extend_from_slice(b"short");
        let err = Reader::new(&out).bytes(1000, "name too long").unwrap_err();
        assert_eq!(err.reason, "length runs past the end of data");
    }
}

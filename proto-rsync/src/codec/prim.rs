//! Primitive encodings (spec §3.4): fixed ints, varint, varlong, longint, vstring, plus the
//! cursor every decoder in this crate is written against.

use crate::constants::{LONGINT_ESCAPE, MAX_VSTRING};
use crate::error::DecodeError;

/// The outcome of decoding from a possibly partial buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A value was decoded from the first `consumed` bytes.
    Complete { value: T, consumed: usize },
    /// At least `needed` more bytes must arrive before decoding can finish. Nothing was
    /// consumed and no decoder state changed.
    Incomplete { needed: usize },
}

impl<T> Decoded<T> {
    /// Maps the value, keeping `consumed`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decoded<U> {
        match self {
            Decoded::Complete { value, consumed } => Decoded::Complete {
                value: f(value),
                consumed,
            },
            Decoded::Incomplete { needed } => Decoded::Incomplete { needed },
        }
    }

    /// Whether more input is needed.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Decoded::Incomplete { .. })
    }

    /// The value and byte count, if complete.
    pub fn complete(self) -> Option<(T, usize)> {
        match self {
            Decoded::Complete { value, consumed } => Some((value, consumed)),
            Decoded::Incomplete { .. } => None,
        }
    }
}

/// Why a cursor read stopped: not enough bytes yet, or bytes that can never be valid.
#[derive(Debug)]
pub(crate) enum Fail {
    Short(usize),
    Bad(DecodeError),
}

impl From<DecodeError> for Fail {
    fn from(e: DecodeError) -> Self {
        Fail::Bad(e)
    }
}

pub(crate) type R<T> = Result<T, Fail>;

/// Runs a decoder closure over `buf`, turning a short read into `Incomplete`. Decoders only
/// commit their state after the closure succeeded, which keeps them restartable.
pub(crate) fn run<'a, T>(
    buf: &'a [u8],
    f: impl FnOnce(&mut Cursor<'a>) -> R<T>,
) -> Result<Decoded<T>, DecodeError> {
    let mut c = Cursor::new(buf);
    match f(&mut c) {
        Ok(value) => Ok(Decoded::Complete {
            value,
            consumed: c.pos,
        }),
        Err(Fail::Short(needed)) => Ok(Decoded::Incomplete { needed }),
        Err(Fail::Bad(e)) => Err(e),
    }
}

/// A read position over a borrowed buffer.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> R<&'a [u8]> {
        if self.remaining() < n {
            return Err(Fail::Short(n - self.remaining()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> R<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> R<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> R<i32> {
        let b = self.bytes(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i64(&mut self) -> R<i64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    pub(crate) fn varint(&mut self) -> R<i32> {
        let lead = self.u8()?;
        let k = lead.leading_ones() as usize;
        if k > 4 {
            return Err(DecodeError::VarintOverflow { lead }.into());
        }
        let extra = self.bytes(k)?;
        let mut v: u64 = 0;
        for (i, b) in extra.iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        let top = u64::from(lead & (0xFFu8 >> k));
        v |= top << (8 * k);
        // With four extra bytes the lead's free bits would land above bit 31.
        u32::try_from(v)
            .map(|v| v as i32)
            .map_err(|_| DecodeError::VarintOverflow { lead }.into())
    }

    pub(crate) fn varlong(&mut self, min: usize) -> R<i64> {
        let lead = self.u8()?;
        let low = self.bytes(min - 1)?;
        let k = lead.leading_ones() as usize;
        if min - 1 + k > 8 {
            return Err(DecodeError::VarintOverflow { lead }.into());
        }
        let high = self.bytes(k)?;
        let mut a = [0u8; 9];
        a[..min - 1].copy_from_slice(low);
        a[min - 1..min - 1 + k].copy_from_slice(high);
        a[min - 1 + k] = (u16::from(lead) & (0xFFu16 >> k)) as u8;
        if a[8] != 0 {
            return Err(DecodeError::VarintOverflow { lead }.into());
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&a[..8]);
        Ok(i64::from_le_bytes(b))
    }

    pub(crate) fn longint(&mut self) -> R<i64> {
        let v = self.i32()?;
        if v != LONGINT_ESCAPE {
            return Ok(i64::from(v));
        }
        self.i64()
    }

    /// varint at ≥30, int32 below.
    pub(crate) fn varint30(&mut self, protocol: u32) -> R<i32> {
        if protocol >= 30 {
            self.varint()
        } else {
            self.i32()
        }
    }

    /// varlong(min) at ≥30, longint below.
    pub(crate) fn varlong30(&mut self, protocol: u32, min: usize) -> R<i64> {
        if protocol >= 30 {
            self.varlong(min)
        } else {
            self.longint()
        }
    }

    pub(crate) fn vstring(&mut self, max: usize) -> R<&'a [u8]> {
        let b0 = self.u8()?;
        let len = if b0 & 0x80 != 0 {
            let b1 = self.u8()?;
            (usize::from(b0 & 0x7F) << 8) | usize::from(b1)
        } else {
            usize::from(b0)
        };
        if len > max {
            return Err(DecodeError::TooLong {
                what: "vstring",
                len: len as u64,
                max: max as u64,
            }
            .into());
        }
        self.bytes(len)
    }
}

// ---------------------------------------------------------------- encoders

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Leading-ones marker for `k` extra bytes.
fn marker(k: usize) -> u8 {
    if k == 0 {
        0
    } else {
        (0xFF00u16 >> k) as u8
    }
}

pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    let b = (v as u32).to_le_bytes();
    let mut n = 4;
    while n > 1 && b[n - 1] == 0 {
        n -= 1;
    }
    let k = n - 1;
    if b[n - 1] < (0x80u8 >> k) {
        out.push(marker(k) | b[n - 1]);
        out.extend_from_slice(&b[..n - 1]);
    } else {
        out.push(marker(n));
        out.extend_from_slice(&b[..n]);
    }
}

/// `min` is 3 for sizes and stats, 4 for times (spec §3.4).
pub fn put_varlong(out: &mut Vec<u8>, v: i64, min: usize) {
    debug_assert!((1..=8).contains(&min));
    let b = v.to_le_bytes();
    let mut c = 8;
    while c > min && b[c - 1] == 0 {
        c -= 1;
    }
    let k = c - min;
    if b[c - 1] < (0x80u8 >> k) {
        out.push(marker(k) | b[c - 1]);
        out.extend_from_slice(&b[..c - 1]);
    } else {
        out.push(marker(k + 1));
        out.extend_from_slice(&b[..c]);
    }
}

pub fn put_longint(out: &mut Vec<u8>, v: i64) {
    if (0..=0x7FFF_FFFF).contains(&v) {
        put_i32(out, v as i32);
    } else {
        put_i32(out, LONGINT_ESCAPE);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn put_varint30(out: &mut Vec<u8>, protocol: u32, v: i32) {
    if protocol >= 30 {
        put_varint(out, v);
    } else {
        put_i32(out, v);
    }
}

pub fn put_varlong30(out: &mut Vec<u8>, protocol: u32, v: i64, min: usize) {
    if protocol >= 30 {
        put_varlong(out, v, min);
    } else {
        put_longint(out, v);
    }
}

/// Writes a vstring; `s` must be at most 0x7FFF bytes (callers only pass short lists).
pub fn put_vstring(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len().min(MAX_VSTRING);
    if len > 0x7F {
        out.push(0x80 | (len >> 8) as u8);
        out.push((len & 0xFF) as u8);
    } else {
        out.push(len as u8);
    }
    out.extend_from_slice(&s[..len]);
}

// ---------------------------------------------------------------- public decoders

pub fn decode_i32(buf: &[u8]) -> Result<Decoded<i32>, DecodeError> {
    run(buf, |c| c.i32())
}

pub fn decode_varint(buf: &[u8]) -> Result<Decoded<i32>, DecodeError> {
    run(buf, |c| c.varint())
}

pub fn decode_varlong(buf: &[u8], min: usize) -> Result<Decoded<i64>, DecodeError> {
    if !(1..=8).contains(&min) {
        return Err(DecodeError::Other("varlong minimum must be 1..=8"));
    }
    run(buf, |c| c.varlong(min))
}

pub fn decode_longint(buf: &[u8]) -> Result<Decoded<i64>, DecodeError> {
    run(buf, |c| c.longint())
}

pub fn decode_vstring(buf: &[u8], max: usize) -> Result<Decoded<Vec<u8>>, DecodeError> {
    run(buf, |c| c.vstring(max).map(<[u8]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc_varint(v: i32) -> Vec<u8> {
        let mut o = Vec::new();
        put_varint(&mut o, v);
        o
    }
    fn enc_varlong(v: i64, min: usize) -> Vec<u8> {
        let mut o = Vec::new();
        put_varlong(&mut o, v, min);
        o
    }

    #[test]
    fn varint_matches_captures() {
        assert_eq!(enc_varint(0), [0x00]);
        assert_eq!(enc_varint(0x1ff), [0x81, 0xff]);
        assert_eq!(enc_varint(0x2001), [0xa0, 0x01]);
        assert_eq!(enc_varint(0x321a), [0xb2, 0x1a]);
        assert_eq!(enc_varint(0x35223a01), [0xf0, 0x01, 0x3a, 0x22, 0x35]);
        assert_eq!(
            decode_varint(&[0x81, 0xff]).unwrap(),
            Decoded::Complete {
                value: 0x1ff,
                consumed: 2
            }
        );
    }

    #[test]
    fn varlong_matches_captures() {
        assert_eq!(enc_varlong(100_000, 3), [0x01, 0xa0, 0x86]);
        assert_eq!(enc_varlong(4096, 3), [0x00, 0x00, 0x10]);
        assert_eq!(enc_varlong(0x6b0248cf, 4), [0x6b, 0xcf, 0x48, 0x02]);
        assert_eq!(
            decode_varlong(&[0x6b, 0xcf, 0x48, 0x02], 4)
                .unwrap()
                .complete(),
            Some((0x6b0248cf, 4))
        );
    }

    #[test]
    fn varint_rejects_overflow_lead() {
        assert!(matches!(
            decode_varint(&[0xf8, 0, 0, 0, 0, 0]),
            Err(DecodeError::VarintOverflow { .. })
        ));
        assert!(matches!(
            decode_varint(&[0xf1, 0, 0, 0, 0]),
            Err(DecodeError::VarintOverflow { .. })
        ));
    }

    #[test]
    fn partial_input_is_incomplete() {
        assert_eq!(
            decode_varint(&[0xf0, 1]).unwrap(),
            Decoded::Incomplete { needed: 3 }
        );
        assert_eq!(
            decode_i32(&[1, 2]).unwrap(),
            Decoded::Incomplete { needed: 2 }
        );
        assert_eq!(
            decode_longint(&[0xff, 0xff, 0xff, 0xff, 1]).unwrap(),
            Decoded::Incomplete { needed: 7 }
        );
    }

    #[test]
    fn vstring_two_byte_length() {
        let s = vec![b'x'; 300];
        let mut o = Vec::new();
        put_vstring(&mut o, &s);
        assert_eq!(&o[..2], &[0x81, 0x2c]);
        assert_eq!(
            decode_vstring(&o, 0x7FFF).unwrap().complete(),
            Some((s, 302))
        );
        assert!(decode_vstring(&o, 100).is_err());
    }

    proptest! {
        #[test]
        fn varint_roundtrip(v in any::<i32>()) {
            let e = enc_varint(v);
            prop_assert_eq!(decode_varint(&e).unwrap(), Decoded::Complete { value: v, consumed: e.len() });
            for cut in 0..e.len() {
                prop_assert!((decode_varint(&e[..cut]).unwrap()).is_incomplete());
            }
        }

        #[test]
        fn varlong_roundtrip(v in any::<i64>(), min in 1usize..=8) {
            let e = enc_varlong(v, min);
            prop_assert_eq!(decode_varlong(&e, min).unwrap(), Decoded::Complete { value: v, consumed: e.len() });
            for cut in 0..e.len() {
                prop_assert!((decode_varlong(&e[..cut], min).unwrap()).is_incomplete());
            }
        }

        #[test]
        fn longint_roundtrip(v in any::<i64>()) {
            let mut e = Vec::new();
            put_longint(&mut e, v);
            prop_assert_eq!(decode_longint(&e).unwrap(), Decoded::Complete { value: v, consumed: e.len() });
        }

        #[test]
        fn vstring_roundtrip(s in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let mut e = Vec::new();
            put_vstring(&mut e, &s);
            prop_assert_eq!(decode_vstring(&e, 0x7FFF).unwrap(), Decoded::Complete { value: s, consumed: e.len() });
        }

        #[test]
        fn varint_never_panics(b in proptest::collection::vec(any::<u8>(), 0..10)) {
            let _ = decode_varint(&b);
            let _ = decode_varlong(&b, 3);
            let _ = decode_varlong(&b, 4);
        }
    }
}

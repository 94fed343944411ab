//! File-index (NDX) encoding (spec §3.5): int32 below protocol 30, a byte-reduced delta
//! encoding from 30 on with separate running state for non-negative and negative values.

use super::prim::{put_i32, run, Decoded};
use crate::constants::{NDX_DONE, NDX_LONG_MARKER, NDX_NEG_MARKER};
use crate::error::DecodeError;

/// One direction's running NDX state. Writer and reader each keep their own copy; it lives
/// for the whole session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdxCodec {
    protocol: u32,
    prev_pos: i32,
    prev_neg: i32,
}

impl NdxCodec {
    pub fn new(protocol: u32) -> Self {
        NdxCodec {
            protocol,
            prev_pos: -1,
            prev_neg: 1,
        }
    }

    pub fn encode(&mut self, ndx: i32, out: &mut Vec<u8>) {
        if self.protocol < 30 {
            put_i32(out, ndx);
            return;
        }
        if ndx == NDX_DONE {
            out.push(0);
            return;
        }
        // i32::MIN has no magnitude; no caller sends it (indexes are bounded by the list).
        let (v, prev) = if ndx >= 0 {
            let p = self.prev_pos;
            self.prev_pos = ndx;
            (ndx, p)
        } else {
            out.push(NDX_NEG_MARKER);
            let v = ndx.saturating_neg();
            let p = self.prev_neg;
            self.prev_neg = v;
            (v, p)
        };
        let diff = i64::from(v) - i64::from(prev);
        if (1..=253).contains(&diff) {
            out.push(diff as u8);
        } else if (0..=32767).contains(&diff) {
            out.push(NDX_LONG_MARKER);
            out.push((diff >> 8) as u8);
            out.push((diff & 0xFF) as u8);
        } else {
            out.push(NDX_LONG_MARKER);
            out.push(0x80 | (v >> 24) as u8);
            out.push((v & 0xFF) as u8);
            out.push(((v >> 8) & 0xFF) as u8);
            out.push(((v >> 16) & 0xFF) as u8);
        }
    }

    /// Decodes one index; state changes only on `Complete`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded<i32>, DecodeError> {
        if self.protocol < 30 {
            return run(buf, |c| c.i32());
        }
        let (prev_pos, prev_neg) = (self.prev_pos, self.prev_neg);
        let r = run(buf, |c| {
            let mut b = c.u8()?;
            if b == 0 {
                return Ok((NDX_DONE, None));
            }
            let neg = b == NDX_NEG_MARKER;
            if neg {
                b = c.u8()?;
            }
            let prev = if neg { prev_neg } else { prev_pos };
            let v: i64 = if b == NDX_LONG_MARKER {
                let hi = c.bytes(2)?;
                if hi[0] & 0x80 != 0 {
                    let lo = c.bytes(2)?;
                    (i64::from(hi[0] & 0x7F) << 24)
                        | i64::from(hi[1])
                        | (i64::from(lo[0]) << 8)
                        | (i64::from(lo[1]) << 16)
                } else {
                    i64::from(prev) + ((i64::from(hi[0]) << 8) | i64::from(hi[1]))
                }
            } else {
                i64::from(prev) + i64::from(b)
            };
            let v = i32::try_from(v).map_err(|_| DecodeError::BadNdx(v))?;
            if neg {
                Ok((-v, Some((false, v))))
            } else {
                Ok((v, Some((true, v))))
            }
        })?;
        Ok(match r {
            Decoded::Complete {
                value: (ndx, upd),
                consumed,
            } => {
                match upd {
                    Some((true, v)) => self.prev_pos = v,
                    Some((false, v)) => self.prev_neg = v,
                    None => {}
                }
                Decoded::Complete {
                    value: ndx,
                    consumed,
                }
            }
            Decoded::Incomplete { needed } => Decoded::Incomplete { needed },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_captures() {
        let mut w = NdxCodec::new(32);
        let mut o = Vec::new();
        for i in 0..3 {
            w.encode(i, &mut o);
        }
        assert_eq!(o, [1, 1, 1]);
        let mut w = NdxCodec::new(32);
        w.prev_neg = 103;
        let mut o = Vec::new();
        w.encode(-2, &mut o);
        assert_eq!(o, [0xFF, 0xFE, 0x80, 0x02, 0x00, 0x00]);
        let mut o = Vec::new();
        w.encode(-3, &mut o);
        assert_eq!(o, [0xFF, 0x01]);
        let mut o = Vec::new();
        w.encode(NDX_DONE, &mut o);
        assert_eq!(o, [0]);
    }

    #[test]
    fn incomplete_does_not_change_state() {
        let mut r = NdxCodec::new(31);
        assert_eq!(
            r.decode(&[0xFE, 0x01]).unwrap(),
            Decoded::Incomplete { needed: 1 }
        );
        assert_eq!(r, NdxCodec::new(31));
    }

    proptest! {
        #[test]
        fn roundtrip(seq in proptest::collection::vec(prop_oneof![-1_000_000i32..=-1, 0i32..=i32::MAX, Just(NDX_DONE)], 0..50), proto in 27u32..=32) {
            let mut w = NdxCodec::new(proto);
            let mut r = NdxCodec::new(proto);
            let mut o = Vec::new();
            for &n in &seq { w.encode(n, &mut o); }
            let mut pos = 0;
            for &n in &seq {
                let (v, used) = r.decode(&o[pos..]).unwrap().complete().unwrap();
                prop_assert_eq!(v, n);
                pos += used;
            }
            prop_assert_eq!(pos, o.len());
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut r = NdxCodec::new(32);
            let _ = r.decode(&b);
        }
    }
}

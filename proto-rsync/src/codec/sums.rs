//! Sum heads and block signatures (spec §6.2, §6.3).

use super::prim::*;
use crate::constants::*;
use crate::error::DecodeError;
use crate::limits::Limits;

/// `count, blength, s2length, remainder` preceding block sums and token streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SumHead {
    pub count: u32,
    pub blength: u32,
    pub s2length: u32,
    pub remainder: u32,
}

impl SumHead {
    /// Length of block `k` (the last one may be short).
    pub fn block_len(&self, k: u32) -> u32 {
        if k + 1 == self.count && self.remainder != 0 {
            self.remainder
        } else {
            self.blength
        }
    }

    /// The head a generator sends for a basis of `len` bytes (spec §6.3).
    pub fn for_basis(len: u64, protocol: u32, xfer_sum_len: usize, redo: bool) -> SumHead {
        if len == 0 {
            return SumHead::default();
        }
        let blength = crate::checksum::block_length(len, protocol);
        let s2 = crate::checksum::strong_sum_length(len, blength, protocol, xfer_sum_len, redo);
        let count = len.div_ceil(u64::from(blength));
        SumHead {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            blength,
            s2length: s2 as u32,
            remainder: (len % u64::from(blength)) as u32,
        }
    }

    pub fn encode(&self, protocol: u32, out: &mut Vec<u8>) {
        put_i32(out, self.count as i32);
        put_i32(out, self.blength as i32);
        if protocol >= 27 {
            put_i32(out, self.s2length as i32);
        }
        put_i32(out, self.remainder as i32);
    }

    /// Decodes and validates a head (the checks of a 3.5.0 peer, spec §6.2 and §9.17).
    pub fn decode(
        buf: &[u8],
        protocol: u32,
        xfer_sum_len: usize,
        limits: &Limits,
    ) -> Result<Decoded<SumHead>, DecodeError> {
        run(buf, |c| {
            let count = c.i32()?;
            let blength = c.i32()?;
            let s2length = if protocol >= 27 {
                c.i32()?
            } else {
                SHORT_SUM_LENGTH as i32
            };
            let remainder = c.i32()?;
            let bad = DecodeError::BadSumHead {
                count,
                blength,
                s2length,
                remainder,
            };
            let max_b = if protocol >= 30 {
                MAX_BLOCK_SIZE
            } else {
                OLD_MAX_BLOCK_SIZE
            } as i32;
            if count < 0 || count as u32 > limits.max_blocks || blength < 0 || blength > max_b {
                return Err(bad.into());
            }
            if count > 0 && (blength == 0 || remainder < 0 || remainder > blength) {
                return Err(bad.into());
            }
            if s2length < 0 || s2length as usize > xfer_sum_len.min(MAX_DIGEST_LEN) {
                return Err(bad.into());
            }
            Ok(SumHead {
                count: count as u32,
                blength: blength as u32,
                s2length: s2length as u32,
                remainder: remainder as u32,
            })
        })
    }
}

/// One block's signature entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSum {
    pub weak: u32,
    pub strong: Vec<u8>,
}

pub fn encode_block_sum(weak: u32, strong: &[u8], out: &mut Vec<u8>) {
    put_i32(out, weak as i32);
    out.extend_from_slice(strong);
}

/// Decodes the `count` block sums following a head (sender role; also fuzzed). The total
/// size is bounded by `limits.max_blocks` through the head's own validation.
pub fn decode_block_sums(
    buf: &[u8],
    head: &SumHead,
) -> Result<Decoded<Vec<BlockSum>>, DecodeError> {
    run(buf, |c| {
        let per = 4 + head.s2length as usize;
        let total = per
            .checked_mul(head.count as usize)
            .ok_or(DecodeError::Other("sum size overflow"))?;
        if c.remaining() < total {
            return Err(Fail::Short(total - c.remaining()));
        }
        let mut v = Vec::with_capacity(head.count as usize);
        for _ in 0..head.count {
            let weak = c.i32()? as u32;
            let strong = c.bytes(head.s2length as usize)?.to_vec();
            v.push(BlockSum { weak, strong });
        }
        Ok(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn head_matches_capture() {
        let h = SumHead::for_basis(100_000, 32, 16, false);
        assert_eq!(
            h,
            SumHead {
                count: 143,
                blength: 700,
                s2length: 2,
                remainder: 600
            }
        );
        let mut o = Vec::new();
        h.encode(32, &mut o);
        assert_eq!(o, [0x8f, 0, 0, 0, 0xbc, 2, 0, 0, 2, 0, 0, 0, 0x58, 2, 0, 0]);
        assert_eq!(SumHead::for_basis(0, 32, 16, false), SumHead::default());
    }

    #[test]
    fn head_validation() {
        let l = Limits::default();
        let enc = |c: i32, b: i32, s: i32, r: i32| {
            [
                c.to_le_bytes(),
                b.to_le_bytes(),
                s.to_le_bytes(),
                r.to_le_bytes(),
            ]
            .concat()
        };
        assert!(SumHead::decode(&enc(1, 0, 2, 0), 32, 16, &l).is_err());
        assert!(SumHead::decode(&enc(1, 700, 9, 0), 32, 8, &l).is_err());
        assert!(SumHead::decode(&enc(1, 700, 2, 701), 32, 16, &l).is_err());
        assert!(SumHead::decode(&enc(-1, 700, 2, 0), 32, 16, &l).is_err());
        assert!(SumHead::decode(&enc(1, 200_000, 2, 0), 32, 16, &l).is_err());
        assert!(SumHead::decode(&enc(0, 0, 0, 0), 32, 16, &l)
            .unwrap()
            .complete()
            .is_some());
    }

    proptest! {
        #[test]
        fn head_roundtrip(len in 0u64..(1 << 42), xfer in prop_oneof![Just(8usize), Just(16)], redo in any::<bool>(), p in 27u32..=32) {
            let h = SumHead::for_basis(len, p, xfer, redo);
            let mut o = Vec::new();
            h.encode(p, &mut o);
            let l = Limits { max_blocks: u32::MAX >> 1, ..Limits::default() };
            prop_assert_eq!(SumHead::decode(&o, p, xfer, &l).unwrap(), Decoded::Complete { value: h, consumed: o.len() });
            if len > 0 {
                let total: u64 = (0..h.count).map(|k| u64::from(h.block_len(k))).sum::<u64>();
                prop_assert_eq!(total, len);
            }
        }

        #[test]
        fn block_sums_roundtrip(sums in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 3)), 0..50)) {
            let head = SumHead { count: sums.len() as u32, blength: 700, s2length: 3, remainder: 0 };
            let mut o = Vec::new();
            for (w, s) in &sums { encode_block_sum(*w, s, &mut o); }
            let got = decode_block_sums(&o, &head).unwrap().complete().unwrap().0;
            prop_assert_eq!(got.len(), sums.len());
            for (g, (w, s)) in got.iter().zip(&sums) { prop_assert_eq!(g.weak, *w); prop_assert_eq!(&g.strong, s); }
        }
    }
}

//! Block signatures of a basis (generator side) and block matching (sender side).

use crate::checksum::{ChecksumKind, RollingChecksum};
use crate::codec::sums::{encode_block_sum, BlockSum, SumHead};
use crate::codec::token::OwnedToken;
use crate::constants::CHUNK_SIZE;
use std::collections::HashMap;

/// Computes the signature of one block: `(sum1, strong truncated to s2length)`.
pub fn block_signature(block: &[u8], kind: ChecksumKind, seed: i32, s2length: usize) -> BlockSum {
    let mut strong = [0u8; 32];
    kind.block_sum(seed, block, &mut strong);
    BlockSum {
        weak: RollingChecksum::new(block).value(),
        strong: strong[..s2length.min(32)].to_vec(),
    }
}

/// Appends the wire form of one block's signature.
pub fn write_block_signature(
    block: &[u8],
    kind: ChecksumKind,
    seed: i32,
    s2length: usize,
    out: &mut Vec<u8>,
) {
    let mut strong = [0u8; 32];
    kind.block_sum(seed, block, &mut strong);
    encode_block_sum(
        RollingChecksum::new(block).value(),
        &strong[..s2length.min(32)],
        out,
    );
}

/// Sender-side matcher: finds basis blocks inside new data. Candidates with equal weak
/// sums are bounded per offset (as 3.5.0 does) so hostile signatures cannot make it quadratic.
#[derive(Debug)]
pub struct Matcher<'a> {
    head: SumHead,
    sums: &'a [BlockSum],
    kind: ChecksumKind,
    seed: i32,
    table: HashMap<u32, Vec<u32>>,
}

const MAX_CANDIDATES: usize = 1024;

impl<'a> Matcher<'a> {
    pub fn new(head: SumHead, sums: &'a [BlockSum], kind: ChecksumKind, seed: i32) -> Self {
        let mut table: HashMap<u32, Vec<u32>> = HashMap::with_capacity(sums.len());
        for (i, s) in sums.iter().enumerate() {
            table.entry(s.weak).or_default().push(i as u32);
        }
        Matcher {
            head,
            sums,
            kind,
            seed,
            table,
        }
    }

    /// Produces the token list turning the basis into `data` (literals ≤ 32 KiB).
    pub fn delta(&self, data: &[u8]) -> Vec<OwnedToken> {
        let mut out = Vec::new();
        let bl = self.head.blength as usize;
        if self.head.count == 0 || bl == 0 || data.is_empty() {
            push_literal(&mut out, data);
            return out;
        }
        let s2 = self.head.s2length as usize;
        let mut lit_start = 0usize;
        let mut pos = 0usize;
        let mut win = bl.min(data.len());
        let mut rc = RollingChecksum::new(&data[..win]);
        let mut strong = [0u8; 32];
        while pos < data.len() {
            let mut matched = None;
            if let Some(cands) = self.table.get(&rc.value()) {
                let mut have_strong = false;
                for &k in cands.iter().take(MAX_CANDIDATES) {
                    if self.head.block_len(k) as usize != win {
                        continue;
                    }
                    if !have_strong {
                        self.kind
                            .block_sum(self.seed, &data[pos..pos + win], &mut strong);
                        have_strong = true;
                    }
                    if self.sums[k as usize].strong[..] == strong[..s2] {
                        matched = Some(k);
                        break;
                    }
                }
            }
            if let Some(k) = matched {
                push_literal(&mut out, &data[lit_start..pos]);
                out.push(OwnedToken::Block(k));
                pos += win;
                lit_start = pos;
                win = bl.min(data.len() - pos);
                if win > 0 {
                    rc = RollingChecksum::new(&data[pos..pos + win]);
                }
                continue;
            }
            if pos + win < data.len() {
                rc.roll(data[pos], data[pos + win]);
            } else {
                rc.roll_out(data[pos]);
                win -= 1;
            }
            pos += 1;
            if win == 0 {
                break;
            }
        }
        push_literal(&mut out, &data[lit_start..]);
        out
    }
}

fn push_literal(out: &mut Vec<OwnedToken>, mut d: &[u8]) {
    while !d.is_empty() {
        let n = d.len().min(CHUNK_SIZE);
        out.push(OwnedToken::Literal(d[..n].to_vec()));
        d = &d[n..];
    }
}

/// Applies tokens to an in-memory basis (tests and benches; the receiver streams instead).
pub fn apply(head: &SumHead, basis: &[u8], tokens: &[OwnedToken]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for t in tokens {
        match t {
            OwnedToken::Literal(d) => out.extend_from_slice(d),
            OwnedToken::Block(k) => {
                let off = *k as usize * head.blength as usize;
                let len = head.block_len(*k) as usize;
                out.extend_from_slice(basis.get(off..off + len)?);
            }
            OwnedToken::End => break,
        }
    }
    Some(out)
}

/// Builds a whole in-memory signature (tests and benches).
pub fn signature(basis: &[u8], head: &SumHead, kind: ChecksumKind, seed: i32) -> Vec<BlockSum> {
    (0..head.count)
        .map(|k| {
            let off = k as usize * head.blength as usize;
            let len = head.block_len(k) as usize;
            block_signature(&basis[off..off + len], kind, seed, head.s2length as usize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_shifted_blocks() {
        let basis: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let head = SumHead::for_basis(basis.len() as u64, 31, 16, false);
        let sums = signature(&basis, &head, ChecksumKind::Xxh128, 1234);
        let mut data = b"inserted prefix".to_vec();
        data.extend_from_slice(&basis);
        let m = Matcher::new(head, &sums, ChecksumKind::Xxh128, 1234);
        let toks = m.delta(&data);
        let matched = toks
            .iter()
            .filter(|t| matches!(t, OwnedToken::Block(_)))
            .count();
        assert_eq!(matched as u32, head.count);
        assert_eq!(apply(&head, &basis, &toks).unwrap(), data);
    }

    proptest! {
        #[test]
        fn delta_reconstructs(basis in proptest::collection::vec(any::<u8>(), 0..5000), edits in proptest::collection::vec((any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 0..50)), 0..5)) {
            let mut data = basis.clone();
            for (i, ins) in edits { let at = i.index(data.len() + 1); data.splice(at..at, ins); }
            let mut head = SumHead::for_basis(basis.len() as u64, 31, 8, false);
            if head.count > 0 { head.blength = 64; head.count = basis.len().div_ceil(64) as u32; head.remainder = (basis.len() % 64) as u32; }
            let sums = signature(&basis, &head, ChecksumKind::Xxh3, -7);
            let toks = Matcher::new(head, &sums, ChecksumKind::Xxh3, -7).delta(&data);
            prop_assert_eq!(apply(&head, &basis, &toks).unwrap(), data);
        }
    }
}

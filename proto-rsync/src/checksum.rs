//! Rolling and strong checksums, their negotiation, and the generator's block-size choice
//! (spec §3.2, §6.3–§6.5).

use crate::constants::*;
use md4::Md4;
use md5::{Digest, Md5};
use sha1::Sha1;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed, Xxh3};
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// rsync's weak checksum over bytes taken as *signed* chars (the sign matters: spec §6.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollingChecksum {
    s1: u32,
    s2: u32,
    len: u32,
}

impl RollingChecksum {
    pub fn new(block: &[u8]) -> Self {
        let mut s1: u32 = 0;
        let mut s2: u32 = 0;
        for &b in block {
            s1 = s1.wrapping_add(b as i8 as i32 as u32);
            s2 = s2.wrapping_add(s1);
        }
        RollingChecksum {
            s1,
            s2,
            len: block.len() as u32,
        }
    }

    /// The 32-bit `sum1` as sent in block signatures.
    pub fn value(&self) -> u32 {
        (self.s1 & 0xFFFF) | (self.s2 << 16)
    }

    /// Slides the window one byte: drop `out`, append `inb`.
    pub fn roll(&mut self, out: u8, inb: u8) {
        let o = out as i8 as i32 as u32;
        self.s1 = self
            .s1
            .wrapping_sub(o)
            .wrapping_add(inb as i8 as i32 as u32);
        self.s2 = self
            .s2
            .wrapping_sub(self.len.wrapping_mul(o))
            .wrapping_add(self.s1);
    }

    /// Removes the leading byte without adding one (the window shrinks at the file's tail).
    pub fn roll_out(&mut self, out: u8) {
        let o = out as i8 as i32 as u32;
        self.s1 = self.s1.wrapping_sub(o);
        self.s2 = self.s2.wrapping_sub(self.len.wrapping_mul(o));
        self.len = self.len.saturating_sub(1);
    }
}

/// Convenience: `sum1` of a block.
pub fn rolling_checksum(block: &[u8]) -> u32 {
    RollingChecksum::new(block).value()
}

/// Strong checksum algorithm for block sums and the whole-file sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumKind {
    Xxh128,
    Xxh3,
    Xxh64,
    /// `seed_fix` = CF_CHKSUM_SEED_FIX: the seed is hashed before the block.
    Md5 {
        seed_fix: bool,
    },
    /// The implicit checksum of protocols 27–29.
    Md4Old,
    Sha1,
}

impl ChecksumKind {
    pub fn from_name(name: &str, seed_fix: bool) -> Option<Self> {
        Some(match name {
            "xxh128" => ChecksumKind::Xxh128,
            "xxh3" => ChecksumKind::Xxh3,
            "xxh64" | "xxhash" => ChecksumKind::Xxh64,
            "md5" => ChecksumKind::Md5 { seed_fix },
            "sha1" => ChecksumKind::Sha1,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ChecksumKind::Xxh128 => "xxh128",
            ChecksumKind::Xxh3 => "xxh3",
            ChecksumKind::Xxh64 => "xxh64",
            ChecksumKind::Md5 { .. } => "md5",
            ChecksumKind::Md4Old => "md4",
            ChecksumKind::Sha1 => "sha1",
        }
    }

    /// `xfer_sum_len`: bytes of the whole-file sum, and the cap on block-sum lengths.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            ChecksumKind::Xxh128 | ChecksumKind::Md5 { .. } | ChecksumKind::Md4Old => 16,
            ChecksumKind::Xxh3 | ChecksumKind::Xxh64 => 8,
            ChecksumKind::Sha1 => 20,
        }
    }

    /// The full per-block strong sum (caller truncates to s2length). `out` receives
    /// `self.len()` bytes.
    pub fn block_sum(self, seed: i32, block: &[u8], out: &mut [u8; 32]) {
        let seed_bytes = seed.to_le_bytes();
        // xxhash takes a 64-bit seed; stock sign-extends the int32.
        let xseed = i64::from(seed) as u64;
        match self {
            ChecksumKind::Xxh128 => {
                let h = xxh3_128_with_seed(block, xseed);
                out[..8].copy_from_slice(&(h as u64).to_le_bytes());
                out[8..16].copy_from_slice(&((h >> 64) as u64).to_le_bytes());
            }
            ChecksumKind::Xxh3 => {
                out[..8].copy_from_slice(&xxh3_64_with_seed(block, xseed).to_le_bytes())
            }
            ChecksumKind::Xxh64 => out[..8].copy_from_slice(&xxh64(block, xseed).to_le_bytes()),
            ChecksumKind::Md5 { seed_fix } => {
                let mut h = Md5::new();
                if seed_fix && seed != 0 {
                    h.update(seed_bytes);
                }
                h.update(block);
                if !seed_fix && seed != 0 {
                    h.update(seed_bytes);
                }
                out[..16].copy_from_slice(&h.finalize());
            }
            ChecksumKind::Md4Old => {
                let mut h = Md4::new();
                h.update(block);
                if seed != 0 {
                    h.update(seed_bytes);
                }
                out[..16].copy_from_slice(&h.finalize());
            }
            ChecksumKind::Sha1 => {
                let mut h = Sha1::new();
                if seed != 0 {
                    h.update(seed_bytes);
                }
                h.update(block);
                out[..20].copy_from_slice(&h.finalize());
            }
        }
    }
}

/// Incremental whole-file checksum as sent after a file's tokens.
#[derive(Clone)]
pub enum FileHasher {
    Xxh128(Box<Xxh3>),
    Xxh3(Box<Xxh3>),
    Xxh64(Xxh64),
    Md5(Md5),
    Md4(Md4),
    Sha1(Sha1),
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileHasher")
    }
}

impl FileHasher {
    /// Whole-file sums are unseeded, except MD4 at 27–29 which hashes the seed first.
    pub fn new(kind: ChecksumKind, seed: i32) -> Self {
        match kind {
            ChecksumKind::Xxh128 => FileHasher::Xxh128(Box::new(Xxh3::new())),
            ChecksumKind::Xxh3 => FileHasher::Xxh3(Box::new(Xxh3::new())),
            ChecksumKind::Xxh64 => FileHasher::Xxh64(Xxh64::new(0)),
            ChecksumKind::Md5 { .. } => FileHasher::Md5(Md5::new()),
            ChecksumKind::Md4Old => {
                let mut h = Md4::new();
                h.update(seed.to_le_bytes());
                FileHasher::Md4(h)
            }
            ChecksumKind::Sha1 => FileHasher::Sha1(Sha1::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            FileHasher::Xxh128(h) | FileHasher::Xxh3(h) => h.update(data),
            FileHasher::Xxh64(h) => h.update(data),
            FileHasher::Md5(h) => h.update(data),
            FileHasher::Md4(h) => h.update(data),
            FileHasher::Sha1(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            FileHasher::Xxh128(h) => {
                let v = h.digest128();
                let mut o = (v as u64).to_le_bytes().to_vec();
                o.extend_from_slice(&((v >> 64) as u64).to_le_bytes());
                o
            }
            FileHasher::Xxh3(h) => h.digest().to_le_bytes().to_vec(),
            FileHasher::Xxh64(h) => h.digest().to_le_bytes().to_vec(),
            FileHasher::Md5(h) => h.finalize().to_vec(),
            FileHasher::Md4(h) => h.finalize().to_vec(),
            FileHasher::Sha1(h) => h.finalize().to_vec(),
        }
    }
}

/// Picks the first name of the peer's list that we support, which reproduces the stock
/// peer's own choice when both lists are in stock order (spec §3.2).
pub fn choose_checksum(peer_list: &str, seed_fix: bool) -> Option<ChecksumKind> {
    peer_list
        .split_ascii_whitespace()
        .filter(|n| CHECKSUM_NAMES.contains(n) || *n == "xxhash")
        .find_map(|n| ChecksumKind::from_name(n, seed_fix))
}

/// The generator's block length for a basis of `len` bytes (spec §6.3).
pub fn block_length(len: u64, protocol: u32) -> u32 {
    let max = if protocol >= 30 {
        MAX_BLOCK_SIZE
    } else {
        OLD_MAX_BLOCK_SIZE
    };
    if len <= u64::from(BLOCK_SIZE) * u64::from(BLOCK_SIZE) {
        return BLOCK_SIZE;
    }
    // Largest multiple of 8 whose square does not exceed len, built bit by bit.
    let mut c: u64 = 1;
    let mut l = len;
    while l > 0 {
        l >>= 2;
        c <<= 1;
    }
    if c >= u64::from(max) || c == 0 {
        return max;
    }
    let mut blength: u64 = 0;
    while c >= 8 {
        blength |= c;
        if len < blength * blength {
            blength &= !c;
        }
        c >>= 1;
    }
    (blength.max(u64::from(BLOCK_SIZE)) as u32).min(max)
}

/// Strong-sum length per block for a first pass (spec §6.3); `redo` requests full length.
pub fn strong_sum_length(
    len: u64,
    blength: u32,
    protocol: u32,
    xfer_sum_len: usize,
    redo: bool,
) -> usize {
    let cap = SUM_LENGTH.min(xfer_sum_len);
    if redo || protocol < 27 {
        return if redo { cap } else { SHORT_SUM_LENGTH };
    }
    let bits = |mut v: u64| {
        let mut n = 0i64;
        while v > 0 {
            v >>= 1;
            n += 1;
        }
        n
    };
    // "number of right shifts until zero", minus one, matches stock's loops.
    let l = bits(len) - 1;
    let bl = bits(u64::from(blength)) - 1;
    let b = i64::from(BLOCKSUM_BIAS) + 2 * l.max(0) - bl.max(0);
    let s2 = (b + 1 - 32 + 7) / 8;
    (s2.max(SHORT_SUM_LENGTH as i64) as usize).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rolling_is_signed() {
        // 0x80 counts as -128.
        let r = RollingChecksum::new(&[0x80]);
        assert_eq!(
            r.value(),
            ((-128i32 as u32) & 0xFFFF) | ((-128i32 as u32) << 16)
        );
        assert_eq!(
            rolling_checksum(&[1, 2, 3]),
            (6 & 0xFFFF) | ((1 + 3 + 6) << 16)
        );
    }

    #[test]
    fn block_length_matches_stock() {
        assert_eq!(block_length(100_000, 32), 700);
        assert_eq!(block_length(10_000_000, 32), 3160);
        assert_eq!(block_length(1 << 30, 32), 32768);
        assert_eq!(block_length(1 << 40, 32), MAX_BLOCK_SIZE);
    }

    #[test]
    fn s2length_matches_stock() {
        assert_eq!(strong_sum_length(100_000, 700, 32, 16, false), 2);
        assert_eq!(strong_sum_length(10_000_000, 3160, 32, 16, false), 2);
        assert_eq!(strong_sum_length(1 << 30, 32768, 32, 16, false), 3);
        assert_eq!(strong_sum_length(1 << 30, 32768, 32, 8, true), 8);
    }

    #[test]
    fn negotiation_takes_peers_first_supported() {
        assert_eq!(
            choose_checksum("xxh128 xxh3 xxh64 md5 md4 sha1 none", true),
            Some(ChecksumKind::Xxh128)
        );
        assert_eq!(
            choose_checksum("md4 md5", true),
            Some(ChecksumKind::Md5 { seed_fix: true })
        );
        assert_eq!(choose_checksum("xxhash", false), Some(ChecksumKind::Xxh64));
        assert_eq!(choose_checksum("md4 none", true), None);
    }

    #[test]
    fn xxh128_file_sum_order() {
        let mut h = FileHasher::new(ChecksumKind::Xxh128, 5);
        h.update(b"hello");
        let v = xxhash_rust::xxh3::xxh3_128(b"hello");
        let mut want = (v as u64).to_le_bytes().to_vec();
        want.extend_from_slice(&((v >> 64) as u64).to_le_bytes());
        assert_eq!(h.finish(), want);
    }

    #[test]
    fn md5_seed_placement() {
        let mut out = [0u8; 32];
        ChecksumKind::Md5 { seed_fix: true }.block_sum(7, b"abc", &mut out);
        let mut h = Md5::new();
        h.update(7i32.to_le_bytes());
        h.update(b"abc");
        assert_eq!(&out[..16], &h.finalize()[..]);
        ChecksumKind::Md5 { seed_fix: false }.block_sum(7, b"abc", &mut out);
        let mut h = Md5::new();
        h.update(b"abc");
        h.update(7i32.to_le_bytes());
        assert_eq!(&out[..16], &h.finalize()[..]);
    }

    proptest! {
        #[test]
        fn rolling_matches_recompute(data in proptest::collection::vec(any::<u8>(), 2..300), w in 1usize..64) {
            let w = w.min(data.len() - 1);
            let mut r = RollingChecksum::new(&data[..w]);
            for i in 0..data.len() - w {
                r.roll(data[i], data[i + w]);
                prop_assert_eq!(r.value(), rolling_checksum(&data[i + 1..i + 1 + w]));
            }
        }

        #[test]
        fn block_length_bounds(len in any::<u64>()) {
            let b = block_length(len, 31);
            prop_assert!((BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&b) && b.is_multiple_of(4));
        }
    }
}

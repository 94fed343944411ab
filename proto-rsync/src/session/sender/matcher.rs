//! Streaming delta: reads a file's content in large slices and writes the token stream
//! (spec §6.4, §6.6). Without block sums (no basis on the receiver) the content goes out
//! as literal runs with no matching at all; with them, a rolling weak sum slides over the
//! content and a table keyed on that sum finds candidate blocks, confirmed by the
//! truncated strong sum. Literal runs never exceed `CHUNK_SIZE` (32 KiB): larger ones
//! break stock 3.4.3/3.4.4 receivers.

use crate::checksum::{ChecksumKind, FileHasher, RollingChecksum};
use crate::codec::sums::SumHead;
use crate::constants::CHUNK_SIZE;
use crate::error::SinkError;

use super::output::TokenOut;
use super::FileContent;

/// Equal-weak-sum candidates examined per offset (3.5.0 bounds its chains the same way):
/// hostile sums that all collide cannot make matching quadratic.
const MAX_CANDIDATES: usize = 1024;
/// Odd, so `weak * BUCKET_MULTIPLIER` is a bijection: its top bits pick the bucket, and
/// ordering by the product keeps equal weak sums adjacent inside their bucket.
const BUCKET_MULTIPLIER: u32 = 0x9E37_79B1;

/// The receiver's block sums, indexed by weak sum.
///
/// The bucket hash is public, so a receiver can make every sum land in one bucket with
/// distinct weak values; walking a bucket would then cost its whole size per byte. The
/// blocks are instead sorted by hashed weak sum: a bucket is a contiguous run, searched
/// by bisection for the exact weak sum, and only blocks with that exact sum are visited
/// (at most `MAX_CANDIDATES`). Work per offset is thus bounded by `log2(count)` plus the
/// candidate cap, whatever the sums.
#[derive(Debug)]
pub struct BlockTable {
    head: SumHead,
    s2: usize,
    /// Weak sums by block, until [`Self::index`] moves them into `sorted`.
    weak: Vec<u32>,
    strong: Vec<u8>,
    /// `hash(weak) << 32 | block`, ascending: buckets contiguous, equal weak sums
    /// adjacent and in file order.
    sorted: Vec<u64>,
    /// Bucket `b` is `sorted[starts[b]..starts[b + 1]]`.
    starts: Vec<u32>,
    shift: u32,
}

impl BlockTable {
    /// An empty table for `head.count` sums of `head.s2length` bytes each.
    pub fn new(head: SumHead) -> BlockTable {
        let count = head.count as usize;
        BlockTable {
            head,
            s2: head.s2length as usize,
            weak: Vec::with_capacity(count),
            strong: Vec::with_capacity(count * head.s2length as usize),
            sorted: Vec::new(),
            starts: Vec::new(),
            shift: 32,
        }
    }

    pub fn head(&self) -> SumHead {
        self.head
    }

    /// Sums received so far.
    pub fn len(&self) -> usize {
        self.weak.len().max(self.sorted.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_complete(&self) -> bool {
        self.len() >= self.head.count as usize
    }

    /// Adds the next block's sums (`strong` is `s2length` bytes).
    pub fn push(&mut self, weak: u32, strong: &[u8]) {
        self.weak.push(weak);
        self.strong.extend_from_slice(strong);
    }

    /// Builds the index once every sum is in: a counting sort into buckets, then each
    /// bucket sorted by its full key (small unless a peer made it large, and then
    /// `O(n log n)` once, not per byte).
    pub fn index(&mut self) {
        let weak = std::mem::take(&mut self.weak);
        let n = weak.len();
        let bits = (n.max(8) * 2).next_power_of_two().trailing_zeros().min(31);
        self.shift = 32 - bits;
        let buckets = 1usize << bits;
        let mut starts = vec![0u32; buckets + 1];
        for &w in &weak {
            starts[self.bucket(w) + 1] += 1;
        }
        for b in 0..buckets {
            starts[b + 1] += starts[b];
        }
        let mut fill = starts.clone();
        let mut sorted = vec![0u64; n];
        for (k, &w) in weak.iter().enumerate() {
            let b = self.bucket(w);
            sorted[fill[b] as usize] =
                u64::from(w.wrapping_mul(BUCKET_MULTIPLIER)) << 32 | k as u64;
            fill[b] += 1;
        }
        drop((weak, fill));
        for b in 0..buckets {
            let (lo, hi) = (starts[b] as usize, starts[b + 1] as usize);
            if hi - lo > 1 {
                sorted[lo..hi].sort_unstable();
            }
        }
        self.sorted = sorted;
        self.starts = starts;
    }

    fn bucket(&self, weak: u32) -> usize {
        (weak.wrapping_mul(BUCKET_MULTIPLIER) >> self.shift) as usize
    }

    /// The first block with this weak sum, length `win` and a strong sum equal to what
    /// `strong_of` computes (called at most once). Adds the work done to `work`: entries
    /// probed and compared, plus `win` when the strong sum was computed.
    fn find(
        &self,
        weak: u32,
        win: usize,
        mut strong_of: impl FnMut(&mut [u8; 32]),
        work: &mut u64,
    ) -> Option<u32> {
        let b = self.bucket(weak);
        let (&lo, &hi) = (self.starts.get(b)?, self.starts.get(b + 1)?);
        if lo == hi {
            return None;
        }
        let bucket = self.sorted.get(lo as usize..hi as usize)?;
        let hash = weak.wrapping_mul(BUCKET_MULTIPLIER);
        let key = u64::from(hash) << 32;
        let from = if bucket.len() == 1 {
            0
        } else {
            *work += u64::from(bucket.len().ilog2()) + 1;
            bucket.partition_point(|&x| x < key)
        };
        let mut strong = [0u8; 32];
        let mut have_strong = false;
        for &x in bucket[from..].iter().take(MAX_CANDIDATES) {
            *work += 1;
            if (x >> 32) as u32 != hash {
                break;
            }
            let k = x as u32;
            if self.head.block_len(k) as usize != win {
                continue;
            }
            if !have_strong {
                strong_of(&mut strong);
                *work += win as u64;
                have_strong = true;
            }
            let s = k as usize * self.s2;
            if self.strong.get(s..s + self.s2) == Some(&strong[..self.s2]) {
                return Some(k);
            }
        }
        None
    }
}

/// Where one file's token stream stands.
pub struct Delta {
    table: Option<BlockTable>,
    kind: ChecksumKind,
    seed: i32,
    buf: Vec<u8>,
    /// Literal data not yet written starts at `start`; the match window at `pos`; valid
    /// bytes end at `end`.
    start: usize,
    pos: usize,
    end: usize,
    eof: bool,
    rc: RollingChecksum,
    /// Length the rolling sum covers (0: to be computed).
    rc_len: usize,
    hasher: FileHasher,
    pub literal_bytes: u64,
    pub matched_bytes: u64,
    /// Work spent searching the block sums (entries probed and compared, bytes hashed
    /// for strong sums), charged to the step budget as it is spent.
    pub match_work: u64,
    /// A read error ends the content where it happened; the caller reports it.
    pub read_error: Option<SinkError>,
}

impl std::fmt::Debug for Delta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delta")
            .field("literal_bytes", &self.literal_bytes)
            .field("matched_bytes", &self.matched_bytes)
            .finish_non_exhaustive()
    }
}

impl Delta {
    /// `table` is `None` (or empty) for a whole-file transfer. `buf` is a buffer to reuse
    /// (given back by [`Self::finish`]): a fresh 256 KiB allocation per file costs a
    /// `mmap` and `munmap` each time.
    pub fn new(
        table: Option<BlockTable>,
        kind: ChecksumKind,
        seed: i32,
        mut buf: Vec<u8>,
        read_size: usize,
    ) -> Delta {
        let table = table.filter(|t| t.head.count > 0 && t.head.blength > 0);
        let bl = table.as_ref().map_or(0, |t| t.head.blength as usize);
        buf.resize(read_size.max(1) + bl, 0);
        Delta {
            table,
            kind,
            seed,
            buf,
            start: 0,
            pos: 0,
            end: 0,
            eof: false,
            rc: RollingChecksum::default(),
            rc_len: 0,
            hasher: FileHasher::new(kind, seed),
            literal_bytes: 0,
            matched_bytes: 0,
            match_work: 0,
            read_error: None,
        }
    }

    /// Writes tokens into `out` until it holds `out_limit` bytes, `budget` content bytes
    /// are spent, or the content ends (then `true`; the caller writes the end token and
    /// [`Self::finish`]'s sum).
    pub fn pump(
        &mut self,
        content: &mut dyn FileContent,
        out: &mut dyn TokenOut,
        out_limit: usize,
        budget: &mut u64,
    ) -> bool {
        let Some(bl) = self.table.as_ref().map(|t| t.head.blength as usize) else {
            return self.pump_whole(content, out, out_limit, budget);
        };
        let read = &mut |b: &mut [u8]| content.read(b);
        loop {
            if out.len() >= out_limit || *budget == 0 {
                return false;
            }
            let avail = self.end - self.pos;
            if avail < bl && !self.eof {
                self.refill(read, out);
                continue;
            }
            if avail == 0 {
                self.emit_literal(out, self.start, self.pos);
                self.start = self.pos;
                return true;
            }
            let win = bl.min(avail);
            if self.rc_len != win {
                self.rc = RollingChecksum::new(&self.buf[self.pos..self.pos + win]);
                self.rc_len = win;
            }
            let (kind, seed, pos) = (self.kind, self.seed, self.pos);
            let window = &self.buf[pos..pos + win];
            let work_before = self.match_work;
            let found = match &self.table {
                Some(t) => t.find(
                    self.rc.value(),
                    win,
                    |s| kind.block_sum(seed, window, s),
                    &mut self.match_work,
                ),
                None => None,
            };
            // Searching is charged like content: hostile sums cost a step its budget, not
            // its return to the driver.
            *budget = budget.saturating_sub(self.match_work - work_before);
            if let Some(k) = found {
                self.emit_literal(out, self.start, pos);
                self.hasher.update(&self.buf[pos..pos + win]);
                out.put(&(-(k as i32) - 1).to_le_bytes());
                self.matched_bytes += win as u64;
                *budget = budget.saturating_sub(win as u64);
                self.pos += win;
                self.start = self.pos;
                self.rc_len = 0;
                continue;
            }
            if pos + win < self.end {
                self.rc.roll(self.buf[pos], self.buf[pos + win]);
            } else if self.eof {
                self.rc.roll_out(self.buf[pos]);
                self.rc_len -= 1;
            } else {
                // The window reaches the end of what is read: read on (the rolling sum
                // stays valid, the window's bytes move with the buffer).
                self.refill(read, out);
                continue;
            }
            self.pos += 1;
            *budget = budget.saturating_sub(1);
            if self.pos - self.start >= CHUNK_SIZE {
                self.emit_literal(out, self.start, self.start + CHUNK_SIZE);
                self.start += CHUNK_SIZE;
            }
        }
    }

    /// No block sums: the content is one literal stream. Content the source holds in
    /// memory already is framed from where it is ([`FileContent::peek`]); otherwise it is
    /// read into our buffer first.
    fn pump_whole(
        &mut self,
        content: &mut dyn FileContent,
        out: &mut dyn TokenOut,
        out_limit: usize,
        budget: &mut u64,
    ) -> bool {
        // At most a buffer's worth per round either way, so one round's output stays
        // bounded whatever the source holds.
        let most = self.buf.len();
        loop {
            if out.len() >= out_limit || *budget == 0 {
                return false;
            }
            if self.eof {
                return true;
            }
            let n = match content.peek() {
                Some(Ok(held)) => {
                    let data = &held[..held.len().min(most)];
                    self.hasher.update(data);
                    write_literal(data, out);
                    let n = data.len();
                    self.literal_bytes += n as u64;
                    content.consume(n);
                    Ok(n)
                }
                Some(Err(e)) => Err(e),
                None => content.read(&mut self.buf).map(|n| {
                    let n = n.min(self.buf.len());
                    self.emit_literal(out, 0, n);
                    n
                }),
            };
            match n {
                Ok(0) => {
                    self.eof = true;
                    return true;
                }
                Ok(n) => {
                    *budget = budget.saturating_sub(n as u64);
                }
                Err(e) => {
                    self.read_error = Some(e);
                    self.eof = true;
                    return true;
                }
            }
        }
    }

    /// Writes pending literal data, then moves the unread window to the front of the
    /// buffer and reads behind it.
    fn refill(
        &mut self,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize, SinkError>,
        out: &mut dyn TokenOut,
    ) {
        self.emit_literal(out, self.start, self.pos);
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        self.start = 0;
        match read(&mut self.buf[self.end..]) {
            Ok(0) => self.eof = true,
            Ok(n) => self.end += n.min(self.buf.len() - self.end),
            Err(e) => {
                self.read_error = Some(e);
                self.eof = true;
            }
        }
    }

    /// `buf[from..to]` as literal tokens of at most `CHUNK_SIZE` bytes, hashed.
    fn emit_literal(&mut self, out: &mut dyn TokenOut, from: usize, to: usize) {
        if from >= to {
            return;
        }
        let data = &self.buf[from..to];
        self.hasher.update(data);
        write_literal(data, out);
        self.literal_bytes += data.len() as u64;
    }

    /// The whole-file checksum of the content sent. After a read error it is inverted:
    /// the receiver hashed exactly the (cut short) data it got, so the true sum would make
    /// it keep a truncated file as good; a wrong one makes it discard the file and ask
    /// again in the redo phase, as stock's zero-filled data does.
    /// Also gives the buffer back for the next file.
    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let mut sum = self.hasher.finish();
        if self.read_error.is_some() {
            for b in &mut sum {
                *b = !*b;
            }
        }
        (sum, self.buf)
    }
}

/// Literal data as tokens of at most `CHUNK_SIZE` bytes each.
pub fn write_literal(data: &[u8], out: &mut dyn TokenOut) {
    for chunk in data.chunks(CHUNK_SIZE) {
        out.put(&(chunk.len() as i32).to_le_bytes());
        out.put(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::prim::put_i32;
    use crate::codec::token::{decode_owned_token, OwnedToken};
    use crate::codec::Decoded;
    use crate::delta::{apply, signature};
    use crate::limits::Limits;

    /// Content that only copies out, through a closure.
    struct ReadFn<F>(F);

    impl<F: FnMut(&mut [u8]) -> Result<usize, SinkError>> FileContent for ReadFn<F> {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError> {
            (self.0)(buf)
        }
    }

    /// Content held in pieces of `piece` bytes that it lends (as the store's chunks are),
    /// failing once `fail_at` bytes are out if given.
    struct Lent {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
        fail_at: Option<usize>,
    }

    impl FileContent for Lent {
        fn read(&mut self, _: &mut [u8]) -> Result<usize, SinkError> {
            panic!("a lending source is never copied out of");
        }
        fn peek(&mut self) -> Option<Result<&[u8], SinkError>> {
            if self.fail_at == Some(self.pos) {
                return Some(Err("the disk went away".into()));
            }
            let piece_end = (self.pos / self.piece + 1) * self.piece;
            let end = piece_end
                .min(self.data.len())
                .min(self.fail_at.unwrap_or(usize::MAX));
            Some(Ok(&self.data[self.pos..end]))
        }
        fn consume(&mut self, n: usize) {
            self.pos += n;
        }
    }

    /// The content a literal-only token stream carries; every run at most 32 KiB.
    fn literals(wire: &[u8]) -> Vec<u8> {
        let mut content = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            match decode_owned_token(&wire[at..], 0, &Limits::default()).unwrap() {
                Decoded::Complete {
                    value: OwnedToken::Literal(run),
                    consumed,
                } => {
                    assert!(run.len() <= CHUNK_SIZE);
                    content.extend(run);
                    at += consumed;
                }
                other => panic!("not a literal run: {other:?}"),
            }
        }
        content
    }

    /// Lent content goes out as the same literal data (runs of at most 32 KiB) and sum as
    /// the same content read through a buffer, each round's output bounded, and a failure
    /// midway ends it where it happened with the sum spoiled.
    #[test]
    fn lent_content_goes_out_as_read_content_does() {
        let kind = ChecksumKind::Xxh128;
        for (len, piece) in [
            (0, 7),
            (1, 1),
            (100_000, 1_000_000),
            (1_000_000, 70_000),
            (300_000, 32_768),
        ] {
            let data = pseudo(len, len as u64);
            let mut read_wire = Vec::new();
            let mut cursor = 0;
            let mut by_read = Delta::new(None, kind, 3, Vec::new(), 65_536);
            let mut read = |b: &mut [u8]| -> Result<usize, SinkError> {
                let n = b.len().min(data.len() - cursor);
                b[..n].copy_from_slice(&data[cursor..cursor + n]);
                cursor += n;
                Ok(n)
            };
            while !by_read.pump(
                &mut ReadFn(&mut read),
                &mut read_wire,
                usize::MAX,
                &mut u64::MAX.clone(),
            ) {}
            let mut lent = Lent {
                data: data.clone(),
                pos: 0,
                piece,
                fail_at: None,
            };
            let mut by_lending = Delta::new(None, kind, 3, Vec::new(), 65_536);
            let mut lent_wire = Vec::new();
            loop {
                let before = lent_wire.len();
                let limit = before + 1;
                let done = by_lending.pump(&mut lent, &mut lent_wire, limit, &mut u64::MAX.clone());
                assert!(
                    lent_wire.len() - before <= 65_536 + 3 * 4,
                    "one round's output is bounded"
                );
                if done {
                    break;
                }
            }
            assert_eq!(
                literals(&lent_wire),
                literals(&read_wire),
                "{len} bytes in pieces of {piece}"
            );
            assert_eq!(by_lending.literal_bytes, len as u64);
            assert_eq!(by_lending.finish().0, by_read.finish().0);
        }
        let data = pseudo(200_000, 9);
        let mut lent = Lent {
            data: data.clone(),
            pos: 0,
            piece: 50_000,
            fail_at: Some(120_000),
        };
        let mut d = Delta::new(None, kind, 3, Vec::new(), 65_536);
        let mut wire = Vec::new();
        while !d.pump(&mut lent, &mut wire, usize::MAX, &mut u64::MAX.clone()) {}
        assert!(d.read_error.is_some());
        assert_eq!(d.literal_bytes, 120_000);
        let mut truncated = Vec::new();
        write_literal(&data[..50_000], &mut truncated);
        write_literal(&data[50_000..100_000], &mut truncated);
        write_literal(&data[100_000..120_000], &mut truncated);
        assert_eq!(literals(&wire), literals(&truncated));
        let mut good = FileHasher::new(kind, 3);
        good.update(&data[..120_000]);
        assert_ne!(
            d.finish().0,
            good.finish(),
            "a cut-short file's sum is spoiled"
        );
    }

    fn pseudo(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Runs a whole delta with small output slices and reads of `read_size`.
    fn run_delta(basis: &[u8], data: &[u8], read_size: usize) -> (Vec<OwnedToken>, Delta, SumHead) {
        let kind = ChecksumKind::Xxh128;
        let head = SumHead::for_basis(basis.len() as u64, 32, 16, false);
        let table = (head.count > 0).then(|| {
            let mut t = BlockTable::new(head);
            for s in signature(basis, &head, kind, 7) {
                t.push(s.weak, &s.strong);
            }
            t.index();
            t
        });
        let mut d = Delta::new(table, kind, 7, Vec::new(), read_size);
        let mut cursor = 0usize;
        let mut read = |b: &mut [u8]| -> Result<usize, SinkError> {
            let n = b.len().min(data.len() - cursor).min(5000);
            b[..n].copy_from_slice(&data[cursor..cursor + n]);
            cursor += n;
            Ok(n)
        };
        let mut wire = Vec::new();
        loop {
            let mut budget = 100_000;
            let limit = wire.len() + 70_000;
            if d.pump(&mut ReadFn(&mut read), &mut wire, limit, &mut budget) {
                break;
            }
        }
        put_i32(&mut wire, 0);
        let mut tokens = Vec::new();
        let mut at = 0;
        let lim = Limits::default();
        loop {
            match decode_owned_token(&wire[at..], head.count, &lim).unwrap() {
                Decoded::Complete { value, consumed } => {
                    at += consumed;
                    if value == OwnedToken::End {
                        break;
                    }
                    tokens.push(value);
                }
                Decoded::Incomplete { .. } => panic!("truncated token stream"),
            }
        }
        assert_eq!(at, wire.len());
        (tokens, d, head)
    }

    /// The token writer never emits a literal run above 32 KiB, whatever the reads and
    /// output slices, and the stream rebuilds the content.
    #[test]
    fn literal_runs_never_exceed_32_kib() {
        for (basis_len, data_len) in [(0, 300_000), (100_000, 250_000), (700_000, 1_000_001)] {
            let basis = pseudo(basis_len, 1);
            let data = pseudo(data_len, 2);
            let (tokens, d, head) = run_delta(&basis, &data, 256 * 1024);
            for t in &tokens {
                if let OwnedToken::Literal(l) = t {
                    assert!(!l.is_empty() && l.len() <= CHUNK_SIZE, "run of {}", l.len());
                }
            }
            assert_eq!(apply(&head, &basis, &tokens).unwrap(), data);
            assert_eq!(d.literal_bytes, data_len as u64);
        }
        let mut out = Vec::new();
        write_literal(&[1u8; 70_000], &mut out);
        assert_eq!(out.len(), 70_000 + 3 * 4);
        assert_eq!(&out[..4], &32768i32.to_le_bytes());
    }

    /// An edited copy is sent mostly as block references, and the sum is the content's.
    #[test]
    fn edits_send_only_the_changed_bytes() {
        let basis = pseudo(1_000_000, 3);
        let mut data = basis.clone();
        data[10_000..10_010].copy_from_slice(b"0123456789");
        data.splice(500_000..500_000, b"inserted".iter().copied());
        data.truncate(900_000);
        for read_size in [1000, 4096, 256 * 1024] {
            let (tokens, d, head) = run_delta(&basis, &data, read_size);
            assert_eq!(apply(&head, &basis, &tokens).unwrap(), data);
            assert!(d.literal_bytes < 3 * 1000, "literal {}", d.literal_bytes);
            assert_eq!(d.literal_bytes + d.matched_bytes, data.len() as u64);
            let mut h = FileHasher::new(ChecksumKind::Xxh128, 7);
            h.update(&data);
            assert_eq!(d.finish().0, h.finish());
        }
        // The short last block matches at the tail.
        let (tokens, _, head) = run_delta(&basis[..100_600], &basis[..100_600], 4096);
        assert!(tokens.iter().all(|t| matches!(t, OwnedToken::Block(_))));
        assert_eq!(tokens.len() as u32, head.count);
    }

    /// A weak sum whose bucket hash is `h` (the multiplier is odd, so invertible).
    fn weak_with_hash(h: u32) -> u32 {
        let mut inv = BUCKET_MULTIPLIER;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(BUCKET_MULTIPLIER.wrapping_mul(inv)));
        }
        h.wrapping_mul(inv)
    }

    /// A table of `weaks.len()` hostile sums of `blength` bytes whose strong sums match
    /// nothing.
    fn hostile_table(weaks: &[u32], blength: u32) -> BlockTable {
        let head = SumHead {
            count: weaks.len() as u32,
            blength,
            s2length: 16,
            remainder: 0,
        };
        let mut t = BlockTable::new(head);
        for &w in weaks {
            t.push(w, &[0xA5; 16]);
        }
        t.index();
        t
    }

    /// Pumps `data` through `d` with `budget` per call; the largest work one call did
    /// beyond its budget.
    fn pump_all(d: &mut Delta, data: &[u8], budget: u64) -> u64 {
        let mut cursor = 0usize;
        let mut read = |b: &mut [u8]| -> Result<usize, SinkError> {
            let n = b.len().min(data.len() - cursor);
            b[..n].copy_from_slice(&data[cursor..cursor + n]);
            cursor += n;
            Ok(n)
        };
        let mut wire = Vec::new();
        let mut worst_overrun = 0;
        for _ in 0..1_000_000 {
            let before = d.match_work;
            let mut left = budget;
            let done = d.pump(&mut ReadFn(&mut read), &mut wire, usize::MAX, &mut left);
            worst_overrun = worst_overrun.max((d.match_work - before).saturating_sub(budget));
            if done {
                return worst_overrun;
            }
        }
        panic!("pump never finished");
    }

    /// A receiver sending many sums whose weak values share the bucket of a zero run's
    /// weak sum (0) without being 0 cannot make each byte of zeros walk them all: the
    /// search per byte is bounded whatever the sums (the reviewer's 1 M of them cost
    /// seconds on 4 KiB of zeros).
    #[test]
    fn colliding_bucket_sums_cost_bounded_work_per_byte() {
        let n = 20_000u32;
        let weaks: Vec<u32> = (1..=n).map(weak_with_hash).collect();
        let table = hostile_table(&weaks, 700);
        let zeros = vec![0u8; 4096];
        let mut d = Delta::new(Some(table), ChecksumKind::Xxh128, 7, Vec::new(), 64 * 1024);
        pump_all(&mut d, &zeros, u64::MAX);
        assert_eq!(d.literal_bytes, zeros.len() as u64);
        assert!(
            d.match_work <= zeros.len() as u64 * 64,
            "{} units of search for {} bytes",
            d.match_work,
            zeros.len()
        );
    }

    /// Sums that all carry a zero run's exact weak sum (but wrong strong sums) cost at
    /// most `MAX_CANDIDATES` comparisons and one strong sum per byte, and that work counts
    /// against the step's budget: a step still hands control back on time.
    #[test]
    fn exact_weak_collisions_are_capped_and_charged_to_the_budget() {
        let blength = 700u32;
        let weaks = vec![0u32; 5000];
        let table = hostile_table(&weaks, blength);
        let zeros = vec![0u8; 4096];
        let mut d = Delta::new(Some(table), ChecksumKind::Xxh128, 7, Vec::new(), 64 * 1024);
        let budget = 200_000;
        let overrun = pump_all(&mut d, &zeros, budget);
        assert_eq!(d.literal_bytes, zeros.len() as u64);
        let per_byte = MAX_CANDIDATES as u64 + u64::from(blength) + 64;
        assert!(
            d.match_work <= zeros.len() as u64 * per_byte,
            "{} units for {} bytes",
            d.match_work,
            zeros.len()
        );
        assert!(
            overrun <= per_byte,
            "a call overran its budget by {overrun}"
        );
    }
}

//! Hot paths of a pull, measured in isolation:
//! - `rolling_checksum`: the weak sum rolled byte by byte over 1 MiB (sender-side matching
//!   cost per byte) and computed per 700-byte block (generator signatures);
//! - `block_matching`: finding a 4 MiB basis inside new data with 1% rewritten;
//! - `token_decoding`: parsing a 4 MiB token stream (literals + block copies);
//! - `file_list_decoding`: decoding 10 000 file-list entries (protocol 31, varint flags).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use turku_proto_rsync::checksum::{ChecksumKind, RollingChecksum};
use turku_proto_rsync::codec::flist::{
    FileEntry, FlistDecoder, FlistEncoder, FlistItem, FlistOptions,
};
use turku_proto_rsync::codec::sums::SumHead;
use turku_proto_rsync::codec::token::{
    decode_token, encode_block, encode_end, encode_literal, Token,
};
use turku_proto_rsync::delta::{signature, Matcher};
use turku_proto_rsync::{Decoded, Limits};

const MIB: usize = 1 << 20;
const BASIS_LEN: usize = 4 * MIB;
const ENTRIES: usize = 10_000;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn rolling(c: &mut Criterion) {
    let d = data(MIB, 1);
    let mut g = c.benchmark_group("rolling_checksum");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("roll_1MiB_window_700", |b| {
        b.iter(|| {
            let mut r = RollingChecksum::new(&d[..700]);
            let mut acc = 0u32;
            for i in 0..d.len() - 700 {
                r.roll(d[i], d[i + 700]);
                acc ^= r.value();
            }
            black_box(acc)
        })
    });
    g.bench_function("blocks_1MiB_700", |b| {
        b.iter(|| {
            d.chunks(700)
                .map(|c| RollingChecksum::new(c).value())
                .fold(0u32, |a, v| a ^ v)
        })
    });
    g.finish();
}

fn matching(c: &mut Criterion) {
    let basis = data(BASIS_LEN, 2);
    let mut new = basis.clone();
    // 1% rewritten in 16 spots.
    for k in 0..16 {
        let at = k * (BASIS_LEN / 16) + 1000;
        new[at..at + BASIS_LEN / 1600].copy_from_slice(&data(BASIS_LEN / 1600, 100 + k as u64));
    }
    let mut g = c.benchmark_group("block_matching");
    g.throughput(Throughput::Bytes(BASIS_LEN as u64));
    g.sample_size(10);
    for kind in [ChecksumKind::Xxh128, ChecksumKind::Md5 { seed_fix: true }] {
        let head = SumHead::for_basis(BASIS_LEN as u64, 31, kind.len(), false);
        let sums = signature(&basis, &head, kind, 42);
        g.bench_with_input(
            BenchmarkId::new("delta_4MiB_1pct", kind.name()),
            &new,
            |b, new| {
                let m = Matcher::new(head, &sums, kind, 42);
                b.iter(|| black_box(m.delta(new).len()))
            },
        );
        g.bench_with_input(
            BenchmarkId::new("signature_4MiB", kind.name()),
            &basis,
            |b, basis| b.iter(|| black_box(signature(basis, &head, kind, 42).len())),
        );
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let mut stream = Vec::new();
    let lit = data(32 * 1024, 3);
    let mut total = 0usize;
    let mut k = 0u32;
    while total < BASIS_LEN {
        encode_literal(&lit[..4096], &mut stream);
        encode_block(k % 1000, &mut stream);
        encode_block((k + 1) % 1000, &mut stream);
        total += 4096 + 2 * 700;
        k += 2;
    }
    encode_end(&mut stream);
    let limits = Limits::default();
    let mut g = c.benchmark_group("token_decoding");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("decode_4MiB_stream", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut n = 0u64;
            while let Ok(Decoded::Complete { value, consumed }) =
                decode_token(&stream[pos..], 1000, &limits)
            {
                pos += consumed;
                match value {
                    Token::Literal(len) => {
                        n += u64::from(len);
                        pos += len as usize;
                    }
                    Token::Block(_) => n += 700,
                    Token::End => break,
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

fn file_list(c: &mut Criterion) {
    let opts = FlistOptions::archive(31, 0x1fe, false);
    let mut enc = FlistEncoder::new(opts);
    let mut bytes = Vec::new();
    for i in 0..ENTRIES {
        let e = FileEntry {
            mtime: 1_700_000_000 + (i % 7) as i64,
            mtime_nsec: (i * 7919 % 1_000_000_000) as u32,
            uid: 1000,
            gid: 1000,
            ..FileEntry::new(
                format!("dir{:03}/sub/file-{i:06}.dat", i / 100).into_bytes(),
                0o100644,
                (i * 1234) as i64,
            )
        };
        enc.encode(&e, &mut bytes);
    }
    enc.encode_end(0, &mut bytes);
    let mut g = c.benchmark_group("file_list_decoding");
    g.throughput(Throughput::Elements(ENTRIES as u64));
    g.bench_function("decode_10k_entries", |b| {
        b.iter(|| {
            let mut d = FlistDecoder::new(opts, Limits::default());
            let mut list = Vec::with_capacity(ENTRIES);
            let mut pos = 0;
            while let Ok(Decoded::Complete { value, consumed }) = d.decode(&bytes[pos..], &list) {
                pos += consumed;
                match value {
                    FlistItem::Entry(e) => list.push(e),
                    FlistItem::End { .. } => break,
                }
            }
            black_box(turku_proto_rsync::sort::sort_order(&list, 31).len())
        })
    });
    g.finish();
}

criterion_group!(benches, rolling, matching, tokens, file_list);
criterion_main!(benches);

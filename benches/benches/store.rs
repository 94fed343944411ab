//! Store hot paths, on this machine's 2 cores. Phases measured:
//! 1. chunking (FastCDC v2020), hashing (blake3) and compression (zstd levels 1 and 3) in MiB/s;
//! 2. ingest of new data (adaptive and inline compression) and of data already stored (dedup
//!    path) in MiB/s, and `gc` compressing what a deferred writer stored raw;
//! 3. an unchanged snapshot of a 100k-file tree (time; bytes written are printed);
//! 4. export to a directory in MiB/s;
//! 5. forget one of many snapshots and collect the garbage.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use turku_store::{CompressionMode, Store, StoreConfig};
use turku_testkit::random_bytes;

const MIB: usize = 1024 * 1024;
const CORPUS_BYTES: usize = 64 * MIB;
const CORPUS_FILES: usize = 16;
const SMALL_TREE_FILES: usize = 100_000;
const SMALL_TREE_DIRS: usize = 1000;
const GC_SNAPSHOTS: usize = 40;

/// Half random, half text-like bytes: compressible but not trivially.
fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = random_bytes(seed, len);
    for (i, b) in out
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| (i / 4096) % 2 == 0)
    {
        *b = b"the quick brown fox jumps over the lazy dog 0123456789\n"[i % 55];
    }
    out
}

fn write_corpus(dir: &Path, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..CORPUS_FILES {
        fs::write(
            dir.join(format!("file-{i:02}")),
            mixed_bytes(seed * 100 + i as u64, CORPUS_BYTES / CORPUS_FILES),
        )
        .unwrap();
    }
}

/// Bytes this process has passed to write(2) so far (page cache included).
fn written_bytes() -> u64 {
    fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn primitives(c: &mut Criterion) {
    let data = mixed_bytes(1, CORPUS_BYTES);
    let config = StoreConfig::default();
    let mut g = c.benchmark_group("primitives");
    g.sample_size(10)
        .throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("fastcdc_v2020_1MiB_avg", |b| {
        b.iter(|| black_box(turku_store::chunk_lengths(&config, &data).len()))
    });
    g.bench_function("blake3_1MiB_blocks", |b| {
        b.iter(|| {
            for block in data.chunks(MIB) {
                black_box(blake3::hash(block));
            }
        })
    });
    for level in [1, 3] {
        g.bench_function(format!("zstd{level}_1MiB_blocks"), |b| {
            let mut z = zstd::bulk::Compressor::new(level).unwrap();
            b.iter(|| {
                for block in data.chunks(MIB) {
                    black_box(z.compress(block).unwrap().len());
                }
            })
        });
    }
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    write_corpus(&corpus, 1);
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10)
        .throughput(Throughput::Bytes(CORPUS_BYTES as u64));
    let mut n = 0u64;
    for mode in [CompressionMode::Adaptive, CompressionMode::Inline] {
        g.bench_function(format!("new_data_64MiB_{mode}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let config = StoreConfig {
                        compression: mode,
                        ..StoreConfig::default()
                    };
                    Store::init(&tmp.path().join(format!("fresh-{n}")), config).unwrap()
                },
                |store| black_box(store.ingest_dir("m", "s", &corpus, None).unwrap()),
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function("gc_compresses_deferred_64MiB", |b| {
        b.iter_batched(
            || {
                n += 1;
                let config = StoreConfig {
                    compression: CompressionMode::Deferred,
                    ..StoreConfig::default()
                };
                let store = Store::init(&tmp.path().join(format!("fresh-{n}")), config).unwrap();
                store.ingest_dir("m", "s", &corpus, None).unwrap();
                store
            },
            |store| black_box(store.gc().unwrap()),
            BatchSize::PerIteration,
        )
    });
    let store = Store::init(&tmp.path().join("shared"), StoreConfig::default()).unwrap();
    store.ingest_dir("first", "s", &corpus, None).unwrap();
    let mut m = 0u64;
    g.bench_function("already_stored_64MiB", |b| {
        b.iter(|| {
            m += 1;
            // A new machine has no base: every byte is read, chunked and hashed, none stored.
            let (snap, _) = store
                .ingest_dir(&format!("other-{m}"), "s", &corpus, None)
                .unwrap();
            assert_eq!(snap.stats.new_bytes, 0);
        })
    });
    g.finish();
}

fn unchanged_small_files(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for d in 0..SMALL_TREE_DIRS {
        let dir = tree.join(format!("d{d:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..SMALL_TREE_FILES / SMALL_TREE_DIRS {
            fs::write(dir.join(format!("f{f:03}")), format!("{d} {f}\n")).unwrap();
        }
    }
    let store = Store::init(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    store.ingest_dir("m", "s", &tree, None).unwrap();
    let before = written_bytes();
    let start = Instant::now();
    let (snap, _) = store.ingest_dir("m", "s", &tree, None).unwrap();
    eprintln!(
        "unchanged 100k-file snapshot: {:?}, {} bytes written by this process, {} new bytes stored",
        start.elapsed(),
        written_bytes() - before,
        snap.stats.new_stored_bytes
    );
    let mut g = c.benchmark_group("unchanged");
    g.sample_size(10);
    g.bench_function("snapshot_100k_files", |b| {
        b.iter(|| black_box(store.ingest_dir("m", "s", &tree, None).unwrap()))
    });
    g.finish();
}

fn export(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    write_corpus(&corpus, 2);
    let store = Store::init(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let (snap, _) = store.ingest_dir("m", "s", &corpus, None).unwrap();
    let mut g = c.benchmark_group("export");
    g.sample_size(10)
        .throughput(Throughput::Bytes(CORPUS_BYTES as u64));
    let mut n = 0u64;
    g.bench_function("to_dir_64MiB", |b| {
        b.iter_batched(
            || {
                n += 1;
                let out = tmp.path().join(format!("out-{n}"));
                let _ = fs::remove_dir_all(tmp.path().join(format!("out-{}", n - 1)));
                out
            },
            |out| black_box(store.export_to_dir(&snap, b"", &out).unwrap()),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn gc_after_forget(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("shared"), mixed_bytes(3, 8 * MIB)).unwrap();
    // Inline: what is timed is forgetting and freeing, not compressing deferred blobs.
    let config = StoreConfig {
        compression: CompressionMode::Inline,
        ..StoreConfig::default()
    };
    let store = Store::init(&tmp.path().join("store"), config).unwrap();
    let mut round = 0u64;
    let mut next_snapshot = |store: &Store| {
        round += 1;
        fs::write(src.join("unique"), mixed_bytes(1000 + round, 2 * MIB)).unwrap();
        store.ingest_dir("m", "s", &src, None).unwrap();
    };
    for _ in 0..GC_SNAPSHOTS {
        next_snapshot(&store);
    }
    let mut g = c.benchmark_group("gc");
    g.sample_size(10);
    g.bench_function("forget_1_of_40_then_gc", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                next_snapshot(&store);
                let oldest = store.snapshots(Some("m"), Some("s")).unwrap().remove(0);
                let start = Instant::now();
                store.forget(&oldest).unwrap();
                black_box(store.gc().unwrap());
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    primitives,
    ingest,
    unchanged_small_files,
    export,
    gc_after_forget
);
criterion_main!(benches);

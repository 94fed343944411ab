//! The committed seeds of the store's fuzz targets (`fuzz/seeds/store_*/`) replayed through
//! the targets' own bodies (`turku_store::fuzzing`), so a decoder that starts panicking on one
//! of them fails a plain `cargo test`.
//!
//! `write_hand_made_seeds` (ignored) rebuilds the `hand-*` seeds from what a real store
//! writes: its packs, the tree objects inside them, its snapshot record log.

use std::fs;
use std::path::{Path, PathBuf};

use turku_store::decode::{decode_blob, decode_trailer, decode_tree};
use turku_store::fuzzing;
use turku_store::tree::encode_split;
use turku_store::{CompressionMode, Store, StoreConfig};

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// Runs `body` on every seed of `target`, naming the seed that panics; a missing or empty
/// folder fails rather than testing nothing.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = seeds_dir(target);
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed folder entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in seeds {
        let data = fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: seed {} panics", seed.display());
        }
    }
}

#[test]
fn store_pack_seeds_replay_without_panic() {
    replay("store_pack", fuzzing::store_pack);
}

#[test]
fn store_tree_seeds_replay_without_panic() {
    replay("store_tree", fuzzing::store_tree);
}

#[test]
fn store_snapshot_log_seeds_replay_without_panic() {
    replay("store_snapshot_log", fuzzing::store_snapshot_log);
}

// ------------------------------------------------------------------ the hand-made seeds

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = seeds_dir(target);
    fs::create_dir_all(&dir).expect("seed folder");
    assert!(data.len() < 64 * 1024, "{target}/{name} is too big");
    fs::write(dir.join(format!("hand-{name}")), data).expect("seed");
}

/// A small tree with every kind of entry the store keeps.
fn source_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).expect("dirs");
    fs::write(dir.join("hello.txt"), b"hello, store\n").expect("file");
    fs::write(dir.join("empty"), b"").expect("file");
    let pattern: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(dir.join("sub/pattern.bin"), &pattern).expect("file");
    fs::write(dir.join("sub/deeper/notes.md"), b"# notes\n\nsome words\n").expect("file");
    fs::hard_link(dir.join("hello.txt"), dir.join("sub/hello-again.txt")).expect("link");
    std::os::unix::fs::symlink("../hello.txt", dir.join("sub/link")).expect("symlink");
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
}

/// The store's pack files, sorted.
fn packs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(root.join("packs")).expect("packs") {
        for f in fs::read_dir(shard.expect("shard").path()).expect("shard") {
            out.push(f.expect("pack").path());
        }
    }
    out.sort();
    out
}

/// Rebuilds the `hand-*` seeds; run after a format change with
/// `cargo test -p turku-store --test fuzz_seeds -- --ignored write_hand_made_seeds`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_hand_made_seeds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    source_tree(&src);
    let mut trees = 0;
    for (mode, name) in [
        (CompressionMode::Inline, "inline"),
        (CompressionMode::Adaptive, "adaptive"),
    ] {
        let root = tmp.path().join(name);
        let config = StoreConfig {
            chunk_min: 4 * 1024,
            chunk_avg: 8 * 1024,
            chunk_max: 16 * 1024,
            compression: mode,
            ..StoreConfig::default()
        };
        let store = Store::init(&root, config).expect("store");
        let (first, _) = store.ingest_dir("m", "s", &src, None).expect("ingest");
        fs::write(src.join("hello.txt"), b"hello again, store\n").expect("edit");
        store.ingest_dir("m", "s", &src, None).expect("ingest");
        store
            .ingest_dir("other", "etc", &src, None)
            .expect("ingest");
        store.forget(&first).expect("forget");

        let log = fs::read(root.join("snapshots/records.log")).expect("log");
        write_seed("store_snapshot_log", &format!("{name}-records"), &log);
        let lines: Vec<&[u8]> = log.split_inclusive(|&b| b == b'\n').collect();
        write_seed(
            "store_snapshot_log",
            &format!("{name}-first-line"),
            lines[0],
        );
        let torn = &log[..log.len() - lines[lines.len() - 1].len() / 2];
        write_seed("store_snapshot_log", &format!("{name}-torn"), torn);

        for (i, pack) in packs(&root).iter().enumerate() {
            let bytes = fs::read(pack).expect("pack");
            if bytes.len() >= 60 * 1024 {
                continue;
            }
            write_seed("store_pack", &format!("{name}-{i}"), &bytes);
            if i == 0 {
                // A flipped byte in the first blob: the hash check must refuse it.
                let mut flipped = bytes.clone();
                flipped[16] ^= 0x55;
                write_seed("store_pack", &format!("{name}-{i}-flipped"), &flipped);
            }
            let mut read_at = |offset: u64, len: usize| -> std::io::Result<Vec<u8>> {
                let start = offset as usize;
                bytes
                    .get(start..start + len)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| std::io::Error::other("short read"))
            };
            let blobs = decode_trailer(bytes.len() as u64, &mut read_at).expect("trailer");
            let mut d = turku_store::decode::Decompressor::new().expect("zstd");
            for b in blobs {
                let start = b.offset as usize;
                let stored = &bytes[start..start + b.stored_len as usize];
                let plain = decode_blob(&b, stored, &mut d).expect("blob");
                if decode_tree(&plain).is_ok() {
                    write_seed(
                        "store_tree",
                        &format!("{name}-{}", &b.id.to_hex()[..12]),
                        &plain,
                    );
                    trees += 1;
                }
            }
        }
    }
    assert!(trees > 0, "no tree objects found in the packs");
    let log = fs::read(tmp.path().join("inline/snapshots/records.log")).expect("log");
    let mut damaged = log.clone();
    damaged.extend_from_slice(b"{\"not\": \"a record\"}\n\xff\xfe garbage\n");
    write_seed("store_snapshot_log", "appended-garbage", &damaged);

    // A split directory node, as a directory of many entries is stored.
    let parts = vec![
        (b"a".to_vec(), turku_store::Id::of(b"first part")),
        (
            b"entry-013337".to_vec(),
            turku_store::Id::of(b"second part"),
        ),
        (b"entry-026674".to_vec(), turku_store::Id::of(b"third part")),
    ];
    write_seed("store_tree", "split", &encode_split(&parts));
}

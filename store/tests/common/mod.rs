//! Helpers shared by the store's integration tests; each test binary uses only some of them.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use turku_store::{Snapshot, Store, StoreConfig};

/// Small chunks, so modest test files span many chunks and packs.
pub fn small_chunks() -> StoreConfig {
    StoreConfig {
        chunk_min: 16 * 1024,
        chunk_avg: 64 * 1024,
        chunk_max: 256 * 1024,
        ..StoreConfig::default()
    }
}

/// [`small_chunks`] at zstd level 1, for tests that write tens of megabytes.
pub fn small_chunks_fast() -> StoreConfig {
    StoreConfig {
        zstd_level: 1,
        ..small_chunks()
    }
}

/// A new store in `dir/store` with [`small_chunks`].
pub fn new_store(dir: &Path) -> Store {
    Store::init(&dir.join("store"), small_chunks()).unwrap()
}

/// Every pack file of the store at `root`, sorted.
pub fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(root.join("packs")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// The whole of `snap` as a tar stream.
pub fn tar_of(store: &Store, snap: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    store.export_to_tar(snap, b"", &mut out).unwrap();
    out
}

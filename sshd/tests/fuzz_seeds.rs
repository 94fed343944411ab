//! The committed seeds of the storage's fuzz targets (`fuzz/seeds/storage_*/`) replayed
//! through the targets' own bodies (`turku_storage::fuzzing`), so a decoder that starts
//! panicking on one of them fails a plain `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

use turku_storage::fuzzing;

/// Runs `body` on every seed of `target`, naming the seed that panics; a missing or empty
/// folder fails rather than testing nothing.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
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
fn storage_config_seeds_replay_without_panic() {
    replay("storage_config", fuzzing::storage_config);
}

#[test]
fn storage_ping_request_seeds_replay_without_panic() {
    replay("storage_ping_request", fuzzing::storage_ping_request);
}

#[test]
fn storage_control_request_seeds_replay_without_panic() {
    replay("storage_control_request", fuzzing::storage_control_request);
}

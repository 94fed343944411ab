//! The committed seeds of the coordinator's fuzz targets (`fuzz/seeds/coordinator_*/`)
//! replayed through the targets' own bodies (`turku_coordinator::fuzzing`), so a handler or
//! the schedule parser that starts panicking (or answering 500) on one of them fails a plain
//! `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

use turku_coordinator::fuzzing;

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
fn coordinator_frequency_seeds_replay_without_panic() {
    replay("coordinator_frequency", fuzzing::coordinator_frequency);
}

#[test]
fn coordinator_request_seeds_replay_without_panic() {
    replay("coordinator_request", fuzzing::coordinator_request);
}

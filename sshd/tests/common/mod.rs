//! Helpers shared by the `turku-storage` command tests: the binary with a clean
//! environment, bounded runs, and the store commands every test needs.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest a `turku-storage` child may run before the test kills it and fails.
pub const CHILD_BOUND: Duration = Duration::from_secs(60);

pub fn turku(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_turku-storage"));
    c.env_remove("TURKU_STORE")
        .env_remove("RSYNC_PASSWORD")
        .arg("--store")
        .arg(store);
    c
}

/// Runs `cmd` to completion within [`CHILD_BOUND`], killing it (and failing) past that.
pub fn run_bounded(cmd: Command) -> Output {
    run_within(cmd, CHILD_BOUND)
}

/// Runs `cmd` to completion within `bound`, killing it (and failing) past that.
pub fn run_within(mut cmd: Command, bound: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "turku-storage ran past {bound:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn init(store: &Path) {
    let out = run_bounded({
        let mut c = turku(store);
        c.arg("init");
        c
    });
    assert!(out.status.success());
}

/// Exports machine `m`, source `data`, `snapshot` to `to` within `bound`; it must succeed.
pub fn export_within(store: &Path, snapshot: &str, to: &Path, bound: Duration) {
    let mut c = turku(store);
    c.args([
        "export",
        "--machine",
        "m",
        "--source",
        "data",
        "--snapshot",
        snapshot,
        "--to",
    ])
    .arg(to);
    let out = run_within(c, bound);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `key value` figure from a pull's stats line in its stderr.
pub fn stat(stderr: &str, key: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("files ")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == key)
        .unwrap_or_else(|| panic!("{key} not in {line}"));
    words[i + 1].parse().unwrap()
}

//! The edge-case tree the pull and push tests transfer.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn write_file(p: &Path, data: &[u8], mode: u32, mtime: SystemTime) {
    fs::write(p, data).expect("write");
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
    let f = fs::File::open(p).expect("open");
    f.set_times(fs::FileTimes::new().set_modified(mtime))
        .expect("times");
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree with every entry type we can make without devices.
pub fn build_tree(src: &Path) {
    let t = |s: i64, ns: u32| {
        if s >= 0 {
            UNIX_EPOCH + Duration::new(s as u64, ns)
        } else {
            UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(u64::from(ns))
        }
    };
    fs::create_dir_all(src.join("deep/a/b/c/d/e/f/g/h")).expect("mkdir");
    fs::create_dir_all(src.join("empty dir")).expect("mkdir");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    write_file(
        &src.join("empty"),
        b"",
        0o644,
        t(1_600_000_000, 123_456_789),
    );
    write_file(
        &src.join("small.txt"),
        b"hello world\n",
        0o640,
        t(1_700_000_000, 1),
    );
    write_file(
        &src.join("big.bin"),
        &pseudo_random(3_000_123, 1),
        0o600,
        t(1_650_000_000, 999_999_999),
    );
    write_file(
        &src.join("sub/mid.bin"),
        &pseudo_random(200_000, 2),
        0o755,
        t(1_500_000_000, 500),
    );
    write_file(
        &src.join("deep/a/b/c/d/e/f/g/h/leaf"),
        b"leaf",
        0o444,
        t(1_400_000_000, 0),
    );
    write_file(
        &src.join("old"),
        b"before 1970",
        0o644,
        t(-1_000_000, 250_000_000),
    );
    write_file(
        &src.join("future"),
        b"after 2038",
        0o644,
        t(4_200_000_000, 42),
    );
    write_file(
        &src.join("setuid"),
        b"#!/bin/sh\n",
        0o4755,
        t(1_600_000_000, 0),
    );
    write_file(
        &src.join("setgid"),
        b"#!/bin/sh\n",
        0o2711,
        t(1_600_000_000, 0),
    );
    write_file(
        &src.join("with space"),
        b"space",
        0o644,
        t(1_600_000_000, 7),
    );
    write_file(
        &src.join("new\nline"),
        b"newline",
        0o644,
        t(1_600_000_000, 8),
    );
    write_file(
        &src.join("back\\slash"),
        b"backslash",
        0o644,
        t(1_600_000_000, 9),
    );
    write_file(
        &src.join(OsStr::from_bytes(b"latin1-\xe9\xff")),
        b"not utf-8",
        0o644,
        t(1_600_000_000, 10),
    );
    write_file(
        &src.join("n".repeat(255)),
        b"long name",
        0o644,
        t(1_600_000_000, 11),
    );
    write_file(&src.join("-dash"), b"dash", 0o644, t(1_600_000_000, 12));
    std::os::unix::fs::symlink("small.txt", src.join("rel-link")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", src.join("abs-link")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", src.join("sub/dangling")).expect("symlink");
    let st = Command::new("mkfifo")
        .arg(src.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(st.success());
    fs::create_dir(src.join("sticky")).expect("mkdir sticky");
    fs::set_permissions(src.join("sticky"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    for d in ["sub", "empty dir", "deep/a", "sticky", "."] {
        let f = fs::File::open(src.join(d)).expect("open dir");
        f.set_times(fs::FileTimes::new().set_modified(t(1_234_567_890, 987_654_321)))
            .expect("dir times");
    }
}

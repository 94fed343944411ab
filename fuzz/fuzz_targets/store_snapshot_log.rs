//! Arbitrary bytes as the snapshot record log: torn, unparsable and malformed lines are
//! set aside as damage (never fatal), nothing panics; what decodes has its metadata brought
//! into range (permission bits only, nanoseconds below one second).
#![no_main]

use libfuzzer_sys::fuzz_target;
use turku_store::decode::decode_snapshot_log;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshots) = decode_snapshot_log(data) {
        for s in snapshots {
            assert!(s.root_meta.perm <= 0o7777, "{:o}", s.root_meta.perm);
            assert!(s.root_meta.mtime_nsec <= 999_999_999);
        }
    }
});

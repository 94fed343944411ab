//! Arbitrary bytes as the snapshot record log: torn, unparsable and malformed lines are
//! set aside as damage (never fatal), nothing panics; what decodes has its metadata brought
//! into range (permission bits only, nanoseconds below one second).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_store::fuzzing::store_snapshot_log(data));

#![no_main]
//! rsync NDX decoder (byte-reduced file indexes) for protocols 29–32.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_ndx(data));

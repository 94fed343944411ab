#![no_main]
//! rsync delta tokens, applied to a small basis.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_tokens(data));

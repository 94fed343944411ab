#![no_main]
//! rsync sum heads and the block sums that follow them (sender side of a request).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_sum_head(data));

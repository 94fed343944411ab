#![no_main]
//! The whole client sender after setup (requests, item flags, sum heads, block sums,
//! phase DONEs, the goodbye, delete stats, messages) fed arbitrary multiplexed input as
//! the receiver's generator would send it, over a small in-memory list whose files are
//! read from memory (one fails to open, one fails midway).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_sender(data));

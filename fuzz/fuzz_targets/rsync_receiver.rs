#![no_main]
//! The whole client receiver after setup (file list, requests, tokens, messages, end of
//! run: phase order, completeness, rebuilt-byte cap, parents) fed arbitrary multiplexed
//! input, with a sink that transfers every file from a small basis.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_receiver(data));

#![no_main]
//! rsync multiplexed frames: the frame decoder and the streaming demultiplexer, fed in
//! arbitrary split points.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_mux(data));

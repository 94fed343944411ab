#![no_main]
//! rsync daemon handshake: line splitting, greeting parsing, and the whole client
//! handshake machine fed a hostile server.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_handshake(data));

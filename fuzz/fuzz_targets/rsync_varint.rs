#![no_main]
//! rsync varint / varlong / longint / vstring decoders: no panic on any input, and every
//! decoded value re-encodes to bytes that decode to the same value.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_varint(data));

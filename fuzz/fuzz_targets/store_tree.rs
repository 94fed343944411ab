//! Arbitrary bytes as a tree object: decode errors are typed, never panics; what decodes
//! re-encodes to the same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_store::fuzzing::store_tree(data));

//! Arbitrary bytes as a whole pack file: the trailer decoder must return an error naming the
//! offset, never panic or allocate past its limits; every blob it accepts is then decoded
//! and hash-checked, which must also fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_store::fuzzing::store_pack(data));

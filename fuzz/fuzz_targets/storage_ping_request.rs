//! Arbitrary bytes as the agent's ping request on the storage's SSH stdin: nothing panics,
//! the outcome does not depend on how the bytes are split into reads, and what comes out is
//! validated (port in range, bounded source count, usable names and credentials).
//! The first byte picks the read size; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_storage::fuzzing::storage_ping_request(data));

//! Any body to any `/v1` endpoint: never a panic, never a 500.
//!
//! Input: first byte picks the endpoint, the rest is the request body. The database is an
//! in-memory one seeded with a storage, a machine and registration secrets whose secrets
//! are all `"s"`, so the fuzzer can reach the authenticated paths.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_coordinator::fuzzing::coordinator_request(data));

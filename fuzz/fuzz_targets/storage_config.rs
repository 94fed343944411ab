//! Arbitrary bytes as two config files of the storage's `config.d`: parsing never panics,
//! only a JSON object comes out, and merging behaves as the original's `dict_merge` (every
//! overlay key ends up in the result, merging is idempotent, merging into `{}` is the overlay).
//! The first byte picks each file's format; the second where the rest splits into two files
//! (the whole rest is parsed as a third).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_storage::fuzzing::storage_config(data));

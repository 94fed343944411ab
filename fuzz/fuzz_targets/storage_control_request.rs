//! Arbitrary bytes as one line on the daemon's control socket, read both as a request (what
//! the daemon decodes from `turku-storage restore`) and as a reply (what the command decodes
//! from the daemon): typed errors, never a panic; what decodes passes its field checks,
//! redacts its password in its debug form, and re-encodes to a line that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_storage::fuzzing::storage_control_request(data));

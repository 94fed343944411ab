//! Arbitrary bytes as one line on the daemon's control socket, read both as a request (what
//! the daemon decodes from `turku-storage restore`) and as a reply (what the command decodes
//! from the daemon): typed errors, never a panic; what decodes passes its field checks,
//! redacts its password in its debug form, and re-encodes to a line that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turku_storage::control::{decode_reply, decode_request, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let Request::Restore(restore) = &request;
        assert!(restore.check().is_ok());
        if restore.password.is_some() {
            assert!(format!("{request:?}").contains("password: Some(\"<redacted>\")"));
        }
        let again = serde_json::to_vec(&request).expect("a decoded request serialises");
        assert_eq!(decode_request(&again).ok(), Some(request));
    }
    if let Ok(reply) = decode_reply(data) {
        let again = serde_json::to_vec(&reply).expect("a decoded reply serialises");
        assert_eq!(decode_reply(&again).ok(), Some(reply));
    }
});

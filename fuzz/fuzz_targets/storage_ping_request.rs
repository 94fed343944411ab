//! Arbitrary bytes as the agent's ping request on the storage's SSH stdin: nothing panics,
//! the outcome does not depend on how the bytes are split into reads, and what comes out is
//! validated (port in range, bounded source count, usable names and credentials).
//! The first byte picks the read size; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turku_storage::constants::MAX_PING_SOURCES;
use turku_storage::ping::{PingError, PingRequest, PingRequestReader};

const MACHINE_UUID: &str = "5a3b1a0e-6f0e-4c1e-9a43-0d2a8c1f7b11";

type Outcome = Result<Option<PingRequest>, String>;

fn shown(result: Result<Option<PingRequest>, PingError>) -> Outcome {
    result.map_err(|e| e.to_string())
}

fn check(request: &PingRequest) {
    assert_eq!(request.machine_uuid, MACHINE_UUID);
    assert_ne!(request.port, 0);
    assert!(request.sources.len() <= MAX_PING_SOURCES);
    for (name, credentials) in &request.sources {
        assert!(!name.is_empty() && name != "." && name != "..");
        assert!(!name.contains('/') && !name.chars().any(char::is_control));
        assert!(!credentials.username.is_empty());
        assert!(!credentials.username.contains(['@', '/', ':']));
        assert!(!credentials.password.expose().is_empty());
        assert!(!credentials.password.expose().contains('\0'));
    }
    if !request.sources.is_empty() {
        assert!(format!("{request:?}").contains("<redacted>"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(split).max(1);

    let Ok(mut whole) = PingRequestReader::new(MACHINE_UUID) else {
        return;
    };
    let whole_outcome = shown(whole.feed(stream));

    let Ok(mut chunked) = PingRequestReader::new(MACHINE_UUID) else {
        return;
    };
    let mut chunked_outcome: Outcome = Ok(None);
    for chunk in stream.chunks(read_size) {
        chunked_outcome = shown(chunked.feed(chunk));
        if !matches!(chunked_outcome, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole_outcome, chunked_outcome);

    match whole_outcome {
        Ok(Some(request)) => {
            check(&request);
            assert!(whole.remainder().starts_with(chunked.remainder()));
        }
        Ok(None) => {
            let at_eof = shown(whole.finish().map(Some));
            assert_eq!(at_eof, shown(chunked.finish().map(Some)));
            if let Ok(Some(request)) = at_eof {
                check(&request);
            }
        }
        Err(_) => {}
    }
});

//! The bodies of the `storage_*` fuzz targets (`fuzz/fuzz_targets/`), one function a target,
//! so the fuzzer and the replay of the committed seeds (`tests/fuzz_seeds.rs`) run the same
//! code. Each takes the raw fuzz input; a panic here (an assertion included) is a bug the
//! fuzzer found, never a rejected input.

use serde_json::{Map, Value};
use turku_api_types::config_dir::{deep_merge, parse_config_file};

use crate::constants::MAX_PING_SOURCES;
use crate::control::{decode_reply, decode_request, Request};
use crate::ping::{PingError, PingRequest, PingRequestReader};

fn config_name(format_bit: bool) -> &'static str {
    if format_bit {
        "10-storage.yaml"
    } else {
        "10-storage.json"
    }
}

/// Merging behaves as the original's `dict_merge`: every overlay key ends up in the result,
/// merging is idempotent, merging into `{}` is the overlay.
fn check_merge(base: &Value, overlay: &Value) {
    let mut merged = base.clone();
    deep_merge(&mut merged, overlay.clone());
    if let (Value::Object(merged_map), Value::Object(overlay_map)) = (&merged, overlay) {
        for key in overlay_map.keys() {
            assert!(merged_map.contains_key(key));
        }
    }
    let mut again = merged.clone();
    deep_merge(&mut again, overlay.clone());
    assert_eq!(again, merged);

    let mut from_empty = Value::Object(Map::new());
    deep_merge(&mut from_empty, overlay.clone());
    assert_eq!(&from_empty, overlay);
}

/// Arbitrary bytes as two config files of the storage's `config.d`: parsing never panics,
/// only a JSON object comes out, and merging behaves. The first byte picks each file's
/// format; the second where the rest splits into two files (the whole rest is parsed as a
/// third).
pub fn storage_config(data: &[u8]) {
    let [formats, split, rest @ ..] = data else {
        return;
    };
    let split = usize::from(*split).min(rest.len());
    let (first, second) = rest.split_at(split);
    let parsed: Vec<Value> = [
        parse_config_file(config_name(formats & 1 != 0), first),
        parse_config_file(config_name(formats & 2 != 0), second),
        parse_config_file(config_name(formats & 4 != 0), rest),
    ]
    .into_iter()
    .filter_map(Result::ok)
    .collect();
    for value in &parsed {
        assert!(value.is_object());
    }
    for base in &parsed {
        for overlay in &parsed {
            check_merge(base, overlay);
        }
    }
}

const MACHINE_UUID: &str = "5a3b1a0e-6f0e-4c1e-9a43-0d2a8c1f7b11";

type Outcome = Result<Option<PingRequest>, String>;

fn shown(result: Result<Option<PingRequest>, PingError>) -> Outcome {
    result.map_err(|e| e.to_string())
}

/// What a ping request lets through: port in range, bounded source count, usable names and
/// credentials, the password redacted from its debug form.
fn check_ping(request: &PingRequest) {
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

/// Arbitrary bytes as the agent's ping request on the storage's SSH stdin: nothing panics,
/// the outcome does not depend on how the bytes are split into reads, and what comes out is
/// validated. The first byte picks the read size; the rest is the stream.
pub fn storage_ping_request(data: &[u8]) {
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
            check_ping(&request);
            assert!(whole.remainder().starts_with(chunked.remainder()));
        }
        Ok(None) => {
            let at_eof = shown(whole.finish().map(Some));
            assert_eq!(at_eof, shown(chunked.finish().map(Some)));
            if let Ok(Some(request)) = at_eof {
                check_ping(&request);
            }
        }
        Err(_) => {}
    }
}

/// Arbitrary bytes as one line on the daemon's control socket, read both as a request (what
/// the daemon decodes from `turku-storage restore`) and as a reply (what the command decodes
/// from the daemon): typed errors, never a panic; what decodes passes its field checks,
/// redacts its password in its debug form, and re-encodes to a line that decodes the same.
pub fn storage_control_request(data: &[u8]) {
    if let Ok(request) = decode_request(data) {
        let Request::Restore(restore) = &request;
        assert!(restore.check().is_ok());
        if restore.password.is_some() {
            assert!(format!("{request:?}").contains("password: Some(\"<redacted>\")"));
        }
        let again = match serde_json::to_vec(&request) {
            Ok(bytes) => bytes,
            Err(e) => panic!("a decoded request does not serialise: {e}"),
        };
        assert_eq!(decode_request(&again).ok(), Some(request));
    }
    if let Ok(reply) = decode_reply(data) {
        let again = match serde_json::to_vec(&reply) {
            Ok(bytes) => bytes,
            Err(e) => panic!("a decoded reply does not serialise: {e}"),
        };
        assert_eq!(decode_reply(&again).ok(), Some(reply));
    }
}

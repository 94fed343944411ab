//! The committed seeds of the storage's fuzz targets (`fuzz/seeds/storage_*/`) replayed
//! through the same public decoders, so a decoder that starts panicking on one of them fails
//! a plain `cargo test`. The fuzz crate is a workspace of its own, so each `storage_*`
//! function below mirrors the body of its target in `fuzz/fuzz_targets/`: keep them in step.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use turku_api_types::config_dir::{deep_merge, parse_config_file};
use turku_storage::constants::MAX_PING_SOURCES;
use turku_storage::control::{decode_reply, decode_request, Request};
use turku_storage::ping::{PingError, PingRequest, PingRequestReader};

/// Runs `body` on every seed of `target`, naming the seed that panics; a missing or empty
/// folder fails rather than testing nothing.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed folder entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in seeds {
        let data = fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: seed {} panics", seed.display());
        }
    }
}

// ------------------------------------------------------------------ storage_config

fn config_name(format_bit: bool) -> &'static str {
    if format_bit {
        "10-storage.yaml"
    } else {
        "10-storage.json"
    }
}

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

fn storage_config(data: &[u8]) {
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

#[test]
fn storage_config_seeds_replay_without_panic() {
    replay("storage_config", storage_config);
}

// ------------------------------------------------------------------ storage_ping_request

const MACHINE_UUID: &str = "5a3b1a0e-6f0e-4c1e-9a43-0d2a8c1f7b11";

type Outcome = Result<Option<PingRequest>, String>;

fn shown(result: Result<Option<PingRequest>, PingError>) -> Outcome {
    result.map_err(|e| e.to_string())
}

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

fn storage_ping_request(data: &[u8]) {
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

#[test]
fn storage_ping_request_seeds_replay_without_panic() {
    replay("storage_ping_request", storage_ping_request);
}

// ------------------------------------------------------------------ storage_control_request

fn storage_control_request(data: &[u8]) {
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
}

#[test]
fn storage_control_request_seeds_replay_without_panic() {
    replay("storage_control_request", storage_control_request);
}

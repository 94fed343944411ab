//! Arbitrary bytes as two config files of the storage's `config.d`: parsing never panics,
//! only a JSON object comes out, and merging behaves as the original's `dict_merge` (every
//! overlay key ends up in the result, merging is idempotent, merging into `{}` is the overlay).
//! The first byte picks each file's format; the second where the rest splits into two files
//! (the whole rest is parsed as a third).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use turku_api_types::config_dir::{deep_merge, parse_config_file};

fn name(format_bit: bool) -> &'static str {
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

fuzz_target!(|data: &[u8]| {
    let [formats, split, rest @ ..] = data else {
        return;
    };
    let split = usize::from(*split).min(rest.len());
    let (first, second) = rest.split_at(split);
    let parsed: Vec<Value> = [
        parse_config_file(name(formats & 1 != 0), first),
        parse_config_file(name(formats & 2 != 0), second),
        parse_config_file(name(formats & 4 != 0), rest),
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
});

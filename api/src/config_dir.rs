//! Config directories as the original Turku agent and storage read them (`spec/turku.md` §2.2,
//! §3.1): every readable regular `*.json` and `*.yaml` file of `<config-dir>/config.d`, in file
//! name order, deep-merged so that later files win and nested objects merge key by key.
//!
//! The pure parts ([`deep_merge`], [`parse_config_file`]) do no I/O so they can be fuzzed;
//! [`load_config_dir`] and [`load_merged_dir`] are the thin adapter over the file system.
//! YAML maps to the JSON values PyYAML's `safe_load` gives for ordinary config files,
//! including its YAML 1.1 booleans (`yes`, `no`, `on`, `off`); a repeated key keeps its last
//! value, as PyYAML does.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::constants::config::{CONFIG_SUBDIR, JSON_SUFFIX, MAX_CONFIG_FILE_BYTES, YAML_SUFFIX};

/// Why a config directory or file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot list config directory {}", .dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {name} is larger than {max} bytes")]
    TooLarge { name: String, max: u64 },
    #[error("config file {name} is not a JSON or YAML file by its name")]
    UnknownFormat { name: String },
    #[error("config file {name} is not valid JSON: {reason}")]
    Json { name: String, reason: String },
    #[error("config file {name} is not valid YAML: {reason}")]
    Yaml { name: String, reason: String },
    #[error("config file {name} does not hold a mapping of keys at its top level")]
    NotAMapping { name: String },
}

/// Which file formats a directory may hold: the agent's machine-generated
/// `<var_dir>/config.d` is JSON only (§3.1), every other config directory also takes YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formats {
    JsonOnly,
    JsonAndYaml,
}

/// Merges `overlay` into `base` as the original's `dict_merge`: when both are objects, each
/// key of `overlay` is merged into `base`'s value for it; otherwise `overlay` replaces `base`.
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base_map), Value::Object(overlay_map)) => {
            for (key, overlay_value) in overlay_map {
                match base_map.get_mut(&key) {
                    Some(base_value) => deep_merge(base_value, overlay_value),
                    None => {
                        base_map.insert(key, overlay_value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn is_json_name(name: &str) -> bool {
    name.ends_with(JSON_SUFFIX)
}

fn is_yaml_name(name: &str) -> bool {
    name.ends_with(YAML_SUFFIX)
}

/// Parses one config file's bytes, as JSON for `*.json` and YAML for `*.yaml` (`name` is the
/// file name, used for the format and in errors). Returns a JSON object: an empty YAML file
/// (only comments) is an empty object; any other top level than a mapping is an error, since
/// merging it would replace the whole configuration.
pub fn parse_config_file(name: &str, bytes: &[u8]) -> Result<Value, ConfigError> {
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            name: name.to_owned(),
            max: MAX_CONFIG_FILE_BYTES,
        });
    }
    let value = if is_json_name(name) {
        serde_json::from_slice::<Value>(bytes).map_err(|e| ConfigError::Json {
            name: name.to_owned(),
            reason: e.to_string(),
        })?
    } else if is_yaml_name(name) {
        let options = serde_saphyr::options! {
            duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::LastWins,
        };
        serde_saphyr::from_slice_with_options::<Value>(bytes, options).map_err(|e| {
            ConfigError::Yaml {
                name: name.to_owned(),
                reason: e.to_string(),
            }
        })?
    } else {
        return Err(ConfigError::UnknownFormat {
            name: name.to_owned(),
        });
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null if is_yaml_name(name) => Ok(Value::Object(Map::new())),
        _ => Err(ConfigError::NotAMapping {
            name: name.to_owned(),
        }),
    }
}

/// Reads and merges `<config_dir>/config.d/*.json|*.yaml`, the storage's and the agent's
/// admin configuration. A missing `config.d` is an error: the caller named the directory.
pub fn load_config_dir(config_dir: &Path) -> Result<Value, ConfigError> {
    load_merged_dir(&config_dir.join(CONFIG_SUBDIR), Formats::JsonAndYaml)
}

/// Reads and merges every readable regular file of `dir` whose name has one of `formats`'
/// suffixes, sorted by file name; others (directories, sockets, unreadable files, other
/// names) are skipped as the original skips them. Symbolic links to regular files count, as
/// Python's `os.path.isfile` follows them. Returns an empty object when nothing matched.
pub fn load_merged_dir(dir: &Path, formats: Formats) -> Result<Value, ConfigError> {
    let read_dir_error = |source| ConfigError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
        let entry = entry.map_err(read_dir_error)?;
        // A name that is not UTF-8 cannot end in ".json" as Python compares it.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let wanted =
            is_json_name(&name) || (formats == Formats::JsonAndYaml && is_yaml_name(&name));
        if wanted {
            names.push(name);
        }
    }
    names.sort();
    let mut merged = Value::Object(Map::new());
    for name in names {
        let path = dir.join(&name);
        let Some(bytes) = read_regular_file(&path)? else {
            continue;
        };
        deep_merge(&mut merged, parse_config_file(&name, &bytes)?);
    }
    Ok(merged)
}

/// The file's bytes, or `None` when it is not a regular file or cannot be opened for reading
/// (the original checks `os.access(R_OK)` and skips such files).
fn read_regular_file(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        // Vanished since listing, or a dangling symbolic link: not a regular file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    }
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let mut bytes = Vec::new();
    // One byte past the limit tells a file at the limit from one over it.
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_merges_objects_and_replaces_the_rest() {
        let mut base = json!({"a": 1, "n": {"x": 1, "y": {"z": 1}}, "l": [1, 2], "o": {"k": 1}});
        deep_merge(
            &mut base,
            json!({"b": 2, "n": {"y": {"w": 2}, "x": 3}, "l": [3], "o": 5}),
        );
        assert_eq!(
            base,
            json!({"a": 1, "b": 2, "n": {"x": 3, "y": {"z": 1, "w": 2}}, "l": [3], "o": 5})
        );
        let mut scalar = json!(1);
        deep_merge(&mut scalar, json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }

    #[test]
    fn yaml_maps_like_pyyaml_safe_load() {
        let yaml = b"name: s1\nport: 2222\nflag: yes\nquiet: off\nt: True\nn: ~\nempty:\n\
                     f: 1.5\nl: [a, 'b', 3]\nv: {p: /x}\nname: s2\n";
        let value = parse_config_file("20-x.yaml", yaml).unwrap();
        assert_eq!(
            value,
            json!({"name": "s2", "port": 2222, "flag": true, "quiet": false, "t": true,
                   "n": null, "empty": null, "f": 1.5, "l": ["a", "b", 3], "v": {"p": "/x"}})
        );
        assert_eq!(
            parse_config_file("e.yaml", b"# nothing\n").unwrap(),
            json!({})
        );
    }

    #[test]
    fn parse_errors_name_the_file() {
        for (name, bytes) in [
            ("bad.json", &b"{"[..]),
            ("bad.yaml", b"a: [1"),
            ("list.json", b"[1]"),
            ("null.json", b"null"),
            ("two.yaml", b"a: 1\n---\nb: 2\n"),
            ("x.yml", b"a: 1"),
        ] {
            let err = parse_config_file(name, bytes).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        let big = vec![b' '; MAX_CONFIG_FILE_BYTES as usize + 1];
        assert!(matches!(
            parse_config_file("big.json", &big),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    #[test]
    fn directory_merges_in_name_order_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        let config_d = dir.path().join(CONFIG_SUBDIR);
        std::fs::create_dir(&config_d).unwrap();
        let write = |name: &str, text: &str| std::fs::write(config_d.join(name), text).unwrap();
        write("20-b.yaml", "a: 2\nnest: {y: 2}\n");
        write("10-a.json", r#"{"a": 1, "nest": {"x": 1, "y": 1}}"#);
        write("30-c.json", r#"{"c": 3}"#);
        write("40-ignored.yml", "a: 99\n");
        write("50-ignored.txt", "a: 99\n");
        write("05-ignored.json~", "{");
        std::fs::create_dir(config_d.join("60-dir.json")).unwrap();
        std::os::unix::fs::symlink(config_d.join("30-c.json"), config_d.join("31-link.json"))
            .unwrap();
        std::os::unix::fs::symlink("/nonexistent", config_d.join("32-dangling.json")).unwrap();
        let merged = load_config_dir(dir.path()).unwrap();
        assert_eq!(merged, json!({"a": 2, "nest": {"x": 1, "y": 2}, "c": 3}));

        let json_only = load_merged_dir(&config_d, Formats::JsonOnly).unwrap();
        assert_eq!(json_only, json!({"a": 1, "nest": {"x": 1, "y": 1}, "c": 3}));
    }

    #[test]
    fn missing_directory_and_bad_file_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_config_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.d"), "{err}");
        let config_d = dir.path().join(CONFIG_SUBDIR);
        std::fs::create_dir(&config_d).unwrap();
        assert_eq!(load_config_dir(dir.path()).unwrap(), json!({}));
        std::fs::write(config_d.join("10-broken.json"), "{").unwrap();
        let err = load_config_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("10-broken.json"), "{err}");
    }
}

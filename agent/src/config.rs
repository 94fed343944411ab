//! The agent's settings from its config files (`spec/turku.md` §3.1–3.2), without I/O.
//!
//! The adapter ([`crate::files::load_config`]) reads `<config-dir>/config.d`, the
//! machine-generated `<var_dir>/config.d` (JSON only), `<config-dir>/sources.d` and the
//! public key; [`AgentConfig::build`] merges them as the original does (`/etc` over `/var`,
//! missing keys take the original's defaults, sources without `path` are dropped) and
//! checks the types of the keys the agent itself uses. Unknown keys are ignored; a source's
//! dictionary is uploaded verbatim (minus this agent's local hook commands).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use turku_api_types::config_dir::deep_merge;

use crate::constants::{
    defaults, AGENT_ONLY_SOURCE_KEYS, DEFAULT_VAR_DIR, SSH_KEY_FILE, SSH_PUBLIC_KEY_FILE,
};

/// A config value of the wrong type, or a command line that cannot be split.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config key {key:?} must be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("config key {key:?}: {reason}")]
    BadCommand { key: String, reason: &'static str },
}

/// One source of `sources.d`.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The local path exported read-only to the storage.
    pub path: PathBuf,
    /// Run before the rsync daemon starts; a failure skips the source (it stays due).
    pub pre_command: Option<Vec<String>>,
    /// Run after the storage session ends.
    pub post_command: Option<Vec<String>>,
    /// The dictionary sent to the coordinator: the file's, without the hook keys.
    pub upload: Map<String, Value>,
}

/// Everything the agent's commands use.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub config_dir: PathBuf,
    pub api_url: Option<String>,
    pub api_auth_name: Option<String>,
    pub api_auth_secret: Option<String>,
    pub machine_uuid: Option<String>,
    pub machine_secret: Option<String>,
    /// Informational machine keys sent verbatim when present.
    pub environment_name: Option<Value>,
    pub service_name: Option<Value>,
    pub published: Option<Value>,
    /// Configured, else the host name (never persisted).
    pub unit_name: Value,
    pub var_dir: PathBuf,
    /// `None`: the first existing of the original's list.
    pub lock_dir: Option<PathBuf>,
    pub rsyncd_command: Vec<String>,
    /// Empty: no `uid` line (a non-root daemon given one refuses every connection).
    pub rsyncd_user: String,
    /// Empty: no `gid` line.
    pub rsyncd_group: String,
    pub rsyncd_local_address: String,
    pub ssh_command: Vec<String>,
    pub ssh_key_type: String,
    pub gonogo_program: Option<Vec<String>>,
    pub restore_path: PathBuf,
    pub restore_module: String,
    /// The public key line, when the key exists (or is configured).
    pub ssh_public_key: Option<String>,
    /// Set when the key exists (or is configured); `None`: not generated yet.
    pub ssh_private_key_file: Option<PathBuf>,
    pub sources: BTreeMap<String, Source>,
}

/// What the adapter read; see [`AgentConfig::build`].
#[derive(Debug, Clone, Default)]
pub struct ConfigFiles {
    /// `<config-dir>/config.d`, merged.
    pub etc: Value,
    /// `<var_dir>/config.d`, merged (JSON only).
    pub var: Value,
    /// `<config-dir>/sources.d`, merged.
    pub sources: Value,
    /// Contents of `<var_dir>/ssh_key.pub` when that file exists.
    pub public_key: Option<String>,
    /// The host name (default `unit_name`).
    pub hostname: String,
}

/// `var_dir` as configured in `etc`, else the default (needed before the rest is read).
pub fn var_dir_of(etc: &Value) -> PathBuf {
    match etc.get("var_dir") {
        Some(Value::String(s)) => PathBuf::from(s),
        _ => PathBuf::from(DEFAULT_VAR_DIR),
    }
}

impl AgentConfig {
    /// Merges the files as the original's `load_config` does.
    pub fn build(config_dir: &Path, files: ConfigFiles) -> Result<Self, ConfigError> {
        // The original reads `var_dir` from /etc alone (it needs it to find the var files),
        // so one set only in `<var_dir>/config.d` changes nothing.
        let var_dir = match &files.etc {
            Value::Object(etc) => string(etc, "var_dir")?,
            _ => None,
        }
        .map_or_else(|| PathBuf::from(DEFAULT_VAR_DIR), PathBuf::from);
        let mut merged = match files.var {
            Value::Object(_) => files.var,
            _ => Value::Object(Map::new()),
        };
        // /etc gets priority over /var.
        deep_merge(&mut merged, files.etc);
        let map = match merged {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        // As the original: an existing `<var_dir>/ssh_key.pub` sets both keys over anything
        // configured; without it the configured ones (if any) count, so a ping before the
        // first update-config exits quietly.
        let (ssh_public_key, ssh_private_key_file) = match files.public_key {
            Some(text) => (
                Some(text.trim_end().to_owned()),
                Some(var_dir.join(SSH_KEY_FILE)),
            ),
            None => (
                string(&map, "ssh_public_key")?,
                string(&map, "ssh_private_key_file")?.map(PathBuf::from),
            ),
        };
        Ok(AgentConfig {
            config_dir: config_dir.to_owned(),
            api_url: string(&map, "api_url")?,
            api_auth_name: string(&map, "api_auth_name")?,
            api_auth_secret: string(&map, "api_auth_secret")?,
            machine_uuid: string(&map, "machine_uuid")?,
            machine_secret: string(&map, "machine_secret")?,
            environment_name: map.get("environment_name").cloned(),
            service_name: map.get("service_name").cloned(),
            published: map.get("published").cloned(),
            unit_name: map
                .get("unit_name")
                .cloned()
                .unwrap_or(Value::String(files.hostname)),
            lock_dir: match map.get("lock_dir") {
                None | Some(Value::Null) => None,
                Some(_) => string(&map, "lock_dir")?.map(PathBuf::from),
            },
            rsyncd_command: command(&map, "rsyncd_command")?
                .unwrap_or_else(|| vec![defaults::RSYNCD_COMMAND.to_owned()]),
            rsyncd_user: string_or_empty(&map, "rsyncd_user", defaults::RSYNCD_USER)?,
            rsyncd_group: string_or_empty(&map, "rsyncd_group", defaults::RSYNCD_GROUP)?,
            rsyncd_local_address: string(&map, "rsyncd_local_address")?
                .unwrap_or_else(|| defaults::RSYNCD_LOCAL_ADDRESS.to_owned()),
            ssh_command: command(&map, "ssh_command")?
                .unwrap_or_else(|| vec![defaults::SSH_COMMAND.to_owned()]),
            ssh_key_type: string(&map, "ssh_key_type")?
                .unwrap_or_else(|| defaults::SSH_KEY_TYPE.to_owned()),
            gonogo_program: command(&map, "gonogo_program")?,
            restore_path: string(&map, "restore_path")?
                .map_or_else(|| PathBuf::from(defaults::RESTORE_PATH), PathBuf::from),
            restore_module: string(&map, "restore_module")?
                .unwrap_or_else(|| defaults::RESTORE_MODULE.to_owned()),
            ssh_public_key,
            ssh_private_key_file,
            sources: sources(files.sources)?,
            var_dir,
        })
    }

    /// The machine's credentials, when both are known.
    pub fn machine_credentials(&self) -> Option<(&str, &str)> {
        Some((
            self.machine_uuid.as_deref()?,
            self.machine_secret.as_deref()?,
        ))
    }

    /// `<var_dir>/ssh_key.pub` and `<var_dir>/ssh_key`.
    pub fn key_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.var_dir.join(SSH_PUBLIC_KEY_FILE),
            self.var_dir.join(SSH_KEY_FILE),
        )
    }
}

fn wrong(key: &str, expected: &'static str) -> ConfigError {
    ConfigError::WrongType {
        key: key.to_owned(),
        expected,
    }
}

/// A string key; null counts as absent.
fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong(key, "a string")),
    }
}

/// A string key whose empty or false value means "leave the line out".
fn string_or_empty(
    map: &Map<String, Value>,
    key: &str,
    default: &str,
) -> Result<String, ConfigError> {
    match map.get(key) {
        None => Ok(default.to_owned()),
        Some(Value::Null) | Some(Value::Bool(false)) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong(key, "a string")),
    }
}

/// A command: a list (program first) or a string split as a POSIX shell would (`shlex`).
fn command(map: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    command_value(map.get(key), key)
}

fn command_value(value: Option<&Value>, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let words = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => {
            split_command_line(s).map_err(|reason| ConfigError::BadCommand {
                key: key.to_owned(),
                reason,
            })?
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| wrong(key, "a string or a list of strings"))?,
        Some(_) => return Err(wrong(key, "a string or a list of strings")),
    };
    if words.is_empty() {
        // An empty go/no-go program means "none", as in the original.
        return Ok(None);
    }
    Ok(Some(words))
}

/// Splits a command line into words like Python's `shlex.split`: blanks separate words,
/// single quotes keep everything, double quotes keep all but `\"`, `\\`, `\$` and `` \` ``,
/// a backslash outside quotes keeps the next character.
pub fn split_command_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("no closing quotation"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("no closing quotation"),
                        },
                        Some(c) => word.push(c),
                        None => return Err("no closing quotation"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("no escaped character"),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The merged `sources.d`: each entry with a `path` (others, also `"path": null`, dropped
/// silently, as the original drops them).
fn sources(merged: Value) -> Result<BTreeMap<String, Source>, ConfigError> {
    let Value::Object(entries) = merged else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (name, entry) in entries {
        let Value::Object(mut dict) = entry else {
            continue;
        };
        let path = match dict.get("path") {
            None | Some(Value::Null) => continue,
            Some(Value::String(p)) => PathBuf::from(p),
            Some(_) => return Err(wrong(&format!("{name}.path"), "a string")),
        };
        let pre_command = command_value(dict.get("pre_command"), &format!("{name}.pre_command"))?;
        let post_command =
            command_value(dict.get("post_command"), &format!("{name}.post_command"))?;
        for key in AGENT_ONLY_SOURCE_KEYS {
            dict.remove(key);
        }
        out.insert(
            name,
            Source {
                path,
                pre_command,
                post_command,
                upload: dict,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use turku_api_types::config_dir::parse_config_file;

    fn files(etc: Value, var: Value, sources: Value) -> ConfigFiles {
        ConfigFiles {
            etc,
            var,
            sources,
            public_key: None,
            hostname: "host-a".into(),
        }
    }

    #[test]
    fn defaults_are_the_originals() {
        let c = AgentConfig::build(
            Path::new("/etc/turku-agent"),
            files(json!({}), json!({}), json!({})),
        )
        .unwrap();
        assert_eq!(c.var_dir, PathBuf::from("/var/lib/turku-agent"));
        assert_eq!(c.lock_dir, None);
        assert_eq!(c.rsyncd_command, ["rsync"]);
        assert_eq!(c.rsyncd_user, "root");
        assert_eq!(c.rsyncd_group, "*");
        assert_eq!(c.rsyncd_local_address, "127.0.0.1");
        assert_eq!(c.ssh_command, ["ssh"]);
        assert_eq!(c.ssh_key_type, "ed25519");
        assert_eq!(c.gonogo_program, None);
        assert_eq!(
            c.restore_path,
            PathBuf::from("/var/backups/turku-agent/restore")
        );
        assert_eq!(c.restore_module, "turku-restore");
        assert_eq!(c.unit_name, json!("host-a"));
        assert_eq!(c.api_url, None);
        assert_eq!(c.ssh_private_key_file, None);
        assert!(c.sources.is_empty());
    }

    /// The original README's examples: `config.d/config.json` and `sources.d/etc.json`,
    /// and the same as YAML, give the same settings.
    #[test]
    fn readme_examples_parse_to_the_same_settings() {
        let config_json = br#"{
    "api_auth": "MACHINE AUTH STRING",
    "api_url": "https://turku.example.com/v1"
}"#;
        let sources_json = br#"{
    "etc": {
        "path": "/etc"
    }
}"#;
        let config_yaml = b"api_auth: MACHINE AUTH STRING\napi_url: https://turku.example.com/v1\n";
        let sources_yaml = b"etc:\n  path: /etc\n";
        let from_json = AgentConfig::build(
            Path::new("/etc/turku-agent"),
            files(
                parse_config_file("config.json", config_json).unwrap(),
                json!({}),
                parse_config_file("etc.json", sources_json).unwrap(),
            ),
        )
        .unwrap();
        let from_yaml = AgentConfig::build(
            Path::new("/etc/turku-agent"),
            files(
                parse_config_file("config.yaml", config_yaml).unwrap(),
                json!({}),
                parse_config_file("etc.yaml", sources_yaml).unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(from_json, from_yaml);
        assert_eq!(
            from_json.api_url.as_deref(),
            Some("https://turku.example.com/v1")
        );
        let etc = &from_json.sources["etc"];
        assert_eq!(etc.path, PathBuf::from("/etc"));
        assert_eq!(
            etc.upload,
            json!({"path": "/etc"}).as_object().unwrap().clone()
        );
    }

    #[test]
    fn etc_wins_over_var_and_sources_merge_deeply() {
        let c = AgentConfig::build(
            Path::new("/c"),
            ConfigFiles {
                etc: json!({"machine_uuid": "from-etc", "var_dir": "/v", "rsyncd_user": "",
                            "rsyncd_group": null, "gonogo_program": "check_load -c '1,5,15'",
                            "unit_name": "web/0", "published": true}),
                var: json!({"machine_uuid": "from-var", "machine_secret": "s3"}),
                sources: json!({
                    "etc": {"path": "/etc", "frequency": "daily", "exclude": ["*.bak"],
                            "future_key": {"x": 1}},
                    "nopath": {"comment": "dropped"},
                    "db": {"path": "/var/backups/db", "pre_command": ["pg_dumpall", "-f", "/var/backups/db/all.sql"],
                           "post_command": "rm -f /var/backups/db/all.sql"},
                }),
                public_key: Some("ssh-ed25519 AAAA turku\n".into()),
                hostname: "h".into(),
            },
        )
        .unwrap();
        assert_eq!(c.machine_credentials(), Some(("from-etc", "s3")));
        assert_eq!(c.var_dir, PathBuf::from("/v"));
        assert_eq!(c.rsyncd_user, "");
        assert_eq!(c.rsyncd_group, "");
        assert_eq!(
            c.gonogo_program,
            Some(vec!["check_load".into(), "-c".into(), "1,5,15".into()])
        );
        assert_eq!(c.unit_name, json!("web/0"));
        assert_eq!(c.published, Some(json!(true)));
        assert_eq!(c.ssh_public_key.as_deref(), Some("ssh-ed25519 AAAA turku"));
        assert_eq!(c.ssh_private_key_file, Some(PathBuf::from("/v/ssh_key")));
        assert_eq!(c.sources.keys().collect::<Vec<_>>(), ["db", "etc"]);
        let db = &c.sources["db"];
        assert_eq!(db.pre_command.as_ref().unwrap()[0], "pg_dumpall");
        assert_eq!(
            db.post_command.as_ref().unwrap(),
            &["rm", "-f", "/var/backups/db/all.sql"]
        );
        assert_eq!(
            Value::Object(db.upload.clone()),
            json!({"path": "/var/backups/db"})
        );
        assert_eq!(c.sources["etc"].upload["future_key"], json!({"x": 1}));
    }

    #[test]
    fn precedence_is_the_originals() {
        let c = AgentConfig::build(
            Path::new("/c"),
            files(
                json!({"ssh_public_key": "ssh-rsa CONFIGURED", "ssh_private_key_file": "/k"}),
                json!({"var_dir": "/elsewhere"}),
                json!({"gone": {"path": null}, "kept": {"path": "/srv"}}),
            ),
        )
        .unwrap();
        assert_eq!(c.var_dir, PathBuf::from(DEFAULT_VAR_DIR));
        assert_eq!(c.sources.keys().collect::<Vec<_>>(), ["kept"]);
        // Without the key file the configured keys count ...
        assert_eq!(c.ssh_private_key_file, Some(PathBuf::from("/k")));
        // ... with it, the file wins.
        let mut with_key = files(
            json!({"ssh_public_key": "ssh-rsa CONFIGURED", "ssh_private_key_file": "/k",
                   "var_dir": "/v"}),
            json!({}),
            json!({}),
        );
        with_key.public_key = Some("ssh-ed25519 FILE turku\n".into());
        let c = AgentConfig::build(Path::new("/c"), with_key).unwrap();
        assert_eq!(c.ssh_public_key.as_deref(), Some("ssh-ed25519 FILE turku"));
        assert_eq!(c.ssh_private_key_file, Some(PathBuf::from("/v/ssh_key")));
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (etc, key) in [
            (json!({"api_url": 5}), "api_url"),
            (json!({"ssh_command": [1]}), "ssh_command"),
            (json!({"rsyncd_command": {"a": 1}}), "rsyncd_command"),
            (json!({"gonogo_program": "a 'b"}), "gonogo_program"),
        ] {
            let e =
                AgentConfig::build(Path::new("/c"), files(etc, json!({}), json!({}))).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = AgentConfig::build(
            Path::new("/c"),
            files(json!({}), json!({}), json!({"s": {"path": 1}})),
        )
        .unwrap_err();
        assert!(e.to_string().contains("s.path"), "{e}");
    }

    #[test]
    fn command_lines_split_like_shlex() {
        let split = |s| split_command_line(s).unwrap();
        assert_eq!(split("a  b\tc"), ["a", "b", "c"]);
        assert_eq!(
            split(r#"sh -c "echo \"hi\" \$x" 'a b'"#),
            ["sh", "-c", "echo \"hi\" $x", "a b"]
        );
        assert_eq!(split(r"a\ b ''"), ["a b", ""]);
        assert!(split_command_line("'").is_err());
        assert!(split_command_line("a\\").is_err());
        assert!(split("   ").is_empty());
    }
}

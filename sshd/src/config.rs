//! The storage daemon's configuration: turku-storage's `config.d/*.json|*.yaml` (spec
//! `turku.md` §2.2), so an existing install starts our daemon unchanged, plus our own keys.
//!
//! [`load`] reads and merges the directory (`turku_api_types::config_dir`, shared with the
//! agent); [`StorageConfig::from_value`] is the pure step from the merged JSON value to typed
//! settings with every default of the original applied. Unknown keys do not stop the daemon:
//! they come back as warnings for the caller to log. Our own keys:
//! - `listen`: the address the SSH server binds, default `0.0.0.0:<ssh_ping_port>`;
//! - `store`: the store directory, default `<path of the first volume>/turku-store`, volumes
//!   taken in name order (the original has no store; name order does not depend on which
//!   file declared a volume first);
//! - `host_key_dir`: where the SSH host keys are generated and kept, default
//!   `<var_dir>/host_keys`;
//! - `control_socket`: the daemon's owner-only local socket that `restore` asks through,
//!   default `<var_dir>/control/turku-storage.sock`;
//! - `authorized_keys_static`: an operator's authorized_keys-format file of extra agent keys,
//!   each line with `command="... <machine uuid>"` naming its machine;
//! - the daemon's limits and timers ([`DaemonSettings`]; seconds for durations, each key the
//!   field's name).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::constants::config as defaults;

/// Why the configuration cannot start the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] turku_api_types::config_dir::ConfigError),
    #[error("the merged configuration is not a mapping of keys")]
    NotAMapping,
    #[error("required config keys missing: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("config key {key} must be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("config key volumes names no volume with a path")]
    NoVolumes,
    #[error("config key listen is not an address and port: {value:?}")]
    BadListen { value: String },
}

/// The daemon's limits and timers: our own config keys, each named as its field.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// Open SSH connections, authenticated or not; more are closed at once.
    pub max_connections: usize,
    /// Agent sessions doing work at once; a session over the cap is told it is busy and
    /// its sources stay due.
    pub max_sessions: usize,
    /// Backups running at once across all sessions.
    pub max_backups: usize,
    /// How long a due source waits for a backup slot before it is left due.
    pub backup_queue_timeout: Duration,
    /// From connect to authenticated.
    pub login_timeout: Duration,
    /// Silence from the agent before its request arrives, and of the SSH connection at any
    /// time (answered keepalives count as life).
    pub idle_timeout: Duration,
    /// Whole session, backups included.
    pub session_timeout: Duration,
    /// How often the authorized keys are fetched from the coordinator.
    pub refresh_interval: Duration,
    /// Least time between two refreshes caused by unknown keys.
    pub refresh_min_interval: Duration,
    /// The rsync daemon's silence during a pull, and its greeting and authentication.
    pub rsync_io_timeout: Duration,
    pub rsync_connect_timeout: Duration,
    /// Least time between two garbage collections started after backups.
    pub gc_min_interval: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            max_connections: defaults::MAX_CONNECTIONS,
            max_sessions: defaults::MAX_SESSIONS,
            max_backups: defaults::MAX_BACKUPS,
            backup_queue_timeout: Duration::from_secs(defaults::BACKUP_QUEUE_TIMEOUT_SECS),
            login_timeout: Duration::from_secs(defaults::LOGIN_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(defaults::IDLE_TIMEOUT_SECS),
            session_timeout: Duration::from_secs(defaults::SESSION_TIMEOUT_SECS),
            refresh_interval: Duration::from_secs(defaults::REFRESH_INTERVAL_SECS),
            refresh_min_interval: Duration::from_secs(defaults::REFRESH_MIN_INTERVAL_SECS),
            rsync_io_timeout: Duration::from_secs(defaults::RSYNC_IO_TIMEOUT_SECS),
            rsync_connect_timeout: Duration::from_secs(defaults::RSYNC_CONNECT_TIMEOUT_SECS),
            gc_min_interval: Duration::from_secs(defaults::GC_MIN_INTERVAL_SECS),
        }
    }
}

/// Our count keys: at least 1.
const DAEMON_COUNT_KEYS: &[&str] = &["max_connections", "max_sessions", "max_backups"];
/// Our duration keys, in seconds (fractions allowed): more than 0.
const DAEMON_DURATION_KEYS: &[&str] = &[
    "backup_queue_timeout",
    "login_timeout",
    "idle_timeout",
    "session_timeout",
    "refresh_interval",
    "refresh_min_interval",
    "rsync_io_timeout",
    "rsync_connect_timeout",
    "gc_min_interval",
];

fn daemon_settings(map: &Map<String, Value>) -> Result<DaemonSettings, ConfigError> {
    let mut settings = DaemonSettings::default();
    for key in DAEMON_COUNT_KEYS {
        let Some(value) = present(map, key) else {
            continue;
        };
        let count = value
            .as_u64()
            .filter(|n| (1..=defaults::MAX_COUNT_SETTING).contains(n))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| wrong_type(key, "a whole number from 1 to 1000000"))?;
        match *key {
            "max_connections" => settings.max_connections = count,
            "max_sessions" => settings.max_sessions = count,
            _ => settings.max_backups = count,
        }
    }
    for key in DAEMON_DURATION_KEYS {
        let Some(value) = present(map, key) else {
            continue;
        };
        let seconds = value
            .as_f64()
            .filter(|secs| *secs > 0.0 && *secs <= defaults::MAX_DURATION_SETTING_SECS)
            .ok_or_else(|| wrong_type(key, "a number of seconds above 0 (at most 10 years)"))?;
        let duration = Duration::from_secs_f64(seconds);
        let field = match *key {
            "backup_queue_timeout" => &mut settings.backup_queue_timeout,
            "login_timeout" => &mut settings.login_timeout,
            "idle_timeout" => &mut settings.idle_timeout,
            "session_timeout" => &mut settings.session_timeout,
            "refresh_interval" => &mut settings.refresh_interval,
            "refresh_min_interval" => &mut settings.refresh_min_interval,
            "rsync_io_timeout" => &mut settings.rsync_io_timeout,
            "rsync_connect_timeout" => &mut settings.rsync_connect_timeout,
            _ => &mut settings.gc_min_interval,
        };
        *field = duration;
    }
    Ok(settings)
}

/// A secret from the configuration: kept out of `Debug` output (and so out of logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Self {
        Secret(secret)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One backup volume (`volumes.<name>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub path: PathBuf,
    /// Whether the coordinator may place new machines here.
    pub accept_new: bool,
    /// No new machines above this percentage used; the global value when not set here.
    pub accept_new_high_water_pct: f64,
}

/// Where local log lines go (`log_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Not configured: the journal when running under systemd, else syslog (the caller
    /// decides, as the original decides at start).
    Auto,
    /// Configured as empty, `false` or `null`: no local log.
    Off,
    Systemd,
    Syslog,
    File(PathBuf),
}

/// How snapshots are taken (`snapshot_mode`): anything but `link-dest` behaves like `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    LinkDest,
    None,
}

/// Facts about this host that defaults depend on, detected once by the caller so that
/// building a configuration stays pure.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// The host name advertised as `ssh_ping_host` by default. The original uses
    /// `socket.getfqdn()`, which asks the resolver; we use the kernel's host name instead, so
    /// that start does not depend on DNS (set `ssh_ping_host` to advertise another name).
    pub hostname: String,
}

impl HostFacts {
    /// Reads the kernel's host name; `localhost` if it cannot be read.
    pub fn detect() -> Self {
        let hostname = std::fs::read_to_string(defaults::HOSTNAME_FILE)
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| defaults::FALLBACK_HOSTNAME.to_owned());
        HostFacts { hostname }
    }
}

/// The typed configuration, every default applied.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub name: String,
    pub secret: Secret,
    pub api_url: String,
    /// By volume name; never empty.
    pub volumes: BTreeMap<String, Volume>,
    pub accept_new_high_water_pct: f64,
    pub api_auth_name: Option<String>,
    pub api_auth_secret: Option<Secret>,
    /// Sent as `storage.published` only when set.
    pub published: Option<bool>,
    pub log_file: LogTarget,
    /// `None`: the first existing of [`defaults::LOCK_DIR_CANDIDATES`] (see
    /// [`StorageConfig::lock_dir`]).
    pub lock_dir: Option<PathBuf>,
    pub var_dir: PathBuf,
    pub snapshot_mode: SnapshotMode,
    pub preserve_hard_links: bool,
    pub ssh_ping_host: String,
    pub ssh_ping_port: u16,
    pub ssh_ping_user: String,
    /// `None`: the contents of the files matching `ssh_ping_host_keys_glob`.
    pub ssh_ping_host_keys: Option<Vec<String>>,
    pub ssh_ping_host_keys_glob: String,
    /// `None`: `~<ssh_ping_user>/.ssh/authorized_keys`.
    pub authorized_keys_file: Option<PathBuf>,
    pub authorized_keys_user: String,
    pub authorized_keys_command: String,
    /// `None`: keep the system's time zone (configured empty, `false` or `null`).
    pub timezone: Option<String>,
    pub listen: SocketAddr,
    pub store: PathBuf,
    pub host_key_dir: PathBuf,
    /// The daemon's local control socket (`restore` asks the daemon through it).
    pub control_socket: PathBuf,
    pub authorized_keys_static: Option<PathBuf>,
    pub daemon: DaemonSettings,
}

/// A configuration and the warnings (unknown keys) the caller should log.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: StorageConfig,
    pub warnings: Vec<String>,
}

/// Every top-level key we read: the original's (§2.2) and ours.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "secret",
    "api_url",
    "volumes",
    "accept_new_high_water_pct",
    "api_auth_name",
    "api_auth_secret",
    "published",
    "log_file",
    "lock_dir",
    "var_dir",
    "snapshot_mode",
    "preserve_hard_links",
    "ssh_ping_host",
    "ssh_ping_port",
    "ssh_ping_user",
    "ssh_ping_host_keys",
    "ssh_ping_host_keys_glob",
    "authorized_keys_file",
    "authorized_keys_user",
    "authorized_keys_command",
    "timezone",
    "listen",
    "store",
    "host_key_dir",
    "control_socket",
    "authorized_keys_static",
];

const VOLUME_KEYS: &[&str] = &["path", "accept_new", "accept_new_high_water_pct"];

/// Reads `<config_dir>/config.d` and builds the configuration.
pub fn load(config_dir: &Path, host: &HostFacts) -> Result<LoadedConfig, ConfigError> {
    let merged = turku_api_types::config_dir::load_config_dir(config_dir)?;
    StorageConfig::from_value(merged, host)
}

fn wrong_type(key: &str, expected: &'static str) -> ConfigError {
    ConfigError::WrongType {
        key: key.to_owned(),
        expected,
    }
}

/// `null` counts as absent, as the original's `config.get(key)` would see it for required
/// keys.
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|value| !value.is_null())
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(wrong_type(key, "a string")),
    }
}

fn boolean(map: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ConfigError> {
    match present(map, key) {
        None => Ok(default),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(wrong_type(key, "true or false")),
    }
}

fn percentage(map: &Map<String, Value>, key: &str, default: f64) -> Result<f64, ConfigError> {
    match present(map, key) {
        None => Ok(default),
        Some(value) => value
            .as_f64()
            .filter(|pct| (0.0..=100.0).contains(pct))
            .ok_or_else(|| wrong_type(key, "a number from 0 to 100")),
    }
}

/// Python truthiness for the keys whose falsy values switch a feature off.
fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(flag) => !flag,
        Value::String(text) => text.is_empty(),
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
    }
}

impl StorageConfig {
    /// Builds the configuration from the merged config value, applying every default.
    pub fn from_value(value: Value, host: &HostFacts) -> Result<LoadedConfig, ConfigError> {
        let Value::Object(map) = value else {
            return Err(ConfigError::NotAMapping);
        };
        let mut warnings: Vec<String> = map
            .keys()
            .filter(|key| {
                !KNOWN_KEYS.contains(&key.as_str())
                    && !DAEMON_COUNT_KEYS.contains(&key.as_str())
                    && !DAEMON_DURATION_KEYS.contains(&key.as_str())
            })
            .map(|key| match key.as_str() {
                "api_auth" => "config key api_auth is no longer read (the original dropped it \
                               in 2023): use api_auth_name and api_auth_secret"
                    .to_owned(),
                _ => format!("unknown config key {key} ignored"),
            })
            .collect();

        let missing: Vec<&'static str> = ["name", "secret", "api_url", "volumes"]
            .into_iter()
            .filter(|key| present(&map, key).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError::Missing(missing));
        }
        let required = |key: &str| -> Result<String, ConfigError> {
            string(&map, key)?.ok_or_else(|| wrong_type(key, "a string"))
        };
        let name = required("name")?;
        let secret = Secret(required("secret")?);
        let api_url = required("api_url")?;

        let accept_new_high_water_pct = percentage(
            &map,
            "accept_new_high_water_pct",
            defaults::ACCEPT_NEW_HIGH_WATER_PCT,
        )?;
        let volumes = volumes(&map, accept_new_high_water_pct, &mut warnings)?;

        let log_file = match map.get("log_file") {
            None => LogTarget::Auto,
            Some(value) if is_falsy(value) => LogTarget::Off,
            Some(Value::String(target)) => match target.as_str() {
                "systemd" => LogTarget::Systemd,
                "syslog" => LogTarget::Syslog,
                path => LogTarget::File(PathBuf::from(path)),
            },
            Some(_) => return Err(wrong_type("log_file", "systemd, syslog or a file path")),
        };
        let timezone = match map.get("timezone") {
            None => Some(defaults::TIMEZONE.to_owned()),
            Some(value) if is_falsy(value) => None,
            Some(Value::String(zone)) => Some(zone.clone()),
            Some(_) => return Err(wrong_type("timezone", "a time zone name")),
        };
        let published = match present(&map, "published") {
            None => None,
            Some(Value::Bool(flag)) => Some(*flag),
            Some(_) => return Err(wrong_type("published", "true or false")),
        };
        let snapshot_mode = match string(&map, "snapshot_mode")?.as_deref() {
            None | Some(defaults::SNAPSHOT_MODE_LINK_DEST) => SnapshotMode::LinkDest,
            Some(_) => SnapshotMode::None,
        };
        let ssh_ping_port = match present(&map, "ssh_ping_port") {
            None => defaults::SSH_PING_PORT,
            Some(value) => value
                .as_u64()
                .and_then(|port| u16::try_from(port).ok())
                .filter(|port| *port != 0)
                .ok_or_else(|| wrong_type("ssh_ping_port", "a port number from 1 to 65535"))?,
        };
        let ssh_ping_host_keys = match present(&map, "ssh_ping_host_keys") {
            None => None,
            Some(Value::Array(keys)) => Some(
                keys.iter()
                    .map(|key| key.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| wrong_type("ssh_ping_host_keys", "a list of strings"))?,
            ),
            Some(_) => return Err(wrong_type("ssh_ping_host_keys", "a list of strings")),
        };
        let ssh_ping_user =
            string(&map, "ssh_ping_user")?.unwrap_or_else(|| defaults::SSH_PING_USER.to_owned());
        let var_dir = string(&map, "var_dir")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(defaults::VAR_DIR));
        let listen = match string(&map, "listen")? {
            None => SocketAddr::from((Ipv4Addr::UNSPECIFIED, ssh_ping_port)),
            Some(text) => text
                .parse()
                .map_err(|_| ConfigError::BadListen { value: text })?,
        };
        let store = match string(&map, "store")? {
            Some(store) => PathBuf::from(store),
            // `volumes` is never empty here.
            None => volumes
                .values()
                .next()
                .map(|volume| volume.path.join(defaults::STORE_SUBDIR))
                .ok_or(ConfigError::NoVolumes)?,
        };
        let host_key_dir = string(&map, "host_key_dir")?
            .map(PathBuf::from)
            .unwrap_or_else(|| var_dir.join(defaults::HOST_KEY_SUBDIR));
        let control_socket = string(&map, "control_socket")?
            .map(PathBuf::from)
            .unwrap_or_else(|| var_dir.join(defaults::CONTROL_SOCKET));

        let config = StorageConfig {
            name,
            secret,
            api_url,
            volumes,
            accept_new_high_water_pct,
            api_auth_name: string(&map, "api_auth_name")?,
            api_auth_secret: string(&map, "api_auth_secret")?.map(Secret),
            published,
            log_file,
            lock_dir: string(&map, "lock_dir")?.map(PathBuf::from),
            var_dir,
            snapshot_mode,
            preserve_hard_links: boolean(&map, "preserve_hard_links", false)?,
            ssh_ping_host: string(&map, "ssh_ping_host")?.unwrap_or_else(|| host.hostname.clone()),
            ssh_ping_port,
            ssh_ping_host_keys,
            ssh_ping_host_keys_glob: string(&map, "ssh_ping_host_keys_glob")?
                .unwrap_or_else(|| defaults::SSH_PING_HOST_KEYS_GLOB.to_owned()),
            authorized_keys_file: string(&map, "authorized_keys_file")?.map(PathBuf::from),
            authorized_keys_user: string(&map, "authorized_keys_user")?
                .unwrap_or_else(|| ssh_ping_user.clone()),
            authorized_keys_command: string(&map, "authorized_keys_command")?
                .unwrap_or_else(|| defaults::AUTHORIZED_KEYS_COMMAND.to_owned()),
            ssh_ping_user,
            timezone,
            listen,
            store,
            host_key_dir,
            control_socket,
            authorized_keys_static: string(&map, "authorized_keys_static")?.map(PathBuf::from),
            daemon: daemon_settings(&map)?,
        };
        warnings.sort();
        Ok(LoadedConfig { config, warnings })
    }

    /// The lock directory: the configured one, else the first existing candidate.
    pub fn lock_dir(&self) -> PathBuf {
        if let Some(dir) = &self.lock_dir {
            return dir.clone();
        }
        defaults::LOCK_DIR_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|dir| dir.is_dir())
            .unwrap_or_else(|| PathBuf::from(defaults::LOCK_DIR_LAST_RESORT))
    }
}

/// The `volumes` mapping: volumes without a `path` are dropped, as the original drops them.
fn volumes(
    map: &Map<String, Value>,
    global_high_water_pct: f64,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Volume>, ConfigError> {
    let Some(Value::Object(entries)) = present(map, "volumes") else {
        return Err(wrong_type("volumes", "a mapping of volume names"));
    };
    let mut volumes = BTreeMap::new();
    for (volume_name, entry) in entries {
        let key = |field: &str| format!("volumes.{volume_name}.{field}");
        let Value::Object(fields) = entry else {
            return Err(wrong_type(&format!("volumes.{volume_name}"), "a mapping"));
        };
        for field in fields.keys() {
            if !VOLUME_KEYS.contains(&field.as_str()) {
                warnings.push(format!("unknown config key {} ignored", key(field)));
            }
        }
        let path = match present(fields, "path") {
            None => {
                warnings.push(format!("volume {volume_name} has no path: dropped"));
                continue;
            }
            Some(Value::String(path)) if !path.is_empty() => PathBuf::from(path),
            Some(_) => return Err(wrong_type(&key("path"), "a directory path")),
        };
        let accept_new = match present(fields, "accept_new") {
            None => true,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(wrong_type(&key("accept_new"), "true or false")),
        };
        let accept_new_high_water_pct = match present(fields, "accept_new_high_water_pct") {
            None => global_high_water_pct,
            Some(value) => value
                .as_f64()
                .filter(|pct| (0.0..=100.0).contains(pct))
                .ok_or_else(|| {
                    wrong_type(&key("accept_new_high_water_pct"), "a number from 0 to 100")
                })?,
        };
        volumes.insert(
            volume_name.clone(),
            Volume {
                path,
                accept_new,
                accept_new_high_water_pct,
            },
        );
    }
    if volumes.is_empty() {
        return Err(ConfigError::NoVolumes);
    }
    Ok(volumes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> HostFacts {
        HostFacts {
            hostname: "storage1.example.com".to_owned(),
        }
    }

    fn minimal() -> Value {
        json!({
            "name": "storage1",
            "secret": "s3cret",
            "api_url": "https://turku.example.com/v1",
            "volumes": {"a": {"path": "/media/backup/turku"}},
        })
    }

    fn config_dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config_d = dir.path().join("config.d");
        std::fs::create_dir(&config_d).unwrap();
        for (name, text) in files {
            std::fs::write(config_d.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn an_original_install_loads_unchanged() {
        // As the original README sets a storage up, with an operator's YAML override.
        let dir = config_dir_with(&[
            (
                "10-storage.json",
                r#"{
    "name": "turku-storage-1",
    "secret": "Ex4mpleSecretStr1ng",
    "api_url": "https://turku.example.com/v1",
    "api_auth_name": "registration",
    "api_auth_secret": "Re6istrationSecret",
    "ssh_ping_host": "storage1.example.com",
    "ssh_ping_user": "turku-ping",
    "authorized_keys_command": "sudo /usr/local/bin/turku-storage-ping",
    "volumes": {
        "primary": {"path": "/media/backup/turku", "accept_new": true}
    }
}"#,
            ),
            (
                "50-local.yaml",
                "ssh_ping_port: 2222\npreserve_hard_links: yes\ntimezone: Europe/Helsinki\n\
                 volumes:\n  primary:\n    accept_new_high_water_pct: 90\n  \
                 secondary:\n    path: /media/backup2\n    accept_new: no\n",
            ),
        ]);
        let LoadedConfig { config, warnings } = load(dir.path(), &host()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.name, "turku-storage-1");
        assert_eq!(config.secret.expose(), "Ex4mpleSecretStr1ng");
        assert_eq!(config.api_auth_name.as_deref(), Some("registration"));
        assert_eq!(config.ssh_ping_user, "turku-ping");
        assert_eq!(config.authorized_keys_user, "turku-ping");
        assert_eq!(config.ssh_ping_port, 2222);
        assert_eq!(config.listen, "0.0.0.0:2222".parse().unwrap());
        assert!(config.preserve_hard_links);
        assert_eq!(config.timezone.as_deref(), Some("Europe/Helsinki"));
        assert_eq!(
            config.volumes["primary"],
            Volume {
                path: "/media/backup/turku".into(),
                accept_new: true,
                accept_new_high_water_pct: 90.0
            }
        );
        assert_eq!(
            config.volumes["secondary"],
            Volume {
                path: "/media/backup2".into(),
                accept_new: false,
                accept_new_high_water_pct: 80.0
            }
        );
        assert_eq!(
            config.store,
            PathBuf::from("/media/backup/turku/turku-store")
        );
        assert_eq!(
            config.host_key_dir,
            PathBuf::from("/var/lib/turku-storage/host_keys")
        );
    }

    #[test]
    fn defaults_are_the_originals() {
        let config = StorageConfig::from_value(minimal(), &host())
            .unwrap()
            .config;
        assert_eq!(config.accept_new_high_water_pct, 80.0);
        assert_eq!(config.volumes["a"].accept_new_high_water_pct, 80.0);
        assert!(config.volumes["a"].accept_new);
        assert_eq!(config.api_auth_name, None);
        assert_eq!(config.api_auth_secret, None);
        assert_eq!(config.published, None);
        assert_eq!(config.log_file, LogTarget::Auto);
        assert_eq!(config.lock_dir, None);
        assert_eq!(config.var_dir, PathBuf::from("/var/lib/turku-storage"));
        assert_eq!(config.snapshot_mode, SnapshotMode::LinkDest);
        assert!(!config.preserve_hard_links);
        assert_eq!(config.ssh_ping_host, "storage1.example.com");
        assert_eq!(config.ssh_ping_port, 22);
        assert_eq!(config.ssh_ping_user, "root");
        assert_eq!(config.ssh_ping_host_keys, None);
        assert_eq!(
            config.ssh_ping_host_keys_glob,
            "/etc/ssh/ssh_host_*_key.pub"
        );
        assert_eq!(config.authorized_keys_file, None);
        assert_eq!(config.authorized_keys_user, "root");
        assert_eq!(config.authorized_keys_command, "turku-storage-ping");
        assert_eq!(config.timezone.as_deref(), Some("UTC"));
        assert_eq!(config.listen, "0.0.0.0:22".parse().unwrap());
        assert_eq!(
            config.store,
            PathBuf::from("/media/backup/turku/turku-store")
        );
    }

    #[test]
    fn our_keys_and_falsy_values_override_defaults() {
        let mut value = minimal();
        deep_merge_into(
            &mut value,
            json!({"listen": "127.0.0.1:2022", "store": "/srv/store", "var_dir": "/v",
                   "log_file": "", "timezone": false, "snapshot_mode": "none",
                   "accept_new_high_water_pct": 70, "published": false}),
        );
        let config = StorageConfig::from_value(value, &host()).unwrap().config;
        assert_eq!(config.listen, "127.0.0.1:2022".parse().unwrap());
        assert_eq!(config.store, PathBuf::from("/srv/store"));
        assert_eq!(config.host_key_dir, PathBuf::from("/v/host_keys"));
        assert_eq!(
            config.control_socket,
            PathBuf::from("/v/control/turku-storage.sock")
        );
        assert_eq!(config.log_file, LogTarget::Off);
        assert_eq!(config.timezone, None);
        assert_eq!(config.snapshot_mode, SnapshotMode::None);
        assert_eq!(config.volumes["a"].accept_new_high_water_pct, 70.0);
        assert_eq!(config.published, Some(false));
    }

    fn deep_merge_into(base: &mut Value, overlay: Value) {
        turku_api_types::config_dir::deep_merge(base, overlay);
    }

    #[test]
    fn later_files_win_and_nested_volumes_merge() {
        let dir = config_dir_with(&[
            (
                "20-b.yaml",
                "name: from-b\nvolumes:\n  a:\n    accept_new: false\n",
            ),
            ("10-a.json", &minimal().to_string()),
            ("30-c.json", r#"{"name": "from-c"}"#),
        ]);
        let config = load(dir.path(), &host()).unwrap().config;
        assert_eq!(config.name, "from-c");
        assert_eq!(
            config.volumes["a"].path,
            PathBuf::from("/media/backup/turku")
        );
        assert!(!config.volumes["a"].accept_new);
    }

    #[test]
    fn missing_required_keys_are_each_named() {
        let err =
            StorageConfig::from_value(json!({"name": "n", "secret": null}), &host()).unwrap_err();
        match &err {
            ConfigError::Missing(keys) => assert_eq!(keys, &["secret", "api_url", "volumes"]),
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("secret, api_url, volumes"),
            "{err}"
        );
        let dir = config_dir_with(&[]);
        assert!(matches!(
            load(dir.path(), &host()),
            Err(ConfigError::Missing(keys)) if keys.len() == 4
        ));
    }

    #[test]
    fn unknown_keys_are_warned_not_fatal() {
        let mut value = minimal();
        deep_merge_into(
            &mut value,
            json!({"colour": "blue", "api_auth": "x", "volumes": {"a": {"size": 1}}}),
        );
        let loaded = StorageConfig::from_value(value, &host()).unwrap();
        assert_eq!(loaded.warnings.len(), 3, "{:?}", loaded.warnings);
        let all = loaded.warnings.join("\n");
        assert!(
            all.contains("colour") && all.contains("api_auth_name"),
            "{all}"
        );
        assert!(all.contains("volumes.a.size"), "{all}");
    }

    #[test]
    fn volumes_without_path_are_dropped_and_none_left_is_an_error() {
        let mut value = minimal();
        deep_merge_into(
            &mut value,
            json!({"volumes": {"0-nopath": {"accept_new": true}, "b": {"path": "/b"}}}),
        );
        let loaded = StorageConfig::from_value(value, &host()).unwrap();
        let names: Vec<&String> = loaded.config.volumes.keys().collect();
        assert_eq!(names, ["a", "b"]);
        // The first volume by name that has a path holds the store.
        assert_eq!(
            loaded.config.store,
            PathBuf::from("/media/backup/turku/turku-store")
        );

        let mut value = minimal();
        value["volumes"] = json!({"x": {"accept_new": true}});
        assert!(matches!(
            StorageConfig::from_value(value, &host()),
            Err(ConfigError::NoVolumes)
        ));
    }

    #[test]
    fn store_defaults_to_the_first_volume_by_name() {
        let mut value = minimal();
        value["volumes"] = json!({"zz": {"path": "/z"}, "mm": {"path": "/m"}});
        let config = StorageConfig::from_value(value, &host()).unwrap().config;
        assert_eq!(config.store, PathBuf::from("/m/turku-store"));
    }

    #[test]
    fn wrong_types_are_errors_naming_the_key() {
        for (key, bad) in [
            ("ssh_ping_port", json!(70000)),
            ("ssh_ping_port", json!("22")),
            ("preserve_hard_links", json!("yes")),
            ("name", json!(5)),
            ("volumes", json!(["a"])),
        ] {
            let mut value = minimal();
            value[key] = bad;
            let err = StorageConfig::from_value(value, &host()).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let mut value = minimal();
        value["listen"] = json!("nowhere");
        assert!(matches!(
            StorageConfig::from_value(value, &host()),
            Err(ConfigError::BadListen { .. })
        ));
    }

    #[test]
    fn daemon_settings_are_read_and_bounded() {
        let mut value = minimal();
        let loaded = StorageConfig::from_value(value.clone(), &host()).unwrap();
        assert_eq!(loaded.config.daemon, DaemonSettings::default());
        value["max_backups"] = json!(2);
        value["idle_timeout"] = json!(2.5);
        value["authorized_keys_static"] = json!("/etc/turku-storage/static_keys");
        let loaded = StorageConfig::from_value(value.clone(), &host()).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.daemon.max_backups, 2);
        assert_eq!(
            loaded.config.daemon.idle_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(
            loaded.config.authorized_keys_static.as_deref(),
            Some(Path::new("/etc/turku-storage/static_keys"))
        );
        for (key, bad) in [
            ("max_backups", json!(0)),
            ("max_sessions", json!(-1)),
            ("max_connections", json!("many")),
            ("idle_timeout", json!(0)),
            ("session_timeout", json!(1e12)),
        ] {
            let mut v = value.clone();
            v[key] = bad;
            let e = StorageConfig::from_value(v, &host())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut value = minimal();
        value["api_auth_secret"] = json!("Re6istrationSecret");
        let loaded = StorageConfig::from_value(value, &host()).unwrap();
        let shown = format!("{loaded:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("Re6istration"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

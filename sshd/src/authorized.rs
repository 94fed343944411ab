//! The authorized machines: which agent key may log in, and which machine it names.
//!
//! The original generated an OpenSSH `authorized_keys` file whose lines forced the command
//! `<authorized_keys_command> <machine-uuid>`; the daemon keeps the same mapping in memory.
//! It comes from the coordinator's `storage_update_config` reply (every machine's
//! `ssh_public_key`) plus an optional operator file in the original's line format (the
//! machine is the last word of the forced command). A key names exactly one machine: a key
//! listed for two machines names neither. Keys are compared by their data only, never by
//! comment.
//!
//! Nothing from outside fails a refresh as a whole: a key that does not parse, an insane
//! uuid or an unsupported line is skipped with a warning for the caller to log, so one bad
//! row at the coordinator never locks every agent out.
//!
//! The last reply is cached on disk ([`AuthorizedMachines::save`], [`AuthorizedMachines::load`])
//! so that a restart while the coordinator is down still accepts known agents.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::HashAlg;
use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};
use turku_api_types::v1::{StorageMachine, StorageUpdateConfigResponse};

use crate::constants::authorized as c;
use crate::constants::MAX_MACHINE_UUID_BYTES;

/// Why the cache or the static file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizedError {
    /// No such file: on a first start there is no cache yet.
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is larger than {max} bytes: refused", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("authorized machines cache {} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "authorized machines cache {} is format {found}, this daemon reads format {expected}",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Where an authorization came from, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The coordinator's `storage_update_config` reply (or its cache).
    Coordinator,
    /// The operator's static file, at this 1-based line.
    StaticFile { line: usize },
}

/// The machine an authorized key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineEntry {
    /// The machine uuid, as the coordinator knows it.
    pub uuid: String,
    /// From the coordinator; for a static line, the key's comment.
    pub unit_name: String,
    pub environment_name: Option<String>,
    pub service_name: Option<String>,
    pub origin: Origin,
}

/// One key and the machine it names (a parsed static file line).
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    pub machine: MachineEntry,
}

/// The registry the SSH server consults at authentication.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedMachines {
    by_key: HashMap<KeyData, MachineEntry>,
    /// The coordinator's machines as received, kept to be cached and to be combined again
    /// with a reread static file.
    coordinator: BTreeMap<String, StorageMachine>,
}

/// What the cache file holds: the coordinator's machines as received, so that a load runs
/// exactly the checks a fresh reply gets.
#[derive(Serialize, Deserialize)]
struct CacheFile<M> {
    format: u32,
    machines: M,
}

impl AuthorizedMachines {
    /// Combines the coordinator's reply with the static file's keys; returns the warnings
    /// (skipped keys, keys refused for naming two machines) for the caller to log.
    pub fn from_response(
        response: StorageUpdateConfigResponse,
        static_keys: &[AuthorizedKey],
    ) -> (AuthorizedMachines, Vec<String>) {
        Self::new(response.machines, static_keys)
    }

    /// As [`AuthorizedMachines::from_response`], from the reply's `machines`.
    pub fn new(
        coordinator: BTreeMap<String, StorageMachine>,
        static_keys: &[AuthorizedKey],
    ) -> (AuthorizedMachines, Vec<String>) {
        let mut warnings = Vec::new();
        // Every machine each key is listed for, coordinator first.
        let mut claims: BTreeMap<KeyData, Vec<AuthorizedKey>> = BTreeMap::new();
        let mut claim = |authorized: AuthorizedKey| {
            let machines = claims.entry(authorized.key.key_data().clone()).or_default();
            if !machines
                .iter()
                .any(|known| known.machine.uuid == authorized.machine.uuid)
            {
                machines.push(authorized);
            }
        };
        for (uuid, machine) in &coordinator {
            let described = format!("coordinator machine {uuid} ({})", machine.unit_name);
            if !is_sane_machine_uuid(uuid) {
                warnings.push(format!(
                    "{described}: the uuid is not 1 to {MAX_MACHINE_UUID_BYTES} hex digits \
                     and dashes: skipped"
                ));
                continue;
            }
            match parse_public_key(&machine.ssh_public_key) {
                Ok(key) => claim(AuthorizedKey {
                    key,
                    machine: MachineEntry {
                        uuid: uuid.clone(),
                        unit_name: machine.unit_name.clone(),
                        environment_name: machine.environment_name.clone(),
                        service_name: machine.service_name.clone(),
                        origin: Origin::Coordinator,
                    },
                }),
                Err(reason) => warnings.push(format!(
                    "{described}: ssh_public_key is not an OpenSSH public key ({reason}): skipped"
                )),
            }
        }
        for authorized in static_keys {
            claim(authorized.clone());
        }

        let mut by_key = HashMap::with_capacity(claims.len());
        for (key_data, mut machines) in claims {
            if machines.len() == 1 {
                let only = machines.remove(0);
                by_key.insert(key_data, only.machine);
                continue;
            }
            let named: Vec<String> = machines
                .iter()
                .map(|authorized| {
                    let machine = &authorized.machine;
                    match machine.origin {
                        Origin::Coordinator => format!("{} (coordinator)", machine.uuid),
                        Origin::StaticFile { line } => {
                            format!("{} (static file line {line})", machine.uuid)
                        }
                    }
                })
                .collect();
            warnings.push(format!(
                "key {} is listed for machines {}: refused for all of them, a key must name \
                 exactly one machine",
                machines[0].key.fingerprint(HashAlg::Sha256),
                named.join(", ")
            ));
        }
        (
            AuthorizedMachines {
                by_key,
                coordinator,
            },
            warnings,
        )
    }

    /// The same coordinator machines with another static file (after the operator edited
    /// it), without asking the coordinator again.
    pub fn with_static_keys(
        &self,
        static_keys: &[AuthorizedKey],
    ) -> (AuthorizedMachines, Vec<String>) {
        Self::new(self.coordinator.clone(), static_keys)
    }

    /// The machine `key` names, if any; the comment plays no part.
    pub fn lookup(&self, key: &PublicKey) -> Option<&MachineEntry> {
        self.by_key.get(key.key_data())
    }

    /// How many keys are authorized.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Writes the coordinator's machines to `path` atomically (a temporary file in the same
    /// directory, fsynced, renamed over, the directory fsynced), mode 0600. The static keys
    /// are not cached: their file is read again at start.
    pub fn save(&self, path: &Path) -> Result<(), AuthorizedError> {
        let write_error = |source| AuthorizedError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(write_error)?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", c::CACHE_FILE))
            .permissions(fs::Permissions::from_mode(c::CACHE_FILE_MODE))
            .tempfile_in(dir)
            .map_err(write_error)?;
        let mut writer = BufWriter::new(temp);
        let cache = CacheFile {
            format: c::CACHE_FORMAT_VERSION,
            machines: &self.coordinator,
        };
        serde_json::to_writer(&mut writer, &cache).map_err(|err| write_error(err.into()))?;
        writer.write_all(b"\n").map_err(write_error)?;
        let temp = writer
            .into_inner()
            .map_err(|err| write_error(err.into_error()))?;
        temp.as_file().sync_all().map_err(write_error)?;
        temp.persist(path).map_err(|err| write_error(err.error))?;
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_error)
    }

    /// Reads a cache written by [`AuthorizedMachines::save`] and combines it with the static
    /// keys, as [`AuthorizedMachines::new`] does. [`AuthorizedError::Missing`] when there is
    /// no cache yet.
    pub fn load(
        path: &Path,
        static_keys: &[AuthorizedKey],
    ) -> Result<(AuthorizedMachines, Vec<String>), AuthorizedError> {
        let bytes = read_bounded(path, c::MAX_CACHE_FILE_BYTES)?;
        // The format is checked before the machines are, so that a future format reads as
        // "unsupported", not as "corrupt".
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let corrupt = |source| AuthorizedError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let FormatOnly { format } = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if format != c::CACHE_FORMAT_VERSION {
            return Err(AuthorizedError::UnsupportedFormat {
                path: path.to_owned(),
                found: format,
                expected: c::CACHE_FORMAT_VERSION,
            });
        }
        let cache: CacheFile<BTreeMap<String, StorageMachine>> =
            serde_json::from_slice(&bytes).map_err(corrupt)?;
        Ok(Self::new(cache.machines, static_keys))
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, AuthorizedError> {
    let read_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => AuthorizedError::Missing {
            path: path.to_owned(),
        },
        _ => AuthorizedError::Read {
            path: path.to_owned(),
            source,
        },
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(AuthorizedError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(bytes)
}

/// Reads and parses the operator's static file (bounded to
/// [`c::MAX_STATIC_FILE_BYTES`]); see [`parse_static_file`].
pub fn read_static_file(path: &Path) -> Result<(Vec<AuthorizedKey>, Vec<String>), AuthorizedError> {
    let bytes = read_bounded(path, c::MAX_STATIC_FILE_BYTES)?;
    Ok(parse_static_file(&String::from_utf8_lossy(&bytes)))
}

/// Parses an operator's static key file in the original's generated line format,
/// `[options] type base64 [comment]`, where the machine is the last word of the forced
/// command (`command="turku-storage-ping <machine-uuid>"`). Blank and `#` lines are
/// ignored. Lines that cannot name a machine are skipped with a warning (`line N: ...`):
/// no forced command (there is no shell to log in to), an option we cannot honour (such
/// as `from=`), a key that does not parse.
pub fn parse_static_file(text: &str) -> (Vec<AuthorizedKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut warnings = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        match parse_static_line(line, line_number) {
            Ok(Some(authorized)) => keys.push(authorized),
            Ok(None) => {}
            Err(reason) => warnings.push(format!("line {line_number}: {reason}: ignored")),
        }
    }
    (keys, warnings)
}

fn parse_static_line(line: &str, line_number: usize) -> Result<Option<AuthorizedKey>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if parse_public_key(line).is_ok() {
        return Err(
            "no command=\"... <machine-uuid>\" option names the machine (and there is no shell)"
                .to_owned(),
        );
    }
    let (options_text, key_text) = split_options(line)?;
    let mut command = None;
    for (name, value) in parse_options(options_text)? {
        let name = name.to_ascii_lowercase();
        if !c::SUPERSEDED_OPTIONS.contains(&name.as_str()) {
            return Err(format!(
                "option {name} is not supported by the daemon, which could not honour it"
            ));
        }
        if name == c::FORCED_COMMAND_OPTION {
            if command.is_some() {
                return Err("more than one command= option".to_owned());
            }
            command = Some(value.ok_or("command needs a quoted value")?);
        }
    }
    let command = command.ok_or("no command=\"... <machine-uuid>\" option names the machine")?;
    let uuid = command
        .split_whitespace()
        .next_back()
        .ok_or("the forced command is empty")?;
    if !is_sane_machine_uuid(uuid) {
        return Err(format!(
            "the forced command's last word {uuid:?} is not a machine uuid (1 to \
             {MAX_MACHINE_UUID_BYTES} hex digits and dashes)"
        ));
    }
    let key = parse_public_key(key_text).map_err(|reason| format!("bad key: {reason}"))?;
    Ok(Some(AuthorizedKey {
        machine: MachineEntry {
            uuid: uuid.to_owned(),
            unit_name: key.comment().as_str_lossy().to_owned(),
            environment_name: None,
            service_name: None,
            origin: Origin::StaticFile { line: line_number },
        },
        key,
    }))
}

/// Splits `options key...` at the first whitespace outside double quotes.
fn split_options(line: &str) -> Result<(&str, &str), String> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (at, ch) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && ch == '\\' {
            escaped = true;
        } else if ch == '"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && ch.is_whitespace() {
            return Ok((&line[..at], line[at..].trim_start()));
        }
    }
    if in_quotes {
        Err("unterminated quote in the options".to_owned())
    } else {
        Err("no key after the options".to_owned())
    }
}

/// `name[="value"]` options separated by commas, as OpenSSH's authorized_keys: only `\"`
/// is an escape inside a value.
fn parse_options(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut options = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&ch) = chars.peek() {
            if ch == '=' || ch == ',' {
                break;
            }
            name.push(ch);
            chars.next();
        }
        if name.is_empty() {
            return Err("an empty option".to_owned());
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.next() != Some('"') {
                return Err(format!("option {name}= needs a double-quoted value"));
            }
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("option {name}= has an unterminated quote")),
                    Some('"') => break,
                    Some('\\') if chars.peek() == Some(&'"') => {
                        chars.next();
                        text.push('"');
                    }
                    Some(ch) => text.push(ch),
                }
            }
            value = Some(text);
        }
        options.push((name, value));
        match chars.next() {
            None => return Ok(options),
            Some(',') => {}
            Some(ch) => return Err(format!("unexpected {ch:?} after an option")),
        }
    }
}

/// An OpenSSH public key line, `type base64 [comment]`, with any whitespace between the
/// fields (OpenSSH accepts tabs and runs of spaces; ssh-key's parser one space only).
fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    if text.contains(['\n', '\r']) {
        return Err("more than one line".to_owned());
    }
    let mut fields = text.trim().splitn(2, char::is_whitespace);
    let algorithm = fields.next().unwrap_or_default();
    let rest = fields.next().unwrap_or_default().trim_start();
    let mut fields = rest.splitn(2, char::is_whitespace);
    let base64 = fields.next().unwrap_or_default();
    let comment = fields.next().unwrap_or_default().trim();
    if algorithm.is_empty() || base64.is_empty() {
        return Err("not a key type and base64 data".to_owned());
    }
    let mut key =
        PublicKey::from_openssh(&format!("{algorithm} {base64}")).map_err(|err| err.to_string())?;
    key.set_comment(comment);
    Ok(key)
}

/// The rule the ping request applies to the forced command's uuid: a key naming a uuid the
/// ping would refuse is useless.
fn is_sane_machine_uuid(uuid: &str) -> bool {
    !uuid.is_empty()
        && uuid.len() <= MAX_MACHINE_UUID_BYTES
        && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAINXibJ93sdsA4lvw/v3hlItH7F7/JJyyNQdL4ps/WZiX turku@ed25519";
    const ED25519_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILzmnZqGCCMgs5/BKq6/5QVvglv/f1Ie4/RxaYj0ebLh second";
    const ED25519_C: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFx5c2Z83vVZYFXkxYSiEOfPf3ggldix7C8DXaYWu6Bk third";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABB\
        BMDUZr3ff1XLkVUqupp7k4XaGDHdYrB0WmY3Zxw4iRQ1NIFPKV8umEiSMczw9S5hKp+nWsE4ZbcSrhIXI9n5ltQ= \
        turku@ecdsa";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDnYKeQpA5yjXhtBunAtZtvAxJk0lH9pChqnim0Y\
        k5CUweCrEPhr1wzL+8WZycThEclq5STcmFfLSOCWrrtOQ/x9d7MlXC+Ass2Ftpq2C46U1ogx/BlNPWYCTsmtxMykRi+nw0N\
        K/zHz3RsI9CJbNF2w7V3oxDHegg5F1B9l55k+y8xaIUqPGRK79odHsnklafqXpPMx40QeAHBQ/A7bw7LhvSbSp5fl0ou7JOv\
        XU9Ts4AhgdAegw2h8rv3DBo3Rmrlgm5uI459F2o9kQ6CCSVfP0dfxFBW4ANiHbqNWGDS4ZZLjoSRlkM5RTOmAwvac7RplCnl\
        k8OG2c1oDG6BpQlr turku@rsa";

    const UUID_A: &str = "11111111-1111-4111-8111-111111111111";
    const UUID_B: &str = "22222222-2222-4222-8222-222222222222";
    const UUID_C: &str = "33333333-3333-4333-8333-333333333333";

    fn machine(unit: &str, key: &str) -> StorageMachine {
        StorageMachine {
            environment_name: Some("prod".to_owned()),
            service_name: Some("web".to_owned()),
            unit_name: unit.to_owned(),
            comment: None,
            ssh_public_key: key.to_owned(),
        }
    }

    fn key(line: &str) -> PublicKey {
        parse_public_key(line).unwrap()
    }

    /// The key with another comment: lookups must not care.
    fn recommented(line: &str) -> PublicKey {
        let mut key = key(line);
        key.set_comment("someone@else");
        key
    }

    fn coordinator(machines: &[(&str, StorageMachine)]) -> BTreeMap<String, StorageMachine> {
        machines
            .iter()
            .map(|(uuid, machine)| (uuid.to_string(), machine.clone()))
            .collect()
    }

    #[test]
    fn coordinator_keys_of_every_type_name_their_machine() {
        let (registry, warnings) = AuthorizedMachines::from_response(
            StorageUpdateConfigResponse {
                machines: coordinator(&[
                    (UUID_A, machine("web1", ED25519)),
                    (UUID_B, machine("db1", ECDSA)),
                    (UUID_C, machine("old1", RSA)),
                ]),
            },
            &[],
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(registry.len(), 3);
        assert!(!registry.is_empty());
        for (line, uuid, unit) in [
            (ED25519, UUID_A, "web1"),
            (ECDSA, UUID_B, "db1"),
            (RSA, UUID_C, "old1"),
        ] {
            let entry = registry.lookup(&recommented(line)).unwrap();
            assert_eq!(entry.uuid, uuid);
            assert_eq!(entry.unit_name, unit);
            assert_eq!(entry.environment_name.as_deref(), Some("prod"));
            assert_eq!(entry.service_name.as_deref(), Some("web"));
            assert_eq!(entry.origin, Origin::Coordinator);
        }
        assert!(registry.lookup(&key(ED25519_B)).is_none());
        assert!(AuthorizedMachines::default().is_empty());
    }

    #[test]
    fn bad_coordinator_rows_are_skipped_not_fatal() {
        let truncated = &ED25519[..40];
        let (registry, warnings) = AuthorizedMachines::new(
            coordinator(&[
                (UUID_A, machine("web1", ED25519)),
                (UUID_B, machine("broken", truncated)),
                (UUID_C, machine("empty", "")),
                ("not-a-uuid!", machine("odd", ED25519_B)),
                (
                    "44444444-4444-4444-8444-444444444444",
                    machine("two-lines", &format!("{ED25519_C}\n{ECDSA}")),
                ),
            ]),
            &[],
        );
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.lookup(&key(ED25519)).unwrap().uuid, UUID_A);
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        let all = warnings.join("\n");
        for named in ["broken", "empty", "not-a-uuid!", "two-lines"] {
            assert!(all.contains(named), "{all}");
        }
    }

    #[test]
    fn tabs_and_runs_of_spaces_separate_fields() {
        let spaced = ED25519.replacen(' ', "\t  ", 1);
        let parsed = key(&spaced);
        assert_eq!(parsed.key_data(), key(ED25519).key_data());
        assert_eq!(parsed.comment().as_str_lossy(), "turku@ed25519");
    }

    #[test]
    fn a_key_listed_for_two_machines_names_neither() {
        let (registry, warnings) = AuthorizedMachines::new(
            coordinator(&[
                (UUID_A, machine("web1", ED25519)),
                // The same key under another comment is the same key.
                (
                    UUID_B,
                    machine("web2", &ED25519.replace("turku@ed25519", "other")),
                ),
                (UUID_C, machine("db1", ECDSA)),
            ]),
            &[],
        );
        assert!(registry.lookup(&key(ED25519)).is_none());
        assert_eq!(registry.lookup(&key(ECDSA)).unwrap().uuid, UUID_C);
        assert_eq!(registry.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(UUID_A) && warnings[0].contains(UUID_B),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("SHA256:"), "{warnings:?}");

        // Across the coordinator and the static file, too.
        let (static_keys, _) = parse_static_file(&format!(
            "command=\"turku-storage-ping {UUID_B}\" {ECDSA}\n"
        ));
        let (registry, warnings) = AuthorizedMachines::new(
            coordinator(&[(UUID_C, machine("db1", ECDSA))]),
            &static_keys,
        );
        assert!(registry.is_empty());
        assert!(
            warnings[0].contains(&format!("{UUID_C} (coordinator)"))
                && warnings[0].contains(&format!("{UUID_B} (static file line 1)")),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_same_machine_twice_is_no_conflict() {
        let (static_keys, warnings) = parse_static_file(&format!(
            "command=\"turku-storage-ping {UUID_A}\" {ED25519}\n\
             command=\"turku-storage-ping {UUID_A}\" {ED25519_B}\n\
             command=\"turku-storage-ping {UUID_A}\" {ED25519_B}\n"
        ));
        assert!(warnings.is_empty(), "{warnings:?}");
        let (registry, warnings) = AuthorizedMachines::new(
            coordinator(&[(UUID_A, machine("web1", ED25519))]),
            &static_keys,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(registry.len(), 2);
        // The coordinator's entry, with its names, wins over the static line's.
        let entry = registry.lookup(&key(ED25519)).unwrap();
        assert_eq!(
            (entry.unit_name.as_str(), &entry.origin),
            ("web1", &Origin::Coordinator)
        );
        assert_eq!(
            registry.lookup(&key(ED25519_B)).unwrap().origin,
            Origin::StaticFile { line: 2 }
        );
    }

    #[test]
    fn static_file_in_the_originals_generated_format() {
        // What turku-storage-update-config wrote (spec §2.3), with a sudo prefix, a comment,
        // blank lines and lines we must not accept.
        let text = format!(
            "# Automatically generated, please do not edit\n\
             \n\
             no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,command=\"sudo /usr/local/bin/turku-storage-ping {UUID_A}\" {ED25519} (web1.example.com)\n\
             \t  command=\"turku-storage-ping {UUID_B}\",NO-PTY {RSA}\n\
             {ECDSA}\n\
             from=\"10.0.0.0/8\",command=\"turku-storage-ping {UUID_C}\" {ED25519_B}\n\
             no-pty {ED25519_C}\n\
             command=\"turku-storage-ping not/a/uuid\" {ED25519_C}\n\
             command=\"unterminated {ED25519_C}\n\
             command=\"turku-storage-ping {UUID_C}\" ssh-ed25519 AAAAnot-base64\n\
             command=\"a {UUID_A}\",command=\"b {UUID_B}\" {ED25519_C}\n\
             command=unquoted {ED25519_C}\n"
        );
        let (keys, warnings) = parse_static_file(&text);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0].machine.uuid, UUID_A);
        assert_eq!(
            keys[0].machine.unit_name,
            "turku@ed25519 (web1.example.com)"
        );
        assert_eq!(keys[0].machine.origin, Origin::StaticFile { line: 3 });
        assert_eq!(keys[0].key.key_data(), key(ED25519).key_data());
        assert_eq!(keys[1].machine.uuid, UUID_B);
        assert_eq!(keys[1].key.key_data(), key(RSA).key_data());

        let expect = [
            (5, "no command="),
            (6, "option from"),
            (7, "no command="),
            (8, "not a machine uuid"),
            (9, "unterminated quote"),
            (10, "bad key"),
            (11, "more than one command="),
            (12, "double-quoted"),
        ];
        assert_eq!(warnings.len(), expect.len(), "{warnings:#?}");
        for ((line, reason), warning) in expect.iter().zip(&warnings) {
            assert!(
                warning.starts_with(&format!("line {line}: ")) && warning.contains(reason),
                "line {line} should warn {reason:?}: {warning}"
            );
        }
    }

    #[test]
    fn escaped_quotes_in_a_command_are_honoured() {
        let (keys, warnings) = parse_static_file(&format!(
            "command=\"echo \\\"a, b\\\" {UUID_A}\",no-pty {ED25519}\n"
        ));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(keys[0].machine.uuid, UUID_A);
    }

    #[test]
    fn save_and_load_round_trip_with_the_static_file_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var").join(c::CACHE_FILE);
        let (static_keys, _) = parse_static_file(&format!(
            "command=\"turku-storage-ping {UUID_C}\" {ED25519_C}\n"
        ));
        let (registry, _) = AuthorizedMachines::new(
            coordinator(&[
                (UUID_A, machine("web1", ED25519)),
                (UUID_B, machine("db1", RSA)),
                (UUID_C, machine("broken", "garbage")),
            ]),
            &static_keys,
        );
        registry.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Saving again replaces the file and leaves no temporary behind.
        registry.save(&path).unwrap();
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [c::CACHE_FILE]);

        // Loaded with no static keys: only the coordinator's, and the same warnings again.
        let (loaded, warnings) = AuthorizedMachines::load(&path, &[]).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.lookup(&key(RSA)).unwrap().unit_name, "db1");
        assert!(loaded.lookup(&key(ED25519_C)).is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(loaded.coordinator, registry.coordinator);

        let (loaded, _) = AuthorizedMachines::load(&path, &static_keys).unwrap();
        assert_eq!(loaded.len(), 3);
        let (without_static, _) = loaded.with_static_keys(&[]);
        assert_eq!(without_static.len(), 2);
    }

    #[test]
    fn cache_problems_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(c::CACHE_FILE);
        assert!(matches!(
            AuthorizedMachines::load(&path, &[]),
            Err(AuthorizedError::Missing { .. })
        ));

        for corrupt in [
            &b"{\"format\": 1, \"machines\": {\"x\": {\"unit_name\": 5}}}"[..],
            b"{\"format\": 1, \"machi",
            b"",
            b"[1, 2]",
        ] {
            fs::write(&path, corrupt).unwrap();
            let err = AuthorizedMachines::load(&path, &[]).unwrap_err();
            assert!(matches!(err, AuthorizedError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("corrupt"), "{err}");
        }

        fs::write(&path, b"{\"format\": 2, \"machines\": []}").unwrap();
        assert!(matches!(
            AuthorizedMachines::load(&path, &[]),
            Err(AuthorizedError::UnsupportedFormat { found: 2, .. })
        ));

        // Bounded: a file over the cap is refused without being parsed.
        let file = File::create(&path).unwrap();
        file.set_len(c::MAX_CACHE_FILE_BYTES + 1).unwrap();
        assert!(matches!(
            AuthorizedMachines::load(&path, &[]),
            Err(AuthorizedError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_static_file_is_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("static");
        fs::write(
            &path,
            format!("command=\"turku-storage-ping {UUID_A}\" {ED25519}\n"),
        )
        .unwrap();
        let (keys, warnings) = read_static_file(&path).unwrap();
        assert_eq!((keys.len(), warnings.len()), (1, 0));
        File::create(&path)
            .unwrap()
            .set_len(c::MAX_STATIC_FILE_BYTES + 1)
            .unwrap();
        assert!(matches!(
            read_static_file(&path),
            Err(AuthorizedError::TooLarge { .. })
        ));
    }
}

//! `update-config --openssh`: the original turku-storage-update-config for operators who keep
//! OpenSSH in front of the forced command (`turku-storage ping UUID`).
//!
//! It publishes OpenSSH's host keys (`ssh_ping_host_keys`, else the files matching
//! `ssh_ping_host_keys_glob`) and rewrites the ping user's `authorized_keys` as the original
//! does (spec `turku.md` §2.3): a header, the operator's `<file>.static` verbatim, then one
//! forced-command line per machine the coordinator assigns here. Every key from the
//! coordinator is parsed and written back in its canonical form, and names become a
//! comment with control characters removed, so no registration can add options or lines.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use russh::keys::PublicKey;
use turku_api_types::v1::StorageMachine;

use crate::config::StorageConfig;
use crate::constants::openssh as c;
use crate::coordinator::CoordinatorLink;
use crate::registration::{registration_request, RegistrationAuth};

#[derive(Debug, thiserror::Error)]
pub enum OpensshError {
    #[error("the coordinator: {0}")]
    Coordinator(#[from] turku_api_types::client::ApiError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("user {0} is not in /etc/passwd: set authorized_keys_file and authorized_keys_user")]
    NoSuchUser(String),
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> OpensshError + '_ {
    move |source| OpensshError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<String, OpensshError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    if text.len() as u64 > max {
        return Err(OpensshError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(text)
}

/// The contents of the files matching `pattern` (`*` wildcards in its last component),
/// right-stripped, in name order: the original's `glob` of OpenSSH's public host keys.
pub fn host_keys_from_glob(pattern: &str) -> Vec<String> {
    let path = Path::new(pattern);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut matches: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| wildcard_match(name, n))
        })
        .map(|e| e.path())
        .collect();
    matches.sort();
    matches
        .iter()
        .filter_map(|p| read_bounded(p, c::MAX_HOST_KEY_FILE_BYTES).ok())
        .map(|text| text.trim_end().to_owned())
        .filter(|text| !text.is_empty())
        .collect()
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return name.is_empty(),
    };
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// A name as it may appear in a key comment: printable, on one line.
fn comment_safe(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// The generated file, exactly in the original's layout.
pub fn authorized_keys_text(
    file: &Path,
    static_part: Option<&str>,
    machines: &BTreeMap<String, StorageMachine>,
    command: &str,
) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let mut text = format!(
        "# Automatically generated, please do not edit\n# Local additions may be placed in {}.static\n",
        file.display()
    );
    if let Some(extra) = static_part {
        text.push_str(extra);
        if !extra.is_empty() && !extra.ends_with('\n') {
            text.push('\n');
        }
    }
    for (uuid, machine) in machines {
        if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            warnings.push(format!("machine {uuid:?}: not a uuid, left out"));
            continue;
        }
        let key = match PublicKey::from_openssh(machine.ssh_public_key.trim()) {
            Ok(key) if !machine.ssh_public_key.trim().contains('\n') => key,
            _ => {
                warnings.push(format!("machine {uuid}: its key does not parse, left out"));
                continue;
            }
        };
        let Ok(canonical) = key.to_openssh() else {
            warnings.push(format!(
                "machine {uuid}: its key cannot be written, left out"
            ));
            continue;
        };
        // The comment goes into our own `(unit)` note, never the key's.
        let bare: String = canonical.split(' ').take(2).collect::<Vec<_>>().join(" ");
        text.push_str(&format!(
            "no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,command=\"{} {uuid}\" {bare} ({})\n",
            comment_safe(command).replace('"', ""),
            comment_safe(&machine.unit_name)
        ));
    }
    (text, warnings)
}

/// `(home, uid, gid)` of `user` from `/etc/passwd`.
fn passwd_entry(user: &str) -> Option<(PathBuf, u32, u32)> {
    let text = read_bounded(Path::new(c::PASSWD_FILE), c::MAX_PASSWD_BYTES).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0] != user {
            return None;
        }
        Some((
            PathBuf::from(fields[5]),
            fields[2].parse().ok()?,
            fields[3].parse().ok()?,
        ))
    })
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so
/// sshd never reads half a file; owned by `owner` when given.
fn replace_file(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<(), OpensshError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(io_error(dir))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io_error(dir))?;
        }
    }
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(
            "{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("authorized_keys")
        ))
        .suffix("~")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    temp.write_all(text.as_bytes()).map_err(io_error(path))?;
    temp.as_file().sync_all().map_err(io_error(path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(temp.path(), Some(uid), Some(gid)).map_err(io_error(path))?;
    }
    temp.persist(path).map_err(|e| OpensshError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Registers (publishing OpenSSH's host keys) and rewrites the authorized_keys file;
/// returns how many machines it authorizes and the file.
pub fn update_config(
    config: &StorageConfig,
    link: &CoordinatorLink,
    auth: Option<&RegistrationAuth>,
) -> Result<(usize, PathBuf), OpensshError> {
    let host_keys = match &config.ssh_ping_host_keys {
        Some(keys) => keys.clone(),
        None => host_keys_from_glob(&config.ssh_ping_host_keys_glob),
    };
    let (request, warnings) = registration_request(config, &host_keys, auth);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let reply = link.update_config(&request)?;
    let user = &config.authorized_keys_user;
    let entry = passwd_entry(user);
    let file = match &config.authorized_keys_file {
        Some(file) => file.clone(),
        None => {
            let (home, _, _) = entry
                .clone()
                .ok_or_else(|| OpensshError::NoSuchUser(config.ssh_ping_user.clone()))?;
            home.join(".ssh").join("authorized_keys")
        }
    };
    let static_path = PathBuf::from(format!("{}.static", file.display()));
    let static_part = match read_bounded(&static_path, c::MAX_STATIC_BYTES) {
        Ok(text) => Some(text),
        Err(OpensshError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(e) => return Err(e),
    };
    let (text, warnings) = authorized_keys_text(
        &file,
        static_part.as_deref(),
        &reply.machines,
        &config.authorized_keys_command,
    );
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let owner = entry.map(|(_, uid, gid)| (uid, gid));
    replace_file(&file, &text, owner)?;
    Ok((reply.machines.len() - warnings.len(), file))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxUdRe0FRz8SELy3nByH8ZR7jc0rjXoUTbL0hGsrwYx turku";

    fn machine(key: &str, unit: &str) -> StorageMachine {
        StorageMachine {
            environment_name: None,
            service_name: None,
            unit_name: unit.into(),
            comment: None,
            ssh_public_key: key.into(),
        }
    }

    #[test]
    fn the_file_has_the_originals_layout_and_no_registration_adds_lines() {
        let machines = BTreeMap::from([
            (
                "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11".to_owned(),
                machine(KEY, "web-0"),
            ),
            (
                "1f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11".to_owned(),
                machine(&format!("{KEY}\nssh-ed25519 AAAA evil"), "x"),
            ),
            (
                "2f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11".to_owned(),
                machine(KEY, "unit\ncommand=\"sh\" ssh-ed25519 AAAA"),
            ),
            ("not a uuid".to_owned(), machine(KEY, "y")),
        ]);
        let (text, warnings) = authorized_keys_text(
            Path::new("/home/turku-ping/.ssh/authorized_keys"),
            Some("ssh-rsa AAAAstatic operator"),
            &machines,
            "turku-storage ping",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# Automatically generated, please do not edit");
        assert_eq!(
            lines[1],
            "# Local additions may be placed in /home/turku-ping/.ssh/authorized_keys.static"
        );
        assert_eq!(lines[2], "ssh-rsa AAAAstatic operator");
        assert_eq!(
            lines[3],
            "no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,command=\"turku-storage ping \
             0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11\" ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAIHxUdRe0FRz8SELy3nByH8ZR7jc0rjXoUTbL0hGsrwYx (web-0)"
        );
        assert!(
            lines[4].ends_with("(unitcommand=\"sh\" ssh-ed25519 AAAA)"),
            "{}",
            lines[4]
        );
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn host_key_globs_match_as_the_shell_does() {
        assert!(wildcard_match(
            "ssh_host_*_key.pub",
            "ssh_host_ed25519_key.pub"
        ));
        assert!(!wildcard_match(
            "ssh_host_*_key.pub",
            "ssh_host_ed25519_key"
        ));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b*c", "aXcYb"));
        assert!(wildcard_match("exact", "exact"));
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ssh_host_rsa_key.pub"), "ssh-rsa AAAA r\n").unwrap();
        fs::write(
            dir.path().join("ssh_host_ed25519_key.pub"),
            "ssh-ed25519 AAAA e\n",
        )
        .unwrap();
        fs::write(dir.path().join("ssh_host_ed25519_key"), "PRIVATE").unwrap();
        let pattern = format!("{}/ssh_host_*_key.pub", dir.path().display());
        assert_eq!(
            host_keys_from_glob(&pattern),
            ["ssh-ed25519 AAAA e", "ssh-rsa AAAA r"]
        );
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ssh/authorized_keys");
        replace_file(&file, "one\n", None).unwrap();
        replace_file(&file, "two\n", None).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "two\n");
        let leftovers: Vec<_> = fs::read_dir(file.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}

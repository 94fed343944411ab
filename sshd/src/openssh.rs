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
use std::os::fd::OwnedFd;
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
    #[error("user {0} is unknown or has no absolute home: set authorized_keys_file")]
    NoSuchUser(String),
    #[error("{}: refused: {why}", path.display())]
    Unsafe { path: PathBuf, why: &'static str },
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

/// `(home, uid, gid)` of `user`, through the system's user database (files, LDAP, ...).
fn user_entry(user: &str) -> Option<(PathBuf, u32, u32)> {
    let entry = nix::unistd::User::from_name(user).ok()??;
    Some((entry.dir, entry.uid.as_raw(), entry.gid.as_raw()))
}

/// The directory the file lives in, opened without following a symlink and checked: a
/// directory owned by root or by the file's owner. The ping user owns `~/.ssh`, and we run
/// as root: every later step goes through this handle, never through the path again, so
/// the user cannot swap in a link to somewhere root may write.
fn open_key_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<OwnedFd, OpensshError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let opened = match rustix::fs::open(dir, flags, Mode::empty()) {
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)).map_err(errno(dir))?;
            let fd = rustix::fs::open(dir, flags, Mode::empty()).map_err(errno(dir))?;
            if let Some((uid, gid)) = owner {
                rustix::fs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid)))
                    .map_err(errno(dir))?;
            }
            fd
        }
        other => other.map_err(errno(dir))?,
    };
    let stat = rustix::fs::fstat(&opened).map_err(errno(dir))?;
    let owned_right = stat.st_uid == 0 || owner.is_some_and(|(uid, _)| stat.st_uid == uid);
    if !owned_right {
        return Err(OpensshError::Unsafe {
            path: dir.to_path_buf(),
            why: "owned by neither root nor the ping user",
        });
    }
    Ok(opened)
}

fn uid_of(raw: u32) -> rustix::process::Uid {
    rustix::process::Uid::from_raw(raw)
}

fn gid_of(raw: u32) -> rustix::process::Gid {
    rustix::process::Gid::from_raw(raw)
}

fn errno(path: &Path) -> impl Fn(rustix::io::Errno) -> OpensshError + '_ {
    move |e| OpensshError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The operator's `<file>.static`, read through the directory handle: a regular file only
/// (not a link to a secret root can read, not a FIFO that would block), bounded.
fn read_static(dir: &OwnedFd, name: &str, shown: &Path) -> Result<Option<String>, OpensshError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(OpensshError::Unsafe {
                path: shown.to_path_buf(),
                why: "a symbolic link",
            })
        }
        other => other.map_err(errno(shown))?,
    };
    let stat = rustix::fs::fstat(&fd).map_err(errno(shown))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(OpensshError::Unsafe {
            path: shown.to_path_buf(),
            why: "not a regular file",
        });
    }
    let file = fs::File::from(fd);
    let mut text = String::new();
    file.take(c::MAX_STATIC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error(shown))?;
    if text.len() as u64 > c::MAX_STATIC_BYTES {
        return Err(OpensshError::TooLarge {
            path: shown.to_path_buf(),
            max: c::MAX_STATIC_BYTES,
        });
    }
    Ok(Some(text))
}

/// Writes `text` as `name` in `dir` through a new temporary file and a rename, so sshd never
/// reads half a file; mode 0644 (sshd reads it as the user), owned by `owner` when given.
fn replace_file(
    dir: &OwnedFd,
    name: &str,
    text: &str,
    owner: Option<(u32, u32)>,
    shown: &Path,
) -> Result<(), OpensshError> {
    use rustix::fs::{Mode, OFlags};
    let temp_name = format!("{name}.tmp{}~", std::process::id());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let _ = rustix::fs::unlinkat(dir, temp_name.as_str(), rustix::fs::AtFlags::empty());
    let fd = rustix::fs::openat(dir, temp_name.as_str(), flags, Mode::from_raw_mode(0o644))
        .map_err(errno(shown))?;
    let written = (|| {
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid))).map_err(errno(shown))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644)).map_err(errno(shown))?;
        let mut file = fs::File::from(fd);
        file.write_all(text.as_bytes()).map_err(io_error(shown))?;
        file.sync_all().map_err(io_error(shown))?;
        rustix::fs::renameat(dir, temp_name.as_str(), dir, name).map_err(errno(shown))?;
        rustix::fs::fsync(dir).map_err(errno(shown))
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, temp_name.as_str(), rustix::fs::AtFlags::empty());
    }
    written
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
    // As the original: the file under the ping user's home, owned by authorized_keys_user.
    let file = match &config.authorized_keys_file {
        Some(file) => file.clone(),
        None => {
            let (home, _, _) = user_entry(&config.ssh_ping_user)
                .filter(|(home, _, _)| home.is_absolute())
                .ok_or_else(|| OpensshError::NoSuchUser(config.ssh_ping_user.clone()))?;
            home.join(".ssh").join("authorized_keys")
        }
    };
    let owner = user_entry(&config.authorized_keys_user).map(|(_, uid, gid)| (uid, gid));
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else {
        return Err(OpensshError::Unsafe {
            path: file.clone(),
            why: "not a file name in a directory",
        });
    };
    let dir_fd = open_key_dir(dir, owner)?;
    let static_name = format!("{name}.static");
    let static_part = read_static(&dir_fd, &static_name, &dir.join(&static_name))?;
    let (text, warnings) = authorized_keys_text(
        &file,
        static_part.as_deref(),
        &reply.machines,
        &config.authorized_keys_command,
    );
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    replace_file(&dir_fd, name, &text, owner, &file)?;
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
    fn the_file_is_replaced_whole_through_the_directory_handle() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("ssh");
        let fd = open_key_dir(&keys, None).unwrap();
        let file = keys.join("authorized_keys");
        replace_file(&fd, "authorized_keys", "one\n", None, &file).unwrap();
        replace_file(&fd, "authorized_keys", "two\n", None, &file).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "two\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            fs::read_dir(&keys).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    /// The ping user owns `~/.ssh`: a link there must not make root read or write through it.
    #[test]
    fn links_planted_by_the_ping_user_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "root-only").unwrap();
        let keys = dir.path().join("ssh");
        fs::create_dir(&keys).unwrap();
        std::os::unix::fs::symlink(&secret, keys.join("authorized_keys.static")).unwrap();
        let fd = open_key_dir(&keys, None).unwrap();
        let shown = keys.join("authorized_keys.static");
        let e = read_static(&fd, "authorized_keys.static", &shown).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A FIFO would block a plain open for ever.
        let fifo = keys.join("fifo.static");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_static(&fd, "fifo.static", &fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // The directory itself as a link to somewhere else.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let linked = dir.path().join("linked-ssh");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(open_key_dir(&linked, None).is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}

//! The daemon's SSH host keys: generated on first start, kept forever after.
//!
//! Agents pin the published public key in their `known_hosts`, so a key must never change
//! behind their back: it is written once, in OpenSSH's format and file names (an operator
//! can inspect it with `ssh-keygen -l -f`), and every later start loads what is on disk. Two
//! processes starting at once on an empty directory each write a complete key to a temporary
//! file and link it into place without replacing: the first wins, the other drops its own
//! and loads the winner's.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{self, HashAlg, LineEnding};
use russh::keys::{Algorithm, PrivateKey};

use crate::config::HostFacts;
use crate::constants::hostkeys as c;

/// Why the host keys cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot create the host key directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read host key {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write host key {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "host key {} is accessible by group or others (mode {mode:04o}): refused, as OpenSSH \
         refuses it; run chmod 600 on it",
        path.display()
    )]
    Unprotected { path: PathBuf, mode: u32 },
    #[error("host key {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("host key {} is larger than {max} bytes: not a key", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("host key {} is not an OpenSSH private key: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error("host key {} is protected by a passphrase: the daemon cannot unlock it", path.display())]
    Encrypted { path: PathBuf },
    #[error("host key {} holds a {found} key, expected {expected}", path.display())]
    WrongAlgorithm {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("cannot read random bytes from the kernel: {0}")]
    Entropy(io::Error),
    #[error("cannot encode a new host key: {0}")]
    Encode(ssh_key::Error),
}

/// The loaded host keys; at least the ed25519 one.
#[derive(Clone)]
pub struct HostKeys {
    keys: Vec<PrivateKey>,
}

impl fmt::Debug for HostKeys {
    /// Fingerprints only: the private halves stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|key| key.fingerprint(HashAlg::Sha256).to_string()),
            )
            .finish()
    }
}

impl HostKeys {
    /// Loads the host keys from `dir`, generating the ed25519 key first if there is none.
    /// `dir` is created (mode 0700) if missing; its parents with the default mode.
    pub fn load_or_generate(dir: &Path) -> Result<HostKeys, HostKeyError> {
        let comment = format!("{}{}", c::KEY_COMMENT_PREFIX, HostFacts::detect().hostname);
        Self::load_or_generate_with_comment(dir, &comment)
    }

    /// As [`HostKeys::load_or_generate`], with the comment a new key gets.
    pub fn load_or_generate_with_comment(
        dir: &Path,
        comment: &str,
    ) -> Result<HostKeys, HostKeyError> {
        create_key_dir(dir)?;
        let private_path = dir.join(c::ED25519_KEY_FILE);
        if !exists(&private_path)? {
            let key = generate_ed25519(comment)?;
            install_new_key(dir, &key)?;
        }
        // Whether ours or a concurrent starter's landed, what is on disk is the key.
        let key = read_private_key(&private_path, Algorithm::Ed25519)?;
        write_public_key(dir, &key)?;
        Ok(HostKeys { keys: vec![key] })
    }

    /// The private keys, for `russh::server::Config::keys`.
    pub fn keys(&self) -> Vec<PrivateKey> {
        self.keys.clone()
    }

    /// The public keys as OpenSSH lines (`ssh-ed25519 AAAA... turku-storage@host`): what is
    /// published to the coordinator and what agents pin in `known_hosts`.
    pub fn public_lines(&self) -> Vec<String> {
        self.keys.iter().filter_map(public_line).collect()
    }
}

fn public_line(key: &PrivateKey) -> Option<String> {
    // Encoding a public key only fails for a key type that cannot be encoded at all, which
    // read_private_key already refused.
    key.public_key().to_openssh().ok()
}

fn create_key_dir(dir: &Path) -> Result<(), HostKeyError> {
    let create_error = |source| HostKeyError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(create_error)?;
    }
    match DirBuilder::new().mode(c::DIR_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(create_error(err)),
    }
}

fn exists(path: &Path) -> Result<bool, HostKeyError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(HostKeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A new ed25519 key from a kernel seed: exactly what `PrivateKey::random` does for
/// ed25519 (32 random bytes expanded), without a random number generator crate.
fn generate_ed25519(comment: &str) -> Result<PrivateKey, HostKeyError> {
    let mut seed = [0u8; 32];
    let filled = fill_from_kernel(&mut seed);
    let keypair = Ed25519Keypair::from_seed(&seed);
    wipe(&mut seed);
    filled.map_err(HostKeyError::Entropy)?;
    let mut key = PrivateKey::from(keypair);
    key.set_comment(comment);
    Ok(key)
}

/// Clears a copy of secret bytes once used (`PrivateKey` clears its own on drop).
fn wipe(secret: &mut [u8]) {
    secret.fill(0);
    // Keeps the compiler from dropping the stores as dead.
    std::hint::black_box(secret);
}

/// getrandom(2) without flags: blocks until the kernel's generator is seeded, which only
/// matters this early in boot, and then never fails short of a broken kernel.
fn fill_from_kernel(mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::rand::getrandom(&mut *buf, rustix::rand::GetRandomFlags::empty()) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(filled) => buf = &mut buf[filled..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Writes `key` to a temporary file in `dir` and links it into place unless a key is
/// already there: a concurrent starter that got there first wins, and ours is dropped.
fn install_new_key(dir: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let path = dir.join(c::ED25519_KEY_FILE);
    let write_error = |source| HostKeyError::Write {
        path: path.clone(),
        source,
    };
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(HostKeyError::Encode)?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", c::ED25519_KEY_FILE))
        .permissions(fs::Permissions::from_mode(c::PRIVATE_KEY_MODE))
        .tempfile_in(dir)
        .map_err(write_error)?;
    temp.write_all(text.as_bytes()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    match temp.persist_noclobber(&path) {
        Ok(_) => {}
        Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => {
            tracing::debug!(
                path = %path.display(),
                "another process created the host key first; using its key"
            );
        }
        Err(err) => return Err(write_error(err.error)),
    }
    sync_dir(dir).map_err(write_error)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a private key as OpenSSH's sshd would accept it: a regular file, no group or other
/// access, unencrypted, of the expected algorithm.
fn read_private_key(path: &Path, expected: Algorithm) -> Result<PrivateKey, HostKeyError> {
    let read_error = |source| HostKeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(HostKeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & c::UNPROTECTED_MODE_BITS != 0 {
        return Err(HostKeyError::Unprotected {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Vec::new();
    let read = file.take(c::MAX_KEY_FILE_BYTES + 1).read_to_end(&mut text);
    let parsed = match read {
        Err(source) => Err(read_error(source)),
        Ok(_) if text.len() as u64 > c::MAX_KEY_FILE_BYTES => Err(HostKeyError::TooLarge {
            path: path.to_owned(),
            max: c::MAX_KEY_FILE_BYTES,
        }),
        // Decoding also checks that the stored public half matches the private one.
        Ok(_) => PrivateKey::from_openssh(&text).map_err(|source| HostKeyError::Corrupt {
            path: path.to_owned(),
            source,
        }),
    };
    wipe(&mut text);
    let key = parsed?;
    if key.is_encrypted() {
        return Err(HostKeyError::Encrypted {
            path: path.to_owned(),
        });
    }
    if key.algorithm() != expected {
        return Err(HostKeyError::WrongAlgorithm {
            path: path.to_owned(),
            found: key.algorithm().to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(key)
}

/// Keeps `<key>.pub` equal to the private key's public half, rewriting it (atomically) when
/// it is missing or differs: the private key is the truth.
fn write_public_key(dir: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let path = dir.join(format!("{}{}", c::ED25519_KEY_FILE, c::PUBLIC_KEY_SUFFIX));
    let write_error = |source| HostKeyError::Write {
        path: path.clone(),
        source,
    };
    let Some(line) = public_line(key) else {
        return Err(HostKeyError::Encode(ssh_key::Error::AlgorithmUnknown));
    };
    let wanted = format!("{line}\n");
    let current = File::open(&path).and_then(|file| {
        let mut text = Vec::new();
        file.take(c::MAX_KEY_FILE_BYTES).read_to_end(&mut text)?;
        Ok(text)
    });
    if matches!(&current, Ok(text) if text == wanted.as_bytes()) {
        return Ok(());
    }
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}{}.",
            c::ED25519_KEY_FILE,
            c::PUBLIC_KEY_SUFFIX
        ))
        .permissions(fs::Permissions::from_mode(c::PUBLIC_KEY_MODE))
        .tempfile_in(dir)
        .map_err(write_error)?;
    temp.write_all(wanted.as_bytes()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(&path).map_err(|err| write_error(err.error))?;
    sync_dir(dir).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn key_path(dir: &Path) -> PathBuf {
        dir.join(c::ED25519_KEY_FILE)
    }

    #[test]
    fn first_start_generates_and_later_starts_keep_the_key() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("var/host_keys");
        let first = HostKeys::load_or_generate_with_comment(&dir, "turku-storage@test").unwrap();
        let lines = first.public_lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("ssh-ed25519 AAAA"), "{lines:?}");
        assert!(lines[0].ends_with(" turku-storage@test"), "{lines:?}");
        assert_eq!(first.keys().len(), 1);

        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&key_path(&dir)), 0o600);
        let pub_path = dir.join("ssh_host_ed25519_key.pub");
        assert_eq!(mode(&pub_path), 0o644);
        assert_eq!(
            fs::read_to_string(&pub_path).unwrap(),
            format!("{}\n", lines[0])
        );

        // A later start, even with another host name, keeps the key and its comment.
        let again = HostKeys::load_or_generate_with_comment(&dir, "other@elsewhere").unwrap();
        assert_eq!(again.public_lines(), lines);
        assert_eq!(
            again.keys()[0].key_data(),
            first.keys()[0].key_data(),
            "same private key"
        );

        // A lost .pub comes back from the private key.
        fs::remove_file(&pub_path).unwrap();
        HostKeys::load_or_generate_with_comment(&dir, "x").unwrap();
        assert_eq!(
            fs::read_to_string(&pub_path).unwrap(),
            format!("{}\n", lines[0])
        );
    }

    #[test]
    fn the_key_file_is_what_openssh_reads() {
        let root = tempfile::tempdir().unwrap();
        let keys = HostKeys::load_or_generate_with_comment(root.path(), "c@h").unwrap();
        let output = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(key_path(root.path()))
            .output()
            .expect("ssh-keygen (openssh-client) is needed by the tests");
        assert!(output.status.success(), "{output:?}");
        let derived = String::from_utf8(output.stdout).unwrap();
        // ssh-keygen -y prints the key and its comment.
        assert_eq!(derived.trim_end(), keys.public_lines()[0]);
    }

    #[test]
    fn group_or_other_access_is_refused() {
        let root = tempfile::tempdir().unwrap();
        HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap();
        for mode in [0o640, 0o604, 0o660, 0o601] {
            fs::set_permissions(key_path(root.path()), fs::Permissions::from_mode(mode)).unwrap();
            let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
            assert!(
                matches!(err, HostKeyError::Unprotected { mode: found, .. } if found == mode),
                "{err:?}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(key_path(root.path()), fs::Permissions::from_mode(0o400)).unwrap();
        HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap();
    }

    #[test]
    fn a_corrupt_key_is_a_clear_error_and_is_not_replaced() {
        let root = tempfile::tempdir().unwrap();
        let path = key_path(root.path());
        let write = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        };
        write(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAgarbage\n-----END OPENSSH PRIVATE KEY-----\n");
        let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
        assert!(matches!(err, HostKeyError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().contains("not an OpenSSH private key"),
            "{err}"
        );
        // Never silently regenerated: agents pinned the old key.
        assert!(fs::read(&path).unwrap().starts_with(b"-----BEGIN OPENSSH"));

        write(b"");
        let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
        assert!(matches!(err, HostKeyError::Corrupt { .. }), "{err:?}");

        write(&vec![b'A'; (c::MAX_KEY_FILE_BYTES + 1) as usize]);
        let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
        assert!(matches!(err, HostKeyError::TooLarge { .. }), "{err:?}");

        // A valid key of another type under the ed25519 name.
        let ecdsa = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
            .arg(root.path().join("ecdsa"))
            .status()
            .unwrap();
        assert!(ecdsa.success());
        write(&fs::read(root.path().join("ecdsa")).unwrap());
        let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
        assert!(
            matches!(err, HostKeyError::WrongAlgorithm { .. }),
            "{err:?}"
        );

        // A passphrase-protected key.
        fs::remove_file(&path).unwrap();
        let encrypted = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "pass phrase", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(encrypted.success());
        let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
        assert!(matches!(err, HostKeyError::Encrypted { .. }), "{err:?}");
    }

    #[test]
    fn a_directory_in_place_of_the_key_is_refused() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(key_path(root.path())).unwrap();
        let err = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap_err();
        assert!(matches!(err, HostKeyError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn the_first_of_two_new_keys_wins() {
        // Two starters that both found no key, each installing its own: the first stays.
        let root = tempfile::tempdir().unwrap();
        let first = generate_ed25519("first").unwrap();
        let second = generate_ed25519("second").unwrap();
        assert_ne!(first.key_data(), second.key_data());
        install_new_key(root.path(), &first).unwrap();
        install_new_key(root.path(), &second).unwrap();
        let on_disk = read_private_key(&key_path(root.path()), Algorithm::Ed25519).unwrap();
        assert_eq!(on_disk.key_data(), first.key_data());
        // The loser's temporary file is gone.
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ssh_host_ed25519_key"], "{names:?}");
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        const STARTERS: usize = 8;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("host_keys");
        let barrier = Arc::new(Barrier::new(STARTERS));
        let threads: Vec<_> = (0..STARTERS)
            .map(|starter| {
                let dir = dir.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    HostKeys::load_or_generate_with_comment(&dir, &format!("starter{starter}"))
                        .unwrap()
                        .public_lines()
                })
            })
            .collect();
        let lines: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(lines.iter().all(|l| l == &lines[0]), "{lines:?}");
        let on_disk = HostKeys::load_or_generate_with_comment(&dir, "later").unwrap();
        assert_eq!(on_disk.public_lines(), lines[0]);
    }

    #[test]
    fn debug_shows_fingerprints_only() {
        let root = tempfile::tempdir().unwrap();
        let keys = HostKeys::load_or_generate_with_comment(root.path(), "c").unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.starts_with("[\"SHA256:"), "{shown}");
    }
}

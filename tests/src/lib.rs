//! Fixtures for tests: build trees holding every kind of entry and awkward metadata,
//! compare two trees by `lstat` and content, and locate the real peer binaries.
//! Test-only code: it panics with a clear message instead of returning errors.
#![allow(clippy::unwrap_used)]

pub mod openrsync;
pub mod system;
pub mod tmpfs;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Panics with an install hint if a needed binary is missing: tests never skip silently.
pub fn require_binary(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "`{name}` is required by this test: apt-get install -y rsync openssh-client"
    );
    PathBuf::from(path)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    let t = filetime::FileTime::from_unix_time(sec, nsec);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Writes a tree with every entry kind the store must keep exactly. Devices are made
/// only when running as root.
pub fn make_awkward_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let p = |rel: &[u8]| root.join(OsStr::from_bytes(rel));
    fs::write(p(b"empty"), b"").unwrap();
    fs::create_dir(p(b"empty-dir")).unwrap();
    fs::write(p(b"small.txt"), b"hello world\n").unwrap();
    fs::write(p(b"random.bin"), pseudo_random(1, 3 * 1024 * 1024 + 17)).unwrap();
    // Compressible and repetitive: exercises zstd and identical chunks within a file.
    fs::write(p(b"zeros.bin"), vec![0u8; 2 * 1024 * 1024]).unwrap();
    fs::create_dir_all(p(b"deep/a/b/c/d/e/f/g/h/i/j")).unwrap();
    fs::write(p(b"deep/a/b/c/d/e/f/g/h/i/j/leaf"), b"deep").unwrap();
    let long = vec![b'n'; 255];
    fs::write(p(&long), b"255-byte name").unwrap();
    fs::write(p(b"not-utf8-\xff\xfe"), b"raw bytes name").unwrap();
    fs::write(p(b"with space"), b"s").unwrap();
    fs::write(p(b"with\nnewline"), b"n").unwrap();
    fs::write(p(b"back\\slash"), b"b").unwrap();
    std::os::unix::fs::symlink("small.txt", p(b"rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p(b"abs-link")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", p(b"dangling-link")).unwrap();
    fs::write(p(b"hard-a"), b"linked content").unwrap();
    fs::hard_link(p(b"hard-a"), p(b"deep/hard-b")).unwrap();
    fs::hard_link(p(b"hard-a"), p(b"hard-c")).unwrap();
    nix::unistd::mkfifo(&p(b"fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(p(b"socket")).unwrap();
    fs::write(p(b"setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(p(b"setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p(b"setgid"), b"x").unwrap();
    fs::set_permissions(p(b"setgid"), fs::Permissions::from_mode(0o2711)).unwrap();
    fs::create_dir(p(b"sticky")).unwrap();
    fs::set_permissions(p(b"sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(p(b"private"), b"secret").unwrap();
    fs::set_permissions(p(b"private"), fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        use nix::sys::stat::{mknod, Mode, SFlag};
        mknod(
            &p(b"null-dev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        mknod(
            &p(b"block-dev"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(259, 70000),
        )
        .unwrap();
        std::os::unix::fs::lchown(p(b"small.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(p(b"rel-link"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(p(b"deep"), Some(4000000000), Some(3999999999)).unwrap();
    }
    set_mtime(&p(b"small.txt"), 1_700_000_000, 123_456_789);
    set_mtime(&p(b"empty"), -86_400 * 365 * 20 - 1, 999_999_999);
    set_mtime(&p(b"with space"), 4_102_444_800 + 12345, 1); // after 2038 (2100)
    set_mtime(&p(b"rel-link"), 1_234_567_890, 500);
    set_mtime(&p(b"deep/a/b"), -1, 0);
    set_mtime(&p(b"empty-dir"), 0, 0);
}

/// Moves the mtime of every entry of `root` (and `root` itself) made in the last minute a
/// minute back, keeping its nanoseconds. A stock rsync receiver compares times to the second
/// (its default `--modify-window` of 0): an entry it creates in the same second as the
/// source's mtime counts as already right and keeps its creation time, nanoseconds and
/// all. Trees made by a test and restored at once would hit that every time.
pub fn backdate_recent(root: &Path) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut paths = vec![root.to_path_buf()];
    let mut i = 0;
    while i < paths.len() {
        let path = paths[i].clone();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                paths.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    // Deepest first: setting a child's times leaves its folder's alone, but be plain about it.
    for path in paths.iter().rev() {
        let m = fs::symlink_metadata(path).unwrap();
        if (now - m.mtime()).abs() > 60 {
            continue;
        }
        set_mtime(path, m.mtime() - 60, m.mtime_nsec() as u32);
    }
}

/// One entry's observable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub rdev: u64,
    pub content: Option<[u8; 32]>,
    pub target: Option<Vec<u8>>,
    /// Index of the first path (in sorted order) sharing this inode, for hard links.
    pub link_leader: Option<Vec<u8>>,
}

/// Walks a tree with `lstat`; directory mtimes are compared too.
pub fn observe(root: &Path) -> BTreeMap<Vec<u8>, Observed> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let content = ft
                .is_file()
                .then(|| *blake3::hash(&fs::read(&path).unwrap()).as_bytes());
            let target = ft.is_symlink().then(|| {
                fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            let link_leader = (ft.is_file() && m.nlink() > 1).then(|| {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| r.clone())
                    .clone()
            });
            out.insert(
                r.clone(),
                Observed {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    size: if ft.is_file() || ft.is_symlink() {
                        m.size()
                    } else {
                        0
                    },
                    rdev: m.rdev(),
                    content,
                    target,
                    link_leader,
                },
            );
            if ft.is_dir() {
                stack.push((path, r));
            }
        }
    }
    out
}

/// Asserts two trees are identical by `lstat` and content; names the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = observe(expected);
    let b = observe(actual);
    for (path, want) in &a {
        let name = String::from_utf8_lossy(path);
        let got = b
            .get(path)
            .unwrap_or_else(|| panic!("{name} missing from {}", actual.display()));
        // Hard-link leaders depend on walk order; compare group membership instead.
        let mut w = want.clone();
        let mut g = got.clone();
        w.link_leader = w.link_leader.map(|l| {
            a.get(&l)
                .and_then(|o| o.content.map(|c| c.to_vec()))
                .unwrap_or(l)
        });
        g.link_leader = g.link_leader.map(|l| {
            b.get(&l)
                .and_then(|o| o.content.map(|c| c.to_vec()))
                .unwrap_or(l)
        });
        assert_eq!(&w, &g, "{name} differs");
    }
    for path in b.keys() {
        assert!(
            a.contains_key(path),
            "{} is extra in {}",
            String::from_utf8_lossy(path),
            actual.display()
        );
    }
    let groups = |o: &BTreeMap<Vec<u8>, Observed>| -> Vec<Vec<u8>> {
        o.iter()
            .filter(|(_, v)| v.link_leader.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert_eq!(groups(&a), groups(&b), "hard-link sets differ");
}

/// Runs stock rsync as the judge: a checksum dry run that must print nothing, with
/// `--delete` so an entry only `actual` has shows up as a `*deleting` line.
pub fn assert_rsync_sees_no_difference(expected: &Path, actual: &Path) {
    let rsync = require_binary("rsync");
    let mut src = expected.as_os_str().to_os_string();
    src.push("/");
    let mut dst = actual.as_os_str().to_os_string();
    dst.push("/");
    let out = Command::new(rsync)
        .args(["-ani", "--checksum", "-H", "--numeric-ids", "--delete"])
        .args(if is_root() { vec!["-D"] } else { vec![] })
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.trim().is_empty(),
        "rsync sees differences:\n{listing}"
    );
}

/// Bytes of the pack files below `store/packs` (their lengths), a witness of what a store
/// holds that does not go through the store's own accounting.
pub fn pack_files_bytes(store: &Path) -> u64 {
    files_under(&store.join("packs"))
        .iter()
        .map(|(_, m)| m.len())
        .sum()
}

/// Bytes the file system gives to the files below `dir` (allocated blocks, as `du`), so a
/// preallocated or partly written file counts for what it takes from the disk.
pub fn disk_usage(dir: &Path) -> u64 {
    files_under(dir).iter().map(|(_, m)| m.blocks() * 512).sum()
}

/// Every non-directory entry below `dir` with its `lstat`; none when `dir` is missing.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        // A store at work removes files as we walk (GC, a renamed temp pack): skip those.
        for entry in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                found.push((entry.path(), meta));
            }
        }
    }
    found
}

/// A file of `len` deterministic pseudo-random bytes.
pub fn random_file(path: &Path, seed: u64, len: usize) {
    fs::write(path, pseudo_random(seed, len)).unwrap();
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random(seed, len)
}

/// Ports a daemon is tried on before giving up (another may take a free port first).
const DAEMON_PORT_ATTEMPTS: u32 = 20;
/// Polls for a started daemon to listen, `DAEMON_START_POLL` apart.
const DAEMON_START_POLLS: u32 = 100;
const DAEMON_START_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The rsyncd secrets file for `auth` (`(user, password)`), owner-only as rsync demands.
fn write_secrets(secrets: &Path, auth: Option<(&str, &str)>) {
    if let Some((user, password)) = auth {
        fs::write(secrets, format!("{user}:{password}\n")).unwrap();
        fs::set_permissions(secrets, fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Starts a daemon (`spawn` given a port that was free a moment ago) until one listens on
/// 127.0.0.1: a daemon that exits meanwhile lost its port to someone else, so another is
/// tried. `None` when none started.
fn spawn_on_free_port(
    mut spawn: impl FnMut(u16) -> std::process::Child,
) -> Option<(u16, std::process::Child)> {
    for _ in 0..DAEMON_PORT_ATTEMPTS {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = spawn(port);
        for _ in 0..DAEMON_START_POLLS {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some((port, child));
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(DAEMON_START_POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A stock `rsync --daemon` on 127.0.0.1 with an ephemeral port, serving one read-only
/// module per `(name, path)`, with `auth users` when a password is given. Killed on drop.
pub struct RsyncDaemon {
    pub port: u16,
    child: std::process::Child,
    _dir: PathBuf,
}

impl std::fmt::Debug for RsyncDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsyncDaemon")
            .field("port", &self.port)
            .finish()
    }
}

impl RsyncDaemon {
    /// `conf_dir` holds the generated config and secrets; `auth` is `(user, password)`.
    pub fn start(
        conf_dir: &Path,
        modules: &[(&str, &Path)],
        auth: Option<(&str, &str)>,
    ) -> RsyncDaemon {
        Self::start_with(conf_dir, modules, auth, "")
    }

    /// A daemon with one writable module at `path`, as a restore's receiver: run as root it
    /// keeps owners (`uid = root`) and chroots, as the agent's restore daemon does, so
    /// symlinks land verbatim (rsync rewrites absolute and `../` targets without a chroot).
    pub fn start_writable(
        conf_dir: &Path,
        module: &str,
        path: &Path,
        auth: Option<(&str, &str)>,
    ) -> RsyncDaemon {
        let chroot = if is_root() {
            "use chroot = yes\n"
        } else {
            "use chroot = no\n"
        };
        Self::start_with(
            conf_dir,
            &[(module, path)],
            auth,
            &format!("read only = false\n{chroot}"),
        )
    }

    /// Like [`Self::start`], with `module_conf` (`rsyncd.conf` lines such as `timeout = 2`
    /// or `uid = nobody`) added to every module.
    pub fn start_with(
        conf_dir: &Path,
        modules: &[(&str, &Path)],
        auth: Option<(&str, &str)>,
        module_conf: &str,
    ) -> RsyncDaemon {
        let rsync = require_binary("rsync");
        fs::create_dir_all(conf_dir).unwrap();
        let secrets = conf_dir.join("secrets");
        let mut conf = String::from("use chroot = false\nnumeric ids = yes\n");
        if is_root() {
            conf.push_str("uid = root\ngid = root\n");
        }
        for (name, path) in modules {
            conf.push_str(&format!(
                "[{name}]\npath = {}\nread only = true\n{module_conf}",
                path.display()
            ));
            if !module_conf.ends_with('\n') && !module_conf.is_empty() {
                conf.push('\n');
            }
            if let Some((user, _)) = auth {
                conf.push_str(&format!(
                    "auth users = {user}\nsecrets file = {}\n",
                    secrets.display()
                ));
            }
        }
        write_secrets(&secrets, auth);
        let conf_path = conf_dir.join("rsyncd.conf");
        fs::write(&conf_path, conf).unwrap();
        let (port, child) = spawn_on_free_port(|port| {
            Command::new(&rsync)
                .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--config={}", conf_path.display()))
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .unwrap_or_else(|| panic!("rsync --daemon did not start"));
        RsyncDaemon {
            port,
            child,
            _dir: conf_dir.to_path_buf(),
        }
    }

    /// The daemon's pid (its transfer workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

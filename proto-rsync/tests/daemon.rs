//! Interop tests against a real stock `rsync --daemon` on 127.0.0.1 (ephemeral port,
//! generated rsyncd.conf in a tempdir). Each test pulls a tree through our client receiver
//! into a directory-backed sink and compares the result with the source: content, modes,
//! nanosecond mtimes, symlinks, hard links.
//!
//! These tests never skip: without rsync they fail and say how to install it.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::tree::{build_tree, pseudo_random, write_file};
use common::{is_root, StockDaemon};
use turku_proto_rsync::io::{pull, PullConfig};
use turku_proto_rsync::{
    Basis, EntryAction, Error, FileEntry, FileKind, HardLink, Outcome, ReceiveSink, SinkError,
};

// ------------------------------------------------------------------ the daemon

fn rsync_binary() -> PathBuf {
    for p in ["/usr/bin/rsync", "/usr/local/bin/rsync"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("stock rsync is required for the interop tests and was not found: run `apt-get install -y rsync`");
}

impl StockDaemon {
    /// Starts a daemon exporting `src` as `pub`, `auth` (alice / s3cret), `nobody` (runs as
    /// uid 65534), `strict` (refuses hard links) and `timed` (`timeout = 2`).
    fn start(src: &Path) -> StockDaemon {
        StockDaemon::start_with_args(src, &[])
    }

    fn start_with_args(src: &Path, args: &[String]) -> StockDaemon {
        let rsync = rsync_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("secrets");
        fs::write(&secrets, "alice:s3cret\n").expect("write secrets");
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).expect("chmod secrets");
        let root = is_root();
        let ids = if root { "uid = 0\ngid = 0\n" } else { "" };
        let conf = format!(
            "use chroot = no\nlog file = {log}\n{ids}motd file = {motd}\n\
             [pub]\npath = {src}\nread only = yes\n\
             [auth]\npath = {src}\nread only = yes\nauth users = alice\nsecrets file = {secrets}\n\
             [nobody]\npath = {src}\nread only = yes\nuid = 65534\ngid = 65534\n\
             [strict]\npath = {src}\nread only = yes\nrefuse options = hard-links\n\
             [timed]\npath = {src}\nread only = yes\ntimeout = 2\n",
            log = dir.path().join("rsyncd.log").display(),
            motd = dir.path().join("motd").display(),
            src = src.display(),
            secrets = secrets.display(),
        );
        fs::write(dir.path().join("motd"), "Welcome to the test daemon\n").expect("motd");
        StockDaemon::launch_with_args(&rsync, dir, &conf, args)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rsyncd.log")).unwrap_or_default()
    }

    async fn pull(&self, cfg: &PullConfig, sink: &mut DirSink) -> Result<Outcome, Error> {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let _dog = Watchdog::arm(Duration::from_secs(180));
        tokio::time::timeout(Duration::from_secs(120), pull(s, cfg, sink))
            .await
            .unwrap_or_else(|_| panic!("pull timed out; daemon log:\n{}", self.log()))
    }

    /// A pull that must succeed at `protocol` with exit code 0; the sink is finished.
    async fn pull_clean(&self, cfg: &PullConfig, sink: &mut DirSink, protocol: u32) -> Outcome {
        let o = self
            .pull(cfg, sink)
            .await
            .unwrap_or_else(|e| panic!("pull failed: {e}; log:\n{}", self.log()));
        sink.finish();
        assert_eq!(o.protocol, protocol);
        assert_eq!(o.exit_code, 0, "outcome: {o:?}");
        o
    }
}

/// Aborts the test process if a pull spins without yielding (a tokio timeout cannot fire
/// then), so a livelock fails loudly instead of hanging CI.
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn arm(limit: Duration) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !d.load(std::sync::atomic::Ordering::Relaxed) {
                if start.elapsed() > limit {
                    eprintln!("watchdog: pull did not finish within {limit:?}");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------ directory sink

struct FileBasis(fs::File, u64);

impl Basis for FileBasis {
    fn len(&self) -> u64 {
        self.1
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SinkError> {
        self.0.read_exact_at(buf, offset)?;
        Ok(())
    }
}

type Hook = Box<dyn FnMut(&FileEntry)>;

/// Materialises the pull in a directory, as a store-less stand-in for the real receiver.
struct DirSink {
    root: PathBuf,
    entries: HashMap<u32, FileEntry>,
    current: Option<(fs::File, PathBuf)>,
    followers: Vec<(u32, u32)>,
    dirs: Vec<FileEntry>,
    skipped: Vec<String>,
    hook: Option<Hook>,
    content_calls: u64,
    basis_calls: u32,
    /// Corrupt the basis returned by this (1-based) call.
    corrupt_basis_call: Option<u32>,
}

impl DirSink {
    fn new(root: &Path) -> Self {
        DirSink {
            root: root.to_owned(),
            entries: HashMap::new(),
            current: None,
            followers: Vec::new(),
            dirs: Vec::new(),
            skipped: Vec::new(),
            hook: None,
            content_calls: 0,
            basis_calls: 0,
            corrupt_basis_call: None,
        }
    }

    fn path(&self, e: &FileEntry) -> PathBuf {
        if e.name == b"." {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(&e.name))
        }
    }

    /// Links hard-link followers and applies directory metadata (after their contents).
    fn finish(&mut self) {
        for (f, l) in std::mem::take(&mut self.followers) {
            let (fe, le) = (&self.entries[&f], &self.entries[&l]);
            let (fp, lp) = (self.path(fe), self.path(le));
            let _ = fs::remove_file(&fp);
            fs::hard_link(&lp, &fp).expect("hard link");
        }
        for d in std::mem::take(&mut self.dirs).iter().rev() {
            let p = self.path(d);
            fs::set_permissions(&p, fs::Permissions::from_mode(d.mode & 0o7777)).expect("dir mode");
            set_mtime(&p, d);
        }
    }
}

fn mtime_of(e: &FileEntry) -> SystemTime {
    if e.mtime >= 0 {
        UNIX_EPOCH + Duration::new(e.mtime as u64, e.mtime_nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(e.mtime.unsigned_abs())
            + Duration::from_nanos(u64::from(e.mtime_nsec))
    }
}

fn set_mtime(p: &Path, e: &FileEntry) {
    let f = fs::File::open(p).expect("open for times");
    f.set_times(fs::FileTimes::new().set_modified(mtime_of(e)))
        .expect("set mtime");
}

impl ReceiveSink for DirSink {
    type Basis = FileBasis;

    fn entry(&mut self, ndx: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        if let Some(h) = self.hook.as_mut() {
            h(e);
        }
        self.entries.insert(ndx, e.clone());
        let p = self.path(e);
        match e.kind() {
            FileKind::Directory => {
                fs::create_dir_all(&p)?;
                self.dirs.push(e.clone());
            }
            FileKind::Symlink => {
                let _ = fs::remove_file(&p);
                std::os::unix::fs::symlink(
                    OsStr::from_bytes(e.symlink.as_deref().unwrap_or_default()),
                    &p,
                )?;
            }
            FileKind::Fifo => {
                let _ = fs::remove_file(&p);
                let st = Command::new("mkfifo").arg(&p).status()?;
                assert!(st.success());
                // No mtime: opening a FIFO to set it would block until a writer appears.
                fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o7777))?;
            }
            FileKind::Regular => {
                if let HardLink::Follower { first } = e.hard_link {
                    self.followers.push((ndx, first));
                    return Ok(EntryAction::Skip);
                }
                // Quick check: same size and mtime as what is there → request nothing.
                if let Ok(m) = fs::symlink_metadata(&p) {
                    if m.is_file()
                        && m.len() == e.size as u64
                        && m.mtime() == e.mtime
                        && m.mtime_nsec() == i64::from(e.mtime_nsec)
                    {
                        self.skipped.push(e.name_lossy());
                        return Ok(EntryAction::Skip);
                    }
                }
                return Ok(EntryAction::Transfer);
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Socket => {}
        }
        Ok(EntryAction::Skip)
    }

    fn basis(&mut self, _ndx: u32, e: &FileEntry) -> Result<Option<FileBasis>, SinkError> {
        self.basis_calls += 1;
        let mut p = self.path(e);
        if self.corrupt_basis_call == Some(self.basis_calls) {
            let mut bytes = fs::read(&p)?;
            for b in bytes.iter_mut().take(700) {
                *b ^= 0x5a;
            }
            p = self.root.join(".corrupt-basis");
            fs::write(&p, bytes)?;
        }
        match fs::File::open(&p) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some(FileBasis(f, len)))
            }
            Err(_) => Ok(None),
        }
    }

    fn begin_content(&mut self, _ndx: u32, e: &FileEntry) -> Result<(), SinkError> {
        // Beside the root, not the file: a 255-byte name has no room for a suffix.
        let tmp = self.root.join(format!(".turku-tmp-{}", e.name.len()));
        self.current = Some((fs::File::create(&tmp)?, tmp));
        Ok(())
    }

    fn content(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.content_calls += 1;
        let (f, _) = self.current.as_mut().ok_or("content outside a file")?;
        f.write_all(data)?;
        Ok(())
    }

    fn end_content(&mut self, _ndx: u32, e: &FileEntry, verified: bool) -> Result<(), SinkError> {
        let (f, tmp) = self.current.take().ok_or("end outside a file")?;
        drop(f);
        if !verified {
            fs::remove_file(&tmp)?;
            return Ok(());
        }
        let p = self.path(e);
        fs::rename(&tmp, &p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o7777))?;
        set_mtime(&p, e);
        Ok(())
    }
}

// ------------------------------------------------------------------ trees and comparison

#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: String,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<(Vec<u8>, Meta)>) {
    let p = root.join(rel);
    let m = fs::symlink_metadata(&p).expect("lstat");
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "special"
    };
    out.push((
        rel.as_os_str().as_bytes().to_vec(),
        Meta {
            kind: kind.into(),
            mode: m.mode(),
            size: if ft.is_dir() { 0 } else { m.len() },
            // Symlink mtimes are not set by our test sink.
            mtime: if ft.is_symlink() || kind == "special" {
                (0, 0)
            } else {
                (m.mtime(), m.mtime_nsec())
            },
            content: if ft.is_file() {
                Some(fs::read(&p).expect("read"))
            } else {
                None
            },
            link: if ft.is_symlink() {
                Some(
                    fs::read_link(&p)
                        .expect("readlink")
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                None
            },
        },
    ));
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&p)
            .expect("readdir")
            .map(|e| e.expect("dirent").file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out);
        }
    }
}

fn assert_same_tree(src: &Path, dst: &Path) {
    assert_same_tree_ns(src, dst, true);
}

/// `nsec`: compare nanoseconds too (protocol 31+ carries them, 30 does not).
fn assert_same_tree_ns(src: &Path, dst: &Path, nsec: bool) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(src, Path::new(""), &mut a);
    walk(dst, Path::new(""), &mut b);
    if !nsec {
        for (_, m) in a.iter_mut().chain(b.iter_mut()) {
            m.mtime.1 = 0;
        }
    }
    let names_a: Vec<_> = a
        .iter()
        .map(|x| String::from_utf8_lossy(&x.0).into_owned())
        .collect();
    let names_b: Vec<_> = b
        .iter()
        .map(|x| String::from_utf8_lossy(&x.0).into_owned())
        .collect();
    assert_eq!(names_a, names_b, "different entries");
    for ((n, ma), (_, mb)) in a.iter().zip(&b) {
        assert_eq!(ma, mb, "entry {:?} differs", String::from_utf8_lossy(n));
    }
}

fn config(module: &str, protocol: u32) -> PullConfig {
    let mut c = PullConfig::new(module);
    c.protocol = protocol;
    c
}

async fn full_pull(protocol: u32) {
    full_pull_with(protocol, true).await;
}

async fn full_pull_with(protocol: u32, negotiate: bool) {
    full_pull_opts(protocol, negotiate, true).await;
}

async fn full_pull_opts(protocol: u32, negotiate: bool, numeric_ids: bool) {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    build_tree(src.path());
    if protocol < 30 {
        // Below 30 mtimes are unsigned 32-bit seconds: a pre-1970 time cannot travel.
        fs::remove_file(src.path().join("old")).expect("rm old");
    }
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let mut cfg = config("pub", protocol);
    cfg.negotiate = negotiate;
    cfg.numeric_ids = numeric_ids;
    let o = d.pull_clean(&cfg, &mut sink, protocol).await;
    assert!(o.failed.is_empty());
    let want_sum = match (negotiate, protocol) {
        (_, p) if p < 30 => "md4",
        (true, _) => "xxh128",
        (false, _) => "md5",
    };
    assert_eq!(o.checksum, want_sum);
    assert_eq!(
        o.motd.first().map(String::as_str),
        Some("Welcome to the test daemon")
    );
    assert!(o.files_received >= 14, "{o:?}");
    assert_eq!(o.matched_bytes, 0);
    assert!(o.literal_bytes > 3_000_000);
    assert!(o.wire_bytes_read > o.literal_bytes);
    assert!(o.sender_stats.total_size > 3_000_000);
    assert_same_tree_ns(src.path(), dst.path(), protocol >= 31);
}

#[tokio::test]
async fn pull_full_tree_protocol_32() {
    full_pull(32).await;
}

#[tokio::test]
async fn pull_full_tree_protocol_31() {
    full_pull(31).await;
}

#[tokio::test]
async fn pull_full_tree_protocol_30() {
    full_pull(30).await;
}

/// Protocols 27–29 (macOS openrsync and rsync 2.6.x territory): fixed-width integers,
/// MD4 with the seed, unmultiplexed client output, newline-separated argv.
#[tokio::test]
async fn pull_full_tree_protocol_29() {
    full_pull(29).await;
}

#[tokio::test]
async fn pull_full_tree_protocol_28() {
    full_pull(28).await;
}

#[tokio::test]
async fn pull_full_tree_protocol_27() {
    full_pull(27).await;
}

/// A stock daemon forced to an older protocol (as openrsync's daemon is at 29): we announce
/// 32 and follow it down. Whole-second and 32-bit unsigned mtimes cannot carry everything
/// (a pre-1970 time arrives mangled): the bar is what stock's own client gets from the same
/// daemon, compared exactly, nanoseconds included.
async fn pull_from_daemon_forced_to(protocol: u32) {
    let src = tempfile::tempdir().expect("src");
    let ours = tempfile::tempdir().expect("dst");
    let stock = tempfile::tempdir().expect("dst");
    build_tree(src.path());
    // What the build left at "now" gets an older time: a stock receiver sets a time only
    // when the seconds differ, so an entry it creates within the same second would keep
    // its own nanoseconds.
    let st = std::process::Command::new("find")
        .arg(src.path())
        .args(["-newermt", "-1 hour", "-exec", "touch", "-h", "-d"])
        .args(["2010-01-01 00:00:00.123456789", "{}", "+"])
        .status()
        .expect("find");
    assert!(st.success());
    let d = StockDaemon::start_with_args(src.path(), &[format!("--protocol={protocol}")]);
    let mut sink = DirSink::new(ours.path());
    let cfg = config("pub", 32);
    let o = d.pull_clean(&cfg, &mut sink, protocol).await;
    assert_eq!(o.checksum, "md4");
    let mut args = vec!["-a", "--numeric-ids"];
    if cfg.hard_links {
        args.push("-H");
    }
    let out = std::process::Command::new(rsync_binary())
        .args(&args)
        .arg(format!("rsync://127.0.0.1:{}/pub/", d.port))
        .arg(format!("{}/", stock.path().display()))
        .output()
        .expect("run stock rsync");
    assert!(
        out.status.success(),
        "stock pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree_ns(stock.path(), ours.path(), true);
}

#[tokio::test]
async fn pull_from_daemon_forced_to_protocol_29() {
    pull_from_daemon_forced_to(29).await;
}

#[tokio::test]
async fn pull_from_daemon_forced_to_protocol_28() {
    pull_from_daemon_forced_to(28).await;
}

#[tokio::test]
async fn pull_from_daemon_forced_to_protocol_27() {
    pull_from_daemon_forced_to(27).await;
}

/// Without `v`: byte/short file-list flags and implicit md5 with the seed-first fix, the
/// path 3.0.x/3.1.x peers take.
#[tokio::test]
async fn pull_full_tree_without_negotiation_md5() {
    full_pull_with(31, false).await;
}

#[tokio::test]
async fn pull_full_tree_protocol_30_without_negotiation() {
    full_pull_with(30, false).await;
}

/// Without `--numeric-ids` the sender appends uid and gid name lists (with the id-0 names
/// of `CF_ID0_NAMES`) after the file list.
#[tokio::test]
async fn pull_full_tree_with_id_name_lists() {
    full_pull_opts(32, true, false).await;
    full_pull_opts(30, false, false).await;
}

#[tokio::test]
async fn checksum_mismatch_is_redone() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    let data = pseudo_random(100_000, 11);
    write_file(&src.path().join("f"), &data, 0o644, when);
    let d = StockDaemon::start(src.path());
    // Seed the destination with an older version so the first pass is a delta.
    let mut old = data.clone();
    old[50_000..50_100].fill(0);
    write_file(
        &dst.path().join("f"),
        &old,
        0o644,
        when - Duration::from_secs(10),
    );
    let mut sink = DirSink::new(dst.path());
    // The basis read during reconstruction differs from the one the signatures were made
    // from, so the first result fails its whole-file checksum and must be redone.
    sink.corrupt_basis_call = Some(2);
    let o = d
        .pull(&config("pub", 32), &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    sink.finish();
    assert_eq!(o.redone, 1, "{o:?}");
    assert_eq!(o.files_received, 1);
    assert_eq!(o.exit_code, 0);
    assert!(o.matched_bytes > 0);
    assert_eq!(fs::read(dst.path().join("f")).expect("read"), data);
}

/// Negative seeds are sign-extended into xxhash's 64-bit seed and hashed first by md5:
/// a wrong placement or extension would make every block miss.
#[tokio::test]
async fn delta_with_fixed_negative_seed_matches_blocks() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    let data = pseudo_random(500_000, 21);
    write_file(&src.path().join("f"), &data, 0o644, when);
    let d = StockDaemon::start(src.path());
    for (protocol, negotiate, sum) in [(32, true, "xxh128"), (32, false, "md5"), (29, false, "md4")]
    {
        let mut old = data.clone();
        old[1000..1100].fill(1);
        write_file(
            &dst.path().join("f"),
            &old,
            0o644,
            when - Duration::from_secs(5),
        );
        let mut sink = DirSink::new(dst.path());
        let mut cfg = config("pub", protocol);
        cfg.negotiate = negotiate;
        cfg.checksum_seed = Some(-123_456_789);
        let o = d
            .pull(&cfg, &mut sink)
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
        sink.finish();
        assert_eq!(o.checksum, sum);
        assert_eq!(o.checksum_seed, -123_456_789);
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.redone, 0);
        assert!(o.matched_bytes >= 500_000 - 2 * 708, "{sum}: {o:?}");
        assert_eq!(fs::read(dst.path().join("f")).expect("read"), data);
    }
}

#[tokio::test]
async fn second_pull_sends_only_the_delta() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let big = pseudo_random(4 << 20, 7);
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 5);
    write_file(&src.path().join("big"), &big, 0o644, when);
    write_file(&src.path().join("same"), b"unchanged", 0o644, when);
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let first = d
        .pull(&config("pub", 32), &mut sink)
        .await
        .expect("first pull");
    sink.finish();
    assert_eq!(first.files_requested, 2);
    // Rewrite 64 KiB in the middle.
    let mut changed = big.clone();
    let mid = changed.len() / 2;
    changed[mid..mid + 65536].copy_from_slice(&pseudo_random(65536, 99));
    write_file(
        &src.path().join("big"),
        &changed,
        0o644,
        when + Duration::from_secs(60),
    );
    let mut sink = DirSink::new(dst.path());
    let second = d
        .pull(&config("pub", 32), &mut sink)
        .await
        .expect("second pull");
    sink.finish();
    assert_eq!(
        second.files_requested, 1,
        "the unchanged file must be skipped"
    );
    assert_eq!(sink.skipped, ["same"]);
    assert_eq!(second.exit_code, 0);
    assert!(
        second.matched_bytes >= (4 << 20) - 2 * 65536 - 4096,
        "{second:?}"
    );
    assert!(second.literal_bytes < 65536 + 4 * 4096, "{second:?}");
    // Signatures plus the literal run: far below 5% of the file.
    assert!(
        second.wire_bytes_read + second.wire_bytes_written < (4 << 20) / 20,
        "{second:?}"
    );
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn hard_links_with_dash_h() {
    let src = tempfile::tempdir().expect("src");
    fs::create_dir(src.path().join("d")).expect("mkdir");
    write_file(
        &src.path().join("a"),
        &pseudo_random(10_000, 3),
        0o644,
        UNIX_EPOCH + Duration::new(1_600_000_000, 1),
    );
    fs::hard_link(src.path().join("a"), src.path().join("d/b")).expect("link");
    fs::hard_link(src.path().join("a"), src.path().join("z")).expect("link");
    write_file(
        &src.path().join("single"),
        b"x",
        0o644,
        UNIX_EPOCH + Duration::new(1_600_000_000, 1),
    );
    let d = StockDaemon::start(src.path());
    // 30+ send "index of the first member"; 28–29 send dev/ino for linked files only, 27
    // for every file.
    for protocol in [32, 30, 29, 28, 27] {
        let dst = tempfile::tempdir().expect("dst");
        let mut sink = DirSink::new(dst.path());
        let mut cfg = config("pub", protocol);
        cfg.hard_links = true;
        let o = d
            .pull(&cfg, &mut sink)
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}: {}", d.log()));
        sink.finish();
        assert_eq!(o.exit_code, 0);
        assert_eq!(
            o.files_requested, 2,
            "one leader and the single file at {protocol}: {o:?}"
        );
        let ino = |p: &str| fs::metadata(dst.path().join(p)).expect("stat").ino();
        assert_eq!(ino("a"), ino("d/b"));
        assert_eq!(ino("a"), ino("z"));
        assert_ne!(ino("a"), ino("single"));
        assert_eq!(fs::metadata(dst.path().join("a")).expect("stat").nlink(), 3);
        assert_same_tree_ns(src.path(), dst.path(), protocol >= 31);
    }
}

#[tokio::test]
async fn auth_success_with_sha512_digest() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    write_file(
        &src.path().join("f"),
        b"secret data",
        0o644,
        UNIX_EPOCH + Duration::new(1_600_000_000, 0),
    );
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let mut cfg = config("auth", 32);
    cfg.user = "alice".into();
    cfg.password = Some(b"s3cret".to_vec().into());
    let o = d
        .pull(&cfg, &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", d.log()));
    sink.finish();
    assert_eq!(o.exit_code, 0);
    assert_same_tree(src.path(), dst.path());
    // The same module at protocol 30 (md5-era peers still get the digest list from 3.5.0).
    let dst2 = tempfile::tempdir().expect("dst2");
    let mut sink = DirSink::new(dst2.path());
    cfg.protocol = 30;
    d.pull(&cfg, &mut sink).await.expect("pull at 30");
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let mut cfg = config("auth", 32);
    cfg.user = "alice".into();
    cfg.password = Some(b"wrong".to_vec().into());
    match d.pull(&cfg, &mut sink).await {
        Err(Error::Daemon(m)) => assert!(m.contains("auth failed on module auth"), "{m}"),
        other => panic!("expected an auth failure, got {other:?}"),
    }
    cfg.password = None;
    assert!(matches!(
        d.pull(&cfg, &mut sink).await,
        Err(Error::PasswordRequired)
    ));
}

#[tokio::test]
async fn unknown_module_is_refused() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    match d.pull(&config("nosuch", 32), &mut sink).await {
        Err(Error::Daemon(m)) => assert_eq!(m, "Unknown module 'nosuch'"),
        other => panic!("expected unknown module, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_option_arrives_multiplexed_after_ok() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let mut cfg = config("strict", 32);
    cfg.hard_links = true;
    match d.pull(&cfg, &mut sink).await {
        // The daemon reports the refusal multiplexed after the seed, then exits without
        // waiting for an acknowledgement.
        Err(Error::RemoteExit { message, .. }) | Err(Error::ClosedAfterError { message }) => {
            assert!(message.contains("refuse --hard-links"), "{message}");
        }
        other => panic!("expected a remote fatal error, got {other:?}"),
    }
}

#[tokio::test]
async fn filters_exclude_files() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    fs::create_dir(src.path().join("cache")).expect("mkdir");
    write_file(&src.path().join("keep.txt"), b"k", 0o644, when);
    write_file(&src.path().join("drop.tmp"), b"d", 0o644, when);
    write_file(&src.path().join("cache/x"), b"x", 0o644, when);
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let mut cfg = config("pub", 32);
    cfg.filter_rules = vec!["- *.tmp".into(), "- /cache/".into()];
    let o = d
        .pull(&cfg, &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    sink.finish();
    assert_eq!(o.exit_code, 0);
    assert!(dst.path().join("keep.txt").exists());
    assert!(!dst.path().join("drop.tmp").exists());
    assert!(!dst.path().join("cache").exists());
}

#[tokio::test]
async fn vanished_file_is_success_with_warning() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    write_file(&src.path().join("a-stays"), b"a", 0o644, when);
    write_file(&src.path().join("b-goes"), b"b", 0o644, when);
    write_file(&src.path().join("c-stays"), b"c", 0o644, when);
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    // Delete the file after the sender listed it and before it is requested.
    let victim = src.path().join("b-goes");
    sink.hook = Some(Box::new(move |e: &FileEntry| {
        if e.name == b"b-goes" {
            fs::remove_file(&victim).expect("remove victim");
        }
    }));
    let o = d.pull(&config("pub", 32), &mut sink).await.expect("pull");
    sink.finish();
    assert_eq!(o.exit_code, 24, "{o:?}");
    assert!(o.is_success());
    assert_eq!(o.failed, ["b-goes"]);
    assert!(
        o.warnings.iter().any(|w| w.contains("vanished")),
        "{:?}",
        o.warnings
    );
    assert!(dst.path().join("a-stays").exists() && dst.path().join("c-stays").exists());
    assert!(!dst.path().join("b-goes").exists());
}

#[tokio::test]
async fn unreadable_file_is_a_partial_transfer() {
    if !is_root() {
        panic!("this test needs root to run the daemon module as another uid");
    }
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    write_file(&src.path().join("ok"), b"fine", 0o644, when);
    write_file(&src.path().join("locked"), b"no", 0o600, when);
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let o = d
        .pull(&config("nobody", 32), &mut sink)
        .await
        .expect("pull");
    sink.finish();
    assert_eq!(o.exit_code, 23, "{o:?}");
    assert!(!o.is_success());
    assert_eq!(o.failed, ["locked"]);
    assert_eq!(fs::read(dst.path().join("ok")).expect("read"), b"fine");
}

#[tokio::test]
async fn many_small_files_do_not_deadlock() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    for d in 0..40 {
        let dir = src.path().join(format!("d{d:02}"));
        fs::create_dir(&dir).expect("mkdir");
        for f in 0..100 {
            write_file(
                &dir.join(format!("f{f:03}")),
                &pseudo_random(300 + f * 7, (d * 1000 + f) as u64),
                0o644,
                when,
            );
        }
    }
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let o = d.pull(&config("pub", 32), &mut sink).await.expect("pull");
    sink.finish();
    assert_eq!(o.files_received, 4000);
    assert_eq!(o.exit_code, 0);
    // A second pull with every basis present: 4000 delta requests pipelined at once.
    for d in 0..40 {
        let p = src.path().join(format!("d{d:02}/f000"));
        write_file(&p, b"changed", 0o644, when + Duration::from_secs(1));
    }
    let mut sink = DirSink::new(dst.path());
    let o = d
        .pull(&config("pub", 32), &mut sink)
        .await
        .expect("second pull");
    sink.finish();
    assert_eq!(o.files_requested, 40);
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn device_nodes_arrive_with_their_numbers() {
    if !is_root() {
        panic!("this test needs root to create device nodes");
    }
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    for (name, kind, major, minor) in [
        ("null", "c", "1", "3"),
        ("loopish", "b", "7", "200"),
        ("big", "c", "300", "70000"),
    ] {
        let st = Command::new("mknod")
            .arg(src.path().join(name))
            .arg(kind)
            .arg(major)
            .arg(minor)
            .status()
            .expect("mknod");
        assert!(st.success());
    }
    let d = StockDaemon::start(src.path());
    for protocol in [30, 31, 32] {
        let mut sink = DirSink::new(dst.path());
        let o = d
            .pull(&config("pub", protocol), &mut sink)
            .await
            .expect("pull");
        assert_eq!(o.exit_code, 0);
        let find = |n: &[u8]| {
            sink.entries
                .values()
                .find(|e| e.name == n)
                .cloned()
                .expect("entry")
        };
        let null = find(b"null");
        assert_eq!(null.kind(), FileKind::CharDevice);
        assert_eq!(null.rdev, Some((1, 3)));
        let lo = find(b"loopish");
        assert_eq!(lo.kind(), FileKind::BlockDevice);
        assert_eq!(lo.rdev, Some((7, 200)));
        assert_eq!(find(b"big").rdev, Some((300, 70000)));
        assert_eq!(o.files_requested, 0);
    }
}

/// Counts content without storing it: for the >4 GiB test.
#[derive(Default)]
struct CountingSink {
    bytes: u64,
    tail: Vec<u8>,
    verified: Vec<(String, u64, bool)>,
    /// Runs once when this many content bytes have arrived.
    trigger: Option<(u64, Box<dyn FnMut()>)>,
}

impl ReceiveSink for CountingSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, _: u32, _: &FileEntry) -> Result<EntryAction, SinkError> {
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, _: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(None)
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        self.bytes = 0;
        self.tail.clear();
        Ok(())
    }
    fn content(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.bytes += data.len() as u64;
        if let Some((at, f)) = self.trigger.as_mut() {
            if self.bytes >= *at {
                f();
                self.trigger = None;
            }
        }
        self.tail.extend_from_slice(data);
        let keep = self.tail.len().saturating_sub(16);
        self.tail.drain(..keep);
        Ok(())
    }
    fn end_content(&mut self, _: u32, e: &FileEntry, verified: bool) -> Result<(), SinkError> {
        self.verified.push((e.name_lossy(), self.bytes, verified));
        Ok(())
    }
}

/// A sparse file just over 4 GiB: 64-bit sizes and offsets end to end, streamed (the sink
/// never holds more than a read's worth), verified by the whole-file checksum.
#[tokio::test]
async fn file_over_4_gib_streams_and_verifies() {
    let src = tempfile::tempdir().expect("src");
    let len: u64 = (4 << 30) + 12345;
    let f = fs::File::create(src.path().join("huge")).expect("create");
    f.set_len(len).expect("sparse");
    f.write_all_at(b"THE-END-MARKER!!", len - 16)
        .expect("marker");
    drop(f);
    let d = StockDaemon::start(src.path());
    let s = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .expect("connect");
    let mut sink = CountingSink::default();
    let cfg = config("pub", 32);
    let t0 = std::time::Instant::now();
    let _dog = Watchdog::arm(Duration::from_secs(400));
    let o = tokio::time::timeout(Duration::from_secs(300), pull(s, &cfg, &mut sink))
        .await
        .expect("timed out")
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "pulled {len} bytes in {secs:.2} s ({:.0} MiB/s)",
        len as f64 / secs / 1048576.0
    );
    assert_eq!(o.exit_code, 0);
    assert_eq!(sink.verified, [("huge".to_string(), len, true)]);
    assert_eq!(sink.tail, b"THE-END-MARKER!!");
    assert_eq!(o.literal_bytes, len);
    assert!(o.wire_bytes_read > len);
}

/// Process ids of the children of `pid` (the daemon's per-connection workers).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// The daemon dies mid-transfer: the pull ends with a clean error, not a hang or a panic,
/// and the sink never sees the file as complete.
#[tokio::test]
async fn daemon_killed_mid_transfer_is_a_clean_error() {
    let src = tempfile::tempdir().expect("src");
    let f = fs::File::create(src.path().join("big")).expect("create");
    f.set_len(1 << 30).expect("sparse");
    drop(f);
    let mut d = StockDaemon::start(src.path());
    let daemon_pid = d.child.id();
    let s = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .expect("connect");
    let mut sink = CountingSink {
        trigger: Some((
            8 << 20,
            Box::new(move || {
                // Kill the worker serving us (a child we started, by its id).
                for pid in children_of(daemon_pid) {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
            }),
        )),
        ..CountingSink::default()
    };
    let _dog = Watchdog::arm(Duration::from_secs(120));
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        pull(s, &config("pub", 32), &mut sink),
    )
    .await
    .expect("must not hang");
    let _ = d.child.kill();
    match r {
        Err(Error::UnexpectedEof(_)) | Err(Error::Io(_)) => {}
        other => panic!("expected a connection error, got {other:?}"),
    }
    assert!(sink.verified.is_empty(), "no file may be reported complete");
    assert!(sink.bytes >= 8 << 20);
}

/// A path below the module: `mod/sub/` transfers the directory's contents.
#[tokio::test]
async fn pull_subdirectory_of_module() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    build_tree(src.path());
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    let mut cfg = config("pub", 32);
    cfg.path = "deep/a/".into();
    let o = d
        .pull(&cfg, &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    sink.finish();
    assert_eq!(o.exit_code, 0);
    assert_eq!(o.files_received, 1);
    assert_same_tree(&src.path().join("deep/a"), dst.path());
}

/// Every file has a basis and changed content: block sums stream out while literal data
/// streams in, far beyond socket buffer sizes in both directions at once.
#[tokio::test]
async fn delta_heavy_pull_does_not_deadlock() {
    let src = tempfile::tempdir().expect("src");
    let dst = tempfile::tempdir().expect("dst");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    let files = 300;
    for i in 0..files {
        write_file(
            &src.path().join(format!("f{i:03}")),
            &pseudo_random(100_000, i),
            0o644,
            when,
        );
    }
    let d = StockDaemon::start(src.path());
    let mut sink = DirSink::new(dst.path());
    d.pull(&config("pub", 32), &mut sink)
        .await
        .expect("first pull");
    sink.finish();
    for i in 0..files {
        let mut data = pseudo_random(100_000, i);
        let at = (i as usize * 317) % 90_000;
        data[at..at + 10_000].copy_from_slice(&pseudo_random(10_000, 1000 + i));
        write_file(
            &src.path().join(format!("f{i:03}")),
            &data,
            0o644,
            when + Duration::from_secs(1),
        );
    }
    let mut sink = DirSink::new(dst.path());
    let o = d
        .pull(&config("pub", 32), &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    sink.finish();
    assert_eq!(o.files_received, files);
    assert_eq!(o.exit_code, 0);
    assert!(o.matched_bytes > files * 70_000, "{o:?}");
    assert!(
        o.wire_bytes_written > 250_000,
        "block sums for every file: {o:?}"
    );
    assert_same_tree(src.path(), dst.path());
}

/// 100 000 small files in one list: list decoding, sorting, 100k pipelined requests and
/// replies, all in one session (content counted, not stored).
#[tokio::test]
async fn hundred_thousand_small_files() {
    let src = tempfile::tempdir().expect("src");
    for d in 0..100 {
        let dir = src.path().join(format!("d{d:02}"));
        fs::create_dir(&dir).expect("mkdir");
        for f in 0..1000 {
            fs::write(dir.join(format!("{f:04}")), format!("{d}/{f}")).expect("write");
        }
    }
    let d = StockDaemon::start(src.path());
    let s = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .expect("connect");
    let mut sink = CountingSink::default();
    let _dog = Watchdog::arm(Duration::from_secs(300));
    let t0 = std::time::Instant::now();
    let o = tokio::time::timeout(
        Duration::from_secs(240),
        pull(s, &config("pub", 32), &mut sink),
    )
    .await
    .expect("timed out")
    .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    eprintln!("100k files pulled in {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!(o.exit_code, 0);
    assert_eq!(o.entries, 100_101);
    assert_eq!(o.files_received, 100_000);
    assert_eq!(sink.verified.len(), 100_000);
    assert!(sink.verified.iter().all(|v| v.2));
}

/// Slow local work on our side: deciding each entry takes a while (a huge unchanged tree),
/// and bases are slow to read (a huge basis checksummed from a slow store). The file
/// `a-big` is always transferred whole first: while the daemon streams it, a long stretch of
/// local work that stops us reading would leave the daemon blocked and silent.
struct SlowSink {
    entry_delay: Duration,
    read_delay: Duration,
    skip_all: bool,
    basis: Vec<u8>,
    received: u64,
}

struct SlowBasis {
    data: Vec<u8>,
    delay: Duration,
}

impl Basis for SlowBasis {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SinkError> {
        std::thread::sleep(self.delay);
        self.data.read_at(offset, buf)
    }
}

impl ReceiveSink for SlowSink {
    type Basis = SlowBasis;
    fn entry(&mut self, _: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        if e.name == b"a-big" {
            return Ok(EntryAction::Transfer);
        }
        std::thread::sleep(self.entry_delay);
        Ok(if self.skip_all {
            EntryAction::Skip
        } else {
            EntryAction::Transfer
        })
    }
    fn basis(&mut self, _: u32, e: &FileEntry) -> Result<Option<SlowBasis>, SinkError> {
        Ok((e.is_regular() && e.name != b"a-big").then(|| SlowBasis {
            data: self.basis.clone(),
            delay: self.read_delay,
        }))
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        Ok(())
    }
    fn content(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.received += data.len() as u64;
        Ok(())
    }
    fn end_content(&mut self, _: u32, _: &FileEntry, verified: bool) -> Result<(), SinkError> {
        if verified {
            Ok(())
        } else {
            Err("checksum mismatch".into())
        }
    }
}

/// Pulls `src` (plus a 64 MiB `a-big`) from a daemon module with `timeout = 2`.
async fn pull_with_slow_sink(src: &Path, sink: &mut SlowSink) -> Outcome {
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    write_file(&src.join("a-big"), &pseudo_random(64 << 20, 9), 0o644, when);
    let d = StockDaemon::start(src);
    let s = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .expect("connect");
    let _dog = Watchdog::arm(Duration::from_secs(180));
    let t0 = std::time::Instant::now();
    let o = tokio::time::timeout(
        Duration::from_secs(120),
        pull(s, &config("timed", 31), sink),
    )
    .await
    .expect("timed out")
    .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    assert!(
        t0.elapsed() > Duration::from_secs(4),
        "the local work was not slow"
    );
    assert!(
        sink.received >= 64 << 20,
        "{} bytes received",
        sink.received
    );
    o
}

/// The daemon's `timeout = 2` would end the transfer if deciding 4000 unchanged entries
/// (about 5 s here) kept us from reading what it sends meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn io_flows_while_a_huge_list_is_decided() {
    let src = tempfile::tempdir().expect("src");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    for i in 0..4000 {
        write_file(&src.path().join(format!("f{i:05}")), b"x", 0o644, when);
    }
    let mut sink = SlowSink {
        entry_delay: Duration::from_micros(1200),
        read_delay: Duration::ZERO,
        skip_all: true,
        basis: Vec::new(),
        received: 0,
    };
    let o = pull_with_slow_sink(src.path(), &mut sink).await;
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(o.files_requested, 1);
}

/// The same while a basis is checksummed slowly (about 5 s for its 4096 blocks).
#[tokio::test(flavor = "current_thread")]
async fn io_flows_while_a_slow_basis_is_checksummed() {
    let src = tempfile::tempdir().expect("src");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    let content = pseudo_random(16 * 1024 * 1024, 5);
    write_file(&src.path().join("b-slow"), &content, 0o644, when);
    let mut basis = content.clone();
    basis[1000..2000].fill(0);
    let mut sink = SlowSink {
        entry_delay: Duration::ZERO,
        read_delay: Duration::from_micros(1200),
        skip_all: false,
        basis,
        received: 0,
    };
    let o = pull_with_slow_sink(src.path(), &mut sink).await;
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(o.files_received, 2);
    assert!(o.matched_bytes > 15 * 1024 * 1024, "{o:?}");
}

//! The client sender (push) against a real stock `rsync --daemon` as the receiver, and
//! against hostile receivers written here.
//!
//! The daemon runs as root with `use chroot = yes` (symlinks stay verbatim) and
//! `uid = 0`/`gid = 0` (owners kept): these tests need root and fail loudly without it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::tree::{build_tree, pseudo_random, write_file};
use common::{is_root, StockDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turku_proto_rsync::io::{push, push_tcp, PushConfig};
use turku_proto_rsync::{
    DecodeError, DirSource, Error, FileContent, FileEntry, PushOutcome, SendSource, SinkError,
    Timeout, Timeouts,
};

const RSYNC: &str = "/usr/bin/rsync";

fn require_root() {
    assert!(
        is_root(),
        "the push tests need root: the daemon keeps owners and devices only as root"
    );
}

/// A stock daemon with one writable module `dst` at `path`.
fn receiver(path: &Path) -> StockDaemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!(
        "use chroot = yes\nuid = 0\ngid = 0\nlog file = {log}\n\
         [dst]\npath = {path}\nread only = false\n",
        log = dir.path().join("rsyncd.log").display(),
        path = path.display(),
    );
    StockDaemon::launch(Path::new(RSYNC), dir, &conf)
}

fn daemon_log(d: &StockDaemon) -> String {
    fs::read_to_string(d.dir.path().join("rsyncd.log")).unwrap_or_default()
}

fn config(protocol: u32) -> PushConfig {
    let mut c = PushConfig::new("dst");
    c.protocol = protocol;
    c.hard_links = true;
    c
}

async fn push_with<S: SendSource>(
    d: &StockDaemon,
    cfg: &PushConfig,
    entries: Vec<FileEntry>,
    source: &mut S,
) -> Result<PushOutcome, Error> {
    tokio::time::timeout(
        Duration::from_secs(60),
        push_tcp("127.0.0.1", d.port, cfg, entries, source),
    )
    .await
    .unwrap_or_else(|_| panic!("push timed out; daemon log:\n{}", daemon_log(d)))
}

async fn push_dir(d: &StockDaemon, src: &Path, cfg: &PushConfig) -> PushOutcome {
    let (mut source, entries) = DirSource::scan(src, cfg.hard_links).expect("scan");
    push_with(d, cfg, entries, &mut source)
        .await
        .unwrap_or_else(|e| panic!("push failed: {e}; daemon log:\n{}", daemon_log(d)))
}

/// Stock's own verdict: a checksum dry run from `src` to `dst` lists nothing.
/// `modify_window` -1 makes stock compare nanoseconds too.
fn assert_rsync_sees_no_difference(src: &Path, dst: &Path, modify_window: i32) {
    let out = Command::new(RSYNC)
        .args(["-ani", "--checksum", "--numeric-ids", "-H"])
        .arg(format!("--modify-window={modify_window}"))
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("run rsync");
    assert!(
        out.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "stock rsync sees differences"
    );
}

#[derive(Debug, PartialEq, Eq)]
struct Lstat {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    link: Option<Vec<u8>>,
    rdev: u64,
    content: Option<Vec<u8>>,
}

/// Every entry's lstat metadata, and hard-link groups as sets of names.
/// Names (as bytes) of the members of each hard-link group.
type Groups = Vec<Vec<Vec<u8>>>;

fn lstat_tree(root: &Path, nsec: bool) -> (BTreeMap<Vec<u8>, Lstat>, Groups) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).expect("lstat");
        let name = rel.as_os_str().as_bytes().to_vec();
        let ft = m.file_type();
        if !ft.is_dir() && m.nlink() > 1 {
            inodes.entry(m.ino()).or_default().push(name.clone());
        }
        out.insert(
            name,
            Lstat {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                // The receiver sets a directory's time after filling it; the root's is
                // the module's own and a daemon may or may not set it.
                mtime: if rel.as_os_str().is_empty() {
                    (0, 0)
                } else {
                    (m.mtime(), if nsec { m.mtime_nsec() } else { 0 })
                },
                link: ft.is_symlink().then(|| {
                    fs::read_link(&p)
                        .expect("readlink")
                        .into_os_string()
                        .into_encoded_bytes()
                }),
                rdev: m.rdev(),
                content: ft.is_file().then(|| fs::read(&p).expect("read")),
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                stack.push(rel.join(e.expect("dirent").file_name()));
            }
        }
    }
    let mut groups: Vec<Vec<Vec<u8>>> = inodes
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// The pull tests' tree plus what only root can make or a push must keep: hard links,
/// foreign owners, a device node.
fn build_push_tree(src: &Path) {
    build_tree(src);
    fs::hard_link(src.join("sub/mid.bin"), src.join("hard-1")).expect("link");
    fs::hard_link(src.join("sub/mid.bin"), src.join("deep/a/hard-2")).expect("link");
    std::os::unix::fs::chown(src.join("small.txt"), Some(1234), Some(5678)).expect("chown");
    std::os::unix::fs::lchown(src.join("rel-link"), Some(4321), Some(8765)).expect("lchown");
    let st = Command::new("mknod")
        .arg(src.join("null-dev"))
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(st.success());
    let st = Command::new("mknod")
        .arg(src.join("sub/blk"))
        .args(["b", "259", "65536"])
        .status()
        .expect("mknod");
    assert!(st.success());
    // What the build left at "now" gets a fixed time with nanoseconds: a stock receiver
    // sets a time only when the seconds differ, so an entry it creates within the same
    // second would keep its own nanoseconds.
    let st = Command::new("find")
        .arg(src)
        .args(["-newermt", "-1 hour", "-exec", "touch", "-h", "-d"])
        .args(["2010-01-01 00:00:00.123456789", "{}", "+"])
        .status()
        .expect("find");
    assert!(st.success());
}

async fn full_push(protocol: u32) {
    require_root();
    let src = tempfile::tempdir().expect("tmp");
    let dst = tempfile::tempdir().expect("tmp");
    build_push_tree(src.path());
    let d = receiver(dst.path());
    let o = push_dir(&d, src.path(), &config(protocol)).await;
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(o.protocol, protocol);
    assert!(o.failed.is_empty());
    // Nanoseconds travel from protocol 31 on.
    let nsec = protocol >= 31;
    assert_rsync_sees_no_difference(src.path(), dst.path(), if nsec { -1 } else { 1 });
    assert_same_lstat(src.path(), dst.path(), nsec);
}

#[tokio::test]
async fn push_full_tree_protocol_32() {
    full_push(32).await;
}

#[tokio::test]
async fn push_full_tree_protocol_31() {
    full_push(31).await;
}

#[tokio::test]
async fn push_full_tree_protocol_30() {
    full_push(30).await;
}

/// A push into a stock daemon forced to an older protocol, as openrsync's daemon (29) or a
/// 2.6.x one would take a restore; we announce 32 and follow it down. Protocols below 30
/// carry whole seconds, and 32-bit unsigned ones at that: the bar is what stock's own
/// client leaves in a second module of the same daemon, compared exactly (nanoseconds,
/// owners, devices, links, hard-link groups).
async fn push_into_daemon_forced_to(protocol: u32) {
    require_root();
    let src = tempfile::tempdir().expect("tmp");
    let ours = tempfile::tempdir().expect("tmp");
    let stock = tempfile::tempdir().expect("tmp");
    build_push_tree(src.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!(
        "use chroot = yes\nuid = 0\ngid = 0\nlog file = {log}\n\
         [dst]\npath = {ours}\nread only = false\n\
         [stock]\npath = {stock}\nread only = false\n",
        log = dir.path().join("rsyncd.log").display(),
        ours = ours.path().display(),
        stock = stock.path().display(),
    );
    let d = StockDaemon::launch_with_args(
        Path::new(RSYNC),
        dir,
        &conf,
        &[format!("--protocol={protocol}")],
    );
    let o = push_dir(&d, src.path(), &config(32)).await;
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(o.protocol, protocol);
    assert_eq!(o.checksum, "md4");
    assert!(o.failed.is_empty());
    let out = Command::new(RSYNC)
        .args(["-aH", "--numeric-ids"])
        .arg(format!("{}/", src.path().display()))
        .arg(format!("rsync://127.0.0.1:{}/stock/", d.port))
        .output()
        .expect("run rsync");
    assert!(
        out.status.success(),
        "stock push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_lstat(stock.path(), ours.path(), true);
}

/// `got` has the same names, lstat metadata and single hard-link group as `want`.
fn assert_same_lstat(want: &Path, got: &Path, nsec: bool) {
    let (a, ga) = lstat_tree(want, nsec);
    let (b, gb) = lstat_tree(got, nsec);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let differ: Vec<String> = a
        .iter()
        .filter(|(name, meta)| b.get(*name) != Some(*meta))
        .map(|(name, meta)| {
            format!(
                "{}: want {meta:?} vs got {:?}",
                String::from_utf8_lossy(name),
                b.get(name)
            )
        })
        .collect();
    assert!(differ.is_empty(), "lstat differs:\n{}", differ.join("\n"));
    assert_eq!(ga, gb, "hard-link groups");
    assert_eq!(ga.len(), 1);
}

#[tokio::test]
async fn push_into_daemon_forced_to_protocol_29() {
    push_into_daemon_forced_to(29).await;
}

#[tokio::test]
async fn push_into_daemon_forced_to_protocol_28() {
    push_into_daemon_forced_to(28).await;
}

#[tokio::test]
async fn push_into_daemon_forced_to_protocol_27() {
    push_into_daemon_forced_to(27).await;
}

/// A restore onto an older copy sends the changed blocks, not the file.
#[tokio::test]
async fn push_onto_older_copy_sends_only_the_changes() {
    require_root();
    let src = tempfile::tempdir().expect("tmp");
    let dst = tempfile::tempdir().expect("tmp");
    let size = 8_000_000;
    let new = pseudo_random(size, 9);
    let mut old = new.clone();
    for at in [100_000, 3_000_000, 7_999_000] {
        old[at..at + 100].fill(0xAA);
    }
    let t_new = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
    let t_old = UNIX_EPOCH + Duration::new(1_600_000_000, 0);
    write_file(&src.path().join("big"), &new, 0o644, t_new);
    write_file(&dst.path().join("big"), &old, 0o644, t_old);
    write_file(&src.path().join("same"), b"unchanged", 0o644, t_new);
    write_file(&dst.path().join("same"), b"unchanged", 0o644, t_new);
    let d = receiver(dst.path());
    let o = push_dir(&d, src.path(), &config(32)).await;
    assert_eq!(o.exit_code, 0, "{o:?}");
    let p = o.progress;
    assert_eq!(p.files_requested, 1, "only the changed file is asked for");
    assert!(
        p.wire_bytes_written < size as u64 / 20,
        "wrote {} bytes for a {size}-byte file with 300 changed bytes",
        p.wire_bytes_written
    );
    assert!(p.matched_bytes > size as u64 * 9 / 10, "{p:?}");
    assert_eq!(fs::read(dst.path().join("big")).expect("read"), new);
    assert_rsync_sees_no_difference(src.path(), dst.path(), 0);
}

/// Wraps a [`DirSource`]: named files fail to open, or fail after some bytes.
struct FailingSource {
    inner: DirSource,
    fail_open: Vec<&'static str>,
    fail_reading: Vec<&'static str>,
}

struct MaybeFailing {
    inner: <DirSource as SendSource>::Content,
    fail_after: Option<u64>,
    read: u64,
}

impl FileContent for MaybeFailing {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError> {
        if let Some(limit) = self.fail_after {
            if self.read >= limit {
                return Err(std::io::Error::other("injected read error").into());
            }
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl SendSource for FailingSource {
    type Content = MaybeFailing;
    fn open(&mut self, ndx: u32, e: &FileEntry) -> Result<MaybeFailing, SinkError> {
        let name = e.name_lossy();
        if self.fail_open.contains(&name.as_str()) {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied).into());
        }
        Ok(MaybeFailing {
            inner: self.inner.open(ndx, e)?,
            fail_after: self
                .fail_reading
                .contains(&name.as_str())
                .then_some(100_000),
            read: 0,
        })
    }
}

/// Files gone or unreadable after listing: the rest arrives, the run says 23 and names
/// them; a file whose read fails midway is not left behind truncated.
#[tokio::test]
async fn vanished_and_unreadable_files_are_partial_transfer() {
    require_root();
    let src = tempfile::tempdir().expect("tmp");
    let dst = tempfile::tempdir().expect("tmp");
    let t = UNIX_EPOCH + Duration::from_secs(1_650_000_000);
    for name in ["a", "gone", "locked", "cut", "z"] {
        write_file(&src.path().join(name), &pseudo_random(300_000, 1), 0o644, t);
    }
    let (inner, entries) = DirSource::scan(src.path(), false).expect("scan");
    fs::remove_file(src.path().join("gone")).expect("rm");
    let mut source = FailingSource {
        inner,
        fail_open: vec!["locked"],
        fail_reading: vec!["cut"],
    };
    let d = receiver(dst.path());
    let o = push_with(&d, &config(31), entries, &mut source)
        .await
        .expect("push");
    assert_eq!(o.exit_code, 23, "{o:?}");
    for name in ["gone", "locked", "cut"] {
        assert!(
            o.failed.iter().any(|f| f == name),
            "{name} not named: {o:?}"
        );
        assert!(!dst.path().join(name).exists(), "{name} arrived");
    }
    for name in ["a", "z"] {
        assert_eq!(
            fs::read(dst.path().join(name)).expect("arrived"),
            fs::read(src.path().join(name)).expect("src")
        );
    }
}

/// Only a vanished file: exit 24, which counts as success.
#[tokio::test]
async fn vanished_file_alone_is_exit_24() {
    require_root();
    let src = tempfile::tempdir().expect("tmp");
    let dst = tempfile::tempdir().expect("tmp");
    let t = SystemTime::now();
    write_file(&src.path().join("stay"), b"stay", 0o644, t);
    write_file(&src.path().join("gone"), b"gone", 0o644, t);
    let (mut source, entries) = DirSource::scan(src.path(), false).expect("scan");
    fs::remove_file(src.path().join("gone")).expect("rm");
    let d = receiver(dst.path());
    let o = push_with(&d, &config(32), entries, &mut source)
        .await
        .expect("push");
    assert_eq!(o.exit_code, 24, "{o:?}");
    assert!(o.is_success());
    assert!(dst.path().join("stay").exists());
}

/// A file that grew or shrank since listing goes out as read: the stream stays valid and
/// the receiver keeps what arrived.
#[tokio::test]
async fn file_longer_or_shorter_than_listed_arrives_as_read() {
    require_root();
    let dst = tempfile::tempdir().expect("tmp");
    let mut list = mem_list();
    list[1].size = 5; // listed at 5 bytes, MemSource reads 10 000
    let mut shrunk = FileEntry::new(b"g".to_vec(), 0o100644, 1 << 20);
    shrunk.mtime = 1_600_000_000;
    list.push(shrunk);
    let d = receiver(dst.path());
    let o = push_with(&d, &config(32), list, &mut MemSource)
        .await
        .expect("push");
    assert_eq!(o.exit_code, 0, "{o:?}");
    for name in ["f", "g"] {
        assert_eq!(
            fs::read(dst.path().join(name)).expect("read"),
            vec![5u8; 10_000]
        );
    }
}

// ------------------------------------------------------------------ hostile receivers

/// Content from memory.
struct MemSource;

impl SendSource for MemSource {
    type Content = std::io::Cursor<Vec<u8>>;
    fn open(&mut self, _: u32, _: &FileEntry) -> Result<Self::Content, SinkError> {
        Ok(std::io::Cursor::new(vec![5u8; 10_000]))
    }
}

fn mem_list() -> Vec<FileEntry> {
    let mut dot = FileEntry::new(b".".to_vec(), 0o40755, 0);
    dot.top_dir = true;
    vec![dot, FileEntry::new(b"f".to_vec(), 0o100644, 10_000)]
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut v = ((data.len() as u32) | (7 << 24)).to_le_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

/// A fake daemon: handshake at protocol 31 without checksum negotiation (md5), then
/// `script` as multiplexed data; it keeps reading whatever we send and holds the
/// connection open.
async fn hostile(script: Vec<u8>) -> Result<PushOutcome, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.write_all(b"@RSYNCD: 31.0\n").await.expect("greet");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Greeting, module line, then the args ending in an empty argument.
        while !seen.windows(2).any(|w| w == [0, 0]) {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.ends_with(b"dst\n") {
                s.write_all(b"@RSYNCD: OK\n").await.expect("ok");
            }
        }
        // Compat flags without VARINT (no negotiation), the seed, then the script.
        s.write_all(&[0x0e]).await.expect("compat");
        s.write_all(&1234i32.to_le_bytes()).await.expect("seed");
        s.write_all(&frame(&script)).await.expect("script");
        loop {
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    });
    let mut cfg = PushConfig::new("dst");
    cfg.protocol = 31;
    cfg.timeouts = Timeouts {
        io: Some(Duration::from_secs(2)),
        connect: Some(Duration::from_secs(5)),
        deadline: Some(Duration::from_secs(20)),
    };
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        push_tcp("127.0.0.1", port, &cfg, mem_list(), &mut MemSource),
    )
    .await
    .expect("push must end on its own");
    server.abort();
    r
}

fn head(count: i32, blength: i32, s2: i32, rem: i32) -> Vec<u8> {
    [count, blength, s2, rem]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[tokio::test]
async fn hostile_receiver_bad_sum_head() {
    // ndx 1 ("f"), ITEM_TRANSFER, one block of length 0.
    let mut s = vec![0x02, 0x00, 0x80];
    s.extend(head(1, 0, 2, 0));
    let r = hostile(s).await;
    assert!(
        matches!(
            r,
            Err(Error::Decode(DecodeError::BadSumHead { blength: 0, .. }))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn hostile_receiver_strong_sum_longer_than_the_checksum() {
    let mut s = vec![0x02, 0x00, 0x80];
    s.extend(head(1, 700, 17, 0));
    let r = hostile(s).await;
    assert!(
        matches!(
            r,
            Err(Error::Decode(DecodeError::BadSumHead { s2length: 17, .. }))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn hostile_receiver_index_out_of_range() {
    let r = hostile(vec![0x65, 0x00, 0x80]).await;
    assert!(
        matches!(r, Err(Error::Decode(DecodeError::BadNdx(100)))),
        "{r:?}"
    );
}

#[tokio::test]
async fn hostile_receiver_transfer_of_a_directory() {
    let mut s = vec![0x01, 0x00, 0x80];
    s.extend(head(0, 0, 0, 0));
    let r = hostile(s).await;
    assert!(matches!(r, Err(Error::BadRequest { ndx: 0, .. })), "{r:?}");
}

#[tokio::test]
async fn hostile_receiver_transfer_in_phase_2() {
    let mut s = vec![0x00, 0x00, 0x02, 0x00, 0x80];
    s.extend(head(0, 0, 0, 0));
    let r = hostile(s).await;
    assert!(matches!(r, Err(Error::BadRequest { ndx: 1, .. })), "{r:?}");
}

#[tokio::test]
async fn hostile_receiver_that_stalls_times_out() {
    let r = hostile(Vec::new()).await;
    assert!(matches!(r, Err(Error::Timeout(Timeout::Idle(_)))), "{r:?}");
}

/// The driver also runs over any stream (here an in-memory pipe the peer closes at once).
#[tokio::test]
async fn closed_peer_is_a_clean_error() {
    let (a, b) = tokio::io::duplex(1024);
    drop(b);
    let r = push(a, &PushConfig::new("dst"), mem_list(), &mut MemSource).await;
    assert!(
        matches!(r, Err(Error::UnexpectedEof(_)) | Err(Error::Io(_))),
        "{r:?}"
    );
}

/// A symlink's own mtime (with nanoseconds) is kept, as stock's push keeps it.
#[tokio::test]
async fn symlink_times_are_kept() {
    require_root();
    let src = tempfile::tempdir().expect("tmp");
    let dst = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::symlink("target", src.path().join("l")).expect("symlink");
    let st = Command::new("touch")
        .args(["-h", "-d", "2001-01-01 00:00:00.5"])
        .arg(src.path().join("l"))
        .status()
        .expect("touch");
    assert!(st.success());
    let d = receiver(dst.path());
    push_dir(&d, src.path(), &config(32)).await;
    let (a, b) = (
        fs::symlink_metadata(src.path().join("l")).expect("lstat"),
        fs::symlink_metadata(dst.path().join("l")).expect("lstat"),
    );
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
}

/// A hard-link follower listed with its own mode, mtime and owners (a store's ingest
/// lstats each link on its own) followed by an entry equal to that follower: the daemon
/// gives the follower its leader's attributes, and the next entry still arrives with its
/// own (they are compared with what the receiver kept, the leader's).
#[tokio::test]
async fn entry_after_a_follower_with_its_own_attributes_arrives_right() {
    require_root();
    let dst = tempfile::tempdir().expect("tempdir");
    let d = receiver(dst.path());
    let file = |name: &str, mode: u32, mtime: i64, uid: u32, gid: u32| {
        let mut e = FileEntry::new(name.as_bytes().to_vec(), 0o100000 | mode, 10_000);
        (e.mtime, e.uid, e.gid) = (mtime, uid, gid);
        e
    };
    let mut lead = file("a", 0o644, 1_000_000_000, 10, 20);
    lead.hard_link = turku_proto_rsync::HardLink::Leader;
    let mut follow = file("b", 0o600, 1_500_000_000, 11, 21);
    follow.hard_link = turku_proto_rsync::HardLink::Follower { first: 1 };
    let next = file("c", 0o600, 1_500_000_000, 11, 21);
    let mut entries = mem_list();
    entries.truncate(1);
    entries.extend([lead, follow, next]);
    let o = push_with(&d, &config(31), entries, &mut MemSource)
        .await
        .unwrap_or_else(|e| panic!("push failed: {e}; daemon log:\n{}", daemon_log(&d)));
    assert_eq!(o.exit_code, 0, "{o:?}");
    let meta = |n: &str| {
        let m = fs::symlink_metadata(dst.path().join(n)).expect("lstat");
        (m.mode() & 0o7777, m.mtime(), m.uid(), m.gid(), m.ino())
    };
    let (a, b, c) = (meta("a"), meta("b"), meta("c"));
    assert_eq!(a, b, "a and b are one inode with the leader's attributes");
    assert_eq!((a.0, a.1, a.2, a.3), (0o644, 1_000_000_000, 10, 20));
    assert_eq!((c.0, c.1, c.2, c.3), (0o600, 1_500_000_000, 11, 21));
}

/// Speed comparison (not a test of speed: no timing is asserted). Pushes the tree named by
/// `TURKU_PUSH_BENCH_SRC` into a fresh module under `TURKU_PUSH_BENCH_DST` (a tmpfs keeps
/// ext4's inode allocation after mass deletes out of the figures) with ours and with stock
/// `rsync -aH --numeric-ids --no-inc-recursive`, alternating which goes first, and prints
/// the times:
/// `TURKU_PUSH_BENCH_SRC=/src TURKU_PUSH_BENCH_DST=/mnt cargo test --release -p
/// turku-proto-rsync --test push -- --ignored --nocapture speed`
#[tokio::test]
#[ignore]
async fn speed_against_stock_rsync() {
    let (Ok(src), Ok(dst)) = (
        std::env::var("TURKU_PUSH_BENCH_SRC"),
        std::env::var("TURKU_PUSH_BENCH_DST"),
    ) else {
        panic!("set TURKU_PUSH_BENCH_SRC (tree to push) and TURKU_PUSH_BENCH_DST (scratch)");
    };
    let src = PathBuf::from(src);
    let rounds: u32 = std::env::var("TURKU_PUSH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let (mut ours_all, mut stock_all) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for ours_turn in [round % 2 == 0, round % 2 == 1] {
            let to = tempfile::tempdir_in(&dst).expect("tmp");
            let d = receiver(to.path());
            let t = std::time::Instant::now();
            if ours_turn {
                let o = push_dir(&d, &src, &config(32)).await;
                assert_eq!(o.exit_code, 0);
                ours_all.push(t.elapsed().as_secs_f64());
            } else {
                let st = Command::new(RSYNC)
                    .args(["-aH", "--numeric-ids", "--no-inc-recursive"])
                    .arg(format!("{}/", src.display()))
                    .arg(format!("rsync://127.0.0.1:{}/dst/", d.port))
                    .status()
                    .expect("rsync");
                assert!(st.success());
                stock_all.push(t.elapsed().as_secs_f64());
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ours, stock) = (median(&mut ours_all), median(&mut stock_all));
    eprintln!(
        "push of {}: ours {ours:.2} s, stock {stock:.2} s (medians of {rounds}), stock/ours {:.2}",
        src.display(),
        stock / ours
    );
}

//! Real conversations with a stock `rsync --daemon`, recorded once and replayed here with
//! no socket and no daemon (the way gitoxide keeps real git transcripts): the recorded
//! server bytes go into our handshake and `ClientReceiver` in the chunks our client read
//! them in, and every byte the machines write must equal what our client wrote then. A
//! protocol regression (a changed request, a DONE too many, a different checksum) shows
//! here at its first differing byte.
//!
//! The transcripts are in `tests/fixtures/` (format and how to re-record: the README
//! there). The tree they transfer is built by [`build_tree`] and checked with
//! [`expected_tree`], so a recording and its replay agree on what arrived.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use common::StockDaemon;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use turku_proto_rsync::io::{pull, push, PullConfig, PushConfig};
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::handshake::{
    ClientHandshake, HandshakeOptions, HandshakeStatus, Negotiated,
};
use turku_proto_rsync::session::receiver::{ClientReceiver, ReceiverOptions, Status};
use turku_proto_rsync::session::sender::{
    ClientSender, PushOutcome, SendSource, SenderOptions, Status as SendStatus,
};
use turku_proto_rsync::{
    EntryAction, FileEntry, FileKind, HardLink, Limits, MessageKind, Outcome, ReceiveSink,
    SinkError, Timeouts,
};

/// The seed every recording asks the daemon for (`--checksum-seed`), so block and file
/// sums do not depend on the time of the recording.
const SEED: i32 = 0x7475_726b;
/// The module the recording daemon exports and the user we announce (no auth, so the
/// user name never reaches the wire; fixed anyway so nothing depends on `$USER`).
const MODULE: &str = "pub";
const USER: &str = "replay";
/// First line of every transcript: format version and the case it records.
const MAGIC: &str = "turku-rsync-transcript 1";
/// One mtime for every file and directory of the tree (symlinks keep the time they were
/// made: the standard library cannot set a symlink's own time).
const MTIME: u64 = 1_700_000_000;
/// The file transferred as a delta: its basis differs in one region and one tail.
const DELTA_FILE: &str = "delta.bin";

/// One recorded conversation.
struct Case {
    /// File name under `tests/fixtures/`.
    file: &'static str,
    protocol: u32,
}

const PULLS: [Case; 5] = [
    Case {
        file: "pull-p32.transcript",
        protocol: 32,
    },
    Case {
        file: "pull-p31.transcript",
        protocol: 31,
    },
    Case {
        file: "pull-p30.transcript",
        protocol: 30,
    },
    Case {
        file: "pull-p29.transcript",
        protocol: 29,
    },
    Case {
        file: "pull-p27.transcript",
        protocol: 27,
    },
];

/// Pushes (our `ClientSender` into a stock daemon's receiver); the sender speaks 30+.
const PUSHES: [Case; 3] = [
    Case {
        file: "push-p32.transcript",
        protocol: 32,
    },
    Case {
        file: "push-p31.transcript",
        protocol: 31,
    },
    Case {
        file: "push-p30.transcript",
        protocol: 30,
    },
];

/// The module a push writes into.
const PUSH_MODULE: &str = "incoming";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn header(case: &Case) -> String {
    let role = case.file.split('-').next().unwrap_or("?");
    format!(
        "{MAGIC} role={role} protocol={} hard_links=1 seed={SEED}\n",
        case.protocol
    )
}

// ------------------------------------------------------------------ the tree

/// Bytes from a fixed linear congruential generator: incompressible enough for rolling
/// checksums to find real matches, the same on every run.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        })
        .collect()
}

fn delta_new() -> Vec<u8> {
    pseudo_random(6000, 1)
}

/// The receiver's old copy of [`DELTA_FILE`]: one changed stretch in the middle and a
/// shorter tail, so the transfer is part blocks, part literal data.
fn delta_basis() -> Vec<u8> {
    let mut b = delta_new();
    b[2100..2300].copy_from_slice(&pseudo_random(200, 2));
    b.truncate(5200);
    b
}

/// What the recorded tree holds, as the receiving sink must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

fn expected_tree() -> BTreeMap<String, Node> {
    let linked = b"one content, two names\n".to_vec();
    BTreeMap::from([
        (".".into(), Node::Dir),
        ("dir".into(), Node::Dir),
        ("dir/nested".into(), Node::Dir),
        (
            "dir/nested/deep.txt".into(),
            Node::File(b"three levels down\n".to_vec()),
        ),
        ("dir/hard2".into(), Node::File(linked.clone())),
        ("hard1".into(), Node::File(linked)),
        (DELTA_FILE.into(), Node::File(delta_new())),
        ("empty".into(), Node::File(Vec::new())),
        ("small.txt".into(), Node::File(b"hello, rsync\n".to_vec())),
        (
            "link".into(),
            Node::Symlink(b"dir/nested/deep.txt".to_vec()),
        ),
    ])
}

/// Writes [`expected_tree`] under `root` (hard1 and dir/hard2 as one inode), all mtimes
/// [`MTIME`].
fn build_tree(root: &Path) {
    let tree = expected_tree();
    for (name, node) in &tree {
        let p = root.join(name);
        match node {
            Node::Dir => fs::create_dir_all(&p).expect("mkdir"),
            // Made below, once its leader exists.
            Node::File(_) if name == "dir/hard2" => {}
            Node::File(data) => fs::write(&p, data).expect("write"),
            Node::Symlink(target) => {
                let target = std::str::from_utf8(target).expect("utf-8 target");
                std::os::unix::fs::symlink(target, &p).expect("symlink");
            }
        }
    }
    fs::hard_link(root.join("hard1"), root.join("dir/hard2")).expect("hard link");
    // Times last, deepest first, so creating entries does not move a directory's time.
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
    for (name, node) in tree.iter().rev() {
        if !matches!(node, Node::Symlink(_)) {
            let f = fs::File::open(root.join(name)).expect("open for mtime");
            f.set_modified(when).expect("set mtime");
        }
    }
}

// ------------------------------------------------------------------ the sink

/// Keeps everything the receiver delivers in memory; offers [`delta_basis`] as the basis
/// of [`DELTA_FILE`] and nothing for the rest. Recording and replay use the same one, so
/// the machine makes the same requests both times.
#[derive(Default)]
struct MemSink {
    /// By sorted index: name and what the entry said.
    entries: BTreeMap<u32, FileEntry>,
    files: BTreeMap<u32, Vec<u8>>,
    current: Vec<u8>,
    failed: Vec<String>,
    messages: Vec<String>,
}

impl ReceiveSink for MemSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, ndx: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        self.entries.insert(ndx, e.clone());
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, _: u32, e: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok((e.name == DELTA_FILE.as_bytes()).then(delta_basis))
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        self.current.clear();
        Ok(())
    }
    fn content(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.current.extend_from_slice(data);
        Ok(())
    }
    fn end_content(&mut self, ndx: u32, _: &FileEntry, verified: bool) -> Result<(), SinkError> {
        let data = std::mem::take(&mut self.current);
        if verified {
            self.files.insert(ndx, data);
        }
        Ok(())
    }
    fn file_failed(&mut self, _: u32, e: &FileEntry, reason: &str) -> Result<(), SinkError> {
        self.failed.push(format!("{}: {reason}", e.name_lossy()));
        Ok(())
    }
    fn message(&mut self, _: MessageKind, text: &str) {
        self.messages.push(text.to_owned());
    }
}

impl MemSink {
    /// The tree as received: hard-link followers take their leader's content.
    fn tree(&self) -> BTreeMap<String, Node> {
        self.entries
            .iter()
            .map(|(ndx, e)| {
                let node = match e.kind() {
                    FileKind::Directory => Node::Dir,
                    FileKind::Symlink => Node::Symlink(e.symlink.clone().unwrap_or_default()),
                    _ => {
                        let from = match e.hard_link {
                            HardLink::Follower { first } => first,
                            _ => *ndx,
                        };
                        Node::File(self.files.get(&from).cloned().unwrap_or_default())
                    }
                };
                (e.name_lossy(), node)
            })
            .collect()
    }
}

/// What every recorded pull must have ended with, live or replayed.
fn check_run(case: &Case, o: &Outcome, sink: &MemSink) {
    assert_eq!(o.protocol, case.protocol);
    assert_eq!(o.exit_code, 0, "{o:?}; failed: {:?}", sink.failed);
    assert!(sink.failed.is_empty(), "{:?}", sink.failed);
    assert_eq!(o.checksum_seed, SEED);
    assert!(o.matched_bytes > 0, "the delta used no basis block: {o:?}");
    assert_eq!(sink.tree(), expected_tree());
}

// ------------------------------------------------------------------ transcripts

/// Which way a recorded chunk went, as our client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Written by our client.
    Client,
    /// Read by our client (the daemon's bytes, in the chunks the reads returned).
    Server,
}

impl Dir {
    fn byte(self) -> u8 {
        match self {
            Dir::Client => b'C',
            Dir::Server => b'S',
        }
    }
}

type Records = Vec<(Dir, Vec<u8>)>;

fn encode_transcript(header: &str, records: &Records) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    for (dir, bytes) in records {
        out.push(dir.byte());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn decode_transcript(raw: &[u8], header: &str) -> Records {
    let rest = raw
        .strip_prefix(header.as_bytes())
        .unwrap_or_else(|| panic!("transcript does not start with {header:?}"));
    let mut records = Vec::new();
    let mut at = 0;
    while at < rest.len() {
        let dir = match rest[at] {
            b'C' => Dir::Client,
            b'S' => Dir::Server,
            b => panic!("bad direction byte {b:#x} at {at}"),
        };
        let len = u32::from_le_bytes(rest[at + 1..at + 5].try_into().expect("length")) as usize;
        records.push((dir, rest[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    records
}

fn read_transcript(case: &Case) -> Records {
    let path = fixtures().join(case.file);
    let raw = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; record it with tests/fixtures/capture.sh",
            path.display()
        )
    });
    decode_transcript(&raw, &header(case))
}

/// The options a recording and its replay share: those of [`PullConfig`] that reach the
/// wire, fixed.
fn pull_config(case: &Case) -> PullConfig {
    let mut cfg = PullConfig::new(MODULE);
    cfg.protocol = case.protocol;
    cfg.user = USER.into();
    cfg.hard_links = true;
    cfg.numeric_ids = true;
    cfg.checksum_seed = Some(SEED);
    // No `--timeout` in the argv (and no keep-alives): a replay has no clock.
    cfg.timeouts = Timeouts {
        io: None,
        ..Timeouts::default()
    };
    cfg
}

/// Where the handshake left a replay: the session's terms, what we wrote so far, server
/// input already read past the handshake, and the server chunks not yet fed.
struct Handshaken<'r, I: Iterator<Item = &'r [u8]>> {
    neg: Negotiated,
    ours: Vec<u8>,
    inbuf: Vec<u8>,
    chunks: I,
}

/// Runs our handshake with `args` over the recorded server chunks, one feed a chunk.
fn replay_handshake<'r>(
    args: ServerArgs,
    protocol: u32,
    user: &str,
    records: &'r Records,
) -> Handshaken<'r, impl Iterator<Item = &'r [u8]>> {
    let mut hs = ClientHandshake::new(HandshakeOptions {
        args,
        protocol,
        user: user.to_owned(),
        password: None,
        limits: Limits::default(),
    })
    .expect("handshake");
    let mut chunks = records
        .iter()
        .filter(|(d, _)| *d == Dir::Server)
        .map(|(_, b)| b.as_slice());
    let mut ours = hs.take_output();
    let mut inbuf = Vec::new();
    let neg = loop {
        let (used, st) = hs.feed(&inbuf).expect("handshake input");
        inbuf.drain(..used);
        ours.extend(hs.take_output());
        if let HandshakeStatus::Done(n) = st {
            break n;
        }
        let chunk = chunks
            .next()
            .expect("transcript ended during the handshake");
        inbuf.extend_from_slice(chunk);
    };
    Handshaken {
        neg,
        ours,
        inbuf,
        chunks,
    }
}

/// Runs our handshake and receiver over the recorded server chunks, one feed and one step
/// a chunk as the tokio driver does, and returns the outcome and all we wrote.
fn replay(case: &Case, records: &Records, sink: &mut MemSink) -> (Outcome, Vec<u8>) {
    let cfg = pull_config(case);
    // As the driver builds it from `cfg`.
    let mut args = ServerArgs::pull(&cfg.module, &cfg.path, cfg.hard_links);
    args.numeric_ids = cfg.numeric_ids;
    args.checksum_seed = cfg.checksum_seed;
    let Handshaken {
        neg,
        mut ours,
        inbuf,
        mut chunks,
    } = replay_handshake(args, cfg.protocol, &cfg.user, records);
    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(
        neg,
        ReceiverOptions {
            hard_links: cfg.hard_links,
            numeric_ids: cfg.numeric_ids,
            filter_rules: Vec::new(),
            limits: Limits::default(),
        },
    );
    rx.feed(&inbuf).expect("feed");
    let outcome = loop {
        let st = rx.step(sink).expect("step");
        ours.extend(rx.take_output());
        if let Status::Finished(o) = st {
            break *o;
        }
        assert!(!rx.has_local_work(), "a small tree needs no second step");
        let chunk = chunks.next().expect("transcript ended before the run did");
        rx.feed(chunk).expect("feed");
    };
    assert_eq!(chunks.count(), 0, "server bytes left over after the run");
    (outcome, ours)
}

/// Everything our machines wrote must be what our client wrote when it was recorded.
fn assert_same_output(case: &Case, ours: &[u8], records: &Records) {
    let recorded: Vec<u8> = records
        .iter()
        .filter(|(d, _)| *d == Dir::Client)
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    if ours != recorded.as_slice() {
        let at = ours
            .iter()
            .zip(&recorded)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(recorded.len()));
        let show = |b: &[u8]| format!("{:02x?}", &b[at.min(b.len())..(at + 16).min(b.len())]);
        panic!(
            "{}: our output differs from the recording at byte {at} (ours {} bytes, recorded {}): \
             ours {} recorded {}",
            case.file,
            ours.len(),
            recorded.len(),
            show(ours),
            show(&recorded)
        );
    }
}

fn replay_case(case: &Case) {
    let records = read_transcript(case);
    let mut sink = MemSink::default();
    let (outcome, ours) = replay(case, &records, &mut sink);
    assert_same_output(case, &ours, &records);
    check_run(case, &outcome, &sink);
}

#[test]
fn replay_pull_protocol_32() {
    replay_case(&PULLS[0]);
}

#[test]
fn replay_pull_protocol_31() {
    replay_case(&PULLS[1]);
}

#[test]
fn replay_pull_protocol_30() {
    replay_case(&PULLS[2]);
}

#[test]
fn replay_pull_protocol_29() {
    replay_case(&PULLS[3]);
}

#[test]
fn replay_pull_protocol_27() {
    replay_case(&PULLS[4]);
}

/// The transcript format round-trips (a broken reader would make every replay vacuous).
#[test]
fn transcript_format_round_trips() {
    let records: Records = vec![
        (Dir::Client, b"@RSYNCD: 32.0\n".to_vec()),
        (Dir::Server, Vec::new()),
        (Dir::Server, vec![0; 300]),
    ];
    let raw = encode_transcript("h\n", &records);
    assert_eq!(decode_transcript(&raw, "h\n"), records);
}

// ------------------------------------------------------------------ pushes

/// [`expected_tree`] as our sender lists it: walk order (parents first, the hard-link
/// leader before its follower), every field fixed so a replay lists the same bytes.
fn push_entries() -> Vec<FileEntry> {
    let tree = expected_tree();
    let order = [
        ".",
        DELTA_FILE,
        "empty",
        "hard1",
        "link",
        "small.txt",
        "dir",
        "dir/hard2",
        "dir/nested",
        "dir/nested/deep.txt",
    ];
    assert_eq!(order.len(), tree.len());
    let leader = order.iter().position(|n| *n == "hard1").expect("leader") as u32;
    order
        .iter()
        .map(|name| {
            let mut e = match &tree[*name] {
                Node::Dir => common::entry(name, 0o040_755, 0),
                Node::File(data) => common::entry(name, 0o100_644, data.len() as i64),
                Node::Symlink(target) => {
                    let mut e = common::entry(name, 0o120_777, target.len() as i64);
                    e.symlink = Some(target.clone());
                    e
                }
            };
            e.hard_link = match *name {
                "hard1" => HardLink::Leader,
                "dir/hard2" => HardLink::Follower { first: leader },
                _ => HardLink::None,
            };
            e
        })
        .collect()
}

/// Content of [`push_entries`] from memory.
struct MemSource {
    entries: Vec<FileEntry>,
    messages: Vec<String>,
}

impl SendSource for MemSource {
    type Content = std::io::Cursor<Vec<u8>>;
    fn open(&mut self, ndx: u32, entry: &FileEntry) -> Result<Self::Content, SinkError> {
        assert_eq!(self.entries[ndx as usize].name, entry.name);
        match &expected_tree()[&entry.name_lossy()] {
            Node::File(data) => Ok(std::io::Cursor::new(data.clone())),
            other => panic!("content of {other:?} asked for"),
        }
    }
    fn message(&mut self, _: MessageKind, text: &str) {
        self.messages.push(text.to_owned());
    }
}

fn push_config(case: &Case) -> PushConfig {
    let mut cfg = PushConfig::new(PUSH_MODULE);
    cfg.protocol = case.protocol;
    cfg.user = USER.into();
    cfg.hard_links = true;
    cfg.numeric_ids = true;
    cfg.checksum_seed = Some(SEED);
    cfg.timeouts = Timeouts {
        io: None,
        ..Timeouts::default()
    };
    cfg
}

/// What every recorded push must have ended with, live or replayed.
fn check_push(case: &Case, o: &PushOutcome) {
    assert_eq!(o.protocol, case.protocol);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert!(o.failed.is_empty(), "{o:?}");
    assert_eq!(o.checksum_seed, SEED);
    assert!(
        o.progress.matched_bytes > 0,
        "the delta used no block of the receiver's copy: {o:?}"
    );
}

/// Runs our handshake and sender over the recorded server chunks (one feed and one step
/// a chunk) and returns the outcome and all we wrote.
fn replay_push(case: &Case, records: &Records) -> (PushOutcome, Vec<u8>) {
    let cfg = push_config(case);
    let mut args = ServerArgs::push(&cfg.module, &cfg.path, cfg.hard_links, cfg.delete);
    args.numeric_ids = cfg.numeric_ids;
    args.checksum_seed = cfg.checksum_seed;
    let Handshaken {
        neg,
        mut ours,
        inbuf,
        mut chunks,
    } = replay_handshake(args, cfg.protocol, &cfg.user, records);
    let entries = push_entries();
    let mut source = MemSource {
        entries: entries.clone(),
        messages: Vec::new(),
    };
    let mut tx: ClientSender<MemSource> = ClientSender::new(
        neg,
        SenderOptions {
            hard_links: cfg.hard_links,
            numeric_ids: cfg.numeric_ids,
            delete: false,
            filter_rules: Vec::new(),
            limits: Limits::default(),
        },
        entries,
        0,
    )
    .expect("sender");
    tx.feed(&inbuf).expect("feed");
    let outcome = loop {
        let st = tx.step(&mut source).expect("step");
        ours.extend(tx.take_output());
        if let SendStatus::Finished(o) = st {
            break *o;
        }
        assert!(!tx.has_local_work(), "a small tree needs no second step");
        let chunk = chunks.next().expect("transcript ended before the run did");
        tx.feed(chunk).expect("feed");
    };
    assert_eq!(chunks.count(), 0, "server bytes left over after the run");
    (outcome, ours)
}

fn replay_push_case(case: &Case) {
    let records = read_transcript(case);
    let (outcome, ours) = replay_push(case, &records);
    assert_same_output(case, &ours, &records);
    check_push(case, &outcome);
}

#[test]
fn replay_push_protocol_32() {
    replay_push_case(&PUSHES[0]);
}

#[test]
fn replay_push_protocol_31() {
    replay_push_case(&PUSHES[1]);
}

#[test]
fn replay_push_protocol_30() {
    replay_push_case(&PUSHES[2]);
}

/// What a push left in the daemon's module, as [`MemSink::tree`] shows a pull.
fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Node>) {
        let p = if rel == "." {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let meta = fs::symlink_metadata(&p).expect("lstat");
        let node = if meta.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            Node::Symlink(
                fs::read_link(&p)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if meta.is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                let name = e.expect("dirent").file_name().into_string().expect("utf-8");
                let child = if rel == "." {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                walk(root, &child, out);
            }
            Node::Dir
        } else {
            Node::File(fs::read(&p).expect("read"))
        };
        out.insert(rel.to_owned(), node);
    }
    let mut out = BTreeMap::new();
    walk(root, ".", &mut out);
    out
}

// ------------------------------------------------------------------ recording

/// A stream that logs every chunk our client reads and writes, in order.
struct Recorder<T> {
    inner: T,
    log: Arc<Mutex<Records>>,
}

impl<T> Recorder<T> {
    fn push(&self, dir: Dir, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.log
                .lock()
                .expect("recorder lock")
                .push((dir, bytes.to_vec()));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Recorder<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.push(Dir::Server, &buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recorder<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.push(Dir::Client, &data[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Records every case against the stock daemon and rewrites the fixtures (run by
/// `tests/fixtures/capture.sh`). Each live run must pass the same checks as its replay,
/// and the fresh transcript must replay before it is written.
#[tokio::test]
#[ignore = "records the fixtures against a live stock daemon; run by tests/fixtures/capture.sh"]
async fn record_fixtures() {
    let rsync = Path::new("/usr/bin/rsync");
    assert!(rsync.exists(), "stock rsync is needed to record");
    let src = tempfile::tempdir().expect("src");
    build_tree(src.path());
    let dir = tempfile::tempdir().expect("daemon dir");
    let ids = if common::is_root() {
        "uid = 0\ngid = 0\n"
    } else {
        ""
    };
    let conf = format!(
        "use chroot = no\n{ids}log file = {log}\n[{MODULE}]\npath = {src}\nread only = yes\n",
        log = dir.path().join("rsyncd.log").display(),
        src = src.path().display(),
    );
    let daemon = StockDaemon::launch(rsync, dir, &conf);
    for case in &PULLS {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.port))
            .await
            .expect("connect");
        let log = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder {
            inner: stream,
            log: log.clone(),
        };
        let mut sink = MemSink::default();
        let o = tokio::time::timeout(
            Duration::from_secs(60),
            pull(rec, &pull_config(case), &mut sink),
        )
        .await
        .expect("recording timed out")
        .expect("live pull");
        check_run(case, &o, &sink);
        let records = std::mem::take(&mut *log.lock().expect("recorder lock"));
        let path = fixtures().join(case.file);
        fs::write(&path, encode_transcript(&header(case), &records)).expect("write fixture");
        replay_case(case);
        eprintln!("recorded {}", path.display());
    }
    drop(daemon);

    for case in &PUSHES {
        // A fresh module holding only the receiver's old copy of the delta file. Without
        // chroot a daemon munges symlinks unless told not to (a receiver running as root
        // with `use chroot = yes` keeps them verbatim anyway).
        let dst = tempfile::tempdir().expect("dst");
        fs::write(dst.path().join(DELTA_FILE), delta_basis()).expect("basis");
        let dir = tempfile::tempdir().expect("daemon dir");
        let conf = format!(
            "use chroot = no\n{ids}log file = {log}\n[{PUSH_MODULE}]\npath = {dst}\nread only = no\nmunge symlinks = no\n",
            log = dir.path().join("rsyncd.log").display(),
            dst = dst.path().display(),
        );
        let daemon = StockDaemon::launch(rsync, dir, &conf);
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.port))
            .await
            .expect("connect");
        let log = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder {
            inner: stream,
            log: log.clone(),
        };
        let entries = push_entries();
        let mut source = MemSource {
            entries: entries.clone(),
            messages: Vec::new(),
        };
        let o = tokio::time::timeout(
            Duration::from_secs(60),
            push(rec, &push_config(case), entries, &mut source),
        )
        .await
        .expect("recording timed out")
        .expect("live push");
        check_push(case, &o);
        // The daemon exits its connection after our goodbye; its files are complete.
        drop(daemon);
        assert_eq!(read_tree(dst.path()), expected_tree(), "{}", case.file);
        let records = std::mem::take(&mut *log.lock().expect("recorder lock"));
        let path = fixtures().join(case.file);
        fs::write(&path, encode_transcript(&header(case), &records)).expect("write fixture");
        replay_push_case(case);
        eprintln!("recorded {}", path.display());
    }
}

//! A hostile or broken rsync daemon (the agent's machine is not trusted). Each test runs a
//! scripted daemon on 127.0.0.1 that speaks the real daemon greeting and multiplexed
//! protocol 31, built from the crate's own encoders, and bends one rule; the client must
//! end with a typed error (or bounded state), never hang, never accept a short run.
//!
//! The scripted sender behaves as stock does unless told otherwise: it sorts its list as
//! the client does, answers each request with the file's content as literal data (or the
//! tokens a case scripts), echoes every phase DONE, sends its statistics and takes part
//! in the 31+ goodbye. A stock daemon covers the legitimate counterpart below 30.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{entry, is_root, StockDaemon};
use turku_proto_rsync::checksum::{ChecksumKind, FileHasher};
use turku_proto_rsync::codec::flist::{FlistEncoder, FlistOptions};
use turku_proto_rsync::codec::mux::{encode_data, encode_frame, MsgTag};
use turku_proto_rsync::codec::ndx::NdxCodec;
use turku_proto_rsync::codec::prim::{put_varint, put_varlong, put_vstring};
use turku_proto_rsync::codec::sums::SumHead;
use turku_proto_rsync::codec::token::{encode_block, encode_end, encode_literal};
use turku_proto_rsync::constants::*;
use turku_proto_rsync::io::{pull, PullConfig};
use turku_proto_rsync::session::demux::Demux;
use turku_proto_rsync::sort::sort_order;
use turku_proto_rsync::{
    DecodeError, Decoded, EntryAction, Error, FileEntry, Limits, MessageKind, Outcome, ReceiveSink,
    SinkError,
};

/// Every wait of a scripted daemon and of a pull is bounded by this.
const WAIT: Duration = Duration::from_secs(20);
const PROTOCOL: u32 = 31;
/// Varint list flags, checksum negotiation, seed fix, safe list, id0 names: as 3.2+.
const COMPAT: u32 = 0x1fe;
const SEED: i32 = 0x1234_5678;

// ------------------------------------------------------------------ the scripted daemon

/// How the scripted sender answers one request.
#[derive(Clone)]
enum Reply {
    /// The file's content as literal data, with the request's own sum head.
    Literal,
    /// `count` copies of basis block 0 (the client's basis must be given in `basis`).
    BlockFlood { count: usize, basis: Vec<u8> },
    /// The content, literally, under a sum head that is not the one requested.
    ForgedHead(SumHead),
}

#[derive(Clone)]
struct Script {
    /// The list in wire order; `contents` by name.
    list: Vec<FileEntry>,
    contents: HashMap<Vec<u8>, Vec<u8>>,
    motd_lines: usize,
    /// Warnings sent right after the list.
    warnings: usize,
    /// Send the three phase DONEs right behind the list, before any request.
    done_with_list: bool,
    /// Never answer requests (but echo the DONEs as stock does).
    ignore_requests: bool,
    reply: Reply,
}

impl Script {
    fn new(list: Vec<FileEntry>) -> Script {
        Script {
            list,
            contents: HashMap::new(),
            motd_lines: 1,
            warnings: 0,
            done_with_list: false,
            ignore_requests: false,
            reply: Reply::Literal,
        }
    }

    fn file(mut self, name: &str, content: &[u8]) -> Script {
        self.list.push(file(name, content.len()));
        self.contents
            .insert(name.as_bytes().to_vec(), content.to_vec());
        self
    }
}

/// What the daemon saw the client send before the multiplexed stream.
#[derive(Default, Debug)]
struct Seen {
    raw_bytes: usize,
}

struct Daemon {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(script: Script) -> Daemon {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let (sock, _) = listener.accept().expect("accept");
            sock.set_read_timeout(Some(WAIT)).expect("timeout");
            sock.set_write_timeout(Some(WAIT)).expect("timeout");
            let mut peer = Peer::new(sock, s2);
            // The client hanging up mid-script is what many cases expect: not a failure.
            let _ = peer.run(&script);
        });
        Daemon {
            port,
            seen,
            thread: Some(thread),
        }
    }

    async fn pull(&self, cfg: &PullConfig, sink: &mut MemSink) -> Result<Outcome, Error> {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        tokio::time::timeout(WAIT, pull(s, cfg, sink))
            .await
            .expect("the pull must end by itself")
    }

    fn raw_bytes_seen(mut self) -> usize {
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread");
        }
        let n = self.seen.lock().expect("lock").raw_bytes;
        n
    }
}

type R<T> = Result<T, String>;

struct Peer {
    sock: TcpStream,
    seen: Arc<Mutex<Seen>>,
    raw: Vec<u8>,
    demux: Demux,
    data: Vec<u8>,
    ndx_in: NdxCodec,
    ndx_out: NdxCodec,
}

impl Peer {
    fn new(sock: TcpStream, seen: Arc<Mutex<Seen>>) -> Peer {
        Peer {
            sock,
            seen,
            raw: Vec::new(),
            demux: Demux::new(Limits::default()),
            data: Vec::new(),
            ndx_in: NdxCodec::new(PROTOCOL),
            ndx_out: NdxCodec::new(PROTOCOL),
        }
    }

    fn read_raw(&mut self) -> R<()> {
        let mut buf = [0u8; 65536];
        let n = self.sock.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("client closed".into());
        }
        self.raw.extend_from_slice(&buf[..n]);
        self.seen.lock().expect("lock").raw_bytes += n;
        Ok(())
    }

    /// Raw bytes up to and including `end`.
    fn raw_until(&mut self, end: &[u8]) -> R<Vec<u8>> {
        loop {
            if let Some(i) = self.raw.windows(end.len()).position(|w| w == end) {
                return Ok(self.raw.drain(..i + end.len()).collect());
            }
            self.read_raw()?;
        }
    }

    fn raw_take(&mut self, n: usize) -> R<Vec<u8>> {
        while self.raw.len() < n {
            self.read_raw()?;
        }
        Ok(self.raw.drain(..n).collect())
    }

    fn write(&mut self, b: &[u8]) -> R<()> {
        self.sock.write_all(b).map_err(|e| e.to_string())
    }

    fn send_data(&mut self, d: &[u8]) -> R<()> {
        let mut o = Vec::new();
        for c in d.chunks(MAX_FRAME_PAYLOAD) {
            encode_data(c, &mut o);
        }
        self.write(&o)
    }

    /// Multiplexed data bytes from the client, at least `n`.
    fn need(&mut self, n: usize) -> R<()> {
        while self.data.len() < n {
            if self.raw.is_empty() {
                self.read_raw()?;
            }
            let raw = std::mem::take(&mut self.raw);
            let mut msgs = Vec::new();
            self.demux
                .push(&raw, &mut self.data, &mut msgs)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> R<Vec<u8>> {
        self.need(n)?;
        Ok(self.data.drain(..n).collect())
    }

    fn read_i32(&mut self) -> R<i32> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn read_ndx(&mut self) -> R<i32> {
        let mut want = 1;
        loop {
            self.need(want)?;
            let mut c = self.ndx_in.clone();
            match c.decode(&self.data).map_err(|e| e.to_string())? {
                Decoded::Complete { value, consumed } => {
                    self.ndx_in = c;
                    self.data.drain(..consumed);
                    return Ok(value);
                }
                Decoded::Incomplete { needed } => want = self.data.len() + needed.max(1),
            }
        }
    }

    fn ndx(&mut self, ndx: i32, out: &mut Vec<u8>) {
        self.ndx_out.encode(ndx, out);
    }

    fn run(&mut self, sc: &Script) -> R<()> {
        // Greeting, module, MOTD, OK, argv, compat flags, checksum lists, seed.
        self.write(format!("{RSYNCD_PREFIX}{PROTOCOL}.0\n").as_bytes())?;
        self.raw_until(b"\n")?;
        self.raw_until(b"\n")?;
        let mut text = String::new();
        for i in 0..sc.motd_lines {
            text.push_str(&format!("motd line {i}\n"));
        }
        text.push_str(RSYNCD_OK);
        text.push('\n');
        self.write(text.as_bytes())?;
        self.raw_until(b"\0\0")?;
        let mut o = Vec::new();
        put_varint(&mut o, COMPAT as i32);
        put_vstring(&mut o, b"xxh128");
        o.extend_from_slice(&SEED.to_le_bytes());
        self.write(&o)?;
        let n = self.raw_take(1)?[0] as usize;
        self.raw_take(n)?;
        // Multiplexed from here: the client's filter list, then our file list.
        while self.read_i32()? != 0 {}
        let mut enc = FlistEncoder::new(FlistOptions::archive(PROTOCOL, COMPAT, false));
        let mut d = Vec::new();
        for e in &sc.list {
            enc.encode(e, &mut d);
        }
        enc.encode_end(0, &mut d);
        let mut phase = 0;
        if sc.done_with_list {
            // In the same write as the list, so the client reads them together.
            for _ in 0..3 {
                self.ndx_out.encode(NDX_DONE, &mut d);
            }
            phase = 3;
        }
        let mut o = Vec::new();
        encode_data(&d, &mut o);
        for i in 0..sc.warnings {
            encode_frame(MsgTag::Warning, format!("warning {i}\n").as_bytes(), &mut o);
        }
        self.write(&o)?;
        let order = sort_order(&sc.list, PROTOCOL);
        let sorted: Vec<&FileEntry> = order.iter().map(|&w| &sc.list[w]).collect();
        while phase < 3 {
            let ndx = self.read_ndx()?;
            if ndx == NDX_DONE {
                phase += 1;
                let mut o = Vec::new();
                self.ndx(NDX_DONE, &mut o);
                self.send_data(&o)?;
                continue;
            }
            let b = self.take(2)?;
            let iflags = u16::from_le_bytes([b[0], b[1]]);
            let hb = self.take(16)?;
            let head = match SumHead::decode(&hb, PROTOCOL, 16, &Limits::default()) {
                Ok(Decoded::Complete { value, .. }) => value,
                other => return Err(format!("bad sum head {other:?}")),
            };
            self.take(head.count as usize * (4 + head.s2length as usize))?;
            if sc.ignore_requests || iflags & ITEM_TRANSFER == 0 {
                continue;
            }
            let e = sorted[ndx as usize];
            let content = sc.contents.get(&e.name).cloned().unwrap_or_default();
            let mut o = Vec::new();
            self.ndx(ndx, &mut o);
            o.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
            let mut hasher = FileHasher::new(ChecksumKind::Xxh128, SEED);
            match &sc.reply {
                Reply::Literal => {
                    head.encode(PROTOCOL, &mut o);
                    encode_literal(&content, &mut o);
                    hasher.update(&content);
                }
                Reply::ForgedHead(forged) => {
                    forged.encode(PROTOCOL, &mut o);
                    encode_literal(&content, &mut o);
                    hasher.update(&content);
                }
                Reply::BlockFlood { count, basis } => {
                    head.encode(PROTOCOL, &mut o);
                    let block = &basis[..head.block_len(0) as usize];
                    for _ in 0..*count {
                        encode_block(0, &mut o);
                        hasher.update(block);
                    }
                }
            }
            encode_end(&mut o);
            o.extend_from_slice(&hasher.finish());
            self.send_data(&o)?;
        }
        // End of the run as a stock sender: statistics, then the 31+ goodbye round.
        let mut o = Vec::new();
        for v in [100i64, 200, 300, 1, 1] {
            put_varlong(&mut o, v, 3);
        }
        self.send_data(&o)?;
        if self.read_ndx()? != NDX_DONE {
            return Err("expected the extra DONE".into());
        }
        let mut o = Vec::new();
        self.ndx(NDX_DONE, &mut o);
        self.send_data(&o)?;
        self.read_ndx()?;
        Ok(())
    }
}

// ------------------------------------------------------------------ entries and the sink

fn root() -> FileEntry {
    entry(".", S_IFDIR | 0o755, 0)
}

fn dir(name: &str) -> FileEntry {
    entry(name, S_IFDIR | 0o755, 0)
}

fn file(name: &str, size: usize) -> FileEntry {
    entry(name, S_IFREG | 0o644, size as i64)
}

fn symlink(name: &str, target: &[u8]) -> FileEntry {
    FileEntry {
        symlink: Some(target.to_vec()),
        ..entry(name, S_IFLNK | 0o777, target.len() as i64)
    }
}

#[derive(Default)]
struct MemSink {
    files: HashMap<String, Vec<u8>>,
    current: Vec<u8>,
    seen: Vec<String>,
    messages: usize,
    /// Offered as the basis of every file.
    basis: Option<Vec<u8>>,
}

impl ReceiveSink for MemSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, _: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        self.seen.push(e.name_lossy());
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, _: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(self.basis.clone())
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        self.current.clear();
        Ok(())
    }
    fn content(&mut self, d: &[u8]) -> Result<(), SinkError> {
        self.current.extend_from_slice(d);
        Ok(())
    }
    fn end_content(&mut self, _: u32, e: &FileEntry, ok: bool) -> Result<(), SinkError> {
        if ok {
            self.files
                .insert(e.name_lossy(), std::mem::take(&mut self.current));
        }
        Ok(())
    }
    fn message(&mut self, _: MessageKind, _: &str) {
        self.messages += 1;
    }
}

fn config() -> PullConfig {
    let mut c = PullConfig::new("mod");
    c.protocol = PROTOCOL + 1;
    c.user = "backup".into();
    c
}

async fn run(script: Script, cfg: &PullConfig, sink: &mut MemSink) -> Result<Outcome, Error> {
    let d = Daemon::start(script);
    let r = d.pull(cfg, sink).await;
    d.raw_bytes_seen();
    r
}

// ------------------------------------------------------------------ the cases

/// The scripted daemon itself is sound: a faithful run succeeds.
#[tokio::test]
async fn faithful_scripted_daemon_succeeds() {
    let sc = Script::new(vec![root(), dir("d")])
        .file("d/one", b"first file")
        .file("two", b"second");
    let mut sink = MemSink::default();
    let o = run(sc, &config(), &mut sink).await.expect("pull");
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert_eq!(sink.files["d/one"], b"first file");
    assert_eq!(sink.files["two"], b"second");
}

/// Item 9: the sender closes every phase before the client has closed phase 0 (a DONE
/// it cannot have echoed): the run must not end as a success with a truncated list (the
/// client would not even have decided the entries).
#[tokio::test]
async fn done_before_the_client_closed_its_phase_is_refused() {
    let mut sc = Script::new(vec![root()])
        .file("a", b"aaa")
        .file("b", b"bbb");
    sc.done_with_list = true;
    let mut sink = MemSink::default();
    let r = run(sc, &config(), &mut sink).await;
    assert!(
        matches!(&r, Err(Error::Protocol(m)) if m.contains("ended phase 0 before we did")),
        "{r:?}"
    );
}

/// Item 9: the sender echoes the DONEs but never sends the requested files and never
/// says why (no MSG_NO_SEND, no io_error).
#[tokio::test]
async fn requested_files_never_sent_fail_the_run() {
    let mut sc = Script::new(vec![root()])
        .file("a", b"aaa")
        .file("b", b"bbb");
    sc.ignore_requests = true;
    let mut sink = MemSink::default();
    let r = run(sc, &config(), &mut sink).await;
    match r {
        Err(Error::Incomplete { missing, first }) => {
            assert_eq!((missing, first.as_str()), (2, "a"));
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
}

/// Item 10: basis block 0, named again and again by 4-byte tokens, rebuilds far more than
/// the announced size: refused before the basis is read past the bound.
#[tokio::test]
async fn block_token_flood_is_capped() {
    let basis = vec![7u8; 2100];
    let mut sc = Script::new(vec![root()]).file("small", b"0123456789");
    sc.reply = Reply::BlockFlood {
        count: 4000,
        basis: basis.clone(),
    };
    let mut sink = MemSink {
        basis: Some(basis),
        ..MemSink::default()
    };
    let r = run(sc, &config(), &mut sink).await;
    match r {
        Err(Error::RebuiltTooLarge {
            name,
            announced,
            max,
        }) => {
            assert_eq!((name.as_str(), announced), ("small", 10));
            // Twice the larger of the announced and the basis size, plus the slack.
            assert_eq!(max, 2 * 2100 + (1 << 20));
        }
        other => panic!("expected RebuiltTooLarge, got {other:?}"),
    }
    assert!(
        sink.current.len() as u64 <= 2 * 2100 + (1 << 20),
        "{}",
        sink.current.len()
    );
}

/// Item 10, the legitimate side: a file that grew between listing and sending (a log,
/// a dump being written) is still received, however much it grew: its new bytes arrive
/// as literals, which cost the sender their size on the wire and are not capped.
#[tokio::test]
async fn file_grown_after_listing_is_received() {
    let mut sc = Script::new(vec![root()]).file("log", b"x");
    let grown = vec![b'y'; 3 << 20];
    sc.contents.insert(b"log".to_vec(), grown.clone());
    let mut sink = MemSink::default();
    let o = run(sc, &config(), &mut sink).await.expect("pull");
    assert_eq!(o.exit_code, 0);
    assert_eq!(sink.files["log"], grown);
}

/// Item 10: the sender answers with a sum head of its own choosing (one block spanning
/// the whole basis) instead of echoing ours.
#[tokio::test]
async fn forged_sum_head_is_refused() {
    let basis = vec![3u8; 2100];
    let mut sc = Script::new(vec![root()]).file("f", b"0123456789");
    sc.reply = Reply::ForgedHead(SumHead {
        count: 1,
        blength: 2100,
        s2length: 2,
        remainder: 0,
    });
    let mut sink = MemSink {
        basis: Some(basis),
        ..MemSink::default()
    };
    let r = run(sc, &config(), &mut sink).await;
    assert!(
        matches!(&r, Err(Error::Protocol(m)) if m.contains("sum head")),
        "{r:?}"
    );
}

/// Item 10: a symlink `a` followed by `a/x`: a sink writing `a/x` would write through the
/// link.
#[tokio::test]
async fn entry_below_a_symlink_is_refused() {
    let sc = Script::new(vec![root(), symlink("a", b"/etc")]).file("a/x", b"owned");
    let mut sink = MemSink::default();
    let r = run(sc, &config(), &mut sink).await;
    assert!(
        matches!(
            &r,
            Err(Error::Decode(DecodeError::BadName { reason })) if reason.contains("parent")
        ),
        "{r:?}"
    );
    assert!(sink.seen.is_empty(), "{:?}", sink.seen);
}

/// Item 10: an entry whose parent is not in the list at all (or is a regular file).
#[tokio::test]
async fn entry_below_an_unlisted_or_regular_parent_is_refused() {
    for (list, child) in [
        (vec![root(), file("p", 1)], "p/x"),
        (vec![root(), dir("d")], "d/e/f"),
        (vec![root(), dir("d"), file("d/q", 1)], "d/q/x"),
        (vec![root()], "nowhere/x"),
    ] {
        let sc = Script::new(list).file(child, b"z");
        let r = run(sc, &config(), &mut MemSink::default()).await;
        assert!(
            matches!(&r, Err(Error::Decode(DecodeError::BadName { .. }))),
            "{child}: {r:?}"
        );
    }
}

/// Item 8: the list's estimated memory is bounded, not just its entry count: long symlink
/// targets make few entries expensive.
#[tokio::test]
async fn file_list_over_its_byte_bound_is_refused() {
    let mut list = vec![root()];
    for i in 0..1000 {
        list.push(symlink(&format!("l{i:04}"), &[b't'; 4000]));
    }
    let sc = Script::new(list);
    let mut cfg = config();
    cfg.limits = Limits {
        max_file_list_bytes: 1 << 20,
        ..Limits::default()
    };
    let r = run(sc, &cfg, &mut MemSink::default()).await;
    assert!(
        matches!(
            &r,
            Err(Error::Decode(DecodeError::FileListTooBig { max })) if *max == 1 << 20
        ),
        "{r:?}"
    );
}

/// Item 8: a flood of warnings is counted, not kept or passed on; the run still succeeds.
#[tokio::test]
async fn warning_flood_is_bounded() {
    let mut sc = Script::new(vec![root()]).file("a", b"a");
    sc.warnings = 5000;
    let mut sink = MemSink::default();
    let o = run(sc, &config(), &mut sink).await.expect("pull");
    let kept = Limits::default().max_messages_kept;
    assert_eq!(o.warnings.len(), kept);
    assert_eq!(sink.messages, kept);
    assert_eq!(o.messages_dropped, 5000 - kept as u64);
    assert_eq!(o.warnings[0], "warning 0");
}

/// Item 8: a flood of MOTD lines is counted, not kept.
#[tokio::test]
async fn motd_flood_is_bounded() {
    let mut sc = Script::new(vec![root()]).file("a", b"a");
    sc.motd_lines = 3000;
    let o = run(sc, &config(), &mut MemSink::default())
        .await
        .expect("pull");
    let kept = Limits::default().max_motd_lines;
    assert_eq!(o.motd.len(), kept);
    assert_eq!(o.motd_dropped, 3000 - kept as u64);
}

/// Item 10: a module, path or user name holding a line or argument separator is refused
/// before a single byte goes out.
#[tokio::test]
async fn separators_in_names_are_refused_before_sending() {
    for (module, path, user) in [
        ("mod\n#evil", "", "backup"),
        ("mod", "sub\0--delete", "backup"),
        ("mod", "", "backup\nother"),
        ("mod", "a\nb", "backup"),
    ] {
        let d = Daemon::start(Script::new(vec![root()]));
        let mut cfg = config();
        cfg.module = module.into();
        cfg.path = path.into();
        cfg.user = user.into();
        let r = d.pull(&cfg, &mut MemSink::default()).await;
        assert!(
            matches!(&r, Err(Error::BadArgument { .. })),
            "{module:?} {path:?} {user:?}: {r:?}"
        );
        // The daemon sees the client hang up without a byte.
        assert_eq!(d.raw_bytes_seen(), 0, "{module:?} {path:?} {user:?}");
    }
}

// ------------------------------------------------------------------ stock rsync below 30

/// Below protocol 30 a stock sender says nothing about a file that vanished after listing
/// (no notice, no warning, no io_error): the file is named as not sent and the run counts
/// as one with vanished files (24), never a silent 0, and never a failed backup for a
/// file a live system removed.
#[tokio::test]
async fn stock_vanished_file_below_protocol_30_is_a_vanished_file() {
    for protocol in [28, 29] {
        let src = tempfile::tempdir().expect("src");
        std::fs::write(src.path().join("a-stays"), b"a").expect("write");
        std::fs::write(src.path().join("b-goes"), b"b").expect("write");
        let d = StockDaemon::start(src.path());
        let victim = src.path().join("b-goes");
        let mut sink = VanishSink {
            inner: MemSink::default(),
            victim,
        };
        let s = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
            .await
            .expect("connect");
        let mut cfg = PullConfig::new("pub");
        cfg.protocol = protocol;
        let o = tokio::time::timeout(WAIT, pull(s, &cfg, &mut sink))
            .await
            .expect("bounded")
            .unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));
        assert_eq!(o.exit_code, RERR_VANISHED, "{protocol}: {o:?}");
        assert!(o.is_success());
        assert_eq!(o.failed, ["b-goes"]);
        assert!(o.warnings.iter().any(|w| w.contains("b-goes")), "{o:?}");
        assert_eq!(sink.inner.files["a-stays"], b"a");
    }
}

/// Deletes the victim once its entry is decided, before it is requested.
struct VanishSink {
    inner: MemSink,
    victim: PathBuf,
}

impl ReceiveSink for VanishSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, ndx: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        if e.name == b"b-goes" {
            std::fs::remove_file(&self.victim)?;
        }
        self.inner.entry(ndx, e)
    }
    fn basis(&mut self, ndx: u32, e: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        self.inner.basis(ndx, e)
    }
    fn begin_content(&mut self, ndx: u32, e: &FileEntry) -> Result<(), SinkError> {
        self.inner.begin_content(ndx, e)
    }
    fn content(&mut self, d: &[u8]) -> Result<(), SinkError> {
        self.inner.content(d)
    }
    fn end_content(&mut self, ndx: u32, e: &FileEntry, ok: bool) -> Result<(), SinkError> {
        self.inner.end_content(ndx, e, ok)
    }
}

impl StockDaemon {
    fn start(src: &Path) -> StockDaemon {
        let rsync = Path::new("/usr/bin/rsync");
        assert!(
            rsync.exists(),
            "stock rsync is required: run `apt-get install -y rsync`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // As root the daemon would drop to nobody, who cannot read a private tempdir.
        let ids = if is_root() { "uid = 0\ngid = 0\n" } else { "" };
        let conf = format!(
            "use chroot = no\n{ids}[pub]\npath = {}\nread only = yes\n",
            src.display()
        );
        StockDaemon::launch(rsync, dir, &conf)
    }
}

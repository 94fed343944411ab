//! The driver's time bounds against hostile peers written here: one that accepts and says
//! nothing, one that stalls mid-transfer while reading our keep-alives, one that trickles a
//! byte at a time just under the inactivity timeout, and an honest one that is slow only
//! while we are busy with local work (no false timeout). Every test is bounded by an outer
//! timeout, so a missing bound fails instead of hanging.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::entry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use turku_proto_rsync::codec::flist::{FlistEncoder, FlistOptions};
use turku_proto_rsync::codec::mux::{encode_data, encode_frame, MsgTag};
use turku_proto_rsync::codec::ndx::NdxCodec;
use turku_proto_rsync::codec::prim::{put_i32, put_varint, put_varlong};
use turku_proto_rsync::constants::{NDX_DONE, S_IFDIR, S_IFREG};
use turku_proto_rsync::io::{pull, pull_tcp, PullConfig};
use turku_proto_rsync::{
    EntryAction, Error, FileEntry, MessageKind, Outcome, ReceiveSink, SinkError, Timeout, Timeouts,
};

/// The protocol the fake daemons speak: multiplexed, without varint flags (no checksum
/// negotiation to script).
const PROTOCOL: u32 = 31;
/// Longest any test may run before it counts as hung.
const TEST_BOUND: Duration = Duration::from_secs(20);

/// Takes every regular file; its `message` callback can stand for slow local work.
#[derive(Default)]
struct TestSink {
    message_work: Duration,
    messages: Vec<String>,
}

impl ReceiveSink for TestSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, _: u32, _: &FileEntry) -> Result<EntryAction, SinkError> {
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, _: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(None)
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        Ok(())
    }
    fn content(&mut self, _: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    fn end_content(&mut self, _: u32, _: &FileEntry, _: bool) -> Result<(), SinkError> {
        Ok(())
    }
    fn message(&mut self, _: MessageKind, text: &str) {
        // Blocking on purpose: this is the driver's task doing local work.
        std::thread::sleep(self.message_work);
        self.messages.push(text.to_owned());
    }
}

fn config(timeouts: Timeouts) -> PullConfig {
    let mut c = PullConfig::new("m");
    c.timeouts = timeouts;
    c
}

/// Greeting, `OK`, compat flags and seed: everything up to the multiplexed stream.
fn daemon_setup() -> Vec<u8> {
    let mut b = format!("@RSYNCD: {PROTOCOL}.0\n@RSYNCD: OK\n").into_bytes();
    put_varint(&mut b, 0);
    put_i32(&mut b, 1);
    b
}

/// A file list of `.` plus `files`, as one data frame.
fn file_list(files: &[FileEntry]) -> Vec<u8> {
    let mut enc = FlistEncoder::new(FlistOptions::archive(PROTOCOL, 0, false));
    let mut data = Vec::new();
    enc.encode(&entry(".", S_IFDIR | 0o755, 4096), &mut data);
    for f in files {
        enc.encode(f, &mut data);
    }
    enc.encode_end(0, &mut data);
    let mut raw = Vec::new();
    encode_data(&data, &mut raw);
    raw
}

/// `NDX_DONE` in a data frame of its own.
fn done_frame() -> Vec<u8> {
    let mut done = Vec::new();
    NdxCodec::new(PROTOCOL).encode(NDX_DONE, &mut done);
    let mut frame = Vec::new();
    encode_data(&done, &mut frame);
    frame
}

/// A sender's end of a run in which nothing was requested: it answers each of the
/// client's three phase DONEs with its own, then sends its stats and the final DONE.
async fn end_run<R, W>(rd: &mut R, wr: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let done = done_frame();
    let mut seen = Vec::new();
    for phase in 1..=3 {
        read_until_count(rd, &mut seen, &done, phase).await?;
        wr.write_all(&done).await?;
    }
    let mut d = Vec::new();
    for v in [0i64, 0, 0, 0, 0] {
        put_varlong(&mut d, v, 3);
    }
    NdxCodec::new(PROTOCOL).encode(NDX_DONE, &mut d);
    let mut raw = Vec::new();
    encode_data(&d, &mut raw);
    wr.write_all(&raw).await
}

/// An empty data frame: the keep-alive of protocol 31 and later, from either side.
fn keepalive_frame() -> Vec<u8> {
    let mut f = Vec::new();
    encode_frame(MsgTag::Data, &[], &mut f);
    f
}

/// Reads from `rd`, appending to `seen`, until `seen` holds `count` copies of `pattern`.
async fn read_until_count<R: AsyncRead + Unpin>(
    rd: &mut R,
    seen: &mut Vec<u8>,
    pattern: &[u8],
    count: usize,
) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    while seen
        .windows(pattern.len())
        .filter(|w| *w == pattern)
        .count()
        < count
    {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Reads everything the client sends until it goes away.
fn drain<R: AsyncRead + Unpin + Send + 'static>(mut rd: R) -> Arc<Mutex<Vec<u8>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    got
}

/// How many empty data frames (keep-alives) `bytes` holds.
fn keepalives_in(bytes: &[u8]) -> usize {
    let empty = keepalive_frame();
    bytes.windows(empty.len()).filter(|w| *w == empty).count()
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("the pull was not ended by its own time bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_accepts_and_says_nothing_hits_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        // Keep the connection open and silent until the client gives up.
        let mut sock = sock;
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let cfg = config(Timeouts {
        io: Some(Duration::from_secs(600)),
        connect: Some(Duration::from_secs(1)),
        deadline: None,
    });
    let started = std::time::Instant::now();
    let r = bounded(pull_tcp("127.0.0.1", port, &cfg, &mut TestSink::default())).await;
    match r {
        Err(Error::Timeout(t @ Timeout::Greeting(d))) => {
            assert_eq!(d, Duration::from_secs(1));
            assert!(
                t.to_string()
                    .contains("greeting and authentication within 1 s"),
                "{t}"
            );
        }
        other => panic!("expected the greeting timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    bounded(holder).await.unwrap();
}

/// The same bound on a stream we did not connect (an SSH channel, a pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_is_bounded_on_any_stream() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (rd, mut wr) = tokio::io::split(server);
    let _got = drain(rd);
    // A greeting and then a MOTD that never ends, one line at a time.
    let talker = tokio::spawn(async move {
        wr.write_all(b"@RSYNCD: 31.0\n").await?;
        loop {
            wr.write_all(b"still here\n").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let cfg = config(Timeouts {
        io: Some(Duration::from_secs(600)),
        connect: Some(Duration::from_secs(1)),
        deadline: None,
    });
    let r = bounded(pull(client, &cfg, &mut TestSink::default())).await;
    assert!(
        matches!(r, Err(Error::Timeout(Timeout::Greeting(_)))),
        "{r:?}"
    );
    assert!(
        bounded(talker).await.unwrap().is_err(),
        "the talker saw us go"
    );
}

/// The daemon sends its file list, reads our requests (and keep-alives) and never answers:
/// our keep-alives move bytes but are not data, so the inactivity timeout fires. The
/// keep-alive interval is a small fraction of the timeout, so several flow even on a busy
/// machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_stalls_mid_transfer_hits_the_inactivity_timeout() {
    const IDLE: Duration = Duration::from_secs(2);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (rd, mut wr) = tokio::io::split(server);
    let got = drain(rd);
    let mut script = daemon_setup();
    script.extend(file_list(&[entry("f", S_IFREG | 0o644, 5)]));
    wr.write_all(&script).await.unwrap();
    let mut cfg = config(Timeouts {
        io: Some(IDLE),
        connect: None,
        deadline: None,
    });
    cfg.keepalive = Duration::from_millis(150);
    let started = std::time::Instant::now();
    let r = bounded(pull(client, &cfg, &mut TestSink::default())).await;
    match r {
        Err(Error::Timeout(t @ Timeout::Idle(d))) => {
            assert_eq!(d, IDLE);
            assert_eq!(t.to_string(), "no data from the rsync daemon for 2 s");
        }
        other => panic!("expected the inactivity timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= IDLE);
    // Keep-alives did flow meanwhile; the drain may still be catching up, so wait for it
    // (bounded) rather than for a fixed time.
    let seen_by = std::time::Instant::now() + Duration::from_secs(5);
    while keepalives_in(&got.lock().unwrap()) < 2 && std::time::Instant::now() < seen_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = got.lock().unwrap().clone();
    assert!(keepalives_in(&sent) >= 2, "{sent:?}");
    drop(wr);
}

/// The daemon sends its file list, then one byte of a keep-alive frame every 500 ms
/// forever: always well under the 3 s inactivity timeout, so only the overall deadline of
/// 6 s ends it (without the trickle, the inactivity timeout would have fired 3 s earlier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_daemon_hits_the_overall_deadline() {
    const TRICKLE: Duration = Duration::from_millis(500);
    const IDLE: Duration = Duration::from_secs(3);
    const DEADLINE: Duration = Duration::from_secs(6);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (rd, mut wr) = tokio::io::split(server);
    let _got = drain(rd);
    let mut script = daemon_setup();
    script.extend(file_list(&[entry("f", S_IFREG | 0o644, 5)]));
    let trickler = tokio::spawn(async move {
        wr.write_all(&script).await?;
        for b in keepalive_frame().iter().cycle() {
            tokio::time::sleep(TRICKLE).await;
            wr.write_all(std::slice::from_ref(b)).await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let cfg = config(Timeouts {
        io: Some(IDLE),
        connect: Some(IDLE),
        deadline: Some(DEADLINE),
    });
    let started = std::time::Instant::now();
    let r = bounded(pull(client, &cfg, &mut TestSink::default())).await;
    match r {
        Err(Error::Timeout(t @ Timeout::Deadline(d))) => {
            assert_eq!(d, DEADLINE);
            assert!(t.to_string().contains("deadline of 6 s"), "{t}");
        }
        other => panic!("expected the overall deadline, got {other:?}"),
    }
    assert!(started.elapsed() >= DEADLINE);
    assert!(
        bounded(trickler).await.unwrap().is_err(),
        "the trickler saw us go"
    );
}

/// The daemon pauses 4.3 s while our sink spends 4 s on one message: the peer was silent
/// for more than twice the 2 s timeout, but we waited on it for only 0.3 s of that. Time
/// spent on local work is not the peer's stall, so the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_work_does_not_count_as_the_peer_stalling() {
    const WORK: Duration = Duration::from_secs(4);
    const IDLE: Duration = Duration::from_secs(2);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(server);
    let peer = tokio::spawn(async move {
        wr.write_all(&daemon_setup()).await?;
        // Wait for the client's (empty) filter list, so the message below arrives when the
        // client has nothing left to send: only reading can end its wait.
        let mut filters = Vec::new();
        encode_data(&0i32.to_le_bytes(), &mut filters);
        read_until_count(&mut rd, &mut Vec::new(), &filters, 1).await?;
        let mut msg = Vec::new();
        encode_frame(MsgTag::Info, b"scanning\n", &mut msg);
        wr.write_all(&msg).await?;
        tokio::time::sleep(WORK + Duration::from_millis(300)).await;
        wr.write_all(&file_list(&[])).await?;
        end_run(&mut rd, &mut wr).await?;
        let mut buf = [0u8; 1024];
        while rd.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    });
    let cfg = config(Timeouts {
        io: Some(IDLE),
        connect: Some(Duration::from_secs(5)),
        deadline: Some(Duration::from_secs(15)),
    });
    let mut sink = TestSink {
        message_work: WORK,
        ..TestSink::default()
    };
    let r: Result<Outcome, Error> = bounded(pull(client, &cfg, &mut sink)).await;
    let outcome = r.unwrap_or_else(|e| panic!("false timeout: {e}"));
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(sink.messages, ["scanning\n"]);
    bounded(peer).await.unwrap().unwrap();
}

/// The bounds are reported as transient: the storage daemon retries such a source later.
#[test]
fn timeouts_are_transient() {
    for t in [
        Timeout::Connect(Duration::from_secs(1)),
        Timeout::Greeting(Duration::from_secs(1)),
        Timeout::Idle(Duration::from_secs(1)),
        Timeout::Deadline(Duration::from_secs(1)),
    ] {
        assert!(Error::from(t).is_transient(), "{t}");
    }
}

/// The defaults every caller gets: stock rsync's 600 s would be `--timeout=600`.
#[test]
fn library_defaults() {
    let cfg = PullConfig::new("m");
    assert_eq!(cfg.timeouts.io, Some(Duration::from_secs(600)));
    assert!(cfg.timeouts.connect.is_some());
    assert_eq!(cfg.timeouts.deadline, None);
}

/// A pull configuration may be logged: its password must not show, as text or as bytes.
#[test]
fn pull_config_debug_hides_the_password() {
    let mut cfg = PullConfig::new("m");
    cfg.password = Some(b"Zx9-secret".to_vec().into());
    let shown = format!("{cfg:?} {cfg:#?}");
    let as_list = format!("{:?}", b"Zx9-secret".to_vec());
    assert!(!shown.contains("Zx9-secret"), "{shown}");
    assert!(!shown.contains(&as_list[1..as_list.len() - 1]), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

//! Recorded conversations (tests/fixtures/README.md): the transcript format, a stream that
//! records one, and the replay of our client's machines over its server chunks.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::handshake::{
    ClientHandshake, HandshakeOptions, HandshakeStatus, Negotiated,
};
use turku_proto_rsync::session::receiver::{ClientReceiver, ReceiverOptions, Status};
use turku_proto_rsync::session::sender::{ClientSender, SendSource, Status as SendStatus};
use turku_proto_rsync::{Error, Limits, Outcome, PushOutcome, ReceiveSink, Secret};

/// First line of every transcript: format version, then the case it records.
pub const MAGIC: &str = "turku-rsync-transcript 1";

/// Which way a recorded chunk went, as our client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
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

pub type Records = Vec<(Dir, Vec<u8>)>;

pub fn encode_transcript(header: &str, records: &Records) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    for (dir, bytes) in records {
        out.push(dir.byte());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

pub fn decode_transcript(raw: &[u8], header: &str) -> Records {
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

/// A fixture's bytes; a missing one says how to record it (`capture` is the command).
pub fn read_fixture(path: &Path, capture: &str) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}; record it with {capture}", path.display()))
}

/// Everything our machines wrote must be what our client wrote when it was recorded.
pub fn assert_same_output(file: &str, ours: &[u8], records: &Records) {
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
            "{file}: our output differs from the recording at byte {at} (ours {} bytes, recorded {}): \
             ours {} recorded {}",
            ours.len(),
            recorded.len(),
            show(ours),
            show(&recorded)
        );
    }
}

/// Where the handshake left a replay: the session's terms, what we wrote so far, server
/// input already read past the handshake, and the server chunks not yet fed.
pub struct Handshaken<'r> {
    pub neg: Negotiated,
    pub ours: Vec<u8>,
    pub inbuf: Vec<u8>,
    pub chunks: std::vec::IntoIter<&'r [u8]>,
}

/// Runs our handshake with `args` over the recorded server chunks, one feed a chunk. A
/// refusal returns its error and what we wrote, once every recorded server byte was read.
pub fn replay_handshake<'r>(
    args: ServerArgs,
    protocol: u32,
    user: &str,
    password: Option<Secret>,
    records: &'r Records,
) -> Result<Handshaken<'r>, (Error, Vec<u8>)> {
    let mut hs = ClientHandshake::new(HandshakeOptions {
        args,
        protocol,
        user: user.to_owned(),
        password,
        limits: Limits::default(),
    })
    .expect("handshake");
    let mut chunks = records
        .iter()
        .filter(|(d, _)| *d == Dir::Server)
        .map(|(_, b)| b.as_slice())
        .collect::<Vec<_>>()
        .into_iter();
    let mut ours = hs.take_output();
    let mut inbuf = Vec::new();
    let neg = loop {
        let fed = hs.feed(&inbuf);
        ours.extend(hs.take_output());
        match fed {
            Err(e) => {
                assert_eq!(chunks.len(), 0, "server bytes left after the refusal");
                return Err((e, ours));
            }
            Ok((used, st)) => {
                inbuf.drain(..used);
                if let HandshakeStatus::Done(n) = st {
                    break n;
                }
            }
        }
        let chunk = chunks
            .next()
            .expect("transcript ended during the handshake");
        inbuf.extend_from_slice(chunk);
    };
    Ok(Handshaken {
        neg,
        ours,
        inbuf,
        chunks,
    })
}

/// Drives the receiver or sender `$make` builds from the session's terms (they share the
/// feed/step/take_output shape but no trait) over the recorded chunks, one feed and one
/// step a chunk as the tokio driver does, and checks the transcript ends with the run.
/// Yields the outcome and everything we wrote.
macro_rules! drive {
    ($h:expr, $make:expr, $side:expr, $status:ident) => {{
        let Handshaken {
            neg,
            mut ours,
            inbuf,
            mut chunks,
        } = $h;
        let side = $side;
        let mut machine = $make(neg);
        machine.feed(&inbuf).expect("feed");
        let outcome = loop {
            let st = machine.step(side).expect("step");
            ours.extend(machine.take_output());
            if let $status::Finished(o) = st {
                break *o;
            }
            while machine.has_local_work() {
                if let $status::Finished(o) = machine.step(side).expect("step") {
                    ours.extend(machine.take_output());
                    panic!("finished during local work: {o:?}");
                }
                ours.extend(machine.take_output());
            }
            let chunk = chunks.next().expect("transcript ended before the run did");
            machine.feed(chunk).expect("feed");
        };
        assert_eq!(chunks.len(), 0, "server bytes left over after the run");
        (outcome, ours)
    }};
}

/// Runs our receiver over the rest of the server chunks as the tokio driver does (one
/// feed and one step a chunk, more steps while it has local work) and returns the
/// outcome and all we wrote, handshake included.
pub fn replay_receiver<K: ReceiveSink>(
    h: Handshaken<'_>,
    options: ReceiverOptions,
    sink: &mut K,
) -> (Outcome, Vec<u8>) {
    let receiver = |neg| ClientReceiver::<K>::new(neg, options);
    drive!(h, receiver, sink, Status)
}

/// As [`replay_receiver`], for our sender (a push) that `sender` makes from the session's
/// terms.
pub fn replay_sender<S: SendSource>(
    h: Handshaken<'_>,
    sender: impl FnOnce(Negotiated) -> ClientSender<S>,
    source: &mut S,
) -> (PushOutcome, Vec<u8>) {
    drive!(h, sender, source, SendStatus)
}

/// A stream that logs every chunk our client reads and writes, in order.
pub struct Recorder<T> {
    inner: T,
    log: Arc<Mutex<Records>>,
}

impl<T> Recorder<T> {
    /// Wraps `inner`; the returned log fills as the stream is used.
    pub fn new(inner: T) -> (Recorder<T>, Arc<Mutex<Records>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Recorder {
                inner,
                log: log.clone(),
            },
            log,
        )
    }

    fn push(&self, dir: Dir, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.log
                .lock()
                .expect("recorder lock")
                .push((dir, bytes.to_vec()));
        }
    }
}

/// What a [`Recorder`] logged so far, taken out of the log.
pub fn take_records(log: &Mutex<Records>) -> Records {
    std::mem::take(&mut *log.lock().expect("recorder lock"))
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

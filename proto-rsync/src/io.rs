//! Thin tokio adapter: drives the sans-io machines over any `AsyncRead + AsyncWrite`
//! (TCP socket, SSH channel, child pipes). The only I/O in the crate.
//!
//! Reads and writes are awaited in one `select!`, so input is consumed while output waits
//! for the peer: the receive side never stalls behind the generator (spec §9.1). The sink
//! is called synchronously from this task; a slow sink slows the transfer, never deadlocks it.
//!
//! Every wait on the connection is bounded by [`Timeouts`]: the inactivity clock runs only
//! while this task waits on the peer, so local work (the sink, checksumming a basis) never
//! counts as the peer's silence.

use crate::config::{Secret, Timeouts};
use crate::error::{Error, Timeout};
use crate::limits::Limits;
use crate::session::args::ServerArgs;
use crate::session::handshake::{ClientHandshake, HandshakeOptions, HandshakeStatus, Negotiated};
use crate::session::receiver::{ClientReceiver, ReceiverOptions, Status, READ_CHUNK};
use crate::session::sender::{
    ClientSender, PushOutcome, SendSource, SenderOptions, Status as SendStatus, MIN_SENDER_PROTOCOL,
};
use crate::session::{Outcome, ReceiveSink};
use crate::FileEntry;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Everything a pull needs besides the stream and the sink.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Daemon module.
    pub module: String,
    /// Path below the module ("" = whole module).
    pub path: String,
    /// User for `AUTHREQD` (stock default: `$USER`, else "nobody").
    pub user: String,
    /// Password for `AUTHREQD`; a module that requires one fails without it. Redacted in
    /// `Debug`.
    pub password: Option<Secret>,
    /// Ask for hard links (`-H`).
    pub hard_links: bool,
    /// Filter rules in rsync syntax (`"- *.tmp"`, `"+ dir/"`).
    pub filter_rules: Vec<String>,
    /// Highest protocol to announce (27–32); the daemon may settle on a lower one.
    pub protocol: u32,
    /// Send an empty data frame after this much write silence (once the list is in).
    pub keepalive: Duration,
    /// `--numeric-ids`: keep numeric owners. Without it the sender adds uid/gid name
    /// lists, which are decoded and (for now) not used.
    pub numeric_ids: bool,
    /// Fix the checksum seed (`--checksum-seed=N`); `None` lets the daemon pick one.
    pub checksum_seed: Option<i32>,
    /// Offer `v` in the client info (varint list flags and checksum negotiation, 3.2.0+).
    /// Without it the session uses byte/short list flags and md5, as with 3.0/3.1 peers.
    pub negotiate: bool,
    pub limits: Limits,
    /// Inactivity, connect-and-greeting and overall bounds (defaults: [`Timeouts::default`]).
    pub timeouts: Timeouts,
}

impl PullConfig {
    pub fn new(module: &str) -> Self {
        PullConfig {
            module: module.to_owned(),
            path: String::new(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "nobody".into()),
            password: None,
            hard_links: false,
            filter_rules: Vec::new(),
            protocol: crate::constants::PROTOCOL_VERSION,
            keepalive: Duration::from_secs(30),
            negotiate: true,
            numeric_ids: true,
            checksum_seed: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Connects to the rsync daemon at `host:port` and pulls from it, as [`pull`] does. The
/// connection counts toward `timeouts.connect` together with the greeting and
/// authentication, and toward `timeouts.deadline`.
pub async fn pull_tcp<S>(
    host: &str,
    port: u16,
    config: &PullConfig,
    sink: &mut S,
) -> Result<Outcome, Error>
where
    S: ReceiveSink,
{
    let clock = Clock::start(config.timeouts);
    let connect = tokio::net::TcpStream::connect((host, port));
    let stream = match clock.setup_expiry() {
        Some((at, why)) => tokio::time::timeout_at(at, connect)
            .await
            .map_err(|_| why.for_connect())??,
        None => connect.await?,
    };
    drive(stream, config, sink, clock).await
}

/// Pulls `config.module/config.path` from an rsync daemon on `stream` into `sink`.
///
/// Returns the outcome also when files failed (exit code 23) or vanished (24): callers
/// decide with [`Outcome::is_success`]. Errors mean the run is unusable.
///
/// `config.timeouts` bound the session from this call on; `connect` bounds the greeting and
/// authentication here (the stream is already connected).
pub async fn pull<T, S>(stream: T, config: &PullConfig, sink: &mut S) -> Result<Outcome, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: ReceiveSink,
{
    drive(stream, config, sink, Clock::start(config.timeouts)).await
}

/// The session's time bounds as they run down.
#[derive(Debug)]
struct Clock {
    timeouts: Timeouts,
    started: Instant,
    /// Whether the handshake is still going (the connect bound applies).
    in_setup: bool,
    /// Time spent waiting on the peer since data last moved.
    waited: Duration,
}

/// Which bound an expiry belongs to, before it becomes an error.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Setup(Duration),
    Idle(Duration),
    Deadline(Duration),
}

impl Bound {
    fn for_connect(self) -> Error {
        match self {
            Bound::Setup(d) => Timeout::Connect(d).into(),
            other => other.into(),
        }
    }
}

impl From<Bound> for Error {
    fn from(b: Bound) -> Error {
        Error::Timeout(match b {
            Bound::Setup(d) => Timeout::Greeting(d),
            Bound::Idle(d) => Timeout::Idle(d),
            Bound::Deadline(d) => Timeout::Deadline(d),
        })
    }
}

impl Clock {
    fn start(timeouts: Timeouts) -> Clock {
        Clock {
            timeouts,
            started: Instant::now(),
            in_setup: true,
            waited: Duration::ZERO,
        }
    }

    /// The earliest of the setup and overall bounds (the inactivity bound does not apply
    /// to connecting: no data can move before the connection exists).
    fn setup_expiry(&self) -> Option<(Instant, Bound)> {
        let setup = self
            .timeouts
            .connect
            .map(|d| (self.started + d, Bound::Setup(d)));
        earliest(setup, self.deadline_expiry())
    }

    fn deadline_expiry(&self) -> Option<(Instant, Bound)> {
        self.timeouts
            .deadline
            .map(|d| (self.started + d, Bound::Deadline(d)))
    }

    /// When the next bound expires if the peer keeps silent from `now` on.
    fn expiry(&self, now: Instant) -> Option<(Instant, Bound)> {
        let idle = self
            .timeouts
            .io
            .map(|d| (now + d.saturating_sub(self.waited), Bound::Idle(d)));
        let fixed = if self.in_setup {
            self.setup_expiry()
        } else {
            self.deadline_expiry()
        };
        earliest(idle, fixed)
    }

    /// Counts the time since `since` as waiting on a silent peer.
    fn silent_since(&mut self, since: Instant) {
        self.waited += since.elapsed();
    }

    /// Data moved: the inactivity clock starts again.
    fn data_moved(&mut self) {
        self.waited = Duration::ZERO;
    }

    /// Awaits `op` on the connection within the bounds; counts the wait as silence (the
    /// caller calls [`Self::data_moved`] when data did move).
    async fn bounded<F: Future>(&mut self, op: F) -> Result<F::Output, Error> {
        let start = Instant::now();
        let out = match self.expiry(start) {
            Some((at, why)) => tokio::time::timeout_at(at, op)
                .await
                .map_err(|_| Error::from(why))?,
            None => op.await,
        };
        self.silent_since(start);
        Ok(out)
    }
}

fn earliest(a: Option<(Instant, Bound)>, b: Option<(Instant, Bound)>) -> Option<(Instant, Bound)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Whole seconds for the server's `--timeout=N`, rounded up so the peer is never stricter
/// than we are.
fn whole_secs(d: Duration) -> u32 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Runs the daemon handshake and session setup; ends the setup bound. Returns what was
/// settled, the input already read past it, and the bytes read and written.
async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    hs: &mut ClientHandshake,
    clock: &mut Clock,
    buf: &mut [u8],
) -> Result<(Negotiated, Vec<u8>, u64, u64), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut written: u64 = 0;
    let mut read: u64 = 0;
    let mut inbuf: Vec<u8> = Vec::new();
    let first = hs.take_output();
    written += first.len() as u64;
    clock.bounded(wr.write_all(&first)).await??;
    let neg = loop {
        let (used, st) = hs.feed(&inbuf)?;
        inbuf.drain(..used);
        let out = hs.take_output();
        if !out.is_empty() {
            written += out.len() as u64;
            clock.bounded(wr.write_all(&out)).await??;
            clock.bounded(wr.flush()).await??;
            clock.data_moved();
        }
        if let HandshakeStatus::Done(n) = st {
            break n;
        }
        let n = clock.bounded(rd.read(buf)).await??;
        if n == 0 {
            return Err(Error::UnexpectedEof("during the daemon handshake"));
        }
        clock.data_moved();
        read += n as u64;
        inbuf.extend_from_slice(&buf[..n]);
    };
    clock.in_setup = false;
    Ok((neg, inbuf, read, written))
}

async fn drive<T, S>(
    stream: T,
    config: &PullConfig,
    sink: &mut S,
    mut clock: Clock,
) -> Result<Outcome, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: ReceiveSink,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut args = ServerArgs::pull(&config.module, &config.path, config.hard_links);
    args.numeric_ids = config.numeric_ids;
    args.checksum_seed = config.checksum_seed;
    // As a stock client does: a sender told our timeout keeps an idle link alive.
    args.io_timeout = config.timeouts.io.map(whole_secs);
    if !config.negotiate {
        args.client_info = args.client_info.replace('v', "");
    }
    let mut hs = ClientHandshake::new(HandshakeOptions {
        args,
        protocol: config.protocol,
        user: config.user.clone(),
        password: config.password.clone(),
        limits: config.limits.clone(),
    })?;
    let mut buf = vec![0u8; READ_CHUNK];
    let (neg, inbuf, read, written) =
        handshake(&mut rd, &mut wr, &mut hs, &mut clock, &mut buf).await?;

    let rx: ClientReceiver<S> = ClientReceiver::new(
        neg,
        ReceiverOptions {
            hard_links: config.hard_links,
            numeric_ids: config.numeric_ids,
            filter_rules: config.filter_rules.clone(),
            limits: config.limits.clone(),
        },
    );
    let link = Link {
        keepalive: config.keepalive,
        io_timeout: config.timeouts.io,
    };
    run(rx, sink, (rd, wr), clock, link, inbuf, (read, written), buf).await
}

/// What one role's sans-io machine offers the driver, so a pull and a push run the same
/// loop: reading while writing, keep-alives, the [`Clock`]'s bounds, flushing at the end.
trait Machine {
    /// What a step works with: the pull's sink, the push's content source.
    type Local;
    type Outcome;
    /// Whether a driver busy with local work also takes the input that has already arrived
    /// (up to [`READ_BURST`]) before the next stretch of it; otherwise one read a turn.
    const READS_IN_BURSTS: bool;

    fn feed(&mut self, raw: &[u8]) -> Result<(), Error>;
    /// One step: `Some` once the run has finished.
    fn step(&mut self, local: &mut Self::Local) -> Result<Option<Self::Outcome>, Error>;
    fn take_output(&mut self) -> Vec<u8>;
    fn has_local_work(&self) -> bool;
    fn wants_input(&self) -> bool;
    fn keepalive(&mut self);
    fn file_list_done(&self) -> bool;
    fn peer_timeout(&self) -> Option<u32>;
    fn last_error(&self) -> Option<&str>;
    /// Puts the driver's byte counts into the finished run's outcome.
    fn count_wire_bytes(outcome: &mut Self::Outcome, wire: &WireBytes);
}

impl<S: ReceiveSink> Machine for ClientReceiver<S> {
    type Local = S;
    type Outcome = Outcome;
    const READS_IN_BURSTS: bool = true;

    fn feed(&mut self, raw: &[u8]) -> Result<(), Error> {
        ClientReceiver::feed(self, raw)
    }
    fn step(&mut self, sink: &mut S) -> Result<Option<Outcome>, Error> {
        Ok(match ClientReceiver::step(self, sink)? {
            Status::Finished(o) => Some(*o),
            Status::NeedInput => None,
        })
    }
    fn take_output(&mut self) -> Vec<u8> {
        ClientReceiver::take_output(self)
    }
    fn has_local_work(&self) -> bool {
        ClientReceiver::has_local_work(self)
    }
    /// The receiver takes whatever arrives: holding the sender's data back stalls it.
    fn wants_input(&self) -> bool {
        true
    }
    fn keepalive(&mut self) {
        ClientReceiver::keepalive(self);
    }
    fn file_list_done(&self) -> bool {
        ClientReceiver::file_list_done(self)
    }
    fn peer_timeout(&self) -> Option<u32> {
        ClientReceiver::peer_timeout(self)
    }
    fn last_error(&self) -> Option<&str> {
        ClientReceiver::last_error(self)
    }
    /// The receiver counts what went through it; the handshake's bytes are added.
    fn count_wire_bytes(o: &mut Outcome, wire: &WireBytes) {
        o.wire_bytes_read += wire.handshake_read;
        o.wire_bytes_written += wire.handshake_written;
    }
}

impl<S: SendSource> Machine for ClientSender<S> {
    type Local = S;
    type Outcome = PushOutcome;
    // Its input is the receiver's requests, taken only while `wants_input` allows.
    const READS_IN_BURSTS: bool = false;

    fn feed(&mut self, raw: &[u8]) -> Result<(), Error> {
        ClientSender::feed(self, raw)
    }
    fn step(&mut self, source: &mut S) -> Result<Option<PushOutcome>, Error> {
        Ok(match ClientSender::step(self, source)? {
            SendStatus::Finished(o) => Some(*o),
            SendStatus::NeedInput => None,
        })
    }
    fn take_output(&mut self) -> Vec<u8> {
        ClientSender::take_output(self)
    }
    fn has_local_work(&self) -> bool {
        ClientSender::has_local_work(self)
    }
    fn wants_input(&self) -> bool {
        ClientSender::wants_input(self)
    }
    fn keepalive(&mut self) {
        ClientSender::keepalive(self);
    }
    fn file_list_done(&self) -> bool {
        ClientSender::file_list_done(self)
    }
    fn peer_timeout(&self) -> Option<u32> {
        ClientSender::peer_timeout(self)
    }
    fn last_error(&self) -> Option<&str> {
        ClientSender::last_error(self)
    }
    /// The whole connection's bytes, the handshake's and the final flush's included.
    fn count_wire_bytes(o: &mut PushOutcome, wire: &WireBytes) {
        o.progress.wire_bytes_read = wire.read;
        o.progress.wire_bytes_written = wire.written;
    }
}

/// Bytes on the connection as the driver saw them.
#[derive(Debug, Default)]
struct WireBytes {
    /// Read during the handshake, less what was read past it (the machine's input).
    handshake_read: u64,
    handshake_written: u64,
    /// Read in all, the handshake's included.
    read: u64,
    /// Written in all, the handshake's and the final flush's included.
    written: u64,
}

/// The link settings the driver loop needs from either role's config.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Send an empty data frame after this much write silence (once the list is done).
    keepalive: Duration,
    /// Our inactivity bound, which the peer was told.
    io_timeout: Option<Duration>,
}

/// A peer that reported an error and then closed (or reset) the connection is explained by
/// its message, not by the socket error.
fn closed<M: Machine>(m: &M, e: Error) -> Error {
    match m.last_error() {
        Some(message) => Error::ClosedAfterError {
            message: message.to_owned(),
        },
        None => e,
    }
}

/// Runs `m` over the connection after the handshake: `inbuf` is the input already read
/// past it, `handshake` the bytes read and written during it.
#[allow(clippy::too_many_arguments)]
async fn run<M, R, W>(
    mut m: M,
    local: &mut M::Local,
    (mut rd, mut wr): (R, W),
    mut clock: Clock,
    link: Link,
    inbuf: Vec<u8>,
    (handshake_read, handshake_written): (u64, u64),
    mut buf: Vec<u8>,
) -> Result<M::Outcome, Error>
where
    M: Machine,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut wire = WireBytes {
        // These bytes were counted as handshake input already; the machine counts them again.
        handshake_read: handshake_read - inbuf.len() as u64,
        handshake_written,
        read: handshake_read,
        written: handshake_written,
    };
    m.feed(&inbuf)?;
    let mut out: Vec<u8> = Vec::new();
    let mut out_pos = 0usize;
    // Leading bytes of `out` that are our own keep-alive: sending them is not data moving,
    // or a peer that reads and never answers would never time out.
    let mut keepalive_left = 0usize;
    let mut last_write = Instant::now();
    let result = loop {
        let st = match m.step(local) {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        if let Some(mut o) = st {
            out.drain(..out_pos);
            out.extend(m.take_output());
            wire.written += out.len() as u64;
            clock.bounded(wr.write_all(&out)).await??;
            clock.bounded(wr.flush()).await??;
            // Best effort: the peer exits after our goodbye anyway.
            let _ = clock.bounded(wr.shutdown()).await;
            M::count_wire_bytes(&mut o, &wire);
            return Ok(o);
        }
        if out_pos == out.len() {
            out = m.take_output();
            out_pos = 0;
        }
        // Stay well inside the peer's timeout: the one a daemon with `timeout = T`
        // announces, and ours, which the peer was told.
        let peer_limit = m
            .peer_timeout()
            .map(|t| Duration::from_secs(u64::from(t.max(2))))
            .into_iter()
            .chain(link.io_timeout)
            .min();
        let keepalive = match peer_limit {
            Some(t) => link.keepalive.min(t / 2),
            None => link.keepalive,
        };
        let idle_deadline = last_write + keepalive;
        // Local work left over from the step's budget: move whatever I/O is ready first (a
        // peer blocked writing to us must not wait on our local work), then go on working
        // instead of waiting for input.
        let busy = m.has_local_work();
        let waiting_since = Instant::now();
        let expiry = clock.expiry(waiting_since);
        let expires_at = expiry.map_or(waiting_since, |(at, _)| at);
        tokio::select! {
            biased;
            r = wr.write(&out[out_pos..]), if out_pos < out.len() => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => break Err(closed(&m, e.into())),
                };
                if n == 0 {
                    break Err(closed(&m, Error::UnexpectedEof("peer stopped reading")));
                }
                out_pos += n;
                wire.written += n as u64;
                last_write = Instant::now();
                if n > keepalive_left {
                    clock.data_moved();
                } else {
                    clock.silent_since(waiting_since);
                }
                keepalive_left = keepalive_left.saturating_sub(n);
            }
            r = rd.read(&mut buf), if m.wants_input() => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => break Err(closed(&m, e.into())),
                };
                if n == 0 {
                    break Err(closed(&m, Error::UnexpectedEof("during the transfer")));
                }
                // Any byte counts, the peer's own keep-alives included.
                clock.data_moved();
                wire.read += n as u64;
                if let Err(e) = m.feed(&buf[..n]) {
                    break Err(e);
                }
                // While busy, take all that has already arrived (up to a bound) before the
                // next stretch of local work, so a streaming peer keeps moving.
                let mut burst = n;
                while M::READS_IN_BURSTS && busy && burst < READ_BURST {
                    match read_if_ready(&mut rd, &mut buf) {
                        Some(Ok(more)) if more > 0 => {
                            wire.read += more as u64;
                            m.feed(&buf[..more])?;
                            burst += more;
                        }
                        // EOF and errors surface on the next awaited read.
                        _ => break,
                    }
                }
            }
            // After the I/O arms: data that is ready wins over an expiry at the same moment.
            _ = tokio::time::sleep_until(expires_at), if expiry.is_some() => {
                if let Some((_, why)) = expiry {
                    break Err(why.into());
                }
            }
            _ = tokio::time::sleep_until(idle_deadline), if out_pos == out.len() && m.file_list_done() => {
                m.keepalive();
                out = m.take_output();
                out_pos = 0;
                keepalive_left = out.len();
                last_write = Instant::now();
                clock.silent_since(waiting_since);
            }
            // Yielding (not just carrying on) lets the runtime poll its I/O driver, without
            // which a busy task would never see new input become readable.
            () = tokio::task::yield_now(), if busy => {
                clock.silent_since(waiting_since);
            }
        }
    };
    // On a remote fatal error the machine queued the acknowledgement stock expects.
    if let Err(Error::RemoteExit { .. }) = &result {
        out.drain(..out_pos);
        out.extend(m.take_output());
        let _ = tokio::time::timeout(REMOTE_EXIT_ACK_TIMEOUT, async {
            wr.write_all(&out).await?;
            wr.flush().await
        })
        .await;
    }
    result
}

/// How long the acknowledgement of a peer's fatal error may take to send; the run has
/// failed already, this only spares the peer an error of its own.
const REMOTE_EXIT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Input a busy driver takes in one go before its next stretch of local work.
const READ_BURST: usize = 1024 * 1024;

/// Reads what is already available without waiting: `None` when nothing is.
fn read_if_ready<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8],
) -> Option<std::io::Result<usize>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut rb = tokio::io::ReadBuf::new(buf);
    match std::pin::Pin::new(rd).poll_read(&mut cx, &mut rb) {
        std::task::Poll::Ready(Ok(())) => Some(Ok(rb.filled().len())),
        std::task::Poll::Ready(Err(e)) => Some(Err(e)),
        std::task::Poll::Pending => None,
    }
}

/// Everything a push needs besides the stream, the list and the source.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Daemon module (writable: `read only = false`).
    pub module: String,
    /// Directory below the module to push into ("" = the module's root); created by the
    /// receiver if missing (one level, as stock does).
    pub path: String,
    /// User for `AUTHREQD`.
    pub user: String,
    /// Password for `AUTHREQD`. Redacted in `Debug`.
    pub password: Option<Secret>,
    /// Send hard-link groups (`-H`).
    pub hard_links: bool,
    /// `--delete`: the receiver removes what the list does not hold. Off by default.
    pub delete: bool,
    /// Filter rules sent with `--delete` (e.g. `"P keep/"`); ignored without it.
    pub filter_rules: Vec<String>,
    /// Highest protocol to announce (27–32); the daemon may settle on a lower one.
    pub protocol: u32,
    /// Send an empty data frame after this much write silence (once the list is out).
    pub keepalive: Duration,
    /// `--numeric-ids`: owners as numbers. Without it uid/gid name lists are sent, built
    /// from the entries' `user_name`/`group_name`.
    pub numeric_ids: bool,
    /// Fix the checksum seed (`--checksum-seed=N`).
    pub checksum_seed: Option<i32>,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

impl PushConfig {
    pub fn new(module: &str) -> Self {
        let pull = PullConfig::new(module);
        PushConfig {
            module: pull.module,
            path: pull.path,
            user: pull.user,
            password: None,
            hard_links: false,
            delete: false,
            filter_rules: Vec::new(),
            protocol: pull.protocol,
            keepalive: pull.keepalive,
            numeric_ids: true,
            checksum_seed: None,
            limits: pull.limits,
            timeouts: pull.timeouts,
        }
    }
}

/// Connects to the daemon at `host:port` and pushes, as [`push`] does; connecting counts
/// toward `timeouts.connect` and `timeouts.deadline`.
pub async fn push_tcp<S>(
    host: &str,
    port: u16,
    config: &PushConfig,
    entries: Vec<FileEntry>,
    source: &mut S,
) -> Result<PushOutcome, Error>
where
    S: SendSource,
{
    let clock = Clock::start(config.timeouts);
    let connect = tokio::net::TcpStream::connect((host, port));
    let stream = match clock.setup_expiry() {
        Some((at, why)) => tokio::time::timeout_at(at, connect)
            .await
            .map_err(|_| why.for_connect())??,
        None => connect.await?,
    };
    drive_push(stream, config, entries, source, clock).await
}

/// Pushes `entries` (see [`ClientSender::new`] for their order and the top entry `.`)
/// with content from `source` into `config.module/config.path/` of an rsync daemon.
///
/// Returns the outcome also when some files could not be sent (exit code 23) or had
/// vanished (24): decide with [`PushOutcome::is_success`]. `source.progress` is called
/// after every file.
pub async fn push<T, S>(
    stream: T,
    config: &PushConfig,
    entries: Vec<FileEntry>,
    source: &mut S,
) -> Result<PushOutcome, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: SendSource,
{
    drive_push(
        stream,
        config,
        entries,
        source,
        Clock::start(config.timeouts),
    )
    .await
}

async fn drive_push<T, S>(
    stream: T,
    config: &PushConfig,
    entries: Vec<FileEntry>,
    source: &mut S,
    mut clock: Clock,
) -> Result<PushOutcome, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: SendSource,
{
    if config.protocol < MIN_SENDER_PROTOCOL {
        return Err(Error::UnsupportedProtocol(config.protocol));
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut args = ServerArgs::push(
        &config.module,
        &config.path,
        config.hard_links,
        config.delete,
    );
    args.numeric_ids = config.numeric_ids;
    args.checksum_seed = config.checksum_seed;
    // The receiving daemon then times us out as stock's would; our keep-alives cover it.
    args.io_timeout = config.timeouts.io.map(whole_secs);
    let mut hs = ClientHandshake::new(HandshakeOptions {
        args,
        protocol: config.protocol,
        user: config.user.clone(),
        password: config.password.clone(),
        limits: config.limits.clone(),
    })?;
    let mut buf = vec![0u8; READ_CHUNK];
    let (neg, inbuf, hs_read, hs_written) =
        handshake(&mut rd, &mut wr, &mut hs, &mut clock, &mut buf).await?;
    if neg.protocol < MIN_SENDER_PROTOCOL {
        return Err(Error::UnsupportedProtocol(neg.protocol));
    }
    let tx: ClientSender<S> = ClientSender::new(
        neg,
        SenderOptions {
            hard_links: config.hard_links,
            numeric_ids: config.numeric_ids,
            delete: config.delete,
            filter_rules: config.filter_rules.clone(),
            limits: config.limits.clone(),
        },
        entries,
        source.list_io_error(),
    )?;
    let link = Link {
        keepalive: config.keepalive,
        io_timeout: config.timeouts.io,
    };
    run(
        tx,
        source,
        (rd, wr),
        clock,
        link,
        inbuf,
        (hs_read, hs_written),
        buf,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntryAction, FileEntry, SinkError};

    struct NullSink;

    impl ReceiveSink for NullSink {
        type Basis = Vec<u8>;
        fn entry(&mut self, _: u32, _: &FileEntry) -> Result<EntryAction, SinkError> {
            Ok(EntryAction::Skip)
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
    }

    /// The storage daemon spawns pulls on a multi-threaded runtime: with a `Send` sink the
    /// pull future must be `Send`.
    #[test]
    fn pull_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (a, _b) = tokio::io::duplex(64);
        let cfg = PullConfig::new("m");
        let mut sink = NullSink;
        let fut = pull(a, &cfg, &mut sink);
        assert_send(&fut);
    }

    /// A peer that closes during the greeting yields a clean error, not a hang.
    #[tokio::test]
    async fn eof_during_handshake() {
        let (a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            b.write_all(b"@RSYNCD: 31.0\n").await?;
            let mut buf = [0u8; 256];
            let _ = b.read(&mut buf).await?;
            drop(b);
            Ok::<_, std::io::Error>(())
        });
        let mut sink = NullSink;
        let r = pull(a, &PullConfig::new("m"), &mut sink).await;
        assert!(
            matches!(r, Err(Error::UnexpectedEof(_)) | Err(Error::Io(_))),
            "{r:?}"
        );
        server.await.expect("join").expect("server io");
    }
}

//! `turku-storage serve`: the embedded SSH server agents call into over `ssh -R`.
//!
//! One process, no OpenSSH, no sudo, no authorized_keys file: [`Daemon`] holds what every
//! connection shares (the configuration, the machines' keys as the coordinator last listed
//! them, the caps on connections, sessions and backups, the machines with a session open,
//! and the restore sessions a `restore` can push through); [`handler`] is one connection's
//! authentication and channel policy; [`agent`] one agent session's work.

pub mod agent;
pub mod handler;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use russh::keys::PublicKey;
use russh::server::Config as SshConfig;
use russh::{MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::authorized::{AuthorizedMachines, MachineEntry};
use crate::config::StorageConfig;
use crate::constants::daemon::{
    AUTH_REJECTION_TIME, CHANNEL_WINDOW_BYTES, CIPHERS, CONSOLE_FLUSH_TIMEOUT,
    IDLE_DISCONNECT_GRACE, KEEPALIVE_INTERVAL, KEEPALIVE_MAX, MAX_CONNECTIONS_PER_MACHINE,
    MAX_PACKET_BYTES, MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_ADDRESS, SERVER_ID,
    SESSION_END_GRACE, TCP_NODELAY,
};
use crate::hostkeys::HostKeys;
use crate::session::SessionContext;
use crate::upkeep;
use handler::{AgentConnection, Progress, Stage};

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    HostKeys(#[from] crate::hostkeys::HostKeyError),
    #[error(transparent)]
    Store(#[from] turku_store::StoreError),
    #[error(transparent)]
    Coordinator(#[from] turku_api_types::client::ApiError),
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("the store is not set up at {path} and its parent directory does not exist (is the volume mounted?)")]
    StoreVolumeMissing { path: std::path::PathBuf },
}

/// A machine's open session; the machine is free again when this drops.
#[derive(Debug)]
pub struct MachineGuard {
    daemon: Arc<Daemon>,
    uuid: String,
}

impl Drop for MachineGuard {
    fn drop(&mut self) {
        if let Ok(mut active) = self.daemon.active_machines.lock() {
            active.remove(&self.uuid);
        }
    }
}

/// One connection of a logged-in machine; the count goes down on drop.
#[derive(Debug)]
pub struct MachineConnection {
    daemon: Arc<Daemon>,
    uuid: String,
}

impl Drop for MachineConnection {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.daemon.machine_connections.lock() {
            if let Some(n) = counts.get_mut(&self.uuid) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.uuid);
                }
            }
        }
    }
}

/// A restore session's registration, for the coming `restore` command; removed on drop.
#[derive(Debug)]
pub struct RestoreRegistration {
    daemon: Arc<Daemon>,
    uuid: String,
}

impl Drop for RestoreRegistration {
    fn drop(&mut self) {
        if let Ok(mut restores) = self.daemon.restores.lock() {
            restores.remove(&self.uuid);
        }
    }
}

/// An agent waiting in restore mode: the port its restore module is forwarded on and the
/// tunnel to it (a `restore` pushes through them).
#[derive(Clone)]
pub struct RestoreSession {
    pub port: u16,
    pub tunnel: Arc<dyn crate::session::Tunnel>,
    /// Held while a restore pushes into this session: one at a time, or two pushes would
    /// write over each other's files.
    pushing: Arc<tokio::sync::Mutex<()>>,
}

impl RestoreSession {
    pub fn new(port: u16, tunnel: Arc<dyn crate::session::Tunnel>) -> RestoreSession {
        RestoreSession {
            port,
            tunnel,
            pushing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The right to push into this session, unless a push already runs.
    pub fn try_begin_push(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Arc::clone(&self.pushing).try_lock_owned().ok()
    }
}

impl std::fmt::Debug for RestoreSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSession")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What every connection of the daemon shares.
#[derive(Debug)]
pub struct Daemon {
    pub ctx: Arc<SessionContext>,
    registry: RwLock<Arc<AuthorizedMachines>>,
    /// When a refresh for an unknown key last ran; held while one runs, so a burst of
    /// unknown keys causes one request.
    last_unknown_key_refresh: tokio::sync::Mutex<Option<Instant>>,
    sessions: Arc<Semaphore>,
    active_machines: Mutex<HashSet<String>>,
    /// Open connections per logged-in machine.
    machine_connections: Mutex<HashMap<String, usize>>,
    /// One refresh of the keys at a time, so an older reply never replaces a newer one.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    /// Machines in restore mode: how to reach their writable `turku-restore` module.
    restores: Mutex<HashMap<String, RestoreSession>>,
    pub host_keys: HostKeys,
}

impl Daemon {
    pub fn new(
        ctx: Arc<SessionContext>,
        registry: AuthorizedMachines,
        host_keys: HostKeys,
    ) -> Arc<Daemon> {
        let max_sessions = ctx.config.daemon.max_sessions;
        Arc::new(Daemon {
            ctx,
            registry: RwLock::new(Arc::new(registry)),
            last_unknown_key_refresh: tokio::sync::Mutex::new(None),
            sessions: Arc::new(Semaphore::new(max_sessions)),
            active_machines: Mutex::new(HashSet::new()),
            machine_connections: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            restores: Mutex::new(HashMap::new()),
            host_keys,
        })
    }

    pub fn machine_for(&self, key: &PublicKey) -> Option<MachineEntry> {
        let registry = self.registry.read().ok()?;
        registry.lookup(key).cloned()
    }

    pub fn registry(&self) -> Arc<AuthorizedMachines> {
        match self.registry.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn replace_registry(&self, registry: AuthorizedMachines) {
        match self.registry.write() {
            Ok(mut r) => *r = Arc::new(registry),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(registry),
        }
    }

    /// Asks the coordinator for the machine list again, at most once per
    /// `refresh_min_interval`, however many unknown keys knock.
    pub async fn refresh_for_unknown_key(self: &Arc<Self>) {
        let mut last = self.last_unknown_key_refresh.lock().await;
        let min = self.ctx.config.daemon.refresh_min_interval;
        if last.is_some_and(|at| at.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = upkeep::refresh(self).await {
            tracing::warn!("refreshing the authorized keys for an unknown key: {e}");
        }
    }

    fn connect_machine(self: &Arc<Self>, uuid: &str) -> Option<MachineConnection> {
        let mut counts = self.machine_connections.lock().ok()?;
        let n = counts.entry(uuid.to_owned()).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_MACHINE {
            return None;
        }
        *n += 1;
        Some(MachineConnection {
            daemon: Arc::clone(self),
            uuid: uuid.to_owned(),
        })
    }

    fn try_session_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sessions).try_acquire_owned().ok()
    }

    fn claim_machine(self: &Arc<Self>, uuid: &str) -> Option<MachineGuard> {
        let mut active = self.active_machines.lock().ok()?;
        if !active.insert(uuid.to_owned()) {
            return None;
        }
        Some(MachineGuard {
            daemon: Arc::clone(self),
            uuid: uuid.to_owned(),
        })
    }

    fn register_restore(
        self: &Arc<Self>,
        uuid: &str,
        session: RestoreSession,
    ) -> RestoreRegistration {
        if let Ok(mut restores) = self.restores.lock() {
            restores.insert(uuid.to_owned(), session);
        }
        RestoreRegistration {
            daemon: Arc::clone(self),
            uuid: uuid.to_owned(),
        }
    }

    /// `uuid`'s open restore session, if it has one.
    pub fn restore_session(&self, uuid: &str) -> Option<RestoreSession> {
        self.restores.lock().ok()?.get(uuid).cloned()
    }

    fn ssh_config(&self) -> SshConfig {
        let settings = &self.ctx.config.daemon;
        SshConfig {
            server_id: russh::SshId::Standard(SERVER_ID.into()),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: AUTH_REJECTION_TIME,
            // OpenSSH's first `none` probe would otherwise pay the delay on every login.
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            keys: self.host_keys.keys(),
            inactivity_timeout: Some(settings.idle_timeout.saturating_add(IDLE_DISCONNECT_GRACE)),
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: TCP_NODELAY,
            window_size: CHANNEL_WINDOW_BYTES,
            maximum_packet_size: MAX_PACKET_BYTES,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..russh::Preferred::default()
            },
            ..SshConfig::default()
        }
    }
}

/// Connections not yet logged in, in all and per client address: OpenSSH's `MaxStartups`
/// idea, so that clients without a key can hold only part of `max_connections`.
#[derive(Debug, Default)]
struct Startups {
    by_address: HashMap<IpAddr, usize>,
    total: usize,
}

/// One unauthenticated connection's place in [`Startups`], given back on drop.
struct StartupSlot {
    startups: Arc<Mutex<Startups>>,
    address: IpAddr,
}

/// The unit one client is counted by: its IPv4 address, or its IPv6 /64 (one host
/// commonly holds a whole /64).
fn client_unit(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(segments))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

impl StartupSlot {
    fn take(startups: &Arc<Mutex<Startups>>, address: IpAddr) -> Option<StartupSlot> {
        let address = client_unit(address);
        let mut s = startups.lock().ok()?;
        let mine = s.by_address.get(&address).copied().unwrap_or(0);
        if s.total >= MAX_UNAUTHENTICATED || mine >= MAX_UNAUTHENTICATED_PER_ADDRESS {
            return None;
        }
        s.total += 1;
        s.by_address.insert(address, mine + 1);
        Some(StartupSlot {
            startups: Arc::clone(startups),
            address,
        })
    }
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.startups.lock() {
            s.total = s.total.saturating_sub(1);
            if let Some(n) = s.by_address.get_mut(&self.address) {
                *n -= 1;
                if *n == 0 {
                    s.by_address.remove(&self.address);
                }
            }
        }
    }
}

/// Accepts connections until the process ends.
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) -> Result<(), ServeError> {
    let ssh_config = Arc::new(daemon.ssh_config());
    let settings = daemon.ctx.config.daemon.clone();
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let startups = Arc::new(Mutex::new(Startups::default()));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait a moment instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // `russh::server::run_stream` never applies `Config::nodelay` (only its own accept
        // loop does): without this every small reply waits out the peer's delayed ACK, about
        // 40 ms twice per ping (key exchange reply, exit status).
        if let Err(e) = socket.set_nodelay(TCP_NODELAY) {
            tracing::debug!(%peer, "set_nodelay: {e}");
        }
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: {} connections open", settings.max_connections);
            continue;
        };
        let Some(startup) = StartupSlot::take(&startups, peer.ip()) else {
            tracing::warn!(%peer, "connection refused: too many connections not logged in yet");
            continue;
        };
        // The watchdog ends a connection by shutting its socket down: russh ignores a
        // disconnect request while a key exchange runs, which a client can keep running.
        let (socket, closer) = match split_closer(socket) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%peer, "accept: {e}");
                continue;
            }
        };
        let progress = Arc::new(Progress::default());
        let handler = AgentConnection::new(Arc::clone(&daemon), Some(peer), Arc::clone(&progress));
        let ssh_config = Arc::clone(&ssh_config);
        let settings = settings.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let watchdog = AbortOnDrop(tokio::spawn(watch_connection(
                closer,
                Arc::clone(&progress),
                settings,
                peer,
                startup,
            )));
            match russh::server::run_stream(ssh_config, socket, handler).await {
                Ok(running) => {
                    if let Err(e) = running.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!(%peer, "ssh handshake: {e}"),
            }
            drop(watchdog);
        });
    }
}

/// Aborts its task when dropped, so a connection task that ends in any way (a panic
/// included) takes its watchdog, and the watchdog's handle on the socket, with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The socket for russh and a second handle on it that can shut it down.
fn split_closer(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let socket = socket.into_std()?;
    let closer = socket.try_clone()?;
    Ok((TcpStream::from_std(socket)?, closer))
}

/// Ends a connection that does not log in within `login_timeout`, does not start its
/// session within `idle_timeout` after that (answered keepalives would otherwise keep an
/// idle connection open forever), outlives `session_timeout`, or stays open after its
/// session ended (a forwarded channel the agent confirmed too late would keep OpenSSH
/// waiting for ever).
async fn watch_connection(
    closer: std::net::TcpStream,
    progress: Arc<Progress>,
    settings: crate::config::DaemonSettings,
    peer: SocketAddr,
    startup: StartupSlot,
) {
    let close = |why: &str| {
        tracing::info!(%peer, "closed: {why}");
        let _ = closer.shutdown(std::net::Shutdown::Both);
    };
    if !progress
        .wait_for(Stage::Authenticated, settings.login_timeout)
        .await
    {
        return close("not logged in within the login timeout");
    }
    drop(startup);
    if !progress
        .wait_for(Stage::InSession, settings.idle_timeout)
        .await
    {
        return close("no session started within the idle timeout");
    }
    // The session ends itself at `session_timeout` after its request (which may take up to
    // `idle_timeout`); this is the backstop, after its last lines had time to go out.
    if !progress
        .wait_for(
            Stage::Over,
            settings.idle_timeout + settings.session_timeout + CONSOLE_FLUSH_TIMEOUT,
        )
        .await
    {
        return close("session time limit");
    }
    tokio::time::sleep(SESSION_END_GRACE).await;
    close("session over")
}

/// Opens the configured store, creating it on first start when its parent directory (the
/// volume) exists: a missing volume must not silently become a store on the root disk.
pub fn open_or_init_store(path: &std::path::Path) -> Result<(), ServeError> {
    let is_new = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if !is_new {
        turku_store::Store::open(path)?;
        return Ok(());
    }
    if !path.parent().is_some_and(|p| p.is_dir()) {
        return Err(ServeError::StoreVolumeMissing {
            path: path.to_path_buf(),
        });
    }
    tracing::info!("creating the store at {}", path.display());
    turku_store::Store::init(path, turku_store::StoreConfig::default())?;
    Ok(())
}

/// The whole daemon: host keys, store, the saved keys, one registration, then the SSH
/// server and its upkeep until the process ends. `on_listening` hears the bound address
/// (`listen` may name port 0).
pub async fn run(
    config: StorageConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let listen = config.listen;
    // Before anything can take long: SIGHUP's default action would end the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(
        |source| ServeError::Listen {
            addr: listen,
            source,
        },
    )?;
    let host_keys = HostKeys::load_or_generate(&config.host_key_dir)?;
    open_or_init_store(&config.store)?;
    let coordinator = crate::coordinator::CoordinatorLink::new(&config)?;
    let registry = upkeep::load_saved(&config);
    let config = Arc::new(config);
    let ctx = Arc::new(SessionContext {
        backup_slots: Arc::new(Semaphore::new(config.daemon.max_backups)),
        backups_committed: Arc::new(tokio::sync::Notify::new()),
        coordinator,
        config,
    });
    let daemon = Daemon::new(ctx, registry, host_keys);
    let control_socket = daemon.ctx.config.control_socket.clone();
    let control = crate::control::bind(&control_socket).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: listen,
        source,
    })?;
    tracing::info!(
        "serving the {} keys saved before; registering with the coordinator",
        daemon.registry().len()
    );
    // The first registration runs in the background: a slow coordinator must not keep
    // known agents out.
    upkeep::spawn(&daemon, hangups);
    tokio::spawn(crate::control::serve(Arc::clone(&daemon), control));
    on_listening(bound);
    serve(daemon, listener).await
}

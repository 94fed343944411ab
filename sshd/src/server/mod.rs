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
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use russh::keys::PublicKey;
use russh::server::Config as SshConfig;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::authorized::{AuthorizedMachines, MachineEntry};
use crate::config::StorageConfig;
use crate::constants::daemon::{
    AUTH_REJECTION_TIME, IDLE_DISCONNECT_GRACE, KEEPALIVE_INTERVAL, KEEPALIVE_MAX, SERVER_ID,
};
use crate::hostkeys::HostKeys;
use crate::session::SessionContext;
use crate::upkeep;
use handler::{AgentConnection, Progress};

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
            nodelay: true,
            ..SshConfig::default()
        }
    }
}

/// Accepts connections until the listener fails. `ready` hears the bound address.
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) -> Result<(), ServeError> {
    let ssh_config = Arc::new(daemon.ssh_config());
    let connections = Arc::new(Semaphore::new(daemon.ctx.config.daemon.max_connections));
    let login_timeout = daemon.ctx.config.daemon.login_timeout;
    loop {
        let settings = daemon.ctx.config.daemon.clone();
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait a moment instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: {} connections open", daemon.ctx.config.daemon.max_connections);
            drop(socket);
            continue;
        };
        let progress = Arc::new(Progress::default());
        let handler = AgentConnection::new(Arc::clone(&daemon), Some(peer), Arc::clone(&progress));
        let ssh_config = Arc::clone(&ssh_config);
        tokio::spawn(async move {
            let _permit = permit;
            let started = tokio::time::timeout(
                login_timeout,
                russh::server::run_stream(ssh_config, socket, handler),
            )
            .await;
            let running = match started {
                Ok(Ok(running)) => running,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "ssh handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "closed: no ssh handshake within the login timeout");
                    return;
                }
            };
            let handle = running.handle();
            let watchdog = tokio::spawn(watch_connection(handle, progress, settings, peer));
            if let Err(e) = running.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            watchdog.abort();
        });
    }
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
    let host_keys = HostKeys::load_or_generate(&config.host_key_dir)?;
    open_or_init_store(&config.store)?;
    let coordinator = crate::coordinator::CoordinatorLink::new(&config)?;
    let registry = upkeep::load_saved(&config);
    let listen = config.listen;
    let config = Arc::new(config);
    let ctx = Arc::new(SessionContext {
        backup_slots: Arc::new(Semaphore::new(config.daemon.max_backups)),
        backups_committed: Arc::new(tokio::sync::Notify::new()),
        coordinator,
        config,
    });
    let daemon = Daemon::new(ctx, registry, host_keys);
    match upkeep::refresh(&daemon).await {
        Ok(count) => tracing::info!("registered with the coordinator; {count} machines"),
        Err(e) => tracing::warn!(
            "cannot register with the coordinator yet ({e}); serving the {} machines saved before",
            daemon.registry().len()
        ),
    }
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
    upkeep::spawn(&daemon);
    on_listening(bound);
    serve(daemon, listener).await
}

/// Closes a connection that does not log in within `login_timeout`, does not start its
/// session within `idle_timeout` after that (answered keepalives would otherwise keep an
/// idle connection open forever), or outlives `session_timeout`.
async fn watch_connection(
    handle: russh::server::Handle,
    progress: Arc<Progress>,
    settings: crate::config::DaemonSettings,
    peer: SocketAddr,
) {
    let close = |why: &'static str| {
        let handle = handle.clone();
        async move {
            tracing::info!(%peer, "closed: {why}");
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, why.into(), String::new())
                .await;
        }
    };
    tokio::time::sleep(settings.login_timeout).await;
    if !progress.authenticated() {
        return close("not logged in within the login timeout").await;
    }
    tokio::time::sleep(settings.idle_timeout).await;
    if !progress.in_session() {
        return close("no session started within the idle timeout").await;
    }
    // The session ends itself at `session_timeout`; this is the backstop, after its last
    // lines had time to go out.
    tokio::time::sleep(settings.session_timeout + crate::constants::daemon::CONSOLE_FLUSH_TIMEOUT)
        .await;
    close("session time limit").await
}

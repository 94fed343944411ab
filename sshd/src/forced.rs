//! `turku-storage ping UUID`: the session as an OpenSSH forced command, for operators who
//! keep OpenSSH in front (`command="turku-storage ping <uuid>"` in authorized_keys, as the
//! original's `turku-storage-ping`).
//!
//! The request arrives on stdin, lines for the agent go to stderr, and the agent's rsync
//! daemon is reached on 127.0.0.1 at the forwarded port, which OpenSSH's sshd listens on.
//! One session per machine at a time, by a lock file as the original's.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, Semaphore};

use crate::config::StorageConfig;
use crate::constants::{session as text, FORCED_STDIN_READ_BYTES};
use crate::coordinator::CoordinatorLink;
use crate::ping::{PingAction, PingRequest, PingRequestReader};
use crate::pull::Connection;
use crate::session::{run_checkin, BoxFuture, Console, SessionContext, SessionEnd, Tunnel};

/// Why the forced command could not run a session.
#[derive(Debug, thiserror::Error)]
pub enum ForcedError {
    #[error("another session of machine {uuid} holds {}", path.display())]
    Locked { uuid: String, path: PathBuf },
    #[error("lock file {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    #[error(transparent)]
    Coordinator(#[from] turku_api_types::client::ApiError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// sshd forwards the agent's port on the loopback: the pull connects there itself.
struct LoopbackTunnel;

impl Tunnel for LoopbackTunnel {
    fn open(&self, _port: u16) -> BoxFuture<'_, Result<(String, Connection), String>> {
        Box::pin(async { Ok(("127.0.0.1".to_owned(), Connection::Tcp)) })
    }
}

/// The machine's session lock: a POSIX record lock, the kind the original's `lockf` takes,
/// so a Python turku-storage-ping on the same host is excluded too. Held while the file is
/// open. The file is left in place: removing it would let a third session lock a new file
/// while a second still holds the removed one.
struct SessionLock {
    _file: File,
}

fn lock_machine(config: &StorageConfig, uuid: &str) -> Result<SessionLock, ForcedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = config
        .lock_dir()
        .join(format!("turku-storage-ping-{uuid}.lock"));
    let lock_error = |source| ForcedError::Lock {
        path: path.clone(),
        source,
    };
    // Not through a symlink: the lock directory may be a shared one like /tmp.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(lock_error)?;
    if rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    {
        return Err(ForcedError::Locked {
            uuid: uuid.to_owned(),
            path,
        });
    }
    // The original writes its pid, right-aligned in 10 columns.
    file.set_len(0).map_err(lock_error)?;
    writeln!(file, "{:>10}", std::process::id()).map_err(lock_error)?;
    Ok(SessionLock { _file: file })
}

/// Runs one session for `machine_uuid` on stdin/stderr; returns the exit status.
pub fn run(config: StorageConfig, machine_uuid: &str) -> Result<u8, ForcedError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ForcedError::Runtime)?;
    runtime.block_on(session(config, machine_uuid))
}

async fn session(config: StorageConfig, machine_uuid: &str) -> Result<u8, ForcedError> {
    let (mut console, lines) = Console::new(&config.name, machine_uuid);
    let printer = tokio::spawn(print_to_stderr(lines));
    let mut stdin = tokio::io::stdin();
    let request = read_request(&mut stdin, machine_uuid, &config).await;
    let end = match request {
        Err(why) => {
            console.error(&why);
            SessionEnd::Failed
        }
        Ok(request) => {
            console.set_verbose(request.verbose);
            match work(config, &request, &console, &mut stdin).await {
                Ok(end) => end,
                Err(e) => {
                    console.error(&e.to_string());
                    SessionEnd::Failed
                }
            }
        }
    };
    drop(console);
    let _ = tokio::time::timeout(crate::constants::daemon::CONSOLE_FLUSH_TIMEOUT, printer).await;
    Ok(end.exit_status() as u8)
}

async fn work(
    config: StorageConfig,
    request: &PingRequest,
    console: &Console,
    stdin: &mut tokio::io::Stdin,
) -> Result<SessionEnd, ForcedError> {
    let _lock = lock_machine(&config, &request.machine_uuid)?;
    match request.action {
        PingAction::Restore => {
            console.info(&format!(
                "Restore mode active on port {}.  Good luck.",
                request.port
            ));
            let mut sink = vec![0u8; FORCED_STDIN_READ_BYTES];
            let wait = async { while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(config.daemon.session_timeout, wait).await;
            console.info(text::RESTORE_FINISHED);
            Ok(SessionEnd::Done)
        }
        PingAction::Checkin => {
            crate::server::open_or_init_store(&config.store)?;
            let coordinator = CoordinatorLink::new(&config)?;
            let session_timeout = config.daemon.session_timeout;
            let ctx = SessionContext {
                backup_slots: Arc::new(Semaphore::new(config.daemon.max_backups)),
                backups_committed: Arc::new(Notify::new()),
                coordinator,
                config: Arc::new(config),
            };
            let checkin = run_checkin(&ctx, request, &LoopbackTunnel, console);
            match tokio::time::timeout(session_timeout, checkin).await {
                Ok(end) => Ok(end),
                Err(_) => {
                    console.error(text::SESSION_TIMED_OUT);
                    Ok(SessionEnd::Failed)
                }
            }
        }
    }
}

async fn read_request(
    stdin: &mut tokio::io::Stdin,
    machine_uuid: &str,
    config: &StorageConfig,
) -> Result<PingRequest, String> {
    let mut reader = PingRequestReader::new(machine_uuid).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; FORCED_STDIN_READ_BYTES];
    let idle = config.daemon.idle_timeout;
    // One bound for the whole request: a trickle of bytes does not extend it.
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let n = match tokio::time::timeout_at(deadline, stdin.read(&mut buffer)).await {
            Err(_) => {
                return Err(format!(
                    "{} ({} s)",
                    text::REQUEST_TIMED_OUT,
                    idle.as_secs()
                ))
            }
            Ok(Err(e)) => return Err(format!("reading the request: {e}")),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return reader.finish().map_err(|e| e.to_string());
        }
        if let Some(request) = reader.feed(&buffer[..n]).map_err(|e| e.to_string())? {
            return Ok(request);
        }
    }
}

async fn print_to_stderr(mut lines: tokio::sync::mpsc::Receiver<Vec<u8>>) {
    use tokio::io::AsyncWriteExt;
    let mut stderr = tokio::io::stderr();
    while let Some(line) = lines.recv().await {
        if stderr.write_all(&line).await.is_err() {
            return;
        }
    }
    let _ = stderr.flush().await;
}

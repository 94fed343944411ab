//! The daemon's local control socket: how `turku-storage restore` asks the running daemon to
//! push a snapshot into an agent's restore module. Only the daemon can: it holds the agent's
//! SSH connection, and the forwarded channel opens inside it (no port is bound anywhere).
//!
//! One request per connection, as one JSON line; the daemon answers with JSON lines
//! ([`Reply`]): progress while the push runs, then one `done` or `error`. Who may connect:
//! the socket lives in a folder made private (0700) before it is bound, and each peer's
//! credentials must be the daemon's own user or root, so the passwords and snapshots that
//! pass here stay between the daemon and its operator.
//!
//! [`decode_request`] and [`decode_reply`] are the pure, bounded decoders; the rest is the
//! thin I/O around them.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::constants::control::{
    HEARTBEAT_INTERVAL, MAX_LINE_BYTES, MAX_MODULE_BYTES, MAX_SNAPSHOT_NAME_BYTES,
    MAX_SUB_PATH_BYTES, PROGRESS_INTERVAL, REPLY_SILENCE_TIMEOUT, REQUEST_TIMEOUT,
    SOCKET_FOLDER_MODE, SOCKET_MODE,
};
use crate::constants::{
    MAX_MACHINE_UUID_BYTES, MAX_RSYNC_PASSWORD_BYTES, MAX_RSYNC_USERNAME_BYTES,
    MAX_SOURCE_NAME_CHARS,
};
use crate::restore::{PushProgress, PushReport};
use crate::server::Daemon;

/// Why a control line was refused, or the socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("control line is not valid: {0}")]
    Malformed(String),
    #[error("{field} is too long (at most {max} bytes)")]
    FieldTooLong { field: &'static str, max: usize },
    #[error("{field} must not be empty")]
    FieldEmpty { field: &'static str },
    #[error("{field} contains a NUL or line break")]
    FieldControlChar { field: &'static str },
    #[error("the control socket path {path} is too long for a Unix socket")]
    PathTooLong { path: PathBuf },
    #[error("{path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("another daemon already answers on {path}")]
    InUse { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Push a snapshot into the writable module the machine's agent forwarded in restore mode.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The machine's uuid (the agent's restore session is registered under it).
    pub machine: String,
    pub source: String,
    /// A snapshot name, or `latest`.
    pub snapshot: String,
    /// A path inside the snapshot to restore instead of all of it.
    #[serde(default)]
    pub path: Option<String>,
    /// The module's user and password, as the agent printed them.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The agent's restore module (`restore_module`, `turku-restore` by default).
    pub module: String,
}

impl fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreRequest")
            .field("machine", &self.machine)
            .field("source", &self.source)
            .field("snapshot", &self.snapshot)
            .field("path", &self.path)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("module", &self.module)
            .finish()
    }
}

/// What a control connection asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Restore(RestoreRequest),
}

/// One line of the daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Something to tell the operator (the snapshot chosen, the peer's messages).
    Info(String),
    Progress(PushProgress),
    /// Nothing new, still working (sent when nothing else was for a while, so the operator's
    /// command can tell a long quiet stretch from a stuck daemon).
    Alive,
    /// The push ended; `exit_code` 0 means every file arrived (23: some did not).
    Done(PushReport),
    Error(String),
}

fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), ControlError> {
    if value.is_empty() {
        return Err(ControlError::FieldEmpty { field });
    }
    if value.len() > max {
        return Err(ControlError::FieldTooLong { field, max });
    }
    if value.bytes().any(|b| b == 0 || b == b'\n' || b == b'\r') {
        return Err(ControlError::FieldControlChar { field });
    }
    Ok(())
}

impl RestoreRequest {
    /// Bounds every field (they become argv, URL parts and store look-ups).
    pub fn check(&self) -> Result<(), ControlError> {
        check_field("machine", &self.machine, MAX_MACHINE_UUID_BYTES)?;
        check_field("source", &self.source, MAX_SOURCE_NAME_CHARS * 4)?;
        check_field("snapshot", &self.snapshot, MAX_SNAPSHOT_NAME_BYTES)?;
        check_field("module", &self.module, MAX_MODULE_BYTES)?;
        if self.module.contains('/') {
            return Err(ControlError::Malformed(
                "module must not contain '/'".into(),
            ));
        }
        if let Some(path) = &self.path {
            check_field("path", path, MAX_SUB_PATH_BYTES)?;
        }
        if let Some(user) = &self.user {
            check_field("user", user, MAX_RSYNC_USERNAME_BYTES)?;
        }
        if let Some(password) = &self.password {
            check_field("password", password, MAX_RSYNC_PASSWORD_BYTES)?;
        }
        Ok(())
    }
}

/// Decodes one request line (without its line break), bounded and checked.
pub fn decode_request(line: &[u8]) -> Result<Request, ControlError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ControlError::LineTooLong {
            max: MAX_LINE_BYTES,
        });
    }
    let request: Request =
        serde_json::from_slice(line).map_err(|e| ControlError::Malformed(e.to_string()))?;
    match &request {
        Request::Restore(r) => r.check()?,
    }
    Ok(request)
}

/// Decodes one reply line (without its line break), bounded.
pub fn decode_reply(line: &[u8]) -> Result<Reply, ControlError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ControlError::LineTooLong {
            max: MAX_LINE_BYTES,
        });
    }
    serde_json::from_slice(line).map_err(|e| ControlError::Malformed(e.to_string()))
}

fn encode_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own plain types: serialising them cannot fail.
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Reads one line of at most [`MAX_LINE_BYTES`]; `None` at a clean end of stream.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(reader, MAX_LINE_BYTES as u64 + 1);
    let n = limited.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "control line too long or cut off",
        ));
    }
    line.pop();
    Ok(Some(line))
}

fn io_err<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> ControlError + 'p {
    move |source| ControlError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Makes the socket's folder private to the daemon's user, refusing one someone else owns.
fn prepare_folder(folder: &Path) -> Result<(), ControlError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(SOCKET_FOLDER_MODE)
        .create(folder)
        .map_err(io_err("create", folder))?;
    let meta = std::fs::symlink_metadata(folder).map_err(io_err("stat", folder))?;
    if !meta.is_dir() {
        return Err(ControlError::Unsafe {
            path: folder.to_owned(),
            reason: "not a folder".into(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(ControlError::Unsafe {
            path: folder.to_owned(),
            reason: format!(
                "owned by uid {}, not the daemon's {me}",
                std::os::unix::fs::MetadataExt::uid(&meta)
            ),
        });
    }
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(SOCKET_FOLDER_MODE))
        .map_err(io_err("chmod", folder))
}

/// Binds the control socket: its folder private first, a stale socket of a dead daemon
/// replaced, a live one refused.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    // sun_path holds 108 bytes with its NUL.
    if path.as_os_str().len() >= 108 {
        return Err(ControlError::PathTooLong {
            path: path.to_owned(),
        });
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    prepare_folder(folder)?;
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io_err("chmod", path))?;
    Ok(listener)
}

/// Answers control connections until the process ends.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            if let Err(e) = answer(daemon, stream).await {
                tracing::warn!("control socket: {e}");
            }
        });
    }
}

/// Whether a peer with these credentials may use the socket: the daemon's user or root.
fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

async fn answer(daemon: Arc<Daemon>, stream: UnixStream) -> Result<(), std::io::Error> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if !peer_allowed(uid) {
        let refusal = Reply::Error(format!(
            "uid {uid} may not use the storage daemon's control socket"
        ));
        write.write_all(&encode_line(&refusal)).await?;
        return Ok(());
    }
    let mut read = tokio::io::BufReader::new(read);
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_line_bounded(&mut read)).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let reply = Reply::Error(e.to_string());
            write.write_all(&encode_line(&reply)).await?;
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let request = match decode_request(&line) {
        Ok(request) => request,
        Err(e) => {
            write
                .write_all(&encode_line(&Reply::Error(e.to_string())))
                .await?;
            return Ok(());
        }
    };
    let (replies, mut receive) = tokio::sync::mpsc::channel::<Reply>(64);
    // The operator's command going away (Ctrl-C) stops the push at its next tick: seen as the
    // end of its input (it sends nothing after the request) or as a failed write.
    let cancelled = Arc::new(AtomicBool::new(false));
    let work = {
        let cancelled = Arc::clone(&cancelled);
        tokio::spawn(async move {
            match request {
                Request::Restore(r) => restore(&daemon, r, replies, cancelled).await,
            }
        })
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.reset();
    let mut scratch = [0u8; 64];
    let mut gone = false;
    loop {
        let reply = tokio::select! {
            reply = receive.recv() => match reply {
                Some(reply) => reply,
                None => break,
            },
            _ = heartbeat.tick() => Reply::Alive,
            read = tokio::io::AsyncReadExt::read(&mut read, &mut scratch), if !gone => {
                // Anything or nothing: the request was all the operator had to say.
                if matches!(read, Ok(0) | Err(_)) {
                    gone = true;
                    cancelled.store(true, Ordering::Relaxed);
                }
                continue;
            }
        };
        heartbeat.reset();
        if gone {
            continue;
        }
        let written =
            tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&encode_line(&reply))).await;
        if !matches!(written, Ok(Ok(()))) {
            gone = true;
            cancelled.store(true, Ordering::Relaxed);
        }
    }
    let _ = work.await;
    Ok(())
}

async fn restore(
    daemon: &Arc<Daemon>,
    request: RestoreRequest,
    replies: tokio::sync::mpsc::Sender<Reply>,
    cancelled: Arc<AtomicBool>,
) {
    let result =
        crate::restore::restore_through_session(daemon, request, replies.clone(), cancelled).await;
    let last = match result {
        Ok(report) => Reply::Done(report),
        Err(e) => Reply::Error(format!("{e:#}")),
    };
    let _ = replies.send(last).await;
}

/// Sends progress to the control connection at most every [`PROGRESS_INTERVAL`], and says
/// whether the operator is still there.
#[derive(Debug)]
pub struct ProgressRelay {
    replies: tokio::sync::mpsc::Sender<Reply>,
    cancelled: Arc<AtomicBool>,
    last: Option<Instant>,
}

impl ProgressRelay {
    pub fn new(replies: tokio::sync::mpsc::Sender<Reply>, cancelled: Arc<AtomicBool>) -> Self {
        ProgressRelay {
            replies,
            cancelled,
            last: None,
        }
    }

    /// Passes `progress` on, unless the last report was under [`PROGRESS_INTERVAL`] ago.
    pub fn report(&mut self, progress: &PushProgress) {
        if self.last.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) {
            self.last = Some(Instant::now());
            // Full: the operator reads slowly; the next report carries newer figures anyway.
            let _ = self.replies.try_send(Reply::Progress(progress.clone()));
        }
    }

    /// Whether the operator's command is gone (the push should stop).
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn info(&self, text: String) {
        let _ = self.replies.try_send(Reply::Info(text));
    }
}

/// Whether the process behind the control socket may be told a restore password: root, the
/// operator themself, or the store's owner (the daemon's user).
fn daemon_trusted(daemon_uid: u32, me: u32, store_owner: Option<u32>) -> bool {
    daemon_uid == 0 || daemon_uid == me || Some(daemon_uid) == store_owner
}

/// The operator's side: sends `request` to the daemon at `socket`, hands every reply to
/// `on_reply`, and returns the final report, or the daemon's error.
///
/// The password goes only to a daemon whose credentials are root's, ours, or those of the
/// store's owner (the daemon writes the store): a user who managed to put a socket of their
/// own in its place learns nothing.
pub fn request_restore(
    socket: &Path,
    store: &Path,
    request: &RestoreRequest,
    mut on_reply: impl FnMut(&Reply),
) -> anyhow::Result<PushReport> {
    use anyhow::{bail, Context};
    request.check()?;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the storage daemon's control socket {} (is `turku-storage serve` running, and are you its user or root?)",
            socket.display()
        )
    })?;
    let daemon_uid =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .context("asking for the control socket's peer credentials")?
            .uid();
    let store_owner = std::fs::metadata(store)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    if !daemon_trusted(daemon_uid, nix::unistd::geteuid().as_raw(), store_owner) {
        bail!(
            "the process behind {} runs as uid {daemon_uid}, neither root, you, nor the store's owner: not sending it the restore password",
            socket.display()
        );
    }
    stream.set_read_timeout(Some(REPLY_SILENCE_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(&encode_line(&Request::Restore(request.clone())))?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .context("waiting for the storage daemon")?;
        if n == 0 {
            bail!("the storage daemon closed the control connection without an answer");
        }
        if line.last() != Some(&b'\n') {
            bail!("the storage daemon's answer is too long or cut off");
        }
        line.pop();
        let reply = decode_reply(&line)?;
        on_reply(&reply);
        match reply {
            Reply::Done(report) => return Ok(report),
            Reply::Error(text) => bail!("{text}"),
            Reply::Info(_) | Reply::Progress(_) | Reply::Alive => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RestoreRequest {
        RestoreRequest {
            machine: "0f0c7e2e-6a1d-4d55-8c44-5a3c5f6d7e8f".into(),
            source: "etc".into(),
            snapshot: "latest".into(),
            path: Some("ssh".into()),
            user: Some("u".into()),
            password: Some("pw".into()),
            module: "turku-restore".into(),
        }
    }

    #[test]
    fn a_request_round_trips() {
        let line = encode_line(&Request::Restore(request()));
        let decoded = decode_request(&line[..line.len() - 1]).unwrap();
        assert_eq!(decoded, Request::Restore(request()));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        assert!(matches!(
            decode_request(&vec![b' '; MAX_LINE_BYTES + 1]),
            Err(ControlError::LineTooLong { .. })
        ));
        assert!(matches!(
            decode_request(b"{\"restore\": {\"machine\": \"m\"}}"),
            Err(ControlError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(b"{\"shell\": {}}"),
            Err(ControlError::Malformed(_))
        ));
        let mut r = request();
        r.module = "turku-restore/../x".into();
        let line = encode_line(&Request::Restore(r));
        assert!(matches!(
            decode_request(&line[..line.len() - 1]),
            Err(ControlError::Malformed(_))
        ));
        let mut r = request();
        r.machine = "a\nb".into();
        let line = encode_line(&Request::Restore(r));
        assert!(matches!(
            decode_request(&line[..line.len() - 1]),
            Err(ControlError::FieldControlChar { field: "machine" })
        ));
        let mut r = request();
        r.machine = "x".repeat(MAX_MACHINE_UUID_BYTES + 1);
        let line = encode_line(&Request::Restore(r));
        assert!(matches!(
            decode_request(&line[..line.len() - 1]),
            Err(ControlError::FieldTooLong {
                field: "machine",
                ..
            })
        ));
    }

    #[test]
    fn the_password_is_never_in_debug_output() {
        let text = format!("{:?}", request());
        assert!(!text.contains("\"pw\""), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn only_the_daemons_user_and_root_may_connect() {
        assert!(peer_allowed(0));
        assert!(peer_allowed(nix::unistd::geteuid().as_raw()));
        assert!(!peer_allowed(65534) || nix::unistd::geteuid().as_raw() == 65534);
    }

    #[test]
    fn passwords_go_only_to_root_the_operator_or_the_stores_owner() {
        assert!(daemon_trusted(0, 1000, None));
        assert!(daemon_trusted(1000, 1000, None));
        assert!(daemon_trusted(998, 1000, Some(998)));
        assert!(!daemon_trusted(1001, 1000, Some(998)));
        assert!(!daemon_trusted(1001, 1000, None));
    }

    #[tokio::test]
    async fn the_socket_folder_is_private_and_a_live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control/turku-storage.sock");
        let listener = bind(&path).await.unwrap();
        let folder_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(folder_mode & 0o777, 0o700);
        assert!(matches!(bind(&path).await, Err(ControlError::InUse { .. })));
        drop(listener);
        // The dead daemon's socket file is still there: a new daemon replaces it.
        assert!(path.exists());
        let _again = bind(&path).await.unwrap();
    }

    #[tokio::test]
    async fn an_over_long_line_is_an_error_not_a_buffer() {
        let mut input = std::io::Cursor::new(vec![b'x'; MAX_LINE_BYTES * 2]);
        let mut reader = tokio::io::BufReader::new(&mut input);
        assert!(read_line_bounded(&mut reader).await.is_err());
    }
}

//! An agent's session channel: the ping request on stdin, then the session's work, then
//! the exit status. Runs as its own task so the connection's loop never waits on a backup.

use std::sync::Arc;
use std::time::Duration;

use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::authorized::MachineEntry;
use crate::constants::daemon::{BRIDGE_BUFFER_BYTES, CONSOLE_FLUSH_TIMEOUT};
use crate::constants::session as text;
use crate::ping::{PingAction, PingRequest, PingRequestReader};
use crate::pull::Connection;
use crate::server::handler::{Forwards, Progress, Stage};
use crate::server::{Daemon, RestoreSession};
use crate::session::{run_checkin, BoxFuture, Console, SessionEnd, Tunnel};

/// What the agent's side of the session channel did after its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentInput {
    Open,
    /// Stdin closed (the agent's ssh got EOF or the operator pressed Ctrl-C).
    Eof,
    /// The channel or the connection is gone.
    Closed,
}

pub async fn run_agent_channel(
    daemon: Arc<Daemon>,
    machine: MachineEntry,
    channel: Channel<Msg>,
    handle: Handle,
    forwards: Forwards,
    progress: Arc<Progress>,
) {
    // However this task ends (a panic included), the watchdog learns the session is over.
    let _over = OverOnDrop(progress);
    let config = Arc::clone(&daemon.ctx.config);
    let (mut console, lines) = Console::new(&config.name, &machine.uuid);
    let (mut read, write) = channel.split();
    let stderr = write.make_writer_ext(Some(1));
    let mut printer = tokio::spawn(print_lines(lines, stderr));

    let request = read_request(&mut read, &machine.uuid, config.daemon.idle_timeout).await;
    // Whatever the agent sends from here on is drained (a full channel queue would stall
    // the whole connection, the tunnel included) and only its end is noticed.
    let ended_at_eof = matches!(request, Ok((_, true)));
    let (input_tx, input) = watch::channel(if ended_at_eof {
        AgentInput::Eof
    } else {
        AgentInput::Open
    });
    let drain = tokio::spawn(drain_input(read, input_tx));

    let end = match request.map(|(request, _)| request) {
        Err(why) => {
            console.error(&why);
            SessionEnd::Failed
        }
        Ok(request) => {
            console.set_verbose(request.verbose);
            let tunnel = Arc::new(SshTunnel::new(
                handle.clone(),
                forwards,
                config.daemon.rsync_connect_timeout,
                input.clone(),
            ));
            let work = run_request(&daemon, &request, &tunnel, &console, input.clone());
            match tokio::time::timeout(config.daemon.session_timeout, work).await {
                Ok(end) => end,
                Err(_) => {
                    console.error(text::SESSION_TIMED_OUT);
                    SessionEnd::Failed
                }
            }
            // The last `tunnel` drops here (a restore registration let go of its copy):
            // its bridges close every forwarded channel, or OpenSSH would wait for them
            // before it exits.
        }
    };
    drop(console);
    if tokio::time::timeout(CONSOLE_FLUSH_TIMEOUT, &mut printer)
        .await
        .is_err()
    {
        // A client that never opens its window must not keep the printer alive.
        printer.abort();
    }
    // Bounded: a client that stops reading would otherwise hold these sends for ever.
    let _ = tokio::time::timeout(CONSOLE_FLUSH_TIMEOUT, async {
        let _ = write.exit_status(end.exit_status()).await;
        let _ = write.eof().await;
        let _ = write.close().await;
    })
    .await;
    drain.abort();
}

/// Marks the session over when dropped.
struct OverOnDrop(Arc<Progress>);

impl Drop for OverOnDrop {
    fn drop(&mut self) {
        self.0.reach(Stage::Over);
    }
}

async fn run_request(
    daemon: &Arc<Daemon>,
    request: &PingRequest,
    tunnel: &Arc<SshTunnel>,
    console: &Console,
    mut input: watch::Receiver<AgentInput>,
) -> SessionEnd {
    let Some(_session_slot) = daemon.try_session_slot() else {
        console.error(&format!(
            "{} ({} sessions running): sources stay due",
            text::BUSY,
            daemon.ctx.config.daemon.max_sessions
        ));
        return SessionEnd::Failed;
    };
    let Some(_machine_guard) = daemon.claim_machine(&request.machine_uuid) else {
        console.error(text::ALREADY_RUNNING);
        return SessionEnd::Failed;
    };
    match request.action {
        PingAction::Restore => {
            console.info(&format!(
                "Restore mode active on port {}.  Good luck.",
                request.port
            ));
            let session = RestoreSession::new(request.port, Arc::clone(tunnel) as Arc<dyn Tunnel>);
            let _registered = daemon.register_restore(&request.machine_uuid, session);
            let _ = input.wait_for(|state| *state != AgentInput::Open).await;
            console.info(text::RESTORE_FINISHED);
            SessionEnd::Done
        }
        // Not cut short when the agent goes away: its channels close, each remaining pull
        // fails at once and is reported as failed (the source stays due), as the original's
        // rsync runs fail and are reported.
        PingAction::Checkin => run_checkin(&daemon.ctx, request, tunnel.as_ref(), console).await,
    }
}

/// Reads the exec and the request, which must be complete within `idle` of the channel's
/// opening; `true` with the request when it ended at EOF (no `.` line, stdin closed).
///
/// Forced-command semantics start at the exec: input before it, or a shell or subsystem in
/// its place (the handler refused those), never becomes a request, whatever the client
/// does after the refusal.
async fn read_request(
    read: &mut russh::ChannelReadHalf,
    machine_uuid: &str,
    idle: Duration,
) -> Result<(PingRequest, bool), String> {
    let mut reader = PingRequestReader::new(machine_uuid).map_err(|e| e.to_string())?;
    let mut exec_seen = false;
    // One bound for the whole request: a trickle of messages does not extend it.
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let msg = match tokio::time::timeout_at(deadline, read.wait()).await {
            Err(_) => {
                return Err(format!(
                    "{} ({} s)",
                    text::REQUEST_TIMED_OUT,
                    idle.as_secs()
                ))
            }
            Ok(None) | Ok(Some(ChannelMsg::Close)) => return Err(text::GONE.to_owned()),
            Ok(Some(msg)) => msg,
        };
        match msg {
            ChannelMsg::Exec { .. } => exec_seen = true,
            ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. } if !exec_seen => {
                return Err(text::NOT_A_SHELL.to_owned())
            }
            ChannelMsg::Data { .. } if !exec_seen => {
                return Err(text::INPUT_BEFORE_COMMAND.to_owned())
            }
            ChannelMsg::Data { data } => {
                if let Some(request) = reader.feed(&data).map_err(|e| e.to_string())? {
                    return Ok((request, false));
                }
            }
            ChannelMsg::Eof => {
                return reader
                    .finish()
                    .map(|request| (request, true))
                    .map_err(|e| e.to_string())
            }
            // Env, pty and later requests: the handler answered them.
            _ => {}
        }
    }
}

async fn drain_input(mut read: russh::ChannelReadHalf, state: watch::Sender<AgentInput>) {
    loop {
        match read.wait().await {
            Some(ChannelMsg::Eof) => {
                state.send_replace(AgentInput::Eof);
            }
            None | Some(ChannelMsg::Close) => {
                state.send_replace(AgentInput::Closed);
                return;
            }
            Some(_) => {}
        }
    }
}

async fn print_lines(
    mut lines: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut stderr: impl tokio::io::AsyncWrite + Unpin,
) {
    while let Some(line) = lines.recv().await {
        if stderr.write_all(&line).await.is_err() {
            return;
        }
    }
    let _ = stderr.flush().await;
}

/// Dials the agent's forwarded ports over its own connection. Each pull gets one end of an
/// in-memory pipe and a task here copies between the pipe and the SSH channel, so the
/// channel lives and dies on the daemon's runtime while the pull runs on its own thread.
struct SshTunnel {
    handle: Handle,
    forwards: Forwards,
    open_timeout: Duration,
    input: watch::Receiver<AgentInput>,
    bridges: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl SshTunnel {
    fn new(
        handle: Handle,
        forwards: Forwards,
        open_timeout: Duration,
        input: watch::Receiver<AgentInput>,
    ) -> Self {
        SshTunnel {
            handle,
            forwards,
            open_timeout,
            input,
            bridges: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        if let Ok(bridges) = self.bridges.lock() {
            for bridge in bridges.iter() {
                bridge.abort();
            }
        }
    }
}

impl Tunnel for SshTunnel {
    fn is_gone(&self) -> bool {
        *self.input.borrow() == AgentInput::Closed
    }

    fn open(&self, port: u16) -> BoxFuture<'_, Result<(String, Connection), String>> {
        Box::pin(async move {
            let forward = self
                .forwards
                .lock()
                .ok()
                .and_then(|f| f.iter().find(|f| f.port == u32::from(port)).cloned())
                .ok_or_else(|| format!("port {port} was never forwarded by this session (-R)"))?;
            let open = self.handle.channel_open_forwarded_tcpip(
                forward.address.clone(),
                forward.port,
                "127.0.0.1",
                0,
            );
            let channel = tokio::time::timeout(self.open_timeout, open)
                .await
                .map_err(|_| format!("the agent did not open forwarded port {port} in time"))?
                .map_err(|e| format!("the agent refused forwarded port {port}: {e}"))?;
            let mut remote = channel.into_stream();
            let (mut near, far) = tokio::io::duplex(BRIDGE_BUFFER_BYTES);
            let bridge = tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut near, &mut remote).await;
            });
            if let Ok(mut bridges) = self.bridges.lock() {
                bridges.retain(|b| !b.is_finished());
                bridges.push(bridge);
            }
            Ok((forward.address, Connection::Stream(Box::new(far))))
        })
    }
}

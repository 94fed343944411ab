//! One SSH connection from an agent: authentication and the channel policy (DESIGN.md §6).
//!
//! The key names the machine; the only user is the configured ping user. Accepted: one
//! session channel with one `exec` (forced-command semantics: the command text is ignored)
//! and `tcpip-forward` requests for loopback addresses, which are recorded and never bound —
//! the daemon dials back through the connection itself. Refused: shell, pty, subsystems, X11,
//! agent forwarding, `direct-tcpip` (`-L`), streamlocal, a second session channel or exec.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::PublicKey;
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId};

use crate::authorized::MachineEntry;
use crate::constants::daemon::{
    FIRST_VIRTUAL_PORT, MAX_CONNECTIONS_PER_MACHINE, MAX_FORWARDS_PER_CONNECTION,
};
use crate::server::agent::run_agent_channel;
use crate::server::{Daemon, MachineConnection};

/// A remote forward the agent asked for, exactly as it asked (the address string goes back
/// byte for byte when we dial, or OpenSSH refuses the channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub address: String,
    pub port: u32,
}

/// The forwards of one connection, shared with its session task.
pub type Forwards = Arc<Mutex<Vec<Forward>>>;

/// The stages a connection goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Connected = 0,
    Authenticated = 1,
    /// An exec was accepted: the session's own timers run.
    InSession = 2,
    /// The session channel's work is done.
    Over = 3,
}

/// How far a connection got, for the watchdog that ends connections stuck on the way.
#[derive(Debug, Default)]
pub struct Progress {
    stage: AtomicU8,
    changed: tokio::sync::Notify,
}

impl Progress {
    pub fn reach(&self, stage: Stage) {
        self.stage.fetch_max(stage as u8, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn reached(&self, stage: Stage) -> bool {
        self.stage.load(Ordering::SeqCst) >= stage as u8
    }

    /// Whether `stage` is reached within `limit`.
    pub async fn wait_for(&self, stage: Stage, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if self.reached(stage) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.reached(stage);
            }
        }
    }
}

#[derive(Debug)]
pub struct AgentConnection {
    daemon: Arc<Daemon>,
    peer: Option<SocketAddr>,
    machine: Option<MachineEntry>,
    forwards: Forwards,
    session_channel: Option<ChannelId>,
    exec_accepted: bool,
    /// Watched by the connection's watchdog (`server::serve`).
    progress: Arc<Progress>,
    /// This connection's place among its machine's connections.
    machine_connection: Option<MachineConnection>,
    next_virtual_port: u32,
}

impl AgentConnection {
    pub fn new(daemon: Arc<Daemon>, peer: Option<SocketAddr>, progress: Arc<Progress>) -> Self {
        AgentConnection {
            daemon,
            peer,
            machine: None,
            forwards: Arc::new(Mutex::new(Vec::new())),
            session_channel: None,
            exec_accepted: false,
            progress,
            machine_connection: None,
            next_virtual_port: FIRST_VIRTUAL_PORT,
        }
    }

    fn peer(&self) -> String {
        self.peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown peer".to_owned())
    }

    fn machine_uuid(&self) -> &str {
        self.machine
            .as_ref()
            .map(|m| m.uuid.as_str())
            .unwrap_or("-")
    }

    fn refuse(
        &self,
        what: &str,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        tracing::warn!(machine = self.machine_uuid(), peer = %self.peer(), "refused {what}");
        session.channel_failure(channel)
    }

    /// A virtual port for `-R 0:...`: never bound, only a number the agent and we agree on.
    fn allocate_port(&mut self, taken: &[Forward]) -> u32 {
        loop {
            let port = self.next_virtual_port;
            self.next_virtual_port = if port >= u32::from(u16::MAX) {
                FIRST_VIRTUAL_PORT
            } else {
                port + 1
            };
            if !taken.iter().any(|f| f.port == port) {
                return port;
            }
        }
    }
}

/// Whether a forward's listen address names the loopback only: `localhost` (what OpenSSH
/// sends when no bind address is given), an IPv4 loopback or `::1`. Empty, `*` and any
/// other address would ask for a listener others can reach.
pub fn is_loopback_listen_address(address: &str) -> bool {
    if address.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

impl Handler for AgentConnection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if user != self.daemon.ctx.config.ssh_ping_user {
            tracing::info!(peer = %self.peer(), user, "refused login: not the ping user");
            return Ok(Auth::reject());
        }
        if self.daemon.machine_for(offer.public_key).is_some() {
            return Ok(Auth::Accept);
        }
        // A machine registered a moment ago: one rate-limited refresh before refusing.
        self.daemon.refresh_for_unknown_key().await;
        if self.daemon.machine_for(offer.public_key).is_some() {
            return Ok(Auth::Accept);
        }
        tracing::info!(peer = %self.peer(), key = %fingerprint(offer.public_key), "refused login: unknown key");
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if user != self.daemon.ctx.config.ssh_ping_user {
            return Ok(Auth::reject());
        }
        match self.daemon.machine_for(key.public_key) {
            Some(machine) => {
                // A key holding many connections (a compromised one, or an agent leaving
                // `ssh` processes behind) must not crowd the other machines out.
                let Some(slot) = self.daemon.connect_machine(&machine.uuid) else {
                    tracing::warn!(peer = %self.peer(), machine = %machine.uuid, "refused login: the machine has {MAX_CONNECTIONS_PER_MACHINE} connections open");
                    return Ok(Auth::reject());
                };
                tracing::info!(peer = %self.peer(), machine = %machine.uuid, unit = %machine.unit_name, "agent logged in");
                self.machine_connection = Some(slot);
                self.machine = Some(machine);
                self.progress.reach(Stage::Authenticated);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(machine) = self.machine.clone() else {
            return Ok(()); // dropping `reply` refuses the channel
        };
        if self.session_channel.is_some() {
            tracing::warn!(machine = %machine.uuid, "refused a second session channel");
            return Ok(());
        }
        reply.accept().await;
        self.session_channel = Some(channel.id());
        let daemon = Arc::clone(&self.daemon);
        let forwards = Arc::clone(&self.forwards);
        let handle = session.handle();
        let progress = Arc::clone(&self.progress);
        tokio::spawn(run_agent_channel(
            daemon, machine, channel, handle, forwards, progress,
        ));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.session_channel == Some(channel) && !self.exec_accepted {
            // Forced-command semantics: whatever the agent asked to run, it gets the ping.
            self.exec_accepted = true;
            self.progress.reach(Stage::InSession);
            return session.channel_success(channel);
        }
        self.refuse("a second exec", channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("a shell", channel, session)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("a pty", channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let what = format!("subsystem {:?}", name.chars().take(64).collect::<String>());
        self.refuse(&what, channel, session)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("X11 forwarding", channel, session)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::warn!(machine = self.machine_uuid(), "refused agent forwarding");
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let host =
            crate::session::escape_controls(&host_to_connect.chars().take(64).collect::<String>());
        tracing::warn!(
            machine = self.machine_uuid(),
            "refused a -L forward to {host}:{port_to_connect}"
        );
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.machine.is_none() {
            return Ok(false);
        }
        if !is_loopback_listen_address(address) || *port > u32::from(u16::MAX) {
            let shown: String = address.chars().take(64).collect();
            tracing::warn!(
                machine = self.machine_uuid(),
                "refused a remote forward on {shown:?} port {port}"
            );
            return Ok(false);
        }
        let shared = Arc::clone(&self.forwards);
        let Ok(mut forwards) = shared.lock() else {
            return Ok(false);
        };
        if forwards.len() >= MAX_FORWARDS_PER_CONNECTION {
            tracing::warn!(
                machine = self.machine_uuid(),
                "refused a remote forward: too many"
            );
            return Ok(false);
        }
        if *port == 0 {
            let allocated = self.allocate_port(&forwards);
            *port = allocated;
        }
        if forwards.iter().any(|f| f.port == *port) {
            return Ok(false);
        }
        forwards.push(Forward {
            address: address.to_owned(),
            port: *port,
        });
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(mut forwards) = self.forwards.lock() else {
            return Ok(false);
        };
        let before = forwards.len();
        forwards.retain(|f| !(f.address == address && f.port == port));
        Ok(forwards.len() != before)
    }
}

/// The key's SHA-256 fingerprint, as OpenSSH shows it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listen_addresses_are_accepted() {
        for ok in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1"] {
            assert!(is_loopback_listen_address(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "example.com",
            "localhost.evil",
            "127.0.0.1 ",
        ] {
            assert!(!is_loopback_listen_address(bad), "{bad}");
        }
    }
}

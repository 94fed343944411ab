//! Child processes: the private rsync daemon, ssh, ssh-keygen, hooks and the go/no-go
//! program. Every wait polls the signal flag and has a bound where the child is ours to end.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::signals;
use turku_agent::constants::limits;

/// A command from an argv (program first).
pub fn command(argv: &[String]) -> Result<Command> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut command = Command::new(program);
    command.args(args);
    Ok(command)
}

/// Spawns, turning "not found" into an error that says what to install or configure.
pub fn spawn(command: &mut Command, what: &str, setting: &str) -> Result<Child> {
    let program = command.get_program().to_string_lossy().into_owned();
    command.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("cannot run {what}: `{program}` was not found (install it, or set {setting})")
        } else {
            anyhow!("cannot run {what} `{program}`: {e}")
        }
    })
}

/// Why a wait ended.
#[derive(Debug)]
pub enum Waited {
    Exited(ExitStatus),
    Interrupted(Signal),
}

/// Waits for `child`, returning early when a signal arrives. Once a signal has arrived any
/// exit counts as the interruption: a child that shared it (a Ctrl-C reaches the whole
/// foreground group) exits at once, and its failure is the signal's doing, not the child's.
pub fn wait_or_signal(child: &mut Child) -> Result<Waited> {
    loop {
        let exited = child.try_wait()?;
        if let Some(signal) = signals::received() {
            return Ok(Waited::Interrupted(signal));
        }
        if let Some(status) = exited {
            return Ok(Waited::Exited(status));
        }
        std::thread::sleep(limits::CHILD_POLL);
    }
}

/// Ends a child started in its own process group (with whatever it forked): SIGTERM to the
/// group, SIGKILL after `grace`.
fn stop_group(child: &mut Child, grace: Duration) {
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if wait_or_kill(child, grace).is_none() {
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// Waits up to `bound`, then kills.
pub fn wait_or_kill(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(limits::CHILD_POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs a hook or the go/no-go program to its end (stdin closed, output inherited), in its
/// own process group so that a terminal's Ctrl-C reaches only the agent, which decides.
/// When `interruptible`, a signal stops it and is an error; a cleanup hook runs to its end.
pub fn run_to_end(
    argv: &[String],
    what: &str,
    setting: &str,
    interruptible: bool,
) -> Result<ExitStatus> {
    let mut child = spawn(
        command(argv)?.stdin(Stdio::null()).process_group(0),
        what,
        setting,
    )?;
    if !interruptible {
        return Ok(child.wait()?);
    }
    match wait_or_signal(&mut child)? {
        Waited::Exited(status) => Ok(status),
        Waited::Interrupted(signal) => {
            stop_group(&mut child, limits::HOOK_EXIT_GRACE);
            bail!("{what} interrupted by {signal}")
        }
    }
}

/// The private rsync daemon, in its own process group so that stopping it also stops the
/// children it forked for connections. Stopped when dropped.
#[derive(Debug)]
pub struct Rsyncd {
    child: Child,
    stopped: bool,
}

impl Rsyncd {
    pub fn spawn(argv: &[String]) -> Result<Rsyncd> {
        let mut command = command(argv)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let child = spawn(&mut command, "the rsync daemon", "rsyncd_command")?;
        Ok(Rsyncd {
            child,
            stopped: false,
        })
    }

    /// Waits until the daemon accepts connections on `addr`. `Ok(false)`: it exited first
    /// (usually the port was taken: the caller tries another).
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<bool> {
        let deadline = Instant::now() + limits::RSYNCD_START_BOUND;
        loop {
            if let Some(signal) = signals::received() {
                bail!("interrupted by {signal}");
            }
            if self.child.try_wait()?.is_some() {
                self.stopped = true;
                return Ok(false);
            }
            if TcpStream::connect_timeout(&addr, limits::RSYNCD_START_POLL * 20).is_ok() {
                return Ok(true);
            }
            if Instant::now() > deadline {
                bail!(
                    "the rsync daemon did not accept connections on {addr} within {:?}",
                    limits::RSYNCD_START_BOUND
                );
            }
            std::thread::sleep(limits::RSYNCD_START_POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM to the group, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if wait_or_kill(&mut self.child, limits::RSYNCD_EXIT_GRACE).is_none() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        // Connection children that outlived the parent leave with the group kill.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

impl Drop for Rsyncd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ssh with the request on stdin, which stays open until the storage ends the session. In
/// its own process group: a terminal's Ctrl-C reaches only the agent, which then ends the
/// session in order (stdin closed, the storage finishes, ssh exits).
#[derive(Debug)]
pub struct Ssh {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Ssh {
    pub fn spawn(argv: &[String], request: &str) -> Result<Ssh> {
        let mut command = command(argv)?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = spawn(&mut command, "ssh", "ssh_command")?;
        let mut stdin = child.stdin.take();
        if let Some(pipe) = stdin.as_mut() {
            // A refusing storage may close early: its exit status tells why.
            if let Err(e) = pipe
                .write_all(request.as_bytes())
                .and_then(|()| pipe.flush())
            {
                tracing::debug!("writing the request to ssh: {e}");
            }
        }
        Ok(Ssh { child, stdin })
    }

    /// Waits for the storage to end the session. On a signal, closes ssh's stdin (the
    /// storage then ends the session: a restore is over, a backup is abandoned) and gives
    /// ssh a grace period before killing it.
    pub fn wait(&mut self) -> Result<Waited> {
        let waited = wait_or_signal(&mut self.child)?;
        if let Waited::Interrupted(_) = waited {
            self.stdin = None;
            wait_or_kill(&mut self.child, limits::SSH_EXIT_GRACE);
        }
        Ok(waited)
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

//! Child processes: the private rsync daemon, ssh, ssh-keygen, hooks and the go/no-go
//! program. Every wait polls the signal flag and has a bound where the child is ours to end.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::{getppid, Pid};

use super::signals;
use turku_agent::constants::{exit, launcher, limits};

/// A command from an argv (program first).
pub fn command(argv: &[String]) -> Result<Command> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut command = Command::new(program);
    command.args(args);
    Ok(command)
}

/// A command that runs `argv` through the launcher (see `constants::launcher`: it gets the
/// agent's pid, the program's path, then `argv` itself), so the
/// program gets the parent-death signal when the agent dies, even by SIGKILL: a private
/// rsync daemon left behind would serve the machine's files on a loopback port for ever.
/// The signal follows the thread that spawned the child: the agent spawns from its main
/// thread only, whose end is the process's end. The program is looked up here, so "not
/// found" is reported as for a direct spawn.
pub fn bound_to_agent(argv: &[String], what: &str, setting: &str) -> Result<Command> {
    let (program, args) = argv.split_first().context("empty command")?;
    let search_path = std::env::var_os("PATH");
    let resolved = find_program(program, search_path.as_deref()).ok_or_else(|| {
        anyhow!("cannot run {what}: `{program}` was not found (install it, or set {setting})")
    })?;
    let mut command = Command::new(launcher::OWN_EXECUTABLE);
    command
        .arg0("turku-agent")
        .arg(launcher::LAUNCHER_ARG)
        .arg(std::process::id().to_string())
        .arg(resolved)
        .arg(program)
        .args(args);
    Ok(command)
}

/// `program` as execvp would find it: a path as it is, a bare name in `search_path` (the
/// value of `PATH`; unset, execvp's default list).
fn find_program(program: &str, search_path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let search_path = search_path.unwrap_or(launcher::DEFAULT_SEARCH_PATH.as_ref());
    std::env::split_paths(search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The launcher's side, when `args` (after the program name) start with
/// [`launcher::LAUNCHER_ARG`]: arms the parent-death signal, checks that the agent that
/// asked is still its parent (it may have died before the signal was armed, and then no
/// signal would ever come), and becomes the program. `None`: not asked to launch.
pub fn launch_if_asked(args: &[OsString]) -> Option<ExitCode> {
    let (first, rest) = args.split_first()?;
    if first.as_os_str() != launcher::LAUNCHER_ARG {
        return None;
    }
    let [parent, program, name, program_args @ ..] = rest else {
        eprintln!("turku-agent: {}: missing arguments", launcher::LAUNCHER_ARG);
        return Some(ExitCode::from(exit::LAUNCH_FAILED));
    };
    let Some(parent) = parent.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        eprintln!("turku-agent: {}: bad parent pid", launcher::LAUNCHER_ARG);
        return Some(ExitCode::from(exit::LAUNCH_FAILED));
    };
    if let Err(e) = set_pdeathsig(launcher::PARENT_DEATH_SIGNAL) {
        eprintln!("turku-agent: cannot set the parent-death signal: {e}");
        return Some(ExitCode::from(exit::LAUNCH_FAILED));
    }
    if getppid().as_raw() != parent {
        // The agent is gone already: its session with it.
        return Some(ExitCode::from(exit::LAUNCH_FAILED));
    }
    // The mask is inherited through spawn and exec: the agent's blocked SIGINT, SIGTERM and
    // SIGHUP would leave ssh deaf to the parent-death signal (it waits with the mask it
    // started with).
    if let Err(e) = SigSet::empty().thread_set_mask() {
        eprintln!("turku-agent: cannot clear the signal mask: {e}");
        return Some(ExitCode::from(exit::LAUNCH_FAILED));
    }
    let error = Command::new(program).arg0(name).args(program_args).exec();
    eprintln!(
        "turku-agent: cannot run `{}`: {error}",
        Path::new(program).display()
    );
    Some(ExitCode::from(exit::LAUNCH_FAILED))
}

/// Spawns, turning "not found" into an error that says what to install or configure.
pub fn spawn(command: &mut Command, what: &str, setting: &str) -> Result<Child> {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .spawn()
        .map_err(|e| spawn_error(&program, e, what, setting))
}

fn spawn_error(program: &str, error: std::io::Error, what: &str, setting: &str) -> anyhow::Error {
    match error.kind() {
        // The launcher is the agent itself, found through /proc.
        std::io::ErrorKind::NotFound if program == launcher::OWN_EXECUTABLE => anyhow!(
            "cannot run {what}: the agent starts it through {program}, which needs /proc \
             mounted (the agent runs on Linux only)"
        ),
        std::io::ErrorKind::NotFound => {
            anyhow!("cannot run {what}: `{program}` was not found (install it, or set {setting})")
        }
        _ => anyhow!("cannot run {what} `{program}`: {error}"),
    }
}

/// Whether a child started through the launcher exited because the launcher could not run
/// the program (it said why on stderr).
pub fn launch_failed(status: ExitStatus) -> bool {
    status.code() == Some(i32::from(exit::LAUNCH_FAILED))
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
        let mut command = bound_to_agent(argv, "the rsync daemon", "rsyncd_command")?;
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
    /// (usually the port was taken: the caller tries another); an error when it could not
    /// be run at all.
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<bool> {
        let deadline = Instant::now() + limits::RSYNCD_START_BOUND;
        loop {
            if let Some(signal) = signals::received() {
                bail!("interrupted by {signal}");
            }
            if let Some(status) = self.child.try_wait()? {
                self.stopped = true;
                // Another port would not help.
                if launch_failed(status) {
                    bail!(
                        "cannot run the rsync daemon (see the launcher's message above; \
                         check rsyncd_command)"
                    );
                }
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
        let mut command = bound_to_agent(argv, "ssh", "ssh_command")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_path_a_bare_name_is_looked_up_where_execvp_looks() {
        let found = find_program("sh", None).expect("sh in execvp's default path");
        assert!(found.is_absolute() && found.ends_with("sh"), "{found:?}");
        assert_eq!(
            find_program("sh", Some("/nonexistent".as_ref())),
            None,
            "a PATH that is set is the only place looked in"
        );
        assert_eq!(find_program("./x/sh", None), Some(PathBuf::from("./x/sh")));
    }

    #[test]
    fn a_missing_proc_is_named_as_such() {
        let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = spawn_error(launcher::OWN_EXECUTABLE, not_found(), "ssh", "ssh_command");
        let text = e.to_string();
        assert!(
            text.contains("needs /proc") && !text.contains("install"),
            "{text}"
        );
        let e = spawn_error("rsync", not_found(), "the rsync daemon", "rsyncd_command");
        assert!(e.to_string().contains("install it, or set rsyncd_command"));
    }
}

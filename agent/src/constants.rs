//! Every path, default, file name and tuning knob of the agent, in one place. The defaults
//! and names are the original turku-agent's (`spec/turku.md` §3): operators swap the package
//! and keep their files, so none of these may change.

use std::time::Duration;

/// The default config dir (`--config-dir`/`-c`).
pub const DEFAULT_CONFIG_DIR: &str = "/etc/turku-agent";
/// Admin config, deep-merged in file name order.
pub const CONFIG_SUBDIR: &str = "config.d";
/// Source definitions, deep-merged in file name order.
pub const SOURCES_SUBDIR: &str = "sources.d";
/// The default `var_dir`.
pub const DEFAULT_VAR_DIR: &str = "/var/lib/turku-agent";
/// The machine-generated config file under `<var_dir>/config.d`.
pub const MACHINE_UUID_FILE: &str = "10-machine_uuid.json";
/// The agent's SSH key under `var_dir` (the public half adds `.pub`).
pub const SSH_KEY_FILE: &str = "ssh_key";
/// The public half of the SSH key under `var_dir`.
pub const SSH_PUBLIC_KEY_FILE: &str = "ssh_key.pub";
/// The comment `ssh-keygen` puts on the generated key.
pub const SSH_KEY_COMMENT: &str = "turku";
/// Mode of the machine-generated config (it holds the machine secret).
pub const MACHINE_UUID_FILE_MODE: u32 = 0o600;
/// Lock directories tried in order when `lock_dir` is not configured (the original's list).
pub const LOCK_DIR_CANDIDATES: [&str; 5] = ["/run/lock", "/var/lock", "/run", "/var/run", "/tmp"];
/// Lock names: the original derives them from its program names, so an original agent and
/// ours never run a ping (or an update) at the same time.
pub const PING_LOCK_NAME: &str = "turku-agent-ping";
/// See [`PING_LOCK_NAME`].
pub const UPDATE_CONFIG_LOCK_NAME: &str = "turku-update-config";

/// A storage session's private directory in `TMPDIR` (rsyncd.conf, secrets, known_hosts):
/// `SESSION_DIR_PREFIX` + 6 random characters.
pub const SESSION_DIR_PREFIX: &str = "turku-agent.";
/// The file in a session directory naming its agent: `<pid> <start time>` (the start time in
/// clock ticks since boot, field 22 of `/proc/<pid>/stat`, so a reused pid is told apart).
/// A later ping removes the directories whose agent is gone (killed outright).
pub const SESSION_DIR_OWNER_FILE: &str = "owner";

/// Config defaults (`spec/turku.md` §3.2).
pub mod defaults {
    pub const RSYNCD_COMMAND: &str = "rsync";
    pub const RSYNCD_USER: &str = "root";
    /// `*`: the user's primary group (recent rsync daemons).
    pub const RSYNCD_GROUP: &str = "*";
    pub const RSYNCD_LOCAL_ADDRESS: &str = "127.0.0.1";
    pub const SSH_COMMAND: &str = "ssh";
    pub const SSH_KEY_TYPE: &str = "ed25519";
    pub const RESTORE_PATH: &str = "/var/backups/turku-agent/restore";
    pub const RESTORE_MODULE: &str = "turku-restore";
    /// The program `ssh-keygen` (the original runs it from `PATH`).
    pub const SSH_KEYGEN: &str = "ssh-keygen";
}

/// Keys of a source that belong to this agent and are never sent to the coordinator (they
/// are local commands; the coordinator would store them in its database).
pub const AGENT_ONLY_SOURCE_KEYS: [&str; 2] = ["pre_command", "post_command"];

/// The ping protocol to the storage (`spec/turku.md` §3.4).
pub mod ping {
    /// The remote command (ignored by the storage: forced command).
    pub const REMOTE_COMMAND: &str = "turku-ping-remote";
    /// The port is drawn from the dynamic range, as the original draws it.
    pub const PORT_MIN: u16 = 49152;
    /// Inclusive.
    pub const PORT_MAX: u16 = 65535;
    /// `checkin` (backups) and `restore` request actions.
    pub const ACTION_CHECKIN: &str = "checkin";
    pub const ACTION_RESTORE: &str = "restore";
    /// The line that ends the request on the storage's stdin.
    pub const REQUEST_END: &str = ".";
    /// The default OpenSSH port: known_hosts lines for any other name `[host]:port`.
    pub const SSH_DEFAULT_PORT: u16 = 22;
    /// rsyncd.conf's section for global settings: no module may take its name.
    pub const RSYNCD_GLOBAL_SECTION: &str = "global";
    /// Module line that keeps restored symlinks as they were (rsync munges them in a
    /// writable module of a daemon without chroot).
    pub const RSYNCD_NO_SYMLINK_MUNGING: &str = "    munge symlinks = no\n";
}

/// Generated credentials.
pub mod credentials {
    /// Length of machine secrets and per-session rsync passwords (30 × `[A-Za-z0-9]`).
    pub const SECRET_LEN: usize = 30;
    /// The alphabet of secrets and passwords.
    pub const SECRET_ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    /// Minimum Shannon entropy of a machine UUID's random bits: the coordinator refuses
    /// registrations below it (its `UUID_MIN_ENTROPY`; the original's `validate_uuid`).
    pub const UUID_MIN_ENTROPY: f64 = 0.95;
}

/// Waits and bounds of the process handling.
pub mod limits {
    use super::Duration;

    /// How long the private rsync daemon may take to accept connections. Polled, so the
    /// usual wait is a few milliseconds (the original sleeps a fixed 3 s).
    pub const RSYNCD_START_BOUND: Duration = Duration::from_secs(10);
    /// Poll interval while waiting for the daemon to listen.
    pub const RSYNCD_START_POLL: Duration = Duration::from_millis(5);
    /// Ports tried when the drawn port turns out taken (the daemon exits at once).
    pub const PORT_ATTEMPTS: usize = 8;
    /// Poll interval while waiting for ssh, a hook or the go/no-go program.
    pub const CHILD_POLL: Duration = Duration::from_millis(20);
    /// After ssh's stdin is closed on an interrupt, how long ssh may take to leave before it
    /// is killed (the storage ends the session on end of input).
    pub const SSH_EXIT_GRACE: Duration = Duration::from_secs(5);
    /// How long an interrupted hook (and what it forked) gets after SIGTERM.
    pub const HOOK_EXIT_GRACE: Duration = Duration::from_secs(5);
    /// How long the rsync daemon may take to exit after SIGTERM before SIGKILL.
    pub const RSYNCD_EXIT_GRACE: Duration = Duration::from_secs(3);
    /// Connect/request bounds of the coordinator calls (the original uses 5 s; a loaded
    /// coordinator hashing secrets may need more).
    pub const API_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// Bound on `ssh-keygen`.
    pub const KEYGEN_BOUND: Duration = Duration::from_secs(60);
}

/// The launcher that starts the rsync daemon and ssh bound to the agent's life: the agent
/// runs itself as `turku-agent LAUNCHER_ARG <agent pid> <path> <argv>...`, which arms the
/// parent-death signal and becomes the program (arming it between fork and exec would need
/// `pre_exec`, unsafe code, which the workspace forbids). Linux only: it needs `/proc`.
///
/// The kernel clears the parent-death signal when it executes a setuid or setgid program (or
/// one with file capabilities): an `rsyncd_command` or `ssh_command` that starts with such a
/// wrapper (`sudo`, a setuid helper) does not die with the agent.
pub mod launcher {
    /// The first argument that makes `turku-agent` the launcher; no subcommand looks like it.
    pub const LAUNCHER_ARG: &str = "--internal-run-bound-to-agent";
    /// What the kernel sends the program when the agent dies, even by SIGKILL: both rsync
    /// and ssh end on it their usual way.
    pub const PARENT_DEATH_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGTERM;
    /// Where the running agent's own executable is, even after a package upgrade replaced
    /// the file.
    pub const OWN_EXECUTABLE: &str = "/proc/self/exe";
    /// Where execvp looks for a bare program name when `PATH` is unset (glibc's
    /// `confstr(_CS_PATH)`), so the agent finds what a direct spawn would.
    pub const DEFAULT_SEARCH_PATH: &str = "/bin:/usr/bin";
}

/// Exit codes.
pub mod exit {
    /// Interrupted by SIGINT (128 + 2), as shells report it.
    pub const INTERRUPTED_SIGINT: u8 = 130;
    /// Interrupted by SIGTERM (128 + 15).
    pub const INTERRUPTED_SIGTERM: u8 = 143;
    /// The launcher could not run the program (exec failed: EACCES, ENOEXEC, ...; it says
    /// why on stderr). Not 127: the agent reads any other early exit of the rsync daemon as
    /// "port taken" and draws another port; 126 is the shell's "found but cannot execute",
    /// which neither rsync's daemon exit codes nor a wrapper script use for a taken port.
    pub const LAUNCH_FAILED: u8 = 126;
}

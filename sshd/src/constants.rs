//! The storage daemon's wire constants and limits, in one place.

/// Port of an `rsync://` URL that names none.
pub const RSYNC_DEFAULT_PORT: u16 = 873;

/// How many of the peer's messages a failed pull quotes in its error.
pub const MAX_REASONS_SHOWN: usize = 5;

/// The agent's restore module when `restore --module` names none (the original agent's
/// `restore_module` default).
pub const RESTORE_MODULE: &str = "turku-restore";

/// How often a restore waiting on the agent's departure looks again.
pub const CANCEL_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a failed restore waits to learn whether the agent went away (its input closing
/// is seen by another task than the push's).
pub const GONE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How often a push reports progress and checks whether its operator went away.
pub const PROGRESS_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a push's progress is written when standard error is not a terminal.
pub const PROGRESS_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest password file read: stock reads only a short first line, and a bound keeps a
/// mistaken path (a log, a device) from being read whole.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// Chunk bytes one rsync basis may fetch from the store, in this many times its size plus
/// `BASIS_SPILL_SLACK`, before it is copied once to a temporary file and read from there:
/// an in-order reader fetches each chunk once; a sender that jumps between chunks would
/// otherwise cost a whole chunk per 4-byte block token.
pub const BASIS_SPILL_FACTOR: u64 = 2;
pub const BASIS_SPILL_SLACK: u64 = 64 * 1024 * 1024;

// The agent's ping request (`ping.rs`).
/// Largest ping request, counting every byte up to and including the terminating `.` line.
/// A real agent sends well under 1 KiB per source.
pub const MAX_PING_REQUEST_BYTES: usize = 1 << 20;
/// Most sources one request may carry credentials for.
pub const MAX_PING_SOURCES: usize = 4096;
/// Longest source name, in characters: the API stores names in a 255-character column.
pub const MAX_SOURCE_NAME_CHARS: usize = 255;
/// Longest machine uuid accepted from the forced command (canonical form is 36).
pub const MAX_MACHINE_UUID_BYTES: usize = 64;
/// Longest per-session rsync username (the agent sends a 36-character uuid4).
pub const MAX_RSYNC_USERNAME_BYTES: usize = 256;
/// Longest per-session rsync password (the agent sends 30 alphanumerics).
pub const MAX_RSYNC_PASSWORD_BYTES: usize = 1024;

/// Defaults of the configuration (`config.rs`): the original turku-storage's (spec
/// `turku.md` §2.2) and our own keys'.
pub mod config {
    /// The config directory when `--config-dir` names none.
    pub const DEFAULT_CONFIG_DIR: &str = "/etc/turku-storage";
    /// No new machines on a volume used above this percentage.
    pub const ACCEPT_NEW_HIGH_WATER_PCT: f64 = 80.0;
    pub const VAR_DIR: &str = "/var/lib/turku-storage";
    /// The only `snapshot_mode` that keeps earlier snapshots as a basis.
    pub const SNAPSHOT_MODE_LINK_DEST: &str = "link-dest";
    pub const SSH_PING_PORT: u16 = 22;
    pub const SSH_PING_USER: &str = "root";
    pub const SSH_PING_HOST_KEYS_GLOB: &str = "/etc/ssh/ssh_host_*_key.pub";
    pub const AUTHORIZED_KEYS_COMMAND: &str = "turku-storage-ping";
    pub const TIMEZONE: &str = "UTC";
    /// Lock directories tried in order when `lock_dir` is not set.
    pub const LOCK_DIR_CANDIDATES: [&str; 5] =
        ["/run/lock", "/var/lock", "/run", "/var/run", "/tmp"];
    pub const LOCK_DIR_LAST_RESORT: &str = "/tmp";
    /// The store's directory under the first volume's path when `store` is not set.
    pub const STORE_SUBDIR: &str = "turku-store";
    /// The host keys' directory under `var_dir` when `host_key_dir` is not set.
    pub const HOST_KEY_SUBDIR: &str = "host_keys";
    /// The control socket under `var_dir` when `control_socket` is not set: in a folder of
    /// its own, made private (0700) before the socket is bound, so no other user can ever
    /// reach the socket, not even between bind and chmod.
    pub const CONTROL_SOCKET: &str = "control/turku-storage.sock";
    /// Where the kernel keeps the host name advertised as `ssh_ping_host` by default.
    pub const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";
    pub const FALLBACK_HOSTNAME: &str = "localhost";

    // The daemon's limits and timers (`DaemonSettings`).
    pub const MAX_CONNECTIONS: usize = 256;
    pub const MAX_SESSIONS: usize = 64;
    /// Each backup keeps one core busy hashing and compressing; more than a few at once only
    /// share the same disks.
    pub const MAX_BACKUPS: usize = 4;
    /// A due source waits this long for a backup slot; an agent pings every ~5 minutes, so
    /// a source left due is retried soon.
    pub const BACKUP_QUEUE_TIMEOUT_SECS: u64 = 120;
    /// An agent logs in within a second; OpenSSH's LoginGraceTime (120 s) would let clients
    /// without a key hold their share of connections four times longer.
    pub const LOGIN_TIMEOUT_SECS: u64 = 30;
    pub const IDLE_TIMEOUT_SECS: u64 = 300;
    /// A whole session; a first backup of a large machine takes hours.
    pub const SESSION_TIMEOUT_SECS: u64 = 24 * 3600;
    /// The original storage's cron refreshes every 5 minutes.
    pub const REFRESH_INTERVAL_SECS: u64 = 300;
    pub const REFRESH_MIN_INTERVAL_SECS: u64 = 10;
    pub const RSYNC_IO_TIMEOUT_SECS: u64 = 600;
    pub const RSYNC_CONNECT_TIMEOUT_SECS: u64 = 60;
    pub const GC_MIN_INTERVAL_SECS: u64 = 600;
    /// Bounds on what a count or duration key may say.
    pub const MAX_COUNT_SETTING: u64 = 1_000_000;
    pub const MAX_DURATION_SETTING_SECS: f64 = 10.0 * 365.0 * 86400.0;
}

/// The SSH host keys (`hostkeys.rs`): OpenSSH's file names and modes, so an operator's tools
/// and habits apply unchanged.
pub mod hostkeys {
    /// The ed25519 host key in the host key directory; its public half adds
    /// [`PUBLIC_KEY_SUFFIX`].
    pub const ED25519_KEY_FILE: &str = "ssh_host_ed25519_key";
    pub const PUBLIC_KEY_SUFFIX: &str = ".pub";
    /// Prefix of the comment a generated key carries, followed by the host name, so a pinned
    /// known_hosts line says where it came from.
    pub const KEY_COMMENT_PREFIX: &str = "turku-storage@";
    /// Only the daemon may list or read its keys.
    pub const DIR_MODE: u32 = 0o700;
    pub const PRIVATE_KEY_MODE: u32 = 0o600;
    pub const PUBLIC_KEY_MODE: u32 = 0o644;
    /// Group and other permission bits: any of them on a private key makes OpenSSH refuse it,
    /// and so do we.
    pub const UNPROTECTED_MODE_BITS: u32 = 0o077;
    /// Largest host key file read: an ed25519 key is about 400 bytes, RSA-16384 under 13 KiB;
    /// a bound keeps a mistaken path (a log, a device) from being read whole.
    pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
}

/// The authorized machines registry (`authorized.rs`).
pub mod authorized {
    /// The last coordinator reply's machines, kept under `var_dir` so that a restart while
    /// the coordinator is down still accepts known agents.
    pub const CACHE_FILE: &str = "authorized-machines.json";
    /// Written into the cache file; a file of another version is refused, not guessed at.
    pub const CACHE_FORMAT_VERSION: u32 = 1;
    /// The cache names every machine and its key: for the daemon's eyes only.
    pub const CACHE_FILE_MODE: u32 = 0o600;
    /// Largest cache file read. One machine takes at most about 1.5 KiB (an RSA-4096 key
    /// and its names), so this holds over 20,000 machines.
    pub const MAX_CACHE_FILE_BYTES: u64 = 32 * 1024 * 1024;
    /// Largest operator static key file read (OpenSSH authorized_keys syntax).
    pub const MAX_STATIC_FILE_BYTES: u64 = 4 * 1024 * 1024;
    /// Static file options our fixed channel policy already supersedes (no shell, no pty,
    /// loopback `-R` only), so accepting the line loses nothing the operator asked for.
    pub const SUPERSEDED_OPTIONS: &[&str] = &[
        "command",
        "no-pty",
        "pty",
        "no-agent-forwarding",
        "agent-forwarding",
        "no-x11-forwarding",
        "x11-forwarding",
        "no-user-rc",
        "user-rc",
        "no-port-forwarding",
        "port-forwarding",
        "permitopen",
        "permitlisten",
        "restrict",
        "environment",
        "tunnel",
    ];
    /// Any other option (`from=`, `expiry-time=`, `cert-authority`, ...) restricts or changes
    /// who may log in in a way we do not enforce: such a line is refused, as OpenSSH refuses
    /// a line with options it does not know.
    pub const FORCED_COMMAND_OPTION: &str = "command";
}

// One agent session (`session.rs`).
/// Lines queued for the agent's stderr; a client that does not read loses lines beyond
/// this, and the backup never waits for it.
pub const CONSOLE_QUEUE_LINES: usize = 256;
/// Longest summary sent to the coordinator (it keeps it in a text column shown in lists).
pub const MAX_SUMMARY_BYTES: usize = 8192;
/// Snapshot mode `none` keeps one copy, as the original's single `--inplace` tree.
pub const NONE_MODE_RETENTION: &str = "last 1 snapshot";

/// What a session tells the agent, in the original's words where it has them.
pub mod session {
    pub const SOURCES_DUE: &str = "Sources to back up: ";
    pub const NOTHING_DUE: &str = "No sources to back up now";
    pub const DONE: &str = "Done";
    pub const RESTORE_FINISHED: &str = "Restore mode finished";
    pub const CHECKIN_FAILED: &str = "Cannot check in with the coordinator; nothing was backed up";
    pub const BUSY: &str = "Storage busy";
    pub const ALREADY_RUNNING: &str =
        "Another session of this machine is running on this storage; try again later";
    pub const REQUEST_TIMED_OUT: &str = "No complete ping request arrived in time";
    pub const SESSION_TIMED_OUT: &str = "Session time limit reached; unfinished sources stay due";
    pub const GONE: &str = "The session closed before its request arrived";
    pub const AGENT_GONE: &str = "the agent's connection is gone; not attempted";
    pub const NOT_A_SHELL: &str =
        "Only the ping command runs here: no shell or subsystem; nothing was backed up";
    pub const INPUT_BEFORE_COMMAND: &str =
        "Input arrived before the command; nothing was backed up";
}

/// The SSH server (`server/`).
pub mod daemon {
    use std::time::Duration;

    pub const SERVER_ID: &str = "SSH-2.0-turku-storage";
    /// The ciphers offered: AES-GCM only. The client's order decides and stock OpenSSH asks
    /// for chacha20-poly1305 first, then the CTR modes, so offering only GCM is what makes a
    /// default agent use it. A 1 GiB initial backup through the daemon
    /// (`benches/tunnel-throughput.sh`, 2-core Xeon with AES-NI, medians of 3): chacha20-
    /// poly1305 177 MB/s and 4.9 s daemon CPU, aes128-ctr 168 MB/s / 5.0 s, aes128-gcm
    /// 250 MB/s / 3.5 s, aes256-gcm 253 MB/s / 3.7 s. Every OpenSSH since 6.2 (2013) has GCM.
    pub const CIPHERS: &[russh::cipher::Name] =
        &[russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM];
    /// Bytes the agent may send on a channel before we have taken them. Measured with
    /// aes128-gcm on the same bench: 2 MiB 211-240 MB/s, 16 MiB 189-234 MB/s, no gain
    /// beyond the machine's noise, so the smaller bound on per-channel buffering stays.
    pub const CHANNEL_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
    /// Largest channel data packet we accept: 64 KiB (65535) measured 221-230 MB/s against
    /// 32 KiB's 211-240, no gain; 32 KiB is what OpenSSH uses.
    pub const MAX_PACKET_BYTES: u32 = 32 * 1024;
    /// Nagle off: a ping is a chain of small request/reply exchanges. With it on, a no-op
    /// ping took 104 ms (two ~42 ms stalls on the agent's delayed ACK: the key exchange reply
    /// and the exit status) and one agent managed 10 pings/s. Its effect on bulk rate is unmeasured.
    pub const TCP_NODELAY: bool = true;
    /// Every refused login takes this long, so timing tells nothing about which keys exist.
    pub const AUTH_REJECTION_TIME: Duration = Duration::from_millis(200);
    /// Probing a silent client; `KEEPALIVE_MAX` unanswered probes end the connection.
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
    pub const KEEPALIVE_MAX: usize = 4;
    /// Remote forwards one connection may record (the agent asks for one).
    pub const MAX_FORWARDS_PER_CONNECTION: usize = 16;
    /// Where ports for `-R 0:...` forwards are numbered from (never bound: only a number).
    pub const FIRST_VIRTUAL_PORT: u32 = 40000;
    /// The in-memory pipe between a forwarded channel and its pull.
    pub const BRIDGE_BUFFER_BYTES: usize = 256 * 1024;
    /// Connections not logged in yet, in all and from one address (OpenSSH's MaxStartups
    /// idea): clients without a key cannot hold every connection.
    pub const MAX_UNAUTHENTICATED: usize = 128;
    pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 16;
    /// Connections one machine may hold at once (a backup session and a restore session,
    /// and one to spare while a dead one times out).
    pub const MAX_CONNECTIONS_PER_MACHINE: usize = 3;
    /// After its session ended, a connection gets this long to close by itself.
    pub const SESSION_END_GRACE: Duration = Duration::from_secs(10);
    /// How long the last lines for the agent may take before the exit status goes out.
    pub const CONSOLE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
    /// The connection outlives `idle_timeout` by this much, so a session that timed out
    /// waiting for its request can still tell the agent why before the connection drops.
    pub const IDLE_DISCONNECT_GRACE: Duration = Duration::from_secs(5);
}

/// Read size for the forced command's stdin (the request, then whatever follows).
pub const FORCED_STDIN_READ_BYTES: usize = 64 * 1024;

/// The registration request (`registration.rs`).
pub mod registration {
    /// The original reports space in MiB (`f_bsize * f_blocks / 1048576`, as floats).
    pub const BYTES_PER_MIB: f64 = 1_048_576.0;
}

/// `update-config --openssh` (`openssh.rs`).
pub mod openssh {
    /// Largest OpenSSH public host key file read (an RSA-16384 key is under 3 KiB).
    pub const MAX_HOST_KEY_FILE_BYTES: u64 = 64 * 1024;
    /// Largest `<authorized_keys_file>.static` copied into the generated file.
    pub const MAX_STATIC_BYTES: u64 = 4 * 1024 * 1024;
}

/// glibc's malloc arenas for the whole process (`cli::limit_allocator_arenas`), and the
/// environment variable that sets them.
pub const MALLOC_ARENAS: u32 = 2;
pub const MALLOC_ARENA_ENV: &str = "MALLOC_ARENA_MAX";

/// The daemon's local control socket (`control.rs`).
pub mod control {
    use std::time::Duration;

    /// Mode of the socket's own folder: only the daemon's user may look inside.
    pub const SOCKET_FOLDER_MODE: u32 = 0o700;
    /// Mode of the socket itself (the folder already keeps others out).
    pub const SOCKET_MODE: u32 = 0o600;
    /// Longest request or reply line; a request is a few hundred bytes, a reply at most a
    /// report with its bounded lists of failed files and warnings.
    pub const MAX_LINE_BYTES: usize = 1 << 20;
    /// How long a connection may take to send its request, and a reply line to be written.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long `restore` waits for the daemon's next line before it gives up: the daemon
    /// writes one at least every `HEARTBEAT_INTERVAL` while it works.
    pub const REPLY_SILENCE_TIMEOUT: Duration = Duration::from_secs(120);
    /// Longest the daemon stays silent on a control connection while it works.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
    /// Least time between two progress lines.
    pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
    /// Longest snapshot name asked for (ours are 20-odd characters).
    pub const MAX_SNAPSHOT_NAME_BYTES: usize = 256;
    /// Longest rsync module name asked for.
    pub const MAX_MODULE_BYTES: usize = 256;
    /// Longest path inside a snapshot asked for.
    pub const MAX_SUB_PATH_BYTES: usize = 4096;
}

//! The storage daemon's wire constants and limits, in one place.

/// Port of an `rsync://` URL that names none.
pub const RSYNC_DEFAULT_PORT: u16 = 873;

/// How many of the peer's messages a failed pull quotes in its error.
pub const MAX_REASONS_SHOWN: usize = 5;

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
    /// OpenSSH's LoginGraceTime.
    pub const LOGIN_TIMEOUT_SECS: u64 = 120;
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

//! Coordinator constants: thresholds, defaults and storage encodings. Wire constants shared
//! with clients live in `turku_api_types::constants`.

use std::time::Duration;

/// Default database file (in the working directory, like Django's `db.sqlite3`).
pub const DEFAULT_DB_PATH: &str = "turku-api.sqlite3";
/// Default listen address (the original's container listens on 8000).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Environment variable for `--db`.
pub const ENV_DB: &str = "TURKU_API_DB";
/// Environment variable for `--listen`.
pub const ENV_LISTEN: &str = "TURKU_API_LISTEN";
/// Environment variable for `--time-zone` (Django `TIME_ZONE`).
pub const ENV_TIME_ZONE: &str = "TURKU_API_TIME_ZONE";

/// Datetime text stored in SQLite: Django's SQLite encoding of an aware datetime in UTC.
/// Fixed width, so text order is time order.
pub const DB_DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// How long a statement waits for another process's lock on the database (a CLI writer)
/// before failing. Requests wait on a blocking thread, never on an async worker.
pub const DB_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Mode of a new database file (and so of its `-wal` and `-shm` siblings, which SQLite
/// creates with the database's mode): it holds every secret hash.
pub const DB_FILE_MODE: u32 = 0o600;

/// Permission bits taken away from an existing database file (and its siblings) at open:
/// access for "others". Group bits are left alone: an administrator may have granted them on
/// purpose (a monitoring group running `turku-api health`).
pub const DB_FILE_STRIPPED_BITS: u32 = 0o007;

/// Largest request body accepted. Agents send their source list; 1 MiB is far above any real
/// configuration while bounding memory per request.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Health thresholds (`spec/turku.md` §1.9).
pub mod health {
    use super::Duration;
    /// A storage is healthy for this long after registration, then must check in this often.
    pub const STORAGE_GRACE: Duration = Duration::from_secs(30 * 60);
    /// A machine is healthy for this long after registration.
    pub const MACHINE_GRACE: Duration = Duration::from_secs(60 * 60);
    /// A machine must have checked in within this window.
    pub const MACHINE_CHECKIN: Duration = Duration::from_secs(10 * 60 * 60);
    /// A source is healthy for this long after being added.
    pub const SOURCE_GRACE: Duration = Duration::from_secs(4 * 60 * 60);
    /// A source may be overdue by at most this much.
    pub const SOURCE_OVERDUE: Duration = Duration::from_secs(10 * 60 * 60);
}

/// Secret hashing.
pub mod secrets {
    /// Django's Argon2 defaults (`Argon2PasswordHasher`): memory in KiB, passes, lanes.
    pub const ARGON2_MEMORY_KIB: u32 = 102_400;
    /// Django default `time_cost`.
    pub const ARGON2_TIME_COST: u32 = 2;
    /// Django default `parallelism`.
    pub const ARGON2_PARALLELISM: u32 = 8;
    /// Django default hash length in bytes.
    pub const ARGON2_HASH_LEN: usize = 32;
    /// Django salts are 22 characters from `[A-Za-z0-9]` (≥ 128 bits of entropy).
    pub const SALT_CHARS: usize = 22;
    /// Prefix of Django's Argon2 encoding (`argon2` + the PHC string).
    pub const ARGON2_PREFIX: &str = "argon2";
    /// Algorithm tag of Django's PBKDF2-SHA256 hasher.
    pub const PBKDF2_SHA256_PREFIX: &str = "pbkdf2_sha256";
    /// Django marks unusable passwords with this prefix; they never verify.
    pub const UNUSABLE_PREFIX: char = '!';
    /// Length of generated registration secrets (Django `get_random_string(30)`).
    pub const REGISTRATION_SECRET_LEN: usize = 30;
    /// Argon2 verifications allowed to run at once: each holds ~100 MiB and a core.
    pub const MAX_CONCURRENT_HASHES: usize = 2;
}

/// Admission of requests that need Argon2 (a cache miss or a new registration).
pub mod admission {
    use super::Duration;
    /// Requests allowed to wait for a hash slot beyond those running: at ~170 ms a hash and
    /// two slots, a full queue drains in about three seconds. Beyond it the answer is 503.
    pub const MAX_QUEUED_HASHES: usize = 32;
    /// `Retry-After` of a 503 for a full queue.
    pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);
    /// Requests allowed on blocking threads outside the hash path at once (the fast path:
    /// cached check-ins and everything that needs no hash). They all wait on the one
    /// database connection, for up to the busy timeout while a CLI writer holds the lock;
    /// unbounded, a flood would fill the blocking pool (512 threads) and delay admitted
    /// hashes. Beyond it the answer is 503 at once, never a queue. Generous: agents ping
    /// from cron on the same minutes, so thousands of check-ins (~0.1 ms each) can arrive
    /// within a second, and half the pool still stays free for admitted hashes.
    pub const MAX_FAST_PATH_TASKS: usize = 256;
    /// Body of a 503 (text, like every other error answer of the API).
    pub const BUSY_BODY: &str = "Service Unavailable (busy, retry later)";
}

/// Throttling of failed secrets, per principal (a machine, a storage, a registration Auth) and
/// client address.
pub mod throttle {
    use super::Duration;
    /// Verifications from scratch a principal may fail in a row from one client address
    /// before it is refused there without hashing. A legitimate client fails at most once
    /// (its secret changed).
    pub const FAILURE_BURST: u32 = 10;
    /// One more try is allowed per this interval once the burst is spent: a guesser gets two
    /// hashes a minute per principal. A successful verification forgives every failure.
    pub const FAILURE_REFILL: Duration = Duration::from_secs(30);
    /// (Principal, client) pairs tracked at once. Only principals that exist in the database
    /// and failed recently are tracked, so this is far above any fleet; past it buckets that
    /// refilled go first, then the least recently refilled.
    pub const CAPACITY: usize = 100_000;
    /// IPv6 clients share a bucket per prefix of this length: hosts are usually given a
    /// whole /64 and could otherwise rotate through it for fresh bursts.
    pub const IPV6_PREFIX_BITS: u32 = 64;
}

/// Verified-secret cache defaults.
pub mod cache {
    use super::Duration;
    /// How long a verified secret stays trusted without re-running Argon2.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(6 * 60 * 60);
    /// Entry bound: enough for every machine and storage of a large fleet.
    pub const DEFAULT_CAPACITY: usize = 200_000;
}

/// Model field limits (Django `max_length`).
pub mod limits {
    /// Most `CharField`s.
    pub const CHAR: usize = 200;
    /// `Machine.ssh_public_key`.
    pub const SSH_PUBLIC_KEY: usize = 2048;
    /// `Source.filter` / `Source.exclude` (serialised JSON).
    pub const FILTER: usize = 2048;
    /// `Storage.ssh_ping_host_keys` (serialised JSON).
    pub const HOST_KEYS: usize = 65_536;
    /// Minimum Shannon entropy of a machine UUID's random bits.
    pub const UUID_MIN_ENTROPY: f64 = 0.95;
}

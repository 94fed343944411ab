//! Shared server state and its configuration.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;

use crate::admission::{Abandoned, Admission, HashGate};
use crate::cache::SecretCache;
use crate::constants;
use crate::db::Db;
use crate::secrets::HashParams;
use crate::throttle::FailureThrottle;

/// Tunables of a coordinator instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Argon2 parameters for new hashes (older parameters verify and are rehashed).
    pub hash_params: HashParams,
    /// The server time zone (Django `TIME_ZONE`): all schedule arithmetic happens in it.
    pub time_zone: Tz,
    /// How long a verified secret is trusted without re-running Argon2.
    pub cache_ttl: Duration,
    /// Maximum number of cached verified secrets (0 disables the cache).
    pub cache_capacity: usize,
    /// Argon2 computations allowed at once (each holds its memory cost and a core).
    pub max_concurrent_hashes: usize,
    /// Requests that need Argon2 allowed to wait beyond those running; more get a 503.
    pub max_queued_hashes: usize,
    /// `Retry-After` sent with a 503 for a full hash queue.
    pub busy_retry_after: Duration,
    /// Failed verifications in a row a principal may have from one client address before
    /// it is refused there unhashed (0 disables the throttle).
    pub auth_failure_burst: u32,
    /// After the burst, one more try per principal and client per this interval.
    pub auth_failure_refill: Duration,
    /// (Principal, client) pairs the failure throttle tracks at once.
    pub auth_throttle_capacity: usize,
    /// Requests served on blocking threads outside the hash path at once; more get a 503
    /// with `busy_retry_after` at once (at least 1).
    pub max_fast_path_tasks: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hash_params: HashParams::default(),
            time_zone: Tz::UTC,
            cache_ttl: constants::cache::DEFAULT_TTL,
            cache_capacity: constants::cache::DEFAULT_CAPACITY,
            max_concurrent_hashes: constants::secrets::MAX_CONCURRENT_HASHES,
            max_queued_hashes: constants::admission::MAX_QUEUED_HASHES,
            busy_retry_after: constants::admission::BUSY_RETRY_AFTER,
            auth_failure_burst: constants::throttle::FAILURE_BURST,
            auth_failure_refill: constants::throttle::FAILURE_REFILL,
            auth_throttle_capacity: constants::throttle::CAPACITY,
            max_fast_path_tasks: constants::admission::MAX_FAST_PATH_TASKS,
        }
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Verified-secret cache.
    pub cache: SecretCache,
    /// Failed-secret throttle, per principal and client address.
    pub throttle: FailureThrottle,
    /// Configuration.
    pub config: Config,
    gate: HashGate,
    admission: Admission,
    fast_path: Admission,
}

impl AppState {
    /// State over an open database.
    pub fn new(db: Db, config: Config) -> Self {
        let slots = config.max_concurrent_hashes.max(1);
        Self {
            db,
            cache: SecretCache::new(config.cache_ttl, config.cache_capacity),
            throttle: FailureThrottle::new(
                config.auth_failure_burst,
                config.auth_failure_refill,
                config.auth_throttle_capacity,
            ),
            gate: HashGate::new(slots),
            admission: Admission::new(slots.saturating_add(config.max_queued_hashes)),
            fast_path: Admission::new(config.max_fast_path_tasks),
            config,
        }
    }

    /// Run an Argon2 computation once a slot is free. Bounds memory (≈100 MiB each at
    /// Django's cost) and keeps cached check-ins flowing while registrations hash.
    pub fn with_hash_slot<T>(&self, f: impl FnOnce() -> T) -> T {
        self.gate.run_always(f)
    }

    /// [`Self::with_hash_slot`], unless `abandoned` is set before the slot comes (`None`).
    pub fn with_hash_slot_unless<T>(
        &self,
        abandoned: Option<&Abandoned>,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        self.gate.run(abandoned, f)
    }

    /// Mark a request's client as gone: it leaves the hash queue without hashing.
    pub fn abandon(&self, abandoned: &Abandoned) {
        self.gate.abandon(abandoned);
    }

    /// Admit one request to the hash path, or `None` when running and queued requests are at
    /// the limit (the caller answers 503). The place is held until the ticket drops.
    pub fn admit(self: &Arc<Self>) -> Option<HashTicket> {
        self.admission.try_enter().then(|| HashTicket {
            state: Arc::clone(self),
        })
    }

    /// Admit one request to the fast path, or `None` when the limit of fast-path requests in
    /// flight is reached (the caller answers 503 rather than queue: while a CLI writer holds
    /// the database every one of them would hold a blocking thread for the busy timeout).
    /// The place is held until the ticket drops.
    pub fn admit_fast(self: &Arc<Self>) -> Option<FastPathTicket> {
        self.fast_path.try_enter().then(|| FastPathTicket {
            state: Arc::clone(self),
        })
    }

    /// Requests on the fast path and not finished.
    pub fn fast_requests_in_flight(&self) -> usize {
        self.fast_path.in_flight()
    }

    /// Requests admitted to the hash path and not finished (running or queued).
    pub fn hash_requests_in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Hash computations started since the server began (diagnostics and tests).
    pub fn hashes_started(&self) -> u64 {
        self.gate.runs()
    }
}

/// A place on the hash path; gives it back on drop.
#[derive(Debug)]
pub struct HashTicket {
    state: Arc<AppState>,
}

impl Drop for HashTicket {
    fn drop(&mut self) {
        self.state.admission.leave();
    }
}

/// A place on the fast path; gives it back on drop.
#[derive(Debug)]
pub struct FastPathTicket {
    state: Arc<AppState>,
}

impl Drop for FastPathTicket {
    fn drop(&mut self) {
        self.state.fast_path.leave();
    }
}

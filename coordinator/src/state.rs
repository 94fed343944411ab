//! Shared server state and its configuration.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use chrono_tz::Tz;

use crate::cache::SecretCache;
use crate::constants;
use crate::db::Db;
use crate::secrets::HashParams;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hash_params: HashParams::default(),
            time_zone: Tz::UTC,
            cache_ttl: constants::cache::DEFAULT_TTL,
            cache_capacity: constants::cache::DEFAULT_CAPACITY,
            max_concurrent_hashes: constants::secrets::MAX_CONCURRENT_HASHES,
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
    /// Configuration.
    pub config: Config,
    gate: HashGate,
}

impl AppState {
    /// State over an open database.
    pub fn new(db: Db, config: Config) -> Self {
        Self {
            db,
            cache: SecretCache::new(config.cache_ttl, config.cache_capacity),
            gate: HashGate::new(config.max_concurrent_hashes.max(1)),
            config,
        }
    }

    /// Run an Argon2 computation once a slot is free. Bounds memory (≈100 MiB each at
    /// Django's cost) and keeps cached check-ins flowing while registrations hash.
    pub fn with_hash_slot<T>(&self, f: impl FnOnce() -> T) -> T {
        self.gate.acquire();
        // Released on drop, so a panicking computation cannot leak its slot.
        let _slot = Slot(&self.gate);
        f()
    }
}

struct Slot<'a>(&'a HashGate);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A counting semaphore for blocking threads.
#[derive(Debug)]
struct HashGate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl HashGate {
    fn new(slots: usize) -> Self {
        Self {
            free: Mutex::new(slots),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self) {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *free == 0 {
            free = self
                .cv
                .wait(free)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
    }

    fn release(&self) {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *free += 1;
        self.cv.notify_one();
    }
}

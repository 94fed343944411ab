//! A bounded, expiring cache of verified secrets.
//!
//! Argon2 at Django's cost takes ~170 ms per check here, which is what caps the original at
//! a handful of check-ins per second. A machine presents the same secret every five minutes,
//! so once it verified we remember that fact, not the secret:
//!
//! - the entry is keyed by the principal (kind + id) and remembers the *stored hash* it was
//!   verified against: a secret changed or rehashed in the database never hits;
//! - it holds an HMAC of the presented secret under a per-process random key (never the
//!   secret itself), compared in constant time: a wrong secret never hits;
//! - entries expire after a TTL, and the map is bounded (expired entries are swept first,
//!   then the oldest go).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What kind of principal a secret belongs to (ids of different kinds never collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A machine, by its row id.
    Machine,
    /// A storage, by its row id.
    Storage,
    /// A registration Auth, by its row id.
    Auth,
}

#[derive(Debug)]
struct Entry {
    stored_hash: String,
    digest: [u8; 32],
    inserted: Instant,
}

/// The cache. Cheap to share behind an `Arc`.
pub struct SecretCache {
    key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<(Principal, String), Entry>>,
}

/// The HMAC key and the digests are secret material: `Debug` shows only the shape.
impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("key", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            // `try_lock`: never wait (or deadlock) just to print.
            .field("entries", &self.entries.try_lock().map(|e| e.len()).ok())
            .finish()
    }
}

impl SecretCache {
    /// A cache holding at most `capacity` entries for at most `ttl` each. A zero capacity
    /// disables caching.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            key: rand::random(),
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, secret: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so construction cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `secret` was verified against exactly `stored_hash` for this principal within
    /// the TTL.
    pub fn hit(&self, kind: Principal, id: &str, stored_hash: &str, secret: &str) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let digest = self.digest(secret);
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        let Some(e) = entries.get(&(kind, id.to_owned())) else {
            return false;
        };
        e.inserted.elapsed() < self.ttl
            && bool::from(e.stored_hash.as_bytes().ct_eq(stored_hash.as_bytes()))
            && bool::from(e.digest.ct_eq(&digest))
    }

    /// Remember that `secret` verified against `stored_hash`.
    pub fn insert(&self, kind: Principal, id: &str, stored_hash: &str, secret: &str) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry {
            stored_hash: stored_hash.to_owned(),
            digest: self.digest(secret),
            inserted: Instant::now(),
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity && !entries.contains_key(&(kind, id.to_owned())) {
            let ttl = self.ttl;
            entries.retain(|_, e| e.inserted.elapsed() < ttl);
            // Still full: drop the oldest tenth in one sweep so inserts stay amortised O(1).
            if entries.len() >= self.capacity {
                let mut ages: Vec<Instant> = entries.values().map(|e| e.inserted).collect();
                ages.sort_unstable();
                let cut = ages[(ages.len() / 10).min(ages.len() - 1)];
                entries.retain(|_, e| e.inserted > cut);
            }
        }
        entries.insert((kind, id.to_owned()), entry);
    }

    /// Forget a principal (after its secret hash changed).
    pub fn forget(&self, kind: Principal, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&(kind, id.to_owned()));
        }
    }

    /// Number of entries (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_or_changed_secret_never_hits() {
        let c = SecretCache::new(Duration::from_secs(60), 10);
        c.insert(Principal::Machine, "m1", "hashA", "right");
        assert!(c.hit(Principal::Machine, "m1", "hashA", "right"));
        assert!(!c.hit(Principal::Machine, "m1", "hashA", "wrong"));
        assert!(
            !c.hit(Principal::Machine, "m1", "hashB", "right"),
            "stored hash changed"
        );
        assert!(
            !c.hit(Principal::Storage, "m1", "hashA", "right"),
            "other kind"
        );
        assert!(
            !c.hit(Principal::Machine, "m2", "hashA", "right"),
            "other id"
        );
        c.forget(Principal::Machine, "m1");
        assert!(!c.hit(Principal::Machine, "m1", "hashA", "right"));
    }

    #[test]
    fn debug_hides_key_and_digests() {
        let c = SecretCache::new(Duration::from_secs(60), 10);
        c.insert(Principal::Machine, "m1", "stored-hash", "right");
        let shown = format!("{c:?}");
        assert!(!shown.contains(&format!("{:?}", c.key)), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", c.digest("right"))),
            "{shown}"
        );
        assert!(!shown.contains("stored-hash"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn entries_expire() {
        let c = SecretCache::new(Duration::from_millis(20), 10);
        c.insert(Principal::Auth, "a", "h", "s");
        assert!(c.hit(Principal::Auth, "a", "h", "s"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!c.hit(Principal::Auth, "a", "h", "s"));
    }

    #[test]
    fn size_is_bounded() {
        let c = SecretCache::new(Duration::from_secs(60), 50);
        for i in 0..500 {
            c.insert(Principal::Machine, &i.to_string(), "h", "s");
            assert!(c.len() <= 50);
        }
        // The newest entry survives eviction.
        assert!(c.hit(Principal::Machine, "499", "h", "s"));
        let off = SecretCache::new(Duration::from_secs(60), 0);
        off.insert(Principal::Machine, "x", "h", "s");
        assert!(!off.hit(Principal::Machine, "x", "h", "s"));
        assert!(off.is_empty());
    }
}

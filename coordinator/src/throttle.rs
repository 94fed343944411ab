//! Throttling of secret verifications that fail, per principal and client address.
//!
//! A token bucket per (principal, client address): each verification from scratch (a cache miss) takes a token
//! before it hashes; a success gives the principal a fresh bucket; tokens come back one per
//! refill interval. So a guesser aiming at one principal is refused without hashing once the
//! burst is spent, while a legitimate client, which fails at most once after its secret
//! changed, never notices. Taking the token up front also bounds how many hashes a single
//! principal can have in flight at once.
//!
//! The client address is part of the key because principal names are public (the default
//! registration names are constants, machine UUIDs and storage names leak): keyed by
//! principal alone, a guesser that spent the burst and kept taking each refilled token would
//! lock out every legitimate client of that principal whose secret is not cached. IPv6
//! clients are keyed by their /64, which one host usually holds whole. Requests without an
//! address (handlers called directly) share one bucket per principal.
//!
//! Only principals with recent failures (or a verification in flight) are tracked, and the
//! map is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::cache::Principal;
use crate::constants::throttle::IPV6_PREFIX_BITS;

/// Which clients share a bucket: one IPv4 address, or one IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey(IpAddr);

impl ClientKey {
    fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // A dual-stack listener sees IPv4 clients as mapped addresses.
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let mask = u128::MAX.checked_shl(128 - IPV6_PREFIX_BITS).unwrap_or(0);
                    Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
                }
            },
        }
    }
}

type Key = (Principal, String, Option<ClientKey>);

fn key(kind: Principal, id: &str, client: Option<IpAddr>) -> Key {
    (kind, id.to_owned(), client.map(ClientKey::of))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

/// The throttle. Cheap to share.
#[derive(Debug)]
pub struct FailureThrottle {
    burst: u32,
    refill: Duration,
    capacity: usize,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl FailureThrottle {
    /// Allow `burst` failures in a row, then one more per `refill`; track at most `capacity`
    /// (principal, client) pairs. A zero `burst` disables throttling.
    pub fn new(burst: u32, refill: Duration, capacity: usize) -> Self {
        Self {
            burst,
            refill: refill.max(Duration::from_millis(1)),
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a verification for this principal from this client would be refused now;
    /// `Err` holds how long until the next try is allowed. Takes nothing.
    pub fn check(&self, kind: Principal, id: &str, client: Option<IpAddr>) -> Result<(), Duration> {
        self.check_key_at(&key(kind, id, client), Instant::now())
    }

    /// Take a token for one verification from scratch, or say how long to wait.
    pub fn take(&self, kind: Principal, id: &str, client: Option<IpAddr>) -> Result<(), Duration> {
        self.take_key_at(key(kind, id, client), Instant::now())
    }

    /// The principal proved its secret from this client: forget that client's failures.
    /// Other clients' failures stay: a guesser elsewhere must not get a fresh burst each
    /// time the real client logs in.
    pub fn succeeded(&self, kind: Principal, id: &str, client: Option<IpAddr>) {
        if self.burst == 0 {
            return;
        }
        self.lock().remove(&key(kind, id, client));
    }

    /// (Principal, client) pairs tracked (diagnostics and tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Bucket>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `bucket` brought up to `now`.
    fn refilled(&self, mut bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.refilled);
        let earned = elapsed.as_nanos() / self.refill.as_nanos();
        if earned == 0 {
            return bucket;
        }
        let earned_u32 = u32::try_from(earned).unwrap_or(u32::MAX);
        bucket.tokens = bucket.tokens.saturating_add(earned_u32).min(self.burst);
        bucket.refilled = if bucket.tokens == self.burst {
            now
        } else {
            // Whole intervals only, so a partly elapsed one still counts towards the next.
            bucket.refilled + self.refill * earned_u32
        };
        bucket
    }

    fn wait_for(&self, bucket: Bucket, now: Instant) -> Duration {
        (bucket.refilled + self.refill).saturating_duration_since(now)
    }

    fn check_key_at(&self, key: &Key, now: Instant) -> Result<(), Duration> {
        if self.burst == 0 {
            return Ok(());
        }
        match self.lock().get(key) {
            Some(b) => {
                let b = self.refilled(*b, now);
                if b.tokens == 0 {
                    Err(self.wait_for(b, now))
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    fn take_key_at(&self, key: Key, now: Instant) -> Result<(), Duration> {
        if self.burst == 0 {
            return Ok(());
        }
        let mut buckets = self.lock();
        let bucket = match buckets.get(&key) {
            Some(b) => self.refilled(*b, now),
            None => {
                if buckets.len() >= self.capacity {
                    self.make_room(&mut buckets, now);
                }
                Bucket {
                    tokens: self.burst,
                    refilled: now,
                }
            }
        };
        if bucket.tokens == 0 {
            let wait = self.wait_for(bucket, now);
            buckets.insert(key, bucket);
            return Err(wait);
        }
        buckets.insert(
            key,
            Bucket {
                tokens: bucket.tokens - 1,
                ..bucket
            },
        );
        Ok(())
    }

    /// Drop buckets that have refilled completely (they mean nothing any more); if none has,
    /// the one refilled longest ago.
    fn make_room(&self, buckets: &mut HashMap<Key, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(*b, now).tokens < self.burst);
        if buckets.len() >= self.capacity {
            let oldest = buckets
                .iter()
                .min_by_key(|(_, b)| b.refilled)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                buckets.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    impl FailureThrottle {
        fn check_at(&self, kind: Principal, id: &str, now: Instant) -> Result<(), Duration> {
            self.check_key_at(&key(kind, id, None), now)
        }

        fn take_at(&self, kind: Principal, id: &str, now: Instant) -> Result<(), Duration> {
            self.take_key_at(key(kind, id, None), now)
        }

        fn take_from(
            &self,
            kind: Principal,
            id: &str,
            client: &str,
            now: Instant,
        ) -> Result<(), Duration> {
            let addr: IpAddr = client.parse().expect("test address");
            self.take_key_at(key(kind, id, Some(addr)), now)
        }
    }

    #[test]
    fn burst_then_one_per_interval() {
        let t = FailureThrottle::new(3, MINUTE, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.take_at(Principal::Auth, "a", t0), Ok(()));
        }
        assert_eq!(t.take_at(Principal::Auth, "a", t0), Err(MINUTE));
        assert_eq!(t.check_at(Principal::Auth, "a", t0), Err(MINUTE));
        let later = t0 + Duration::from_secs(45);
        assert_eq!(
            t.check_at(Principal::Auth, "a", later),
            Err(Duration::from_secs(15))
        );
        // Other principals are not affected.
        assert_eq!(t.check_at(Principal::Machine, "a", t0), Ok(()));
        assert_eq!(t.take_at(Principal::Auth, "b", t0), Ok(()));
        // One token per interval comes back.
        let after = t0 + MINUTE;
        assert_eq!(t.take_at(Principal::Auth, "a", after), Ok(()));
        assert_eq!(t.take_at(Principal::Auth, "a", after), Err(MINUTE));
    }

    #[test]
    fn success_forgives() {
        let t = FailureThrottle::new(1, MINUTE, 10);
        let t0 = Instant::now();
        assert_eq!(t.take_at(Principal::Storage, "s", t0), Ok(()));
        assert!(t.check_at(Principal::Storage, "s", t0).is_err());
        t.succeeded(Principal::Storage, "s", None);
        assert!(t.is_empty());
        assert_eq!(t.take_at(Principal::Storage, "s", t0), Ok(()));
    }

    #[test]
    fn map_is_bounded() {
        let t = FailureThrottle::new(2, MINUTE, 50);
        let t0 = Instant::now();
        for i in 0..500u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            assert_eq!(t.take_at(Principal::Machine, &i.to_string(), now), Ok(()));
            assert!(t.len() <= 50);
        }
    }

    #[test]
    fn zero_burst_disables() {
        let t = FailureThrottle::new(0, MINUTE, 10);
        for _ in 0..10 {
            assert_eq!(t.take(Principal::Auth, "a", None), Ok(()));
        }
        assert!(t.is_empty());
    }

    /// A guesser spending one principal's burst from one address leaves the principal usable
    /// from every other address; a success elsewhere does not refill the guesser.
    #[test]
    fn buckets_are_per_client() {
        let t = FailureThrottle::new(2, MINUTE, 10);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(t.take_from(Principal::Auth, "a", "192.0.2.1", t0), Ok(()));
        }
        assert_eq!(
            t.take_from(Principal::Auth, "a", "192.0.2.1", t0),
            Err(MINUTE)
        );
        assert_eq!(t.take_from(Principal::Auth, "a", "192.0.2.2", t0), Ok(()));
        // Requests without an address have their own bucket.
        assert_eq!(t.take_at(Principal::Auth, "a", t0), Ok(()));
        t.succeeded(Principal::Auth, "a", "192.0.2.2".parse().ok());
        assert_eq!(
            t.take_from(Principal::Auth, "a", "192.0.2.1", t0),
            Err(MINUTE)
        );
        // A mapped IPv4 address is that IPv4 client.
        assert_eq!(
            t.take_from(Principal::Auth, "a", "::ffff:192.0.2.1", t0),
            Err(MINUTE)
        );
    }

    /// Addresses of one IPv6 /64 share a bucket: a host holding a whole prefix gets no more
    /// guesses by rotating through it.
    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let t = FailureThrottle::new(1, MINUTE, 10);
        let t0 = Instant::now();
        assert_eq!(
            t.take_from(Principal::Machine, "m", "2001:db8:1:2::1", t0),
            Ok(())
        );
        assert_eq!(
            t.take_from(Principal::Machine, "m", "2001:db8:1:2:ffff::9", t0),
            Err(MINUTE)
        );
        assert_eq!(
            t.take_from(Principal::Machine, "m", "2001:db8:1:3::1", t0),
            Ok(())
        );
    }
}

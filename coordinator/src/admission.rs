//! Bounding Argon2 work: a fixed number of hash slots, a bounded queue in front of them, and
//! a flag that lets a queued request give up when its client has gone.
//!
//! A hash costs ~170 ms and ~100 MiB at Django's parameters, and anyone who names a known
//! principal (registration Auth names are well known) can ask for one. Without a bound on the
//! queue a flood holds memory and threads without limit and starves real check-ins; without
//! the flag a burst of abandoned requests is still computed, one by one, long after its
//! clients gave up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Set when the client of a request has gone: hashes it has not started are skipped.
#[derive(Debug, Clone, Default)]
pub struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    /// Whether the client has gone.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A counting semaphore for blocking threads, whose waiters can be abandoned.
#[derive(Debug)]
pub(crate) struct HashGate {
    free: Mutex<usize>,
    cv: Condvar,
    /// Computations started, for tests and diagnostics.
    runs: AtomicU64,
}

impl HashGate {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            free: Mutex::new(slots.max(1)),
            cv: Condvar::new(),
            runs: AtomicU64::new(0),
        }
    }

    /// Run `f` once a slot is free; `None`, without running it, if `abandoned` is set first.
    pub(crate) fn run<T>(&self, abandoned: Option<&Abandoned>, f: impl FnOnce() -> T) -> Option<T> {
        if !self.acquire(abandoned) {
            return None;
        }
        // Released on drop, so a panicking computation cannot leak its slot.
        let _slot = Slot(self);
        self.runs.fetch_add(1, Ordering::Relaxed);
        Some(f())
    }

    /// Run `f` once a slot is free, however long that takes.
    pub(crate) fn run_always<T>(&self, f: impl FnOnce() -> T) -> T {
        // Nothing can abandon a wait without a flag, so this loop takes one turn.
        while !self.acquire(None) {}
        let _slot = Slot(self);
        self.runs.fetch_add(1, Ordering::Relaxed);
        f()
    }

    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Mark `abandoned` and wake the waiters so that its request leaves the queue now.
    pub(crate) fn abandon(&self, abandoned: &Abandoned) {
        abandoned.set();
        // Taking the lock orders the flag before any waiter's next check, so none sleeps
        // through this wake-up.
        drop(self.free.lock().unwrap_or_else(PoisonError::into_inner));
        self.cv.notify_all();
    }

    fn acquire(&self, abandoned: Option<&Abandoned>) -> bool {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if abandoned.is_some_and(Abandoned::is_set) {
                return false;
            }
            if *free > 0 {
                *free -= 1;
                return true;
            }
            free = self.cv.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release(&self) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free += 1;
        // Every waiter, not one: the one woken might be abandoned and leave without the slot.
        self.cv.notify_all();
    }
}

struct Slot<'a>(&'a HashGate);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Counts requests admitted to the hash path (running or queued) against a fixed limit.
#[derive(Debug)]
pub(crate) struct Admission {
    limit: usize,
    in_flight: AtomicUsize,
}

impl Admission {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Take a place if one is free.
    pub(crate) fn try_enter(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn admission_is_bounded() {
        let a = Admission::new(2);
        assert!(a.try_enter());
        assert!(a.try_enter());
        assert!(!a.try_enter());
        a.leave();
        assert_eq!(a.in_flight(), 1);
        assert!(a.try_enter());
    }

    /// A waiter abandoned while the only slot is taken leaves without running its work.
    #[test]
    fn abandoned_waiter_never_runs() {
        let gate = Arc::new(HashGate::new(1));
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.run(None, || {
                    held_tx.send(()).expect("signal");
                    release_rx.recv_timeout(Duration::from_secs(30)).ok();
                })
            })
        };
        held_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("slot held");
        let abandoned = Abandoned::default();
        let waiter = {
            let gate = gate.clone();
            let abandoned = abandoned.clone();
            std::thread::spawn(move || gate.run(Some(&abandoned), || ()))
        };
        gate.abandon(&abandoned);
        assert_eq!(waiter.join().expect("waiter"), None);
        release_tx.send(()).expect("release");
        holder.join().expect("holder");
        assert_eq!(gate.runs(), 1, "only the holder ran");
        assert_eq!(gate.run(None, || 7), Some(7), "the slot came back");
    }
}

//! SIGINT, SIGTERM and SIGHUP become a flag the waiting loops poll, so every exit path
//! stops the rsync daemon and removes the temp files (a drop guard alone does not run when
//! a signal kills the process).
//!
//! The signals are blocked in the main thread before any other thread exists (so every
//! thread inherits the mask) and one thread takes them with `sigwait`. Children inherit the
//! spawning thread's mask: the standard library has passed it on unchanged since Rust 1.66
//! (rust-lang/rust#101077, "Inherit the signal mask from the parent rather than resetting
//! it", on both its posix_spawn and fork/exec paths, and in `CommandExt::exec`), and ssh
//! keeps the mask it starts with (the rsync daemon happens to clear it). So rsync and ssh
//! start through the launcher (`process::bound_to_agent`), which clears it so they react to
//! signals as usual; `agent/tests/launcher.rs` checks both halves.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, Signal};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

/// Must run first in `main`, before any thread is started.
pub fn install() -> anyhow::Result<()> {
    let set = handled();
    set.thread_block()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                tracing::debug!("received {signal}");
                // The first signal counts; a second one is the same request.
                let _ =
                    RECEIVED.compare_exchange(0, signal as i32, Ordering::SeqCst, Ordering::SeqCst);
            }
        })?;
    Ok(())
}

/// The signal received, if any.
pub fn received() -> Option<Signal> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

//! The launcher (`turku-agent --internal-run-bound-to-agent`) run as the agent runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use nix::sys::signal::{SigSet, Signal};
use turku_agent::constants::{exit, launcher};

/// The launcher started from this thread (its parent-death signal follows the thread).
fn launch(program: &str, argv: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turku-agent"))
        .arg(launcher::LAUNCHER_ARG)
        .arg(std::process::id().to_string())
        .arg(program)
        .args(argv)
        .output()
        .unwrap()
}

/// The `SigBlk` line of /proc/PID/status a child printed.
fn blocked(out: &Output) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().strip_prefix("SigBlk:").unwrap().trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Rust's std passes the spawning thread's signal mask on to children (since 1.66) and
/// so does exec: without the launcher clearing it, ssh would start with the agent's blocked
/// SIGINT/SIGTERM/SIGHUP and never hear the parent-death signal.
#[test]
fn the_program_starts_with_no_signal_blocked() {
    let mut agents_mask = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        agents_mask.add(signal);
    }
    let before = agents_mask
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .unwrap();
    let direct = Command::new("grep")
        .args(["^SigBlk", "/proc/self/status"])
        .output()
        .unwrap();
    // grep itself, not through a shell: dash clears the mask it starts with.
    let grep = ["/usr/bin/grep", "/bin/grep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("grep");
    let launched = launch(grep, &["grep", "^SigBlk", "/proc/self/status"]);
    before.thread_set_mask().unwrap();
    // What the launcher undoes: a direct spawn keeps the mask.
    let agents_bits = (1 << (Signal::SIGINT as u64 - 1))
        | (1 << (Signal::SIGTERM as u64 - 1))
        | (1 << (Signal::SIGHUP as u64 - 1));
    assert_eq!(blocked(&direct) & agents_bits, agents_bits, "{direct:?}");
    assert!(launched.status.success(), "{launched:?}");
    assert_eq!(blocked(&launched), 0, "{launched:?}");
}

#[test]
fn a_program_that_cannot_be_executed_is_a_distinct_exit_with_the_reason() {
    let not_executable =
        std::env::temp_dir().join(format!("turku-launcher-test-{}", std::process::id()));
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let out = launch(not_executable.to_str().unwrap(), &["no-x-bit"]);
    std::fs::remove_file(&not_executable).unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::LAUNCH_FAILED)));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Permission denied"), "{said}");
}

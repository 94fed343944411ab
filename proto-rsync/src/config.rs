//! Session settings shared by every driver of the protocol (the TCP pull command, the storage
//! daemon over an SSH channel): time bounds, with their defaults, and the secret type.
//!
//! The defaults live here rather than in a command line so that every caller gets the same
//! behaviour without repeating them; they are tuning knobs, not wire constants.

use std::time::Duration;

/// No data in either direction for this long ends a session: stock rsync's `--timeout`
/// meaning, at a default long enough for a daemon scanning a big tree with keep-alives off.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(600);

/// Connecting plus the daemon's greeting and authentication. Stock has no default (it
/// waits for the kernel); a daemon that accepts and then says nothing should not hold a
/// backup slot for the whole inactivity timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Time bounds of one session. `None` disables a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the peer with no data moving either way (`--timeout`). Only time spent
    /// waiting on the connection counts: our own local work between waits does not. Our
    /// own keep-alives do not count as data either, or a peer that reads and never answers
    /// would keep the session alive forever.
    pub io: Option<Duration>,
    /// Connecting (where the driver connects) and the daemon handshake up to the start of
    /// the file list (`--contimeout`).
    pub connect: Option<Duration>,
    /// The whole session, local work included. Catches a peer that trickles just enough
    /// data to stay under `io`.
    pub deadline: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            io: Some(DEFAULT_IO_TIMEOUT),
            connect: Some(DEFAULT_CONNECT_TIMEOUT),
            deadline: None,
        }
    }
}

impl Timeouts {
    /// Whole seconds as on rsync's command line: 0 means no bound.
    pub fn from_secs(secs: u64) -> Option<Duration> {
        (secs > 0).then(|| Duration::from_secs(secs))
    }
}

/// A password or other secret: its `Debug` never shows the bytes, so configuration structs
/// holding one can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The secret's bytes, for the one place that needs them (the auth response).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Self {
        Secret(bytes.to_vec())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from(b"hunter2-pw".as_slice());
        let shown = format!("{s:?} {:?} {:#?}", Some(&s), vec![s.clone()]);
        let as_list = format!("{:?}", b"hunter2".to_vec());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&as_list[1..as_list.len() - 1]), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(s.expose(), b"hunter2-pw");
    }

    #[test]
    fn zero_seconds_means_no_bound() {
        assert_eq!(Timeouts::from_secs(0), None);
        assert_eq!(Timeouts::from_secs(7), Some(Duration::from_secs(7)));
    }
}

//! The wall clock that snapshot times, snapshot names and retention's "now" are read from.
//!
//! Normally the system clock. A test of retention over weeks cannot sleep through them, so
//! the environment variable [`CLOCK_FILE_ENV`] (a test hook, not an operator setting) names
//! a file holding the time instead: a Unix time in seconds (a fraction allowed, e.g.
//! `1709254800` or `1709254800.25`) or an RFC 3339 date (`2024-03-01T01:00:00Z`), blanks
//! around it ignored. The file is read at every use, so a test advances days by rewriting it
//! while the daemon runs; the time it holds stands still until the file changes, so what a
//! test sees is reproducible.
//!
//! An override that cannot be read or parsed is an error, never a fall back to the system
//! clock: a snapshot stamped with the wrong time would be kept or deleted by retention on
//! that wrong time for ever. Each process says once, in its log, that its clock is
//! overridden.
//!
//! Only times that must agree with each other come from here. Bookkeeping that compares
//! against the real world (writer sessions' liveness, temp files' ages by their mtimes,
//! rate limits on monotonic clocks, log line stamps) stays on the real clock.

use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use time::OffsetDateTime;

pub use crate::tuning::CLOCK_FILE_ENV;

/// Why the overridden clock could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("the test clock {CLOCK_FILE_ENV}={} cannot be read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the test clock {CLOCK_FILE_ENV}={} holds {text:?}, neither Unix seconds nor an RFC 3339 time",
        path.display()
    )]
    Garbled { path: PathBuf, text: String },
}

/// The clock file named by [`CLOCK_FILE_ENV`], if the process runs with one (read once: the
/// environment does not change under a running process).
pub fn override_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::var_os(CLOCK_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .as_deref()
}

/// Now, in UTC: the override's time if one is set, else the system clock.
pub fn now() -> Result<OffsetDateTime, ClockError> {
    match override_file() {
        None => Ok(OffsetDateTime::now_utc()),
        Some(file) => {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "{CLOCK_FILE_ENV} is set: times come from {}, not the system clock (a test hook)",
                    file.display()
                )
            });
            read_clock_file(file)
        }
    }
}

/// [`now`] in nanoseconds since the Unix epoch.
pub fn now_ns() -> Result<i64, ClockError> {
    now().map(|t| i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

/// The time `file` holds.
pub fn read_clock_file(file: &Path) -> Result<OffsetDateTime, ClockError> {
    let text = std::fs::read_to_string(file).map_err(|source| ClockError::Unreadable {
        path: file.to_path_buf(),
        source,
    })?;
    parse(text.trim()).ok_or_else(|| ClockError::Garbled {
        path: file.to_path_buf(),
        text: text.chars().take(80).collect(),
    })
}

fn parse(text: &str) -> Option<OffsetDateTime> {
    if let Some(t) = parse_unix_seconds(text) {
        return Some(t);
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC))
}

/// `SECONDS[.FRACTION]`, optionally negative; at most nanosecond precision.
fn parse_unix_seconds(text: &str) -> Option<OffsetDateTime> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (unsigned, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let seconds: i128 = whole.parse().ok()?;
    let nanos: i128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<i128>().ok()? * 10i128.pow(9 - fraction.len() as u32)
    };
    let total = seconds * 1_000_000_000 + nanos;
    OffsetDateTime::from_unix_timestamp_nanos(if negative { -total } else { total }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn clock_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    #[test]
    fn reads_unix_seconds_and_rfc3339() {
        for (text, want) in [
            ("1709254800", datetime!(2024-03-01 01:00 UTC)),
            ("  1709254800\n", datetime!(2024-03-01 01:00 UTC)),
            ("1709254800.25", datetime!(2024-03-01 01:00:00.25 UTC)),
            ("2024-03-01T01:00:00Z", datetime!(2024-03-01 01:00 UTC)),
            (
                "2024-03-01T03:00:00+02:00\n",
                datetime!(2024-03-01 01:00 UTC),
            ),
            ("0", datetime!(1970-01-01 00:00 UTC)),
        ] {
            let (_dir, file) = clock_file(text);
            let got = read_clock_file(&file).unwrap();
            assert_eq!(got, want, "{text:?}");
            assert_eq!(got.offset(), time::UtcOffset::UTC, "{text:?}");
        }
    }

    #[test]
    fn is_read_again_at_every_use() {
        let (_dir, file) = clock_file("1709254800");
        assert_eq!(
            read_clock_file(&file).unwrap(),
            datetime!(2024-03-01 01:00 UTC)
        );
        std::fs::write(&file, "1709341200").unwrap();
        assert_eq!(
            read_clock_file(&file).unwrap(),
            datetime!(2024-03-02 01:00 UTC)
        );
    }

    #[test]
    fn a_garbled_or_missing_file_is_an_error_naming_it() {
        for text in [
            "",
            "yesterday",
            "12e3",
            "1.",
            "1.0000000001",
            "--1",
            "2024-03-01",
        ] {
            let (_dir, file) = clock_file(text);
            let err = read_clock_file(&file).unwrap_err();
            assert!(matches!(err, ClockError::Garbled { .. }), "{text:?}: {err}");
            assert!(err.to_string().contains(CLOCK_FILE_ENV), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = read_clock_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, ClockError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn without_an_override_it_is_the_system_clock() {
        // The test process has no override (nothing in the tests sets the variable).
        assert!(override_file().is_none());
        let before = OffsetDateTime::now_utc();
        let got = now().unwrap();
        assert!(before <= got && got <= OffsetDateTime::now_utc());
    }
}

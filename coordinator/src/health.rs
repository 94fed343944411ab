//! Health rules (`spec/turku.md` §1.9) and the Nagios-style report of `turku-api health`
//! (§1.10).

use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;

use crate::constants::health as h;
use crate::db;
use crate::models::{Machine, Source, Storage};

fn dur(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

/// Healthy for 30 min after registration, then only with a check-in in the last 30 min.
pub fn storage_healthy(s: &Storage, now: DateTime<Utc>) -> bool {
    if now <= s.date_registered + dur(h::STORAGE_GRACE) {
        return true;
    }
    s.date_checked_in
        .is_some_and(|t| now <= t + dur(h::STORAGE_GRACE))
}

/// Healthy for 1 h after registration, then only with a check-in in the last 10 h.
pub fn machine_healthy(m: &Machine, now: DateTime<Utc>) -> bool {
    if now <= m.date_registered + dur(h::MACHINE_GRACE) {
        return true;
    }
    m.date_checked_in
        .is_some_and(|t| now <= t + dur(h::MACHINE_CHECKIN))
}

/// Healthy for 4 h after being added; then unhealthy after a failed backup or when overdue
/// by more than 10 h.
pub fn source_healthy(s: &Source, now: DateTime<Utc>) -> bool {
    if now <= s.date_added + dur(h::SOURCE_GRACE) {
        return true;
    }
    s.success && now <= s.date_next_backup + dur(h::SOURCE_OVERDUE)
}

/// Nagios exit code for OK.
pub const EXIT_OK: u8 = 0;
/// Nagios exit code for CRITICAL.
pub const EXIT_CRITICAL: u8 = 2;

/// The report and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Lines to print (newline-terminated).
    pub text: String,
    /// Process exit code.
    pub exit_code: u8,
}

/// Check active+published storages, machines, and sources of active+published machines.
pub fn report(c: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Report> {
    let storages: Vec<Storage> = db::all_storages(c)?
        .into_iter()
        .filter(|s| s.active && s.published)
        .collect();
    let machines: Vec<Machine> = db::all_machines(c)?
        .into_iter()
        .filter(|m| m.active && m.published)
        .collect();
    let sources = db::monitored_sources(c)?;
    let sick_storages: Vec<&Storage> = storages
        .iter()
        .filter(|s| !storage_healthy(s, now))
        .collect();
    let sick_machines: Vec<&Machine> = machines
        .iter()
        .filter(|m| !machine_healthy(m, now))
        .collect();
    let sick_sources: Vec<&(Source, String)> = sources
        .iter()
        .filter(|(s, _)| !source_healthy(s, now))
        .collect();
    if sick_storages.is_empty() && sick_machines.is_empty() && sick_sources.is_empty() {
        return Ok(Report {
            text: format!(
                "OK {} storages, {} machines, {} sources\n",
                storages.len(),
                machines.len(),
                sources.len()
            ),
            exit_code: EXIT_OK,
        });
    }
    let mut text = format!(
        "CRITICAL {}/{} storages, {}/{} machines, {}/{} sources\n",
        sick_storages.len(),
        storages.len(),
        sick_machines.len(),
        machines.len(),
        sick_sources.len(),
        sources.len()
    );
    // Django's repr() of each sick object.
    for s in sick_storages {
        text.push_str(&format!("<Storage: {}>\n", s.name));
    }
    for m in sick_machines {
        text.push_str(&format!("<Machine: {}>\n", m.label()));
    }
    for (s, unit) in sick_sources {
        text.push_str(&format!("<Source: {unit} {}>\n", s.name));
    }
    Ok(Report {
        text,
        exit_code: EXIT_CRITICAL,
    })
}

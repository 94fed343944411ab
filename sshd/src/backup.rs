//! The backup job: pull a source into the store, then apply its retention.
//!
//! One code path for every way a backup starts: the `pull` command today, the `serve`
//! daemon's agent sessions and the forced-command `ping` next, so a fix or a limit lands in
//! all of them at once. The steps are separate functions because today's `pull` command
//! only pulls and today's `forget` command only applies retention; the daemon will run
//! [`pull_source`] then [`apply_retention`] with the source's `retention` string.

use turku_proto_rsync::Outcome;
use turku_store::{Snapshot, Store, StoreError};

use crate::pull::{pull_into_store, Connection, PullOptions, RsyncUrl};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The pull failed or the transfer was incomplete; no snapshot was made. Shown as the
    /// pull's own context chain, which says what was pulled and why it failed.
    #[error(transparent)]
    Pull(anyhow::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pull produced.
#[derive(Debug)]
pub struct PullReport {
    /// The committed snapshot, with its stats.
    pub snapshot: Snapshot,
    /// What the transfer moved (wire bytes, literal and matched data, rsync exit code).
    pub outcome: Outcome,
    /// Files skipped or vanished and the peer's warnings: the snapshot exists, but an
    /// operator should see these.
    pub warnings: Vec<String>,
}

/// Pulls `url` (over `connection`) into a new snapshot of `machine`/`source` and commits
/// it; nothing is committed when the pull fails.
pub fn pull_source(
    store: &Store,
    machine: &str,
    source: &str,
    url: &RsyncUrl,
    connection: Connection,
    options: PullOptions,
) -> Result<PullReport, BackupError> {
    let (snapshot, outcome, warnings) =
        pull_into_store(store, machine, source, url, connection, options)
            .map_err(BackupError::Pull)?;
    Ok(PullReport {
        snapshot,
        outcome,
        warnings,
    })
}

/// What a retention pass chose.
#[derive(Debug)]
pub struct RetentionReport {
    /// Snapshots of the source before the pass.
    pub considered: usize,
    /// Names of the snapshots the policy does not keep: forgotten, or only listed when
    /// the pass was a dry run.
    pub selected: Vec<String>,
}

/// A retention policy applied at a moment, in a zone.
#[derive(Debug, Clone, Copy)]
pub struct RetentionAt<'a> {
    pub retention: &'a str,
    pub now: time::OffsetDateTime,
    /// The storage config's `timezone`; `None`: UTC.
    pub zone: Option<&'a str>,
}

/// Forgets the snapshots of `machine`/`source` that the Turku `retention` policy does not
/// keep at `policy.now`, days counted in the time zone `policy.zone` (UTC when `None`; the storage
/// config's `timezone`), each time at the zone's offset at its own instant; with `dry_run`
/// nothing is forgotten. The daemon and `turku-storage forget` both come here. `each` sees every
/// selected snapshot as soon as it is forgotten (or chosen, in a dry run), so a caller can
/// report progress and a failure part-way leaves an accurate account of what happened.
/// Space comes back only with the next GC.
pub fn apply_retention(
    store: &Store,
    machine: &str,
    source: &str,
    policy: RetentionAt<'_>,
    dry_run: bool,
    mut each: impl FnMut(&Snapshot),
) -> Result<RetentionReport, BackupError> {
    let snaps = store.snapshots(Some(machine), Some(source))?;
    let times: Vec<time::OffsetDateTime> = snaps
        .iter()
        .map(|s| {
            // A time outside `OffsetDateTime`'s range cannot come from a real clock; as
            // the oldest possible it is the first a policy lets go.
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.time_end_ns))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        })
        .collect();
    let doomed = turku_store::retention::to_delete_in_zone(
        policy.retention,
        policy.now,
        &times,
        crate::session::zone_clock(policy.zone),
    );
    let mut selected = Vec::with_capacity(doomed.len());
    for i in doomed {
        let Some(s) = snaps.get(i) else { continue };
        if !dry_run {
            store.forget(s)?;
        }
        each(s);
        selected.push(s.name.clone());
    }
    Ok(RetentionReport {
        considered: snaps.len(),
        selected,
    })
}

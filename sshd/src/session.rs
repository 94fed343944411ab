//! One agent session, whoever carries it: what the agent asked for, what the coordinator
//! says is due, and each due source's backup through the agent's tunnel.
//!
//! The same code serves the daemon's SSH sessions (`serve`, the tunnel is a forwarded-tcpip
//! channel) and the OpenSSH forced command (`ping`, the tunnel is sshd's loopback port): the
//! caller reads the request and gives a [`Tunnel`] and a [`Console`]. Everything the
//! original turku-storage-ping logs goes to the agent's stderr in its line format (INFO only
//! when the agent asked for `verbose`) and to the daemon's own log with the machine uuid.
//!
//! Failure rules follow the original: a source without credentials, or one that found no
//! free backup slot, is not reported and stays due; a failed pull is reported as a failure,
//! which also leaves it due; earlier snapshots are never touched by a failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};
use turku_api_types::v1::{ScheduledSource, SourceReport, StorageCheckinMachine};
use turku_proto_rsync::{Limits, Secret as RsyncSecret, Timeouts};
use turku_store::Store;

use crate::backup::{apply_retention, pull_source, BackupError, PullReport};
use crate::config::{SnapshotMode, StorageConfig};
use crate::constants::{
    session as text, CONSOLE_QUEUE_LINES, MAX_SUMMARY_BYTES, NONE_MODE_RETENTION,
};
use crate::coordinator::CoordinatorLink;
use crate::ping::{PingRequest, SourceCredentials};
use crate::pull::{turku_filter_rules, Connection, PullOptions, RsyncUrl};
use crate::throttle::parse_bwlimit;

/// A future that a trait object can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The way back to the agent's rsync daemon.
pub trait Tunnel: Send + Sync {
    /// A connection to whatever the agent forwarded as `port`, and the address it stands
    /// for (for messages). Fails when the agent forwarded no such port.
    fn open(&self, port: u16) -> BoxFuture<'_, Result<(String, Connection), String>>;

    /// Whether the agent is known to be gone, so nothing more can reach it.
    fn is_gone(&self) -> bool {
        false
    }
}

/// Severity of a console line, as Python's logging names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

/// Where the session's lines go: the agent's stderr (bounded: a client that does not read
/// loses lines, never stalls the backup) and the daemon's log.
#[derive(Clone)]
pub struct Console {
    storage_name: String,
    machine_uuid: String,
    verbose: bool,
    to_agent: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("machine_uuid", &self.machine_uuid)
            .field("verbose", &self.verbose)
            .finish()
    }
}

impl Console {
    /// A console and the receiving end its lines for the agent arrive on (already
    /// formatted, one line each).
    pub fn new(
        storage_name: &str,
        machine_uuid: &str,
    ) -> (Console, tokio::sync::mpsc::Receiver<Vec<u8>>) {
        let (to_agent, lines) = tokio::sync::mpsc::channel(CONSOLE_QUEUE_LINES);
        let console = Console {
            storage_name: storage_name.to_owned(),
            machine_uuid: machine_uuid.to_owned(),
            // Until the request says otherwise only errors reach the agent, as the original.
            verbose: false,
            to_agent,
        };
        (console, lines)
    }

    /// The agent's `verbose` flag: INFO lines reach it too.
    pub fn set_verbose(&mut self, verbose: bool) {
        self.verbose = verbose;
    }

    pub fn info(&self, message: &str) {
        self.line(Level::Info, message);
    }

    pub fn warning(&self, message: &str) {
        self.line(Level::Warning, message);
    }

    pub fn error(&self, message: &str) {
        self.line(Level::Error, message);
    }

    /// `message` may quote the agent's rsync daemon: its control characters are escaped,
    /// so it can neither forge lines of its own nor drive a terminal.
    pub fn line(&self, level: Level, message: &str) {
        let message = escape_controls(message);
        let message = message.as_str();
        let machine = self.machine_uuid.as_str();
        match level {
            Level::Info => tracing::info!(machine, "{message}"),
            Level::Warning => tracing::warn!(machine, "{message}"),
            Level::Error => tracing::error!(machine, "{message}"),
        }
        // The original shows a quiet agent its errors only.
        if level != Level::Error && !self.verbose {
            return;
        }
        let line = format!(
            "[{} {}] {}: {}\n",
            python_asctime(SystemTime::now()),
            self.storage_name,
            level.name(),
            message
        );
        if self.to_agent.try_send(line.into_bytes()).is_err() {
            tracing::debug!(machine, "agent console full or gone: line not sent");
        }
    }
}

/// `text` with control characters (newlines included) written as escapes.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `2024-01-10 12:34:56,789`: Python logging's default `asctime`, in UTC.
fn python_asctime(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let t = time::OffsetDateTime::from_unix_timestamp(since.as_secs() as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        since.subsec_millis()
    )
}

/// Now for a report's `time_begin`/`time_end`, from the clock snapshot times come from, so
/// the coordinator's log agrees with the snapshot names; absent when that clock cannot be read
/// (an unusable test clock), rather than a time from another clock.
fn report_time() -> Option<f64> {
    match turku_store::clock::now() {
        Ok(now) => Some(now.unix_timestamp_nanos() as f64 / 1e9),
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

/// What every session of the process shares.
#[derive(Debug)]
pub struct SessionContext {
    pub config: Arc<StorageConfig>,
    pub coordinator: CoordinatorLink,
    /// Backups running at once, across sessions.
    pub backup_slots: Arc<Semaphore>,
    /// Woken after each committed snapshot: garbage collection follows backups.
    pub backups_committed: Arc<Notify>,
}

/// How a session ended, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Every due source was attempted (each reported on its own).
    Done,
    /// The session could not do its work (coordinator unreachable, ...): exit status 1.
    Failed,
}

impl SessionEnd {
    pub fn exit_status(self) -> u32 {
        match self {
            SessionEnd::Done => 0,
            SessionEnd::Failed => 1,
        }
    }
}

/// The backup half of a session: check in, then back up each due source in turn.
pub async fn run_checkin(
    ctx: &SessionContext,
    request: &PingRequest,
    tunnel: &dyn Tunnel,
    console: &Console,
) -> SessionEnd {
    let uuid = request.machine_uuid.as_str();
    let checkin = {
        let link = ctx.coordinator.clone();
        let uuid = uuid.to_owned();
        tokio::task::spawn_blocking(move || link.checkin(&uuid)).await
    };
    let machine = match checkin {
        Ok(Ok(machine)) => machine,
        Ok(Err(e)) => {
            console.error(&format!("{}: {e}", text::CHECKIN_FAILED));
            return SessionEnd::Failed;
        }
        Err(e) => {
            console.error(&format!("{}: {e}", text::CHECKIN_FAILED));
            return SessionEnd::Failed;
        }
    };
    if machine.scheduled_sources.is_empty() {
        console.info(text::NOTHING_DUE);
    } else {
        let names: Vec<&str> = machine
            .scheduled_sources
            .keys()
            .map(String::as_str)
            .collect();
        console.info(&format!("{}{}", text::SOURCES_DUE, names.join(", ")));
    }
    for (name, source) in &machine.scheduled_sources {
        back_up_one(
            ctx,
            request,
            &machine,
            name,
            source,
            request.sources.get(name),
            tunnel,
            console,
        )
        .await;
    }
    console.info(text::DONE);
    SessionEnd::Done
}

#[allow(clippy::too_many_arguments)]
async fn back_up_one(
    ctx: &SessionContext,
    request: &PingRequest,
    machine: &StorageCheckinMachine,
    name: &str,
    source: &ScheduledSource,
    credentials: Option<&SourceCredentials>,
    tunnel: &dyn Tunnel,
    console: &Console,
) {
    let Some(credentials) = credentials else {
        console.error(&format!("Cannot find authentication for source \"{name}\""));
        return;
    };
    // A gone agent fails its remaining sources at once instead of queueing for slots.
    if tunnel.is_gone() {
        let report = failure_report(text::AGENT_GONE);
        send_report(
            ctx,
            &request.machine_uuid,
            name,
            report,
            report_time(),
            console,
        )
        .await;
        return;
    }
    let queue_timeout = ctx.config.daemon.backup_queue_timeout;
    let slot =
        match tokio::time::timeout(queue_timeout, Arc::clone(&ctx.backup_slots).acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            _ => {
                console.error(&format!(
                    "{} ({} backups running; waited {} s): source {name} stays due",
                    text::BUSY,
                    ctx.config.daemon.max_backups,
                    queue_timeout.as_secs()
                ));
                return;
            }
        };
    console.info(&format!("Begin: {} {name}", machine.unit_name));
    let time_begin = report_time();
    let report = match tunnel.open(request.port).await {
        Err(why) => {
            drop(slot);
            failure_report(&format!("cannot reach the agent's rsync daemon: {why}"))
        }
        Ok((host, connection)) => {
            // Stored under the machine the key names, whatever the reply calls it.
            let job = BackupJob::new(
                &ctx.config,
                &request.machine_uuid,
                name,
                source,
                credentials,
            );
            let url = RsyncUrl {
                user: Some(credentials.username.clone()),
                host,
                port: request.port,
                module: name.to_owned(),
                path: String::new(),
            };
            // The slot goes with the job: a session cut short stops waiting for the job, but
            // the slot stays taken until the job itself ends.
            let outcome = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                job.run(&url, connection)
            })
            .await;
            match outcome {
                Ok(Ok(done)) => {
                    for warning in &done.warnings {
                        console.warning(warning);
                    }
                    ctx.backups_committed.notify_one();
                    SourceReport {
                        success: true,
                        snapshot: done.snapshot_name,
                        summary: done.summary,
                        ..SourceReport::default()
                    }
                }
                Ok(Err(e)) => failure_report(&format!("{e:#}")),
                Err(e) => failure_report(&format!("the backup task failed: {e}")),
            }
        }
    };
    if !report.success {
        if let Some(summary) = &report.summary {
            console.error(&format!("{name}: {summary}"));
        }
    }
    send_report(
        ctx,
        &request.machine_uuid,
        name,
        report,
        time_begin,
        console,
    )
    .await;
    console.info(&format!("End: {} {name}", machine.unit_name));
}

/// `storage_ping_source_update` for one source, its times filled in.
async fn send_report(
    ctx: &SessionContext,
    machine_uuid: &str,
    name: &str,
    report: SourceReport,
    time_begin: Option<f64>,
    console: &Console,
) {
    let report = SourceReport {
        time_begin,
        time_end: report_time(),
        ..report
    };
    let link = ctx.coordinator.clone();
    let (uuid, source_name) = (machine_uuid.to_owned(), name.to_owned());
    let sent = tokio::task::spawn_blocking(move || link.report(&uuid, &source_name, report)).await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => console.error(&format!("cannot report {name} to the coordinator: {e}")),
        Err(e) => console.error(&format!("cannot report {name} to the coordinator: {e}")),
    }
}

fn failure_report(why: &str) -> SourceReport {
    SourceReport {
        success: false,
        snapshot: None,
        summary: Some(bounded(&escape_controls(why))),
        ..SourceReport::default()
    }
}

/// `text` cut to [`MAX_SUMMARY_BYTES`] at a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_SUMMARY_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_SUMMARY_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// One source's backup, ready to run on a blocking thread.
#[derive(Debug)]
pub struct BackupJob {
    store: std::path::PathBuf,
    machine: String,
    source: String,
    mode: SnapshotMode,
    retention: String,
    options: PullOptions,
    timezone: Option<String>,
}

/// What a successful backup tells the coordinator.
#[derive(Debug)]
pub struct BackupDone {
    /// `None` in snapshot mode `none`, as the original reports it.
    pub snapshot_name: Option<String>,
    pub summary: Option<String>,
    pub warnings: Vec<String>,
}

impl BackupJob {
    pub fn new(
        config: &StorageConfig,
        machine: &str,
        name: &str,
        source: &ScheduledSource,
        credentials: &SourceCredentials,
    ) -> BackupJob {
        let settings = &config.daemon;
        let bwlimit = match source.bwlimit.as_deref().map(parse_bwlimit) {
            None => None,
            Some(Ok(rate)) => rate,
            Some(Err(why)) => {
                tracing::warn!(machine, source = name, "{why}: backing up without a limit");
                None
            }
        };
        BackupJob {
            store: config.store.clone(),
            machine: machine.to_owned(),
            source: name.to_owned(),
            mode: snapshot_mode(config.snapshot_mode, source),
            retention: source.retention.clone(),
            options: PullOptions {
                password: Some(RsyncSecret::new(
                    credentials.password.expose().as_bytes().to_vec(),
                )),
                hard_links: config.preserve_hard_links || source.preserve_hard_links,
                filter_rules: turku_filter_rules(&source.filter, &source.exclude),
                timeouts: Timeouts {
                    io: Some(settings.rsync_io_timeout),
                    connect: Some(settings.rsync_connect_timeout),
                    deadline: Some(settings.session_timeout),
                },
                limits: Limits::default(),
                bwlimit,
            },
            timezone: config.timezone.clone(),
        }
    }

    /// Pull, commit, then retention. Nothing is committed when the pull fails; a retention
    /// failure after the commit still counts the backup as done (the snapshot exists) and
    /// says so in the summary.
    pub fn run(self, url: &RsyncUrl, connection: Connection) -> Result<BackupDone, BackupError> {
        let store = Store::open(&self.store)?;
        let PullReport {
            snapshot,
            outcome,
            warnings,
        } = pull_source(
            &store,
            &self.machine,
            &self.source,
            url,
            connection,
            self.options,
        )?;
        let mut summary = String::new();
        if let Some(base) = &snapshot.base {
            summary.push_str(&format!("Base snapshot: {base}\n"));
        }
        let retention = match self.mode {
            SnapshotMode::LinkDest => self.retention.as_str(),
            SnapshotMode::None => NONE_MODE_RETENTION,
        };
        if !retention.trim().is_empty() {
            let applied = turku_store::clock::now()
                .map_err(|e| BackupError::from(turku_store::StoreError::from(e)))
                .and_then(|now| {
                    apply_retention(
                        &store,
                        &self.machine,
                        &self.source,
                        crate::backup::RetentionAt {
                            retention,
                            now,
                            zone: self.timezone.as_deref(),
                        },
                        false,
                        |gone| summary.push_str(&format!("Removed old snapshot: {}\n", gone.name)),
                    )
                });
            if let Err(e) = applied {
                summary.push_str(&format!("Retention failed: {e}\n"));
            }
        }
        let stats = &snapshot.stats;
        summary.push_str(&format!(
            "Files: {}, {} bytes; unchanged files reused: {}; new data: {} bytes ({} stored)\n",
            stats.files, stats.bytes, stats.reused_files, stats.new_bytes, stats.new_stored_bytes
        ));
        // What crossed the wire, as the original's summary carried rsync's --stats: the
        // operator's (and the end-to-end tests') measure of an incremental backup.
        summary.push_str(&format!(
            "Transferred: {} files; literal data: {} bytes, matched data: {} bytes; \
             received {} bytes, sent {} bytes\n",
            outcome.files_received,
            outcome.literal_bytes,
            outcome.matched_bytes,
            outcome.wire_bytes_read,
            outcome.wire_bytes_written
        ));
        Ok(match self.mode {
            SnapshotMode::LinkDest => BackupDone {
                snapshot_name: Some(snapshot.name),
                summary: Some(bounded(&summary)),
                warnings,
            },
            SnapshotMode::None => BackupDone {
                snapshot_name: None,
                summary: None,
                warnings,
            },
        })
    }
}

/// The original's rule: the configured mode; `link-dest` becomes `none` for sources with
/// large rotating or modifying files; a source's own non-empty mode wins over both.
fn snapshot_mode(configured: SnapshotMode, source: &ScheduledSource) -> SnapshotMode {
    if let Some(mode) = source.snapshot_mode.as_deref().filter(|m| !m.is_empty()) {
        return if mode == crate::constants::config::SNAPSHOT_MODE_LINK_DEST {
            SnapshotMode::LinkDest
        } else {
            SnapshotMode::None
        };
    }
    if configured == SnapshotMode::LinkDest
        && (source.large_rotating_files || source.large_modifying_files)
    {
        return SnapshotMode::None;
    }
    configured
}

/// The configured zone as a conversion: an instant at the zone's offset at that instant
/// (retention counts days in it, each snapshot time at its own offset across summer time).
/// An unknown zone falls back to UTC with one warning in the log.
pub(crate) fn zone_clock(
    zone: Option<&str>,
) -> impl Fn(time::OffsetDateTime) -> time::OffsetDateTime {
    let tz = zone.and_then(|zone| match zone.parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            tracing::warn!(zone, "unknown time zone: retention counts days in UTC");
            None
        }
    });
    move |instant| match tz {
        Some(tz) => at_offset_of(tz, instant),
        None => instant,
    }
}

fn at_offset_of(tz: chrono_tz::Tz, instant: time::OffsetDateTime) -> time::OffsetDateTime {
    use chrono::Offset;
    let Some(utc) = chrono::DateTime::from_timestamp(instant.unix_timestamp(), 0) else {
        return instant;
    };
    let offset_secs = utc.with_timezone(&tz).offset().fix().local_minus_utc();
    match time::UtcOffset::from_whole_seconds(offset_secs) {
        Ok(offset) => instant.to_offset(offset),
        Err(_) => instant,
    }
}

#[cfg(test)]
fn in_zone(zone: Option<&str>, now: time::OffsetDateTime) -> time::OffsetDateTime {
    zone_clock(zone)(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn source(mode: Option<&str>, large: bool) -> ScheduledSource {
        serde_json::from_value(serde_json::json!({
            "path": "/etc", "retention": "last 5 days", "bwlimit": null, "filter": [],
            "exclude": [], "shared_service": false, "large_rotating_files": large,
            "large_modifying_files": false, "snapshot_mode": mode, "preserve_hard_links": false,
            "storage": {"name": "s", "ssh_ping_host": "h", "ssh_ping_host_keys": [],
                        "ssh_ping_port": 22, "ssh_ping_user": "u"}
        }))
        .unwrap()
    }

    #[test]
    fn snapshot_mode_follows_the_original() {
        use SnapshotMode::{LinkDest, None as Single};
        assert_eq!(snapshot_mode(LinkDest, &source(None, false)), LinkDest);
        assert_eq!(snapshot_mode(LinkDest, &source(None, true)), Single);
        assert_eq!(snapshot_mode(LinkDest, &source(Some(""), true)), Single);
        let own = source(Some("link-dest"), true);
        assert_eq!(snapshot_mode(Single, &own), LinkDest);
        assert_eq!(
            snapshot_mode(LinkDest, &source(Some("attic"), false)),
            Single
        );
    }

    #[test]
    fn asctime_is_pythons() {
        let at = UNIX_EPOCH + Duration::from_millis(1_704_889_496_789);
        assert_eq!(python_asctime(at), "2024-01-10 12:24:56,789");
    }

    #[tokio::test]
    async fn console_sends_info_only_when_verbose_and_never_blocks() {
        let (mut console, mut lines) = Console::new("storage1", "uuid-1");
        console.info("hidden");
        console.error("shown");
        let line = String::from_utf8(lines.try_recv().unwrap()).unwrap();
        assert!(line.starts_with('['), "{line}");
        assert!(line.ends_with(" storage1] ERROR: shown\n"), "{line}");
        assert!(lines.try_recv().is_err());
        console.set_verbose(true);
        for _ in 0..CONSOLE_QUEUE_LINES * 2 {
            console.info("Begin: unit etc");
        }
        let mut got = 0;
        while lines.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, CONSOLE_QUEUE_LINES);
    }

    #[tokio::test]
    async fn console_lines_cannot_be_forged_and_quiet_agents_see_errors_only() {
        let (mut console, mut lines) = Console::new("s", "u");
        console.warning("vanished");
        assert!(lines.try_recv().is_err(), "a warning is not an error");
        console.set_verbose(true);
        console.warning("file\n[2024-01-01 00:00:00,000 s] ERROR: forged\x1b[2J");
        let line = String::from_utf8(lines.try_recv().unwrap()).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(line.contains("file\\n[2024"), "{line:?}");
    }

    #[test]
    fn summaries_are_bounded_at_a_char_boundary() {
        let long = "é".repeat(MAX_SUMMARY_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_SUMMARY_BYTES + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn in_zone_uses_the_zones_offset() {
        let now = time::OffsetDateTime::now_utc();
        let utc = in_zone(Some("UTC"), now);
        assert_eq!(utc.offset(), time::UtcOffset::UTC);
        let kolkata = in_zone(Some("Asia/Kolkata"), now);
        assert_eq!(kolkata.offset().whole_minutes(), 330);
        assert_eq!(kolkata, now);
        assert_eq!(
            in_zone(Some("Not/AZone"), now).offset(),
            time::UtcOffset::UTC
        );
    }

    #[test]
    fn in_zone_takes_the_offset_of_the_given_instant_not_of_today() {
        // An injected clock may stand in winter while the machine is in summer.
        let winter = time::macros::datetime!(2024-01-15 12:00 UTC);
        let summer = time::macros::datetime!(2024-07-15 12:00 UTC);
        assert_eq!(
            in_zone(Some("Europe/Helsinki"), winter)
                .offset()
                .whole_hours(),
            2
        );
        assert_eq!(
            in_zone(Some("Europe/Helsinki"), summer)
                .offset()
                .whole_hours(),
            3
        );
    }
}

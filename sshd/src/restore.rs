//! Restores: a snapshot pushed from the store into a stock rsync daemon's writable module,
//! with our rsync sender. `push` reaches any daemon by TCP; `restore` asks the running
//! daemon (over [`crate::control`]) to push through the tunnel of the machine's agent in
//! restore mode. Either way the store is only read: a push that fails midway changes
//! nothing on the storage.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::constants::{CANCEL_POLL_INTERVAL, MAX_REASONS_SHOWN};
use crate::control::{ProgressRelay, Reply, RestoreRequest};
use crate::pull::{Connection, RsyncUrl};
use crate::server::Daemon;

/// How far a push is, for a progress line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushProgress {
    /// Regular files to send, and how many have been sent (or failed).
    pub files_total: u64,
    pub files_done: u64,
    /// Content bytes to send (the files' sizes), and how many have been.
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Bytes written to the connection so far.
    pub wire_written: u64,
}

/// What a finished push reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    /// The snapshot pushed (its name, `latest` resolved).
    pub snapshot: String,
    pub protocol: u32,
    /// Entries in the file list, and the regular files and content bytes among them.
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Files the receiver asked for (the others were already up to date there).
    pub files_sent: u64,
    /// Content sent as literal data, and content the receiver rebuilt from its own copy.
    pub literal_bytes: u64,
    pub matched_bytes: u64,
    pub wire_written: u64,
    pub wire_read: u64,
    /// 0: everything arrived; 23: some files did not (named in `failed`).
    pub exit_code: i32,
    /// Up to [`MAX_REASONS_SHOWN`] names each; `failed_count` has the full count.
    pub failed: Vec<String>,
    pub failed_count: u64,
    pub warnings: Vec<String>,
    pub elapsed_ms: u64,
}

/// Where a push goes and how.
#[derive(Debug)]
pub struct PushOptions {
    pub password: Option<turku_proto_rsync::Secret>,
    pub timeouts: turku_proto_rsync::Timeouts,
}

/// One progress line: `120/4,000 files, 1.2/30.0 GiB (4%), 1.0 GiB written`.
pub fn progress_line(p: &PushProgress) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let percent = p
        .bytes_done
        .saturating_mul(100)
        .checked_div(p.bytes_total)
        .unwrap_or(100);
    format!(
        "{}/{} files, {:.1}/{:.1} MiB ({percent}%), {:.1} MiB written",
        p.files_done,
        p.files_total,
        p.bytes_done as f64 / MIB,
        p.bytes_total as f64 / MIB,
        p.wire_written as f64 / MIB
    )
}

/// The one-line summary both `push` and `restore` print.
pub fn summary_line(report: &PushReport) -> String {
    format!(
        "pushed snapshot {}: {} entries, {} files ({} bytes), {} sent ({} literal bytes, {} matched), {} bytes written, {:.1} s, exit code {}",
        report.snapshot,
        report.entries,
        report.files,
        report.bytes,
        report.files_sent,
        report.literal_bytes,
        report.matched_bytes,
        report.wire_written,
        report.elapsed_ms as f64 / 1000.0,
        report.exit_code
    )
}

/// The daemon's side of `restore`: finds the machine's restore session, opens its forwarded
/// module through the agent's SSH connection and pushes the snapshot, reporting progress to
/// the control connection.
pub async fn restore_through_session(
    daemon: &Arc<Daemon>,
    request: RestoreRequest,
    replies: tokio::sync::mpsc::Sender<Reply>,
    cancelled: Arc<AtomicBool>,
) -> Result<PushReport> {
    let Some(session) = daemon.restore_session(&request.machine) else {
        bail!(
            "no restore session is open for machine {}: run `turku-agent ping --restore` on it first (it waits while the restore runs)",
            request.machine
        );
    };
    let Some(_pushing) = session.try_begin_push() else {
        bail!(
            "a restore into machine {} is already running",
            request.machine
        );
    };
    let (address, connection) = session
        .tunnel
        .open(session.port)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| {
            format!(
                "opening the agent's restore module (port {}) through its SSH connection",
                session.port
            )
        })?;
    let url = RsyncUrl {
        user: request.user.clone(),
        host: address,
        port: session.port,
        module: request.module.clone(),
        path: String::new(),
    };
    let store_path = daemon.ctx.config.store.clone();
    let options = PushOptions {
        password: request
            .password
            .as_ref()
            .map(|p| turku_proto_rsync::Secret::new(p.as_bytes().to_vec())),
        // No deadline: a restore takes as long as the data needs; silence is what is bounded.
        timeouts: turku_proto_rsync::Timeouts {
            io: Some(daemon.ctx.config.daemon.rsync_io_timeout),
            connect: Some(daemon.ctx.config.daemon.rsync_connect_timeout),
            deadline: None,
        },
    };
    let tunnel = Arc::clone(&session.tunnel);
    let work = tokio::task::spawn_blocking(move || {
        let store = turku_store::Store::open(&store_path)
            .with_context(|| format!("opening store {}", store_path.display()))?;
        let mut relay = ProgressRelay::new(replies, Arc::clone(&cancelled));
        let snapshot = store.snapshot(&request.machine, &request.source, &request.snapshot)?;
        relay.info(format!(
            "restoring {} of {}/{} into {}",
            snapshot.name, request.machine, request.source, request.module
        ));
        let sub = request.path.clone().unwrap_or_default();
        push_snapshot(
            &store,
            &snapshot,
            sub.as_bytes(),
            &url,
            connection,
            options,
            &mut |p| {
                relay.report(p);
            },
            Some(&cancelled),
        )
    });
    let result = work.await.context("the restore task failed")?;
    match result {
        Err(e) if tunnel.is_gone() => Err(
            e.context("the agent's restore session closed midway; nothing on the storage changed")
        ),
        other => other,
    }
}

/// The store as the sender's content: the walked entries, each regular file opened by its
/// position in the list (which is the walk's order) and read chunk by chunk, each verified.
struct StoreSource<'a> {
    store: &'a turku_store::Store,
    walked: Vec<turku_store::WalkEntry>,
    totals: PushProgress,
    progress: &'a mut dyn FnMut(&PushProgress),
}

/// A stored file's content as the sender reads it.
struct StoreContent(turku_store::FileReader);

impl turku_proto_rsync::FileContent for StoreContent {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, turku_proto_rsync::SinkError> {
        Ok(std::io::Read::read(&mut self.0, buf)?)
    }
}

impl turku_proto_rsync::SendSource for StoreSource<'_> {
    type Content = StoreContent;

    fn open(
        &mut self,
        ndx: u32,
        _entry: &turku_proto_rsync::FileEntry,
    ) -> Result<StoreContent, turku_proto_rsync::SinkError> {
        let walked = self
            .walked
            .get(ndx as usize)
            .ok_or("the sender asked for an entry past the list")?;
        Ok(StoreContent(self.store.open_walked(walked)?))
    }

    fn progress(&mut self, p: &turku_proto_rsync::PushProgress) {
        self.totals.files_done = p.files_sent;
        self.totals.bytes_done = p.literal_bytes + p.matched_bytes;
        self.totals.wire_written = p.wire_bytes_written;
        (self.progress)(&self.totals);
    }
}

/// Pushes `snapshot` (or its `sub` path) into `url`'s module over `connection`, with hard
/// links, numeric owners and nothing deleted at the destination. `progress` is called after
/// each file; `cancel` set stops the push at the next moment it waits for the peer.
#[allow(clippy::too_many_arguments)]
pub fn push_snapshot(
    store: &turku_store::Store,
    snapshot: &turku_store::Snapshot,
    sub: &[u8],
    url: &RsyncUrl,
    connection: Connection,
    options: PushOptions,
    progress: &mut dyn FnMut(&PushProgress),
    cancel: Option<&AtomicBool>,
) -> Result<PushReport> {
    let started = Instant::now();
    let walked = store
        .walk_entries(snapshot, sub)
        .with_context(|| format!("reading snapshot {}", snapshot.name))?;
    let entries: Vec<turku_proto_rsync::FileEntry> = walked.iter().map(file_entry).collect();
    let mut totals = PushProgress::default();
    for w in &walked {
        if w.has_content() {
            totals.files_total += 1;
            totals.bytes_total += w.entry.file_size();
        }
    }
    let (files, bytes) = (totals.files_total, totals.bytes_total);
    let mut config = turku_proto_rsync::io::PushConfig::new(&url.module);
    config.path = url.path.clone();
    if let Some(user) = &url.user {
        config.user = user.clone();
    }
    config.password = options.password;
    config.hard_links = true;
    config.numeric_ids = true;
    config.timeouts = options.timeouts;
    let mut source = StoreSource {
        store,
        walked,
        totals,
        progress,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let transfer = async {
        let push = async {
            match connection {
                Connection::Tcp => {
                    turku_proto_rsync::io::push_tcp(
                        &url.host,
                        url.port,
                        &config,
                        entries,
                        &mut source,
                    )
                    .await
                }
                Connection::Stream(stream) => {
                    turku_proto_rsync::io::push(stream, &config, entries, &mut source).await
                }
            }
        };
        let cancelled = async {
            match cancel {
                Some(flag) => loop {
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(CANCEL_POLL_INTERVAL).await;
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = push => Some(outcome),
            () = cancelled => None,
        }
    };
    let outcome = match runtime.block_on(transfer) {
        None => bail!("the restore was cancelled (its command went away)"),
        Some(outcome) => outcome.with_context(|| {
            format!(
                "pushing to rsync://{}:{}/{}",
                url.host, url.port, url.module
            )
        })?,
    };
    let p = outcome.progress;
    let mut warnings = outcome.warnings.clone();
    warnings.truncate(MAX_REASONS_SHOWN);
    let mut failed = outcome.failed.clone();
    failed.truncate(MAX_REASONS_SHOWN);
    Ok(PushReport {
        snapshot: snapshot.name.clone(),
        protocol: outcome.protocol,
        entries: p.entries,
        files,
        bytes,
        files_sent: p.files_sent,
        literal_bytes: p.literal_bytes,
        matched_bytes: p.matched_bytes,
        wire_written: p.wire_bytes_written,
        wire_read: p.wire_bytes_read,
        exit_code: outcome.exit_code,
        failed,
        failed_count: outcome.failed.len() as u64,
        warnings,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// A walked store entry as an rsync file-list entry: `.` for the root folder, the store's
/// permission bits under the entry's file type, hard-link followers pointing at their
/// leader's position in the list (the walk's index: the list is the walk).
pub fn file_entry(walked: &turku_store::WalkEntry) -> turku_proto_rsync::FileEntry {
    use turku_proto_rsync::constants::{
        S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK,
    };
    use turku_store::{EntryData, EntryKind};
    let e = &walked.entry;
    let file_type = match e.kind {
        EntryKind::File => S_IFREG,
        EntryKind::Dir => S_IFDIR,
        EntryKind::Symlink => S_IFLNK,
        EntryKind::CharDevice => S_IFCHR,
        EntryKind::BlockDevice => S_IFBLK,
        EntryKind::Fifo => S_IFIFO,
        EntryKind::Socket => S_IFSOCK,
    };
    let name = if walked.is_root() {
        b".".to_vec()
    } else {
        walked.path.clone()
    };
    let size = match &e.data {
        EntryData::File { size, .. } => i64::try_from(*size).unwrap_or(i64::MAX),
        EntryData::Symlink { target } => target.len() as i64,
        _ => 0,
    };
    let mut entry =
        turku_proto_rsync::FileEntry::new(name, file_type | (e.meta.perm & 0o7777), size);
    // Stock senders mark the transfer's root this way; receivers scope `--delete` by it.
    entry.top_dir = walked.is_root() && e.kind == EntryKind::Dir;
    entry.mtime = e.meta.mtime_sec;
    entry.mtime_nsec = e.meta.mtime_nsec;
    entry.uid = e.meta.uid;
    entry.gid = e.meta.gid;
    match &e.data {
        EntryData::Symlink { target } => entry.symlink = Some(target.clone()),
        EntryData::Device { rdev } => {
            entry.rdev = Some((
                u32::try_from(turku_store::dev_major(*rdev)).unwrap_or(u32::MAX),
                u32::try_from(turku_store::dev_minor(*rdev)).unwrap_or(u32::MAX),
            ))
        }
        _ => {}
    }
    entry.hard_link = match &walked.link {
        turku_store::HardLink::None => turku_proto_rsync::HardLink::None,
        turku_store::HardLink::Leader => turku_proto_rsync::HardLink::Leader,
        turku_store::HardLink::Follower { leader_index, .. } => {
            turku_proto_rsync::HardLink::Follower {
                first: u32::try_from(*leader_index).unwrap_or(u32::MAX),
            }
        }
    };
    entry
}

//! Restores: a snapshot pushed from the store into a stock rsync daemon's writable module,
//! with our rsync sender. `push` reaches any daemon by TCP; `restore` asks the running
//! daemon (over [`crate::control`]) to push through the tunnel of the machine's agent in
//! restore mode. Either way the store is only read: a push that fails midway changes
//! nothing on the storage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::constants::{CANCEL_POLL_INTERVAL, GONE_GRACE, MAX_REASONS_SHOWN, PROGRESS_TICK};
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

/// One progress line: `120/4000 files, 1.2/30.0 MiB (4%), 1.0 MiB written`.
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

/// The daemon's side of `restore`: finds the machine's restore session, reads the snapshot's
/// list, opens the agent's forwarded module through its SSH connection and pushes the
/// snapshot, reporting progress to the control connection.
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
    // The list first: the agent's rsync daemon would otherwise hold an unanswered
    // connection (and its own timeout) while a large snapshot is read.
    let store_path = daemon.ctx.config.store.clone();
    let relay = ProgressRelay::new(replies, Arc::clone(&cancelled));
    let prepared = {
        let request = request.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let store = turku_store::Store::open(&store_path)
                .with_context(|| format!("opening store {}", store_path.display()))?;
            let snapshot = store.snapshot(&request.machine, &request.source, &request.snapshot)?;
            let sub = request.path.clone().unwrap_or_default();
            let prepared = PreparedPush::new(&store, &snapshot, sub.as_bytes())?;
            Ok((store, prepared))
        })
        .await
        .context("the restore task failed")??
    };
    let (store, prepared) = prepared;
    relay.info(format!(
        "restoring {} of {}/{} into {}: {} files, {} bytes",
        prepared.snapshot,
        request.machine,
        request.source,
        request.module,
        prepared.totals.files_total,
        prepared.totals.bytes_total
    ));
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
    let result = tokio::task::spawn_blocking(move || {
        let mut relay = relay;
        prepared.push(
            &store,
            &url,
            connection,
            options,
            &mut |p| relay.report(p),
            Some(&cancelled),
        )
    })
    .await
    .context("the restore task failed")?;
    let Err(e) = result else {
        return result;
    };
    // The agent's input closing is seen by another task than the one whose push just failed
    // on the same departure: give it a moment before deciding what the failure means.
    let deadline = Instant::now() + GONE_GRACE;
    while !tunnel.is_gone() && Instant::now() < deadline {
        tokio::time::sleep(CANCEL_POLL_INTERVAL).await;
    }
    if tunnel.is_gone() {
        return Err(
            e.context("the agent's restore session closed midway; nothing on the storage changed")
        );
    }
    Err(e)
}

/// Progress figures the push updates as it goes, read by the progress ticker: content read
/// from the store counts as it is read, so a long file shows progress too.
#[derive(Debug, Default)]
struct Counters {
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    wire_written: AtomicU64,
}

/// The store as the sender's content: the walked entries, each regular file opened by its
/// position in the list (which is the walk's order) and read chunk by chunk, each verified.
struct StoreSource<'a> {
    store: &'a turku_store::Store,
    walked: &'a [turku_store::WalkEntry],
    counters: &'a Counters,
    /// The last file's reader, handed back when the sender is done with it: the next file
    /// reuses its open packs and buffers.
    spent: &'a Mutex<Option<turku_store::FileReader>>,
}

/// A stored file's content as the sender reads it.
struct StoreContent<'a> {
    /// Always `Some` until dropped.
    reader: Option<turku_store::FileReader>,
    counters: &'a Counters,
    spent: &'a Mutex<Option<turku_store::FileReader>>,
}

impl Drop for StoreContent<'_> {
    fn drop(&mut self) {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        *spent = self.reader.take();
    }
}

impl StoreContent<'_> {
    fn reader(&mut self) -> Result<&mut turku_store::FileReader, turku_proto_rsync::SinkError> {
        self.reader
            .as_mut()
            .ok_or_else(|| "the file's reader was already given back".into())
    }
}

impl turku_proto_rsync::FileContent for StoreContent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, turku_proto_rsync::SinkError> {
        let n = std::io::Read::read(self.reader()?, buf)?;
        self.counters
            .bytes_done
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// The verified chunk in the reader's buffer, framed from there: a whole-file
    /// transfer copies content once, into the output.
    fn peek(&mut self) -> Option<Result<&[u8], turku_proto_rsync::SinkError>> {
        Some(match self.reader() {
            Ok(reader) => reader.peek().map_err(Into::into),
            Err(e) => Err(e),
        })
    }

    fn consume(&mut self, n: usize) {
        if let Some(reader) = self.reader.as_mut() {
            reader.consume(n);
        }
        self.counters
            .bytes_done
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<'a> turku_proto_rsync::SendSource for StoreSource<'a> {
    type Content = StoreContent<'a>;

    fn open(
        &mut self,
        ndx: u32,
        _entry: &turku_proto_rsync::FileEntry,
    ) -> Result<StoreContent<'a>, turku_proto_rsync::SinkError> {
        let walked = self
            .walked
            .get(ndx as usize)
            .ok_or("the sender asked for an entry past the list")?;
        let spent = self.spent.lock().unwrap_or_else(|p| p.into_inner()).take();
        let reader = match spent {
            Some(spent) => self.store.reopen_walked(walked, spent)?,
            None => self.store.open_walked(walked)?,
        };
        Ok(StoreContent {
            reader: Some(reader),
            counters: self.counters,
            spent: self.spent,
        })
    }

    fn progress(&mut self, p: &turku_proto_rsync::PushProgress) {
        self.counters
            .files_done
            .store(p.files_sent, Ordering::Relaxed);
        self.counters
            .wire_written
            .store(p.wire_bytes_written, Ordering::Relaxed);
    }
}

/// A snapshot's file list, read and ready to push.
#[derive(Debug)]
pub struct PreparedPush {
    snapshot: String,
    walked: Vec<turku_store::WalkEntry>,
    entries: Vec<turku_proto_rsync::FileEntry>,
    totals: PushProgress,
}

impl PreparedPush {
    /// Walks `snapshot` (or its `sub` path) into a file list.
    pub fn new(
        store: &turku_store::Store,
        snapshot: &turku_store::Snapshot,
        sub: &[u8],
    ) -> Result<PreparedPush> {
        let walked = store
            .walk_entries(snapshot, sub)
            .with_context(|| format!("reading snapshot {}", snapshot.name))?;
        let entries = walked.iter().map(file_entry).collect();
        let mut totals = PushProgress::default();
        for w in &walked {
            if w.has_content() {
                totals.files_total += 1;
                totals.bytes_total += w.entry.file_size();
            }
        }
        Ok(PreparedPush {
            snapshot: snapshot.name.clone(),
            walked,
            entries,
            totals,
        })
    }

    /// Pushes the list into `url`'s module over `connection`, with hard links, numeric
    /// owners and nothing deleted at the destination. `progress` is called every
    /// [`PROGRESS_TICK`] while the push runs and once at its end; `cancel` set stops the push
    /// at the next tick.
    pub fn push(
        self,
        store: &turku_store::Store,
        url: &RsyncUrl,
        connection: Connection,
        options: PushOptions,
        progress: &mut dyn FnMut(&PushProgress),
        cancel: Option<&AtomicBool>,
    ) -> Result<PushReport> {
        let started = Instant::now();
        let PreparedPush {
            snapshot,
            walked,
            entries,
            totals,
        } = self;
        let mut config = turku_proto_rsync::io::PushConfig::new(&url.module);
        config.path = url.path.clone();
        if let Some(user) = &url.user {
            config.user = user.clone();
        }
        config.password = options.password;
        config.hard_links = true;
        config.numeric_ids = true;
        config.timeouts = options.timeouts;
        let counters = Counters::default();
        let spent = Mutex::new(None);
        let mut source = StoreSource {
            store,
            walked: &walked,
            counters: &counters,
            spent: &spent,
        };
        let current = |counters: &Counters| PushProgress {
            files_done: counters.files_done.load(Ordering::Relaxed),
            bytes_done: counters.bytes_done.load(Ordering::Relaxed),
            wire_written: counters.wire_written.load(Ordering::Relaxed),
            ..totals.clone()
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
            // Progress and cancellation between the sender's steps, which are bounded.
            let ticker = async {
                loop {
                    tokio::time::sleep(PROGRESS_TICK).await;
                    if cancel.is_some_and(|flag| flag.load(Ordering::Relaxed)) {
                        break;
                    }
                    progress(&current(&counters));
                }
            };
            tokio::select! {
                outcome = push => Some(outcome),
                () = ticker => None,
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
        progress(&current(&counters));
        let p = outcome.progress;
        let mut warnings = outcome.warnings.clone();
        warnings.truncate(MAX_REASONS_SHOWN);
        let mut failed = outcome.failed.clone();
        failed.truncate(MAX_REASONS_SHOWN);
        Ok(PushReport {
            snapshot,
            protocol: outcome.protocol,
            entries: p.entries,
            files: totals.files_total,
            bytes: totals.bytes_total,
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
}

/// Pushes `snapshot` (or its `sub` path) into `url`'s module over `connection`: the list
/// read, then [`PreparedPush::push`].
pub fn push_snapshot(
    store: &turku_store::Store,
    snapshot: &turku_store::Snapshot,
    sub: &[u8],
    url: &RsyncUrl,
    connection: Connection,
    options: PushOptions,
    progress: &mut dyn FnMut(&PushProgress),
) -> Result<PushReport> {
    PreparedPush::new(store, snapshot, sub)?.push(store, url, connection, options, progress, None)
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

//! Snapshots: rows in the index, records on disk, and lookups of paths inside them.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::fault;
use crate::format::id::Id;
use crate::format::tree::{EntryData, EntryKind, Metadata, TreeEntry};
use crate::format::*;
use crate::fsutil::sync_dir;
use crate::index::{self, SnapshotRow};
use crate::store::Store;

/// What a backup stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
    /// Files whose content was reused from the previous snapshot without reading it.
    pub reused_files: u64,
    /// Plaintext bytes of chunks this snapshot added to the store.
    pub new_bytes: u64,
    /// Bytes those chunks and trees take in packs (after compression).
    pub new_stored_bytes: u64,
    pub new_chunks: u64,
    pub new_trees: u64,
}

/// A committed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub machine: String,
    pub source: String,
    /// Turku-style name: `<source>_<YYYYmmdd-HHMMSS>_<4hex>`.
    pub name: String,
    pub root: Id,
    pub root_meta: Metadata,
    pub base: Option<String>,
    /// Nanoseconds since the epoch.
    pub time_begin_ns: i64,
    pub time_end_ns: i64,
    pub stats: SnapshotStats,
}

#[derive(Serialize, Deserialize)]
struct MetaJson {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime_sec: i64,
    mtime_nsec: u32,
}

impl From<Metadata> for MetaJson {
    fn from(m: Metadata) -> Self {
        MetaJson {
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            mtime_sec: m.mtime_sec,
            mtime_nsec: m.mtime_nsec,
        }
    }
}

impl From<MetaJson> for Metadata {
    fn from(m: MetaJson) -> Self {
        Metadata {
            perm: m.perm & 0o7777,
            uid: m.uid,
            gid: m.gid,
            mtime_sec: m.mtime_sec,
            mtime_nsec: m.mtime_nsec.min(999_999_999),
        }
    }
}

/// The on-disk record of a snapshot: what `repair` rebuilds the snapshot rows from.
#[derive(Serialize, Deserialize)]
struct Record {
    format: String,
    machine: String,
    source: String,
    name: String,
    root: String,
    root_meta: MetaJson,
    base: Option<String>,
    time_begin_ns: i64,
    time_end_ns: i64,
    stats: SnapshotStats,
    /// The writer session that committed it. A record whose snapshot has no index row is an
    /// interrupted commit while that session is dead (see `interrupted_commits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer_session: Option<i64>,
}

impl Snapshot {
    pub(crate) fn key(&self) -> (String, String, String) {
        (self.machine.clone(), self.source.clone(), self.name.clone())
    }

    pub(crate) fn to_row(&self) -> SnapshotRow {
        SnapshotRow {
            machine: self.machine.clone(),
            source: self.source.clone(),
            name: self.name.clone(),
            root: self.root,
            root_meta: serde_json::to_string(&MetaJson::from(self.root_meta)).unwrap_or_default(),
            base: self.base.clone(),
            time_begin_ns: self.time_begin_ns,
            time_end_ns: self.time_end_ns,
            stats: serde_json::to_string(&self.stats).unwrap_or_default(),
        }
    }

    pub(crate) fn from_row(row: SnapshotRow) -> Snapshot {
        let root_meta = serde_json::from_str::<MetaJson>(&row.root_meta)
            .map(Metadata::from)
            .unwrap_or_default();
        Snapshot {
            machine: row.machine,
            source: row.source,
            name: row.name,
            root: row.root,
            root_meta,
            base: row.base,
            time_begin_ns: row.time_begin_ns,
            time_end_ns: row.time_end_ns,
            stats: serde_json::from_str(&row.stats).unwrap_or_default(),
        }
    }

    fn record(&self, writer_session: Option<i64>) -> Record {
        Record {
            writer_session,
            format: SNAPSHOT_RECORD_MAGIC.to_string(),
            machine: self.machine.clone(),
            source: self.source.clone(),
            name: self.name.clone(),
            root: self.root.to_hex(),
            root_meta: self.root_meta.into(),
            base: self.base.clone(),
            time_begin_ns: self.time_begin_ns,
            time_end_ns: self.time_end_ns,
            stats: self.stats,
        }
    }

    /// End time as an RFC 3339 string (UTC).
    pub fn time_end_rfc3339(&self) -> String {
        format_ns(self.time_end_ns)
    }

    pub fn time_begin_rfc3339(&self) -> String {
        format_ns(self.time_begin_ns)
    }
}

pub fn format_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}

/// One line of the snapshot log.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum LogLine {
    Add {
        record: Box<Record>,
    },
    Forget {
        machine: String,
        source: String,
        name: String,
    },
}

fn log_path(store: &Store) -> PathBuf {
    store.snapshots_dir().join(SNAPSHOT_LOG_FILE)
}

/// Opens the log and takes its lock, reopening if a compaction replaced the file meanwhile.
fn open_log_locked(store: &Store) -> Result<fs::File> {
    let path = log_path(store);
    loop {
        let existed = path.exists();
        let f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .read(true)
            .open(&path)
            .io_ctx("open snapshot log", &path)?;
        f.lock().io_ctx("lock snapshot log", &path)?;
        let same = match (f.metadata(), fs::metadata(&path)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        };
        if same {
            if !existed {
                sync_dir(&store.snapshots_dir())?;
            }
            return Ok(f);
        }
    }
}

/// A failed append to the log, and whether the log is as it was before it.
#[derive(Debug)]
pub(crate) struct AppendFailure {
    pub error: StoreError,
    /// False when what the append wrote could not be cut back off: the log may then hold the
    /// whole line (only its fsync failed), and whoever appended it must treat it as written.
    pub log_restored: bool,
}

impl From<AppendFailure> for StoreError {
    fn from(failure: AppendFailure) -> Self {
        failure.error
    }
}

/// Appends one line durably. Every snapshot adds a line, not a file, so repeated snapshots
/// of an unchanged tree add no inodes.
///
/// A torn last line (an append cut short by a full disk, an I/O error or a crash) is ended
/// with a newline first (after `SNAPSHOT_LOG_TORN_MARK` when it is a cut-short object),
/// under the log's lock, so it can never swallow this line: replay skips the fragment and
/// reads this one. A failed append is cut back off (the log's length
/// before it is restored), so it leaves no fragment behind when it can help it.
fn append_log(store: &Store, line: &LogLine) -> std::result::Result<(), AppendFailure> {
    let untouched = |error| AppendFailure {
        error,
        log_restored: true,
    };
    let text = serde_json::to_vec(line)
        .map_err(|e| untouched(StoreError::InvalidArgument(e.to_string())))?;
    let path = log_path(store);
    let f = open_log_locked(store).map_err(untouched)?;
    let before = f
        .metadata()
        .io_ctx("stat snapshot log", &path)
        .map_err(untouched)?
        .len();
    let mut bytes = Vec::with_capacity(text.len() + 2);
    if before > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, before - 1)
            .io_ctx("read snapshot log", &path)
            .map_err(untouched)?;
        if last[0] != b'\n' {
            tracing::warn!("{}: ending a torn last line", path.display());
            let log = fs::read(&path)
                .io_ctx("read snapshot log", &path)
                .map_err(untouched)?;
            let torn = log.rsplit(|&b| b == b'\n').next().unwrap_or_default();
            // Marked, so it reads as a torn append once it is no longer last, not as damage;
            // a whole line that only lacks its newline stays a record.
            if matches!(
                parse_line(torn, false),
                Parsed::Bad(BadLineKind::TornTail, _)
            ) {
                bytes.extend_from_slice(SNAPSHOT_LOG_TORN_MARK);
            }
            bytes.push(b'\n');
        }
    }
    bytes.extend_from_slice(&text);
    bytes.push(b'\n');
    let root = Some(store.path());
    let written = write_log_line(&f, &bytes, root).and_then(|()| f.sync_data());
    let Err(e) = written else {
        return Ok(());
    };
    let error = StoreError::io("append snapshot log", &path, e);
    let restored = fault::check(root, fault::SNAPSHOT_LOG_TRUNCATE)
        .and_then(|()| f.set_len(before))
        .and_then(|()| f.sync_data());
    if let Err(e) = &restored {
        tracing::warn!(
            "{}: could not cut a failed append back off ({e}); the next append ends it",
            path.display()
        );
    }
    Err(AppendFailure {
        error,
        log_restored: restored.is_ok(),
    })
}

/// Writes `bytes` at the end of the log (`O_APPEND`); an injected fault writes half of them
/// and then fails, as a full disk does.
fn write_log_line(
    mut f: &fs::File,
    bytes: &[u8],
    root: Option<&std::path::Path>,
) -> std::io::Result<()> {
    if let Err(e) = fault::check(root, fault::SNAPSHOT_LOG_WRITE) {
        f.write_all(&bytes[..bytes.len() / 2])?;
        return Err(e);
    }
    f.write_all(bytes)
}

/// Appends the record of a snapshot that `writer_session` is about to commit.
pub(crate) fn write_record(
    store: &Store,
    snap: &Snapshot,
    writer_session: i64,
) -> std::result::Result<(), AppendFailure> {
    append_log(
        store,
        &LogLine::Add {
            record: Box::new(snap.record(Some(writer_session))),
        },
    )
}

pub(crate) fn remove_record(store: &Store, snap: &Snapshot) -> Result<()> {
    Ok(append_log(
        store,
        &LogLine::Forget {
            machine: snap.machine.clone(),
            source: snap.source.clone(),
            name: snap.name.clone(),
        },
    )?)
}

/// Why a line of the log gives no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLineKind {
    /// The last line, without its newline, cut short mid-object: what a crash or a failed
    /// append leaves. Expected; compaction drops it.
    TornTail,
    /// A torn append that a later append ended, marked with `SNAPSHOT_LOG_TORN_MARK`.
    /// Expected; compaction drops it.
    EndedFragment,
    /// Anything else (a flipped bit, a bad edit): it may be a committed snapshot's record,
    /// so it is never dropped, only reported, and an operator can mend it by hand.
    Damaged,
}

/// A line of the log that gives no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadLine {
    /// 1-based, counting every line of the file.
    pub number: usize,
    pub kind: BadLineKind,
    pub reason: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.number, self.reason)
    }
}

/// What replaying the log gives: live snapshots, the forgotten ones, and bad lines.
pub(crate) struct Replayed {
    pub snapshots: Vec<Snapshot>,
    /// The writer session each record names, by (machine, source, name).
    pub writers: HashMap<(String, String, String), i64>,
    /// Snapshots whose last line is a forget, with the root their record named: a row of one
    /// with that root is a forget cut short.
    pub forgotten: HashMap<(String, String, String), Id>,
    /// Lines that give no record, in log order.
    pub bad_lines: Vec<BadLine>,
}

impl Replayed {
    /// Bad lines that are not what a torn append leaves: possibly lost records.
    pub fn damaged_lines(&self) -> impl Iterator<Item = &BadLine> {
        self.bad_lines
            .iter()
            .filter(|l| l.kind == BadLineKind::Damaged)
    }
}

/// One line of the log, decoded.
enum Parsed {
    Add(Box<Snapshot>, Option<i64>),
    Forget((String, String, String)),
    Bad(BadLineKind, String),
}

/// One line of the log: its bytes without the newline, and whether it had one.
struct Line<'a> {
    number: usize,
    text: &'a [u8],
    ended: bool,
    parsed: Parsed,
}

/// Splits the log into its non-empty lines and decodes each; never fails, so one damaged
/// line cannot stop the others from being read.
fn parse_lines(bytes: &[u8]) -> Vec<Line<'_>> {
    let pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = pieces.len() - 1;
    pieces
        .into_iter()
        .enumerate()
        .filter(|(_, text)| !text.is_empty())
        .map(|(i, text)| Line {
            number: i + 1,
            text,
            ended: i < last,
            parsed: parse_line(text, i < last),
        })
        .collect()
}

fn parse_line(text: &[u8], ended: bool) -> Parsed {
    match serde_json::from_slice::<LogLine>(text) {
        Ok(LogLine::Add { record }) => {
            let writer = record.writer_session;
            match from_record(*record) {
                Ok(snap) => Parsed::Add(Box::new(snap), writer),
                Err(reason) => Parsed::Bad(BadLineKind::Damaged, reason),
            }
        }
        Ok(LogLine::Forget {
            machine,
            source,
            name,
        }) => Parsed::Forget((machine, source, name)),
        Err(_) if text.ends_with(SNAPSHOT_LOG_TORN_MARK) => Parsed::Bad(
            BadLineKind::EndedFragment,
            "a torn append, ended by the next".into(),
        ),
        // Only a prefix of a line (the object never closed) is a torn append; a flipped
        // byte at the end of the last line (its newline, say) is damage like any other.
        Err(e) if !ended && e.is_eof() => {
            Parsed::Bad(BadLineKind::TornTail, "a torn last line".into())
        }
        Err(e) => Parsed::Bad(
            BadLineKind::Damaged,
            format!(
                "not a log line ({:?} error at column {})",
                e.classify(),
                e.column()
            ),
        ),
    }
}

fn replay(lines: &[Line<'_>]) -> Replayed {
    let mut live: std::collections::BTreeMap<(String, String, String), Snapshot> =
        Default::default();
    let mut writers = HashMap::new();
    let mut forgotten = HashMap::new();
    let mut bad_lines = Vec::new();
    for line in lines {
        match &line.parsed {
            Parsed::Add(snap, writer) => {
                if let Some(w) = writer {
                    writers.insert(snap.key(), *w);
                }
                forgotten.remove(&snap.key());
                live.insert(snap.key(), (**snap).clone());
            }
            Parsed::Forget(key) => {
                if let Some(snap) = live.remove(key) {
                    forgotten.insert(key.clone(), snap.root);
                }
            }
            Parsed::Bad(kind, reason) => bad_lines.push(BadLine {
                number: line.number,
                kind: *kind,
                reason: reason.clone(),
            }),
        }
    }
    writers.retain(|k, _| live.contains_key(k));
    Replayed {
        snapshots: live.into_values().collect(),
        writers,
        forgotten,
        bad_lines,
    }
}

/// Decodes a snapshot log's bytes into its live snapshots (for fuzzing: never panics; a
/// line that gives no record, torn, unparsable or malformed, is skipped, never an error).
pub fn decode_log(bytes: &[u8]) -> Result<Vec<Snapshot>> {
    Ok(replay(&parse_lines(bytes)).snapshots)
}

pub(crate) fn read_log(store: &Store) -> Result<Replayed> {
    let path = log_path(store);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).io_ctx("read snapshot log", path),
    };
    let replayed = replay(&parse_lines(&bytes));
    for line in replayed.damaged_lines() {
        tracing::warn!("{}: {line} (kept as is)", path.display());
    }
    Ok(replayed)
}

/// Which lines compaction keeps (`true`), in log order. Live records stay, and damaged lines
/// stay verbatim in place: one may be a committed snapshot's record that an operator can
/// mend. Forgets and the records they forgot go, and so do fragments of torn appends.
fn lines_to_keep(lines: &[Line<'_>]) -> Vec<bool> {
    let mut latest_add: HashMap<(String, String, String), usize> = HashMap::new();
    let mut keep = vec![false; lines.len()];
    let mut damage_seen = false;
    for (i, line) in lines.iter().enumerate() {
        match &line.parsed {
            Parsed::Add(snap, _) => {
                if let Some(earlier) = latest_add.insert(snap.key(), i) {
                    keep[earlier] = false;
                }
                keep[i] = true;
            }
            // A forget goes with the record it forgot. One that forgot nothing after a
            // damaged line stays: that line may be its record, which must stay forgotten
            // if someone mends it.
            Parsed::Forget(key) => match latest_add.remove(key) {
                Some(record) => keep[record] = false,
                None => keep[i] = damage_seen,
            },
            Parsed::Bad(BadLineKind::Damaged, _) => {
                damage_seen = true;
                keep[i] = true;
            }
            Parsed::Bad(BadLineKind::TornTail | BadLineKind::EndedFragment, _) => {}
        }
    }
    keep
}

/// Rewrites the log without forgotten snapshots once their forget lines outnumber the live
/// records (lines kept for damage do not count, or every `gc` would rewrite the log).
pub(crate) fn compact_log(store: &Store) -> Result<bool> {
    let path = log_path(store);
    if !path.exists() {
        return Ok(false);
    }
    let locked = open_log_locked(store)?;
    let bytes = fs::read(&path).io_ctx("read snapshot log", &path)?;
    let lines = parse_lines(&bytes);
    let keep = lines_to_keep(&lines);
    let dropped_forgets = lines
        .iter()
        .zip(&keep)
        .filter(|(line, kept)| matches!(line.parsed, Parsed::Forget(_)) && !**kept)
        .count();
    let replayed = replay(&lines);
    if dropped_forgets <= replayed.snapshots.len() {
        return Ok(false);
    }
    // The forget lines are about to go: no row may outlive its own (a forget cut short).
    store.complete_interrupted_forgets(&replayed)?;
    let tmp = path.with_extension("compact");
    let written = (|| -> Result<()> {
        let mut f = fs::File::create(&tmp).io_ctx("write snapshot log", &tmp)?;
        let mut out = Vec::with_capacity(bytes.len());
        // Verbatim, so a kept damaged line keeps its exact bytes (and a damaged last line
        // without its newline stays so).
        for (line, _) in lines.iter().zip(&keep).filter(|(_, kept)| **kept) {
            out.extend_from_slice(line.text);
            if line.ended {
                out.push(b'\n');
            }
        }
        f.write_all(&out).io_ctx("write snapshot log", &tmp)?;
        f.sync_all().io_ctx("fsync snapshot log", &tmp)
    })();
    if let Err(e) = written {
        // A full disk must not keep a half-written copy taking the room it lacks.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).io_ctx("replace snapshot log", &path)?;
    sync_dir(&store.snapshots_dir())?;
    drop(locked);
    Ok(true)
}

/// Checks a record; a malformed one is a damaged line (why, as the error).
fn from_record(rec: Record) -> std::result::Result<Snapshot, String> {
    if rec.format != SNAPSHOT_RECORD_MAGIC {
        return Err("unknown record format".into());
    }
    let root = Id::from_hex(&rec.root).ok_or("bad root id")?;
    for (what, value) in [
        ("machine", &rec.machine),
        ("source", &rec.source),
        ("name", &rec.name),
    ] {
        if !valid_label(value) {
            return Err(format!("bad {what} {value:?}"));
        }
    }
    Ok(Snapshot {
        machine: rec.machine,
        source: rec.source,
        name: rec.name,
        root,
        root_meta: rec.root_meta.into(),
        base: rec.base,
        time_begin_ns: rec.time_begin_ns,
        time_end_ns: rec.time_end_ns,
        stats: rec.stats,
    })
}

/// What a writer accepts in a machine, source or snapshot name: not empty, no `/`, no
/// control characters (a row with one would make paths and listings ambiguous).
fn valid_label(value: &str) -> bool {
    !value.is_empty() && !value.contains('/') && !value.chars().any(char::is_control)
}

/// Builds a Turku-style snapshot name from the finish time (UTC) and a random suffix.
pub fn snapshot_name(source: &str, time_end_ns: i64) -> String {
    snapshot_name_with_suffix(source, time_end_ns, rand::random())
}

/// [`snapshot_name`] with a chosen 16-bit suffix.
pub(crate) fn snapshot_name_with_suffix(source: &str, time_end_ns: i64, suffix: [u8; 2]) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_end_ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let stamp = t
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_else(|_| "00000000-000000".into());
    let suffix = hex::encode(suffix);
    format!("{source}_{stamp}_{suffix}")
}

/// A path inside a snapshot, split into validated components.
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => {
                return Err(StoreError::InvalidArgument(format!(
                    "path {:?} may not contain `..`",
                    String::from_utf8_lossy(path)
                )))
            }
            _ if !crate::format::tree::valid_name(part) => {
                return Err(StoreError::InvalidArgument(format!(
                    "invalid path component in {:?}",
                    String::from_utf8_lossy(path)
                )))
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

impl Store {
    /// Snapshots, oldest first within each machine and source.
    pub fn snapshots(&self, machine: Option<&str>, source: Option<&str>) -> Result<Vec<Snapshot>> {
        Ok(index::list_snapshots(&self.db(), machine, source)?
            .into_iter()
            .map(Snapshot::from_row)
            .collect())
    }

    pub fn latest_snapshot(&self, machine: &str, source: &str) -> Result<Option<Snapshot>> {
        Ok(index::latest_snapshot(&self.db(), machine, source)?.map(Snapshot::from_row))
    }

    /// A snapshot by name, or the newest one for `latest`.
    pub fn snapshot(&self, machine: &str, source: &str, name: &str) -> Result<Snapshot> {
        let found = if name == "latest" {
            self.latest_snapshot(machine, source)?
        } else {
            index::find_snapshot(&self.db(), machine, source, name)?.map(Snapshot::from_row)
        };
        found.ok_or_else(|| StoreError::NoSuchSnapshot {
            machine: machine.into(),
            source_name: source.into(),
            name: name.into(),
        })
    }

    /// The entry at `path` (the root directory for an empty path).
    pub fn lookup(&self, snap: &Snapshot, path: &[u8]) -> Result<TreeEntry> {
        let mut entry = TreeEntry {
            name: Vec::new(),
            kind: EntryKind::Dir,
            meta: snap.root_meta,
            data: EntryData::Dir { tree: snap.root },
        };
        for part in split_path(path)? {
            let EntryData::Dir { tree } = &entry.data else {
                return Err(StoreError::NoSuchPath(String::from_utf8_lossy(path).into()));
            };
            let entries = self.read_tree(tree)?;
            entry = match entries.binary_search_by(|e| e.name.as_slice().cmp(part)) {
                Ok(i) => entries[i].clone(),
                Err(_) => return Err(StoreError::NoSuchPath(String::from_utf8_lossy(path).into())),
            };
        }
        Ok(entry)
    }

    /// Entries of the directory at `path`, in name order.
    pub fn list_dir(&self, snap: &Snapshot, path: &[u8]) -> Result<Vec<TreeEntry>> {
        match self.lookup(snap, path)?.data {
            EntryData::Dir { tree } => self.read_tree(&tree),
            _ => Err(StoreError::NotADirectory(
                String::from_utf8_lossy(path).into(),
            )),
        }
    }
}

/// Records in the log whose snapshot never got its index row because their writer crashed
/// between appending the record and inserting the row (its session is still registered,
/// its process gone: GC clears such sessions only after rolling these back). They were never
/// visible nor reported; `gc` rolls them back before freeing anything, so a later `repair`
/// cannot resurrect one whose blobs are gone. A live writer's record is a commit in progress;
/// a record without a row whose writer *ended* means the index lost the row (a problem for
/// `repair`, never rolled back). Rows and sessions are read in one transaction, as the
/// writer inserts its row and ends its session in one.
pub(crate) fn interrupted_commits(store: &Store) -> Result<Vec<Snapshot>> {
    Ok(records_without_rows(store, &read_log(store)?)?
        .into_iter()
        .filter(|(_, state)| *state == Some(crate::index::session::SessionState::Dead))
        .map(|(snap, _)| snap)
        .collect())
}

/// Records of `logged` (the store's replayed log) with no index row, with the state of the
/// session that wrote each (`None` for records older than writer sessions in records).
pub(crate) fn records_without_rows(
    store: &Store,
    logged: &Replayed,
) -> Result<Vec<(Snapshot, Option<crate::index::session::SessionState>)>> {
    if logged.snapshots.is_empty() {
        return Ok(Vec::new());
    }
    let mut db = store.db();
    let tx = db.transaction()?;
    let in_index: std::collections::HashSet<(String, String, String)> = {
        let mut stmt = tx.prepare("SELECT machine, source, name FROM snapshots")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::new();
    for snap in &logged.snapshots {
        if in_index.contains(&snap.key()) {
            continue;
        }
        let state = match logged.writers.get(&snap.key()) {
            Some(w) => Some(crate::index::session::state(&tx, *w)?),
            None => None,
        };
        out.push((snap.clone(), state));
    }
    tx.finish()?;
    Ok(out)
}

/// Rolls back interrupted commits (see [`interrupted_commits`]); returns how many.
pub(crate) fn roll_back_interrupted_commits(store: &Store) -> Result<usize> {
    let interrupted = interrupted_commits(store)?;
    for snap in &interrupted {
        tracing::info!(
            "rolling back the interrupted commit of {}/{}/{}",
            snap.machine,
            snap.source,
            snap.name
        );
        remove_record(store, snap)?;
    }
    Ok(interrupted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    /// A store holding one committed snapshot of a one-file tree.
    fn store_with_one_snapshot() -> (tempfile::TempDir, Store, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"content").unwrap();
        let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
        let (committed, _) = store.ingest_dir("m", "s", &src, None).unwrap();
        (dir, store, committed)
    }

    /// Closes `store`, rebuilds its index with `repair` and opens it again.
    fn repaired(store: Store) -> Store {
        let path = store.path().to_path_buf();
        drop(store);
        Store::repair(&path).unwrap();
        Store::open(&path).unwrap()
    }

    /// Two commits of one source in the same second drew the same name suffix: the second
    /// takes another name, and both snapshots stay whole (before names were reserved, the
    /// second's row insert failed and its clean-up forgot the first's record).
    #[test]
    fn commits_of_one_source_never_share_a_name() {
        use std::sync::atomic::{AtomicU8, Ordering};
        static DRAWS: AtomicU8 = AtomicU8::new(0);
        // Draws 0000, 0001, 0002, …: the first writer's first draw and the second's clash.
        fn counting() -> [u8; 2] {
            [0, DRAWS.fetch_add(1, Ordering::SeqCst)]
        }
        let (_dir, store, first) = store_with_one_snapshot();
        let stamp = |n: &str| n.rsplit_once('_').map(|(s, _)| s.to_string());
        let mut clash = None;
        // The clash needs both commits in one second; a few tries make that certain.
        for _ in 0..5 {
            let mut a = store.begin_snapshot("m", "s").unwrap();
            let mut b = store.begin_snapshot("m", "s").unwrap();
            a.name_suffix = || [0, 0];
            b.name_suffix = counting;
            DRAWS.store(0, Ordering::SeqCst);
            let a = a.commit().unwrap();
            let b = b.commit().unwrap();
            if stamp(&a.name) == stamp(&b.name) {
                clash = Some((a, b));
                break;
            }
        }
        let (a, b) = clash.expect("two commits in one second");
        assert!(
            a.name.ends_with("_0000") && b.name.ends_with("_0001"),
            "{a:?} {b:?}"
        );
        assert!(store.verify(None).unwrap().is_clean());
        store.gc().unwrap();
        let store = repaired(store);
        for snap in [&first, &a, &b] {
            assert_eq!(&store.snapshot("m", "s", &snap.name).unwrap(), snap);
        }
    }

    /// A name taken by a row or by another session's reservation is skipped.
    #[test]
    fn a_reserved_or_committed_name_is_drawn_again() {
        let (_dir, store, first) = store_with_one_snapshot();
        let time = first.time_end_ns;
        let taken_suffix = first
            .name
            .rsplit_once('_')
            .map(|(_, x)| x.to_string())
            .unwrap();
        let taken = <[u8; 2]>::try_from(hex::decode(&taken_suffix).unwrap()).unwrap();
        let other = crate::index::session::register(&store.db()).unwrap();
        let mut draws = vec![[0xab, 0xcd], [0xab, 0xcd], taken].into_iter();
        let reserved = crate::index::session::reserve_snapshot_name(
            &mut store.db(),
            other,
            "m",
            "s",
            time,
            || [0xab, 0xcd],
        )
        .unwrap();
        assert!(reserved.ends_with("_abcd"));
        let me = crate::index::session::register(&store.db()).unwrap();
        let mut calls = 0;
        let name = crate::index::session::reserve_snapshot_name(
            &mut store.db(),
            me,
            "m",
            "s",
            time,
            || {
                calls += 1;
                draws.next().unwrap_or([0x12, 0x34])
            },
        )
        .unwrap();
        assert_eq!((name.rsplit_once('_').unwrap().1, calls), ("1234", 4));
        // Ending a session frees its reservation.
        crate::index::session::end(&store.db(), other).unwrap();
        let again = crate::index::session::reserve_snapshot_name(
            &mut store.db(),
            me,
            "m",
            "s",
            time,
            || [0xab, 0xcd],
        )
        .unwrap();
        assert_eq!(again, reserved);
    }

    /// A session row for a process that is gone: our own pid with a start time it never had,
    /// which is how a reused pid looks. Spawning a short-lived child instead would race with
    /// the other tests: until it execs, the child holds copies of their store lock files, and
    /// their `repair` then finds the store busy.
    fn register_dead_session(store: &Store) -> i64 {
        let db = store.db();
        db.execute(
            "INSERT INTO sessions(pid, pid_start, started) VALUES (?1, -1, 0)",
            [std::process::id()],
        )
        .unwrap();
        db.last_insert_rowid()
    }

    /// The state a writer killed between appending its record and inserting its row leaves,
    /// built by hand: its record (here a second name for a committed root, so every blob
    /// exists) and its session, registered with a process that is gone.
    #[test]
    fn an_interrupted_commit_is_noted_by_verify_and_rolled_back_by_gc() {
        let (_dir, store, committed) = store_with_one_snapshot();
        let crashed_session = register_dead_session(&store);
        let mut interrupted = committed.clone();
        interrupted.name = format!("{}-interrupted", committed.name);
        write_record(&store, &interrupted, crashed_session).unwrap();

        let report = store.verify(None).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(report.interrupted_commits.len(), 1);
        let gc = store.gc().unwrap();
        assert_eq!((gc.rolled_back_commits, gc.dead_sessions), (1, 1));
        let report = store.verify(None).unwrap();
        assert!(report.is_clean() && report.interrupted_commits.is_empty());
        assert_eq!(read_log(&store).unwrap().snapshots.len(), 1);
        // A repair now cannot resurrect it.
        let store = repaired(store);
        assert_eq!(store.snapshots(None, None).unwrap(), vec![committed]);
    }

    fn kinds(log: &[u8]) -> Vec<(usize, BadLineKind)> {
        replay(&parse_lines(log))
            .bad_lines
            .into_iter()
            .map(|l| (l.number, l.kind))
            .collect()
    }

    /// Only a cut-short object at the very end, or one an append marked as such, reads as a
    /// torn append; anything else that gives no record is damage (reported, never dropped).
    #[test]
    fn bad_lines_are_told_apart_from_torn_appends() {
        let (_dir, _store, snap) = store_with_one_snapshot();
        let line = serde_json::to_vec(&LogLine::Add {
            record: Box::new(snap.record(Some(1))),
        })
        .unwrap();
        let half = &line[..line.len() / 2];
        let joined = |parts: &[&[u8]]| parts.concat();
        let nl: &[u8] = b"\n";
        // A fragment at the end; marked in the middle; unmarked in the middle.
        let log = joined(&[
            half,
            nl,
            &line,
            nl,
            half,
            SNAPSHOT_LOG_TORN_MARK,
            nl,
            &line,
            nl,
            half,
        ]);
        assert_eq!(
            kinds(&log),
            vec![
                (1, BadLineKind::Damaged),
                (3, BadLineKind::EndedFragment),
                (5, BadLineKind::TornTail)
            ]
        );
        assert_eq!(decode_log(&log).unwrap(), vec![snap.clone()]);
        // A whole line whose newline flipped is damage, though it is last.
        assert_eq!(
            kinds(&joined(&[&line, b"\x0b"])),
            vec![(1, BadLineKind::Damaged)]
        );
        // A whole line that only lacks its newline is a record.
        assert_eq!(decode_log(&line).unwrap(), vec![snap]);
    }

    /// An append after a torn fragment marks it, so `verify` does not call it damage, and
    /// compaction drops it; after a whole line that only lacks its newline it adds just the
    /// newline, keeping the record.
    #[test]
    fn an_append_marks_the_torn_fragment_it_ends() {
        let (_dir, store, snap) = store_with_one_snapshot();
        let path = log_path(&store);
        let whole = fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 2]);
        fs::write(&path, &torn).unwrap();
        let mut other = snap.clone();
        other.name = format!("{}-other", snap.name);
        write_record(&store, &other, 999_999).unwrap();
        let replayed = read_log(&store).unwrap();
        assert_eq!(replayed.snapshots.len(), 2);
        assert_eq!(
            replayed
                .bad_lines
                .iter()
                .map(|l| l.kind)
                .collect::<Vec<_>>(),
            vec![BadLineKind::EndedFragment]
        );
        assert!(fs::read(&path)
            .unwrap()
            .windows(SNAPSHOT_LOG_TORN_MARK.len() + 1)
            .any(|w| w == [SNAPSHOT_LOG_TORN_MARK, b"\n"].concat()));

        // A record missing only its newline.
        let log = fs::read(&path).unwrap();
        fs::write(&path, &log[..log.len() - 1]).unwrap();
        let mut third = snap.clone();
        third.name = format!("{}-third", snap.name);
        write_record(&store, &third, 999_999).unwrap();
        assert_eq!(read_log(&store).unwrap().snapshots.len(), 3);
    }

    /// A record without a row whose writer ended normally means the index lost the row:
    /// verify reports it, GC leaves it alone, repair restores it.
    #[test]
    fn a_record_the_index_lost_is_a_problem_that_repair_fixes() {
        let (_dir, store, committed) = store_with_one_snapshot();
        let mut lost = committed.clone();
        lost.name = format!("{}-lost", committed.name);
        write_record(&store, &lost, 999_999).unwrap();
        assert!(!store.verify(None).unwrap().is_clean());
        assert_eq!(store.gc().unwrap().rolled_back_commits, 0);
        let store = repaired(store);
        assert_eq!(store.snapshots(None, None).unwrap().len(), 2);
        assert!(store.verify(None).unwrap().is_clean());
    }
}

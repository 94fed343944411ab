//! The SQLite index: a cache of what the packs and snapshot records hold, plus the live
//! state that coordinates writers and GC (sessions, pins, reference counts).
//!
//! Reference counting: a blob's `refs` counts the snapshot roots and stored tree blobs that
//! reference it. A tree's children are counted once, when the tree is first indexed; a
//! snapshot counts its root. GC frees blobs whose `refs` is 0 and that no live session has
//! pinned, then decrements their children: its cost follows what is freed, not the store.

pub(crate) mod session;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use crate::error::{IoContext, Result};
use crate::format::id::Id;
use crate::format::pack::BlobLocation;
use crate::format::*;
use crate::tuning::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS packs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    data_bytes INTEGER NOT NULL,
    dead_bytes INTEGER NOT NULL DEFAULT 0,
    session INTEGER,
    deferred_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS packs_with_garbage ON packs(id) WHERE dead_bytes > 0;
CREATE INDEX IF NOT EXISTS packs_by_session ON packs(session) WHERE session IS NOT NULL;
CREATE INDEX IF NOT EXISTS packs_with_deferred ON packs(id) WHERE deferred_bytes > 0;
CREATE TABLE IF NOT EXISTS blobs(
    id BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    compression INTEGER NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_unreferenced ON blobs(refs) WHERE refs <= 0;
CREATE TABLE IF NOT EXISTS snapshots(
    id INTEGER PRIMARY KEY,
    machine TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    root BLOB NOT NULL,
    root_meta TEXT NOT NULL,
    base TEXT,
    time_begin INTEGER NOT NULL,
    time_end INTEGER NOT NULL,
    stats TEXT NOT NULL,
    UNIQUE(machine, source, name)
);
CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots(machine, source, time_end);
CREATE TABLE IF NOT EXISTS sessions(
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    started INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pins(
    session INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY(session, blob)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pins_by_blob ON pins(blob);
";

/// Schema version 4: a snapshot's name, reserved by its writer's session before the record
/// is logged. Part of every new index, and what migrating a version 3 index adds.
const NAME_RESERVATIONS: &str = "
CREATE TABLE IF NOT EXISTS name_reservations(
    machine TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    session INTEGER NOT NULL,
    PRIMARY KEY(machine, source, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS name_reservations_by_session ON name_reservations(session);
";

/// Opens an existing index, migrating an older schema. Never creates one: a missing or
/// empty index is [`crate::StoreError::IndexMissing`] (only `init` and `repair` make one).
pub fn open(path: &std::path::Path) -> Result<Connection> {
    let flags = OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE;
    let conn = match Connection::open_with_flags(path, flags) {
        Ok(conn) => conn,
        Err(e) if !path.exists() => {
            tracing::debug!("index {}: {e}", path.display());
            return Err(crate::StoreError::IndexMissing(path.to_path_buf()));
        }
        Err(e) => return Err(e.into()),
    };
    // Before the journal mode is set, which would write to an empty file.
    conn.busy_timeout(std::time::Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        return Err(crate::StoreError::IndexMissing(path.to_path_buf()));
    }
    configure(&conn, "WAL")?;
    migrate(conn, version)
}

/// A file SQLite keeps beside the database at `db` (`suffix` is one of
/// `SQLITE_SIDE_SUFFIXES`).
pub(crate) fn side_file(db: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}

/// Creates the index of a new store.
pub fn create(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn, "WAL")?;
    create_schema(&conn)?;
    conn.pragma_update(None, "user_version", INDEX_SCHEMA_VERSION)?;
    Ok(conn)
}

/// Creates the index `repair` fills under a temporary name. Nothing needs to survive a
/// crash until it is complete (a killed repair's file is thrown away), so it keeps no
/// journal on disk and syncs nothing; [`finish_rebuild`] makes it durable once, at the end.
pub fn create_for_rebuild(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // In memory, not off: a failed statement must still roll back.
    configure(&conn, "MEMORY")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    create_schema(&conn)?;
    conn.pragma_update(None, "user_version", INDEX_SCHEMA_VERSION)?;
    Ok(conn)
}

/// Closes the index `repair` built at `path` and makes it durable as one self-contained
/// file: no journal or write-ahead log beside it (those are named after the file, so they
/// would be lost, or worse applied to another database, when it is renamed into place).
pub fn finish_rebuild(conn: Connection, path: &std::path::Path) -> Result<()> {
    conn.close().map_err(|(_, e)| e)?;
    for suffix in SQLITE_SIDE_SUFFIXES {
        let side = side_file(path, suffix);
        if side.exists() {
            return Err(crate::StoreError::Io {
                op: "finish the rebuilt index (a journal is left beside it)",
                path: side,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
    }
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .io_ctx("fsync rebuilt index", path)
}

/// Every table and index of the current schema, in a new index.
fn create_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(NAME_RESERVATIONS)?;
    Ok(())
}

fn configure(conn: &Connection, journal_mode: &str) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", journal_mode)?;
    // WAL with synchronous=NORMAL keeps every committed transaction atomic and consistent
    // across a process crash; packs and snapshot records are fsynced by us before rows point
    // at them. A power cut may still lose the last transactions, so those that a later step
    // acts on run under `durably` (a commit reported done, a session its record names,
    // rows moved or freed before pack files are unlinked).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every lookup is a key probe whose plan cannot depend on the bound value; without the
    // stability guarantee SQLite re-plans such statements on each bind (partial indexes).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // A backup inserts blob ids in random key order: a larger page cache keeps a pack's
    // inserts from spilling to the WAL mid-transaction.
    conn.pragma_update(None, "cache_size", -SQLITE_CACHE_KIB)?;
    // Process-wide, not per connection: every backup of a daemon opens connections, and
    // past this much SQLite memory in all of them caches recycle pages instead of growing.
    conn.pragma_update(None, "soft_heap_limit", SQLITE_SOFT_HEAP_LIMIT_BYTES)?;
    Ok(())
}

fn migrate(conn: Connection, mut version: i32) -> Result<Connection> {
    if version == 1 {
        // Version 2 marks the packs a live session wrote instead of pinning each blob.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE packs ADD COLUMN session INTEGER;
             CREATE INDEX packs_by_session ON packs(session) WHERE session IS NOT NULL;
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
        version = 2;
    }
    if version == 2 {
        // Version 3 counts each pack's blobs stored raw until `gc` compresses them.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE packs ADD COLUMN deferred_bytes INTEGER NOT NULL DEFAULT 0;
             CREATE INDEX packs_with_deferred ON packs(id) WHERE deferred_bytes > 0;
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
        version = 3;
    }
    if version == 3 {
        // Version 4 reserves a snapshot's name before its record is logged, so two commits
        // of one source in the same second never share a name (the loser's clean-up would
        // forget the winner's record).
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {NAME_RESERVATIONS} PRAGMA user_version = 4; COMMIT;"
        ))?;
        version = 4;
    }
    if version != INDEX_SCHEMA_VERSION {
        return Err(crate::StoreError::Config(format!(
            "index schema version {version} is not supported (expected {INDEX_SCHEMA_VERSION})"
        )));
    }
    Ok(conn)
}

/// Runs `f` with every commit on `conn` synced to disk before it returns (WAL with
/// synchronous=FULL), then goes back to the default. In WAL mode syncing one commit makes
/// every earlier one durable too, whichever connection wrote it.
pub(crate) fn durably<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let result = f(conn);
    let restored = conn.pragma_update(None, "synchronous", "NORMAL");
    let value = result?;
    restored?;
    Ok(value)
}

/// Where a blob is, with its pack's file name.
#[derive(Debug, Clone)]
pub struct IndexedBlob {
    pub location: BlobLocation,
    pub pack_id: i64,
    pub pack_name: String,
}

pub fn find_blob(conn: &Connection, id: &Id) -> Result<Option<IndexedBlob>> {
    let mut stmt = conn.prepare_cached(
        "SELECT b.kind, b.compression, b.offset, b.stored_len, b.raw_len, b.pack, p.name
         FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id = ?1",
    )?;
    Ok(stmt
        .query_row([id.as_bytes().as_slice()], |r| {
            Ok(IndexedBlob {
                location: BlobLocation {
                    id: *id,
                    kind: r.get(0)?,
                    compression: r.get(1)?,
                    offset: r.get::<_, i64>(2)? as u64,
                    stored_len: r.get(3)?,
                    raw_len: r.get(4)?,
                },
                pack_id: r.get(5)?,
                pack_name: r.get(6)?,
            })
        })
        .optional()?)
}

/// Whether `id` is indexed (a read-only probe: cheaper than [`pin_if_exists`] on a miss).
pub fn blob_exists(conn: &Connection, id: &Id) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?;
    Ok(stmt.exists([id.as_bytes().as_slice()])?)
}

/// Pins `id` for `session` if it is indexed; returns whether it is (and so stays) available.
/// One statement, so GC (which frees under a write transaction) can never slip in between
/// the existence check and the pin.
pub fn pin_if_exists(conn: &Connection, session: i64, id: &Id) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO pins(session, blob) SELECT ?1, id FROM blobs WHERE id = ?2",
    )?;
    let changed = stmt.execute(params![session, id.as_bytes().as_slice()])?;
    if changed == 1 {
        return Ok(true);
    }
    let mut check = conn.prepare_cached("SELECT 1 FROM pins WHERE session = ?1 AND blob = ?2")?;
    Ok(check
        .query_row(params![session, id.as_bytes().as_slice()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Indexes a durable pack, owned by `session` while it lives (GC frees nothing in a pack a
/// live session owns). A blob already indexed (another writer stored it first) keeps its
/// first copy, pinned for `session`; this pack's copy counts as dead bytes.
/// `children` gives, for each new tree blob, the ids it references: they gain a reference.
pub fn insert_pack(
    tx: &Transaction<'_>,
    name: &str,
    size: u64,
    blobs: &[BlobLocation],
    children_of: &dyn Fn(&Id) -> Option<Vec<Id>>,
    session: Option<i64>,
) -> Result<i64> {
    let data_bytes: u64 = blobs.iter().map(|b| u64::from(b.stored_len)).sum();
    tx.execute(
        "INSERT INTO packs(name, size, data_bytes, session) VALUES (?1, ?2, ?3, ?4)",
        params![name, size as i64, data_bytes as i64, session],
    )?;
    let pack_id = tx.last_insert_rowid();
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO blobs(id, kind, pack, offset, stored_len, raw_len, compression)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut add_refs = tx.prepare_cached("UPDATE blobs SET refs = refs + ?2 WHERE id = ?1")?;
    let mut pin = tx.prepare_cached("INSERT OR IGNORE INTO pins(session, blob) VALUES (?1, ?2)")?;
    // In id order, so the B-tree is walked front to back instead of at random (the last pack
    // of a 59k-entry backup, holding every tree, indexed in 0.19 s instead of 0.27 s). The
    // sort is stable, so of two copies of one blob in this pack the earlier stays live.
    let mut in_id_order: Vec<&BlobLocation> = blobs.iter().collect();
    in_id_order.sort_by_key(|b| b.id);
    let mut referenced: Vec<Id> = Vec::new();
    let (mut dead, mut deferred) = (0u64, 0u64);
    for b in in_id_order {
        let inserted = insert.execute(params![
            b.id.as_bytes().as_slice(),
            b.kind,
            pack_id,
            b.offset as i64,
            b.stored_len,
            b.raw_len,
            b.compression
        ])?;
        if inserted == 0 {
            dead += u64::from(b.stored_len);
            if let Some(session) = session {
                pin.execute(params![session, b.id.as_bytes().as_slice()])?;
            }
        } else {
            if b.compression == COMPRESSION_DEFERRED {
                deferred += u64::from(b.stored_len);
            }
            if b.kind == BLOB_KIND_TREE {
                referenced.extend(children_of(&b.id).unwrap_or_default());
            }
        }
    }
    referenced.sort_unstable();
    for same in referenced.chunk_by(|x, y| x == y) {
        let child = same[0];
        if add_refs.execute(params![child.as_bytes().as_slice(), same.len() as i64])? != 1 {
            return Err(crate::StoreError::MissingBlob(child.to_hex()));
        }
    }
    if dead > 0 || deferred > 0 {
        tx.execute(
            "UPDATE packs SET dead_bytes = dead_bytes + ?1, deferred_bytes = ?2 WHERE id = ?3",
            params![dead as i64, deferred as i64, pack_id],
        )?;
    }
    Ok(pack_id)
}

/// A snapshot row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub machine: String,
    pub source: String,
    pub name: String,
    pub root: Id,
    pub root_meta: String,
    pub base: Option<String>,
    pub time_begin_ns: i64,
    pub time_end_ns: i64,
    pub stats: String,
}

const SNAPSHOT_COLUMNS: &str =
    "machine, source, name, root, root_meta, base, time_begin, time_end, stats";

fn snapshot_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let root: Vec<u8> = r.get(3)?;
    Ok(SnapshotRow {
        machine: r.get(0)?,
        source: r.get(1)?,
        name: r.get(2)?,
        root: Id::from_slice(&root).unwrap_or(Id([0; 32])),
        root_meta: r.get(4)?,
        base: r.get(5)?,
        time_begin_ns: r.get(6)?,
        time_end_ns: r.get(7)?,
        stats: r.get(8)?,
    })
}

pub fn insert_snapshot(tx: &Transaction<'_>, s: &SnapshotRow) -> Result<()> {
    if !insert_snapshot_row(tx, s)? {
        return Err(crate::StoreError::MissingBlob(s.root.to_hex()));
    }
    Ok(())
}

/// Inserts a snapshot row and counts its root's reference; returns whether the root is
/// indexed. `repair` keeps the row of a snapshot whose root was in a damaged pack, so that
/// `verify` names it and the operator decides, rather than the snapshot vanishing.
pub fn insert_snapshot_row(tx: &Transaction<'_>, s: &SnapshotRow) -> Result<bool> {
    tx.execute(
        &format!("INSERT INTO snapshots({SNAPSHOT_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
        params![
            s.machine,
            s.source,
            s.name,
            s.root.as_bytes().as_slice(),
            s.root_meta,
            s.base,
            s.time_begin_ns,
            s.time_end_ns,
            s.stats
        ],
    )?;
    let counted = tx.execute(
        "UPDATE blobs SET refs = refs + 1 WHERE id = ?1",
        [s.root.as_bytes().as_slice()],
    )?;
    Ok(counted == 1)
}

/// Snapshots, oldest first, optionally filtered by machine and source.
pub fn list_snapshots(
    conn: &Connection,
    machine: Option<&str>,
    source: Option<&str>,
) -> Result<Vec<SnapshotRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots
         WHERE (?1 IS NULL OR machine = ?1) AND (?2 IS NULL OR source = ?2)
         ORDER BY machine, source, time_end, name"
    ))?;
    let rows = stmt.query_map(params![machine, source], snapshot_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn latest_snapshot(
    conn: &Connection,
    machine: &str,
    source: &str,
) -> Result<Option<SnapshotRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE machine = ?1 AND source = ?2
         ORDER BY time_end DESC, name DESC LIMIT 1"
    ))?;
    Ok(stmt
        .query_row(params![machine, source], snapshot_from_row)
        .optional()?)
}

pub fn find_snapshot(
    conn: &Connection,
    machine: &str,
    source: &str,
    name: &str,
) -> Result<Option<SnapshotRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE machine = ?1 AND source = ?2 AND name = ?3"
    ))?;
    Ok(stmt
        .query_row(params![machine, source, name], snapshot_from_row)
        .optional()?)
}

/// Removes a snapshot row and drops its root's reference.
pub fn delete_snapshot(tx: &Transaction<'_>, s: &SnapshotRow) -> Result<()> {
    let n = tx.execute(
        "DELETE FROM snapshots WHERE machine = ?1 AND source = ?2 AND name = ?3",
        params![s.machine, s.source, s.name],
    )?;
    if n == 1 {
        tx.execute(
            "UPDATE blobs SET refs = refs - 1 WHERE id = ?1",
            [s.root.as_bytes().as_slice()],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening a store bounds SQLite's memory for the whole process: a connection that
    /// has nothing to do with the store sees the same limit, so the page caches of every
    /// backup of a daemon share one budget.
    #[test]
    fn opening_an_index_bounds_sqlite_memory_process_wide() {
        let dir = tempfile::tempdir().unwrap();
        crate::Store::init(&dir.path().join("store"), Default::default()).unwrap();
        let other = Connection::open_in_memory().unwrap();
        let limit: i64 = other
            .query_row("PRAGMA soft_heap_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, SQLITE_SOFT_HEAP_LIMIT_BYTES);
    }

    #[test]
    fn a_version_1_index_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE packs(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                     size INTEGER NOT NULL, data_bytes INTEGER NOT NULL,
                     dead_bytes INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO packs(name, size, data_bytes) VALUES ('p', 10, 8);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, INDEX_SCHEMA_VERSION);
        let owner: Option<i64> = conn
            .query_row("SELECT session FROM packs WHERE name = 'p'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(owner, None);
        let deferred: i64 = conn
            .query_row(
                "SELECT deferred_bytes FROM packs WHERE name = 'p'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(deferred, 0);
        let reservations: i64 = conn
            .query_row("SELECT COUNT(*) FROM name_reservations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(reservations, 0);
        drop(conn);
        // Opening again leaves a current index alone.
        open(&path).unwrap();
    }

    /// `durably` syncs the commits made inside it (synchronous=FULL is 2) and goes back to
    /// the default (NORMAL is 1) afterwards, also when the work inside fails.
    #[test]
    fn durably_syncs_commits_inside_and_restores_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = create(&dir.path().join("index.sqlite")).unwrap();
        let level = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(level(&conn), 1);
        let inside = durably(&mut conn, |c| Ok(level(c))).unwrap();
        assert_eq!((inside, level(&conn)), (2, 1));
        let failed: Result<()> = durably(&mut conn, |_| {
            Err(crate::StoreError::InvalidArgument("fails".into()))
        });
        assert!(failed.is_err());
        assert_eq!(level(&conn), 1);
    }
}

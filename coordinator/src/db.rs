//! SQLite access: connection setup, schema migrations, and every query the coordinator runs.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and every statement here
//! is a primary-key or indexed lookup taking microseconds. Slow work (Argon2) never runs
//! while the lock is held.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::constants::{DB_FILE_MODE, DB_FILE_STRIPPED_BITS};
use crate::error::DbError;
use crate::models::{Auth, BackupLog, Machine, Source, Storage};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_initial.sql")];

/// The database handle shared by all requests.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

/// Format a time as stored (Django's SQLite encoding, UTC). Hand-rolled: it runs several
/// times per check-in, and `strftime` re-parses its pattern on every call.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write as _;
    let mut s = String::with_capacity(26);
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_micros().min(999_999)
    );
    s
}

/// Parse a stored time (with or without fractional seconds, as Django writes both).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, DbError> {
    let corrupt = || DbError::Corrupt {
        what: "datetime",
        value: s.to_owned(),
    };
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<u32> {
        let part = b.get(from..to)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let fixed = (|| {
        if b.len() < 19
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b' '
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let micros = match b.get(19) {
            None => 0,
            Some(b'.') => {
                let digits = b.get(20..).filter(|d| {
                    !d.is_empty() && d.len() <= 9 && d.iter().all(u8::is_ascii_digit)
                })?;
                let n: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                let scale = 10u32.pow(u32::try_from(9 - digits.len()).ok()?);
                n.checked_mul(scale)? / 1000
            }
            Some(_) => return None,
        };
        let date = chrono::NaiveDate::from_ymd_opt(
            i32::try_from(num(0, 4)?).ok()?,
            num(5, 7)?,
            num(8, 10)?,
        )?;
        date.and_hms_micro_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, micros)
    })();
    match fixed {
        Some(n) => Ok(n.and_utc()),
        // Anything else Django might have written (e.g. an explicit offset).
        None => {
            let trimmed = s.split('+').next().unwrap_or(s);
            NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f")
                .map(|n| n.and_utc())
                .map_err(|_| corrupt())
        }
    }
}

fn time_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    parse_time(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn opt_time_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| parse_time(&s)).transpose().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

const AUTH_COLS: &str = "id, name, secret_hash, secret_type, comment, active, date_added";
const STORAGE_COLS: &str = "id, name, secret_hash, comment, ssh_ping_host, ssh_ping_host_keys, ssh_ping_port, \
     ssh_ping_user, space_total, space_available, auth_id, active, published, date_registered, date_updated, \
     date_checked_in";
const MACHINE_COLS: &str = "id, uuid, secret_hash, environment_name, service_name, unit_name, comment, \
     ssh_public_key, auth_id, storage_id, active, published, date_registered, date_updated, date_checked_in";
const SOURCE_COLS: &str = "id, name, machine_id, comment, path, filter, exclude, frequency, retention, bwlimit, \
     snapshot_mode, preserve_hard_links, shared_service, large_rotating_files, large_modifying_files, active, \
     success, published, date_added, date_updated, date_last_backed_up, date_next_backup";

/// `ON CONFLICT (id) DO UPDATE` for every column: an in-place update. (`INSERT OR REPLACE`
/// would delete the row first and cascade to its children.)
fn upsert(cols: &str) -> String {
    let sets: Vec<String> = cols
        .split(", ")
        .filter(|c| *c != "id")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!("ON CONFLICT (id) DO UPDATE SET {}", sets.join(", "))
}

fn auth_row(r: &Row<'_>) -> rusqlite::Result<Auth> {
    Ok(Auth {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_hash: r.get(2)?,
        secret_type: r.get(3)?,
        comment: r.get(4)?,
        active: r.get(5)?,
        date_added: time_col(r, 6)?,
    })
}

fn storage_row(r: &Row<'_>) -> rusqlite::Result<Storage> {
    Ok(Storage {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_hash: r.get(2)?,
        comment: r.get(3)?,
        ssh_ping_host: r.get(4)?,
        ssh_ping_host_keys: r.get(5)?,
        ssh_ping_port: r.get(6)?,
        ssh_ping_user: r.get(7)?,
        space_total: r.get(8)?,
        space_available: r.get(9)?,
        auth_id: r.get(10)?,
        active: r.get(11)?,
        published: r.get(12)?,
        date_registered: time_col(r, 13)?,
        date_updated: time_col(r, 14)?,
        date_checked_in: opt_time_col(r, 15)?,
    })
}

fn machine_row(r: &Row<'_>) -> rusqlite::Result<Machine> {
    Ok(Machine {
        id: r.get(0)?,
        uuid: r.get(1)?,
        secret_hash: r.get(2)?,
        environment_name: r.get(3)?,
        service_name: r.get(4)?,
        unit_name: r.get(5)?,
        comment: r.get(6)?,
        ssh_public_key: r.get(7)?,
        auth_id: r.get(8)?,
        storage_id: r.get(9)?,
        active: r.get(10)?,
        published: r.get(11)?,
        date_registered: time_col(r, 12)?,
        date_updated: time_col(r, 13)?,
        date_checked_in: opt_time_col(r, 14)?,
    })
}

fn source_row(r: &Row<'_>) -> rusqlite::Result<Source> {
    Ok(Source {
        id: r.get(0)?,
        name: r.get(1)?,
        machine_id: r.get(2)?,
        comment: r.get(3)?,
        path: r.get(4)?,
        filter: r.get(5)?,
        exclude: r.get(6)?,
        frequency: r.get(7)?,
        retention: r.get(8)?,
        bwlimit: r.get(9)?,
        snapshot_mode: r.get(10)?,
        preserve_hard_links: r.get(11)?,
        shared_service: r.get(12)?,
        large_rotating_files: r.get(13)?,
        large_modifying_files: r.get(14)?,
        active: r.get(15)?,
        success: r.get(16)?,
        published: r.get(17)?,
        date_added: time_col(r, 18)?,
        date_updated: time_col(r, 19)?,
        date_last_backed_up: opt_time_col(r, 20)?,
        date_next_backup: time_col(r, 21)?,
    })
}

/// Row counts for `/v1/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Auth rows.
    pub auth: u64,
    /// Storage rows.
    pub storage: u64,
    /// Machine rows.
    pub machine: u64,
    /// Source rows.
    pub source: u64,
    /// FilterSet rows.
    pub filter_set: u64,
    /// BackupLog rows.
    pub backup_log: u64,
}

impl Db {
    /// Open (creating if needed) and migrate the database at `path`. A new file is created
    /// with mode 0600 whatever the umask (SQLite gives its `-wal` and `-shm` files the same
    /// mode); an existing one loses any access for others (group bits are left alone).
    pub fn open(path: &Path) -> Result<Self, DbError> {
        // Names SQLite reads as something other than a plain file are left to it.
        let plain_file = path
            .to_str()
            .is_none_or(|p| !p.is_empty() && p != ":memory:" && !p.starts_with("file:"));
        if plain_file {
            restrict_file_modes(path).map_err(|source| DbError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Self::setup(Connection::open(path)?)
    }

    /// A private in-memory database (tests, fuzzing).
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, DbError> {
        // WAL lets readers (e.g. the CLI) run beside the server; NORMAL sync is durable across
        // process crashes and loses at most the last transactions on power loss, which the
        // protocol tolerates (a lost check-in is repeated five minutes later).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Keep the hot tables in memory: ~3 KiB per machine, so 64 MiB of page cache covers
        // a fleet of ~20,000 machines, and mmap spares a read() per page beyond that.
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.pragma_update(None, "mmap_size", 268_435_456)?;
        conn.busy_timeout(crate::constants::DB_BUSY_TIMEOUT)?;
        // The bundled SQLite has STAT4, which marks range parameters (`date_next_backup <= ?`)
        // as plan-relevant and re-prepares the statement on every new binding: that was a
        // quarter of a check-in's CPU. Our plans are fixed index lookups, so pin them.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Exclusive access to the connection. A panic while holding it cannot leave SQLite in a
    /// half-written state (transactions roll back on drop), so a poisoned lock is recovered.
    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long a statement waits for another process's lock before failing.
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<(), DbError> {
        Ok(self.conn().busy_timeout(timeout)?)
    }
}

/// Create `path` with [`DB_FILE_MODE`] if it does not exist; otherwise take access for
/// others away from it and from its existing `-wal`/`-shm` siblings.
fn restrict_file_modes(path: &Path) -> std::io::Result<()> {
    use std::fs::{OpenOptions, Permissions};
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DB_FILE_MODE)
        .open(path)
    {
        // The umask may have taken bits from the requested mode (never added any); set it
        // exactly. SQLite takes an empty file as a new database.
        Ok(file) => return file.set_permissions(Permissions::from_mode(DB_FILE_MODE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & DB_FILE_STRIPPED_BITS == 0 {
            continue;
        }
        let tightened = mode & !DB_FILE_STRIPPED_BITS;
        // Not fatal: a reader who does not own the file (a group member running the CLI)
        // cannot change its mode, and still needs to open it.
        match std::fs::set_permissions(file, Permissions::from_mode(tightened)) {
            Ok(()) => tracing::warn!(
                file = %file.display(),
                from = format_args!("{mode:o}"),
                to = format_args!("{tightened:o}"),
                "database file was open to others; their access is removed"
            ),
            Err(e) => tracing::warn!(
                file = %file.display(),
                mode = format_args!("{mode:o}"),
                error = %e,
                "database file is open to others and its mode cannot be changed"
            ),
        }
    }
    Ok(())
}

fn migrate(conn: &Connection) -> Result<(), DbError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > supported {
        return Err(DbError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

// --- Auth ---------------------------------------------------------------------------------

/// Active Auth of `secret_type` named `name`.
pub fn auth_for_registration(
    c: &Connection,
    name: &str,
    secret_type: &str,
) -> rusqlite::Result<Option<Auth>> {
    c.prepare_cached(&format!(
        "SELECT {AUTH_COLS} FROM turku_api_auth WHERE name = ?1 AND secret_type = ?2 AND active = 1"
    ))?
    .query_row(params![name, secret_type], auth_row)
    .optional()
}

/// Insert a new Auth.
pub fn insert_auth(c: &Connection, a: &Auth) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO turku_api_auth ({AUTH_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        a.id,
        a.name,
        a.secret_hash,
        a.secret_type,
        a.comment,
        a.active,
        fmt_time(a.date_added)
    ])?;
    Ok(())
}

/// Whether an Auth with this name exists.
pub fn auth_name_exists(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM turku_api_auth WHERE name = ?1")?
        .exists(params![name])
}

/// Replace the stored hash of a row (rehash after a successful check).
pub fn set_secret_hash(
    c: &Connection,
    table: SecretTable,
    id: &str,
    hash: &str,
) -> rusqlite::Result<()> {
    let sql = match table {
        SecretTable::Auth => "UPDATE turku_api_auth SET secret_hash = ?2 WHERE id = ?1",
        SecretTable::Storage => "UPDATE turku_api_storage SET secret_hash = ?2 WHERE id = ?1",
        SecretTable::Machine => "UPDATE turku_api_machine SET secret_hash = ?2 WHERE id = ?1",
    };
    c.prepare_cached(sql)?.execute(params![id, hash])?;
    Ok(())
}

/// Replace a row's hash only if it still is `old_hash` (a rehash after a successful login
/// must not undo a rotation made meanwhile). Returns whether the row changed.
pub fn replace_secret_hash(
    c: &Connection,
    table: SecretTable,
    id: &str,
    old_hash: &str,
    new_hash: &str,
) -> rusqlite::Result<bool> {
    let sql = match table {
        SecretTable::Auth => {
            "UPDATE turku_api_auth SET secret_hash = ?3 WHERE id = ?1 AND secret_hash = ?2"
        }
        SecretTable::Storage => {
            "UPDATE turku_api_storage SET secret_hash = ?3 WHERE id = ?1 AND secret_hash = ?2"
        }
        SecretTable::Machine => {
            "UPDATE turku_api_machine SET secret_hash = ?3 WHERE id = ?1 AND secret_hash = ?2"
        }
    };
    Ok(c.prepare_cached(sql)?
        .execute(params![id, old_hash, new_hash])?
        > 0)
}

/// Tables holding a `secret_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretTable {
    /// `turku_api_auth`.
    Auth,
    /// `turku_api_storage`.
    Storage,
    /// `turku_api_machine`.
    Machine,
}

// --- Storage ------------------------------------------------------------------------------

/// Active storage named `name`.
pub fn active_storage_by_name(c: &Connection, name: &str) -> rusqlite::Result<Option<Storage>> {
    c.prepare_cached(&format!(
        "SELECT {STORAGE_COLS} FROM turku_api_storage WHERE name = ?1 AND active = 1"
    ))?
    .query_row(params![name], storage_row)
    .optional()
}

/// Any storage named `name`.
pub fn storage_by_name(c: &Connection, name: &str) -> rusqlite::Result<Option<Storage>> {
    c.prepare_cached(&format!(
        "SELECT {STORAGE_COLS} FROM turku_api_storage WHERE name = ?1"
    ))?
    .query_row(params![name], storage_row)
    .optional()
}

/// Storage by row id.
pub fn storage_by_id(c: &Connection, id: &str) -> rusqlite::Result<Option<Storage>> {
    c.prepare_cached(&format!(
        "SELECT {STORAGE_COLS} FROM turku_api_storage WHERE id = ?1"
    ))?
    .query_row(params![id], storage_row)
    .optional()
}

/// Every storage, by name.
pub fn all_storages(c: &Connection) -> rusqlite::Result<Vec<Storage>> {
    c.prepare_cached(&format!(
        "SELECT {STORAGE_COLS} FROM turku_api_storage ORDER BY name"
    ))?
    .query_map([], storage_row)?
    .collect()
}

/// `(id, space_available)` of storages that may receive new machines.
pub fn placement_candidates(c: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    c.prepare_cached("SELECT id, space_available FROM turku_api_storage WHERE active = 1 AND published = 1 ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Insert or fully overwrite a storage row.
pub fn save_storage(c: &Connection, s: &Storage) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO turku_api_storage ({STORAGE_COLS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) {}",
        upsert(STORAGE_COLS)
    ))?
    .execute(params![
        s.id,
        s.name,
        s.secret_hash,
        s.comment,
        s.ssh_ping_host,
        s.ssh_ping_host_keys,
        s.ssh_ping_port,
        s.ssh_ping_user,
        s.space_total,
        s.space_available,
        s.auth_id,
        s.active,
        s.published,
        fmt_time(s.date_registered),
        fmt_time(s.date_updated),
        s.date_checked_in.map(fmt_time),
    ])?;
    Ok(())
}

/// Set a storage's admin switch. Returns whether a row changed.
pub fn set_storage_active(c: &Connection, id: &str, active: bool) -> rusqlite::Result<bool> {
    Ok(
        c.prepare_cached("UPDATE turku_api_storage SET active = ?2 WHERE id = ?1")?
            .execute(params![id, active])?
            > 0,
    )
}

// --- Machine ------------------------------------------------------------------------------

/// Machine by agent UUID (32 hex), any state.
pub fn machine_by_uuid(c: &Connection, uuid: &str) -> rusqlite::Result<Option<Machine>> {
    c.prepare_cached(&format!(
        "SELECT {MACHINE_COLS} FROM turku_api_machine WHERE uuid = ?1"
    ))?
    .query_row(params![uuid], machine_row)
    .optional()
}

/// Machines whose unit name is `unit_name`.
pub fn machines_by_unit_name(c: &Connection, unit_name: &str) -> rusqlite::Result<Vec<Machine>> {
    c.prepare_cached(&format!(
        "SELECT {MACHINE_COLS} FROM turku_api_machine WHERE unit_name = ?1"
    ))?
    .query_map(params![unit_name], machine_row)?
    .collect()
}

/// Every machine, by unit name.
pub fn all_machines(c: &Connection) -> rusqlite::Result<Vec<Machine>> {
    c.prepare_cached(&format!(
        "SELECT {MACHINE_COLS} FROM turku_api_machine ORDER BY unit_name, uuid"
    ))?
    .query_map([], machine_row)?
    .collect()
}

/// Active, published machines assigned to a storage.
pub fn machines_of_storage(c: &Connection, storage_id: &str) -> rusqlite::Result<Vec<Machine>> {
    c.prepare_cached(&format!(
        "SELECT {MACHINE_COLS} FROM turku_api_machine WHERE storage_id = ?1 AND active = 1 AND published = 1"
    ))?
    .query_map(params![storage_id], machine_row)?
    .collect()
}

/// Insert or fully overwrite a machine row.
pub fn save_machine(c: &Connection, m: &Machine) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO turku_api_machine ({MACHINE_COLS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) {}",
        upsert(MACHINE_COLS)
    ))?
    .execute(params![
        m.id,
        m.uuid,
        m.secret_hash,
        m.environment_name,
        m.service_name,
        m.unit_name,
        m.comment,
        m.ssh_public_key,
        m.auth_id,
        m.storage_id,
        m.active,
        m.published,
        fmt_time(m.date_registered),
        fmt_time(m.date_updated),
        m.date_checked_in.map(fmt_time),
    ])?;
    Ok(())
}

/// Record a check-in.
pub fn touch_machine(c: &Connection, id: &str, now: DateTime<Utc>) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE turku_api_machine SET date_checked_in = ?2 WHERE id = ?1")?
        .execute(params![id, fmt_time(now)])?;
    Ok(())
}

/// Set a machine's admin switch. Returns whether a row changed.
pub fn set_machine_active(c: &Connection, id: &str, active: bool) -> rusqlite::Result<bool> {
    Ok(
        c.prepare_cached("UPDATE turku_api_machine SET active = ?2 WHERE id = ?1")?
            .execute(params![id, active])?
            > 0,
    )
}

/// Reassign a machine to another storage.
pub fn set_machine_storage(c: &Connection, id: &str, storage_id: &str) -> rusqlite::Result<bool> {
    Ok(
        c.prepare_cached("UPDATE turku_api_machine SET storage_id = ?2 WHERE id = ?1")?
            .execute(params![id, storage_id])?
            > 0,
    )
}

// --- Source -------------------------------------------------------------------------------

/// Every source of a machine, by name.
pub fn sources_of_machine(c: &Connection, machine_id: &str) -> rusqlite::Result<Vec<Source>> {
    c.prepare_cached(&format!(
        "SELECT {SOURCE_COLS} FROM turku_api_source WHERE machine_id = ?1 ORDER BY name"
    ))?
    .query_map(params![machine_id], source_row)?
    .collect()
}

/// Active, published sources of a machine due at `now`.
pub fn due_sources(
    c: &Connection,
    machine_id: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Source>> {
    c.prepare_cached(&format!(
        "SELECT {SOURCE_COLS} FROM turku_api_source \
         WHERE machine_id = ?1 AND date_next_backup <= ?2 AND active = 1 AND published = 1 ORDER BY name"
    ))?
    .query_map(params![machine_id, fmt_time(now)], source_row)?
    .collect()
}

/// Active sources of a machine (restore listing).
pub fn active_sources(c: &Connection, machine_id: &str) -> rusqlite::Result<Vec<Source>> {
    c.prepare_cached(&format!(
        "SELECT {SOURCE_COLS} FROM turku_api_source WHERE machine_id = ?1 AND active = 1 ORDER BY name"
    ))?
    .query_map(params![machine_id], source_row)?
    .collect()
}

/// Active, published source of a machine by name.
pub fn reportable_source(
    c: &Connection,
    machine_id: &str,
    name: &str,
) -> rusqlite::Result<Option<Source>> {
    c.prepare_cached(&format!(
        "SELECT {SOURCE_COLS} FROM turku_api_source \
         WHERE machine_id = ?1 AND name = ?2 AND active = 1 AND published = 1"
    ))?
    .query_row(params![machine_id, name], source_row)
    .optional()
}

/// Active+published sources of active+published machines (health).
pub fn monitored_sources(c: &Connection) -> rusqlite::Result<Vec<(Source, String)>> {
    c.prepare_cached(&format!(
        "SELECT {}, m.unit_name FROM turku_api_source s JOIN turku_api_machine m ON m.id = s.machine_id \
         WHERE m.active = 1 AND m.published = 1 AND s.active = 1 AND s.published = 1 ORDER BY m.unit_name, s.name",
        SOURCE_COLS.split(", ").map(|col| format!("s.{col}")).collect::<Vec<_>>().join(", ")
    ))?
    .query_map([], |r| Ok((source_row(r)?, r.get(22)?)))?
    .collect()
}

/// Insert or fully overwrite a source row.
pub fn save_source(c: &Connection, s: &Source) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO turku_api_source ({SOURCE_COLS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) {}",
        upsert(SOURCE_COLS)
    ))?
    .execute(params![
        s.id,
        s.name,
        s.machine_id,
        s.comment,
        s.path,
        s.filter,
        s.exclude,
        s.frequency,
        s.retention,
        s.bwlimit,
        s.snapshot_mode,
        s.preserve_hard_links,
        s.shared_service,
        s.large_rotating_files,
        s.large_modifying_files,
        s.active,
        s.success,
        s.published,
        fmt_time(s.date_added),
        fmt_time(s.date_updated),
        s.date_last_backed_up.map(fmt_time),
        fmt_time(s.date_next_backup),
    ])?;
    Ok(())
}

/// Unpublish one source (the agent no longer lists it).
pub fn unpublish_source(c: &Connection, id: &str) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE turku_api_source SET published = 0 WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// Record a backup outcome on the source (B1 fixed: `success` is persisted).
pub fn record_backup(
    c: &Connection,
    id: &str,
    success: bool,
    last: Option<DateTime<Utc>>,
    next: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE turku_api_source SET success = ?2, date_last_backed_up = ?3, date_next_backup = ?4 WHERE id = ?1",
    )?
    .execute(params![id, success, last.map(fmt_time), fmt_time(next)])?;
    Ok(())
}

/// Make a source due at `when`.
pub fn set_next_backup(c: &Connection, id: &str, when: DateTime<Utc>) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE turku_api_source SET date_next_backup = ?2 WHERE id = ?1")?
        .execute(params![id, fmt_time(when)])?;
    Ok(())
}

// --- FilterSet ----------------------------------------------------------------------------

/// Rules (JSON text) of the active FilterSet `name`.
pub fn filterset_rules(c: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    c.prepare_cached("SELECT filters FROM turku_api_filterset WHERE name = ?1 AND active = 1")?
        .query_row(params![name], |r| r.get(0))
        .optional()
}

/// Create or replace a FilterSet (admin and tests).
pub fn put_filterset(
    c: &Connection,
    name: &str,
    filters_json: &str,
    active: bool,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO turku_api_filterset (id, name, filters, comment, active, date_added) \
         VALUES (?1, ?2, ?3, NULL, ?4, ?5) \
         ON CONFLICT (name) DO UPDATE SET filters = excluded.filters, active = excluded.active",
    )?
    .execute(params![
        crate::models::new_id(),
        name,
        filters_json,
        active,
        fmt_time(now)
    ])?;
    Ok(())
}

// --- BackupLog ----------------------------------------------------------------------------

/// Append a backup log row.
pub fn insert_backup_log(c: &Connection, l: &BackupLog) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO turku_api_backuplog (id, source_id, date, storage_id, success, date_begin, date_end, snapshot, summary) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        l.id,
        l.source_id,
        fmt_time(l.date),
        l.storage_id,
        l.success,
        l.date_begin.map(fmt_time),
        l.date_end.map(fmt_time),
        l.snapshot,
        l.summary,
    ])?;
    Ok(())
}

/// Backup logs of a source, newest first.
pub fn backup_logs_of_source(c: &Connection, source_id: &str) -> rusqlite::Result<Vec<BackupLog>> {
    c.prepare_cached(
        "SELECT id, source_id, date, storage_id, success, date_begin, date_end, snapshot, summary \
         FROM turku_api_backuplog WHERE source_id = ?1 ORDER BY date DESC",
    )?
    .query_map(params![source_id], |r| {
        Ok(BackupLog {
            id: r.get(0)?,
            source_id: r.get(1)?,
            date: time_col(r, 2)?,
            storage_id: r.get(3)?,
            success: r.get(4)?,
            date_begin: opt_time_col(r, 5)?,
            date_end: opt_time_col(r, 6)?,
            snapshot: r.get(7)?,
            summary: r.get(8)?,
        })
    })?
    .collect()
}

/// Delete logs whose `date_end` is before `cutoff` (null `date_end` is never deleted).
pub fn delete_logs_before(c: &Connection, cutoff: DateTime<Utc>) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "DELETE FROM turku_api_backuplog WHERE date_end IS NOT NULL AND date_end < ?1",
    )?
    .execute(params![fmt_time(cutoff)])
}

/// Row counts of every model.
pub fn counts(c: &Connection) -> rusqlite::Result<Counts> {
    let one = |table: &str| -> rusqlite::Result<u64> {
        let n: i64 = c
            .prepare_cached(&format!("SELECT COUNT(*) FROM {table}"))?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(Counts {
        auth: one("turku_api_auth")?,
        storage: one("turku_api_storage")?,
        machine: one("turku_api_machine")?,
        source: one("turku_api_source")?,
        filter_set: one("turku_api_filterset")?,
        backup_log: one("turku_api_backuplog")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_versioned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        drop(Db::open(&path).expect("first open"));
        let db = Db::open(&path).expect("second open");
        let v: i64 = db
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, 1);
        let mode: String = db
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        assert_eq!(counts(&db.conn()).expect("counts"), Counts::default());
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        name.into()
    }

    /// A new database and its WAL files are for the owner only, whatever the umask.
    #[test]
    fn new_database_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        let db = Db::open(&path).expect("open");
        db.conn()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .expect("write");
        for file in [path.clone(), sibling(&path, "-wal"), sibling(&path, "-shm")] {
            assert_eq!(mode_of(&file), 0o600, "{}", file.display());
        }
    }

    /// An existing database open to others loses their access; group bits stay.
    #[test]
    fn existing_database_loses_access_for_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        drop(Db::open(&path).expect("create"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        let db = Db::open(&path).expect("reopen");
        assert_eq!(mode_of(&path), 0o660);
        db.conn()
            .execute_batch("CREATE TABLE t (x);")
            .expect("write");
        assert_eq!(mode_of(&sibling(&path, "-wal")), 0o660);
    }

    #[test]
    fn replace_secret_hash_needs_the_old_hash() {
        let db = Db::open_in_memory().expect("db");
        let auth = Auth {
            id: "a1".to_owned(),
            name: "n".to_owned(),
            secret_hash: "old".to_owned(),
            secret_type: "machine_reg".to_owned(),
            comment: None,
            active: true,
            date_added: Utc::now(),
        };
        insert_auth(&db.conn(), &auth).expect("insert");
        let c = db.conn();
        assert!(!replace_secret_hash(&c, SecretTable::Auth, "a1", "other", "new").expect("q"));
        assert!(replace_secret_hash(&c, SecretTable::Auth, "a1", "old", "new").expect("q"));
        let stored: String = c
            .query_row("SELECT secret_hash FROM turku_api_auth", [], |r| r.get(0))
            .expect("read");
        assert_eq!(stored, "new");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        drop(Db::open(&path).expect("open"));
        Connection::open(&path)
            .expect("raw")
            .pragma_update(None, "user_version", 99)
            .expect("bump");
        assert!(matches!(
            Db::open(&path),
            Err(DbError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn times_round_trip_and_accept_django_forms() {
        let t = parse_time("2024-01-10 12:34:56.123456").expect("parse");
        assert_eq!(
            fmt_time(t),
            t.format(crate::constants::DB_DATETIME_FORMAT).to_string()
        );
        assert_eq!(fmt_time(t), "2024-01-10 12:34:56.123456");
        assert_eq!(
            fmt_time(parse_time("2024-01-10 12:34:56").expect("no fraction")),
            "2024-01-10 12:34:56.000000"
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(
            fmt_time(parse_time("2024-01-10 12:34:56.5").expect("short fraction")),
            "2024-01-10 12:34:56.500000"
        );
        assert_eq!(
            fmt_time(parse_time("2024-01-10 12:34:56+00:00").expect("offset")),
            "2024-01-10 12:34:56.000000"
        );
        for bad in [
            "2024-01-10 12:34:5x",
            "2024-13-10 12:34:56",
            "2024-01-10 12:34:56.",
            "2024-01-10T12:34:56",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}

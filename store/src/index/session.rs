//! Writer sessions: a row per in-flight backup, whose pins keep what it relies on alive.
//!
//! The rule between writers and GC: GC frees a blob only if its reference count is zero
//! *and* no live session protects it, deciding under one write transaction. A session pins
//! every blob it reuses (atomically with checking it exists) and its base snapshot's root (so
//! everything reachable from the base stays); it owns every pack it writes (the pack's row
//! names the session from the transaction that indexes it), which protects all that pack's
//! blobs. A committed snapshot's root gains a reference in the same transaction that drops
//! the session's pins and ownership, so there is no instant in which what it needs is
//! unprotected. Sessions of dead processes are cleared by GC.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;
use crate::format::SESSION_ABANDONED_PID_START;
use crate::tuning::SNAPSHOT_NAME_ATTEMPTS;

/// Identifies this process across pid reuse: pid plus its start time in clock ticks.
pub(crate) fn process_identity(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let start: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    Some((pid, start))
}

/// The system clock, for bookkeeping about real processes and files; snapshot times come
/// from [`crate::clock`] instead.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub(crate) fn register(conn: &Connection) -> Result<i64> {
    let (pid, start) = process_identity(std::process::id()).unwrap_or((std::process::id(), 0));
    conn.execute(
        "INSERT INTO sessions(pid, pid_start, started) VALUES (?1, ?2, ?3)",
        params![pid, start as i64, now_ns()],
    )?;
    Ok(conn.last_insert_rowid())
}

pub(crate) fn end(conn: &Connection, session: i64) -> Result<()> {
    conn.execute("DELETE FROM pins WHERE session = ?1", [session])?;
    conn.execute(
        "DELETE FROM name_reservations WHERE session = ?1",
        [session],
    )?;
    conn.execute(
        "UPDATE packs SET session = NULL WHERE session = ?1",
        [session],
    )?;
    conn.execute("DELETE FROM sessions WHERE id = ?1", [session])?;
    Ok(())
}

/// Picks the name of the snapshot `session` is about to commit and reserves it, in one
/// transaction: a name no snapshot row has and no other session reserved. The reservation
/// lasts as long as the session (a failed commit whose record may stay in the log keeps it
/// until `gc` rolls the record back), so the record this session logs under that name is
/// the only live one: rapid or concurrent commits of one source never collide, and the
/// forget line a failed commit appends can only take back its own record.
pub(crate) fn reserve_snapshot_name(
    conn: &mut Connection,
    session: i64,
    machine: &str,
    source: &str,
    time_end_ns: i64,
    mut next_suffix: impl FnMut() -> [u8; 2],
) -> Result<String> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut tried = 0u32;
    let name = loop {
        let name = crate::snapshot::snapshot_name_with_suffix(source, time_end_ns, next_suffix());
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM snapshots WHERE machine = ?1 AND source = ?2 AND name = ?3)
                 OR EXISTS(SELECT 1 FROM name_reservations
                           WHERE machine = ?1 AND source = ?2 AND name = ?3)",
            params![machine, source, name],
            |r| r.get(0),
        )?;
        if !taken {
            break name;
        }
        tried += 1;
        if tried >= SNAPSHOT_NAME_ATTEMPTS {
            return Err(crate::StoreError::InvalidArgument(format!(
                "no free snapshot name for {machine}/{source} in this second after {tried} tries"
            )));
        }
    };
    tx.execute(
        "INSERT INTO name_reservations(machine, source, name, session) VALUES (?1, ?2, ?3, ?4)",
        params![machine, source, name, session],
    )?;
    tx.commit()?;
    Ok(name)
}

/// Marks a session whose commit failed half-way (its snapshot record may be in the log, its
/// row is not in the index) as belonging to a process that is gone, so that `gc` treats the
/// record as an interrupted commit: it rolls the record back before clearing the session and
/// before freeing anything the session protects. Its pins and packs stay protected until then.
pub(crate) fn abandon(conn: &Connection, session: i64) -> Result<()> {
    conn.execute(
        "UPDATE sessions SET pid_start = ?2 WHERE id = ?1",
        params![session, SESSION_ABANDONED_PID_START],
    )?;
    Ok(())
}

/// Where a writer session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Registered and its process runs.
    Live,
    /// Registered, but its process is gone: it crashed (GC has not cleared it yet).
    Dead,
    /// Not registered: it ended (committed or aborted) or GC cleared it.
    Ended,
}

pub(crate) fn state(conn: &Connection, id: i64) -> Result<SessionState> {
    let row: Option<(u32, i64)> = conn
        .query_row(
            "SELECT pid, pid_start FROM sessions WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((pid, start)) if process_alive(pid, start) => SessionState::Live,
        Some(_) => SessionState::Dead,
        None => SessionState::Ended,
    })
}

/// Whether the process `pid` that started at `start` (0: unknown) still runs. An abandoned
/// session's start time matches no process.
fn process_alive(pid: u32, start: i64) -> bool {
    match process_identity(pid) {
        Some((_, s)) => start == 0 || s as i64 == start,
        None => false,
    }
}

/// The sessions whose process is gone (it crashed, or its writer abandoned the session after
/// a failed commit), as of now. `gc` decides this set once, rolls back the records of these
/// sessions and then ends exactly these: judging again when ending them would end a writer
/// that died in between with its record still in the log, which would then look like a
/// snapshot whose row the index lost while `gc` frees its data.
pub(crate) fn dead_sessions(conn: &Connection) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare("SELECT id, pid, pid_start FROM sessions")?;
    let rows: Vec<(i64, u32, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .filter(|&(_, pid, start)| !process_alive(pid, start))
        .map(|(id, _, _)| id)
        .collect())
}

pub(crate) fn live_count(conn: &Connection) -> Result<i64> {
    Ok(conn
        .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

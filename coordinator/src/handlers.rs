//! The seven `/v1` endpoints as synchronous functions over request bytes.
//!
//! Transport-free on purpose: the axum layer only checks the method and moves the call to a
//! blocking thread, and the fuzz target drives [`handle`] directly. Each endpoint follows the
//! original's order of checks (`spec/turku.md` §1.5) so the same bad request gets the same
//! answer; where the original crashes with a 500 on malformed input, the answer is a 400 or
//! 403 instead (B12).

use std::net::IpAddr;

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, TimeZone as _, Utc};
use rusqlite::Connection;
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{debug, warn};
use turku_api_types::constants::defaults as wire_defaults;
use turku_api_types::constants::{
    endpoint, error_body, secret_type, CONTENT_TYPE_JSON, SNAPSHOT_MODES,
};
use turku_api_types::pyjson;
use turku_api_types::v1;

use crate::admission::Abandoned;
use crate::cache::Principal;
use crate::constants::limits;
use crate::db::{self, SecretTable};
use crate::error::ApiError;
use crate::filters::build_filters;
use crate::models::{self, hyphenated, BackupLog, Machine, Source, Storage};
use crate::placement::pick_storage;
use crate::schedule;
use crate::secrets::{self, Verified};
use crate::state::AppState;
use crate::validate::{
    bool_field, char_field, check_char, decode_string_list, display, int_field, parse_uuid,
    string_list_field, truthy, uuid_has_entropy,
};

/// A finished answer: status, body and whether the body is JSON (else Django's text/html).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Body text.
    pub body: String,
    /// `application/json` when true, `text/html; charset=utf-8` otherwise.
    pub json: bool,
    /// Seconds for a `Retry-After` header (503 answers only).
    pub retry_after: Option<u64>,
}

impl Reply {
    fn ok<T: Serialize>(value: &T) -> Result<Self, ApiError> {
        let body = pyjson::to_string(value).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(Self {
            status: StatusCode::OK,
            body,
            json: true,
            retry_after: None,
        })
    }

    fn error(e: &ApiError) -> Self {
        Self {
            status: e.status(),
            body: e.body(),
            json: false,
            retry_after: e.retry_after_secs(),
        }
    }
}

/// The 503 for a full hash queue.
pub fn busy_reply(retry_after: std::time::Duration) -> Reply {
    Reply::error(&ApiError::Busy { retry_after })
}

/// Whether a `Content-Type` header value is acceptable. The original compares the string
/// with `application/json` exactly; parameters (`; charset=utf-8`) are also accepted here,
/// since no client can be hurt by that and some HTTP libraries always add them.
pub fn content_type_ok(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v == CONTENT_TYPE_JSON
            || v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(CONTENT_TYPE_JSON))
    })
}

/// Per-request context: the shared state, and whether this call may block for long.
#[derive(Debug)]
struct Ctx<'a> {
    state: &'a AppState,
    /// False on the fast path: a request that needs Argon2 (a cache miss, a new
    /// registration) stops with [`ApiError::WouldBlock`] before writing anything, and is
    /// rerun on a blocking thread.
    slow_ok: bool,
    /// Set by the server when the client goes away: hashes not yet started are skipped.
    abandoned: Option<&'a Abandoned>,
    /// The peer's address, when known: the failure throttle keys on it.
    client: Option<IpAddr>,
}

impl std::ops::Deref for Ctx<'_> {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        self.state
    }
}

/// Handle one POST to `/v1/<name>` whose method was already checked. May run Argon2
/// (~170 ms at Django's cost): call it from a thread that can block.
/// Without a client address, failed secrets are throttled per principal alone.
pub fn handle(state: &AppState, name: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    handle_unless_abandoned(state, None, name, content_type, body, None)
}

/// [`handle`] for a request whose client may go away while it waits for a hash slot: once
/// `abandoned` is set, no further hash starts and the request stops before writing anything
/// that needed one (its answer, a 503, goes nowhere). `client` is the peer's address.
pub fn handle_unless_abandoned(
    state: &AppState,
    client: Option<IpAddr>,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
    abandoned: Option<&Abandoned>,
) -> Reply {
    match dispatch(
        &Ctx {
            state,
            slow_ok: true,
            abandoned,
            client,
        },
        name,
        content_type,
        body,
    ) {
        Ok(reply) => reply,
        // Unreachable with `slow_ok`; answered as an internal error rather than trusted.
        Err(e) => Reply::error(&e),
    }
}

/// The fast path: everything but Argon2. `None` means the request needs a secret hashed or
/// verified from scratch and must go through [`handle`] instead; nothing was written then.
/// Cached check-ins (the bulk of the traffic) complete here, without passing the hash queue.
/// Takes SQLite locks: call it from a thread that can block. `client` is the peer's address.
pub fn try_handle_fast(
    state: &AppState,
    client: Option<IpAddr>,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Reply> {
    match dispatch(
        &Ctx {
            state,
            slow_ok: false,
            abandoned: None,
            client,
        },
        name,
        content_type,
        body,
    ) {
        Ok(reply) => Some(reply),
        Err(ApiError::WouldBlock) => None,
        Err(e) => Some(Reply::error(&e)),
    }
}

fn dispatch(
    state: &Ctx<'_>,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    if !content_type_ok(content_type) {
        return Ok(Reply::error(&ApiError::BadRequest(
            error_body::BAD_CONTENT_TYPE.to_owned(),
        )));
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Ok(Reply::error(&ApiError::BadRequest(e.to_string()))),
    };
    // The original indexes the body like a dict; lists, strings and numbers behave as an
    // empty request here (it answered the usual 400s for some and crashed on others).
    let empty = Map::new();
    let req = req.as_object().unwrap_or(&empty);
    let now = Utc::now();
    let result = match name {
        endpoint::HEALTH => health(state, now),
        endpoint::UPDATE_CONFIG => update_config(state, req, now),
        endpoint::AGENT_PING_CHECKIN => agent_ping_checkin(state, req, now),
        endpoint::AGENT_PING_RESTORE => agent_ping_restore(state, req),
        endpoint::STORAGE_PING_CHECKIN => storage_ping_checkin(state, req, now),
        endpoint::STORAGE_PING_SOURCE_UPDATE => storage_ping_source_update(state, req, now),
        endpoint::STORAGE_UPDATE_CONFIG => storage_update_config(state, req, now),
        _ => Err(ApiError::NotFound(error_body::NOT_FOUND)),
    };
    match result {
        Ok(reply) => Ok(reply),
        Err(ApiError::WouldBlock) => Err(ApiError::WouldBlock),
        Err(e) => {
            match &e {
                ApiError::Internal(inner) => {
                    warn!(endpoint = name, error = %inner, "request failed")
                }
                other => debug!(endpoint = name, error = %other, "request refused"),
            }
            Ok(Reply::error(&e))
        }
    }
}

// --- Authentication -----------------------------------------------------------------------

/// Check a presented secret against a stored hash: cache first, then the failure throttle
/// (per principal and client address), then Argon2/PBKDF2 under a hash slot, rehashing outdated hashes as Django's
/// `check_password` setter does.
fn check_secret(
    state: &Ctx<'_>,
    kind: Principal,
    table: SecretTable,
    id: &str,
    stored: &str,
    secret: &Value,
) -> Result<bool, ApiError> {
    // Django hashers need a string; anything else cannot match (the original crashed).
    let Value::String(secret) = secret else {
        return Ok(false);
    };
    // Cached secrets pass before the throttle: a guesser aiming at a principal never locks
    // out the client that really holds its secret.
    if state.cache.hit(kind, id, stored, secret) {
        return Ok(true);
    }
    if !state.slow_ok {
        // Refuse a throttled principal here, before it takes a place in the hash queue.
        state
            .throttle
            .check(kind, id, state.client)
            .map_err(|retry_after| ApiError::Busy { retry_after })?;
        return Err(ApiError::WouldBlock);
    }
    state
        .throttle
        .take(kind, id, state.client)
        .map_err(|retry_after| ApiError::Busy { retry_after })?;
    let params = state.config.hash_params;
    let verdict = state
        .with_hash_slot_unless(state.abandoned, || secrets::verify(secret, stored, params))
        .ok_or(ApiError::Abandoned)?;
    match verdict {
        Verified::No => Ok(false),
        Verified::Yes => {
            state.throttle.succeeded(kind, id, state.client);
            state.cache.insert(kind, id, stored, secret);
            Ok(true)
        }
        Verified::YesRehash => {
            state.throttle.succeeded(kind, id, state.client);
            match state.with_hash_slot_unless(state.abandoned, || secrets::hash(secret, params)) {
                Some(Ok(new_hash)) => {
                    store_rehash(state, kind, table, id, stored, &new_hash, secret)?
                }
                // Keep the old (still valid) hash; the login itself succeeded.
                Some(Err(e)) => warn!(error = %e, "rehash failed"),
                // The client has gone: the next login rehashes.
                None => {}
            }
            Ok(true)
        }
    }
}

/// Replace `old_hash` by `new_hash` only if the row still holds `old_hash`: a secret rotated
/// while this login was hashing must not be overwritten by the rehash of the old secret.
fn store_rehash(
    state: &Ctx<'_>,
    kind: Principal,
    table: SecretTable,
    id: &str,
    old_hash: &str,
    new_hash: &str,
    secret: &str,
) -> Result<(), ApiError> {
    if db::replace_secret_hash(&state.db.conn(), table, id, old_hash, new_hash)? {
        state.cache.insert(kind, id, new_hash, secret);
    } else {
        debug!("secret changed during a rehash; the new secret stands");
    }
    Ok(())
}

fn new_hash(state: &Ctx<'_>, secret: &str) -> Result<String, ApiError> {
    if !state.slow_ok {
        return Err(ApiError::WouldBlock);
    }
    let params = state.config.hash_params;
    state
        .with_hash_slot_unless(state.abandoned, || secrets::hash(secret, params))
        .ok_or(ApiError::Abandoned)?
        .map_err(|e| ApiError::validation("secret_hash", &e.to_string()))
}

/// The original's `get_registration_auth`: a truthy `auth.name` and `auth.secret` matching an
/// active Auth of the wanted type, else 403.
fn registration_auth(
    state: &Ctx<'_>,
    req: &Map<String, Value>,
    kind: &str,
) -> Result<models::Auth, ApiError> {
    let auth = req
        .get("auth")
        .and_then(Value::as_object)
        .ok_or(ApiError::BadAuth("no auth object"))?;
    let name = auth
        .get("name")
        .filter(|v| truthy(v))
        .and_then(Value::as_str)
        .ok_or(ApiError::BadAuth("no auth name"))?;
    let secret = auth
        .get("secret")
        .filter(|v| truthy(v))
        .ok_or(ApiError::BadAuth("no auth secret"))?;
    let found = db::auth_for_registration(&state.db.conn(), name, kind)?
        .ok_or(ApiError::BadAuth("unknown auth"))?;
    if check_secret(
        state,
        Principal::Auth,
        SecretTable::Auth,
        &found.id,
        &found.secret_hash,
        secret,
    )? {
        Ok(found)
    } else {
        Err(ApiError::BadAuth("wrong auth secret"))
    }
}

/// What `machine_login` found: the request's `machine` object, its UUID, and the machine
/// (`None` only for an unknown machine during `update_config`).
type MachineLogin<'r> = (&'r Map<String, Value>, uuid::Uuid, Option<Machine>);

/// The original's `machine_login`. Returns `None` for an unknown machine during
/// `update_config` (the caller registers it).
fn machine_login<'r>(
    state: &Ctx<'_>,
    req: &'r Map<String, Value>,
    is_update_config: bool,
) -> Result<MachineLogin<'r>, ApiError> {
    let m = req
        .get("machine")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::BadRequest(error_body::MACHINE_DICT_REQUIRED.to_owned()))?;
    for k in ["uuid", "secret"] {
        if !m.contains_key(k) {
            return Err(ApiError::BadRequest(error_body::missing_machine_option(k)));
        }
    }
    let uuid = parse_uuid(&m["uuid"])?;
    let machine =
        db::machine_by_uuid(&state.db.conn(), &uuid.simple().to_string())?.filter(|m| m.active);
    let Some(machine) = machine else {
        return if is_update_config {
            Ok((m, uuid, None))
        } else {
            Err(ApiError::BadAuth("unknown machine"))
        };
    };
    if !is_update_config && !machine.published {
        return Err(ApiError::BadAuth("machine unpublished"));
    }
    if !check_secret(
        state,
        Principal::Machine,
        SecretTable::Machine,
        &machine.id,
        &machine.secret_hash,
        &m["secret"],
    )? {
        return Err(ApiError::BadAuth("wrong machine secret"));
    }
    Ok((m, uuid, Some(machine)))
}

/// The original's `storage_login`. Returns `None` for an unknown storage during
/// `storage_update_config`.
fn storage_login<'r>(
    state: &Ctx<'_>,
    req: &'r Map<String, Value>,
    is_update_config: bool,
) -> Result<(&'r Map<String, Value>, Option<Storage>), ApiError> {
    let s = req
        .get("storage")
        .ok_or_else(|| ApiError::BadRequest(error_body::missing_option("storage")))?;
    let s = s
        .as_object()
        .ok_or(ApiError::BadAuth("storage is not an object"))?;
    for k in ["name", "secret"] {
        if !s.contains_key(k) {
            return Err(ApiError::BadAuth("missing storage credential"));
        }
    }
    let name = s["name"]
        .as_str()
        .ok_or(ApiError::BadAuth("storage name is not a string"))?;
    let Some(storage) = db::active_storage_by_name(&state.db.conn(), name)? else {
        return if is_update_config {
            Ok((s, None))
        } else {
            Err(ApiError::BadAuth("unknown storage"))
        };
    };
    if !check_secret(
        state,
        Principal::Storage,
        SecretTable::Storage,
        &storage.id,
        &storage.secret_hash,
        &s["secret"],
    )? {
        return Err(ApiError::BadAuth("wrong storage secret"));
    }
    Ok((s, Some(storage)))
}

/// The original's `storage_get_machine`.
fn storage_get_machine<'r>(
    conn: &Connection,
    req: &'r Map<String, Value>,
    storage: &Storage,
) -> Result<(&'r Map<String, Value>, Machine), ApiError> {
    let m = req
        .get("machine")
        .ok_or_else(|| ApiError::BadRequest(error_body::missing_option("machine")))?;
    let m = m
        .as_object()
        .filter(|m| m.contains_key("uuid"))
        .ok_or_else(|| ApiError::BadRequest(error_body::missing_option("machine.uuid")))?;
    let uuid = parse_uuid(&m["uuid"])?;
    let machine = db::machine_by_uuid(conn, &uuid.simple().to_string())?
        .filter(|x| x.storage_id == storage.id && x.active && x.published)
        .ok_or(ApiError::NotFound(error_body::MACHINE_NOT_FOUND))?;
    Ok((m, machine))
}

// --- Source listings ----------------------------------------------------------------------

fn storage_endpoint(storage: &Storage) -> v1::StorageEndpoint {
    v1::StorageEndpoint {
        name: storage.name.clone(),
        ssh_ping_host: storage.ssh_ping_host.clone().unwrap_or_default(),
        ssh_ping_host_keys: decode_string_list(&storage.ssh_ping_host_keys),
        ssh_ping_port: storage
            .ssh_ping_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_default(),
        ssh_ping_user: storage.ssh_ping_user.clone().unwrap_or_default(),
    }
}

/// The per-source dict of `agent_ping_checkin`, `agent_ping_restore` and `storage_ping_checkin`.
fn source_map(
    conn: &Connection,
    machine: &Machine,
    sources: Vec<Source>,
) -> Result<v1::SourceMap, ApiError> {
    let mut out = v1::SourceMap::new();
    if sources.is_empty() {
        return Ok(out);
    }
    let storage = db::storage_by_id(conn, &machine.storage_id)?.ok_or(ApiError::Internal(
        crate::error::DbError::Corrupt {
            what: "machine.storage_id",
            value: machine.storage_id.clone(),
        },
    ))?;
    let endpoint = storage_endpoint(&storage);
    let mut lookup = |name: &str| -> Option<Vec<String>> {
        match db::filterset_rules(conn, name) {
            Ok(rules) => rules.map(|r| decode_string_list(&r)),
            Err(e) => {
                warn!(error = %e, "filterset lookup failed");
                None
            }
        }
    };
    for s in sources {
        let filter = build_filters(&decode_string_list(&s.filter), &mut lookup);
        out.insert(
            s.name,
            v1::ScheduledSource {
                path: s.path.unwrap_or_default(),
                retention: s.retention,
                bwlimit: s.bwlimit,
                filter,
                exclude: decode_string_list(&s.exclude),
                shared_service: s.shared_service,
                large_rotating_files: s.large_rotating_files,
                large_modifying_files: s.large_modifying_files,
                snapshot_mode: s.snapshot_mode,
                preserve_hard_links: s.preserve_hard_links,
                storage: endpoint.clone(),
            },
        );
    }
    Ok(out)
}

// --- Endpoints ----------------------------------------------------------------------------

/// Python `datetime.isoformat()` of `now` in the server time zone.
pub fn isoformat(now: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let local = tz.from_utc_datetime(&now.naive_utc());
    let fmt = if now.timestamp_subsec_micros() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    local.fixed_offset().to_rfc3339_opts(fmt, false)
}

fn health(state: &Ctx<'_>, now: DateTime<Utc>) -> Result<Reply, ApiError> {
    let c = db::counts(&state.db.conn())?;
    Reply::ok(&v1::HealthResponse {
        healthy: true,
        date: isoformat(now, state.config.time_zone),
        counts: v1::HealthCounts {
            auth: c.auth,
            storage: c.storage,
            machine: c.machine,
            source: c.source,
            filter_set: c.filter_set,
            backup_log: c.backup_log,
        },
    })
}

fn agent_ping_checkin(
    state: &Ctx<'_>,
    req: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Reply, ApiError> {
    let (_, _, machine) = machine_login(state, req, false)?;
    let machine = machine.ok_or(ApiError::BadAuth("unknown machine"))?;
    let scheduled = {
        let conn = state.db.conn();
        let due = db::due_sources(&conn, &machine.id, now)?;
        let map = source_map(&conn, &machine, due)?;
        db::touch_machine(&conn, &machine.id, now)?;
        map
    };
    Reply::ok(&v1::AgentPingCheckinResponse {
        machine: v1::ScheduledSources {
            scheduled_sources: scheduled.clone(),
        },
        scheduled_sources: Some(scheduled),
    })
}

fn agent_ping_restore(state: &Ctx<'_>, req: &Map<String, Value>) -> Result<Reply, ApiError> {
    let (_, _, machine) = machine_login(state, req, false)?;
    let machine = machine.ok_or(ApiError::BadAuth("unknown machine"))?;
    let sources = {
        let conn = state.db.conn();
        let all = db::active_sources(&conn, &machine.id)?;
        source_map(&conn, &machine, all)?
    };
    Reply::ok(&v1::AgentPingRestoreResponse {
        machine: v1::RestoreSources { sources },
    })
}

fn storage_ping_checkin(
    state: &Ctx<'_>,
    req: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Reply, ApiError> {
    let (_, storage) = storage_login(state, req, false)?;
    let storage = storage.ok_or(ApiError::BadAuth("unknown storage"))?;
    let conn = state.db.conn();
    let (_, machine) = storage_get_machine(&conn, req, &storage)?;
    let due = db::due_sources(&conn, &machine.id, now)?;
    let scheduled = source_map(&conn, &machine, due)?;
    db::touch_machine(&conn, &machine.id, now)?;
    drop(conn);
    Reply::ok(&v1::StoragePingCheckinResponse {
        machine: v1::StorageCheckinMachine {
            uuid: hyphenated(&machine.uuid),
            environment_name: machine.environment_name,
            service_name: machine.service_name,
            unit_name: machine.unit_name.unwrap_or_default(),
            scheduled_sources: scheduled,
        },
    })
}

/// Epoch seconds (float) → UTC time, as `datetime.utcfromtimestamp`.
fn epoch(field: &str, v: &Value) -> Result<Option<DateTime<Utc>>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let f = n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1.0e11)
                .ok_or_else(|| {
                    ApiError::validation(field, &format!("“{}” is out of range.", display(v)))
                })?;
            // Bounded above, so the conversion to whole microseconds is exact enough and safe.
            #[allow(clippy::cast_possible_truncation)]
            let micros = (f * 1_000_000.0).round() as i64;
            Ok(Utc.timestamp_micros(micros).single())
        }
        _ => Err(ApiError::validation(
            field,
            &format!("“{}” is not a number.", display(v)),
        )),
    }
}

fn storage_ping_source_update(
    state: &Ctx<'_>,
    req: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Reply, ApiError> {
    let (_, storage) = storage_login(state, req, false)?;
    let storage = storage.ok_or(ApiError::BadAuth("unknown storage"))?;
    let mut conn = state.db.conn();
    let (m, machine) = storage_get_machine(&conn, req, &storage)?;
    let sources = m
        .get("sources")
        .ok_or_else(|| ApiError::BadRequest(error_body::missing_option("machine.sources")))?
        .as_object()
        .ok_or_else(|| ApiError::BadRequest(error_body::invalid_type("machine.sources")))?;
    let tz = state.config.time_zone;
    // One transaction per source: like the original, sources before a failing one stay
    // recorded.
    for (name, data) in sources {
        let data = data.as_object().ok_or_else(|| {
            ApiError::BadRequest(error_body::invalid_type(&format!("machine.sources.{name}")))
        })?;
        let source = db::reportable_source(&conn, &machine.id, name)?
            .ok_or(ApiError::NotFound(error_body::SOURCE_NOT_FOUND))?;
        let success = data.get("success").is_some_and(truthy);
        let snapshot = data
            .get("snapshot")
            .map(|v| char_field("snapshot", v))
            .transpose()?
            .flatten();
        let summary = data
            .get("summary")
            .map(|v| char_field("summary", v))
            .transpose()?
            .flatten();
        let date_begin = data
            .get("time_begin")
            .map(|v| epoch("time_begin", v))
            .transpose()?
            .flatten();
        let date_end = data
            .get("time_end")
            .map(|v| epoch("time_end", v))
            .transpose()?
            .flatten();
        let (last, next) = if success {
            let id = hyphenated(&source.id);
            let next = schedule::next_run(&source.frequency, &id, now, tz).or_else(|e| {
                // Only reachable with a row written outside the API (validated on the way in).
                warn!(source = %id, error = %e, "unschedulable frequency, falling back to daily");
                schedule::next_run(wire_defaults::FREQUENCY, &id, now, tz)
            });
            (
                Some(now),
                next.map_err(|e| ApiError::validation("frequency", &e.to_string()))?,
            )
        } else {
            (source.date_last_backed_up, source.date_next_backup)
        };
        let tx = conn.transaction()?;
        db::record_backup(&tx, &source.id, success, last, next)?;
        db::insert_backup_log(
            &tx,
            &BackupLog {
                id: models::new_id(),
                source_id: source.id.clone(),
                date: now,
                storage_id: Some(storage.id.clone()),
                success,
                date_begin,
                date_end,
                snapshot,
                summary,
            },
        )?;
        tx.commit()?;
    }
    drop(conn);
    Reply::ok(&v1::EmptyResponse {})
}

/// "Published" handling shared by machines and storages: present → take it; absent → want
/// published. Returns whether it changed.
fn apply_published(current: &mut bool, req: &Map<String, Value>) -> Result<bool, ApiError> {
    let want = match req.get("published") {
        Some(v) => bool_field("published", v)?,
        None => true,
    };
    let changed = want != *current;
    *current = want;
    Ok(changed)
}

fn validate_machine(m: &Machine) -> Result<(), ApiError> {
    let uuid = uuid::Uuid::try_parse(&m.uuid)
        .map_err(|_| ApiError::validation("uuid", "Invalid UUID format"))?;
    if !uuid_has_entropy(&uuid) {
        return Err(ApiError::validation("uuid", "Invalid UUID format"));
    }
    check_char(
        "environment_name",
        m.environment_name.as_deref(),
        false,
        limits::CHAR,
    )?;
    check_char(
        "service_name",
        m.service_name.as_deref(),
        false,
        limits::CHAR,
    )?;
    check_char("unit_name", m.unit_name.as_deref(), true, limits::CHAR)?;
    check_char("comment", m.comment.as_deref(), false, limits::CHAR)?;
    check_char(
        "ssh_public_key",
        m.ssh_public_key.as_deref(),
        true,
        limits::SSH_PUBLIC_KEY,
    )
}

fn update_config(
    state: &Ctx<'_>,
    req: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Reply, ApiError> {
    let (m, uuid, existing) = machine_login(state, req, true)?;
    let new_machine = existing.is_none();
    let mut modified = false;
    let mut machine = match existing {
        Some(machine) => machine,
        None => {
            let secret = m["secret"]
                .as_str()
                .ok_or_else(|| ApiError::validation("secret", "Enter a valid string."))?;
            let auth = registration_auth(state, req, secret_type::MACHINE_REG)?;
            modified = true;
            Machine {
                id: models::new_id(),
                uuid: uuid.simple().to_string(),
                secret_hash: new_hash(state, secret)?,
                environment_name: None,
                service_name: None,
                unit_name: None,
                comment: None,
                ssh_public_key: None,
                auth_id: auth.id,
                storage_id: String::new(),
                active: true,
                published: true,
                date_registered: now,
                date_updated: now,
                date_checked_in: None,
            }
        }
    };
    modified |= apply_published(&mut machine.published, m)?;
    let mut conn = state.db.conn();
    if new_machine {
        let candidates = db::placement_candidates(&conn)?;
        machine.storage_id = pick_storage(&candidates, &mut rand::thread_rng())
            .ok_or(ApiError::NotFound(error_body::NO_STORAGES))?
            .to_owned();
    }
    for (key, slot) in [
        ("environment_name", &mut machine.environment_name),
        ("service_name", &mut machine.service_name),
        ("unit_name", &mut machine.unit_name),
        ("comment", &mut machine.comment),
        ("ssh_public_key", &mut machine.ssh_public_key),
    ] {
        if let Some(v) = m.get(key) {
            let v = char_field(key, v)?;
            if *slot != v {
                *slot = v;
                modified = true;
            }
        }
    }
    if modified {
        machine.date_updated = now;
        validate_machine(&machine)?;
        if new_machine && db::machine_by_uuid(&conn, &machine.uuid)?.is_some() {
            // An inactive machine holds this UUID (the original answers the same 400).
            return Err(ApiError::validation(
                "uuid",
                "Machine with this Uuid already exists.",
            ));
        }
    }
    machine.date_checked_in = Some(now);
    db::save_machine(&conn, &machine)?;

    let empty = Map::new();
    let req_sources = match m.get("sources") {
        None => &empty,
        Some(v) => v
            .as_object()
            .ok_or_else(|| ApiError::BadRequest(error_body::INVALID_SOURCES_TYPE.to_owned()))?,
    };
    // All source changes of one request commit together (the original saved them one by
    // one, so a validation error half-way left a partial update).
    let tx = conn.transaction()?;
    let existing = db::sources_of_machine(&tx, &machine.id)?;
    let tz = state.config.time_zone;
    for mut source in existing.iter().cloned() {
        let Some(data) = req_sources.get(&source.name) else {
            if source.published {
                db::unpublish_source(&tx, &source.id)?;
            }
            continue;
        };
        let data = source_object(&source.name, data)?;
        let mut changed = apply_source_fields(&mut source, data)?;
        if data.contains_key("frequency") && changed.frequency {
            // B15: the original computed this but did not save it.
            source.date_next_backup =
                schedule::next_run(&source.frequency, &hyphenated(&source.id), now, tz)
                    .map_err(|e| ApiError::validation("frequency", &e.to_string()))?;
        }
        if !source.published {
            source.published = true;
            changed.any = true;
        }
        if changed.any {
            source.date_updated = now;
            validate_source(&source)?;
            db::save_source(&tx, &source)?;
        }
    }
    for (name, data) in req_sources {
        if existing.iter().any(|s| &s.name == name) {
            continue;
        }
        let data = source_object(name, data)?;
        let mut source = Source {
            id: models::new_id(),
            name: name.clone(),
            machine_id: machine.id.clone(),
            comment: None,
            path: None,
            filter: "[]".to_owned(),
            exclude: "[]".to_owned(),
            frequency: wire_defaults::FREQUENCY.to_owned(),
            retention: wire_defaults::RETENTION.to_owned(),
            bwlimit: None,
            snapshot_mode: None,
            preserve_hard_links: false,
            shared_service: false,
            large_rotating_files: false,
            large_modifying_files: false,
            active: true,
            success: true,
            published: true,
            date_added: now,
            date_updated: now,
            date_last_backed_up: None,
            date_next_backup: now,
        };
        apply_source_fields(&mut source, data)?;
        validate_source(&source)?;
        // A new source is not backed up at once: its first run is its next scheduled slot.
        source.date_next_backup =
            schedule::next_run(&source.frequency, &hyphenated(&source.id), now, tz)
                .map_err(|e| ApiError::validation("frequency", &e.to_string()))?;
        db::save_source(&tx, &source)?;
    }
    tx.commit()?;
    drop(conn);
    Reply::ok(&v1::EmptyResponse {})
}

fn source_object<'a>(name: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::BadRequest(error_body::invalid_type(&format!("sources.{name}"))))
}

#[derive(Debug, Default)]
struct SourceChanges {
    any: bool,
    frequency: bool,
}

/// Copy the keys present in `data` onto `source` (Django-coerced), noting what changed.
fn apply_source_fields(
    source: &mut Source,
    data: &Map<String, Value>,
) -> Result<SourceChanges, ApiError> {
    let mut ch = SourceChanges::default();
    let required = |key: &str, slot: &mut String, ch: &mut SourceChanges| -> Result<(), ApiError> {
        if let Some(v) = data.get(key) {
            let v = char_field(key, v)?
                .ok_or_else(|| ApiError::validation(key, "This field cannot be null."))?;
            if *slot != v {
                *slot = v;
                ch.any = true;
                if key == "frequency" {
                    ch.frequency = true;
                }
            }
        }
        Ok(())
    };
    required("frequency", &mut source.frequency, &mut ch)?;
    required("retention", &mut source.retention, &mut ch)?;
    for (key, slot) in [
        ("path", &mut source.path),
        ("comment", &mut source.comment),
        ("bwlimit", &mut source.bwlimit),
        ("snapshot_mode", &mut source.snapshot_mode),
    ] {
        if let Some(v) = data.get(key) {
            let v = char_field(key, v)?;
            if *slot != v {
                *slot = v;
                ch.any = true;
            }
        }
    }
    for (key, slot) in [
        ("shared_service", &mut source.shared_service),
        ("large_rotating_files", &mut source.large_rotating_files),
        ("large_modifying_files", &mut source.large_modifying_files),
        ("preserve_hard_links", &mut source.preserve_hard_links),
    ] {
        if let Some(v) = data.get(key) {
            let v = bool_field(key, v)?;
            if *slot != v {
                *slot = v;
                ch.any = true;
            }
        }
    }
    for (key, slot) in [
        ("filter", &mut source.filter),
        ("exclude", &mut source.exclude),
    ] {
        if let Some(v) = data.get(key) {
            let v = string_list_field(key, v, limits::FILTER)?;
            if *slot != v {
                *slot = v;
                ch.any = true;
            }
        }
    }
    Ok(ch)
}

fn validate_source(s: &Source) -> Result<(), ApiError> {
    check_char("name", Some(&s.name), true, limits::CHAR)?;
    check_char("path", s.path.as_deref(), true, limits::CHAR)?;
    check_char("frequency", Some(&s.frequency), true, limits::CHAR)?;
    check_char("retention", Some(&s.retention), true, limits::CHAR)?;
    check_char("comment", s.comment.as_deref(), false, limits::CHAR)?;
    check_char("bwlimit", s.bwlimit.as_deref(), false, limits::CHAR)?;
    if let Some(mode) = s.snapshot_mode.as_deref() {
        if !SNAPSHOT_MODES.contains(&mode) {
            return Err(ApiError::validation(
                "snapshot_mode",
                &format!("Value '{mode}' is not a valid choice."),
            ));
        }
    }
    Ok(())
}

fn validate_storage(s: &Storage) -> Result<(), ApiError> {
    check_char("name", Some(&s.name), true, limits::CHAR)?;
    check_char("comment", s.comment.as_deref(), false, limits::CHAR)?;
    check_char(
        "ssh_ping_host",
        s.ssh_ping_host.as_deref(),
        true,
        limits::CHAR,
    )?;
    if s.ssh_ping_port.is_none() {
        // B16: the original skipped validation for a bare new storage and crashed on insert.
        return Err(ApiError::validation(
            "ssh_ping_port",
            "This field cannot be null.",
        ));
    }
    check_char(
        "ssh_ping_user",
        s.ssh_ping_user.as_deref(),
        true,
        limits::CHAR,
    )
}

fn storage_update_config(
    state: &Ctx<'_>,
    req: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Reply, ApiError> {
    let (s, existing) = storage_login(state, req, true)?;
    let new_storage = existing.is_none();
    let mut modified = false;
    let mut storage = match existing {
        Some(storage) => storage,
        None => {
            let name = s["name"].as_str().unwrap_or_default().to_owned();
            let secret = s["secret"]
                .as_str()
                .ok_or_else(|| ApiError::validation("secret", "Enter a valid string."))?;
            let auth = registration_auth(state, req, secret_type::STORAGE_REG)?;
            modified = true;
            Storage {
                id: models::new_id(),
                name,
                secret_hash: new_hash(state, secret)?,
                comment: None,
                ssh_ping_host: None,
                ssh_ping_host_keys: "[]".to_owned(),
                ssh_ping_port: None,
                ssh_ping_user: None,
                space_total: 0,
                space_available: 0,
                auth_id: auth.id,
                active: true,
                published: true,
                date_registered: now,
                date_updated: now,
                date_checked_in: None,
            }
        }
    };
    modified |= apply_published(&mut storage.published, s)?;
    for (key, slot) in [
        ("comment", &mut storage.comment),
        ("ssh_ping_host", &mut storage.ssh_ping_host),
        ("ssh_ping_user", &mut storage.ssh_ping_user),
    ] {
        if let Some(v) = s.get(key) {
            let v = char_field(key, v)?;
            if *slot != v {
                *slot = v;
                modified = true;
            }
        }
    }
    if let Some(v) = s.get("ssh_ping_port") {
        let v = Some(int_field("ssh_ping_port", v, 1, 65_535)?);
        if storage.ssh_ping_port != v {
            storage.ssh_ping_port = v;
            modified = true;
        }
    }
    for (key, slot) in [
        ("space_total", &mut storage.space_total),
        ("space_available", &mut storage.space_available),
    ] {
        if let Some(v) = s.get(key) {
            // Storages send MiB as floats; Django truncates them on validation. Comparing
            // after truncation keeps `date_updated` still when nothing really changed.
            let v = int_field(key, v, 0, i64::MAX)?;
            if *slot != v {
                *slot = v;
                modified = true;
            }
        }
    }
    if let Some(v) = s.get("ssh_ping_host_keys") {
        let v = string_list_field("ssh_ping_host_keys", v, limits::HOST_KEYS)?;
        if storage.ssh_ping_host_keys != v {
            storage.ssh_ping_host_keys = v;
            modified = true;
        }
    }
    let conn = state.db.conn();
    if modified {
        storage.date_updated = now;
        validate_storage(&storage)?;
        if new_storage && db::storage_by_name(&conn, &storage.name)?.is_some() {
            return Err(ApiError::validation(
                "name",
                "Storage with this Name already exists.",
            ));
        }
    }
    storage.date_checked_in = Some(now);
    db::save_storage(&conn, &storage)?;
    let machines = db::machines_of_storage(&conn, &storage.id)?;
    drop(conn);
    let machines = machines
        .into_iter()
        .map(|m| {
            (
                hyphenated(&m.uuid),
                v1::StorageMachine {
                    environment_name: m.environment_name,
                    service_name: m.service_name,
                    unit_name: m.unit_name.unwrap_or_default(),
                    comment: m.comment,
                    ssh_public_key: m.ssh_public_key.unwrap_or_default(),
                },
            )
        })
        .collect();
    Reply::ok(&v1::StorageUpdateConfigResponse { machines })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{self, AuthKind};
    use crate::db::Db;
    use crate::secrets::HashParams;
    use crate::state::Config;

    /// A login whose hash is outdated is rehashed; if the secret was rotated between the
    /// read of the row and the rehash, the rotation stands.
    #[test]
    fn rehash_never_undoes_a_rotation() {
        let old_params = HashParams::insecure_fast();
        let current = HashParams {
            memory_kib: old_params.memory_kib * 2,
            ..old_params
        };
        let db = Db::open_in_memory().expect("db");
        let now = Utc::now();
        let secret =
            admin::auth_create(&db, AuthKind::MachineReg, Some("a"), true, old_params, now)
                .expect("auth");
        let secret = secret.trim();
        let state = AppState::new(
            db,
            Config {
                hash_params: current,
                ..Config::default()
            },
        );
        let ctx = Ctx {
            state: &state,
            slow_ok: true,
            abandoned: None,
            client: None,
        };
        let read = db::auth_for_registration(&state.db.conn(), "a", secret_type::MACHINE_REG)
            .expect("query")
            .expect("auth");
        // The row as the request read it is outdated: its login would rehash.
        assert_eq!(
            secrets::verify(secret, &read.secret_hash, current),
            Verified::YesRehash
        );
        // Meanwhile an operator rotates the secret.
        let rotated = secrets::hash("rotated", current).expect("hash");
        db::set_secret_hash(&state.db.conn(), SecretTable::Auth, &read.id, &rotated)
            .expect("rotate");

        let ok = check_secret(
            &ctx,
            Principal::Auth,
            SecretTable::Auth,
            &read.id,
            &read.secret_hash,
            &Value::String(secret.to_owned()),
        )
        .expect("check");
        assert!(ok, "the login against the row it read succeeds");
        let after = db::auth_for_registration(&state.db.conn(), "a", secret_type::MACHINE_REG)
            .expect("query")
            .expect("auth");
        assert_eq!(after.secret_hash, rotated, "the rotation was overwritten");
        assert!(!state.cache.hit(Principal::Auth, &read.id, &rotated, secret));

        // Without a rotation the same login rehashes as before.
        db::set_secret_hash(
            &state.db.conn(),
            SecretTable::Auth,
            &read.id,
            &read.secret_hash,
        )
        .expect("restore");
        assert!(check_secret(
            &ctx,
            Principal::Auth,
            SecretTable::Auth,
            &read.id,
            &read.secret_hash,
            &Value::String(secret.to_owned()),
        )
        .expect("check"));
        let rehashed = db::auth_for_registration(&state.db.conn(), "a", secret_type::MACHINE_REG)
            .expect("query")
            .expect("auth");
        assert_ne!(rehashed.secret_hash, read.secret_hash);
        assert_eq!(
            secrets::verify(secret, &rehashed.secret_hash, current),
            Verified::Yes
        );
    }
}

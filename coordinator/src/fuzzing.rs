//! The bodies of the `coordinator_*` fuzz targets (`fuzz/fuzz_targets/`), one function a
//! target, so the fuzzer and the replay of the committed seeds (`tests/fuzz_seeds.rs`) run
//! the same code. Each takes the raw fuzz input; a panic here (an assertion included) is a
//! bug the fuzzer found, never a rejected input.

use std::sync::OnceLock;

use chrono::DateTime;
use chrono_tz::Tz;

use crate::admin::{self, AuthKind};
use crate::db::Db;
use crate::handlers::handle;
use crate::schedule::next_run;
use crate::secrets::HashParams;
use crate::{AppState, Config};

const ZONES: [Tz; 4] = [
    Tz::UTC,
    Tz::Europe__Helsinki,
    Tz::America__New_York,
    Tz::Australia__Lord_Howe,
];

/// The `frequency` grammar (calendar words, time specs, croniter-style `cron …`): never a
/// panic, and whatever schedules lies strictly after its base time.
///
/// Input: 8 bytes of base time, 1 byte of zone choice, then the frequency text.
pub fn coordinator_frequency(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&head[..8]);
    // Keep the base within the years the schedules are defined for (1970–2099).
    let secs = i64::from_le_bytes(secs).rem_euclid(4_000_000_000);
    let Some(base) = DateTime::from_timestamp(secs, 0) else {
        return;
    };
    let tz = ZONES[usize::from(head[8]) % ZONES.len()];
    let Ok(freq) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(next) = next_run(freq, "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11", base, tz) {
        assert!(next > base, "{freq:?} from {base} gave {next}");
    }
}

const ENDPOINTS: [&str; 7] = [
    "health",
    "update_config",
    "agent_ping_checkin",
    "agent_ping_restore",
    "storage_ping_checkin",
    "storage_ping_source_update",
    "storage_update_config",
];

/// An in-memory database seeded with a storage, a machine and registration secrets whose
/// secrets are all `"s"`, so inputs can reach the authenticated paths. Built once: setting
/// it up is most of a run's cost.
fn seeded_state() -> Result<AppState, String> {
    let db = Db::open_in_memory().map_err(|e| format!("in-memory database: {e}"))?;
    let params = HashParams::insecure_fast();
    let now = chrono::Utc::now();
    admin::auth_create(&db, AuthKind::MachineReg, Some("m"), true, params, now)
        .map_err(|e| format!("machine registration: {e}"))?;
    admin::auth_create(&db, AuthKind::StorageReg, Some("st"), true, params, now)
        .map_err(|e| format!("storage registration: {e}"))?;
    // No failure throttle: wrong secrets must keep reaching every handler path.
    let state = AppState::new(
        db,
        Config {
            hash_params: params,
            auth_failure_burst: 0,
            ..Config::default()
        },
    );
    // Registration secrets are random; give both a known one so inputs can use them.
    let hash = crate::secrets::hash("s", params).map_err(|e| format!("hash: {e}"))?;
    state
        .db
        .conn()
        .execute("UPDATE turku_api_auth SET secret_hash = ?1", [&hash])
        .map_err(|e| format!("known secrets: {e}"))?;
    let storage = br#"{"auth": {"name": "st", "secret": "s"}, "storage": {"name": "n", "secret": "s", "ssh_ping_host": "h", "ssh_ping_port": 22, "ssh_ping_user": "u"}}"#;
    handle(
        &state,
        "storage_update_config",
        Some("application/json"),
        storage,
    );
    let machine = br#"{"auth": {"name": "m", "secret": "s"}, "machine": {"uuid": "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11", "secret": "s", "unit_name": "u", "ssh_public_key": "k", "sources": {"a": {"path": "/a"}}}}"#;
    handle(&state, "update_config", Some("application/json"), machine);
    Ok(state)
}

/// Any body to any `/v1` endpoint: never a panic, never a 500. The first byte picks the
/// endpoint, the rest is the request body.
pub fn coordinator_request(data: &[u8]) {
    static STATE: OnceLock<Result<AppState, String>> = OnceLock::new();
    let state = match STATE.get_or_init(seeded_state) {
        Ok(state) => state,
        Err(e) => panic!("the fuzz harness's database could not be set up: {e}"),
    };
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(which) % ENDPOINTS.len()];
    let reply = handle(state, endpoint, Some("application/json"), body);
    assert_ne!(
        reply.status.as_u16(),
        500,
        "{endpoint}: {:?} → {}",
        String::from_utf8_lossy(body),
        reply.body
    );
}

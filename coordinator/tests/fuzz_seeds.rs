//! The committed seeds of the coordinator's fuzz targets (`fuzz/seeds/coordinator_*/`)
//! replayed through the same public functions, so a handler or the schedule parser that
//! starts panicking (or answering 500) on one of them fails a plain `cargo test`. The fuzz
//! crate is a workspace of its own, so each `coordinator_*` function below mirrors the body
//! of its target in `fuzz/fuzz_targets/`: keep them in step.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::DateTime;
use chrono_tz::Tz;
use turku_coordinator::admin::{self, AuthKind};
use turku_coordinator::db::Db;
use turku_coordinator::handlers::handle;
use turku_coordinator::schedule::next_run;
use turku_coordinator::secrets::HashParams;
use turku_coordinator::{AppState, Config};

/// Runs `body` on every seed of `target`, naming the seed that panics; a missing or empty
/// folder fails rather than testing nothing.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed folder entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in seeds {
        let data = fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: seed {} panics", seed.display());
        }
    }
}

// ------------------------------------------------------------------ coordinator_frequency

const ZONES: [Tz; 4] = [
    Tz::UTC,
    Tz::Europe__Helsinki,
    Tz::America__New_York,
    Tz::Australia__Lord_Howe,
];

fn coordinator_frequency(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&head[..8]);
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

#[test]
fn coordinator_frequency_seeds_replay_without_panic() {
    replay("coordinator_frequency", coordinator_frequency);
}

// ------------------------------------------------------------------ coordinator_request

const ENDPOINTS: [&str; 7] = [
    "health",
    "update_config",
    "agent_ping_checkin",
    "agent_ping_restore",
    "storage_ping_checkin",
    "storage_ping_source_update",
    "storage_update_config",
];

fn state() -> &'static AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE.get_or_init(|| {
        let db = Db::open_in_memory().expect("in-memory database");
        let params = HashParams::insecure_fast();
        let now = chrono::Utc::now();
        admin::auth_create(&db, AuthKind::MachineReg, Some("m"), true, params, now).expect("auth");
        admin::auth_create(&db, AuthKind::StorageReg, Some("st"), true, params, now)
            .expect("auth");
        let state = AppState::new(
            db,
            Config {
                hash_params: params,
                auth_failure_burst: 0,
                ..Config::default()
            },
        );
        let hash = turku_coordinator::secrets::hash("s", params).expect("hash");
        state
            .db
            .conn()
            .execute("UPDATE turku_api_auth SET secret_hash = ?1", [&hash])
            .expect("seed");
        let storage = br#"{"auth": {"name": "st", "secret": "s"}, "storage": {"name": "n", "secret": "s", "ssh_ping_host": "h", "ssh_ping_port": 22, "ssh_ping_user": "u"}}"#;
        handle(&state, "storage_update_config", Some("application/json"), storage);
        let machine = br#"{"auth": {"name": "m", "secret": "s"}, "machine": {"uuid": "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11", "secret": "s", "unit_name": "u", "ssh_public_key": "k", "sources": {"a": {"path": "/a"}}}}"#;
        handle(&state, "update_config", Some("application/json"), machine);
        state
    })
}

fn coordinator_request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let endpoint = ENDPOINTS[usize::from(which) % ENDPOINTS.len()];
    let reply = handle(state(), endpoint, Some("application/json"), body);
    assert_ne!(
        reply.status.as_u16(),
        500,
        "{endpoint}: {:?} → {}",
        String::from_utf8_lossy(body),
        reply.body
    );
}

#[test]
fn coordinator_request_seeds_replay_without_panic() {
    replay("coordinator_request", coordinator_request);
}

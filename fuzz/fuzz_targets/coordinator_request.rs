//! Any body to any `/v1` endpoint: never a panic, never a 500.
//!
//! Input: first byte picks the endpoint, the rest is the request body. The database is an
//! in-memory one seeded with a storage, a machine and registration secrets whose secrets
//! are all `"s"`, so the fuzzer can reach the authenticated paths.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use turku_coordinator::admin::{self, AuthKind};
use turku_coordinator::db::Db;
use turku_coordinator::handlers::handle;
use turku_coordinator::secrets::HashParams;
use turku_coordinator::{AppState, Config};

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
        admin::auth_create(&db, AuthKind::StorageReg, Some("st"), true, params, now).expect("auth");
        // No failure throttle: wrong secrets must keep reaching every handler path.
        let state = AppState::new(
            db,
            Config { hash_params: params, auth_failure_burst: 0, ..Config::default() },
        );
        // Registration secrets are random; give both a known one so inputs can use them.
        let hash = turku_coordinator::secrets::hash("s", params).expect("hash");
        state.db.conn().execute("UPDATE turku_api_auth SET secret_hash = ?1", [&hash]).expect("seed");
        let storage = br#"{"auth": {"name": "st", "secret": "s"}, "storage": {"name": "n", "secret": "s", "ssh_ping_host": "h", "ssh_ping_port": 22, "ssh_ping_user": "u"}}"#;
        handle(&state, "storage_update_config", Some("application/json"), storage);
        let machine = br#"{"auth": {"name": "m", "secret": "s"}, "machine": {"uuid": "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11", "secret": "s", "unit_name": "u", "ssh_public_key": "k", "sources": {"a": {"path": "/a"}}}}"#;
        handle(&state, "update_config", Some("application/json"), machine);
        state
    })
}

fuzz_target!(|data: &[u8]| {
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
});

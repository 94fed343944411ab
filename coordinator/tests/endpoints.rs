//! Every `/v1` endpoint through real HTTP on 127.0.0.1:0: the happy path with golden JSON,
//! and every error answer of `spec/turku.md` §1.4–§1.5.

mod common;

use chrono::{Duration, Utc};
use common::*;
use serde_json::json;
use turku_coordinator::admin;
use turku_coordinator::db;

const ETC_GOLDEN: &str = r#""etc": {"path": "/etc", "retention": "last 5 days, earliest of month", "bwlimit": null, "filter": ["- *.o", "- *.tmp"], "exclude": ["*.bak"], "shared_service": false, "large_rotating_files": false, "large_modifying_files": false, "snapshot_mode": null, "preserve_hard_links": false, "storage": {"name": "storage1", "ssh_ping_host": "storage1.example.com", "ssh_ping_host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey root@storage1"], "ssh_ping_port": 2222, "ssh_ping_user": "turku-ping"}}"#;
const HOME_GOLDEN: &str = r#""home": {"path": "/home", "retention": "last 3 days", "bwlimit": "1000", "filter": [], "exclude": [], "shared_service": false, "large_rotating_files": false, "large_modifying_files": false, "snapshot_mode": "link-dest", "preserve_hard_links": true, "storage": {"name": "storage1", "ssh_ping_host": "storage1.example.com", "ssh_ping_host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey root@storage1"], "ssh_ping_port": 2222, "ssh_ping_user": "turku-ping"}}"#;

fn make_due(srv: &Server, source: &str) {
    admin::backup_now(
        &srv.state.db,
        MACHINE_UUID,
        source,
        Utc::now() - Duration::seconds(1),
    )
    .expect("backup-now");
}

fn add_filterset(srv: &Server) {
    db::put_filterset(
        &srv.state.db.conn(),
        "common",
        r#"["- *.o", "merge common"]"#,
        true,
        Utc::now(),
    )
    .expect("filterset");
}

/// Registration → config update → check-in → source update → health, with golden bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_scenario_with_golden_json() {
    let srv = start().await;
    add_filterset(&srv);

    let r = post(
        srv.addr,
        "storage_update_config",
        &storage_config(&srv, true),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"machines": {}}"#));
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = post(srv.addr, "update_config", &machine_config(&srv, true)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));

    // The storage now learns the machine and its key (no auth needed any more).
    let r = post(
        srv.addr,
        "storage_update_config",
        &storage_config(&srv, false),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        format!(
            r#"{{"machines": {{"{MACHINE_UUID}": {{"environment_name": null, "service_name": "web", "unit_name": "web-0", "comment": null, "ssh_public_key": "{AGENT_KEY}"}}}}}}"#
        )
    );

    // New sources are scheduled for later, not run at once.
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            200,
            r#"{"machine": {"scheduled_sources": {}}, "scheduled_sources": {}}"#
        )
    );

    make_due(&srv, "etc");
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        format!(
            r#"{{"machine": {{"scheduled_sources": {{{ETC_GOLDEN}}}}}, "scheduled_sources": {{{ETC_GOLDEN}}}}}"#
        )
    );

    let r = post(
        srv.addr,
        "storage_ping_checkin",
        &storage_creds(json!({"machine": {"uuid": MACHINE_UUID}})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        format!(
            r#"{{"machine": {{"uuid": "{MACHINE_UUID}", "environment_name": null, "service_name": "web", "unit_name": "web-0", "scheduled_sources": {{{ETC_GOLDEN}}}}}}}"#
        )
    );

    let r = post(srv.addr, "agent_ping_restore", &agent_creds()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        format!(r#"{{"machine": {{"sources": {{{ETC_GOLDEN}, {HOME_GOLDEN}}}}}}}"#)
    );

    let report = json!({"machine": {"uuid": MACHINE_UUID, "sources": {"etc": {
        "success": true, "snapshot": "etc_20240110-123456_1a2b", "summary": "Base snapshot: none\n",
        "time_begin": 1_704_890_096.12, "time_end": 1_704_890_196.34}}}});
    let r = post(
        srv.addr,
        "storage_ping_source_update",
        &storage_creds(report),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));

    // No longer due; the log row holds what the storage reported.
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert_eq!(r.json()["machine"]["scheduled_sources"], json!({}));
    {
        let conn = srv.state.db.conn();
        let m = db::machine_by_uuid(&conn, &MACHINE_UUID.replace('-', ""))
            .expect("query")
            .expect("machine");
        let etc = db::sources_of_machine(&conn, &m.id)
            .expect("sources")
            .into_iter()
            .find(|s| s.name == "etc")
            .expect("etc");
        assert!(
            etc.date_last_backed_up.is_some() && etc.date_next_backup > Utc::now() && etc.success
        );
        let logs = db::backup_logs_of_source(&conn, &etc.id).expect("logs");
        assert_eq!(logs.len(), 1);
        assert_eq!(
            logs[0].snapshot.as_deref(),
            Some("etc_20240110-123456_1a2b")
        );
        assert_eq!(
            db::fmt_time(logs[0].date_begin.expect("begin")),
            "2024-01-10 12:34:56.120000"
        );
        assert!(logs[0].success);
    }

    let r = post(srv.addr, "health", &json!({})).await;
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["healthy"], json!(true));
    assert_eq!(
        h["counts"],
        json!({"auth": 2, "storage": 1, "machine": 1, "source": 2, "filter_set": 1, "backup_log": 1})
    );
    let date = h["date"].as_str().expect("date");
    assert!(
        chrono::DateTime::parse_from_rfc3339(date).is_ok() && date.ends_with("+00:00"),
        "{date}"
    );
    assert_eq!(
        r.body,
        format!(
            r#"{{"healthy": true, "date": "{date}", "counts": {{"auth": 2, "storage": 1, "machine": 1, "source": 2, "filter_set": 1, "backup_log": 1}}}}"#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backup_stays_due_and_marks_source_unsuccessful() {
    let srv = registered().await;
    make_due(&srv, "home");
    let report = json!({"machine": {"uuid": MACHINE_UUID, "sources": {"home": {"success": false, "summary": "rsync failed"}}}});
    let r = post(
        srv.addr,
        "storage_ping_source_update",
        &storage_creds(report),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert!(r.json()["machine"]["scheduled_sources"]["home"].is_object());
    // B1: the failure is persisted.
    let conn = srv.state.db.conn();
    let m = db::machine_by_uuid(&conn, &MACHINE_UUID.replace('-', ""))
        .expect("q")
        .expect("m");
    let home = db::sources_of_machine(&conn, &m.id)
        .expect("s")
        .into_iter()
        .find(|s| s.name == "home")
        .expect("home");
    assert!(!home.success && home.date_last_backed_up.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_content_type_json_and_path_rules() {
    let srv = start().await;
    for ep in turku_api_types::constants::endpoint::ALL {
        for method in ["GET", "PUT", "DELETE"] {
            let r = raw(
                srv.addr,
                method,
                &format!("/v1/{ep}"),
                Some("application/json"),
                b"{}",
            )
            .await;
            assert_eq!(r.status, 405, "{method} {ep}");
            assert_eq!(r.header("allow"), Some("POST"));
        }
        for ct in [
            None,
            Some("text/plain"),
            Some("application/jsonx"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let r = raw(srv.addr, "POST", &format!("/v1/{ep}"), ct, b"{}").await;
            assert_eq!(
                (r.status, r.body.as_str()),
                (400, "Bad Content-Type (expected application/json)"),
                "{ct:?}"
            );
            assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        }
        let r = raw(
            srv.addr,
            "POST",
            &format!("/v1/{ep}"),
            Some("application/json"),
            b"{not json",
        )
        .await;
        assert_eq!(r.status, 400, "{ep}");
        assert!(r.body.contains("key must be a string"), "{}", r.body);
        // B12: bodies the original crashed on are 400s (or the endpoint's usual answer).
        for body in [&b"5"[..], b"null", b"[]", b"\"machine\""] {
            let r = raw(
                srv.addr,
                "POST",
                &format!("/v1/{ep}"),
                Some("application/json"),
                body,
            )
            .await;
            assert!(
                r.status == 400 || (ep == "health" && r.status == 200),
                "{ep} {:?} → {}",
                body,
                r.status
            );
        }
    }
    // Parameters on the content type are accepted (deviation: the original wants it exact).
    let r = raw(
        srv.addr,
        "POST",
        "/v1/health",
        Some("application/json; charset=utf-8"),
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200);
    for path in ["/v1/nope", "/v1/health/", "/", "/v2/health"] {
        assert_eq!(
            raw(srv.addr, "POST", path, Some("application/json"), b"{}")
                .await
                .status,
            404,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_config_errors() {
    let srv = start().await;
    let a = srv.addr;
    let cases = [
        (json!({}), 400, r#""machine" dict required"#),
        (json!({"machine": "x"}), 400, r#""machine" dict required"#),
        (
            json!({"machine": {"secret": "s"}}),
            400,
            r#"Missing required machine option "uuid""#,
        ),
        (
            json!({"machine": {"uuid": MACHINE_UUID}}),
            400,
            r#"Missing required machine option "secret""#,
        ),
        (
            json!({"machine": {"uuid": "not-a-uuid", "secret": "s"}}),
            400,
            "Validation error: {'uuid': ['“not-a-uuid” is not a valid UUID.']}",
        ),
        (
            json!({"machine": {"uuid": 7, "secret": "s"}}),
            400,
            "Validation error: {'uuid': ['“7” is not a valid UUID.']}",
        ),
        // Unknown machine without, with bad and with wrong-type registration auth.
        (
            json!({"machine": {"uuid": MACHINE_UUID, "secret": "s"}}),
            403,
            "Bad auth",
        ),
        (
            json!({"auth": "bare string", "machine": {"uuid": MACHINE_UUID, "secret": "s"}}),
            403,
            "Bad auth",
        ),
        (
            json!({"auth": {"name": "Machine Registrations", "secret": "wrong"}, "machine": {"uuid": MACHINE_UUID, "secret": "s"}}),
            403,
            "Bad auth",
        ),
        (
            json!({"auth": {"name": "Storage Registrations", "secret": srv.storage_reg}, "machine": {"uuid": MACHINE_UUID, "secret": "s"}}),
            403,
            "Bad auth",
        ),
        (
            json!({"auth": {"name": "Machine Registrations"}, "machine": {"uuid": MACHINE_UUID, "secret": "s"}}),
            403,
            "Bad auth",
        ),
    ];
    for (body, status, text) in cases {
        let r = post(a, "update_config", &body).await;
        assert_eq!((r.status, r.body.as_str()), (status, text), "{body}");
    }
    // Valid registration but no storage yet.
    let r = post(a, "update_config", &machine_config(&srv, true)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "No storages are currently available")
    );
    assert_eq!(
        post(a, "storage_update_config", &storage_config(&srv, true))
            .await
            .status,
        200
    );

    let auth = json!({"name": "Machine Registrations", "secret": srv.machine_reg});
    let with = |machine: serde_json::Value| json!({"auth": auth, "machine": machine});
    let low_entropy = with(
        json!({"uuid": "00000000-0000-4000-8000-000000000000", "secret": "s", "unit_name": "u", "ssh_public_key": "k"}),
    );
    let r = post(a, "update_config", &low_entropy).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Validation error: {'uuid': ['Invalid UUID format']}")
    );
    let r = post(
        a,
        "update_config",
        &with(json!({"uuid": MACHINE_UUID, "secret": "s", "ssh_public_key": "k"})),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            "Validation error: {'unit_name': ['This field cannot be null.']}"
        )
    );
    let r = post(a, "update_config", &with(json!({"uuid": MACHINE_UUID, "secret": "s", "unit_name": "u", "ssh_public_key": "k", "published": "maybe"}))).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            "Validation error: {'published': ['“maybe” value must be either True or False.']}"
        )
    );

    // Sources of the wrong type: 400, but (as in the original) the machine is registered.
    let mut cfg = machine_config(&srv, true);
    cfg["machine"]["sources"] = json!(["etc"]);
    let r = post(a, "update_config", &cfg).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"Invalid type for "sources""#)
    );
    let r = post(a, "agent_ping_checkin", &agent_creds()).await;
    assert_eq!(r.status, 200, "machine exists after the 400");

    // Wrong secret for an existing machine, even right after a cached success.
    let mut wrong = machine_config(&srv, false);
    wrong["machine"]["secret"] = json!("not-the-secret");
    let r = post(a, "update_config", &wrong).await;
    assert_eq!((r.status, r.body.as_str()), (403, "Bad auth"));

    for (source, msg) in [
        (json!({"path": "/x", "frequency": "daily, 8:00"}), "Validation error: {'frequency': ['invalid time specification \"8:00\" (expected HHMM or HHMM-HHMM)']}"),
        (json!({"path": "/x", "snapshot_mode": "attic"}), "Validation error: {'snapshot_mode': [\"Value 'attic' is not a valid choice.\"]}"),
        (json!({"frequency": "daily"}), "Validation error: {'path': ['This field cannot be null.']}"),
        (json!({"path": "/x", "filter": "- *.tmp"}), "Validation error: {'filter': ['Must be a valid JSON string list']}"),
        (json!({"path": "/x", "exclude": [1]}), "Validation error: {'exclude': ['Must be a valid JSON string list']}"),
        (json!({"path": "/x", "frequency": "cron X X * * *"}), "Validation error: {'frequency': ['invalid cron expression \"X X * * *\": expected 5 to 7 fields, got 5']}"),
        (json!("not an object"), r#"Invalid type for "sources.bad""#),
    ] {
        let mut cfg = machine_config(&srv, false);
        cfg["machine"]["sources"]["bad"] = source.clone();
        let r = post(a, "update_config", &cfg).await;
        assert_eq!(r.status, 400, "{source}");
        if !msg.contains("cron") {
            assert_eq!(r.body, msg, "{source}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_config_changes_sources() {
    let srv = registered().await;
    let conn_sources = |srv: &Server| {
        let conn = srv.state.db.conn();
        let m = db::machine_by_uuid(&conn, &MACHINE_UUID.replace('-', ""))
            .expect("q")
            .expect("m");
        db::sources_of_machine(&conn, &m.id).expect("sources")
    };
    let before = conn_sources(&srv);
    let etc_before = before
        .iter()
        .find(|s| s.name == "etc")
        .expect("etc")
        .clone();

    // Drop "home", change etc's frequency (B15: the new schedule is saved), add "var".
    let mut cfg = machine_config(&srv, false);
    let sources = cfg["machine"]["sources"].as_object_mut().expect("sources");
    sources.remove("home");
    sources.insert("etc".into(), json!({"path": "/etc", "frequency": "cron 0 3 * * *", "exclude": ["*.bak"], "filter": ["merge common", "- *.tmp"]}));
    sources.insert("var".into(), json!({"path": "/var", "frequency": "weekly"}));
    assert_eq!(post(srv.addr, "update_config", &cfg).await.status, 200);
    let after = conn_sources(&srv);
    let etc = after.iter().find(|s| s.name == "etc").expect("etc");
    assert_eq!(etc.frequency, "cron 0 3 * * *");
    assert_ne!(etc.date_next_backup, etc_before.date_next_backup);
    assert_eq!(etc.date_next_backup.format("%H:%M").to_string(), "03:00");
    assert!(
        !after
            .iter()
            .find(|s| s.name == "home")
            .expect("home kept")
            .published
    );
    assert!(
        after
            .iter()
            .find(|s| s.name == "var")
            .expect("var")
            .published
    );

    // Unpublished sources are not handed out, and come back when listed again.
    admin::backup_now(
        &srv.state.db,
        "web-0",
        "home",
        Utc::now() - Duration::seconds(1),
    )
    .expect("due");
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert!(r.json()["machine"]["scheduled_sources"]
        .get("home")
        .is_none());
    assert_eq!(
        post(srv.addr, "update_config", &machine_config(&srv, false))
            .await
            .status,
        200
    );
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert!(r.json()["machine"]["scheduled_sources"]["home"].is_object());

    // An unpublished machine cannot check in, but can republish itself.
    let mut cfg = machine_config(&srv, false);
    cfg["machine"]["published"] = json!(false);
    assert_eq!(post(srv.addr, "update_config", &cfg).await.status, 200);
    let r = post(srv.addr, "agent_ping_checkin", &agent_creds()).await;
    assert_eq!((r.status, r.body.as_str()), (403, "Bad auth"));
    let r = post(srv.addr, "agent_ping_restore", &agent_creds()).await;
    assert_eq!(r.status, 403);
    let r = post(
        srv.addr,
        "storage_update_config",
        &storage_config(&srv, false),
    )
    .await;
    assert_eq!(
        r.body, r#"{"machines": {}}"#,
        "unpublished machines leave authorized keys"
    );
    let mut cfg = machine_config(&srv, false);
    cfg["machine"]
        .as_object_mut()
        .expect("m")
        .remove("published");
    assert_eq!(post(srv.addr, "update_config", &cfg).await.status, 200);
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ping_errors() {
    let srv = registered().await;
    for ep in ["agent_ping_checkin", "agent_ping_restore"] {
        let cases = [
            (json!({}), 400, r#""machine" dict required"#),
            (
                json!({"machine": {"uuid": MACHINE_UUID}}),
                400,
                r#"Missing required machine option "secret""#,
            ),
            (
                json!({"machine": {"uuid": MACHINE_UUID, "secret": "wrong"}}),
                403,
                "Bad auth",
            ),
            (
                json!({"machine": {"uuid": MACHINE_UUID, "secret": 12}}),
                403,
                "Bad auth",
            ),
            (
                json!({"machine": {"uuid": "6f1c3c0e-2b4d-4f4e-8a1b-9d2e7c5a1f00", "secret": MACHINE_SECRET}}),
                403,
                "Bad auth",
            ),
        ];
        for (body, status, text) in cases {
            let r = post(srv.addr, ep, &body).await;
            assert_eq!((r.status, r.body.as_str()), (status, text), "{ep} {body}");
        }
    }
    // Deactivated machines are refused.
    admin::set_machine_active(&srv.state.db, "web-0", false).expect("deactivate");
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_endpoint_errors() {
    let srv = registered().await;
    let m = json!({"machine": {"uuid": MACHINE_UUID}});
    for ep in ["storage_ping_checkin", "storage_ping_source_update"] {
        let cases = [
            (json!({}), 400, r#"Missing required option "storage""#),
            (json!({"storage": {"name": "storage1"}}), 403, "Bad auth"),
            (json!({"storage": "storage1"}), 403, "Bad auth"),
            (
                json!({"storage": {"name": "storage1", "secret": "wrong"}, "machine": {"uuid": MACHINE_UUID}}),
                403,
                "Bad auth",
            ),
            (
                json!({"storage": {"name": "nope", "secret": STORAGE_SECRET}}),
                403,
                "Bad auth",
            ),
            (
                storage_creds(json!({})),
                400,
                r#"Missing required option "machine""#,
            ),
            (
                storage_creds(json!({"machine": {}})),
                400,
                r#"Missing required option "machine.uuid""#,
            ),
            (
                storage_creds(json!({"machine": {"uuid": "6f1c3c0e-2b4d-4f4e-8a1b-9d2e7c5a1f00"}})),
                404,
                "Machine not found",
            ),
        ];
        for (body, status, text) in cases {
            let r = post(srv.addr, ep, &body).await;
            assert_eq!((r.status, r.body.as_str()), (status, text), "{ep} {body}");
        }
    }
    let upd = |sources: serde_json::Value| {
        storage_creds(json!({"machine": {"uuid": MACHINE_UUID, "sources": sources}}))
    };
    let r = post(
        srv.addr,
        "storage_ping_source_update",
        &storage_creds(m.clone()),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"Missing required option "machine.sources""#)
    );
    let r = post(srv.addr, "storage_ping_source_update", &upd(json!(["etc"]))).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"Invalid type for "machine.sources""#)
    );
    let r = post(
        srv.addr,
        "storage_ping_source_update",
        &upd(json!({"nope": {"success": true}})),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (404, "Source not found"));
    let r = post(
        srv.addr,
        "storage_ping_source_update",
        &upd(json!({"etc": {"success": true, "time_begin": "yesterday"}})),
    )
    .await;
    assert_eq!(r.status, 400);

    // A machine on another storage is "not found" for this one.
    let mut other = storage_config(&srv, true);
    other["storage"]["name"] = json!("storage2");
    assert_eq!(
        post(srv.addr, "storage_update_config", &other).await.status,
        200
    );
    let body = json!({"storage": {"name": "storage2", "secret": STORAGE_SECRET}, "machine": {"uuid": MACHINE_UUID}});
    let r = post(srv.addr, "storage_ping_checkin", &body).await;
    assert_eq!((r.status, r.body.as_str()), (404, "Machine not found"));
    // After `move`, it is found there.
    admin::move_machine(&srv.state.db, "web-0", "storage2").expect("move");
    assert_eq!(
        post(srv.addr, "storage_ping_checkin", &body).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_update_config_rules() {
    let srv = start().await;
    // B16: a bare new storage is a validation error, not a crash.
    let bare = json!({"auth": {"name": "Storage Registrations", "secret": srv.storage_reg}, "storage": {"name": "s", "secret": "x"}});
    let r = post(srv.addr, "storage_update_config", &bare).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            "Validation error: {'ssh_ping_host': ['This field cannot be null.']}"
        )
    );
    let mut bad_port = storage_config(&srv, true);
    bad_port["storage"]["ssh_ping_port"] = json!(70_000);
    let r = post(srv.addr, "storage_update_config", &bad_port).await;
    assert_eq!((r.status, r.body.as_str()), (400, "Validation error: {'ssh_ping_port': ['Ensure this value is less than or equal to 65535.']}"));
    let mut keys = storage_config(&srv, true);
    keys["storage"]["ssh_ping_host_keys"] = json!("ssh-ed25519 AAAA");
    assert_eq!(
        post(srv.addr, "storage_update_config", &keys).await.status,
        400
    );
    // No or wrong registration auth.
    assert_eq!(
        post(
            srv.addr,
            "storage_update_config",
            &storage_config(&srv, false)
        )
        .await
        .status,
        403
    );
    let mut wrong = storage_config(&srv, true);
    wrong["auth"]["secret"] = json!("nope");
    assert_eq!(
        post(srv.addr, "storage_update_config", &wrong).await.status,
        403
    );
    let r = post(srv.addr, "storage_update_config", &json!({})).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"Missing required option "storage""#)
    );
    // Register, then a wrong secret for the existing name is refused.
    assert_eq!(
        post(
            srv.addr,
            "storage_update_config",
            &storage_config(&srv, true)
        )
        .await
        .status,
        200
    );
    let mut wrong = storage_config(&srv, false);
    wrong["storage"]["secret"] = json!("nope");
    assert_eq!(
        post(srv.addr, "storage_update_config", &wrong).await.status,
        403
    );
    // Space is truncated to MiB integers and stored.
    let s = db::storage_by_name(&srv.state.db.conn(), "storage1")
        .expect("q")
        .expect("s");
    assert_eq!(
        (s.space_total, s.space_available, s.ssh_ping_port),
        (953_674, 512_000, Some(2222))
    );
    assert_eq!(s.ssh_ping_host_keys, format!(r#"["{HOST_KEY}"]"#));
    // A deactivated storage cannot log in; re-registering its name is a validation error.
    admin::set_storage_active(&srv.state.db, "storage1", false).expect("deactivate");
    let r = post(
        srv.addr,
        "storage_update_config",
        &storage_config(&srv, true),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            "Validation error: {'name': ['Storage with this Name already exists.']}"
        )
    );
    let r = post(
        srv.addr,
        "storage_ping_checkin",
        &storage_creds(json!({"machine": {"uuid": MACHINE_UUID}})),
    )
    .await;
    assert_eq!(r.status, 403);
}

/// A machine imported from the original with a PBKDF2 hash logs in and is rehashed to Argon2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbkdf2_hashes_verify_and_upgrade() {
    use base64::Engine as _;
    let srv = registered().await;
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(MACHINE_SECRET.as_bytes(), b"saltsaltsalt", 1000, &mut out);
    let encoded = format!(
        "pbkdf2_sha256$1000$saltsaltsalt${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    );
    let id = {
        let conn = srv.state.db.conn();
        let m = db::machine_by_uuid(&conn, &MACHINE_UUID.replace('-', ""))
            .expect("q")
            .expect("m");
        db::set_secret_hash(&conn, db::SecretTable::Machine, &m.id, &encoded).expect("set");
        m.id
    };
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        200
    );
    let m = db::machine_by_uuid(&srv.state.db.conn(), &MACHINE_UUID.replace('-', ""))
        .expect("q")
        .expect("m");
    assert_eq!(m.id, id);
    assert!(
        m.secret_hash.starts_with("argon2$argon2id$v=19$"),
        "{}",
        m.secret_hash
    );
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        200
    );
    let mut wrong = agent_creds();
    wrong["machine"]["secret"] = json!("wrong");
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &wrong).await.status,
        403
    );
}

/// The verified-secret cache never lets a changed secret through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_secret_never_hits_the_cache() {
    let srv = registered().await;
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        200
    );
    // An operator replaces the stored hash (new secret "other").
    let new_hash =
        turku_coordinator::secrets::hash("other", srv.state.config.hash_params).expect("hash");
    {
        let conn = srv.state.db.conn();
        let m = db::machine_by_uuid(&conn, &MACHINE_UUID.replace('-', ""))
            .expect("q")
            .expect("m");
        db::set_secret_hash(&conn, db::SecretTable::Machine, &m.id, &new_hash).expect("set");
    }
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &agent_creds())
            .await
            .status,
        403
    );
    let mut other = agent_creds();
    other["machine"]["secret"] = json!("other");
    assert_eq!(
        post(srv.addr, "agent_ping_checkin", &other).await.status,
        200
    );
}

/// Django's `TIME_ZONE`: schedules and the health date follow the server zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_time_zone_applies() {
    let tz: chrono_tz::Tz = "Europe/Helsinki".parse().expect("zone");
    let srv = start_with(turku_coordinator::Config {
        time_zone: tz,
        ..fast_config()
    })
    .await;
    assert_eq!(
        post(
            srv.addr,
            "storage_update_config",
            &storage_config(&srv, true)
        )
        .await
        .status,
        200
    );
    let mut cfg = machine_config(&srv, true);
    cfg["machine"]["sources"] = json!({"etc": {"path": "/etc", "frequency": "daily, 0300"}});
    assert_eq!(post(srv.addr, "update_config", &cfg).await.status, 200);
    {
        let conn = srv.state.db.conn();
        let m = db::machine_by_uuid(&conn, &MACHINE_UUID.replace('-', ""))
            .expect("q")
            .expect("m");
        let etc = &db::sources_of_machine(&conn, &m.id).expect("sources")[0];
        // 03:00 in Helsinki is 01:00Z in winter, 00:00Z in summer.
        let hour = etc.date_next_backup.format("%H:%M:%S").to_string();
        assert!(hour == "01:00:00" || hour == "00:00:00", "{hour}");
    }
    let r = post(srv.addr, "health", &json!({})).await;
    let date = r.json()["date"].as_str().expect("date").to_owned();
    assert!(
        date.ends_with("+02:00") || date.ends_with("+03:00"),
        "{date}"
    );
}

/// Non-ASCII travels as `\uXXXX` escapes, exactly as Python's `json.dumps` writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_is_escaped_like_python() {
    let srv = start().await;
    assert_eq!(
        post(
            srv.addr,
            "storage_update_config",
            &storage_config(&srv, true)
        )
        .await
        .status,
        200
    );
    let mut cfg = machine_config(&srv, true);
    cfg["machine"]["unit_name"] = json!("hôte-😀");
    cfg["machine"]["sources"] = json!({"données": {"path": "/srv/données"}});
    assert_eq!(post(srv.addr, "update_config", &cfg).await.status, 200);
    let r = post(srv.addr, "agent_ping_restore", &agent_creds()).await;
    assert!(
        r.body.starts_with(
            r#"{"machine": {"sources": {"donn\u00e9es": {"path": "/srv/donn\u00e9es", "#
        ),
        "{}",
        r.body
    );
    let r = post(
        srv.addr,
        "storage_update_config",
        &storage_config(&srv, false),
    )
    .await;
    assert!(
        r.body.contains(r#""unit_name": "h\u00f4te-\ud83d\ude00""#),
        "{}",
        r.body
    );
}

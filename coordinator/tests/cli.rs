//! The `turku-api` binary: every management subcommand with its exact output and exit code.

use std::path::Path;
use std::process::{Command, Output};

use chrono::{Duration, Utc};
use serde_json::json;
use turku_coordinator::db::{self, Db};
use turku_coordinator::handlers::handle;
use turku_coordinator::models::{self, BackupLog};
use turku_coordinator::secrets::HashParams;
use turku_coordinator::{AppState, Config};

const UUID: &str = "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11";

fn turku_api(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turku-api"))
        .args(args)
        .env("TURKU_API_DB", db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run turku-api")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Register a storage and a machine with two sources through the handlers.
fn populate(db_path: &Path) {
    let o = turku_api(db_path, &["auth-create", "storage_reg", "--raw"]);
    let storage_reg = stdout(&o).trim().to_owned();
    let o = turku_api(db_path, &["auth-create", "machine_reg", "--raw"]);
    let machine_reg = stdout(&o).trim().to_owned();
    let state = AppState::new(
        Db::open(db_path).expect("db"),
        Config {
            hash_params: HashParams::insecure_fast(),
            ..Config::default()
        },
    );
    let call = |ep: &str, body: serde_json::Value| {
        let r = handle(
            &state,
            ep,
            Some("application/json"),
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status.as_u16(), 200, "{ep}: {}", r.body);
    };
    call(
        "storage_update_config",
        json!({"auth": {"name": "Storage Registrations", "secret": storage_reg},
               "storage": {"name": "s1", "secret": "x", "ssh_ping_host": "h", "ssh_ping_port": 22, "ssh_ping_user": "u"}}),
    );
    call(
        "storage_update_config",
        json!({"auth": {"name": "Storage Registrations", "secret": storage_reg},
               "storage": {"name": "s2", "secret": "x", "ssh_ping_host": "h2", "ssh_ping_port": 22, "ssh_ping_user": "u"}}),
    );
    call(
        "update_config",
        json!({"auth": {"name": "Machine Registrations", "secret": machine_reg},
               "machine": {"uuid": UUID, "secret": "m", "unit_name": "web-0", "ssh_public_key": "ssh-ed25519 AAAA",
                           "sources": {"etc": {"path": "/etc"}, "home": {"path": "/home"}}}}),
    );
}

#[test]
fn auth_create_forms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.sqlite3");
    let o = turku_api(&db, &["auth-create", "machine_reg"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let secret = out
        .strip_prefix("New registration secret created: ")
        .and_then(|r| r.strip_suffix(" (Machine Registrations)\n"))
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    assert_eq!(secret.len(), 30);
    assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
    // The default name is taken now.
    let o = turku_api(&db, &["auth-create", "machine_reg"]);
    assert!(!o.status.success());
    let o = turku_api(
        &db,
        &[
            "auth-create",
            "storage_reg",
            "--name",
            "Lab storages",
            "--raw",
        ],
    );
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim().len(), 30);
    assert!(!turku_api(&db, &["auth-create", "other_reg"])
        .status
        .success());
    // The stored hash is Django's Argon2id form at Django's default cost.
    let conn = Db::open(&db).expect("db");
    let hash: String = conn
        .conn()
        .query_row(
            "SELECT secret_hash FROM turku_api_auth WHERE name = 'Lab storages'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    assert!(
        hash.starts_with("argon2$argon2id$v=19$m=102400,t=2,p=8$"),
        "{hash}"
    );
}

#[test]
fn health_ok_then_critical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.sqlite3");
    let o = turku_api(&db, &["health"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "OK 0 storages, 0 machines, 0 sources\n")
    );
    populate(&db);
    let o = turku_api(&db, &["health"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "OK 2 storages, 1 machines, 2 sources\n")
    );
    // Age everything: registered two days ago, never checked in since, sources overdue.
    {
        let d = Db::open(&db).expect("db");
        let c = d.conn();
        let old = db::fmt_time(Utc::now() - Duration::days(2));
        c.execute("UPDATE turku_api_storage SET date_registered = ?1, date_checked_in = ?1 WHERE name = 's1'", [&old]).expect("u");
        c.execute(
            "UPDATE turku_api_machine SET date_registered = ?1, date_checked_in = NULL",
            [&old],
        )
        .expect("u");
        c.execute(
            "UPDATE turku_api_source SET date_added = ?1, date_next_backup = ?1 WHERE name = 'etc'",
            [&old],
        )
        .expect("u");
    }
    let o = turku_api(&db, &["health"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stdout(&o),
        "CRITICAL 1/2 storages, 1/1 machines, 1/2 sources\n<Storage: s1>\n<Machine: web-0 (0f4b5e0e)>\n<Source: web-0 etc>\n"
    );
}

#[test]
fn clean_logs_deletes_only_old_ended_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("t.sqlite3");
    populate(&db_path);
    let d = Db::open(&db_path).expect("db");
    let source_id: String = d
        .conn()
        .query_row(
            "SELECT id FROM turku_api_source WHERE name = 'etc'",
            [],
            |r| r.get(0),
        )
        .expect("src");
    let now = Utc::now();
    for end in [
        Some(now - Duration::days(40)),
        Some(now - Duration::days(5)),
        None,
    ] {
        let log = BackupLog {
            id: models::new_id(),
            source_id: source_id.clone(),
            date: now,
            storage_id: None,
            success: true,
            date_begin: None,
            date_end: end,
            snapshot: None,
            summary: None,
        };
        db::insert_backup_log(&d.conn(), &log).expect("log");
    }
    drop(d);
    assert!(
        !turku_api(&db_path, &["clean-logs"]).status.success(),
        "--days is required"
    );
    let o = turku_api(&db_path, &["clean-logs", "--days", "30"]);
    assert!(o.status.success());
    let d = Db::open(&db_path).expect("db");
    let left = db::backup_logs_of_source(&d.conn(), &source_id).expect("logs");
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|l| match l.date_end {
        None => true,
        Some(e) => e > now - Duration::days(30),
    }));
}

#[test]
fn backup_now_list_activate_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("t.sqlite3");
    populate(&db_path);
    let o = turku_api(&db_path, &["backup-now", "web-0", "etc"]);
    assert_eq!(stdout(&o), "web-0 (0f4b5e0e) etc is due now\n");
    let o = turku_api(&db_path, &["backup-now", UUID, "home"]);
    assert!(o.status.success());
    assert!(!turku_api(&db_path, &["backup-now", "web-0", "nope"])
        .status
        .success());
    assert!(!turku_api(&db_path, &["backup-now", "web-9", "etc"])
        .status
        .success());
    {
        let d = Db::open(&db_path).expect("db");
        let m = db::machine_by_uuid(&d.conn(), &UUID.replace('-', ""))
            .expect("q")
            .expect("m");
        let due = db::due_sources(&d.conn(), &m.id, Utc::now()).expect("due");
        assert_eq!(
            due.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["etc", "home"]
        );
    }

    let o = turku_api(&db_path, &["list", "machines"]);
    let out = stdout(&o);
    assert!(out.starts_with("UUID\tUNIT\tSTORAGE"), "{out}");
    assert!(
        out.contains(&format!("{UUID}\tweb-0\t")) && out.contains("\tyes\tyes\tyes\n"),
        "{out}"
    );
    let out = stdout(&turku_api(&db_path, &["list", "sources"]));
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = stdout(&turku_api(&db_path, &["list", "storages"]));
    assert!(
        out.contains("s1\th\t22\tu\t") && out.contains("s2\th2\t22\tu\t"),
        "{out}"
    );

    assert_eq!(
        stdout(&turku_api(&db_path, &["deactivate", "machine", "web-0"])),
        "web-0 (0f4b5e0e) deactivated\n"
    );
    assert!(stdout(&turku_api(&db_path, &["list", "machines"])).contains("\tno\tyes\t"));
    assert_eq!(
        stdout(&turku_api(&db_path, &["activate", "machine", UUID])),
        "web-0 (0f4b5e0e) activated\n"
    );
    assert_eq!(
        stdout(&turku_api(&db_path, &["deactivate", "storage", "s2"])),
        "s2 deactivated\n"
    );
    assert!(!turku_api(&db_path, &["deactivate", "storage", "s9"])
        .status
        .success());

    let d = Db::open(&db_path).expect("db");
    let before = db::machine_by_uuid(&d.conn(), &UUID.replace('-', ""))
        .expect("q")
        .expect("m")
        .storage_id;
    drop(d);
    let target = if before == storage_id(&db_path, "s1") {
        "s2"
    } else {
        "s1"
    };
    assert_eq!(
        stdout(&turku_api(&db_path, &["move", "web-0", target])),
        format!("web-0 (0f4b5e0e) moved to {target}\n")
    );
    assert!(
        !turku_api(&db_path, &["move", "web-0", target])
            .status
            .success(),
        "already there"
    );
    let d = Db::open(&db_path).expect("db");
    let after = db::machine_by_uuid(&d.conn(), &UUID.replace('-', ""))
        .expect("q")
        .expect("m")
        .storage_id;
    assert_eq!(after, storage_id(&db_path, target));
}

#[test]
fn set_filterset_feeds_merge_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("t.sqlite3");
    populate(&db_path);
    let o = turku_api(
        &db_path,
        &[
            "set-filterset",
            "common",
            "- *.tmp",
            "+ /etc/",
            "merge common",
        ],
    );
    assert_eq!(stdout(&o), "FilterSet common (3 rules)\n");
    let d = Db::open(&db_path).expect("db");
    assert_eq!(
        db::filterset_rules(&d.conn(), "common")
            .expect("q")
            .as_deref(),
        Some(r#"["- *.tmp", "+ /etc/", "merge common"]"#)
    );
    drop(d);
    let o = turku_api(&db_path, &["set-filterset", "--inactive", "common"]);
    assert_eq!(stdout(&o), "FilterSet common (0 rules, inactive)\n");
    let d = Db::open(&db_path).expect("db");
    assert_eq!(
        db::filterset_rules(&d.conn(), "common").expect("q"),
        None,
        "inactive sets are not expanded"
    );
}

fn storage_id(db_path: &Path, name: &str) -> String {
    let d = Db::open(db_path).expect("db");
    let s = db::storage_by_name(&d.conn(), name)
        .expect("q")
        .expect("storage");
    s.id
}

#[test]
fn serve_answers_on_its_listen_address() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("t.sqlite3");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_turku-api"))
        .args(["serve", "--db"])
        .arg(&db_path)
        .env("TURKU_API_LISTEN", &addr)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn");
    let mut response = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let req = "POST /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            s.write_all(req.as_bytes()).expect("write");
            s.read_to_string(&mut response).expect("read");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGTERM (what systemd sends) shuts it down cleanly.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().expect("wait") {
            exited = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    assert!(
        exited.is_some_and(|s| s.success()),
        "serve did not exit cleanly on SIGTERM: {exited:?}"
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""counts": {"auth": 0, "storage": 0, "machine": 0, "source": 0, "filter_set": 0, "backup_log": 0}"#));
}

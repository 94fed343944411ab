//! The `/v1` client of `turku-api-types` against the real coordinator binary (`turku-api
//! serve` on an ephemeral 127.0.0.1 port): a storage and a machine register, the storage
//! sees the machine's key, a due source is reported and advances, and a wrong storage secret
//! is a typed 403 carrying the coordinator's message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use turku_api_types::client::{ApiClient, ApiError, ApiErrorKind, ClientOptions};
use turku_api_types::constants::{defaults, error_body};
use turku_api_types::v1::{
    AuthCredentials, MachineConfig, MachineRef, MachineSourceReports, SourceConfig, SourceReport,
    StorageConfig, StorageCredentials, StoragePingCheckinRequest, StoragePingSourceUpdateRequest,
    StorageUpdateConfigRequest, UpdateConfigRequest,
};

const UUID: &str = "0f4b5e0e-6d1f-4c8e-9a65-3f0c2b7d9e11";
const STORAGE_SECRET: &str = "storage-secret-1";
const MACHINE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxUdRe0FRz8SELy3nByH8ZR7jc0rjXoUTbL0hGsrwYx turku";
/// Bound on building the coordinator when the workspace build has not (a cold build).
const BUILD_BOUND: Duration = Duration::from_secs(900);
/// Bound on the coordinator starting to answer.
const START_BOUND: Duration = Duration::from_secs(30);
/// Bound on one management command.
const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// Wait for `child` with a bound; kill it and fail when the bound passes.
fn wait_bounded(mut child: Child, bound: Duration, what: &str) -> Output {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout: reader.join().expect("stdout reader"),
        stderr,
    }
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        let t = if meta.is_dir() {
            newest_mtime(&entry.path())
        } else {
            meta.modified().expect("mtime")
        };
        newest = newest.max(t);
    }
    newest
}

/// The `turku-api` binary. `cargo test --workspace` has just built it next to our own
/// executable; when it is missing or older than its sources (this crate tested alone), cargo
/// builds it. Building it always would compile its dependencies a second time with the
/// feature set of one package instead of the workspace's.
fn turku_api_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let own = std::env::current_exe().expect("current_exe");
    let profile_dir = own
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let built = profile_dir.join("turku-api");
    let sources = [
        root.join("coordinator"),
        root.join("api/src"),
        root.join("api/Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    let newest_source = sources
        .iter()
        .map(|p| {
            if p.is_dir() {
                newest_mtime(p)
            } else {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .expect("mtime")
            }
        })
        .max()
        .expect("sources");
    if let Ok(t) = std::fs::metadata(&built).and_then(|m| m.modified()) {
        if t >= newest_source {
            return built;
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let child = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "-p",
            "turku-coordinator",
            "--bin",
            "turku-api",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run cargo build");
    let out = wait_bounded(child, BUILD_BOUND, "cargo build -p turku-coordinator");
    assert!(out.status.success(), "building turku-api failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "turku-api")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no turku-api executable")
}

/// `turku-api serve`, killed when dropped.
struct Coordinator {
    child: Child,
    binary: PathBuf,
    db: PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    fn start() -> Self {
        let binary = turku_api_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("turku.sqlite3");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("probe port")
            .port();
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
        let child = Command::new(&binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(&db)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn turku-api serve");
        let coordinator = Self {
            child,
            binary,
            db,
            url: format!("http://127.0.0.1:{port}/v1/"),
            _dir: dir,
        };
        let probe = ApiClient::new(
            &coordinator.url,
            ClientOptions {
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                ..ClientOptions::default()
            },
        )
        .expect("client");
        let deadline = Instant::now() + START_BOUND;
        loop {
            match probe.health() {
                Ok(h) => {
                    assert!(h.healthy);
                    break;
                }
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!(
                    "turku-api serve did not answer: {e:?}; log: {}",
                    std::fs::read_to_string(coordinator._dir.path().join("serve.log"))
                        .unwrap_or_default()
                ),
            }
        }
        coordinator
    }

    /// A management command against the same database; its stdout.
    fn manage(&self, args: &[&str]) -> String {
        let child = Command::new(&self.binary)
            .args(args)
            .arg("--db")
            .arg(&self.db)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn turku-api");
        let out = wait_bounded(child, COMMAND_BOUND, &format!("turku-api {args:?}"));
        assert!(
            out.status.success(),
            "turku-api {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

fn storage_credentials(secret: &str) -> StorageCredentials {
    StorageCredentials {
        name: "primary".into(),
        secret: secret.into(),
    }
}

fn storage_config() -> StorageConfig {
    StorageConfig {
        name: "primary".into(),
        secret: STORAGE_SECRET.into(),
        ssh_ping_host: Some("127.0.0.1".into()),
        ssh_ping_port: Some(2222),
        ssh_ping_user: Some("turku-ping".into()),
        ssh_ping_host_keys: Some(vec!["ssh-ed25519 AAAAhostkey root@storage".into()]),
        space_total: Some(1000.0),
        space_available: Some(500.0),
        ..StorageConfig::default()
    }
}

fn checkin(client: &ApiClient, secret: &str) -> Result<Vec<String>, ApiError> {
    let reply = client.storage_ping_checkin(&StoragePingCheckinRequest {
        storage: storage_credentials(secret),
        machine: MachineRef { uuid: UUID.into() },
    })?;
    assert_eq!(reply.machine.uuid, UUID);
    assert_eq!(reply.machine.unit_name, "web-0");
    for source in reply.machine.scheduled_sources.values() {
        assert_eq!(source.storage.name, "primary");
        assert_eq!(source.storage.ssh_ping_port, 2222);
    }
    Ok(reply.machine.scheduled_sources.keys().cloned().collect())
}

#[test]
fn storage_and_machine_lifecycle_against_the_real_coordinator() {
    let coordinator = Coordinator::start();
    let storage_reg = coordinator
        .manage(&["auth-create", "storage_reg", "--raw"])
        .trim()
        .to_owned();
    let machine_reg = coordinator
        .manage(&["auth-create", "machine_reg", "--raw"])
        .trim()
        .to_owned();
    let client = ApiClient::new(
        &coordinator.url,
        ClientOptions {
            // Argon2 on a loaded 2-core machine: generous, and still bounded.
            request_timeout: Duration::from_secs(60),
            ..ClientOptions::default()
        },
    )
    .expect("client");

    // The storage registers with its registration secret; no machines yet.
    let reply = client
        .storage_update_config(&StorageUpdateConfigRequest {
            auth: Some(AuthCredentials {
                name: defaults::STORAGE_AUTH_NAME.into(),
                secret: storage_reg,
            }),
            storage: storage_config(),
        })
        .expect("storage registration");
    assert!(reply.machines.is_empty(), "{reply:?}");

    // The machine registers with one source and lands on the only storage.
    let sources = BTreeMap::from([(
        "etc".to_owned(),
        SourceConfig {
            path: Some("/etc".into()),
            frequency: Some("daily".into()),
            exclude: Some(vec!["*.tmp".into()]),
            ..SourceConfig::default()
        },
    )]);
    client
        .update_config(&UpdateConfigRequest {
            auth: Some(AuthCredentials {
                name: defaults::MACHINE_AUTH_NAME.into(),
                secret: machine_reg,
            }),
            machine: MachineConfig {
                uuid: UUID.into(),
                secret: "machine-secret-1".into(),
                unit_name: Some("web-0".into()),
                ssh_public_key: Some(MACHINE_KEY.into()),
                sources,
                ..MachineConfig::default()
            },
        })
        .expect("machine registration");

    // The storage now sees the machine and the key it must authorise.
    let reply = client
        .storage_update_config(&StorageUpdateConfigRequest {
            auth: None,
            storage: storage_config(),
        })
        .expect("storage refresh");
    let machine = reply.machines.get(UUID).expect("the machine is listed");
    assert_eq!(machine.ssh_public_key, MACHINE_KEY);
    assert_eq!(machine.unit_name, "web-0");

    // A new source waits for its first slot; make it due now.
    assert_eq!(
        checkin(&client, STORAGE_SECRET).expect("checkin"),
        Vec::<String>::new()
    );
    coordinator.manage(&["backup-now", UUID, "etc"]);
    assert_eq!(
        checkin(&client, STORAGE_SECRET).expect("checkin"),
        ["etc"],
        "the source is scheduled"
    );

    // A successful report moves it to its next slot: no longer due.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    client
        .storage_ping_source_update(&StoragePingSourceUpdateRequest {
            storage: storage_credentials(STORAGE_SECRET),
            machine: MachineSourceReports {
                uuid: UUID.into(),
                sources: BTreeMap::from([(
                    "etc".to_owned(),
                    SourceReport {
                        success: true,
                        snapshot: Some("etc_20240110-123456_1a2b".into()),
                        summary: Some("Base snapshot: none\n".into()),
                        time_begin: Some(now - 5.0),
                        time_end: Some(now),
                    },
                )]),
            },
        })
        .expect("source update");
    assert_eq!(
        checkin(&client, STORAGE_SECRET).expect("checkin"),
        Vec::<String>::new(),
        "a reported source is no longer due"
    );

    // A wrong storage secret: a typed refusal with the coordinator's own words, and no
    // trace of the secret that was sent.
    let e = checkin(&client, "wrong-secret-xyz").expect_err("a wrong secret must be refused");
    match &e {
        ApiError::Status {
            status,
            message,
            endpoint,
            ..
        } => {
            assert_eq!(*status, 403);
            assert_eq!(message, error_body::BAD_AUTH);
            assert_eq!(endpoint, "storage_ping_checkin");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.kind(), ApiErrorKind::Refused);
    assert!(e.is_refused() && !e.is_unavailable());
    assert!(!format!("{e} {e:?}").contains("wrong-secret-xyz"));
}

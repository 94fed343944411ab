//! The programs as separate processes: the workspace's binaries, bounded waits, and the
//! real coordinator (`turku-api serve`) on an ephemeral loopback port.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use turku_api_types::client::{ApiClient, ClientOptions};

/// Bound on building a binary when the workspace build has not (a cold build).
const BUILD_BOUND: Duration = Duration::from_secs(900);
/// Bound on the coordinator starting to answer.
const START_BOUND: Duration = Duration::from_secs(30);
/// Bound on one management command.
const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// Waits for `child` with a bound, collecting its piped output; kills it and fails when
/// the bound passes.
pub fn wait_bounded(mut child: Child, bound: Duration, what: &str) -> Output {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    };
    let out_reader = drain(stdout.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err_reader = drain(stderr.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
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
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
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

/// A workspace binary. `cargo test --workspace` has just built it next to the running test
/// executable; when it is missing or older than `sources` (folders or files relative to the
/// workspace root: a crate tested alone), cargo builds it. Building it always would compile
/// its dependencies a second time with the features of a one-package build.
pub fn workspace_binary(package: &str, bin: &str, sources: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let own = std::env::current_exe().expect("current_exe");
    let profile_dir = own
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let built = profile_dir.join(bin);
    let newest_source = sources
        .iter()
        .chain(["Cargo.lock"].iter())
        .map(|rel| {
            let p = root.join(rel);
            if p.is_dir() {
                newest_mtime(&p)
            } else {
                std::fs::metadata(&p)
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
            package,
            "--bin",
            bin,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run cargo build");
    let out = wait_bounded(child, BUILD_BOUND, &format!("cargo build -p {package}"));
    assert!(out.status.success(), "building {bin} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
}

/// The coordinator binary.
pub fn turku_api_binary() -> PathBuf {
    workspace_binary(
        "turku-coordinator",
        "turku-api",
        &["coordinator", "api/src", "api/Cargo.toml"],
    )
}

/// The storage binary.
pub fn turku_storage_binary() -> PathBuf {
    workspace_binary(
        "turku-storage",
        "turku-storage",
        &[
            "sshd",
            "store/src",
            "store/Cargo.toml",
            "proto-rsync/src",
            "proto-rsync/Cargo.toml",
            "api/src",
            "api/Cargo.toml",
        ],
    )
}

/// A free loopback port (free when probed; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port()
}

/// `turku-api serve` on 127.0.0.1, killed when dropped.
pub struct Coordinator {
    child: Option<Child>,
    pub binary: PathBuf,
    pub db: PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:PORT/v1/`
    pub url: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("url", &self.url)
            .finish()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Coordinator {
    pub fn start() -> Self {
        let binary = turku_api_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("turku.sqlite3");
        let port = free_port();
        let mut coordinator = Self {
            child: None,
            binary,
            db,
            port,
            url: format!("http://127.0.0.1:{port}/v1/"),
            dir,
        };
        coordinator.restart();
        coordinator
    }

    /// Kills the server (the database stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and database.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("serve.log")).expect("log");
        let child = Command::new(&self.binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--db",
            ])
            .arg(&self.db)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn turku-api serve");
        self.child = Some(child);
        let probe = ApiClient::new(
            &self.url,
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
                    return;
                }
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!(
                    "turku-api serve did not answer: {e:?}; log: {}",
                    std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
                ),
            }
        }
    }

    /// A client with a generous per-request bound (argon2 on a loaded 2-core machine).
    pub fn client(&self) -> ApiClient {
        ApiClient::new(
            &self.url,
            ClientOptions {
                request_timeout: Duration::from_secs(60),
                ..ClientOptions::default()
            },
        )
        .expect("client")
    }

    /// A management command against the same database; its stdout.
    pub fn manage(&self, args: &[&str]) -> String {
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

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
    // A bench runs from target/release: it must get (and time) a release binary.
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
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
        .args(release.then_some("--release"))
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

/// Our agent binary (`agent/`).
pub fn turku_agent_binary() -> PathBuf {
    workspace_binary(
        "turku-agent",
        "turku-agent",
        &["agent", "api/src", "api/Cargo.toml"],
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
    machine_registration: std::sync::OnceLock<String>,
    storage_registration: std::sync::OnceLock<String>,
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
            machine_registration: std::sync::OnceLock::new(),
            storage_registration: std::sync::OnceLock::new(),
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

    /// The machine registration secret (created on first use, under the default name).
    pub fn machine_registration(&self) -> String {
        self.machine_registration
            .get_or_init(|| {
                self.manage(&["auth-create", "machine_reg", "--raw"])
                    .trim()
                    .to_owned()
            })
            .clone()
    }

    /// The storage registration secret (created on first use, under the default name).
    pub fn storage_registration(&self) -> String {
        self.storage_registration
            .get_or_init(|| {
                self.manage(&["auth-create", "storage_reg", "--raw"])
                    .trim()
                    .to_owned()
            })
            .clone()
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

/// Bound on the storage daemon starting to listen.
const DAEMON_START_BOUND: Duration = Duration::from_secs(60);
/// Bound on one agent ping (a whole session with its backups) in the tests.
pub const PING_BOUND: Duration = Duration::from_secs(180);

/// `turku-storage serve` with its own config dir, volume and var dir, registered with
/// `coordinator`; killed when dropped.
pub struct StorageDaemon {
    child: Option<Child>,
    pub binary: PathBuf,
    pub config_dir: PathBuf,
    pub store: PathBuf,
    pub var_dir: PathBuf,
    /// The SSH port agents connect to (kept across restarts).
    pub port: u16,
    pub name: String,
    pub ping_user: String,
    log: PathBuf,
    /// Extra environment of every start (test hooks such as the store's clock file).
    env: Vec<(String, std::ffi::OsString)>,
    /// Holds the config, volume and var dir until the daemon is dropped.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for StorageDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageDaemon")
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

impl StorageDaemon {
    /// A storage named `name` with the original's keys plus ours; `overrides` (a JSON
    /// object) is merged over the generated config, for limits and timers.
    pub fn start(coordinator: &Coordinator, name: &str, overrides: serde_json::Value) -> Self {
        Self::start_with_env(coordinator, name, overrides, &[])
    }

    /// [`StorageDaemon::start`] with `env` added to the daemon's environment at every
    /// (re)start.
    pub fn start_with_env(
        coordinator: &Coordinator,
        name: &str,
        overrides: serde_json::Value,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let binary = turku_storage_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let config_dir = dir.path().join("etc");
        let volume = dir.path().join("volume");
        let var_dir = dir.path().join("var");
        for d in [config_dir.join("config.d"), volume.clone(), var_dir.clone()] {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        let registration = coordinator.storage_registration();
        let port = free_port();
        let ping_user = "turku-ping".to_owned();
        let mut config = serde_json::json!({
            "name": name,
            "secret": storage_secret(name),
            "api_url": coordinator.url.trim_end_matches('/'),
            "api_auth_name": turku_api_types::constants::defaults::STORAGE_AUTH_NAME,
            "api_auth_secret": registration,
            "volumes": {"primary": {"path": volume}},
            "var_dir": var_dir,
            "lock_dir": dir.path(),
            "ssh_ping_host": "127.0.0.1",
            "ssh_ping_port": port,
            "ssh_ping_user": ping_user,
            "listen": format!("127.0.0.1:{port}"),
            "log_file": "",
        });
        // The store follows a `store` override (a small volume for full-disk tests).
        let store = overrides
            .get("store")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| volume.join("turku-store"), PathBuf::from);
        if let (Some(config), serde_json::Value::Object(extra)) =
            (config.as_object_mut(), overrides)
        {
            config.extend(extra);
        }
        std::fs::write(
            config_dir.join("config.d/10-storage.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("write config");
        let mut daemon = StorageDaemon {
            child: None,
            binary,
            config_dir,
            store,
            var_dir,
            port,
            name: name.to_owned(),
            ping_user,
            log: dir.path().join("serve.log"),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            _dir: dir,
        };
        daemon.restart();
        daemon
    }

    /// Starts the daemon (again), appending to its log; returns once it listens.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut child = Command::new(&self.binary)
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("serve")
            .env("TURKU_LOG", "info")
            .env_remove("TURKU_STORE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn turku-storage serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        self.child = Some(child);
        let first_refreshes = self.first_refreshes();
        match rx.recv_timeout(DAEMON_START_BOUND) {
            Ok(line) if line.starts_with("listening on ") => {}
            other => panic!(
                "turku-storage serve did not start ({other:?}); log:\n{}",
                self.log()
            ),
        }
        // The first registration runs beside the listener; the tests want it done (or
        // failed), as a storage that has run for a while would be.
        let deadline = Instant::now() + DAEMON_START_BOUND;
        while self.first_refreshes() == first_refreshes {
            assert!(
                Instant::now() < deadline,
                "the daemon did not try to register; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many first registrations (successful or not) the log shows.
    fn first_refreshes(&self) -> usize {
        let log = self.log();
        log.matches("registered with the coordinator").count()
            + log
                .matches("cannot register with the coordinator yet")
                .count()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's published host key line (what agents pin).
    pub fn host_key_line(&self) -> String {
        std::fs::read_to_string(self.var_dir.join("host_keys/ssh_host_ed25519_key.pub"))
            .expect("host key")
            .trim()
            .to_owned()
    }

    /// A `turku-storage -c CONFIG_DIR ARGS...` command for this daemon, not yet started
    /// (`restore` finds the daemon's control socket through the configuration).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--config-dir")
            .arg(&self.config_dir)
            .args(args)
            .env_remove("RSYNC_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// A `turku-storage --store STORE ARGS...` command on this daemon's store, run to its
    /// end within a bound.
    pub fn store_command(&self, args: &[&str]) -> Output {
        let child = Command::new(&self.binary)
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn turku-storage");
        wait_bounded(
            child,
            Duration::from_secs(300),
            &format!("turku-storage {args:?}"),
        )
    }

    /// The store's snapshots of `machine`/`source`, oldest first (their names).
    pub fn snapshots(&self, machine: &str, source: &str) -> Vec<String> {
        let out = self.store_command(&[
            "snapshots",
            "--machine",
            machine,
            "--source",
            source,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        list.as_array()
            .expect("a list")
            .iter()
            .map(|s| s["name"].as_str().expect("name").to_owned())
            .collect()
    }

    /// `verify` of the whole store must find nothing.
    pub fn assert_verifies_clean(&self) {
        let out = self.store_command(&["verify"]);
        assert!(
            out.status.success(),
            "verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Exports a snapshot to a fresh directory and returns it.
    pub fn export(&self, machine: &str, source: &str, snapshot: &str) -> tempfile::TempDir {
        let out_dir = tempfile::tempdir().expect("tempdir");
        let to = out_dir.path().join("tree");
        let out = self.store_command(&[
            "export",
            "--machine",
            machine,
            "--source",
            source,
            "--snapshot",
            snapshot,
            "--to",
            to.to_str().expect("utf-8 path"),
        ]);
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_dir
    }
}

/// A machine as the original Python agent drives a backup: its SSH key, its registration
/// with the coordinator, a private stock `rsync --daemon` with per-session credentials and
/// stock `ssh -R` with the original's arguments.
pub struct TestAgent {
    pub uuid: String,
    pub unit_name: String,
    pub key: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAgent")
            .field("uuid", &self.uuid)
            .finish()
    }
}

/// A random canonical uuid4 that passes the coordinator's entropy rule (the balance of ones
/// and zeros in its random bits: about 1 in 60 random uuid4s fails it, and the original
/// agent's registration would be refused with them).
pub fn random_uuid() -> String {
    loop {
        let candidate = any_uuid4();
        if balanced(&candidate) {
            return candidate;
        }
    }
}

fn balanced(uuid: &str) -> bool {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let bits = u128::from_str_radix(&hex, 16).expect("hex");
    let positions = (0..48).chain(52..64).chain(67..128);
    let (ones, total) = positions.fold((0u32, 0u32), |(ones, total), pos| {
        (ones + ((bits >> (127 - pos)) & 1) as u32, total + 1)
    });
    let p = f64::from(ones) / f64::from(total);
    let h = |x: f64| if x > 0.0 { -x * x.log2() } else { 0.0 };
    h(p) + h(1.0 - p) >= 0.95
}

fn any_uuid4() -> String {
    let mut b = [0u8; 16];
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
            .to_le_bytes(),
    );
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(
        &COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .to_le_bytes(),
    );
    h.finalize_xof().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl TestAgent {
    /// Generates a key and registers the machine with `sources` (name, path) on the
    /// coordinator; the storage then learns the key at its next refresh (or at once, when
    /// the key first knocks).
    pub fn register(coordinator: &Coordinator, unit_name: &str, sources: &[(&str, &Path)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ssh_key");
        generate_key(&key, "turku");
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
        let registration = coordinator.machine_registration();
        let uuid = random_uuid();
        let sources = sources
            .iter()
            .map(|(name, path)| {
                (
                    (*name).to_owned(),
                    turku_api_types::v1::SourceConfig {
                        path: Some(path.display().to_string()),
                        frequency: Some("daily".into()),
                        ..Default::default()
                    },
                )
            })
            .collect();
        coordinator
            .client()
            .update_config(&turku_api_types::v1::UpdateConfigRequest {
                auth: Some(turku_api_types::v1::AuthCredentials {
                    name: turku_api_types::constants::defaults::MACHINE_AUTH_NAME.into(),
                    secret: registration,
                }),
                machine: turku_api_types::v1::MachineConfig {
                    uuid: uuid.clone(),
                    secret: format!("machine-secret-{uuid}"),
                    unit_name: Some(unit_name.into()),
                    ssh_public_key: Some(public.trim().to_owned()),
                    sources,
                    ..Default::default()
                },
            })
            .expect("machine registration");
        TestAgent {
            uuid,
            unit_name: unit_name.to_owned(),
            key,
            dir,
        }
    }

    /// Makes `source` due now.
    pub fn make_due(&self, coordinator: &Coordinator, source: &str) {
        coordinator.manage(&["backup-now", &self.uuid, source]);
    }

    /// The agent's private rsync daemon for `sources`, configured as the original agent
    /// writes it (fresh credentials per source). `daemon_args` go on its command line
    /// (e.g. `--bwlimit=200` to make a transfer slow enough to interrupt).
    pub fn start_rsyncd(&self, sources: &[(&str, &Path)], daemon_args: &[&str]) -> AgentRsyncd {
        Self::launch_rsyncd(sources, daemon_args, true)
    }

    /// The agent's rsync daemon in restore mode, as the original writes it: only the
    /// writable `turku-restore` module at `restore_path`, with fresh credentials.
    pub fn start_restore_rsyncd(&self, restore_path: &Path) -> AgentRsyncd {
        Self::launch_rsyncd(&[("turku-restore", restore_path)], &[], false)
    }

    fn launch_rsyncd(
        sources: &[(&str, &Path)],
        daemon_args: &[&str],
        read_only: bool,
    ) -> AgentRsyncd {
        let rsync = crate::require_binary("rsync");
        let port = free_port();
        let conf_dir = tempfile::tempdir().expect("tempdir");
        let secrets_path = conf_dir.path().join("secrets");
        let mut conf = format!("address = 127.0.0.1\nport = {port}\nlog file = /dev/null\n");
        if crate::is_root() {
            conf.push_str("uid = root\ngid = *\n");
        } else {
            conf.push_str("use chroot = no\n");
        }
        conf.push_str("list = false\n\n");
        let mut credentials = Vec::new();
        let mut secrets = String::new();
        for (i, (name, path)) in sources.iter().enumerate() {
            let user = random_uuid();
            let password: String = random_uuid().replace('-', "")[..30].to_owned();
            conf.push_str(&format!(
                "[{name}]\n    path = {}\n    auth users = {user}\n    secrets file = {}\n    read only = {read_only}\n\n",
                path.display(),
                secrets_path.display()
            ));
            secrets.push_str(&format!("{user}:{password}\n"));
            credentials.push(((*name).to_owned(), user, password));
            let _ = i;
        }
        std::fs::write(&secrets_path, secrets).expect("secrets");
        let conf_path = conf_dir.path().join("rsyncd.conf");
        std::fs::write(&conf_path, conf).expect("rsyncd.conf");
        for p in [&secrets_path, &conf_path] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let child = Command::new(rsync)
            .args(["--no-detach", "--daemon"])
            .args(daemon_args)
            .arg(format!("--config={}", conf_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsync --daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent's rsync daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        AgentRsyncd {
            port,
            credentials,
            child,
            _dir: conf_dir,
        }
    }

    /// The ping request the original agent writes: JSON, a newline, `.`, a newline.
    pub fn request(&self, rsyncd: &AgentRsyncd, action: &str) -> String {
        let sources: serde_json::Map<String, serde_json::Value> = rsyncd
            .credentials
            .iter()
            .map(|(name, user, password)| {
                (
                    name.clone(),
                    serde_json::json!({"username": user, "password": password}),
                )
            })
            .collect();
        let request = serde_json::json!({
            "verbose": true, "action": action, "port": rsyncd.port, "sources": sources,
        });
        format!("{request}\n.\n")
    }

    /// The restore-mode request the original agent writes: no sources.
    pub fn restore_request(&self, rsyncd: &AgentRsyncd) -> String {
        let request =
            serde_json::json!({"verbose": true, "action": "restore", "port": rsyncd.port});
        format!("{request}\n.\n")
    }

    /// `ssh` with the original agent's arguments: `-R P:127.0.0.1:P` to `storage`, the host
    /// key pinned. `extra` goes before the host (more `-o`, `-L`, ...). Not yet started.
    pub fn ssh_command(
        &self,
        storage: &StorageDaemon,
        forward_port: u16,
        extra: &[&str],
    ) -> Command {
        let known_hosts = self.dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{} {}\n", storage.port, storage.host_key_line()),
        )
        .expect("known_hosts");
        let mut ssh = Command::new(crate::require_binary("ssh"));
        ssh.arg("-T")
            .args(["-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "CheckHostIP=no"])
            .arg("-i")
            .arg(&self.key)
            .arg("-R")
            .arg(format!("{forward_port}:127.0.0.1:{forward_port}"))
            .args(["-p", &storage.port.to_string(), "-l", &storage.ping_user])
            .args(extra)
            .args(["127.0.0.1", "turku-ping-remote"])
            .env_remove("SSH_AUTH_SOCK");
        ssh
    }

    /// One whole ping as the original agent runs it: the request on stdin (left open until
    /// the storage ends the session), wait for ssh.
    pub fn ping(&self, storage: &StorageDaemon, rsyncd: &AgentRsyncd) -> Output {
        let request = self.request(rsyncd, "checkin");
        self.ping_with(storage, rsyncd.port, &request, &[])
    }

    /// A ping with any stdin text and extra ssh arguments.
    pub fn ping_with(
        &self,
        storage: &StorageDaemon,
        forward_port: u16,
        stdin: &str,
        extra: &[&str],
    ) -> Output {
        let mut child = self
            .ssh_command(storage, forward_port, extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh");
        // The original writes its request and keeps stdin open; the storage ends the session.
        hold_stdin(&mut child, stdin);
        wait_bounded(child, PING_BOUND, "ssh ping")
    }

    /// Starts a ping and returns at once, the request written and stdin kept in the child
    /// (drop it to end a restore session), its output piped.
    pub fn spawn_ping(&self, storage: &StorageDaemon, rsyncd: &AgentRsyncd, action: &str) -> Child {
        let request = if action == "restore" {
            self.restore_request(rsyncd)
        } else {
            self.request(rsyncd, action)
        };
        self.spawn_ping_with(storage, rsyncd, &request)
    }

    fn spawn_ping_with(
        &self,
        storage: &StorageDaemon,
        rsyncd: &AgentRsyncd,
        request: &str,
    ) -> Child {
        use std::io::Write;
        let mut child = self
            .ssh_command(storage, rsyncd.port, &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh");
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(request.as_bytes())
            .expect("write the request");
        stdin.flush().expect("flush the request");
        child
    }
}

/// The agent's rsync daemon, stopped when dropped.
pub struct AgentRsyncd {
    pub port: u16,
    /// (source, username, password) as the request carries them.
    pub credentials: Vec<(String, String, String)>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for AgentRsyncd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRsyncd")
            .field("port", &self.port)
            .finish()
    }
}

impl AgentRsyncd {
    /// The daemon's pid (it forks a child per connection).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentRsyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secret a test storage named `name` is configured with.
pub fn storage_secret(name: &str) -> String {
    format!("{name}-secret-0123456789")
}

/// A fresh ed25519 key pair at `path` (and `path.pub`) with `comment`.
pub fn generate_key(path: &Path, comment: &str) {
    let out = Command::new(crate::require_binary("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen failed");
}

/// Writes `text` to the child's stdin from a thread (a refusing peer may stop reading) and
/// keeps stdin open afterwards, as the original agent does, until [`PING_BOUND`] passes.
pub fn hold_stdin(child: &mut Child, text: &str) {
    let mut input = child.stdin.take().expect("stdin");
    let text = text.as_bytes().to_vec();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&text);
        let _ = input.flush();
        std::thread::sleep(PING_BOUND);
        drop(input);
    });
}

/// A process's standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The ping exited 0.
pub fn assert_ping_ok(out: &Output) {
    assert!(
        out.status.success(),
        "ssh exit {:?}: {}",
        out.status,
        stderr(out)
    );
}

/// `(success, snapshot, summary)` of the machine's backup logs, oldest first, read from the
/// coordinator's database.
pub fn backup_logs(
    coordinator: &Coordinator,
    uuid: &str,
) -> Vec<(bool, Option<String>, Option<String>)> {
    let db = rusqlite::Connection::open(&coordinator.db).expect("coordinator db");
    let mut stmt = db
        .prepare(
            "SELECT l.success, l.snapshot, l.summary FROM turku_api_backuplog l \
             JOIN turku_api_source s ON l.source_id = s.id \
             JOIN turku_api_machine m ON s.machine_id = m.id \
             WHERE m.uuid = ?1 OR m.uuid = replace(?1, '-', '') ORDER BY l.date_end, l.date",
        )
        .expect("prepare");
    stmt.query_map([uuid], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("query")
        .map(|row| row.expect("row"))
        .collect()
}

/// Which of the machine's sources the coordinator says are due now (asked as `storage`).
pub fn due(coordinator: &Coordinator, storage: &StorageDaemon, uuid: &str) -> Vec<String> {
    let reply = coordinator
        .client()
        .storage_ping_checkin(&turku_api_types::v1::StoragePingCheckinRequest {
            storage: turku_api_types::v1::StorageCredentials {
                name: storage.name.clone(),
                secret: storage_secret(&storage.name),
            },
            machine: turku_api_types::v1::MachineRef { uuid: uuid.into() },
        })
        .expect("storage_ping_checkin");
    reply.machine.scheduled_sources.keys().cloned().collect()
}

/// Waits (bounded) until `cond` holds.
pub fn eventually(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A machine running our agent: its config dir, var dir, lock dir, restore path and a
/// private TMPDIR (so the test sees every temp file the agent makes).
#[derive(Debug)]
pub struct Agent {
    pub binary: PathBuf,
    pub etc: PathBuf,
    pub var: PathBuf,
    pub lock: PathBuf,
    pub tmp: PathBuf,
    pub restore: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn new(coordinator: &Coordinator, sources: serde_json::Value) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (etc, var, lock, tmp, restore) = (
            root.join("etc"),
            root.join("var"),
            root.join("lock"),
            root.join("tmp"),
            root.join("restore"),
        );
        for d in [
            etc.join("config.d"),
            etc.join("sources.d"),
            lock.clone(),
            tmp.clone(),
            restore.clone(),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let agent = Agent {
            binary: turku_agent_binary(),
            etc,
            var,
            lock,
            tmp,
            restore,
            _dir: dir,
        };
        agent.write_test_config(coordinator);
        std::fs::write(
            agent.etc.join("sources.d/10-sources.json"),
            serde_json::to_vec_pretty(&sources).unwrap(),
        )
        .unwrap();
        agent
    }

    /// The config `new` writes, from this agent's current dirs: call it again after
    /// pointing `var`/`lock`/`restore` elsewhere.
    pub fn write_test_config(&self, coordinator: &Coordinator) {
        self.write_config(serde_json::json!({
            "api_url": coordinator.url.trim_end_matches('/'),
            "api_auth_name": turku_api_types::constants::defaults::MACHINE_AUTH_NAME,
            "api_auth_secret": coordinator.machine_registration(),
            "var_dir": self.var,
            "lock_dir": self.lock,
            "restore_path": self.restore,
            "unit_name": "agent-test",
        }));
    }

    pub fn write_config(&self, config: serde_json::Value) {
        std::fs::write(
            self.etc.join("config.d/10-agent.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.etc)
            .args(args)
            .env("TMPDIR", &self.tmp)
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("TURKU_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        wait_bounded(
            self.command(args).spawn().unwrap(),
            PING_BOUND,
            &format!("turku-agent {args:?}"),
        )
    }

    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "turku-agent {args:?}: {:?}\n{}",
            out.status,
            stderr(&out)
        );
        out
    }

    pub fn uuid(&self) -> String {
        let text = std::fs::read_to_string(self.var.join("config.d/10-machine_uuid.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["machine_uuid"].as_str().unwrap().to_owned()
    }

    /// Anything the agent left in its TMPDIR or lock dir, and any process still running
    /// whose command line names its TMPDIR (its rsync daemon and the children it forks,
    /// its ssh with the session's config files there), polled within a bound since a
    /// process may take a moment to go after its parent.
    pub fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
        let locks: Vec<_> = std::fs::read_dir(&self.lock)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(locks.is_empty(), "lock files left: {locks:?}");
        let deadline = Instant::now() + AGENT_LEFTOVERS_BOUND;
        loop {
            let running = processes_mentioning(&self.tmp);
            if running.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent's processes still run after {AGENT_LEFTOVERS_BOUND:?}: {running:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Agent {
    /// `turku-agent ping --restore` in its own process group (as from a terminal), once it
    /// has printed the storage's restore command and `storage` has registered the session.
    pub fn enter_restore_mode(&self, storage: &StorageDaemon) -> RestoreMode {
        let before = storage.log().matches("Restore mode active on port").count();
        let mut child = ProcessGroup::spawn(
            self.command(&["ping", "--restore"]),
            "turku-agent ping --restore",
        );
        // The listing and instructions go to stderr, as the original logs them.
        let said = child.child_mut().stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(said).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let command = loop {
            let line = lines
                .recv_timeout(RESTORE_MODE_BOUND)
                .expect("the restore command line");
            if line.contains("turku-storage restore") {
                break line;
            }
        };
        // RSYNC_PASSWORD=<pw> turku-storage restore --machine <uuid> --source <s> --user <u>
        let words: Vec<&str> = command.split_whitespace().collect();
        let password = words[0]
            .strip_prefix("RSYNC_PASSWORD=")
            .expect("the command starts with the password")
            .to_owned();
        let user = words
            .iter()
            .position(|w| *w == "--user")
            .and_then(|i| words.get(i + 1))
            .expect("the command names the user")
            .to_string();
        eventually(
            "the restore session is registered",
            RESTORE_MODE_BOUND,
            || storage.log().matches("Restore mode active on port").count() > before,
        );
        RestoreMode {
            child,
            lines,
            command,
            user,
            password,
        }
    }
}

/// Bound on restore mode opening, one push, and restore mode ending.
const RESTORE_MODE_BOUND: Duration = Duration::from_secs(120);

/// An agent in restore mode, with the credentials it printed for the storage's operator.
#[derive(Debug)]
pub struct RestoreMode {
    child: ProcessGroup,
    lines: std::sync::mpsc::Receiver<String>,
    /// The `turku-storage restore ...` line as printed.
    pub command: String,
    pub user: String,
    pub password: String,
}

impl RestoreMode {
    /// `turku-storage restore --machine M --source S --user U EXTRA...` with the printed
    /// password, run to its end.
    pub fn restore(
        &self,
        storage: &StorageDaemon,
        machine: &str,
        source: &str,
        extra: &[&str],
    ) -> Output {
        let mut restore = storage.command(&[
            "restore",
            "--machine",
            machine,
            "--source",
            source,
            "--user",
            &self.user,
        ]);
        restore.args(extra).env("RSYNC_PASSWORD", &self.password);
        wait_bounded(
            restore.spawn().expect("turku-storage restore"),
            RESTORE_MODE_BOUND,
            "turku-storage restore",
        )
    }

    /// Ends restore mode with a Ctrl-C to its whole process group, as from a terminal;
    /// asserts it exits 0 saying it finished. Returns its exit and stdout.
    pub fn end(mut self) -> Output {
        self.child.signal(nix::sys::signal::Signal::SIGINT);
        let done = self.child.wait(RESTORE_MODE_BOUND, "restore mode");
        assert!(
            done.status.success(),
            "restore mode ended: {:?}",
            done.status
        );
        let finished = std::iter::from_fn(|| self.lines.recv_timeout(RESTORE_MODE_BOUND).ok())
            .any(|line| line.contains("Restore mode finished"));
        assert!(finished, "restore mode says it finished");
        done
    }
}

/// A child leading a process group of its own. Dropped before [`ProcessGroup::wait`]
/// returned, it kills the whole group with SIGKILL (and reaps the leader): a test that
/// panics between spawning a program and waiting for it leaves neither the program nor
/// anything it started in its group running. Once waited for, the group is left alone, so
/// the test's own checks see whatever outlived the leader.
#[derive(Debug)]
pub struct ProcessGroup {
    child: Option<Child>,
    group: nix::unistd::Pid,
    waited: bool,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(mut command: Command, what: &str) -> ProcessGroup {
        use std::os::unix::process::CommandExt as _;
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        ProcessGroup {
            child: Some(child),
            group,
            waited: false,
        }
    }

    /// The leader's pid, which is also the group's id.
    pub fn id(&self) -> u32 {
        self.group.as_raw() as u32
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the leader is not yet waited for")
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::killpg(self.group, signal).expect("signal the process group");
    }

    /// [`wait_bounded`] for the leader; past the bound the group is killed too (on drop).
    pub fn wait(&mut self, bound: Duration, what: &str) -> Output {
        let child = self.child.take().expect("the leader is not yet waited for");
        let out = wait_bounded(child, bound, what);
        self.waited = true;
        out
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.waited {
            return;
        }
        // Also when a failed bounded wait already reaped the leader: what it started in its
        // group goes with it.
        let _ = nix::sys::signal::killpg(self.group, nix::sys::signal::Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Bound on the processes an agent started going away after it ended.
const AGENT_LEFTOVERS_BOUND: Duration = Duration::from_secs(10);

/// Live processes whose command line mentions `dir`, with their command lines (NULs as
/// spaces). A zombie has an empty command line: it runs nothing any more.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.push((pid, text));
        }
    }
    found
}

/// Pids of rsync daemons whose command line mentions `dir` (stopped daemons are reaped by
/// the agent; a zombie's empty command line mentions nothing).
pub fn daemons_with(dir: &Path) -> Vec<u32> {
    processes_mentioning(dir)
        .into_iter()
        .filter(|(_, text)| text.contains("--daemon"))
        .map(|(pid, _)| pid)
        .collect()
}

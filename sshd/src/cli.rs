//! The command line: the clap types and [`run`], which opens the store and hands each
//! command to the library ([`crate::backup`] for pulls and retention, [`crate::output`] for
//! what is shown). This is the binary's layer, so its errors are `anyhow` chains printed
//! once by [`exit_code`].

use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use turku_store::{CompressionMode, Store, StoreConfig};

use crate::{backup, output, pull, restore};

#[derive(Parser, Debug)]
#[command(
    name = "turku-storage",
    version,
    about = "turku storage unit: the SSH daemon agents back up through, and its deduplicating snapshot store"
)]
pub struct Cli {
    /// The store directory (default: the one the configuration names).
    #[arg(long, env = "TURKU_STORE", global = true)]
    pub store: Option<PathBuf>,
    /// The storage daemon's configuration: `DIR/config.d/*.json|*.yaml`.
    #[arg(long, short = 'c', value_name = "DIR", global = true, default_value = crate::constants::config::DEFAULT_CONFIG_DIR)]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct SourceArgs {
    #[arg(long)]
    pub machine: String,
    #[arg(long)]
    pub source: String,
}

/// How `pull` and `push` reach an rsync daemon: its password and time bounds.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// The password's file: its first line; refused when group or others may access it.
    /// Without it the password comes from RSYNC_PASSWORD, as with stock rsync.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Seconds without data either way before the transfer fails, as rsync's --timeout
    /// (0 = no limit). Time spent on local work does not count.
    #[arg(long, value_name = "SECONDS", default_value_t = turku_proto_rsync::config::DEFAULT_IO_TIMEOUT.as_secs())]
    pub timeout: u64,
    /// Seconds for connecting and the daemon's greeting and authentication (0 = no limit).
    #[arg(long, value_name = "SECONDS", default_value_t = turku_proto_rsync::config::DEFAULT_CONNECT_TIMEOUT.as_secs())]
    pub contimeout: u64,
}

impl DaemonArgs {
    /// The time bounds, with `deadline` seconds for the whole run (0 = none).
    fn timeouts(&self, deadline: u64) -> turku_proto_rsync::Timeouts {
        turku_proto_rsync::Timeouts {
            io: turku_proto_rsync::Timeouts::from_secs(self.timeout),
            connect: turku_proto_rsync::Timeouts::from_secs(self.contimeout),
            deadline: turku_proto_rsync::Timeouts::from_secs(deadline),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse the storage daemon's configuration and print it, secrets redacted.
    #[command(hide = true)]
    ConfigCheck,
    /// Run the storage daemon: the SSH server agents call into, their backups, key
    /// refreshes and GC. Prints `listening on ADDRESS` once it accepts connections.
    Serve,
    /// One agent session on stdin/stderr, as an OpenSSH forced command
    /// (`command="turku-storage ping UUID"`): the machine's rsync daemon is reached on
    /// 127.0.0.1 at the port the agent forwarded.
    Ping {
        /// The machine the key belongs to (from the forced command, never from the agent).
        uuid: String,
    },
    /// Register with the coordinator (publishing host keys and free space) and save the
    /// machines it assigns here; then exit.
    UpdateConfig {
        /// Sleep a random time up to this many seconds first (spreads cron jobs).
        #[arg(long, short = 'w', value_name = "SECONDS")]
        wait: Option<u64>,
        /// Registration name for the first registration (overrides api_auth_name).
        #[arg(long)]
        api_auth_name: Option<String>,
        /// Registration secret for the first registration (overrides api_auth_secret).
        #[arg(long)]
        api_auth_secret: Option<String>,
        /// For OpenSSH in front of `ping`: publish OpenSSH's host keys
        /// (`ssh_ping_host_keys_glob`) and rewrite the ping user's authorized_keys with a
        /// forced-command line per machine, as the original turku-storage-update-config.
        #[arg(long)]
        openssh: bool,
    },
    /// Create a new store.
    Init {
        #[arg(long, default_value_t = turku_store::tuning::DEFAULT_CHUNK_MIN)]
        chunk_min: u32,
        #[arg(long, default_value_t = turku_store::tuning::DEFAULT_CHUNK_AVG)]
        chunk_avg: u32,
        #[arg(long, default_value_t = turku_store::tuning::DEFAULT_CHUNK_MAX)]
        chunk_max: u32,
        #[arg(long, default_value_t = turku_store::tuning::DEFAULT_ZSTD_LEVEL)]
        zstd_level: i32,
        /// When new data is compressed: `inline` (always, before it is written), `adaptive`
        /// (with the CPU the transfer leaves; the rest is written raw and compressed by the
        /// next `gc`), or `deferred` (always by `gc`).
        #[arg(long, default_value_t = CompressionMode::default())]
        compression: CompressionMode,
    },
    /// Back up a local directory tree; prints the new snapshot's name.
    Ingest {
        #[command(flatten)]
        src: SourceArgs,
        dir: PathBuf,
    },
    /// Back up a tree from a stock rsync daemon (password from RSYNC_PASSWORD or
    /// --password-file); prints the snapshot name and transfer stats.
    Pull {
        #[command(flatten)]
        src: SourceArgs,
        /// A filter rule in rsync syntax (repeatable); `merge` and `:` rules are dropped.
        #[arg(long = "filter", allow_hyphen_values = true)]
        filters: Vec<String>,
        /// An exclude pattern (repeatable), sent as `- PATTERN` after the filters.
        #[arg(long = "exclude", allow_hyphen_values = true)]
        excludes: Vec<String>,
        #[arg(long)]
        hard_links: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Seconds the whole pull may take (0 = no limit).
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        deadline: u64,
        /// Most memory the daemon's file list may cost (estimated: names, link targets and
        /// a fixed overhead per entry); a bigger list fails the pull.
        #[arg(long, value_name = "BYTES", default_value_t = turku_proto_rsync::Limits::default().max_file_list_bytes)]
        max_file_list_bytes: u64,
        /// Read from the daemon at most this fast, as rsync's --bwlimit: KiB per second, or
        /// with a unit (`1.5m`, `500kb`); 0 = no limit.
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        // Given as `help`, not a doc comment: rustdoc would read the brackets as links.
        #[arg(help = "rsync://[USER@]HOST[:PORT]/MODULE/")]
        url: String,
    },
    /// Push a snapshot (or part of it) into any rsync daemon's writable module, with the
    /// native rsync sender: modes, owners, times, symlinks, hard links, devices and FIFOs
    /// as stored. A destination holding an older copy receives only the differences.
    /// Password from RSYNC_PASSWORD or --password-file.
    Push {
        #[command(flatten)]
        src: SourceArgs,
        /// A snapshot name, or `latest`.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Path inside the snapshot to push instead of all of it.
        #[arg(long)]
        path: Option<PathBuf>,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(help = "rsync://[USER@]HOST[:PORT]/MODULE/[PATH]")]
        url: String,
    },
    /// Restore a snapshot onto its machine: the machine's agent runs
    /// `turku-agent ping --restore` (and waits); this asks the running daemon, through its
    /// control socket, to push the snapshot into the agent's restore module over the
    /// agent's own SSH connection. Password from RSYNC_PASSWORD or --password-file, user
    /// from --user: as the agent printed them.
    Restore {
        #[command(flatten)]
        src: SourceArgs,
        /// A snapshot name, or `latest`.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Path inside the snapshot to restore instead of all of it.
        #[arg(long)]
        path: Option<PathBuf>,
        /// The restore module's user, as the agent printed it.
        #[arg(long)]
        user: Option<String>,
        /// The password's file: its first line; refused when group or others may access it.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The agent's restore module (its `restore_module` setting).
        #[arg(long, default_value = crate::constants::RESTORE_MODULE)]
        module: String,
    },
    /// List snapshots.
    Snapshots {
        #[arg(long)]
        machine: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a directory of a snapshot.
    Ls {
        #[command(flatten)]
        src: SourceArgs,
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Path inside the snapshot (default: its root).
        path: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot (or part of it) to a directory or a tar stream.
    Export {
        #[command(flatten)]
        src: SourceArgs,
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Sub-path inside the snapshot.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Restore into this (new or empty) directory.
        #[arg(long, conflicts_with = "tar", required_unless_present = "tar")]
        to: Option<PathBuf>,
        /// Write a POSIX tar to this file, or `-` for standard output.
        #[arg(long)]
        tar: Option<PathBuf>,
    },
    /// Re-hash every blob and check every snapshot (or only one snapshot).
    Verify {
        #[arg(long, requires_all = ["source", "snapshot"])]
        machine: Option<String>,
        #[arg(long, requires_all = ["machine", "snapshot"])]
        source: Option<String>,
        #[arg(long, requires_all = ["machine", "source"])]
        snapshot: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Forget snapshots not kept by a Turku retention policy (times in UTC).
    Forget {
        #[command(flatten)]
        src: SourceArgs,
        #[arg(long)]
        retention: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Reclaim the space of forgotten snapshots (safe while backups run).
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from the packs and snapshot records.
    Repair,
    /// Show what the store holds.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

/// Starts the process again with glibc's malloc limited to [`MALLOC_ARENAS`] arenas, unless
/// the environment already says how many (an operator's choice wins). glibc reads the
/// setting before `main`, and setting it in-process needs `mallopt` (unsafe code, which
/// the workspace forbids). Backups run on several threads, and by default every thread may
/// get an arena of its own that keeps its peak: one pull of a 110,000-file tree peaked at
/// 71 MiB with the default and 63.5 MiB with 2 arenas, at the same speed
/// (`benches/pull-memory.sh`). Returns only when no restart happens (or it failed).
///
/// [`MALLOC_ARENAS`]: crate::constants::MALLOC_ARENAS
pub fn limit_allocator_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(crate::constants::MALLOC_ARENA_ENV).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let Some(arg0) = args.next() else {
        return;
    };
    // Only returns on failure (e.g. the binary was replaced meanwhile): run on as we are.
    let _ = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(
            crate::constants::MALLOC_ARENA_ENV,
            crate::constants::MALLOC_ARENAS.to_string(),
        )
        .exec();
}

/// Logs go to standard error, filtered by `TURKU_LOG` (default: warnings and errors), so
/// they never mix with the output scripts parse.
pub fn init_logging(cli: &Cli) {
    // The daemon says what it does; one-shot commands only what went wrong.
    let default = match cli.command {
        Command::Serve | Command::UpdateConfig { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TURKU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr)
        .init();
}

/// The process's exit code for what [`run`] returned, an error printed on the way. A
/// closed standard output (`| head`) is a normal end, not a failure.
pub fn exit_code(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("turku-storage: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn store_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(store) = &cli.store {
        return Ok(store.clone());
    }
    if cli.config_dir.join("config.d").is_dir() {
        return Ok(load_config(cli)?.store);
    }
    bail!(
        "no store given: pass --store PATH, set TURKU_STORE, or configure one in {}",
        cli.config_dir.display()
    )
}

fn load_config(cli: &Cli) -> Result<crate::config::StorageConfig> {
    let loaded = crate::config::load(&cli.config_dir, &crate::config::HostFacts::detect())
        .with_context(|| format!("configuration in {}", cli.config_dir.display()))?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

fn open(cli: &Cli) -> Result<Store> {
    let path = store_path(cli)?;
    Store::open(&path).with_context(|| format!("opening store {}", path.display()))
}

/// The rsync password from `--password-file`, else `RSYNC_PASSWORD`, as stock rsync.
fn password(file: Option<&std::path::Path>) -> Result<Option<turku_proto_rsync::Secret>> {
    Ok(match file {
        Some(f) => Some(pull::read_password_file(f)?),
        None => std::env::var_os("RSYNC_PASSWORD")
            .map(|p| turku_proto_rsync::Secret::new(p.as_bytes().to_vec())),
    })
}

/// A push's progress on standard error: one line rewritten in place on a terminal, a line
/// every [`PROGRESS_LOG_INTERVAL`] otherwise (a log).
///
/// [`PROGRESS_LOG_INTERVAL`]: crate::constants::PROGRESS_LOG_INTERVAL
struct ProgressShown {
    tty: bool,
    open_line: bool,
    last: Option<std::time::Instant>,
}

impl ProgressShown {
    fn new() -> Self {
        ProgressShown {
            tty: io::stderr().is_terminal(),
            open_line: false,
            last: None,
        }
    }

    fn show(&mut self, p: &restore::PushProgress) {
        if self.tty {
            eprint!("\r{}\x1b[K", restore::progress_line(p));
            self.open_line = true;
        } else if self
            .last
            .is_none_or(|at| at.elapsed() >= crate::constants::PROGRESS_LOG_INTERVAL)
        {
            self.last = Some(std::time::Instant::now());
            eprintln!("{}", restore::progress_line(p));
        }
    }

    fn end(&mut self) {
        if self.open_line {
            eprintln!();
            self.open_line = false;
        }
    }
}

/// Prints a push's report; exit code 23 when some files did not arrive, as stock rsync.
fn finish_push(report: &restore::PushReport) -> Result<ExitCode> {
    for w in &report.warnings {
        eprintln!("turku-storage: warning: {w}");
    }
    if report.failed_count > 0 {
        eprintln!(
            "turku-storage: {} files did not arrive: {}{}",
            report.failed_count,
            report.failed.join(", "),
            if report.failed_count > report.failed.len() as u64 {
                ", ..."
            } else {
                ""
            }
        );
    }
    println!("{}", restore::summary_line(report));
    Ok(if report.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(u8::try_from(report.exit_code).unwrap_or(1))
    })
}

/// A daemon whose snapshot times come from a test's clock file says so when it starts, with
/// the time the file holds now, so a stray override on a real storage cannot go unseen.
fn warn_if_clock_overridden() {
    let Some(file) = turku_store::clock::override_file() else {
        return;
    };
    let reads = match turku_store::clock::read_clock_file(file) {
        Ok(now) => {
            turku_store::format_ns(i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX))
        }
        Err(e) => format!("unusable ({e}): backups will fail until it is mended"),
    };
    tracing::warn!(
        "{}={} is set (a test hook): snapshot times and retention follow that file, not the system clock; it reads {reads}",
        turku_store::clock::CLOCK_FILE_ENV,
        file.display()
    );
}

/// Runs one command; `Ok` carries the exit code of a command that ran to its end (`verify`
/// fails with problems found).
pub fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::ConfigCheck => {
            let config_dir = &cli.config_dir;
            let loaded = crate::config::load(config_dir, &crate::config::HostFacts::detect())
                .with_context(|| format!("configuration in {}", config_dir.display()))?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{:#?}", loaded.config);
        }
        Command::Serve => {
            let config = load_config(&cli)?;
            warn_if_clock_overridden();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(crate::server::run(config, |addr| {
                println!("listening on {addr}");
                let _ = io::stdout().flush();
            }))?;
        }
        Command::Ping { uuid } => {
            let config = load_config(&cli)?;
            warn_if_clock_overridden();
            let status = crate::forced::run(config, uuid)?;
            return Ok(ExitCode::from(status));
        }
        Command::UpdateConfig {
            wait,
            api_auth_name,
            api_auth_secret,
            openssh,
        } => {
            let config = load_config(&cli)?;
            if let Some(max) = wait.filter(|max| *max > 0) {
                use rand::Rng;
                let secs = rand::thread_rng().gen_range(0..=max.saturating_mul(1000));
                std::thread::sleep(std::time::Duration::from_millis(secs));
            }
            let auth_override = match (api_auth_name, api_auth_secret) {
                (Some(name), Some(secret)) => Some(crate::registration::RegistrationAuth {
                    name: name.clone(),
                    secret: crate::config::Secret::new(secret.clone()),
                }),
                (None, None) => None,
                _ => bail!("--api-auth-name and --api-auth-secret go together"),
            };
            let link = crate::coordinator::CoordinatorLink::new(&config)?;
            if *openssh {
                let (machines, file) =
                    crate::openssh::update_config(&config, &link, auth_override.as_ref())?;
                println!(
                    "registered storage {} with {}; {machines} machines in {}",
                    config.name,
                    config.api_url,
                    file.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let host_keys = crate::hostkeys::HostKeys::load_or_generate(&config.host_key_dir)?;
            let machines = crate::upkeep::register(
                &config,
                &link,
                &host_keys.public_lines(),
                auth_override.as_ref(),
            )?;
            println!(
                "registered storage {} with {}; {} machines assigned",
                config.name,
                config.api_url,
                machines.len()
            );
        }
        Command::Init {
            chunk_min,
            chunk_avg,
            chunk_max,
            zstd_level,
            compression,
        } => {
            let path = store_path(&cli)?;
            let config = StoreConfig {
                chunk_min: *chunk_min,
                chunk_avg: *chunk_avg,
                chunk_max: *chunk_max,
                zstd_level: *zstd_level,
                compression: *compression,
            };
            Store::init(&path, config)?;
            println!("initialised store {}", path.display());
        }
        Command::Ingest { src, dir } => {
            let store = open(&cli)?;
            let tty = io::stderr().is_terminal();
            let mut show = |p: &turku_store::IngestProgress| {
                eprint!("\r{} entries, {} MiB read", p.entries, p.bytes_read >> 20);
            };
            let progress: Option<&mut dyn FnMut(&turku_store::IngestProgress)> =
                if tty { Some(&mut show) } else { None };
            let (snap, report) = store
                .ingest_dir(&src.machine, &src.source, dir, progress)
                .with_context(|| format!("ingesting {}", dir.display()))?;
            if tty {
                eprintln!();
            }
            for w in &report.warnings {
                eprintln!("turku-storage: warning: {w}");
            }
            println!("{}", snap.name);
            let s = snap.stats;
            eprintln!(
                "files {} dirs {} bytes {} reused-files {} read {} new-bytes {} stored {} new-chunks {}",
                s.files, s.dirs, s.bytes, s.reused_files, report.bytes_read, s.new_bytes,
                s.new_stored_bytes, s.new_chunks
            );
        }
        Command::Pull {
            src,
            filters,
            excludes,
            hard_links,
            daemon,
            deadline,
            max_file_list_bytes,
            bwlimit,
            url,
        } => {
            let store = open(&cli)?;
            let url = pull::RsyncUrl::parse(url)?;
            let options = pull::PullOptions {
                password: password(daemon.password_file.as_deref())?,
                hard_links: *hard_links,
                filter_rules: pull::turku_filter_rules(filters, excludes),
                timeouts: daemon.timeouts(*deadline),
                limits: turku_proto_rsync::Limits {
                    max_file_list_bytes: *max_file_list_bytes,
                    ..turku_proto_rsync::Limits::default()
                },
                bwlimit: match bwlimit {
                    Some(text) => {
                        crate::throttle::parse_bwlimit(text).map_err(anyhow::Error::msg)?
                    }
                    None => None,
                },
            };
            let backup::PullReport {
                snapshot: snap,
                outcome,
                warnings,
            } = backup::pull_source(
                &store,
                &src.machine,
                &src.source,
                &url,
                pull::Connection::Tcp,
                options,
            )?;
            for w in &warnings {
                eprintln!("turku-storage: warning: {w}");
            }
            println!("{}", snap.name);
            let s = snap.stats;
            eprintln!(
                "files {} dirs {} bytes {} unchanged {} transferred {} wire-read {} wire-written {} literal {} matched {} new-bytes {} stored {} exit-code {}",
                s.files, s.dirs, s.bytes, s.reused_files, outcome.files_received,
                outcome.wire_bytes_read, outcome.wire_bytes_written, outcome.literal_bytes,
                outcome.matched_bytes, s.new_bytes, s.new_stored_bytes, outcome.exit_code
            );
        }
        Command::Push {
            src,
            snapshot,
            path,
            daemon,
            url,
        } => {
            let store = open(&cli)?;
            let url = pull::RsyncUrl::parse(url)?;
            let snap = store.snapshot(&src.machine, &src.source, snapshot)?;
            let sub = path
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default();
            let options = restore::PushOptions {
                password: password(daemon.password_file.as_deref())?,
                timeouts: daemon.timeouts(0),
            };
            let mut shown = ProgressShown::new();
            let report = restore::push_snapshot(
                &store,
                &snap,
                &sub,
                &url,
                pull::Connection::Tcp,
                options,
                &mut |p| shown.show(p),
            )?;
            shown.end();
            return finish_push(&report);
        }
        Command::Restore {
            src,
            snapshot,
            path,
            user,
            password_file,
            module,
        } => {
            let config = load_config(&cli)?;
            let request = crate::control::RestoreRequest {
                machine: src.machine.clone(),
                source: src.source.clone(),
                snapshot: snapshot.clone(),
                path: match path {
                    Some(p) => Some(
                        p.to_str()
                            .context("--path must be UTF-8 to pass the control socket")?
                            .to_owned(),
                    ),
                    None => None,
                },
                user: user.clone(),
                password: match password(password_file.as_deref())? {
                    Some(p) => Some(String::from_utf8(p.expose().to_vec()).ok().context(
                        "the restore password must be UTF-8 (the agent's are alphanumeric)",
                    )?),
                    None => None,
                },
                module: module.clone(),
            };
            let mut shown = ProgressShown::new();
            let report = crate::control::request_restore(
                &config.control_socket,
                &config.store,
                &request,
                |reply| match reply {
                    crate::control::Reply::Info(text) => {
                        shown.end();
                        eprintln!("{text}");
                    }
                    crate::control::Reply::Progress(p) => shown.show(p),
                    crate::control::Reply::Done(_) | crate::control::Reply::Error(_) => shown.end(),
                    crate::control::Reply::Alive => {}
                },
            )?;
            return finish_push(&report);
        }
        Command::Snapshots {
            machine,
            source,
            json,
        } => {
            let store = open(&cli)?;
            let snaps = store.snapshots(machine.as_deref(), source.as_deref())?;
            let mut out = io::stdout().lock();
            if *json {
                let list: Vec<_> = snaps.iter().map(output::snapshot_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for s in &snaps {
                    output::write_snapshot_line(&mut out, s)?;
                }
            }
        }
        Command::Ls {
            src,
            snapshot,
            path,
            json,
        } => {
            let store = open(&cli)?;
            let snap = store.snapshot(&src.machine, &src.source, snapshot)?;
            let path = path
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default();
            let entries = store.list_dir(&snap, &path)?;
            let mut out = io::stdout().lock();
            if *json {
                let list: Vec<_> = entries.iter().map(output::entry_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for e in &entries {
                    output::write_ls_line(&mut out, e)?;
                }
            }
        }
        Command::Export {
            src,
            snapshot,
            path,
            to,
            tar,
        } => {
            let store = open(&cli)?;
            let snap = store.snapshot(&src.machine, &src.source, snapshot)?;
            let sub = path
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default();
            let stats = if let Some(dir) = to {
                store.export_to_dir(&snap, &sub, dir)?
            } else if let Some(file) = tar {
                if file.as_os_str() == "-" {
                    let stdout = io::stdout().lock();
                    store.export_to_tar(&snap, &sub, io::BufWriter::new(stdout))?
                } else {
                    let f = std::fs::File::create(file)
                        .with_context(|| format!("creating {}", file.display()))?;
                    let stats = store.export_to_tar(&snap, &sub, io::BufWriter::new(&f))?;
                    f.sync_all()?;
                    stats
                }
            } else {
                bail!("give --to DIR or --tar FILE");
            };
            eprintln!(
                "exported {} files, {} dirs, {} symlinks, {} hard links, {} specials, {} bytes{}",
                stats.files,
                stats.dirs,
                stats.symlinks,
                stats.hard_links,
                stats.specials,
                stats.bytes,
                if stats.skipped > 0 {
                    format!(" ({} skipped: devices need root)", stats.skipped)
                } else {
                    String::new()
                }
            );
        }
        Command::Verify {
            machine,
            source,
            snapshot,
            json,
        } => {
            let store = open(&cli)?;
            let only = match (machine, source, snapshot) {
                (Some(m), Some(s), Some(n)) => Some(store.snapshot(m, s, n)?),
                _ => None,
            };
            let report = store.verify(only.as_ref())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.problems {
                    println!("problem: {}: {}", p.subject, p.reason);
                }
                for a in &report.affected {
                    println!("affected: {a}");
                }
                for c in &report.interrupted_commits {
                    println!(
                        "note: {c}: commit interrupted by a crash, never visible; gc rolls it back"
                    );
                }
                for f in &report.interrupted_forgets {
                    println!("note: {f}: forget interrupted by a crash; gc completes it");
                }
                println!(
                    "verified {} packs, {} blobs, {} snapshots: {}",
                    report.packs,
                    report.blobs,
                    report.snapshots,
                    if report.is_clean() {
                        "ok"
                    } else {
                        "PROBLEMS FOUND"
                    }
                );
            }
            if !report.is_clean() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Forget {
            src,
            retention,
            dry_run,
        } => {
            let store = open(&cli)?;
            // Days counted as the daemon counts them: in the configured zone, if any.
            let zone = if cli.config_dir.join("config.d").is_dir() {
                load_config(&cli)?.timezone
            } else {
                None
            };
            let report = backup::apply_retention(
                &store,
                &src.machine,
                &src.source,
                backup::RetentionAt {
                    retention,
                    now: turku_store::clock::now()?,
                    zone: zone.as_deref(),
                },
                *dry_run,
                |s| {
                    if *dry_run {
                        println!("would forget {}", s.name);
                    } else {
                        println!("forgot {}", s.name);
                    }
                },
            )?;
            eprintln!(
                "{} of {} snapshots {}; run `gc` to reclaim space",
                report.selected.len(),
                report.considered,
                if *dry_run {
                    "would be forgotten"
                } else {
                    "forgotten"
                }
            );
        }
        Command::Gc { json } => {
            let store = open(&cli)?;
            let stats = store.gc()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "freed {} blobs ({} bytes), deleted {} packs, repacked {} packs ({} blobs moved), compressed {} deferred blobs (saving {} bytes), removed {} orphans, cleared {} dead sessions, rolled back {} interrupted commits",
                    stats.freed_blobs, stats.freed_bytes, stats.deleted_packs, stats.repacked_packs,
                    stats.moved_blobs, stats.compressed_blobs, stats.compression_saved_bytes,
                    stats.removed_orphans, stats.dead_sessions, stats.rolled_back_commits
                );
                // What needs an operator: said apart, so it is not lost in the summary.
                if stats.unindexed_packs > 0 {
                    println!(
                        "left {} pack files the index does not know (run `repair` to index them)",
                        stats.unindexed_packs
                    );
                }
                if stats.packs_not_repacked > 0 {
                    println!(
                        "could not repack {} packs (damaged blobs; run `verify`)",
                        stats.packs_not_repacked
                    );
                }
                if stats.unreadable_trees > 0 {
                    println!(
                        "{} freed trees could not be read (their children stay until `repair`)",
                        stats.unreadable_trees
                    );
                }
            }
        }
        Command::Repair => {
            let path = store_path(&cli)?;
            let report = Store::repair(&path)?;
            for s in &report.unreadable_packs {
                println!("unreadable pack: {s}");
            }
            for s in &report.quarantined_packs {
                println!("quarantined: {s}");
            }
            for s in &report.damaged_snapshots {
                println!("damaged snapshot (kept; see `verify`): {s}");
            }
            for s in &report.unreadable_trees {
                println!("unreadable tree (nothing below it referenced; see `verify`): {s}");
            }
            for s in &report.damaged_log_lines {
                println!("damaged snapshot log line (kept as it is; see `verify`): {s}");
            }
            println!(
                "rebuilt index: {} packs, {} blobs ({} duplicates), {} snapshots",
                report.packs, report.blobs, report.duplicate_blobs, report.snapshots
            );
        }
        Command::Stats { json } => {
            let store = open(&cli)?;
            let s = store.stats()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("snapshots        {}", s.snapshots);
                println!("machines         {}", s.machines);
                println!("sources          {}", s.sources);
                println!("logical bytes    {}", s.logical_bytes);
                println!("chunks           {}", s.chunks);
                println!("trees            {}", s.trees);
                println!("chunk bytes      {}", s.chunk_bytes);
                println!("stored bytes     {}", s.stored_bytes);
                println!("packs            {}", s.packs);
                println!("pack bytes       {}", s.pack_bytes);
                println!("reclaimable      {}", s.dead_bytes);
                println!("to compress      {}", s.deferred_bytes);
                println!("live sessions    {}", s.live_sessions);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

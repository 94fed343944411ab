//! `turku-api`: the Turku coordinator server and its management commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand, ValueEnum};
use turku_coordinator::admin::{self, AuthKind};
use turku_coordinator::constants::{
    self as k, DEFAULT_DB_PATH, DEFAULT_LISTEN, ENV_DB, ENV_LISTEN, ENV_TIME_ZONE,
};
use turku_coordinator::db::Db;
use turku_coordinator::{server, AppState, Config};

#[derive(Debug, Parser)]
#[command(
    name = "turku-api",
    version,
    about = "Turku coordinator: the /v1 API and its management commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct DbArg {
    /// SQLite database file (created and migrated on first use).
    #[arg(long, env = ENV_DB, default_value = DEFAULT_DB_PATH, global = true)]
    db: PathBuf,
    /// Server time zone for schedules (IANA name, Django's TIME_ZONE).
    #[arg(long, env = ENV_TIME_ZONE, default_value = "UTC", global = true)]
    time_zone: Tz,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SecretType {
    #[value(name = "machine_reg")]
    MachineReg,
    #[value(name = "storage_reg")]
    StorageReg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Listing {
    Machines,
    Sources,
    Storages,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    Machine,
    Storage,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the /v1 API.
    Serve {
        /// Address to listen on.
        #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Seconds a verified secret is trusted before Argon2 runs again.
        #[arg(long, default_value_t = k::cache::DEFAULT_TTL.as_secs())]
        secret_cache_ttl: u64,
        /// Maximum cached verified secrets (0 disables the cache).
        #[arg(long, default_value_t = k::cache::DEFAULT_CAPACITY)]
        secret_cache_size: usize,
        /// Argon2 computations at once (each holds ~100 MiB and a core).
        #[arg(long, default_value_t = k::secrets::MAX_CONCURRENT_HASHES)]
        hash_slots: usize,
        /// Requests that may wait for a hash slot; beyond them the answer is 503.
        #[arg(long, default_value_t = k::admission::MAX_QUEUED_HASHES)]
        hash_queue: usize,
        /// Failed secrets in a row from one client address before a principal is refused
        /// there unhashed (0: never).
        #[arg(long, default_value_t = k::throttle::FAILURE_BURST)]
        auth_failure_burst: u32,
        /// Seconds per further try once a principal's failures from an address are spent.
        #[arg(long, default_value_t = k::throttle::FAILURE_REFILL.as_secs())]
        auth_failure_refill: u64,
        /// Requests served at once outside the hash path; beyond them the answer is 503.
        #[arg(long, default_value_t = k::admission::MAX_FAST_PATH_TASKS)]
        fast_path_slots: usize,
        #[command(flatten)]
        db: DbArg,
    },
    /// Create a registration secret.
    AuthCreate {
        /// Secret type.
        secret_type: SecretType,
        /// Name assigned to the secret.
        #[arg(long)]
        name: Option<String>,
        /// Print only the secret.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Nagios-compatible health check (exit 0 OK, 2 CRITICAL).
    Health {
        #[command(flatten)]
        db: DbArg,
    },
    /// Delete backup logs that ended more than N days ago.
    CleanLogs {
        /// Age in days.
        #[arg(long)]
        days: u32,
        #[command(flatten)]
        db: DbArg,
    },
    /// Make a source due now.
    BackupNow {
        /// Machine UUID or unit name.
        machine: String,
        /// Source name.
        source: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// List machines, sources or storages with their health.
    List {
        /// What to list.
        what: Listing,
        #[command(flatten)]
        db: DbArg,
    },
    /// Activate a machine (UUID or unit name) or a storage (name).
    Activate {
        /// Object kind.
        kind: Target,
        /// Identifier.
        ident: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Deactivate a machine (UUID or unit name) or a storage (name).
    Deactivate {
        /// Object kind.
        kind: Target,
        /// Identifier.
        ident: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Create or replace a FilterSet (expanded where sources say `merge NAME`).
    SetFilterset {
        /// FilterSet name.
        name: String,
        /// rsync filter rules, e.g. "- *.tmp" (they may start with '-': give options first).
        #[arg(allow_hyphen_values = true)]
        rules: Vec<String>,
        /// Store it inactive (merges of it then expand to nothing).
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Move a machine to another storage.
    Move {
        /// Machine UUID or unit name.
        machine: String,
        /// Storage name.
        storage: String,
        #[command(flatten)]
        db: DbArg,
    },
}

fn open(db: &DbArg) -> anyhow::Result<Db> {
    Db::open(&db.db).with_context(|| format!("opening database {}", db.db.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("turku-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let now = Utc::now();
    let print = |s: String| {
        print!("{s}");
        Ok(0)
    };
    match cli.command {
        Command::Serve {
            listen,
            secret_cache_ttl,
            secret_cache_size,
            hash_slots,
            hash_queue,
            auth_failure_burst,
            auth_failure_refill,
            fast_path_slots,
            db,
        } => {
            let config = Config {
                time_zone: db.time_zone,
                cache_ttl: Duration::from_secs(secret_cache_ttl),
                cache_capacity: secret_cache_size,
                max_concurrent_hashes: hash_slots,
                max_queued_hashes: hash_queue,
                auth_failure_burst,
                auth_failure_refill: Duration::from_secs(auth_failure_refill),
                max_fast_path_tasks: fast_path_slots,
                ..Config::default()
            };
            let state = Arc::new(AppState::new(open(&db)?, config));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting runtime")?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                tracing::info!(addr = %listener.local_addr()?, "serving /v1");
                server::run(listener, state, shutdown_signal())
                    .await
                    .context("serving")
            })?;
            Ok(0)
        }
        Command::AuthCreate {
            secret_type,
            name,
            raw,
            db,
        } => {
            let kind = match secret_type {
                SecretType::MachineReg => AuthKind::MachineReg,
                SecretType::StorageReg => AuthKind::StorageReg,
            };
            print(admin::auth_create(
                &open(&db)?,
                kind,
                name.as_deref(),
                raw,
                Config::default().hash_params,
                now,
            )?)
        }
        Command::Health { db } => {
            let report = admin::health(&open(&db)?, now)?;
            print!("{}", report.text);
            Ok(report.exit_code)
        }
        Command::CleanLogs { days, db } => {
            let n = admin::clean_logs(&open(&db)?, days, now)?;
            tracing::info!(deleted = n, "backup logs cleaned");
            Ok(0)
        }
        Command::BackupNow {
            machine,
            source,
            db,
        } => print(admin::backup_now(&open(&db)?, &machine, &source, now)?),
        Command::List { what, db } => {
            let db = open(&db)?;
            print(match what {
                Listing::Machines => admin::list_machines(&db, now)?,
                Listing::Sources => admin::list_sources(&db, now)?,
                Listing::Storages => admin::list_storages(&db, now)?,
            })
        }
        Command::Activate { kind, ident, db } => {
            print(set_active(&open(&db)?, kind, &ident, true)?)
        }
        Command::Deactivate { kind, ident, db } => {
            print(set_active(&open(&db)?, kind, &ident, false)?)
        }
        Command::SetFilterset {
            name,
            rules,
            inactive,
            db,
        } => print(admin::set_filterset(
            &open(&db)?,
            &name,
            &rules,
            !inactive,
            now,
        )?),
        Command::Move {
            machine,
            storage,
            db,
        } => print(admin::move_machine(&open(&db)?, &machine, &storage)?),
    }
}

/// SIGINT (a terminal) or SIGTERM (systemd, containers): finish in-flight requests, then exit.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a handler the default action (exit) still applies; wait for SIGINT.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = int => {}
    }
    tracing::info!("shutting down");
}

fn set_active(
    db: &Db,
    kind: Target,
    ident: &str,
    active: bool,
) -> Result<String, admin::AdminError> {
    match kind {
        Target::Machine => admin::set_machine_active(db, ident, active),
        Target::Storage => admin::set_storage_active(db, ident, active),
    }
}

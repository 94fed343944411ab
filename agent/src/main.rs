//! The `turku-agent` binary (also run as `turku-update-config` and `turku-agent-ping`).

mod adapters;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use nix::sys::signal::Signal;
use turku_agent::cli::{normalise_args, Cli, Command};
use turku_agent::constants::exit;

fn main() -> ExitCode {
    // Run as the launcher of the rsync daemon or ssh, it becomes that program at once.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(failed) = adapters::process::launch_if_asked(&args) {
        return failed;
    }
    // First: the signal mask must be set before any other thread exists.
    if let Err(e) = adapters::signals::install() {
        eprintln!("turku-agent: error: cannot set up signal handling: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse_from(normalise_args(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.debug);
    let result = match &cli.command {
        Command::UpdateConfig(args) => adapters::update_config::run(&cli.config_dir, args),
        Command::Ping(args) => adapters::ping::run(&cli.config_dir, args),
    };
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(Signal::SIGINT)) => ExitCode::from(exit::INTERRUPTED_SIGINT),
        Ok(Some(_)) => ExitCode::from(exit::INTERRUPTED_SIGTERM),
        Err(e) => {
            eprintln!("turku-agent: error: {e:#}");
            // An error on the way out of an interrupted run is the interruption's doing.
            match adapters::signals::received() {
                Some(Signal::SIGINT) => ExitCode::from(exit::INTERRUPTED_SIGINT),
                Some(_) => ExitCode::from(exit::INTERRUPTED_SIGTERM),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Log lines on stderr: info by default (as the original), debug with `--debug`;
/// `TURKU_LOG` overrides.
fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TURKU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

//! The command line: `turku-agent update-config|ping`, and the original's program names
//! (`turku-update-config`, `turku-agent-ping`) with their flags, chosen by the name the
//! binary was invoked under, so existing cron jobs and timers keep working.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::constants::{DEFAULT_CONFIG_DIR, PING_LOCK_NAME, UPDATE_CONFIG_LOCK_NAME};

#[derive(Debug, Parser)]
#[command(
    name = "turku-agent",
    version,
    about = "The turku agent: registers this machine and serves its backups"
)]
pub struct Cli {
    /// The config dir (config.d, sources.d).
    #[arg(short = 'c', long, global = true, default_value = DEFAULT_CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register the machine (generating its uuid, secret and SSH key when missing) and
    /// upload its sources (`turku-update-config`).
    UpdateConfig(UpdateConfigArgs),
    /// Check in; back up the sources that are due, or enter restore mode
    /// (`turku-agent-ping`).
    Ping(PingArgs),
}

#[derive(Debug, Args)]
pub struct UpdateConfigArgs {
    /// Sleep a random time of up to this many seconds first.
    #[arg(short = 'w', long, value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// Registration secret name (overrides api_auth_name).
    #[arg(long)]
    pub api_auth_name: Option<String>,
    /// Registration secret (overrides api_auth_secret).
    #[arg(long)]
    pub api_auth_secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Sleep a random time of up to this many seconds first.
    #[arg(short = 'w', long, value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// Open a writable restore module through the storage and wait.
    #[arg(long)]
    pub restore: bool,
    /// The storage to restore from when the sources are on several.
    #[arg(long, value_name = "NAME")]
    pub restore_storage: Option<String>,
    /// Run this first; a non-zero exit skips the ping (overrides gonogo_program).
    #[arg(long, value_name = "CMD")]
    pub gonogo_program: Option<String>,
}

impl Command {
    /// The run lock's name: the original's program names, so old and new exclude each other.
    pub fn lock_name(&self) -> &'static str {
        match self {
            Command::UpdateConfig(_) => UPDATE_CONFIG_LOCK_NAME,
            Command::Ping(_) => PING_LOCK_NAME,
        }
    }
}

/// The arguments as `turku-agent` parses them: invoked as `turku-update-config` or
/// `turku-agent-ping` (a symlink or copy), the matching subcommand is put in front.
pub fn normalise_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut args = args.into_iter();
    let program = args.next().unwrap_or_else(|| "turku-agent".into());
    let base = Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let subcommand = match base.as_str() {
        "turku-update-config" => Some("update-config"),
        "turku-agent-ping" => Some("ping"),
        _ => None,
    };
    let mut out = vec![OsString::from("turku-agent")];
    out.extend(subcommand.map(OsString::from));
    out.extend(args);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(normalise_args(args.iter().map(OsString::from).collect())).unwrap()
    }

    #[test]
    fn original_program_names_take_the_original_flags() {
        let cli = parse(&[
            "/usr/bin/turku-agent-ping",
            "--wait=300",
            "-c",
            "/x",
            "--restore",
            "--restore-storage",
            "s2",
        ]);
        assert_eq!(cli.config_dir, PathBuf::from("/x"));
        let Command::Ping(p) = cli.command else {
            panic!()
        };
        assert_eq!(p.wait, Some(300.0));
        assert!(p.restore);
        assert_eq!(p.restore_storage.as_deref(), Some("s2"));

        let cli = parse(&[
            "turku-update-config",
            "--wait",
            "7200",
            "--api-auth-name",
            "n",
            "--api-auth-secret",
            "s",
            "--debug",
        ]);
        assert!(cli.debug);
        assert_eq!(cli.config_dir, PathBuf::from("/etc/turku-agent"));
        let Command::UpdateConfig(u) = cli.command else {
            panic!()
        };
        assert_eq!(
            (u.api_auth_name.as_deref(), u.api_auth_secret.as_deref()),
            (Some("n"), Some("s"))
        );
        assert_eq!(u.wait, Some(7200.0));

        let cli = parse(&[
            "turku-agent-ping",
            "--gonogo-program",
            "check_load -c 1,5,15",
            "-w",
            "1.5",
        ]);
        let Command::Ping(p) = cli.command else {
            panic!()
        };
        assert_eq!(p.gonogo_program.as_deref(), Some("check_load -c 1,5,15"));
        assert_eq!(p.wait, Some(1.5));
    }

    #[test]
    fn own_name_takes_subcommands_and_config_dir_on_either_side() {
        let cli = parse(&["turku-agent", "-c", "/a", "ping"]);
        assert_eq!(cli.config_dir, PathBuf::from("/a"));
        assert_eq!(cli.command.lock_name(), "turku-agent-ping");
        let cli = parse(&[
            "./target/debug/turku-agent",
            "update-config",
            "--config-dir",
            "/b",
        ]);
        assert_eq!(cli.config_dir, PathBuf::from("/b"));
        assert_eq!(cli.command.lock_name(), "turku-update-config");
        assert!(Cli::try_parse_from(normalise_args(vec!["turku-agent".into()])).is_err());
    }
}

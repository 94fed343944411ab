//! `turku-agent ping` (`turku-agent-ping`): backups (§3.4) and restore mode (§3.5).

use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs as _};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use turku_api_types::client::ApiClient;
use turku_api_types::constants::endpoint;
use turku_api_types::v1::{AgentPingRequest, MachineCredentials, StorageEndpoint};

use super::files::{load_config, remove_stale_session_dirs, PrivateDir, RunLock};
use super::process::{self, Rsyncd, Ssh, Waited};
use super::{api_client, random_wait, signals};
use turku_agent::cli::PingArgs;
use turku_agent::config::{split_command_line, AgentConfig};
use turku_agent::constants::{defaults, limits, CONFIG_SUBDIR, PING_LOCK_NAME};
use turku_agent::credentials;
use turku_agent::reply::{CheckinReply, RestoreReply};
use turku_agent::session::{
    check_source, checkin_request, group_by_storage, known_hosts, restore_instructions,
    restore_request, rsyncd_argv, rsyncd_conf, rsyncd_secrets, ssh_argv, DaemonSettings, Module,
    RestoreText,
};

/// Runs a ping. `Ok(Some(signal))`: a backup was interrupted (everything cleaned up).
pub fn run(config_dir: &Path, args: &PingArgs) -> Result<Option<Signal>> {
    random_wait(args.wait);
    if let Some(signal) = signals::received() {
        return Ok(Some(signal));
    }
    let config = load_config(config_dir)?;
    let Some(api_url) = config.api_url.clone() else {
        bail!(
            "api_url is not set: add it to a file in {}",
            config.config_dir.join(CONFIG_SUBDIR).display()
        );
    };
    // Not registered yet (update-config has not run): nothing to do, as the original.
    let (Some((uuid, secret)), Some(key)) = (
        config.machine_credentials(),
        config.ssh_private_key_file.as_deref(),
    ) else {
        // Debug only: cron pings every few minutes and must stay quiet until registration.
        tracing::debug!("not registered yet (run turku-agent update-config); nothing to do");
        return Ok(None);
    };
    if !key.is_file() {
        tracing::debug!(
            "the SSH key {} does not exist yet (run turku-agent update-config)",
            key.display()
        );
        return Ok(None);
    }
    if !go(&config, args)? {
        return Ok(None);
    }
    let _lock = RunLock::acquire(config.lock_dir.as_deref(), PING_LOCK_NAME)?;
    for dir in remove_stale_session_dirs(&std::env::temp_dir()) {
        tracing::info!("removed {} left by a killed agent", dir.display());
    }
    let client = api_client(&api_url)?;
    let request = AgentPingRequest {
        machine: MachineCredentials {
            uuid: uuid.to_owned(),
            secret: secret.to_owned(),
        },
    };
    if args.restore {
        restore(&config, args, &client, &request)
    } else {
        back_up(&config, &client, &request)
    }
}

/// The go/no-go program (flag over config): a non-zero exit, or no program to run, skips
/// this ping quietly, as the original.
fn go(config: &AgentConfig, args: &PingArgs) -> Result<bool> {
    let program = match &args.gonogo_program {
        Some(line) => Some(split_command_line(line).map_err(|e| anyhow!("--gonogo-program: {e}"))?)
            .filter(|words| !words.is_empty()),
        None => config.gonogo_program.clone(),
    };
    let Some(argv) = program else {
        return Ok(true);
    };
    match process::run_to_end(&argv, "the go/no-go program", "gonogo_program", true) {
        Ok(status) if status.success() => Ok(true),
        Ok(status) => {
            tracing::debug!("go/no-go exited with {status}: not pinging");
            Ok(false)
        }
        Err(e) => {
            tracing::debug!("go/no-go failed ({e:#}): not pinging");
            Ok(false)
        }
    }
}

fn back_up(
    config: &AgentConfig,
    client: &ApiClient,
    request: &AgentPingRequest,
) -> Result<Option<Signal>> {
    let reply: CheckinReply = client
        .call(endpoint::AGENT_PING_CHECKIN, request)
        .context("cannot check in with the coordinator")?;
    let scheduled = reply.due();
    let groups = group_by_storage(&scheduled, |name| config.sources.contains_key(name));
    if groups.is_empty() {
        tracing::debug!("nothing is due");
        return Ok(None);
    }
    let mut problems = Vec::new();
    for (storage_name, (storage, names)) in &groups {
        // A signal during the previous storage's session must not start the next one.
        if let Some(signal) = signals::received() {
            return Ok(Some(signal));
        }
        match serve_storage(config, storage, names) {
            Ok((Some(signal), _)) => return Ok(Some(signal)),
            Ok((None, mut source_problems)) => problems.append(&mut source_problems),
            Err(e) => problems.push(format!("storage {storage_name}: {e:#}")),
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            tracing::error!("{problem}");
        }
        bail!("{} problem(s) during this ping (see above)", problems.len());
    }
    Ok(None)
}

/// One storage's session: hooks, fresh credentials, daemon, ssh. Returns the signal that
/// ended it early, if any, and the problems of single sources (which stay due).
fn serve_storage(
    config: &AgentConfig,
    storage: &StorageEndpoint,
    names: &[String],
) -> Result<(Option<Signal>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut modules = Vec::new();
    let mut post_commands = Vec::new();
    for name in names {
        if signals::received().is_some() {
            break;
        }
        let Some(source) = config.sources.get(name) else {
            continue;
        };
        if let Err(e) = check_source(name, &source.path.display().to_string()) {
            problems.push(format!("source {name}: {e}; skipped (it stays due)"));
            continue;
        }
        if !source.path.exists() {
            problems.push(format!(
                "source {name}: its path {} does not exist; skipped (it stays due)",
                source.path.display()
            ));
            continue;
        }
        if let Some(pre) = &source.pre_command {
            let what = format!("the pre_command of source {name}");
            match process::run_to_end(pre, &what, "pre_command", true) {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    problems.push(format!(
                        "source {name}: pre_command failed ({status}); skipped (it stays due)"
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("source {name}: {e:#}; skipped (it stays due)"));
                    continue;
                }
            }
        }
        if let Some(post) = &source.post_command {
            post_commands.push((name, post));
        }
        modules.push(Module {
            name: name.clone(),
            path: source.path.display().to_string(),
            user: credentials::session_user(),
            password: credentials::secret(),
            read_only: true,
        });
    }
    let outcome = if let Some(signal) = signals::received() {
        Ok(Some(signal))
    } else if modules.is_empty() {
        Ok(None)
    } else {
        session(config, storage, &modules, checkin_request, |_| Ok(())).and_then(|waited| {
            match waited {
                Waited::Exited(status) if status.success() => Ok(None),
                Waited::Exited(status) if process::launch_failed(status) => Err(anyhow!(
                    "cannot run ssh (see the launcher's message above; check ssh_command), \
                     or the storage could not run its command ({status})"
                )),
                Waited::Exited(status) => Err(anyhow!(
                    "ssh to {}@{} port {} ended with {status}",
                    storage.ssh_ping_user,
                    storage.ssh_ping_host,
                    storage.ssh_ping_port
                )),
                Waited::Interrupted(signal) => Ok(Some(signal)),
            }
        })
    };
    // After the session, whatever its outcome: post commands usually clean up a dump.
    for (name, post) in post_commands {
        let what = format!("the post_command of source {name}");
        match process::run_to_end(post, &what, "post_command", false) {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!("source {name}: post_command failed ({status})")),
            Err(e) => problems.push(format!("source {name}: {e:#}")),
        }
    }
    Ok((outcome?, problems))
}

/// The private daemon for `modules` on a free port, then ssh with `request(port)` until
/// the storage ends the session or a signal arrives; the daemon stopped and the private
/// directory removed on every path out. `ready(port)` runs once the daemon listens.
fn session(
    config: &AgentConfig,
    storage: &StorageEndpoint,
    modules: &[Module],
    request: impl Fn(u16, &[Module]) -> String,
    ready: impl FnOnce(u16) -> Result<()>,
) -> Result<Waited> {
    let key = config
        .ssh_private_key_file
        .as_deref()
        .context("no SSH key")?;
    let dir = PrivateDir::create_in(&std::env::temp_dir())?;
    let secrets = dir.write("rsyncd.secrets", &rsyncd_secrets(modules))?;
    let log = dir.path().join("rsyncd.log");
    let ip = local_ip(&config.rsyncd_local_address)?;
    let as_root = nix::unistd::geteuid().is_root();
    let mut attempt = 0;
    let (mut rsyncd, port) = loop {
        attempt += 1;
        let port = credentials::session_port();
        // Taken already: draw again rather than let the daemon fail on it.
        if TcpListener::bind((ip, port)).is_err() && attempt < limits::PORT_ATTEMPTS {
            continue;
        }
        let conf = rsyncd_conf(
            &DaemonSettings {
                address: &config.rsyncd_local_address,
                port,
                user: &config.rsyncd_user,
                group: &config.rsyncd_group,
                as_root,
                log_file: &log,
                secrets_file: &secrets,
            },
            modules,
        )?;
        let conf_path = dir.rewrite("rsyncd.conf", &conf)?;
        let mut rsyncd = Rsyncd::spawn(&rsyncd_argv(&config.rsyncd_command, &conf_path))?;
        if rsyncd.wait_listening(SocketAddr::new(ip, port))? {
            tracing::debug!("rsync daemon {} listening on {ip}:{port}", rsyncd.pid());
            break (rsyncd, port);
        }
        if attempt >= limits::PORT_ATTEMPTS {
            bail!(
                "the rsync daemon exited at start {attempt} times; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default().trim_end()
            );
        }
    };
    let known_hosts_path = dir.write("known_hosts", &known_hosts(storage))?;
    ready(port)?;
    let argv = ssh_argv(
        &config.ssh_command,
        &known_hosts_path,
        key,
        &config.rsyncd_local_address,
        port,
        storage,
    )?;
    tracing::debug!("running {argv:?}");
    // Last point before the storage is asked to start: a signal by now ends the session
    // unstarted (the daemon and the private directory go with their guards).
    if let Some(signal) = signals::received() {
        return Ok(Waited::Interrupted(signal));
    }
    let waited = Ssh::spawn(&argv, &request(port, modules)).and_then(|mut ssh| ssh.wait());
    rsyncd.stop();
    if let Ok(text) = std::fs::read_to_string(&log) {
        for line in text.lines() {
            tracing::debug!("rsyncd: {line}");
        }
    }
    drop(dir);
    waited
}

fn local_ip(address: &str) -> Result<IpAddr> {
    if let Ok(ip) = address.parse() {
        return Ok(ip);
    }
    (address, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
        .with_context(|| format!("rsyncd_local_address {address:?} is not an address"))
}

/// Restore mode. The listing and the operator's instructions go to stderr with the log, as
/// the original logs them; stdout stays empty.
fn restore(
    config: &AgentConfig,
    args: &PingArgs,
    client: &ApiClient,
    request: &AgentPingRequest,
) -> Result<Option<Signal>> {
    tracing::info!("Entering restore mode.");
    let reply: RestoreReply = client
        .call(endpoint::AGENT_PING_RESTORE, request)
        .context("cannot ask the coordinator for this machine's sources")?;
    let sources = reply.sources();
    let groups = group_by_storage(&sources, |name| config.sources.contains_key(name));
    if groups.is_empty() {
        // (sic): the original's text, kept verbatim for scripts that match it.
        bail!("Cannot find any appropraite sources.");
    }
    eprintln!("This machine's sources are on the following storage units:");
    for (storage, (_, names)) in &groups {
        eprintln!("    {storage}");
        for name in names {
            eprintln!("        {name}");
        }
    }
    eprintln!();
    // B5 fixed: the storage comes from the chosen group's own entry.
    let (storage, names) = match (&args.restore_storage, groups.len()) {
        (Some(wanted), _) => groups
            .get(wanted)
            .with_context(|| format!("Cannot find appropriate storage \"{wanted}\""))?,
        (None, 1) => groups.values().next().context("no storage")?,
        (None, _) => {
            bail!("Multiple storages found.  Please use --restore-storage to specify one.")
        }
    };
    if !config.restore_path.is_dir() {
        bail!(
            "the restore path {} does not exist: create it (or set restore_path)",
            config.restore_path.display()
        );
    }
    let (uuid, _) = config.machine_credentials().context("not registered")?;
    let modules = [Module {
        name: config.restore_module.clone(),
        path: config.restore_path.display().to_string(),
        user: credentials::session_user(),
        password: credentials::secret(),
        read_only: false,
    }];
    let ready = |port: u16| {
        let lines = restore_instructions(&RestoreText {
            machine_uuid: uuid,
            environment_name: config.environment_name.as_ref(),
            service_name: config.service_name.as_ref(),
            unit_name: Some(&config.unit_name),
            storage: &storage.name,
            sources: names,
            restore_path: &config.restore_path,
            restore_module: &config.restore_module,
            default_module: defaults::RESTORE_MODULE,
            user: &modules[0].user,
            password: &modules[0].password,
            port,
        });
        for line in lines {
            eprintln!("{line}");
        }
        eprintln!();
        eprintln!("Waiting; press Ctrl-C here when the restore is done.");
        Ok(())
    };
    match session(
        config,
        storage,
        &modules,
        |port, _| restore_request(port),
        ready,
    )? {
        Waited::Exited(status) if status.success() => {}
        Waited::Exited(status) => bail!("ssh to the storage ended with {status}"),
        // Ctrl-C is how an operator ends restore mode.
        Waited::Interrupted(_) => {}
    }
    tracing::info!("Restore mode finished.");
    Ok(None)
}

//! `turku-agent update-config` (`turku-update-config`): the original's flow (§3.3).

use std::fs;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Map, Value};
use turku_api_types::constants::endpoint;

use super::files::{load_config, write_machine_uuid, RunLock};
use super::{api_client, process, random_wait, signals};
use turku_agent::cli::UpdateConfigArgs;
use turku_agent::config::AgentConfig;
use turku_agent::constants::{
    defaults, limits, CONFIG_SUBDIR, SOURCES_SUBDIR, SSH_KEY_COMMENT, UPDATE_CONFIG_LOCK_NAME,
};
use turku_agent::credentials;

/// `Ok(Some(signal))`: a signal ended the run between steps (nothing sent after it).
pub fn run(config_dir: &Path, args: &UpdateConfigArgs) -> Result<Option<Signal>> {
    random_wait(args.wait);
    if let Some(signal) = signals::received() {
        return Ok(Some(signal));
    }
    let mut config = load_config(config_dir)?;
    let _lock = RunLock::acquire(config.lock_dir.as_deref(), UPDATE_CONFIG_LOCK_NAME)?;
    fill_config(&mut config)?;
    // Generating a key can take a while; a signal meanwhile must not register the machine.
    if let Some(signal) = signals::received() {
        return Ok(Some(signal));
    }
    send_config(&config, args)?;
    Ok(None)
}

/// Creates the directories, the machine uuid and secret and the SSH key when missing, and
/// removes the files of older agents (the original's `fill_config`).
fn fill_config(config: &mut AgentConfig) -> Result<()> {
    let var_config_dir = config.var_dir.join(CONFIG_SUBDIR);
    for dir in [
        config.config_dir.join(CONFIG_SUBDIR),
        config.config_dir.join(SOURCES_SUBDIR),
        var_config_dir.clone(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if config.machine_uuid.is_none() || config.machine_secret.is_none() {
        let uuid = config
            .machine_uuid
            .get_or_insert_with(credentials::machine_uuid)
            .clone();
        let secret = config
            .machine_secret
            .get_or_insert_with(credentials::secret)
            .clone();
        write_machine_uuid(&var_config_dir, &uuid, &secret)?;
        tracing::info!("generated machine uuid {uuid}");
    }
    if config.ssh_private_key_file.is_none() {
        let (public, private) = config.key_paths();
        let argv = vec![
            defaults::SSH_KEYGEN.to_owned(),
            "-q".into(),
            "-t".into(),
            config.ssh_key_type.clone(),
            "-N".into(),
            String::new(),
            "-C".into(),
            SSH_KEY_COMMENT.into(),
            "-f".into(),
            private.display().to_string(),
        ];
        let mut command = process::command(&argv)?;
        command.stdin(Stdio::null());
        let mut child = process::spawn(&mut command, "ssh-keygen", "PATH")?;
        match process::wait_or_kill(&mut child, limits::KEYGEN_BOUND) {
            Some(status) if status.success() => {}
            Some(status) => bail!("ssh-keygen failed ({status}) writing {}", private.display()),
            None => bail!(
                "ssh-keygen did not finish within {:?}",
                limits::KEYGEN_BOUND
            ),
        }
        let text = fs::read_to_string(&public)
            .with_context(|| format!("cannot read {}", public.display()))?;
        config.ssh_public_key = Some(text.trim_end().to_owned());
        config.ssh_private_key_file = Some(private);
    }
    remove_legacy_files(config, &var_config_dir);
    Ok(())
}

/// Files of agents before 2020-10 (a permanent rsync daemon with static credentials).
fn remove_legacy_files(config: &AgentConfig, var_config_dir: &Path) {
    let var_sources = config.var_dir.join(SOURCES_SUBDIR);
    let mut legacy: Vec<_> = config
        .sources
        .keys()
        .map(|s| var_sources.join(format!("10-{s}.json")))
        .collect();
    legacy.push(config.var_dir.join("rsyncd.conf"));
    legacy.push(config.var_dir.join("rsyncd.secrets"));
    legacy.push(var_config_dir.join("10-restore.json"));
    for path in legacy {
        if path.exists() {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!("cannot remove the obsolete {}: {e}", path.display());
            }
        }
    }
    // Only when empty, as the original.
    let _ = fs::remove_dir(&var_sources);
}

/// The `update_config` body: `auth` when known (flags win), the machine keys present in
/// the config, and every source's dictionary verbatim (minus local hook commands).
pub fn update_config_body(config: &AgentConfig, args: &UpdateConfigArgs) -> Result<Value> {
    let mut body = Map::new();
    let auth = match (&args.api_auth_name, &args.api_auth_secret) {
        (Some(name), Some(secret)) => Some((name, secret)),
        _ => config
            .api_auth_name
            .as_ref()
            .zip(config.api_auth_secret.as_ref()),
    };
    if let Some((name, secret)) = auth {
        body.insert("auth".into(), json!({"name": name, "secret": secret}));
    }
    let (uuid, secret) = config
        .machine_credentials()
        .context("the machine uuid and secret are missing")?;
    let mut machine = Map::new();
    machine.insert("uuid".into(), json!(uuid));
    machine.insert("secret".into(), json!(secret));
    for (key, value) in [
        ("environment_name", config.environment_name.as_ref()),
        ("service_name", config.service_name.as_ref()),
        ("unit_name", Some(&config.unit_name)),
    ] {
        if let Some(value) = value {
            machine.insert(key.into(), value.clone());
        }
    }
    if let Some(key) = &config.ssh_public_key {
        machine.insert("ssh_public_key".into(), json!(key));
    }
    if let Some(published) = &config.published {
        machine.insert("published".into(), published.clone());
    }
    let sources: Map<String, Value> = config
        .sources
        .iter()
        .map(|(name, source)| (name.clone(), Value::Object(source.upload.clone())))
        .collect();
    machine.insert("sources".into(), Value::Object(sources));
    body.insert("machine".into(), Value::Object(machine));
    Ok(Value::Object(body))
}

fn send_config(config: &AgentConfig, args: &UpdateConfigArgs) -> Result<()> {
    let Some(api_url) = &config.api_url else {
        bail!(
            "api_url is not set: add it to a file in {}",
            config.config_dir.join(CONFIG_SUBDIR).display()
        );
    };
    let body = update_config_body(config, args)?;
    let client = api_client(api_url)?;
    client
        .call::<_, Value>(endpoint::UPDATE_CONFIG, &body)
        .context("update_config: the coordinator did not take the machine's configuration")?;
    tracing::info!(
        "machine {} registered with {} source(s)",
        config.machine_uuid.as_deref().unwrap_or_default(),
        config.sources.len()
    );
    Ok(())
}

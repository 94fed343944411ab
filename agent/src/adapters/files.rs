//! Files: reading the config, the generated machine config and key, the run lock and the
//! private directory of one storage session.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use turku_api_types::config_dir::{load_merged_dir, Formats};

use turku_agent::config::{var_dir_of, AgentConfig, ConfigFiles};
use turku_agent::constants::{
    CONFIG_SUBDIR, LOCK_DIR_CANDIDATES, MACHINE_UUID_FILE, MACHINE_UUID_FILE_MODE, SOURCES_SUBDIR,
    SSH_PUBLIC_KEY_FILE,
};

/// A merged directory, or an empty object when it does not exist (the original skips a
/// missing directory).
fn merged_or_empty(dir: &Path, formats: Formats) -> Result<Value> {
    if !dir.is_dir() {
        return Ok(Value::Object(Default::default()));
    }
    Ok(load_merged_dir(dir, formats)?)
}

/// Reads everything `load_config` of the original reads.
pub fn load_config(config_dir: &Path) -> Result<AgentConfig> {
    let etc = merged_or_empty(&config_dir.join(CONFIG_SUBDIR), Formats::JsonAndYaml)?;
    let var_dir = var_dir_of(&etc);
    let var = merged_or_empty(&var_dir.join(CONFIG_SUBDIR), Formats::JsonOnly)?;
    let sources = merged_or_empty(&config_dir.join(SOURCES_SUBDIR), Formats::JsonAndYaml)?;
    let public_key_path = var_dir.join(SSH_PUBLIC_KEY_FILE);
    let public_key = match fs::read_to_string(&public_key_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", public_key_path.display()))
        }
    };
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(AgentConfig::build(
        config_dir,
        ConfigFiles {
            etc,
            var,
            sources,
            public_key,
            hostname,
        },
    )?)
}

/// Writes `<var_dir>/config.d/10-machine_uuid.json` (mode 0600, pretty JSON with sorted
/// keys and an indent of 4, as the original) through a temp name and a rename.
pub fn write_machine_uuid(var_config_dir: &Path, uuid: &str, secret: &str) -> Result<()> {
    let target = var_config_dir.join(MACHINE_UUID_FILE);
    let temp = var_config_dir.join(format!(
        "{MACHINE_UUID_FILE}.tmp{}~",
        turku_agent::credentials::session_user()
    ));
    // serde_json's map is sorted by key (no preserve_order), and 4-space indent matches.
    let mut text = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut text, formatter);
    serde::Serialize::serialize(
        &serde_json::json!({"machine_uuid": uuid, "machine_secret": secret}),
        &mut ser,
    )?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MACHINE_UUID_FILE_MODE)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(&text)?;
    file.sync_all()?;
    fs::rename(&temp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

/// The run lock: `<lock_dir>/<name>.lock`, a POSIX record lock as the original's `lockf`,
/// holding the PID right-aligned in 10 columns; removed on release.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    _file: File,
}

impl RunLock {
    pub fn acquire(lock_dir: Option<&Path>, name: &str) -> Result<RunLock> {
        let dir = match lock_dir {
            Some(dir) => dir.to_owned(),
            None => LOCK_DIR_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|d| d.exists())
                .context("no lock directory found (set lock_dir)")?,
        };
        let path = dir.join(format!("{name}.lock"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        if rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .is_err()
        {
            bail!(
                "another {name} is running (the lock {} is held); exiting",
                path.display()
            );
        }
        file.set_len(0)?;
        writeln!(file, "{:>10}", std::process::id())?;
        Ok(RunLock { path, _file: file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A private directory (0700) for one session's rsyncd.conf, secrets, known_hosts and
/// daemon log; removed with everything in it when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub fn create() -> Result<PrivateDir> {
        let template = std::env::temp_dir().join("turku-agent.XXXXXX");
        let path = nix::unistd::mkdtemp(&template).with_context(|| {
            format!(
                "cannot create a private directory in {}",
                std::env::temp_dir().display()
            )
        })?;
        Ok(PrivateDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new file readable only by us.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(path)
    }

    /// Replaces a file (the rsyncd.conf of a retry on another port).
    pub fn rewrite(&self, name: &str, text: &str) -> Result<PathBuf> {
        let _ = fs::remove_file(self.path.join(name));
        self.write(name, text)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

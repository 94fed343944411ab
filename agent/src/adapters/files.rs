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
    CONFIG_SUBDIR, LOCK_DIR_CANDIDATES, MACHINE_UUID_FILE, MACHINE_UUID_FILE_MODE,
    SESSION_DIR_OWNER_FILE, SESSION_DIR_PREFIX, SOURCES_SUBDIR, SSH_PUBLIC_KEY_FILE,
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
/// daemon log; removed with everything in it when dropped, or by a later ping
/// ([`remove_stale_session_dirs`]) when the agent was killed outright. Its first file names
/// its agent.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub fn create_in(base: &Path) -> Result<PrivateDir> {
        let template = base.join(format!("{SESSION_DIR_PREFIX}XXXXXX"));
        let path = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("cannot create a private directory in {}", base.display()))?;
        let dir = PrivateDir { path };
        let me = std::process::id();
        let started = process_start_time(me)
            .with_context(|| format!("cannot read this process's start time in /proc/{me}"))?;
        // Whole or absent: a later ping never reads half a record.
        let owner = dir.write(
            &format!("{SESSION_DIR_OWNER_FILE}.new"),
            &format!("{me} {started}\n"),
        )?;
        fs::rename(&owner, dir.path.join(SESSION_DIR_OWNER_FILE))?;
        Ok(dir)
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

/// The start time of process `pid` (clock ticks since boot), `None` when there is no such
/// process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold blanks and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 is the first after the name; the start time is field 22.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Removes the session directories in `base` whose agent is gone (a SIGKILL leaves its
/// rsyncd.conf and secrets behind): only ours by owner uid, only those with an owner record,
/// never one whose process still runs (the same pid and start time). Returns what it removed.
pub fn remove_stale_session_dirs(base: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(base) else {
        return removed;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(SESSION_DIR_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        let ours = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == me);
        if !ours {
            continue;
        }
        // No record: being created right now, or made by an agent that predates them.
        let Ok(record) = fs::read_to_string(path.join(SESSION_DIR_OWNER_FILE)) else {
            continue;
        };
        let mut words = record.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(started))) = (words.next(), words.next()) else {
            continue;
        };
        let alive = u32::try_from(pid)
            .ok()
            .and_then(process_start_time)
            .is_some_and(|now| now == started);
        if alive {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!("cannot remove the stale {}: {e}", path.display()),
        }
    }
    removed
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_ping_removes_only_session_dirs_whose_agent_is_gone() {
        let base = std::env::temp_dir().join(format!("turku-stale-test-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let live = PrivateDir::create_in(&base).unwrap();
        live.write("rsyncd.secrets", "u:p\n").unwrap();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        exited.wait().unwrap();
        let me = std::process::id();
        let my_start = process_start_time(me).unwrap();
        let record = |name: &str, text: Option<String>| {
            let dir = base.join(name);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("rsyncd.secrets"), "u:p\n").unwrap();
            if let Some(text) = text {
                fs::write(dir.join(SESSION_DIR_OWNER_FILE), text).unwrap();
            }
            dir
        };
        let killed = record(
            "turku-agent.killed",
            Some(format!("{} {my_start}\n", exited.id())),
        );
        let pid_reused = record(
            "turku-agent.reused",
            Some(format!("{me} {}\n", my_start + 1)),
        );
        let unrecorded = record("turku-agent.norec", None);
        let someone_elses = record("other.dir", Some(format!("{} 1\n", exited.id())));

        let mut removed = remove_stale_session_dirs(&base);
        removed.sort();
        assert_eq!(removed, [killed.clone(), pid_reused.clone()]);
        assert!(!killed.exists() && !pid_reused.exists());
        assert!(live.path().join("rsyncd.secrets").exists());
        assert!(unrecorded.exists() && someone_elses.exists());
        drop(live);
        fs::remove_dir_all(&base).unwrap();
    }
}

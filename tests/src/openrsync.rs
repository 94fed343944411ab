//! openrsync (the rsync macOS 15+ ships as `/usr/bin/rsync`: protocol 29) as a test peer.
//! It is in no package registry: a developer builds it from its public source
//! (proto-rsync/tests/fixtures/README.md says how) and names the binary in
//! [`OPENRSYNC_ENV`]. Tests that need it are `#[ignore]`d with that reason, and panic when run
//! without it: they never pass as if they had run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{is_root, spawn_on_free_port, write_secrets};

/// The environment variable naming the openrsync binary.
pub const OPENRSYNC_ENV: &str = "TURKU_OPENRSYNC";

/// The binary [`OPENRSYNC_ENV`] names; panics with how to get one when it is unset or
/// names nothing executable.
pub fn openrsync_binary() -> PathBuf {
    let Some(path) = std::env::var_os(OPENRSYNC_ENV) else {
        panic!(
            "skipped: {OPENRSYNC_ENV} unset. This test needs an openrsync binary: build it as \
             proto-rsync/tests/fixtures/README.md says, then run with {OPENRSYNC_ENV}=/path/to/openrsync"
        );
    };
    let path = PathBuf::from(path);
    let out = Command::new(&path).arg("--version").output();
    match out {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("protocol version 29") => path,
        Ok(out) => panic!(
            "{OPENRSYNC_ENV}={} is not an openrsync speaking protocol 29: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => panic!("{OPENRSYNC_ENV}={}: {e}", path.display()),
    }
}

/// One module of an [`OpenrsyncDaemon`].
#[derive(Debug, Clone, Copy)]
pub struct OpenrsyncModule<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    /// A writable module receives pushes (a restore's destination).
    pub writable: bool,
}

/// `openrsync --daemon` in the foreground on a free port; killed on drop.
pub struct OpenrsyncDaemon {
    pub port: u16,
    child: Child,
    log: PathBuf,
    stderr: PathBuf,
}

impl std::fmt::Debug for OpenrsyncDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenrsyncDaemon")
            .field("port", &self.port)
            .finish()
    }
}

impl OpenrsyncDaemon {
    /// Writes `rsyncd.conf` (and the secrets file, when `auth` is `(user, password)`) into
    /// `conf_dir` and starts `binary` on it. Given an address, openrsync's daemon binds port
    /// 0, so the configuration leaves `address` empty (every interface) and names the port.
    /// Run as root, the transfer keeps ids (`uid`/`gid` 0, numeric ids).
    pub fn start(
        binary: &Path,
        conf_dir: &Path,
        modules: &[OpenrsyncModule<'_>],
        auth: Option<(&str, &str)>,
    ) -> OpenrsyncDaemon {
        fs::create_dir_all(conf_dir).unwrap();
        let secrets = conf_dir.join("secrets");
        let log = conf_dir.join("rsyncd.log");
        write_secrets(&secrets, auth);
        let conf_path = conf_dir.join("rsyncd.conf");
        let started = spawn_on_free_port(|port| {
            let mut conf = format!(
                "address =\nport = {port}\nlog file = {}\nnumeric ids = yes\n",
                log.display()
            );
            if is_root() {
                conf.push_str("uid = 0\ngid = 0\n");
            }
            for m in modules {
                // Never chroot: this build's transfer child dies in a chroot ("free(): invalid
                // pointer") before the first file. Without one it strips link targets that
                // leave the module, for stock rsync's pushes and ours alike.
                let chroot = false;
                conf.push_str(&format!(
                    "[{}]\npath = {}\nread only = {}\nuse chroot = {}\n",
                    m.name,
                    m.path.display(),
                    if m.writable { "no" } else { "yes" },
                    if chroot { "yes" } else { "no" },
                ));
                if !chroot {
                    conf.push_str("munge symlinks = no\n");
                }
                if let Some((user, _)) = auth {
                    conf.push_str(&format!(
                        "auth users = {user}\nsecrets file = {}\n",
                        secrets.display()
                    ));
                }
            }
            fs::write(&conf_path, conf).unwrap();
            Command::new(binary)
                .args(["--daemon", "--no-detach"])
                .arg(format!("--config={}", conf_path.display()))
                .stdout(Stdio::null())
                // The daemon's own complaints (a transfer child's errors) go to stderr.
                .stderr(fs::File::create(conf_dir.join("stderr")).unwrap())
                .spawn()
                .unwrap()
        });
        if let Some((port, child)) = started {
            return OpenrsyncDaemon {
                port,
                child,
                log,
                stderr: conf_dir.join("stderr"),
            };
        }
        panic!(
            "openrsync --daemon did not start; log: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// What the daemon logged and printed so far (for failure messages).
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.log).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for OpenrsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

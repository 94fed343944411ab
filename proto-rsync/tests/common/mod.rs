//! Helpers shared by the crate's integration tests; each test binary uses only some of them.
#![allow(dead_code)]

pub mod mem_sink;
pub mod recorded_tree;
pub mod transcript;
pub mod tree;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use turku_proto_rsync::FileEntry;

/// An entry as a scripted daemon lists it: a fixed mtime, and `.` marked as the top
/// directory the way a daemon sends it.
pub fn entry(name: &str, mode: u32, size: i64) -> FileEntry {
    FileEntry {
        mtime: 1_700_000_000,
        top_dir: name == ".",
        ..FileEntry::new(name.as_bytes().to_vec(), mode, size)
    }
}

/// Whether we run as root; read from `/proc` so no `unsafe` call is needed.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A stock `rsync --daemon` on 127.0.0.1, at a port the kernel picked; killed when dropped.
pub struct StockDaemon {
    pub child: Child,
    pub port: u16,
    /// Holds `rsyncd.conf` and whatever else the configuration names (log, secrets, MOTD).
    pub dir: tempfile::TempDir,
}

impl Drop for StockDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StockDaemon {
    /// Writes `conf` to `dir/rsyncd.conf`, starts `rsync` on it and waits until it accepts
    /// connections. If it never does, panics with the log a configuration may have named
    /// `dir/rsyncd.log`.
    pub fn launch(rsync: &Path, dir: tempfile::TempDir, conf: &str) -> StockDaemon {
        StockDaemon::launch_with_args(rsync, dir, conf, &[])
    }

    /// As [`Self::launch`], with more daemon options (e.g. `--protocol=29`, which makes a
    /// stock daemon greet and speak as an older one).
    pub fn launch_with_args(
        rsync: &Path,
        dir: tempfile::TempDir,
        conf: &str,
        args: &[String],
    ) -> StockDaemon {
        let conf_path = dir.path().join("rsyncd.conf");
        std::fs::write(&conf_path, conf).expect("write conf");
        // Take an ephemeral port from the kernel; the window before rsync binds it is tiny.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(rsync)
            .arg("--daemon")
            .arg("--no-detach")
            .arg("--address=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf_path.display()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rsync --daemon");
        let d = StockDaemon { child, port, dir };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let log = std::fs::read_to_string(d.dir.path().join("rsyncd.log")).unwrap_or_default();
        panic!("rsync daemon did not start; log: {log}");
    }
}

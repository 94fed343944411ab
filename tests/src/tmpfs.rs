//! A small tmpfs for full-disk tests: a real file system that fills up, gone when dropped.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// A tmpfs of a given size, unmounted (lazily when busy) when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `mib` MiB. Not being root fails the test: a full-disk case must not pass by
    /// being skipped.
    pub fn mount(mib: u32) -> Tmpfs {
        assert!(
            crate::is_root(),
            "this test mounts a small tmpfs to fill the disk: the test suite must run as \
             root (as CI does; other tests switch to `nobody` as well)"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn resize(&self, mib: u32) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Bytes an unprivileged writer could still put on the volume.
    pub fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path()).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a handle open in a failing test): detach it instead of leaking it.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

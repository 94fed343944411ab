//! A [`SendSource`] reading a plain directory: what tests and the speed comparison with
//! stock `rsync` push from, and a model for other sources.

use super::{FileContent, SendSource};
use crate::codec::flist::{FileEntry, HardLink};
use crate::constants::*;
use crate::error::SinkError;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Sends the tree under a directory.
#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    io_error: u32,
    /// What could not be listed (unreadable directories, entries gone while listing).
    pub list_errors: Vec<String>,
}

/// An open regular file.
#[derive(Debug)]
pub struct DirContent(std::fs::File);

impl FileContent for DirContent {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError> {
        loop {
            match std::io::Read::read(&mut self.0, buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return Ok(r?),
            }
        }
    }
}

impl DirSource {
    /// Lists `root` as stock does for `rsync -a root/`: `.` (the directory itself, top
    /// directory) first, then depth first, each directory before its contents (names in
    /// byte order within a directory). Entries carry `lstat` metadata: full mode, size,
    /// mtime with nanoseconds, numeric owners, device numbers, symlink targets verbatim.
    /// With `hard_links`, non-directories sharing an inode form groups led by their first
    /// listed member. Entries that cannot be read are left out and set `IOERR_GENERAL`
    /// (the receiver then deletes nothing).
    pub fn scan(root: &Path, hard_links: bool) -> std::io::Result<(DirSource, Vec<FileEntry>)> {
        let mut src = DirSource {
            root: root.to_path_buf(),
            io_error: 0,
            list_errors: Vec::new(),
        };
        let top = std::fs::symlink_metadata(root)?;
        if !top.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut entries = Vec::new();
        let mut dot = entry_from(b".".to_vec(), &top, None);
        dot.top_dir = true;
        entries.push(dot);
        let mut groups: HashMap<(u64, u64), u32> = HashMap::new();
        let mut stack: Vec<(Vec<u8>, std::vec::IntoIter<OsString>)> =
            vec![(Vec::new(), src.read_sorted(root)?.into_iter())];
        while let Some((prefix, names)) = stack.last_mut() {
            let Some(name) = names.next() else {
                stack.pop();
                continue;
            };
            let mut rel = prefix.clone();
            rel.extend_from_slice(name.as_bytes());
            let path = root.join(OsStr::from_bytes(&rel));
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    src.list_error(&path, &e);
                    continue;
                }
            };
            let target = if m.file_type().is_symlink() {
                match std::fs::read_link(&path) {
                    Ok(t) => Some(t.into_os_string().into_vec()),
                    Err(e) => {
                        src.list_error(&path, &e);
                        continue;
                    }
                }
            } else {
                None
            };
            let mut e = entry_from(rel.clone(), &m, target);
            if hard_links && !m.is_dir() && m.nlink() > 1 {
                let at = entries.len() as u32;
                e.hard_link = match groups.get(&(m.dev(), m.ino())) {
                    Some(&first) => HardLink::Follower { first },
                    None => {
                        groups.insert((m.dev(), m.ino()), at);
                        HardLink::Leader
                    }
                };
            }
            entries.push(e);
            if m.is_dir() {
                match src.read_sorted(&path) {
                    Ok(children) => {
                        rel.push(b'/');
                        stack.push((rel, children.into_iter()));
                    }
                    Err(e) => src.list_error(&path, &e),
                }
            }
        }
        Ok((src, entries))
    }

    fn read_sorted(&self, dir: &Path) -> std::io::Result<Vec<OsString>> {
        let mut names = std::fs::read_dir(dir)?
            .map(|d| d.map(|d| d.file_name()))
            .collect::<std::io::Result<Vec<_>>>()?;
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    fn list_error(&mut self, path: &Path, e: &std::io::Error) {
        tracing::warn!(path = %path.display(), "cannot list: {e}");
        self.io_error |= IOERR_GENERAL;
        self.list_errors.push(format!("{}: {e}", path.display()));
    }
}

/// A list entry from `lstat` metadata.
fn entry_from(name: Vec<u8>, m: &std::fs::Metadata, symlink: Option<Vec<u8>>) -> FileEntry {
    let ft = m.file_type();
    let size = if ft.is_file() || ft.is_dir() {
        m.size() as i64
    } else {
        symlink.as_ref().map_or(0, |t| t.len() as i64)
    };
    let mut e = FileEntry::new(name, m.mode(), size);
    e.mtime = m.mtime();
    e.mtime_nsec = m.mtime_nsec().clamp(0, 999_999_999) as u32;
    e.uid = m.uid();
    e.gid = m.gid();
    if ft.is_block_device() || ft.is_char_device() {
        e.rdev = Some(split_rdev(m.rdev()));
    }
    e.symlink = symlink;
    e
}

/// Linux's `major()`/`minor()` of a `dev_t`.
fn split_rdev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

impl SendSource for DirSource {
    type Content = DirContent;

    fn open(&mut self, _ndx: u32, entry: &FileEntry) -> Result<DirContent, SinkError> {
        let path = self.root.join(OsStr::from_bytes(&entry.name));
        // Checked first: opening a FIFO that replaced the file would block.
        let m = std::fs::symlink_metadata(&path)?;
        if m.mode() & S_IFMT != S_IFREG {
            return Err(format!("{} is no longer a regular file", path.display()).into());
        }
        Ok(DirContent(std::fs::File::open(&path)?))
    }

    fn list_io_error(&self) -> u32 {
        self.io_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_split_matches_glibc() {
        // makedev(8, 1) and makedev(259, 65536).
        assert_eq!(split_rdev(0x801), (8, 1));
        // makedev(259, 65536) as glibc builds it.
        let (major, minor) = (259u64, 65536u64);
        let dev =
            ((major & 0xfff) << 8) | ((major >> 12) << 44) | (minor & 0xff) | ((minor >> 8) << 20);
        assert_eq!(split_rdev(dev), (259, 65536));
    }

    #[test]
    fn scan_lists_parents_first_with_hard_links() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/e")).unwrap();
        std::fs::write(t.path().join("d/e/f"), b"x").unwrap();
        std::fs::write(t.path().join("a"), b"y").unwrap();
        std::fs::hard_link(t.path().join("a"), t.path().join("d/link")).unwrap();
        std::os::unix::fs::symlink("../a", t.path().join("d/sym")).unwrap();
        let (src, list) = DirSource::scan(t.path(), true).unwrap();
        let names: Vec<_> = list.iter().map(|e| e.name_lossy()).collect();
        assert_eq!(names, [".", "a", "d", "d/e", "d/e/f", "d/link", "d/sym"]);
        assert!(list[0].top_dir);
        assert_eq!(list[1].hard_link, HardLink::Leader);
        assert_eq!(list[5].hard_link, HardLink::Follower { first: 1 });
        assert_eq!(list[6].symlink.as_deref(), Some(&b"../a"[..]));
        assert_eq!(list[6].size, 4);
        assert_eq!(src.list_io_error(), 0);
    }
}

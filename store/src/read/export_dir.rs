//! Restoring a snapshot (or a sub-path of it) into a directory, as root on the storage unit.
//!
//! A local user whose uid appears in the snapshot must not be able to steer root: every entry
//! is created relative to an open directory descriptor, never by a path that could lead through
//! a symlink (`O_NOFOLLOW`, `O_EXCL`); a regular file's owner, mode and times are set on its open
//! descriptor; the destination is made private (0700, owned by the exporting user) before
//! anything lands in it, and every folder stays private until all content is written, when
//! owners, modes and times are applied, deepest first. So no other user can reach, let alone
//! change, anything while we work in it.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{IoContext, Result, StoreError};
use crate::format::id::Id;
use crate::format::tree::{ChunkRef, EntryData, EntryKind, Metadata, TreeEntry};
use crate::read::chunks::ChunkReader;
use crate::read::walk::{HardLink, SnapshotWalk, WalkEntry, WalkEvent};
use crate::read::ExportStats;
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::tuning::{EXPORT_CONTENT_THREADS, EXPORT_FILES_AHEAD, SPARSE_MIN_HOLE};

/// Permission bits a restore may set: `st_mode & 0o7777`.
const PERMISSION_BITS: u32 = 0o7777;
/// Setuid and setgid: dropped from non-directories when owners are not restored.
const SET_ID_BITS: u32 = 0o6000;
/// Folders, and a regular file until its content is written, are private to the exporter.
const PRIVATE_FOLDER_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// How [`Store::export_to_dir_with`] restores.
pub struct ExportOptions<'a> {
    /// Restore owners, device nodes and setuid/setgid bits as the snapshot has them (what a
    /// restore is for; only root can). Defaults to whether we run as root. Without it, entries
    /// belong to the exporting user, devices are skipped (counted) and setuid/setgid bits are
    /// dropped from everything but folders: on a file they would lend the exporting user's
    /// rights to whoever runs it. A folder keeps setgid (it only makes new entries inherit
    /// its group).
    pub restore_owners: bool,
    /// Called at the moments another local user would race the export, so tests can play
    /// that user. Not part of the stable API.
    #[doc(hidden)]
    pub race_hook: Option<&'a dyn Fn(ExportStep<'_>)>,
}

/// Where [`ExportOptions::race_hook`] is called.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum ExportStep<'p> {
    /// A folder has just been created at this path and is not yet opened.
    FolderCreated(&'p Path),
    /// A regular file's content is written; its owner, mode and times are not yet set.
    FileWritten(&'p Path),
}

impl Default for ExportOptions<'_> {
    fn default() -> Self {
        ExportOptions {
            restore_owners: nix::unistd::geteuid().is_root(),
            race_hook: None,
        }
    }
}

impl fmt::Debug for ExportOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportOptions")
            .field("restore_owners", &self.restore_owners)
            .field("race_hook", &self.race_hook.is_some())
            .finish()
    }
}

/// Attach the operation and path to a failed system call.
trait NixContext<T> {
    fn nix_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> NixContext<T> for nix::Result<T> {
    fn nix_ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(io::Error::from).io_ctx(op, path)
    }
}

fn mtime_of(meta: &Metadata) -> TimeSpec {
    TimeSpec::new(
        meta.mtime_sec as libc::time_t,
        i64::from(meta.mtime_nsec) as _,
    )
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits as libc::mode_t)
}

/// Opens the folder `name` in `parent` without following a symlink, and checks it is one the
/// exporting user owns (so one we created, not one put in its place).
fn open_folder(parent: BorrowedFd<'_>, name: &[u8], path: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .nix_ctx(
        "open the folder just created (was it replaced while exporting?)",
        path,
    )?;
    let st = nix::sys::stat::fstat(&fd).nix_ctx("stat", path)?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(StoreError::InvalidArgument(format!(
            "{} was replaced while exporting (now owned by uid {})",
            path.display(),
            st.st_uid
        )));
    }
    Ok(fd)
}

fn folder_is_empty(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    let mut dir = nix::dir::Dir::openat(
        fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .nix_ctx("read folder", path)?;
    for entry in dir.iter() {
        let entry = entry.nix_ctx("read folder", path)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates `dest` (or takes it if it exists, is empty and is the exporting user's own) and
/// makes it private. Returns it open, with the mode it had, which a single-entry export gives
/// back at the end (a folder export gives it the snapshot folder's mode instead).
/// As root, every folder above the destination must be one only root can change: owned by
/// root and not writable by group or others (unless sticky, like `/tmp`, where others cannot
/// rename or remove root's entries). Otherwise its owner could swap a folder on the path for
/// a symlink between our checks and our writes and steer the export anywhere. Symlinks on
/// the path itself are fine (resolved once here), as long as what they lead to is root's.
fn check_parents_only_root_can_change(parent: &Path) -> Result<()> {
    let resolved = fs::canonicalize(parent).io_ctx("resolve folder", parent)?;
    for folder in resolved.ancestors() {
        let meta = fs::metadata(folder).io_ctx("stat", folder)?;
        let writable_by_others = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        if meta.uid() != 0 || writable_by_others {
            return Err(StoreError::InvalidArgument(format!(
                "{} (on the way to the destination) can be changed by uid {} or others, who \
                 could redirect an export running as root; export under folders only root \
                 can change",
                folder.display(),
                meta.uid()
            )));
        }
    }
    Ok(())
}

fn open_destination(dest: &Path) -> Result<(OwnedFd, Mode)> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).io_ctx("create folder", parent)?;
        if nix::unistd::geteuid().is_root() {
            check_parents_only_root_can_change(parent)?;
        }
    }
    // The usual mode (umask applied) is learned here and given back to a single-entry export;
    // the folder is empty until it is made private below, and checked empty after that.
    match fs::DirBuilder::new().mode(0o777).create(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).io_ctx("create folder", dest),
    }
    let fd = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .nix_ctx("open the destination (symlinks are not followed)", dest)?;
    let st = nix::sys::stat::fstat(&fd).nix_ctx("stat", dest)?;
    let euid = nix::unistd::geteuid().as_raw();
    if st.st_uid != euid {
        return Err(StoreError::InvalidArgument(format!(
            "{} belongs to uid {}, not to the exporting user (uid {euid}), who could change it \
             during the export; export into a new folder",
            dest.display(),
            st.st_uid
        )));
    }
    let not_empty = || {
        StoreError::InvalidArgument(format!(
            "{} is not empty; export into a new or empty folder",
            dest.display()
        ))
    };
    if !folder_is_empty(fd.as_fd(), dest)? {
        return Err(not_empty());
    }
    let original = mode(st.st_mode & PERMISSION_BITS);
    nix::sys::stat::fchmod(&fd, mode(PRIVATE_FOLDER_MODE)).nix_ctx("chmod", dest)?;
    // Someone may have slipped an entry in before it became private.
    if !folder_is_empty(fd.as_fd(), dest)? {
        nix::sys::stat::fchmod(&fd, original).nix_ctx("chmod", dest)?;
        return Err(not_empty());
    }
    Ok((fd, original))
}

struct DirExporter<'a> {
    options: &'a ExportOptions<'a>,
    dest: &'a Path,
    /// The destination folder; every entry is reached from it without following symlinks.
    root: &'a OwnedFd,
    stats: ExportStats,
    /// Folders (relative to `dest`) whose owner, mode and times are applied after all
    /// content, in the order their contents were finished: deepest first.
    folders: Vec<(Vec<u8>, Metadata)>,
    /// The exported folder's own metadata, applied to the destination last.
    root_meta: Option<Metadata>,
    /// Hard links to make once every file is written.
    links: Vec<PendingLink>,
}

/// A hard link to make after all files: paths relative to the destination.
struct PendingLink {
    leader: Vec<u8>,
    path: Vec<u8>,
}

impl DirExporter<'_> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.dest.to_path_buf()
        } else {
            self.dest.join(OsStr::from_bytes(rel))
        }
    }

    fn race_point(&self, step: ExportStep<'_>) {
        if let Some(hook) = self.options.race_hook {
            hook(step);
        }
    }

    /// The permission bits to give an entry.
    fn final_mode(&self, meta: &Metadata, is_folder: bool) -> Mode {
        let mut bits = meta.perm & PERMISSION_BITS;
        if !self.options.restore_owners && !is_folder {
            bits &= !SET_ID_BITS;
        }
        mode(bits)
    }

    /// Owner, then mode (a chown clears setuid and setgid), then times, all on the open entry.
    fn apply_meta(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Metadata,
        is_folder: bool,
        path: &Path,
    ) -> Result<()> {
        if self.options.restore_owners {
            nix::unistd::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .nix_ctx("chown", path)?;
        }
        nix::sys::stat::fchmod(fd, self.final_mode(meta, is_folder)).nix_ctx("chmod", path)?;
        let t = mtime_of(meta);
        nix::sys::stat::futimens(fd, &t, &t).nix_ctx("set mtime", path)
    }

    /// Opens the folder at `rel` (relative to `dest`) one component at a time, following no
    /// symlink.
    fn open_path(&self, rel: &[u8]) -> Result<OwnedFd> {
        let mut fd = self
            .root
            .try_clone()
            .io_ctx("duplicate descriptor", self.dest)?;
        let mut done = 0;
        for part in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            done += part.len() + usize::from(done > 0);
            fd = open_folder(fd.as_fd(), part, &self.path(&rel[..done]))?;
        }
        Ok(fd)
    }

    /// Creates the folders, files and other entries of the walk, in walk order. A folder
    /// stays open (in `open_folders`) while the walk is inside it, so every entry is created
    /// in its parent through a descriptor. A regular file is created here and handed, open,
    /// to the content thread, which reads, verifies and writes its content and hands it back
    /// for its owner, mode and times.
    fn run(&mut self, walk: SnapshotWalk<'_>, content: &mut ContentPipe) -> Result<()> {
        let root = Arc::new(
            self.root
                .try_clone()
                .io_ctx("duplicate descriptor", self.dest)?,
        );
        let mut open_folders: Vec<Arc<OwnedFd>> = Vec::new();
        for event in walk {
            let walked = match event? {
                WalkEvent::DirDone { path, meta, .. } => {
                    if path.is_empty() {
                        self.root_meta = Some(meta);
                    } else {
                        open_folders.pop();
                        self.folders.push((path, meta));
                    }
                    continue;
                }
                WalkEvent::Entry(walked) => walked,
            };
            if walked.is_root() {
                continue;
            }
            let dir = open_folders.last().unwrap_or(&root);
            if let Some(sub) = self.entry(dir, walked, content)? {
                open_folders.push(Arc::new(sub));
            }
            while let Some(done) = content.try_done()? {
                self.file_written(done)?;
            }
        }
        content.no_more_files();
        while let Some(done) = content.wait_done()? {
            self.file_written(done)?;
        }
        // Every leader is in now (the content threads create files in no set order).
        for link in std::mem::take(&mut self.links) {
            self.hard_link(&link.leader, &link.path)?;
            self.stats.hard_links += 1;
        }
        Ok(())
    }

    /// A regular file whose content is in: its owner, mode and times, set on its descriptor.
    fn file_written(&mut self, done: WrittenFile) -> Result<()> {
        self.stats.bytes += done.written;
        self.stats.files += 1;
        self.race_point(ExportStep::FileWritten(&done.path));
        self.apply_meta(done.out.as_fd(), &done.meta, false, &done.path)
    }

    /// Creates one entry in `dir`; returns a folder it created, opened.
    fn entry(
        &mut self,
        parent: &Arc<OwnedFd>,
        walked: WalkEntry,
        content: &mut ContentPipe,
    ) -> Result<Option<OwnedFd>> {
        let dir = parent.as_fd();
        let e = walked.entry;
        let path = self.path(&walked.path);
        let name = e.name.as_slice();
        match &e.data {
            EntryData::Dir { .. } => {
                nix::sys::stat::mkdirat(dir, name, mode(PRIVATE_FOLDER_MODE))
                    .nix_ctx("create folder", &path)?;
                self.race_point(ExportStep::FolderCreated(&path));
                let sub = open_folder(dir, name, &path)?;
                self.stats.dirs += 1;
                return Ok(Some(sub));
            }
            EntryData::File { chunks, .. } => {
                if let HardLink::Follower { leader_path, .. } = walked.link {
                    self.links.push(PendingLink {
                        leader: leader_path,
                        path: walked.path,
                    });
                    return Ok(None);
                }
                content.write(FileToWrite {
                    dir: Arc::clone(parent),
                    name: e.name,
                    chunks: chunks.clone(),
                    path,
                    meta: e.meta,
                })?;
            }
            EntryData::Symlink { target } => {
                nix::unistd::symlinkat(target.as_slice(), dir, name).nix_ctx("symlink", &path)?;
                if self.options.restore_owners {
                    nix::unistd::fchownat(
                        dir,
                        name,
                        Some(Uid::from_raw(e.meta.uid)),
                        Some(Gid::from_raw(e.meta.gid)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .nix_ctx("chown", &path)?;
                }
                let t = mtime_of(&e.meta);
                nix::sys::stat::utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .nix_ctx("set mtime", &path)?;
                self.stats.symlinks += 1;
            }
            EntryData::Device { .. } | EntryData::Special => self.special(dir, &e, &path)?,
        }
        Ok(None)
    }

    /// Device nodes, FIFOs and sockets. They cannot be opened without side effects (a device)
    /// or at all (a socket), so their owner and mode are set by name. That is safe: the name
    /// was just made by `mknodat` in a folder only the exporting user can write until the end,
    /// and the owner is set without following symlinks.
    fn special(&mut self, dir: BorrowedFd<'_>, e: &TreeEntry, path: &Path) -> Result<()> {
        let name = e.name.as_slice();
        let (kind, rdev) = match (e.kind, &e.data) {
            (EntryKind::CharDevice, EntryData::Device { rdev }) => (SFlag::S_IFCHR, *rdev),
            (EntryKind::BlockDevice, EntryData::Device { rdev }) => (SFlag::S_IFBLK, *rdev),
            (EntryKind::Fifo, _) => (SFlag::S_IFIFO, 0),
            _ => (SFlag::S_IFSOCK, 0),
        };
        let is_device = matches!(kind, SFlag::S_IFCHR | SFlag::S_IFBLK);
        if is_device && !self.options.restore_owners {
            tracing::warn!("not restoring owners: skipping device {}", path.display());
            self.stats.skipped += 1;
            return Ok(());
        }
        nix::sys::stat::mknodat(
            dir,
            name,
            kind,
            mode(PRIVATE_FILE_MODE),
            rdev as libc::dev_t,
        )
        .nix_ctx("mknod", path)?;
        if self.options.restore_owners {
            nix::unistd::fchownat(
                dir,
                name,
                Some(Uid::from_raw(e.meta.uid)),
                Some(Gid::from_raw(e.meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .nix_ctx("chown", path)?;
        }
        nix::sys::stat::fchmodat(
            dir,
            name,
            self.final_mode(&e.meta, false),
            FchmodatFlags::FollowSymlink,
        )
        .nix_ctx("chmod", path)?;
        let t = mtime_of(&e.meta);
        nix::sys::stat::utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .nix_ctx("set mtime", path)?;
        self.stats.specials += 1;
        Ok(())
    }

    /// Links `rel` to the group's first file `first`, both reached from the destination
    /// without following symlinks (every folder on the way is still private).
    fn hard_link(&self, first: &[u8], rel: &[u8]) -> Result<()> {
        let split = |p: &'_ [u8]| -> (Vec<u8>, Vec<u8>) {
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => (p[..i].to_vec(), p[i + 1..].to_vec()),
                None => (Vec::new(), p.to_vec()),
            }
        };
        let (leader_dir, leader_name) = split(first);
        let (dir, name) = split(rel);
        let leader_fd = self.open_path(&leader_dir)?;
        let dir_fd = self.open_path(&dir)?;
        nix::unistd::linkat(
            leader_fd.as_fd(),
            leader_name.as_slice(),
            dir_fd.as_fd(),
            name.as_slice(),
            AtFlags::empty(),
        )
        .nix_ctx("hard link", self.path(rel))
    }

    /// Gives every folder below the destination its owner, mode and times, deepest first,
    /// opening each once through the chain of its (still private) parents.
    fn finish_folders(&mut self) -> Result<()> {
        let folders = std::mem::take(&mut self.folders);
        let mut chain: Vec<(&[u8], OwnedFd)> = Vec::new();
        for (rel, meta) in &folders {
            let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
            let common = chain
                .iter()
                .zip(&parts)
                .take_while(|((open, _), part)| open == *part)
                .count();
            chain.truncate(common);
            let mut done: usize = chain.iter().map(|(p, _)| p.len() + 1).sum();
            for part in &parts[common..] {
                done += part.len() + 1;
                let path = self.path(&rel[..done - 1]);
                let parent = chain.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
                let fd = open_folder(parent, part, &path)?;
                chain.push((part, fd));
            }
            let path = self.path(rel);
            match chain.last() {
                Some((_, fd)) => self.apply_meta(fd.as_fd(), meta, true, &path)?,
                None => {
                    return Err(StoreError::InvalidArgument(format!(
                        "empty folder path under {}",
                        self.dest.display()
                    )))
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// Restores `sub_path` of `snap` into `dest` (created; must be missing or empty) with the
    /// default options: owners, devices and setuid bits restored when running as root.
    /// A directory's contents land in `dest`; a single entry lands as `dest/<name>`.
    pub fn export_to_dir(
        &self,
        snap: &Snapshot,
        sub_path: &[u8],
        dest: &Path,
    ) -> Result<ExportStats> {
        self.export_to_dir_with(snap, sub_path, dest, &ExportOptions::default())
    }

    /// [`Store::export_to_dir`] with explicit options. `dest` itself is never a followed
    /// symlink; an existing `dest` must be empty and belong to the exporting user. It stays
    /// 0700 until the export is complete (also when the export fails).
    pub fn export_to_dir_with(
        &self,
        snap: &Snapshot,
        sub_path: &[u8],
        dest: &Path,
        options: &ExportOptions<'_>,
    ) -> Result<ExportStats> {
        let walk = self.walk(snap, sub_path)?;
        let top_is_dir = walk.top_is_dir();
        let (root, original_mode) = open_destination(dest)?;
        let mut ex = DirExporter {
            options,
            dest,
            root: &root,
            stats: ExportStats::default(),
            folders: Vec::new(),
            root_meta: None,
            links: Vec::new(),
        };
        // File content (pack reads, decompression, hash checks, writes) goes on a thread of
        // its own while this one walks ahead creating entries (on ext4 creating the inodes is
        // most of an export's time): the two overlap instead of taking turns.
        std::thread::scope(|scope| {
            let (files, to_write) = mpsc::sync_channel(EXPORT_FILES_AHEAD);
            let to_write = Arc::new(Mutex::new(to_write));
            let (written, done) = mpsc::channel();
            let writers: Vec<_> = (0..EXPORT_CONTENT_THREADS)
                .map(|_| {
                    let to_write = Arc::clone(&to_write);
                    let written = written.clone();
                    scope.spawn(move || write_contents(self, &to_write, written))
                })
                .collect();
            drop(written);
            // Only the writers hold the queue's receiving end: once they have all stopped, a
            // hand-over fails at once instead of waiting on a full queue for ever.
            drop(to_write);
            let mut content = ContentPipe {
                files: Some(files),
                done,
            };
            let result = ex.run(walk, &mut content);
            // Stops the content thread at its next file if we stopped early.
            drop(content);
            let mut panicked = false;
            for writer in writers {
                panicked |= writer.join().is_err();
            }
            // A writer that panicked sent nothing back: its file may be short or missing.
            match result {
                Ok(()) if panicked => {
                    Err(StoreError::Busy("an export content thread panicked".into()))
                }
                other => other,
            }
        })?;
        ex.finish_folders()?;
        match ex.root_meta {
            Some(meta) if top_is_dir => ex.apply_meta(root.as_fd(), &meta, true, dest)?,
            _ => nix::sys::stat::fchmod(&root, original_mode).nix_ctx("chmod", dest)?,
        }
        Ok(ex.stats)
    }
}

/// A file for a content thread to create in `dir` and fill.
struct FileToWrite {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    chunks: Vec<ChunkRef>,
    path: PathBuf,
    meta: Metadata,
}

/// A file whose content the content thread has written, back for its metadata.
struct WrittenFile {
    out: File,
    path: PathBuf,
    meta: Metadata,
    written: u64,
}

/// The walking thread's ends of the channels to and from the content thread.
struct ContentPipe {
    /// `None` once every file is handed over.
    files: Option<mpsc::SyncSender<FileToWrite>>,
    done: mpsc::Receiver<Result<WrittenFile>>,
}

impl ContentPipe {
    /// Hands a file over; waits while `EXPORT_FILES_AHEAD` are queued.
    fn write(&mut self, file: FileToWrite) -> Result<()> {
        let stopped = || StoreError::InvalidArgument("export: the content thread stopped".into());
        let files = self.files.as_ref().ok_or_else(stopped)?;
        if files.send(file).is_ok() {
            return Ok(());
        }
        // The content thread stops only when it fails, and sends why first.
        match self.done.try_iter().find_map(|r| r.err()) {
            Some(e) => Err(e),
            None => Err(stopped()),
        }
    }

    /// A file written since the last call, if any.
    fn try_done(&mut self) -> Result<Option<WrittenFile>> {
        match self.done.try_recv() {
            Ok(done) => done.map(Some),
            Err(_) => Ok(None),
        }
    }

    fn no_more_files(&mut self) {
        self.files = None;
    }

    /// The next file written; `None` once the content thread has finished them all.
    fn wait_done(&mut self) -> Result<Option<WrittenFile>> {
        match self.done.recv() {
            Ok(done) => done.map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// A content thread: creates and fills the files handed over and hands each back, open.
/// Stops at its first failure (sent back) or when the walking thread has gone.
fn write_contents(
    store: &Store,
    files: &Mutex<mpsc::Receiver<FileToWrite>>,
    written: mpsc::Sender<Result<WrittenFile>>,
) {
    let mut source = ChunkSource {
        reader: ChunkReader::new(store),
        hole: None,
    };
    loop {
        let next = files.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(file) = next else {
            return;
        };
        let result = create_and_fill(&mut source, file);
        let failed = result.is_err();
        if written.send(result).is_err() || failed {
            return;
        }
    }
}

/// Creates a file (private, never through a symlink, never an existing one) and writes its
/// content.
fn create_and_fill(source: &mut ChunkSource, file: FileToWrite) -> Result<WrittenFile> {
    let fd = nix::fcntl::openat(
        file.dir.as_fd(),
        file.name.as_slice(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode(PRIVATE_FILE_MODE),
    )
    .nix_ctx("create", &file.path)?;
    let mut out = File::from(fd);
    let written = write_sparse(source, &file.chunks, &mut out, &file.path)?;
    Ok(WrittenFile {
        out,
        path: file.path,
        meta: file.meta,
        written,
    })
}

/// Chunks read for the content thread (packs kept open between chunks, buffers and a zstd
/// context of its own), with whether the chunk held is a hole: a run of one repeated chunk
/// (zeros) is read, checked and scanned once.
struct ChunkSource {
    reader: ChunkReader,
    /// The chunk last scanned for a hole, and whether it is one (all zeros, long enough).
    hole: Option<(Id, bool)>,
}

impl ChunkSource {
    fn read(&mut self, chunk: &ChunkRef) -> Result<(&[u8], bool)> {
        let data = self.reader.read(chunk)?;
        let hole = match self.hole {
            Some((id, hole)) if id == chunk.id => hole,
            _ => {
                let hole = data.len() >= SPARSE_MIN_HOLE && data.iter().all(|&b| b == 0);
                self.hole = Some((chunk.id, hole));
                hole
            }
        };
        Ok((data, hole))
    }
}

/// Writes a file's content, leaving holes where whole chunks are zeros (as a sparse source
/// had them: CDC cuts long zero runs into max-size chunks of nothing but zeros).
fn write_sparse(
    source: &mut ChunkSource,
    chunks: &[ChunkRef],
    out: &mut File,
    path: &Path,
) -> Result<u64> {
    let mut written = 0u64;
    let mut pending_hole = false;
    for chunk in chunks {
        let (data, hole) = source.read(chunk)?;
        if hole {
            out.seek(SeekFrom::Current(data.len() as i64))
                .io_ctx("seek", path)?;
            pending_hole = true;
        } else {
            out.write_all(data).io_ctx("write", path)?;
            pending_hole = false;
        }
        written += data.len() as u64;
    }
    if pending_hole {
        // A trailing hole needs the length set explicitly.
        out.set_len(written).io_ctx("extend", path)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use std::os::unix::fs::PermissionsExt;

    fn meta(perm: u32) -> Metadata {
        Metadata {
            perm,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mtime_sec: 1_600_000_000,
            mtime_nsec: 5,
        }
    }

    /// A content thread that meets a damaged chunk halfway through ends the export with
    /// that error (the walking thread neither hangs nor goes on), and the destination stays
    /// private.
    #[test]
    fn a_damaged_chunk_midway_ends_the_export_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), StoreConfig::default()).unwrap();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        w.set_root_meta(meta(0o755));
        for d in 0..10 {
            w.add_dir(format!("d{d}").as_bytes(), meta(0o755)).unwrap();
            for f in 0..40u32 {
                let mut file = w
                    .add_file(format!("d{d}/f{f}").as_bytes(), meta(0o644), 0)
                    .unwrap();
                let seed = (d * 1000 + f) as u8;
                let body: Vec<u8> = (0..3000u32)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                    .collect();
                file.write_all(&body).unwrap();
                file.finish().unwrap();
            }
        }
        let snap = w.commit().unwrap();
        let out = dir.path().join("out");
        store.export_to_dir(&snap, b"", &out).unwrap();
        // Damage one file's chunk in the middle of the walk.
        damage_first_chunk(&store, &snap, b"d5/f20");

        let out = dir.path().join("out2");
        let err = store.export_to_dir(&snap, b"", &out).unwrap_err();
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, PRIVATE_FOLDER_MODE);
        // What came after the damaged file in walk order was not all written.
        assert!(!out.join("d9/f39").exists());
    }

    /// Flips a byte in the middle of the stored first chunk of the file at `path`.
    fn damage_first_chunk(store: &Store, snap: &Snapshot, path: &[u8]) {
        let victim = store.lookup(snap, path).unwrap();
        let EntryData::File { chunks, .. } = &victim.data else {
            panic!("not a file")
        };
        let found = crate::index::find_blob(&store.db(), &chunks[0].id)
            .unwrap()
            .unwrap();
        let pack = crate::format::pack::pack_path(&store.packs_dir(), &found.pack_name);
        let mut bytes = std::fs::read(&pack).unwrap();
        let at = found.location.offset as usize + found.location.stored_len as usize / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&pack, &bytes).unwrap();
    }

    /// A damaged chunk every file shares stops both content threads: the export must end
    /// with the error, not wait for ever on a queue nobody drains. (The hang needed the
    /// walker to be waiting on a full queue at the moment the last writer stopped: a race
    /// this test makes likely, not certain.)
    #[test]
    fn a_damaged_chunk_every_file_shares_ends_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), StoreConfig::default()).unwrap();
        let mut w = store.begin_snapshot("m", "s").unwrap();
        w.set_root_meta(meta(0o755));
        // Two slow good files first, so the walker fills the queue and waits on it while
        // the writers are busy.
        for (i, name) in [b"a0", b"a1"].iter().enumerate() {
            let mut file = w.add_file(*name, meta(0o644), 0).unwrap();
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
            let big: Vec<u8> = (0..16 << 20)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            file.write_all(&big).unwrap();
            file.finish().unwrap();
        }
        let body: Vec<u8> = (0..3000u32).map(|i| (i as u8).wrapping_mul(31)).collect();
        for f in 0..(EXPORT_FILES_AHEAD as u32 * 4) {
            let mut file = w
                .add_file(format!("f{f:04}").as_bytes(), meta(0o644), 0)
                .unwrap();
            file.write_all(&body).unwrap();
            file.finish().unwrap();
        }
        let snap = w.commit().unwrap();
        damage_first_chunk(&store, &snap, b"f0000");

        let out = dir.path().join("out");
        let (tx, rx) = std::sync::mpsc::channel();
        let store2 = store.clone();
        let out2 = out.clone();
        let snap2 = snap.clone();
        std::thread::spawn(move || {
            let _ = tx.send(store2.export_to_dir(&snap2, b"", &out2));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the export hung");
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");

        // A tar of it fails too, and its stream is cut off, not closed like a whole archive.
        let mut tar = Vec::new();
        let err = store.export_to_tar(&snap, b"", &mut tar).unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
        assert!(
            tar.len() < 1024 || tar[tar.len() - 1024..].iter().any(|&b| b != 0),
            "a failed tar export ended with the end-of-archive blocks"
        );
    }
}

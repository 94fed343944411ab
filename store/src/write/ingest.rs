//! Backing up a local directory tree into a snapshot (the `ingest` command).
//!
//! Files whose size and mtime match the previous snapshot of the source are not read: their
//! chunk lists are reused (the same rule the rsync pull applies). Hard links are detected by
//! device and inode and stored once.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{IoContext, Result, StoreError};
use crate::format::tree::{link_group_for, ChunkRef, EntryKind, Metadata};
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::write::writer::SnapshotWriter;

/// Counters reported while an ingest runs and at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestProgress {
    pub entries: u64,
    pub bytes_read: u64,
    /// Files skipped because they vanished or could not be read, with the reason.
    pub warnings: Vec<String>,
}

pub fn metadata_of(m: &fs::Metadata) -> Metadata {
    Metadata {
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

struct Ingest<'p> {
    writer: SnapshotWriter,
    links: HashMap<(u64, u64), (u64, Vec<ChunkRef>)>,
    progress: IngestProgress,
    on_progress: Option<&'p mut dyn FnMut(&IngestProgress)>,
    buf: Vec<u8>,
}

fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Ingest<'_> {
    fn warn(&mut self, path: &Path, what: &str, e: &io::Error) {
        let msg = format!("{}: {what}: {e}", path.display());
        tracing::warn!("{msg}");
        self.progress.warnings.push(msg);
    }

    fn tick(&mut self) {
        self.progress.entries += 1;
        if self.progress.entries.is_multiple_of(1000) {
            if let Some(cb) = self.on_progress.as_mut() {
                cb(&self.progress);
            }
        }
    }

    fn dir(&mut self, fs_dir: &Path, rel: &[u8]) -> Result<()> {
        let mut names: Vec<OsString> = match fs::read_dir(fs_dir) {
            Ok(it) => it.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) if vanished(&e) || e.kind() == io::ErrorKind::PermissionDenied => {
                self.warn(fs_dir, "cannot list", &e);
                return Ok(());
            }
            Err(e) => return Err(e).io_ctx("list", fs_dir),
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = fs_dir.join(&name);
            let mut rel_path = rel.to_vec();
            if !rel_path.is_empty() {
                rel_path.push(b'/');
            }
            rel_path.extend_from_slice(name.as_bytes());
            let m = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if vanished(&e) => {
                    self.warn(&path, "vanished", &e);
                    continue;
                }
                Err(e) => return Err(e).io_ctx("stat", &path),
            };
            self.entry(&path, &rel_path, &m)?;
            self.tick();
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &[u8], m: &fs::Metadata) -> Result<()> {
        let meta = metadata_of(m);
        let ft = m.file_type();
        if ft.is_dir() {
            self.writer.add_dir(rel, meta)?;
            // Like `rsync -a`, this crosses into other file systems (rsync's -x is opt-in).
            return self.dir(path, rel);
        }
        if ft.is_symlink() {
            let target = match fs::read_link(path) {
                Ok(t) => t,
                Err(e) if vanished(&e) => {
                    self.warn(path, "vanished", &e);
                    return Ok(());
                }
                Err(e) => return Err(e).io_ctx("readlink", path),
            };
            return self
                .writer
                .add_symlink(rel, meta, target.as_os_str().as_bytes());
        }
        if ft.is_file() {
            return self.file(path, rel, m, meta);
        }
        let kind = if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else {
            return Ok(());
        };
        self.writer.add_special(rel, kind, meta, m.rdev())
    }

    fn file(&mut self, path: &Path, rel: &[u8], m: &fs::Metadata, meta: Metadata) -> Result<()> {
        let key = (m.dev(), m.ino());
        let mut group = 0;
        if m.nlink() > 1 {
            if let Some((g, chunks)) = self.links.get(&key).cloned() {
                return self.writer.add_file_with_chunks(rel, meta, g, chunks);
            }
            group = link_group_for(rel);
        }
        if self.writer.reuse_unchanged(rel, meta, m.size(), group)? {
            if group != 0 {
                if let Some(e) = self.writer.base_entry(rel)? {
                    if let crate::format::tree::EntryData::File { chunks, .. } = e.data {
                        self.links.insert(key, (group, chunks));
                    }
                }
            }
            return Ok(());
        }
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if vanished(&e) || e.kind() == io::ErrorKind::PermissionDenied => {
                self.warn(path, "cannot read", &e);
                return Ok(());
            }
            Err(e) => return Err(e).io_ctx("open", path),
        };
        if self.buf.is_empty() {
            self.buf = vec![0u8; 1 << 20];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut fw = self.writer.add_file(rel, meta, group)?;
        let mut read_total = 0u64;
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf = buf;
                    return Err(e).io_ctx("read", path);
                }
            };
            fw.write_content(&buf[..n])?;
            read_total += n as u64;
        }
        let chunks = fw.finish()?;
        self.buf = buf;
        self.progress.bytes_read += read_total;
        if group != 0 {
            self.links.insert(key, (group, chunks));
        }
        Ok(())
    }
}

impl Store {
    /// Backs up the tree at `dir` as a new snapshot of `source` on `machine`.
    pub fn ingest_dir(
        &self,
        machine: &str,
        source: &str,
        dir: &Path,
        on_progress: Option<&mut dyn FnMut(&IngestProgress)>,
    ) -> Result<(Snapshot, IngestProgress)> {
        let m = fs::metadata(dir).io_ctx("stat", dir)?;
        if !m.is_dir() {
            return Err(StoreError::InvalidArgument(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let mut writer = self.begin_snapshot(machine, source)?;
        writer.set_root_meta(metadata_of(&m));
        let mut ingest = Ingest {
            writer,
            links: HashMap::new(),
            progress: IngestProgress::default(),
            on_progress,
            buf: Vec::new(),
        };
        let root: PathBuf = dir.to_path_buf();
        ingest.dir(&root, b"")?;
        let Ingest {
            writer, progress, ..
        } = ingest;
        let snap = writer.commit()?;
        Ok((snap, progress))
    }
}

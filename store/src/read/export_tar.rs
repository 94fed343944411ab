//! Materialising a snapshot (or a sub-path of it) as a POSIX/PAX tar stream. Every chunk
//! read is verified.

use std::cell::Cell;
use std::io::{self, Write};
use std::path::PathBuf;
use std::rc::Rc;

use crate::error::{Result, StoreError};
use crate::format::tree::{dev_major, dev_minor};
use crate::format::tree::{EntryData, EntryKind, TreeEntry};
use crate::read::walk::{HardLink, WalkEntry, WalkEvent};
use crate::read::ExportStats;
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::tuning::EXPORT_TAR_BUFFER;

impl Store {
    /// Writes `sub_path` of `snap` as a POSIX (ustar + PAX) tar stream.
    pub fn export_to_tar<W: Write>(
        &self,
        snap: &Snapshot,
        sub_path: &[u8],
        out: W,
    ) -> Result<ExportStats> {
        let walk = self.walk(snap, sub_path)?;
        // Content goes from the chunk cache straight into this buffer (`io::copy` fills a
        // `BufWriter`'s buffer itself), then out in large writes.
        let failed = Rc::new(Cell::new(false));
        let out = Cutoff {
            inner: out,
            failed: Rc::clone(&failed),
        };
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(EXPORT_TAR_BUFFER, out));
        let mut tw = TarExporter {
            store: self,
            stats: ExportStats::default(),
        };
        let written = walk.into_iter().try_for_each(|event| match event? {
            WalkEvent::Entry(e) => tw.entry(&mut builder, &e),
            WalkEvent::DirDone { .. } => Ok(()),
        });
        if let Err(e) = written {
            // The builder's and the buffer's drops would otherwise end the cut-off stream
            // with a well-formed end of archive, which some `tar -x` accept with a warning.
            failed.set(true);
            return Err(e);
        }
        builder
            .into_inner()
            .map_err(|e| tar_error(b"", e))?
            .into_inner()
            .map_err(|e| tar_error(b"", e.into_error()))?
            .flush()
            .map_err(|e| tar_error(b"", e))?;
        Ok(tw.stats)
    }
}

/// Refuses every write once the export has failed, so nothing after the failure (buffered
/// content, the archive's end blocks) reaches the stream.
struct Cutoff<W> {
    inner: W,
    failed: Rc<Cell<bool>>,
}

impl<W: Write> Write for Cutoff<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed.get() {
            return Err(io::Error::other(
                "the export failed; the tar stream is cut off",
            ));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed.get() {
            return Err(io::Error::other(
                "the export failed; the tar stream is cut off",
            ));
        }
        self.inner.flush()
    }
}

struct TarExporter<'a> {
    store: &'a Store,
    stats: ExportStats,
}

const USTAR_OCTAL_MAX_11: u64 = 0o77777777777;
const USTAR_OCTAL_MAX_7: u64 = 0o7777777;

fn tar_error(path: &[u8], source: io::Error) -> StoreError {
    StoreError::Io {
        op: "write tar",
        path: if path.is_empty() {
            PathBuf::from("<tar>")
        } else {
            PathBuf::from(String::from_utf8_lossy(path).into_owned())
        },
        source,
    }
}

impl TarExporter<'_> {
    fn entry<W: Write>(&mut self, b: &mut tar::Builder<W>, walked: &WalkEntry) -> Result<()> {
        let e = &walked.entry;
        let path = &walked.path;
        let map_io = |err: io::Error| tar_error(path, err);
        match &e.data {
            EntryData::Dir { .. } => {
                let name = if walked.is_root() {
                    b"./".to_vec()
                } else {
                    let mut name = path.clone();
                    name.push(b'/');
                    name
                };
                self.header(b, &name, e, 0, None).map_err(map_io)?;
                self.stats.dirs += 1;
            }
            EntryData::File { size, .. } => {
                if let HardLink::Follower { leader_path, .. } = &walked.link {
                    self.header(b, path, e, 0, Some((tar::EntryType::Link, leader_path)))
                        .map_err(map_io)?;
                    self.stats.hard_links += 1;
                    return Ok(());
                }
                let reader = self.store.open_file(e)?;
                self.header_with_data(b, path, e, *size, reader)
                    .map_err(map_io)?;
                self.stats.files += 1;
                self.stats.bytes += size;
            }
            EntryData::Symlink { target } => {
                self.header(b, path, e, 0, Some((tar::EntryType::Symlink, target)))
                    .map_err(map_io)?;
                self.stats.symlinks += 1;
            }
            EntryData::Device { .. } | EntryData::Special => {
                self.header(b, path, e, 0, None).map_err(map_io)?;
                self.stats.specials += 1;
            }
        }
        Ok(())
    }

    fn header<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        path: &[u8],
        e: &TreeEntry,
        size: u64,
        link: Option<(tar::EntryType, &[u8])>,
    ) -> io::Result<()> {
        self.write(b, path, e, size, link, io::empty())
    }

    fn header_with_data<W: Write, R: io::Read>(
        &mut self,
        b: &mut tar::Builder<W>,
        path: &[u8],
        e: &TreeEntry,
        size: u64,
        data: R,
    ) -> io::Result<()> {
        self.write(b, path, e, size, None, data)
    }

    fn write<W: Write, R: io::Read>(
        &mut self,
        b: &mut tar::Builder<W>,
        path: &[u8],
        e: &TreeEntry,
        size: u64,
        link: Option<(tar::EntryType, &[u8])>,
        data: R,
    ) -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let entry_type = match (e.kind, link) {
            (_, Some((t, _))) => t,
            (EntryKind::Dir, _) => tar::EntryType::Directory,
            (EntryKind::File, _) => tar::EntryType::Regular,
            (EntryKind::Symlink, _) => tar::EntryType::Symlink,
            (EntryKind::CharDevice, _) => tar::EntryType::Char,
            (EntryKind::BlockDevice, _) => tar::EntryType::Block,
            (EntryKind::Fifo, _) => tar::EntryType::Fifo,
            // POSIX tar cannot hold sockets; GNU tar skips them too. Recorded as skipped.
            (EntryKind::Socket, _) => {
                self.stats.skipped += 1;
                return Ok(());
            }
        };
        h.set_entry_type(entry_type);
        h.set_mode(e.meta.perm);
        set_number(
            &mut pax,
            "uid",
            u64::from(e.meta.uid),
            USTAR_OCTAL_MAX_7,
            |v| h.set_uid(v),
        );
        set_number(
            &mut pax,
            "gid",
            u64::from(e.meta.gid),
            USTAR_OCTAL_MAX_7,
            |v| h.set_gid(v),
        );
        set_number(&mut pax, "size", size, USTAR_OCTAL_MAX_11, |v| {
            h.set_size(v)
        });
        let mtime_fits = e.meta.mtime_sec >= 0 && (e.meta.mtime_sec as u64) <= USTAR_OCTAL_MAX_11;
        h.set_mtime(if mtime_fits {
            e.meta.mtime_sec as u64
        } else {
            0
        });
        if !mtime_fits || e.meta.mtime_nsec != 0 {
            pax.push((
                "mtime",
                pax_time(e.meta.mtime_sec, e.meta.mtime_nsec).into_bytes(),
            ));
        }
        if let EntryData::Device { rdev } = e.data {
            h.set_device_major(dev_major(rdev) as u32)?;
            h.set_device_minor(dev_minor(rdev) as u32)?;
        }
        let ascii = |s: &[u8]| s.iter().all(|c| c.is_ascii() && *c != 0);
        if path.len() > 100 || !ascii(path) {
            pax.push(("path", path.to_vec()));
        }
        if let Some(ustar) = h.as_ustar_mut() {
            let n = path.len().min(100);
            ustar.name[..n].copy_from_slice(&path[..n]);
        }
        if let Some((_, target)) = link {
            if target.len() > 100 || !ascii(target) {
                pax.push(("linkpath", target.to_vec()));
            }
            if let Some(ustar) = h.as_ustar_mut() {
                let n = target.len().min(100);
                ustar.linkname[..n].copy_from_slice(&target[..n]);
            }
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))?;
        }
        h.set_cksum();
        b.append(&h, data)
    }
}

fn set_number(
    pax: &mut Vec<(&'static str, Vec<u8>)>,
    key: &'static str,
    v: u64,
    max: u64,
    mut set: impl FnMut(u64),
) {
    if v > max {
        pax.push((key, v.to_string().into_bytes()));
        set(0);
    } else {
        set(v);
    }
}

/// PAX time: decimal seconds with a fraction; negative times count down from the epoch.
pub fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        // (sec, nsec) = sec + nsec/1e9, e.g. (-2, 500000000) is -1.5.
        let whole = sec + 1;
        let frac = 1_000_000_000 - nsec;
        if whole == 0 {
            format!("-0.{frac:09}")
        } else {
            format!("{whole}.{frac:09}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 1), "5.000000001");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(-1, 250_000_000), "-0.750000000");
        assert_eq!(pax_time(-3, 0), "-3");
    }
}

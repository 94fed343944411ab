//! Receiving the file list (spec §5, §10a): entries until the end marker, the uid/gid
//! name lists, the pre-30 io_error word; then the list is sorted as stock sorts it,
//! validated, its hard-link groups resolved, and kept compact.

use super::generator::Gen;
use super::{ClientReceiver, FileState, Rx};
use crate::codec::flist::{clean_received_name, decode_id_list, FileEntry, FlistItem, HardLink};
use crate::codec::prim::{run, Decoded};
use crate::constants::*;
use crate::error::{DecodeError, Error};
use crate::session::{ReceiveSink, Step};
use crate::sort::sort_order;
use std::collections::HashSet;

impl<S: ReceiveSink> ClientReceiver<S> {
    /// One entry of the list, or its end marker.
    pub(super) fn rx_file_list(&mut self) -> Result<Step<Rx<S::Basis>>, Error> {
        let so_far = std::mem::take(&mut self.wire);
        let item = match self.flist.decode(&self.data[self.data_pos..], &so_far)? {
            Decoded::Complete { value, consumed } => {
                self.data_pos += consumed;
                Some(value)
            }
            Decoded::Incomplete { .. } => None,
        };
        self.wire = so_far;
        Ok(match item {
            None => Step::NeedInput,
            Some(FlistItem::Entry(mut e)) => {
                e.name = clean_received_name(&e.name, e.is_dir())?;
                self.wire.push(e);
                Step::Next(Rx::FileList)
            }
            Some(FlistItem::End { io_error }) => {
                self.outcome.io_error |= io_error & IOERR_KNOWN_BITS;
                if !self.opts.numeric_ids {
                    Step::Next(Rx::IdLists { uid_done: false })
                } else {
                    self.after_lists()?
                }
            }
        })
    }

    /// The uid name list, then the gid one (without `--numeric-ids`).
    pub(super) fn rx_id_lists(&mut self, uid_done: bool) -> Result<Step<Rx<S::Basis>>, Error> {
        let p = self.neg.protocol;
        let id0 = self.neg.compat_flags & CF_ID0_NAMES != 0;
        let lim = &self.opts.limits;
        let decoded = decode_id_list(&self.data[self.data_pos..], p, id0, lim)?;
        let Decoded::Complete {
            value: _names,
            consumed,
        } = decoded
        else {
            return Ok(Step::NeedInput);
        };
        self.data_pos += consumed;
        if !uid_done {
            return Ok(Step::Next(Rx::IdLists { uid_done: true }));
        }
        self.after_lists()
    }

    /// Below 30 the list is followed by the sender's io_error word.
    pub(super) fn rx_io_error_pre30(&mut self) -> Result<Step<Rx<S::Basis>>, Error> {
        let Some(e) = self.take(|b| run(b, |c| c.i32()))? else {
            return Ok(Step::NeedInput);
        };
        self.outcome.io_error |= (e as u32) & IOERR_KNOWN_BITS;
        self.finish_file_list()?;
        Ok(Step::Next(Rx::ExpectNdx))
    }

    /// The list and its id lists are in: below 30 the io_error word follows, from 30 on
    /// the transfer begins.
    fn after_lists(&mut self) -> Result<Step<Rx<S::Basis>>, Error> {
        if self.neg.protocol < 30 {
            return Ok(Step::Next(Rx::IoErrorPre30));
        }
        self.finish_file_list()?;
        Ok(Step::Next(Rx::ExpectNdx))
    }

    pub(super) fn finish_file_list(&mut self) -> Result<(), Error> {
        let p = self.neg.protocol;
        let mut wire = std::mem::take(&mut self.wire);
        let mut order = sort_order(&wire, p);
        let mut wire_to_sorted = vec![0u32; wire.len()];
        for (sorted, &w) in order.iter().enumerate() {
            wire_to_sorted[w] = sorted as u32;
        }
        for e in &mut wire {
            if let HardLink::Follower { first } = e.hard_link {
                let s = wire_to_sorted.get(first as usize).copied().ok_or(
                    DecodeError::BadHardLink {
                        index: first.into(),
                        count: wire_to_sorted.len(),
                    },
                )?;
                e.hard_link = HardLink::Follower { first: s };
            }
        }
        drop(wire_to_sorted);
        // Below 30 groups are identified by (dev, ino): present them like 30+ groups, the
        // first member in sorted order leading, so sinks see one model.
        let mut groups: std::collections::HashMap<(i64, i64), u32> =
            std::collections::HashMap::new();
        let mut sizes: std::collections::HashMap<(i64, i64), u32> =
            std::collections::HashMap::new();
        for e in &wire {
            if let HardLink::DevIno { dev, ino } = e.hard_link {
                *sizes.entry((dev, ino)).or_default() += 1;
            }
        }
        for (sorted, &w) in order.iter().enumerate() {
            let e = wire
                .get_mut(w)
                .ok_or(Error::Protocol("sort produced a bad slot".into()))?;
            if let HardLink::DevIno { dev, ino } = e.hard_link {
                e.hard_link = if sizes.get(&(dev, ino)).copied().unwrap_or(0) < 2 {
                    HardLink::None
                } else if let Some(&first) = groups.get(&(dev, ino)) {
                    HardLink::Follower { first }
                } else {
                    groups.insert((dev, ino), sorted as u32);
                    HardLink::Leader
                };
            }
        }
        drop((groups, sizes));
        // Kept compact from here on: the full entries of a large tree were the receiver's
        // largest allocation, and most of their fields are empty.
        let mut entries: Vec<ListedEntry> = wire.into_iter().map(ListedEntry::from).collect();
        // The collect above reuses the received list's buffer, three times too large now.
        entries.shrink_to_fit();
        sort_in_place(&mut entries, &mut order)?;
        drop(order);
        // Later duplicates are cleared but keep their slot so indexes stay aligned.
        let mut cleared = vec![false; entries.len()];
        let mut seen: HashSet<&[u8]> = HashSet::with_capacity(entries.len());
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        for e in &entries {
            if e.is_dir() {
                dirs.insert(&e.name[..]);
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if !seen.insert(&e.name[..]) || (!e.is_dir() && dirs.contains(&e.name[..])) {
                cleared[i] = true;
            }
            // A sender lists a directory before recursing into it. A parent that is not
            // a listed directory (a symlink `a` followed by `a/x`) would make the sink
            // write through a symlink or invent a directory.
            if let Some(slash) = e.name.iter().rposition(|&c| c == b'/') {
                if !dirs.contains(&e.name[..slash]) {
                    return Err(DecodeError::BadName {
                        reason: "parent is not a directory of the list",
                    }
                    .into());
                }
            }
        }
        self.outcome.entries = cleared.iter().filter(|c| !**c).count() as u64;
        self.state = vec![FileState::NotRequested; entries.len()];
        self.entries = entries;
        self.cleared = cleared;
        self.gen = Gen::Files(0);
        self.flist_done = true;
        tracing::debug!(entries = self.entries.len(), "file list received");
        Ok(())
    }
}

/// A file-list entry as the receiver keeps it once the list is complete: 64 bytes, a third
/// of a [`FileEntry`], since the fields a plain file or directory leaves empty (names of
/// owners, device numbers, link target, checksum) live in a box only when one is set.
/// Sinks still see a whole [`FileEntry`], rebuilt when they are called.
#[derive(Debug)]
pub(super) struct ListedEntry {
    name: Box<[u8]>,
    pub(super) size: i64,
    mtime: i64,
    mode: u32,
    mtime_nsec: u32,
    uid: u32,
    gid: u32,
    /// Resolved by `finish_file_list`: never `DevIno` (kept whole in `rare` if it were).
    link: ListedLink,
    rare: Option<Box<RareFields>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListedLink {
    None,
    Leader,
    Follower(u32),
}

/// The fields of a [`FileEntry`] most entries leave empty.
#[derive(Debug, Default)]
struct RareFields {
    user_name: Option<Vec<u8>>,
    group_name: Option<Vec<u8>>,
    rdev: Option<(u32, u32)>,
    symlink: Option<Vec<u8>>,
    checksum: Option<Vec<u8>>,
    dev_ino: Option<(i64, i64)>,
    top_dir: bool,
    no_content_dir: bool,
}

impl From<FileEntry> for ListedEntry {
    fn from(e: FileEntry) -> ListedEntry {
        // Destructured whole: a field added to FileEntry must be placed here too.
        let FileEntry {
            name,
            mode,
            size,
            mtime,
            mtime_nsec,
            uid,
            gid,
            user_name,
            group_name,
            rdev,
            symlink,
            hard_link,
            checksum,
            top_dir,
            no_content_dir,
        } = e;
        let (link, dev_ino) = match hard_link {
            HardLink::None => (ListedLink::None, None),
            HardLink::Leader => (ListedLink::Leader, None),
            HardLink::Follower { first } => (ListedLink::Follower(first), None),
            HardLink::DevIno { dev, ino } => (ListedLink::None, Some((dev, ino))),
        };
        let rare = RareFields {
            user_name,
            group_name,
            rdev,
            symlink,
            checksum,
            dev_ino,
            top_dir,
            no_content_dir,
        };
        let empty = rare.user_name.is_none()
            && rare.group_name.is_none()
            && rare.rdev.is_none()
            && rare.symlink.is_none()
            && rare.checksum.is_none()
            && rare.dev_ino.is_none()
            && !rare.top_dir
            && !rare.no_content_dir;
        ListedEntry {
            name: name.into_boxed_slice(),
            size,
            mtime,
            mode,
            mtime_nsec,
            uid,
            gid,
            link,
            rare: (!empty).then(|| Box::new(rare)),
        }
    }
}

impl ListedEntry {
    pub(super) fn to_entry(&self) -> FileEntry {
        let mut e = FileEntry::new(self.name.to_vec(), self.mode, self.size);
        e.mtime = self.mtime;
        e.mtime_nsec = self.mtime_nsec;
        e.uid = self.uid;
        e.gid = self.gid;
        e.hard_link = self.hard_link();
        if let Some(rare) = &self.rare {
            e.user_name = rare.user_name.clone();
            e.group_name = rare.group_name.clone();
            e.rdev = rare.rdev;
            e.symlink = rare.symlink.clone();
            e.checksum = rare.checksum.clone();
            e.top_dir = rare.top_dir;
            e.no_content_dir = rare.no_content_dir;
        }
        e
    }

    pub(super) fn hard_link(&self) -> HardLink {
        match (self.link, self.rare.as_ref().and_then(|r| r.dev_ino)) {
            (_, Some((dev, ino))) => HardLink::DevIno { dev, ino },
            (ListedLink::None, None) => HardLink::None,
            (ListedLink::Leader, None) => HardLink::Leader,
            (ListedLink::Follower(first), None) => HardLink::Follower { first },
        }
    }

    pub(super) fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    pub(super) fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    pub(super) fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Puts `entries` in sorted order in place: position `i` gets the entry at `order[i]`.
/// In place, because a second list of every entry was most of the receiver's peak memory
/// on a large tree. `order` is used up. A repeated index in `order` is an error.
pub(super) fn sort_in_place<T>(entries: &mut [T], order: &mut [usize]) -> Result<(), Error> {
    const PLACED: usize = usize::MAX;
    let bad = || Error::Protocol("sort produced a duplicate slot".into());
    if order.len() != entries.len() {
        return Err(bad());
    }
    // Each cycle of the permutation is followed once, swapping every entry into its place.
    for start in 0..order.len() {
        let mut at = start;
        while order[at] != PLACED {
            let from = order[at];
            order[at] = PLACED;
            if from == start {
                break;
            }
            if from >= entries.len() || order[from] == PLACED {
                return Err(bad());
            }
            entries.swap(at, from);
            at = from;
        }
    }
    Ok(())
}

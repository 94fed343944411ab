//! File-list entries (spec §5.2–§5.7): flag words, prefix-compressed names, the "same as
//! previous" compression state, hard-link references, devices, symlinks, id lists.

use super::prim::*;
use crate::constants::*;
use crate::error::DecodeError;
use crate::limits::{Limits, FLIST_ENTRY_OVERHEAD};

/// Which attributes travel in the list; both peers derive this from the same options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlistOptions {
    pub protocol: u32,
    /// `CF_VARINT_FLIST_FLAGS`.
    pub varint_flags: bool,
    /// `CF_SAFE_FLIST` (always on at 31+): the end marker may carry an io_error.
    pub safe_flist: bool,
    pub preserve_uid: bool,
    pub preserve_gid: bool,
    pub preserve_links: bool,
    pub preserve_devices: bool,
    pub preserve_specials: bool,
    pub preserve_hard_links: bool,
    /// `-c`: length of the per-file checksum in the list.
    pub checksum_len: Option<usize>,
}

impl FlistOptions {
    /// The options implied by `-a --numeric-ids` (plus `-H` if asked) at `protocol`.
    pub fn archive(protocol: u32, compat_flags: u32, hard_links: bool) -> Self {
        FlistOptions {
            protocol,
            varint_flags: compat_flags & CF_VARINT_FLIST_FLAGS != 0,
            safe_flist: protocol >= 31 || compat_flags & CF_SAFE_FLIST != 0,
            preserve_uid: true,
            preserve_gid: true,
            preserve_links: true,
            preserve_devices: true,
            preserve_specials: true,
            preserve_hard_links: hard_links,
            checksum_len: None,
        }
    }
}

/// Kind of file, from the mode's type bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & S_IFMT {
            S_IFREG => FileKind::Regular,
            S_IFDIR => FileKind::Directory,
            S_IFLNK => FileKind::Symlink,
            S_IFCHR => FileKind::CharDevice,
            S_IFBLK => FileKind::BlockDevice,
            S_IFIFO => FileKind::Fifo,
            S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
    pub fn is_device(self) -> bool {
        matches!(self, FileKind::CharDevice | FileKind::BlockDevice)
    }
    pub fn is_special(self) -> bool {
        matches!(self, FileKind::Fifo | FileKind::Socket)
    }
}

/// Hard-link information of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HardLink {
    None,
    /// First member of a group (≥30).
    Leader,
    /// Later member; `first` is the leader's position in **wire** order (≥30).
    Follower {
        first: u32,
    },
    /// Protocols below 30 identify groups by device and inode.
    DevIno {
        dev: i64,
        ino: i64,
    },
}

/// One file-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Raw path bytes, `/`-separated, relative.
    pub name: Vec<u8>,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub size: i64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// 0 when ownership is not preserved.
    pub uid: u32,
    pub gid: u32,
    /// Inline names (incremental recursion only).
    pub user_name: Option<Vec<u8>>,
    pub group_name: Option<Vec<u8>>,
    /// `(major, minor)` for devices (and specials below 31).
    pub rdev: Option<(u32, u32)>,
    pub symlink: Option<Vec<u8>>,
    pub hard_link: HardLink,
    pub checksum: Option<Vec<u8>>,
    /// `XMIT_TOP_DIR` / `XMIT_NO_CONTENT_DIR` as received.
    pub top_dir: bool,
    pub no_content_dir: bool,
}

impl FileEntry {
    /// An entry with only its name, mode and size set: no times, ownership, device, link
    /// target, checksum or hard-link membership, and not a top directory. Callers that build
    /// entries (decoders, senders, tests) set whatever else they know afterwards.
    pub fn new(name: Vec<u8>, mode: u32, size: i64) -> FileEntry {
        FileEntry {
            name,
            mode,
            size,
            mtime: 0,
            mtime_nsec: 0,
            uid: 0,
            gid: 0,
            user_name: None,
            group_name: None,
            rdev: None,
            symlink: None,
            hard_link: HardLink::None,
            checksum: None,
            top_dir: false,
            no_content_dir: false,
        }
    }
    pub fn kind(&self) -> FileKind {
        // Decoders reject unknown types, so this only falls back for hand-built entries.
        FileKind::from_mode(self.mode).unwrap_or(FileKind::Regular)
    }
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
    fn has_rdev(&self, o: &FlistOptions) -> bool {
        rdev_sent(self.mode, o)
    }

    /// Our estimate of the memory this entry costs while the list is held and sorted.
    pub fn memory_cost(&self) -> u64 {
        let var = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        (self.name.len()
            + var(&self.symlink)
            + var(&self.user_name)
            + var(&self.group_name)
            + var(&self.checksum)) as u64
            + FLIST_ENTRY_OVERHEAD
    }
}

fn rdev_sent(mode: u32, o: &FlistOptions) -> bool {
    match FileKind::from_mode(mode) {
        Some(k) if k.is_device() => o.preserve_devices,
        Some(k) if k.is_special() => o.preserve_specials && o.protocol < 31,
        _ => false,
    }
}

/// A decoded list item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlistItem {
    Entry(FileEntry),
    /// End of list, with the sender's io_error bits when the marker carries them.
    End {
        io_error: u32,
    },
}

/// The "previous entry" state both sides keep for the whole session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Prev {
    name: Vec<u8>,
    mode: u32,
    mtime: i64,
    uid: u32,
    gid: u32,
    rdev_major: u32,
    dev: i64,
    count: usize,
}

/// Decodes entries one at a time; restartable on partial input.
#[derive(Debug, Clone)]
pub struct FlistDecoder {
    opts: FlistOptions,
    limits: Limits,
    prev: Prev,
    /// Sum of [`FileEntry::memory_cost`] over the entries decoded so far.
    cost: u64,
}

impl FlistDecoder {
    pub fn new(opts: FlistOptions, limits: Limits) -> Self {
        FlistDecoder {
            opts,
            limits,
            prev: Prev::default(),
            cost: 0,
        }
    }

    /// Decodes the next item. `so_far` is the list in wire order (hard-link followers copy
    /// their leader's attributes from it).
    pub fn decode(
        &mut self,
        buf: &[u8],
        so_far: &[FileEntry],
    ) -> Result<Decoded<FlistItem>, DecodeError> {
        let o = self.opts;
        let lim = &self.limits;
        let prev = &self.prev;
        let r = run(buf, |c| -> R<(FlistItem, Option<Prev>)> {
            let p = o.protocol;
            let flags: u32 = if o.varint_flags {
                c.varint()? as u32
            } else {
                let b = u32::from(c.u8()?);
                if b != 0 && p >= 28 && b & XMIT_EXTENDED_FLAGS != 0 {
                    b | (u32::from(c.u8()?) << 8)
                } else {
                    b
                }
            };
            if flags == 0 {
                let io_error = if o.varint_flags {
                    c.varint()? as u32
                } else {
                    0
                };
                return Ok((FlistItem::End { io_error }, None));
            }
            if !o.varint_flags
                && o.safe_flist
                && flags == (XMIT_EXTENDED_FLAGS | XMIT_IO_ERROR_ENDLIST)
            {
                let io_error = c.varint()? as u32;
                return Ok((FlistItem::End { io_error }, None));
            }
            if prev.count >= lim.max_entries {
                return Err(DecodeError::TooManyEntries(lim.max_entries).into());
            }
            let mut np = prev.clone();
            np.count += 1;

            let l1 = if flags & XMIT_SAME_NAME != 0 {
                usize::from(c.u8()?)
            } else {
                0
            };
            let l2 = if flags & XMIT_LONG_NAME != 0 {
                let v = c.varint30(p)?;
                usize::try_from(v).map_err(|_| DecodeError::Negative {
                    what: "name length",
                    value: v.into(),
                })?
            } else {
                usize::from(c.u8()?)
            };
            if l1 > prev.name.len() {
                return Err(DecodeError::BadName {
                    reason: "shared prefix longer than previous name",
                }
                .into());
            }
            if l1 + l2 > lim.max_name {
                return Err(DecodeError::TooLong {
                    what: "name",
                    len: (l1 + l2) as u64,
                    max: lim.max_name as u64,
                }
                .into());
            }
            let mut name = Vec::with_capacity(l1 + l2);
            name.extend_from_slice(&prev.name[..l1]);
            name.extend_from_slice(c.bytes(l2)?);
            if name.is_empty() {
                return Err(DecodeError::BadName {
                    reason: "empty name",
                }
                .into());
            }
            np.name = name.clone();

            let top_dir = flags & XMIT_TOP_DIR != 0;
            let mut e = FileEntry {
                top_dir,
                ..FileEntry::new(name, 0, 0)
            };

            if p >= 30 && o.preserve_hard_links && flags & XMIT_HLINKED != 0 {
                if flags & XMIT_HLINK_FIRST != 0 {
                    e.hard_link = HardLink::Leader;
                } else {
                    let first = c.varint()?;
                    let lead = usize::try_from(first)
                        .ok()
                        .and_then(|i| so_far.get(i))
                        .ok_or(DecodeError::BadHardLink {
                            index: first.into(),
                            count: so_far.len(),
                        })?;
                    e.size = lead.size;
                    e.mtime = lead.mtime;
                    e.mtime_nsec = lead.mtime_nsec;
                    e.mode = lead.mode;
                    e.uid = lead.uid;
                    e.gid = lead.gid;
                    e.rdev = lead.rdev;
                    e.symlink = lead.symlink.clone();
                    e.checksum = lead.checksum.clone();
                    e.no_content_dir = lead.no_content_dir;
                    e.hard_link = HardLink::Follower {
                        first: first as u32,
                    };
                    e.top_dir = false;
                    np.mode = e.mode;
                    np.mtime = e.mtime;
                    np.uid = e.uid;
                    np.gid = e.gid;
                    return Ok((FlistItem::Entry(e), Some(np)));
                }
            }

            let size = c.varlong30(p, 3)?;
            if size < 0 {
                return Err(DecodeError::Negative {
                    what: "file size",
                    value: size,
                }
                .into());
            }
            e.size = size;
            e.mtime = if flags & XMIT_SAME_TIME != 0 {
                prev.mtime
            } else if p >= 30 {
                c.varlong(4)?
            } else {
                i64::from(c.i32()? as u32)
            };
            np.mtime = e.mtime;
            if p >= 31 && flags & XMIT_MOD_NSEC != 0 {
                let ns = c.varint()? as u32;
                if ns >= 1_000_000_000 {
                    return Err(DecodeError::BadNsec(ns).into());
                }
                e.mtime_nsec = ns;
            }
            e.mode = if flags & XMIT_SAME_MODE != 0 {
                prev.mode
            } else {
                c.i32()? as u32
            };
            let kind = FileKind::from_mode(e.mode).ok_or(DecodeError::BadMode(e.mode))?;
            np.mode = e.mode;
            // On non-directories TOP_DIR is only filler that keeps the flag byte non-zero.
            e.top_dir = top_dir && kind == FileKind::Directory;
            if kind == FileKind::Directory && p >= 30 {
                e.no_content_dir = flags & XMIT_NO_CONTENT_DIR != 0;
            }
            if o.preserve_uid {
                if flags & XMIT_SAME_UID == 0 {
                    e.uid = c.varint30(p)? as u32;
                    if p >= 30 && flags & XMIT_USER_NAME_FOLLOWS != 0 {
                        let n = usize::from(c.u8()?);
                        e.user_name = Some(c.bytes(n)?.to_vec());
                    }
                } else {
                    e.uid = prev.uid;
                }
                np.uid = e.uid;
            }
            if o.preserve_gid {
                if flags & XMIT_SAME_GID == 0 {
                    e.gid = c.varint30(p)? as u32;
                    if p >= 30 && flags & XMIT_GROUP_NAME_FOLLOWS != 0 {
                        let n = usize::from(c.u8()?);
                        e.group_name = Some(c.bytes(n)?.to_vec());
                    }
                } else {
                    e.gid = prev.gid;
                }
                np.gid = e.gid;
            }
            if rdev_sent(e.mode, &o) {
                if p >= 28 {
                    let major = if flags & XMIT_SAME_RDEV_MAJOR != 0 {
                        prev.rdev_major
                    } else {
                        c.varint30(p)? as u32
                    };
                    let minor = if p >= 30 {
                        c.varint()? as u32
                    } else if flags & XMIT_RDEV_MINOR_8_PRE30 != 0 {
                        u32::from(c.u8()?)
                    } else {
                        c.i32()? as u32
                    };
                    np.rdev_major = major;
                    e.rdev = Some((major, minor));
                } else if flags & XMIT_SAME_RDEV_PRE28 == 0 {
                    let raw = c.i32()? as u32;
                    let (major, minor) = split_dev_pre28(raw);
                    np.rdev_major = major;
                    e.rdev = Some((major, minor));
                } else {
                    e.rdev = Some((prev.rdev_major, 0));
                }
            }
            if o.preserve_links && kind == FileKind::Symlink {
                let v = c.varint30(p)?;
                let len = usize::try_from(v).map_err(|_| DecodeError::Negative {
                    what: "symlink length",
                    value: v.into(),
                })?;
                if len > lim.max_symlink {
                    return Err(DecodeError::TooLong {
                        what: "symlink",
                        len: len as u64,
                        max: lim.max_symlink as u64,
                    }
                    .into());
                }
                e.symlink = Some(c.bytes(len)?.to_vec());
            }
            if p < 30
                && o.preserve_hard_links
                && ((p >= 28 && flags & XMIT_HLINKED != 0) || (p < 28 && kind == FileKind::Regular))
            {
                let dev = if flags & XMIT_SAME_DEV_PRE30 != 0 && p >= 28 {
                    prev.dev
                } else if p >= 26 {
                    c.longint()? - 1
                } else {
                    i64::from(c.i32()?) - 1
                };
                let ino = if p >= 26 {
                    c.longint()?
                } else {
                    i64::from(c.i32()?)
                };
                np.dev = dev;
                e.hard_link = HardLink::DevIno { dev, ino };
            }
            if let Some(n) = o.checksum_len {
                if kind == FileKind::Regular || p < 28 {
                    e.checksum = Some(c.bytes(n.min(MAX_DIGEST_LEN))?.to_vec());
                }
            }
            Ok((FlistItem::Entry(e), Some(np)))
        })?;
        Ok(match r {
            Decoded::Complete {
                value: (item, np),
                consumed,
            } => {
                if let FlistItem::Entry(e) = &item {
                    // Checked once the entry is decoded: each part is already bounded, so
                    // the overshoot is at most one entry.
                    self.cost = self.cost.saturating_add(e.memory_cost());
                    if self.cost > self.limits.max_file_list_bytes {
                        return Err(DecodeError::FileListTooBig {
                            max: self.limits.max_file_list_bytes,
                        });
                    }
                }
                if let Some(np) = np {
                    self.prev = np;
                }
                Decoded::Complete {
                    value: item,
                    consumed,
                }
            }
            Decoded::Incomplete { needed } => Decoded::Incomplete { needed },
        })
    }
}

/// Below 28 a device number travels as one int32: the sender's `dev_t` cut to 32 bits. A
/// stock peer on Linux (glibc's encoding) puts major bits 0–11 at bits 8–19, minor bits 0–7
/// at bits 0–7 and minor bits 8–19 at bits 20–31; we read and write that layout, so a
/// device with a minor above 255 keeps it as it does between two stock peers.
fn join_dev_pre28(major: u32, minor: u32) -> u32 {
    ((major & 0xFFF) << 8) | (minor & 0xFF) | ((minor & 0xF_FF00) << 12)
}

fn split_dev_pre28(raw: u32) -> (u32, u32) {
    ((raw >> 8) & 0xFFF, (raw & 0xFF) | ((raw >> 12) & 0xF_FF00))
}

/// Encodes entries the way a stock sender does (used by tests, fuzz seeds and the future
/// sender role).
#[derive(Debug, Clone)]
pub struct FlistEncoder {
    opts: FlistOptions,
    prev: Prev,
    /// Mode, mtime, uid and gid of each hard-link leader sent (≥30), by wire index: a
    /// follower's attributes are not sent, the receiver copies its leader's and compares
    /// the next entry with those, so our `prev` must take them too.
    leaders: std::collections::HashMap<u32, (u32, i64, u32, u32)>,
}

impl FlistEncoder {
    pub fn new(opts: FlistOptions) -> Self {
        FlistEncoder {
            opts,
            prev: Prev::default(),
            leaders: std::collections::HashMap::new(),
        }
    }

    pub fn encode(&mut self, e: &FileEntry, out: &mut Vec<u8>) {
        let o = self.opts;
        let p = o.protocol;
        let first = self.prev.count == 0;
        let mut flags: u32 = 0;
        if e.is_dir() {
            if e.top_dir {
                flags |= XMIT_TOP_DIR;
            }
            if e.no_content_dir && p >= 30 {
                flags |= XMIT_NO_CONTENT_DIR;
            }
        }
        if e.mode == self.prev.mode && !first {
            flags |= XMIT_SAME_MODE;
        }
        let has_rdev = e.has_rdev(&o);
        let (major, minor) = e.rdev.unwrap_or((0, 0));
        if has_rdev && p >= 28 {
            if major == self.prev.rdev_major && !first {
                flags |= XMIT_SAME_RDEV_MAJOR;
            }
            if p < 30 && minor <= 0xFF {
                flags |= XMIT_RDEV_MINOR_8_PRE30;
            }
        }
        if !o.preserve_uid || (e.uid == self.prev.uid && !first) {
            flags |= XMIT_SAME_UID;
        }
        if !o.preserve_gid || (e.gid == self.prev.gid && !first) {
            flags |= XMIT_SAME_GID;
        }
        if p >= 30 && e.user_name.is_some() && o.preserve_uid {
            flags &= !XMIT_SAME_UID;
            flags |= XMIT_USER_NAME_FOLLOWS;
        }
        if p >= 30 && e.group_name.is_some() && o.preserve_gid {
            flags &= !XMIT_SAME_GID;
            flags |= XMIT_GROUP_NAME_FOLLOWS;
        }
        if e.mtime == self.prev.mtime && !first {
            flags |= XMIT_SAME_TIME;
        }
        if p >= 31 && e.mtime_nsec != 0 {
            flags |= XMIT_MOD_NSEC;
        }
        let l1 = self
            .prev
            .name
            .iter()
            .zip(&e.name)
            .take_while(|(a, b)| a == b)
            .count()
            .min(255);
        let l2 = e.name.len() - l1;
        if l1 > 0 {
            flags |= XMIT_SAME_NAME;
        }
        if l2 > 255 {
            flags |= XMIT_LONG_NAME;
        }
        let follower = match e.hard_link {
            HardLink::Leader if p >= 30 && o.preserve_hard_links => {
                flags |= XMIT_HLINKED | XMIT_HLINK_FIRST;
                let wire_index = self.prev.count as u32;
                self.leaders
                    .insert(wire_index, (e.mode, e.mtime, e.uid, e.gid));
                None
            }
            HardLink::Follower { first } if p >= 30 && o.preserve_hard_links => {
                flags |= XMIT_HLINKED;
                Some(first)
            }
            HardLink::DevIno { dev, .. } if p < 30 && o.preserve_hard_links => {
                if p >= 28 {
                    flags |= XMIT_HLINKED;
                    if dev == self.prev.dev && !first {
                        flags |= XMIT_SAME_DEV_PRE30;
                    }
                }
                None
            }
            _ => None,
        };
        // Flag word: a zero word would read as the end of the list.
        if o.varint_flags {
            put_varint(
                out,
                if flags == 0 {
                    XMIT_EXTENDED_FLAGS as i32
                } else {
                    flags as i32
                },
            );
        } else if p >= 28 {
            if flags == 0 && !e.is_dir() {
                flags |= XMIT_TOP_DIR;
            }
            if flags & 0xFF00 != 0 || flags == 0 {
                flags |= XMIT_EXTENDED_FLAGS;
                put_u16(out, flags as u16);
            } else {
                out.push(flags as u8);
            }
        } else {
            if flags & 0xFF == 0 {
                flags |= if e.is_dir() {
                    XMIT_LONG_NAME
                } else {
                    XMIT_TOP_DIR
                };
            }
            out.push(flags as u8);
        }
        if flags & XMIT_SAME_NAME != 0 {
            out.push(l1 as u8);
        }
        if flags & XMIT_LONG_NAME != 0 {
            put_varint30(out, p, l2 as i32);
        } else {
            out.push(l2 as u8);
        }
        out.extend_from_slice(&e.name[l1..]);
        self.prev.name = e.name.clone();
        self.prev.count += 1;
        if let Some(first) = follower {
            put_varint(out, first as i32);
            // What the receiver keeps: its leader's attributes (a caller that named no
            // earlier leader gets its own, as a decoder would fail on that list anyway).
            let (mode, mtime, uid, gid) = self
                .leaders
                .get(&first)
                .copied()
                .unwrap_or((e.mode, e.mtime, e.uid, e.gid));
            self.prev.mode = mode;
            self.prev.mtime = mtime;
            self.prev.uid = uid;
            self.prev.gid = gid;
            return;
        }
        put_varlong30(out, p, e.size, 3);
        if flags & XMIT_SAME_TIME == 0 {
            if p >= 30 {
                put_varlong(out, e.mtime, 4);
            } else {
                put_i32(out, e.mtime as i32);
            }
        }
        self.prev.mtime = e.mtime;
        if flags & XMIT_MOD_NSEC != 0 {
            put_varint(out, e.mtime_nsec as i32);
        }
        if flags & XMIT_SAME_MODE == 0 {
            put_i32(out, e.mode as i32);
        }
        self.prev.mode = e.mode;
        if o.preserve_uid {
            if flags & XMIT_SAME_UID == 0 {
                put_varint30(out, p, e.uid as i32);
                if p >= 30 && flags & XMIT_USER_NAME_FOLLOWS != 0 {
                    let n = e.user_name.as_deref().unwrap_or_default();
                    let n = &n[..n.len().min(255)];
                    out.push(n.len() as u8);
                    out.extend_from_slice(n);
                }
            }
            self.prev.uid = e.uid;
        }
        if o.preserve_gid {
            if flags & XMIT_SAME_GID == 0 {
                put_varint30(out, p, e.gid as i32);
                if p >= 30 && flags & XMIT_GROUP_NAME_FOLLOWS != 0 {
                    let n = e.group_name.as_deref().unwrap_or_default();
                    let n = &n[..n.len().min(255)];
                    out.push(n.len() as u8);
                    out.extend_from_slice(n);
                }
            }
            self.prev.gid = e.gid;
        }
        if has_rdev {
            if p >= 28 {
                if flags & XMIT_SAME_RDEV_MAJOR == 0 {
                    put_varint30(out, p, major as i32);
                }
                if p >= 30 {
                    put_varint(out, minor as i32);
                } else if flags & XMIT_RDEV_MINOR_8_PRE30 != 0 {
                    out.push(minor as u8);
                } else {
                    put_i32(out, minor as i32);
                }
                self.prev.rdev_major = major;
            } else {
                let raw = join_dev_pre28(major, minor);
                put_i32(out, raw as i32);
                self.prev.rdev_major = split_dev_pre28(raw).0;
            }
        }
        if o.preserve_links && e.mode & S_IFMT == S_IFLNK {
            let t = e.symlink.as_deref().unwrap_or_default();
            put_varint30(out, p, t.len() as i32);
            out.extend_from_slice(t);
        }
        if let HardLink::DevIno { dev, ino } = e.hard_link {
            if p < 30 && o.preserve_hard_links && (p >= 28 || e.is_regular()) {
                if flags & XMIT_SAME_DEV_PRE30 == 0 || p < 28 {
                    if p >= 26 {
                        put_longint(out, dev + 1);
                    } else {
                        put_i32(out, (dev + 1) as i32);
                    }
                }
                if p >= 26 {
                    put_longint(out, ino);
                } else {
                    put_i32(out, ino as i32);
                }
                self.prev.dev = dev;
            }
        }
        if let Some(n) = o.checksum_len {
            if e.is_regular() || p < 28 {
                let mut s = e.checksum.clone().unwrap_or_default();
                s.resize(n.min(MAX_DIGEST_LEN), 0);
                out.extend_from_slice(&s);
            }
        }
    }

    /// End marker with the sender's io_error.
    pub fn encode_end(&self, io_error: u32, out: &mut Vec<u8>) {
        if self.opts.varint_flags {
            put_varint(out, 0);
            put_varint(out, io_error as i32);
        } else if io_error != 0 && self.opts.safe_flist {
            put_u16(out, (XMIT_EXTENDED_FLAGS | XMIT_IO_ERROR_ENDLIST) as u16);
            put_varint(out, io_error as i32);
        } else {
            out.push(0);
        }
    }
}

/// Turns a name as the sender wrote it into the name the receiver uses, refusing what is
/// unsafe (spec §9.16). Stock's receiver cleans before it checks, so peers that write
/// `./x` (openrsync writes every name that way), `x//y`, `x/./y` or `x/` are accepted as
/// `x`, `x/y`, `x/y` and `x`; a name that cleans to nothing is the transfer root `.`,
/// which must be a directory. What stays unsafe after cleaning is refused, never mended:
/// an absolute name, a NUL, and any `..` component, even one that would stay inside the
/// root (`x/../y`): stock's receiver aborts on those too. Stock keeps a final `.` after a
/// name (`x/.`, the directory `x` under a second name); we refuse it instead, no sender
/// writes one and it would alias the directory.
///
/// The prefix compression of the list works on the names as sent, so this applies to the
/// decoded entry, never to the decoder's "previous name".
pub fn clean_received_name(raw: &[u8], is_dir: bool) -> Result<Vec<u8>, DecodeError> {
    let bad = |reason: &'static str| DecodeError::BadName { reason };
    if raw.is_empty() {
        return Err(bad("empty name"));
    }
    if raw.contains(&0) {
        return Err(bad("NUL in name"));
    }
    if raw.first() == Some(&b'/') {
        return Err(bad("absolute path"));
    }
    let mut clean: Vec<u8> = Vec::with_capacity(raw.len());
    let mut parts = raw.split(|&c| c == b'/').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        match part {
            b"" => continue,
            b".." => return Err(bad("'..' path component")),
            // Only a `.` followed by a slash is dropped: stock keeps a final one.
            b"." if !last => continue,
            _ => {}
        }
        if !clean.is_empty() {
            clean.push(b'/');
        }
        clean.extend_from_slice(part);
    }
    if clean.is_empty() || clean == b"." {
        return if is_dir {
            Ok(b".".to_vec())
        } else {
            Err(bad("transfer root is not a directory"))
        };
    }
    if clean.ends_with(b"/.") {
        return Err(bad("'.' as the last path component"));
    }
    Ok(clean)
}

/// One uid or gid name list (sent when ids are mapped by name, spec §5.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdList {
    pub entries: Vec<(u32, Vec<u8>)>,
    /// Name of id 0 (`CF_ID0_NAMES`).
    pub id0_name: Option<Vec<u8>>,
}

pub fn decode_id_list(
    buf: &[u8],
    protocol: u32,
    id0_names: bool,
    limits: &Limits,
) -> Result<Decoded<IdList>, DecodeError> {
    run(buf, |c| {
        let mut l = IdList::default();
        loop {
            let id = c.varint30(protocol)?;
            if id == 0 {
                break;
            }
            if l.entries.len() >= limits.max_id_entries {
                return Err(DecodeError::TooLong {
                    what: "id list",
                    len: l.entries.len() as u64,
                    max: limits.max_id_entries as u64,
                }
                .into());
            }
            let n = usize::from(c.u8()?);
            l.entries.push((id as u32, c.bytes(n)?.to_vec()));
        }
        if id0_names {
            let n = usize::from(c.u8()?);
            l.id0_name = Some(c.bytes(n)?.to_vec());
        }
        Ok(l)
    })
}

pub fn encode_id_list(l: &IdList, protocol: u32, id0_names: bool, out: &mut Vec<u8>) {
    for (id, name) in &l.entries {
        if *id == 0 {
            continue;
        }
        put_varint30(out, protocol, *id as i32);
        let n = &name[..name.len().min(255)];
        out.push(n.len() as u8);
        out.extend_from_slice(n);
    }
    put_varint30(out, protocol, 0);
    if id0_names {
        let n = l.id0_name.as_deref().unwrap_or_default();
        let n = &n[..n.len().min(255)];
        out.push(n.len() as u8);
        out.extend_from_slice(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts() -> FlistOptions {
        FlistOptions::archive(32, 0x1fe, false)
    }

    #[test]
    fn decodes_captured_entries() {
        // The annotated start of a 3.5.0 pull (spec §5.3).
        let bytes: Vec<u8> = [
            &[
                0xa0, 0x01, 0x01, b'.', 0x00, 0x00, 0x10, 0x6b, 0xcf, 0x48, 0x02, 0xf0, 0x01, 0x3a,
                0x22, 0x35, 0xed, 0x41, 0, 0, 0, 0,
            ][..],
            &[
                0xa0, 0x98, 0x04, b'l', b'i', b'n', b'k', 0x00, 0x05, 0x00, 0xf0, 0x01, 0x3a, 0x22,
                0x35, 0xff, 0xa1, 0, 0, 0x05,
            ][..],
            b"a.txt",
            &[0, 0],
        ]
        .concat();
        let mut d = FlistDecoder::new(opts(), Limits::default());
        let mut list = Vec::new();
        let mut pos = 0;
        let end = loop {
            let (item, n) = d.decode(&bytes[pos..], &list).unwrap().complete().unwrap();
            pos += n;
            match item {
                FlistItem::Entry(e) => list.push(e),
                FlistItem::End { io_error } => break io_error,
            }
        };
        assert_eq!(end, 0);
        assert_eq!(pos, bytes.len());
        assert_eq!(list[0].name, b".");
        assert!(list[0].top_dir);
        assert_eq!(list[0].size, 4096);
        assert_eq!(list[0].mtime, 0x6b0248cf);
        assert_eq!(list[0].mtime_nsec, 0x35223a01);
        assert_eq!(list[0].mode, 0o40755);
        assert_eq!(list[1].name, b"link");
        assert_eq!(list[1].mtime, 0x6b0248cf);
        assert_eq!(list[1].mode, 0o120777);
        assert_eq!(list[1].symlink.as_deref(), Some(&b"a.txt"[..]));
        // Our encoder reproduces the sender's bytes.
        let mut enc = FlistEncoder::new(opts());
        let mut o = Vec::new();
        for e in &list {
            enc.encode(e, &mut o);
        }
        enc.encode_end(0, &mut o);
        assert_eq!(o, bytes);
    }

    #[test]
    fn received_names_are_cleaned_as_stock_cleans_them() {
        let clean = |n: &str, dir: bool| {
            clean_received_name(n.as_bytes(), dir)
                .map(|v| String::from_utf8(v).unwrap())
                .map_err(|e| e.to_string())
        };
        for (raw, want) in [
            ("./x", "x"),
            ("././x", "x"),
            (".//x", "x"),
            ("x//y", "x/y"),
            ("x/./y", "x/y"),
            ("x/.//./y", "x/y"),
            ("x/", "x"),
            ("x///", "x"),
            ("x/./", "x"),
            ("./bash/CHANGES.gz", "bash/CHANGES.gz"),
            ("...", "..."),
            ("x/..y/.z", "x/..y/.z"),
            ("plain", "plain"),
        ] {
            assert_eq!(clean(raw, false).as_deref(), Ok(want), "{raw}");
            assert_eq!(clean(raw, true).as_deref(), Ok(want), "{raw}");
        }
        // A name that cleans to nothing is the transfer root.
        for raw in [".", "./", ".//", "./.", "././"] {
            assert_eq!(clean(raw, true).as_deref(), Ok("."), "{raw}");
            assert!(
                clean(raw, false).unwrap_err().contains("transfer root"),
                "{raw}"
            );
        }
        for (raw, why) in [
            ("../x", "'..'"),
            ("./../x", "'..'"),
            ("x/../../y", "'..'"),
            ("x/../y", "'..'"),
            ("x/..", "'..'"),
            ("..", "'..'"),
            ("/x", "absolute"),
            ("//x", "absolute"),
            ("x\0y", "NUL"),
            ("", "empty"),
            ("x/.", "'.'"),
        ] {
            let e = clean(raw, false).unwrap_err();
            assert!(e.contains(why), "{raw:?}: {e}");
        }
    }

    /// Below 28 a device number is the sender's 32-bit `dev_t`: what stock 3.5.0 on Linux
    /// sent at protocol 27 for `mknod b 259 65536` (minor above 255).
    #[test]
    fn device_numbers_below_28_use_the_linux_layout() {
        assert_eq!(split_dev_pre28(0x1001_0300), (259, 65536));
        assert_eq!(join_dev_pre28(259, 65536), 0x1001_0300);
        assert_eq!(split_dev_pre28(join_dev_pre28(1, 3)), (1, 3));
    }

    #[test]
    fn file_list_is_bounded_by_estimated_bytes() {
        let entry = |name: &str| FileEntry {
            mtime: 1,
            symlink: Some(vec![b't'; 1000]),
            ..FileEntry::new(name.as_bytes().to_vec(), S_IFLNK | 0o777, 0)
        };
        let mut enc = FlistEncoder::new(opts());
        let mut b = Vec::new();
        for i in 0..10 {
            enc.encode(&entry(&format!("link{i}")), &mut b);
        }
        let per = entry("link0").memory_cost();
        assert_eq!(per, 5 + 1000 + FLIST_ENTRY_OVERHEAD);
        // Room for exactly 9 entries: the count limit alone would let all 10 through.
        let lim = Limits {
            max_file_list_bytes: 9 * per,
            ..Limits::default()
        };
        let mut d = FlistDecoder::new(opts(), lim);
        let mut pos = 0;
        for _ in 0..9 {
            let (_, n) = d.decode(&b[pos..], &[]).unwrap().complete().unwrap();
            pos += n;
        }
        assert_eq!(
            d.decode(&b[pos..], &[]),
            Err(DecodeError::FileListTooBig { max: 9 * per })
        );
    }

    #[test]
    fn rejects_unknown_type_and_long_prefix() {
        let mut d = FlistDecoder::new(opts(), Limits::default());
        // flags SAME_NAME with an empty previous name
        assert!(d.decode(&[0x20, 0x05, 0x01, b'x'], &[]).is_err());
        // mode 0o170000 type bits
        let mut o = Vec::new();
        put_varint(&mut o, 0x01);
        o.extend_from_slice(&[1, b'x', 0, 0, 0, 0, 0, 0, 0, 0, 0xF0, 0, 0]);
        assert!(matches!(d.decode(&o, &[]), Err(DecodeError::BadMode(_))));
    }

    /// A follower whose own mode, mtime and owners differ from its leader's: the receiver
    /// keeps the leader's (they are not sent), so the next entry's SAME_* flags must be
    /// computed against the leader's, or an entry equal to the follower decodes wrong.
    #[test]
    fn entry_after_a_follower_with_its_own_attributes_decodes_right() {
        let o = FlistOptions::archive(31, 0x1fe, true);
        let mut lead = FileEntry::new(b"a".to_vec(), S_IFREG | 0o644, 5);
        (lead.mtime, lead.uid, lead.gid) = (1_000, 10, 20);
        lead.hard_link = HardLink::Leader;
        let mut follow = FileEntry::new(b"b".to_vec(), S_IFREG | 0o600, 5);
        (follow.mtime, follow.uid, follow.gid) = (2_000, 11, 21);
        follow.hard_link = HardLink::Follower { first: 0 };
        let mut next = FileEntry::new(b"c".to_vec(), S_IFREG | 0o600, 7);
        (next.mtime, next.uid, next.gid) = (2_000, 11, 21);
        let mut enc = FlistEncoder::new(o);
        let mut b = Vec::new();
        for e in [&lead, &follow, &next] {
            enc.encode(e, &mut b);
        }
        let mut d = FlistDecoder::new(o, Limits::default());
        let mut got = Vec::new();
        let mut pos = 0;
        for _ in 0..3 {
            let (item, n) = d.decode(&b[pos..], &got).unwrap().complete().unwrap();
            pos += n;
            match item {
                FlistItem::Entry(e) => got.push(e),
                other => panic!("expected an entry, got {other:?}"),
            }
        }
        assert_eq!(pos, b.len());
        let c = &got[2];
        assert_eq!(
            (c.mode, c.mtime, c.uid, c.gid),
            (next.mode, next.mtime, next.uid, next.gid)
        );
    }

    pub(crate) fn entry_strategy() -> impl Strategy<Value = FileEntry> {
        let kind = prop_oneof![
            Just(S_IFREG),
            Just(S_IFDIR),
            Just(S_IFLNK),
            Just(S_IFCHR),
            Just(S_IFBLK),
            Just(S_IFIFO),
            Just(S_IFSOCK)
        ];
        (
            proptest::collection::vec(
                prop_oneof![
                    Just(b'a'),
                    Just(b'b'),
                    Just(b'/'),
                    any::<u8>().prop_filter("no nul", |b| *b != 0)
                ],
                1..300,
            ),
            kind,
            0u32..0o7777,
            0i64..(1 << 40),
            prop_oneof![Just(0i64), any::<i64>(), -(1i64 << 33)..(1i64 << 33)],
            prop_oneof![Just(0u32), 0u32..1_000_000_000],
            prop_oneof![Just(0u32), any::<u32>()],
            prop_oneof![Just(0u32), any::<u32>()],
            (any::<u32>(), any::<u32>()),
            proptest::collection::vec(any::<u8>().prop_filter("no nul", |b| *b != 0), 0..100),
            any::<bool>(),
        )
            .prop_map(
                |(name, kind, perm, size, mtime, nsec, uid, gid, rdev, target, top)| FileEntry {
                    mtime,
                    mtime_nsec: nsec,
                    uid,
                    gid,
                    rdev: if kind == S_IFCHR || kind == S_IFBLK {
                        Some(rdev)
                    } else {
                        None
                    },
                    symlink: if kind == S_IFLNK { Some(target) } else { None },
                    top_dir: top && kind == S_IFDIR,
                    ..FileEntry::new(name, kind | perm, size)
                },
            )
    }

    fn roundtrip(opts: FlistOptions, list: Vec<FileEntry>) -> Result<(), TestCaseError> {
        let mut enc = FlistEncoder::new(opts);
        let mut o = Vec::new();
        for e in &list {
            enc.encode(e, &mut o);
        }
        enc.encode_end(3, &mut o);
        let mut d = FlistDecoder::new(opts, Limits::default());
        let mut got = Vec::new();
        let mut pos = 0;
        loop {
            // Every strict prefix of an item must be Incomplete.
            let (item, n) = d.decode(&o[pos..], &got).unwrap().complete().unwrap();
            for cut in [0, n / 2, n.saturating_sub(1)] {
                if cut < n {
                    let mut d2 = d.clone();
                    prop_assert!(
                        (d2.decode(&o[pos..pos + cut], &got)
                            .map(|d| d.is_incomplete())
                            .unwrap_or(false))
                    );
                }
            }
            pos += n;
            match item {
                FlistItem::Entry(e) => got.push(e),
                FlistItem::End { io_error } => {
                    if opts.varint_flags || opts.safe_flist {
                        prop_assert_eq!(io_error, 3);
                    }
                    break;
                }
            }
        }
        prop_assert_eq!(pos, o.len());
        prop_assert_eq!(got, list);
        Ok(())
    }

    fn normalise(mut e: FileEntry, p: u32) -> FileEntry {
        if p < 31 {
            e.mtime_nsec = 0;
            if e.mode & S_IFMT == S_IFIFO || e.mode & S_IFMT == S_IFSOCK {
                e.rdev = Some((0, 0));
            }
        }
        if p < 30 {
            e.mtime = i64::from(e.mtime as u32);
            e.uid = e.uid as i32 as u32;
            if let Some((maj, min)) = e.rdev {
                e.rdev = Some(if p < 28 {
                    split_dev_pre28(join_dev_pre28(maj, min))
                } else {
                    (maj, min)
                });
            }
        }
        e
    }

    proptest! {
        #[test]
        fn flist_roundtrip_varint(list in proptest::collection::vec(entry_strategy(), 0..20)) {
            roundtrip(opts(), list)?;
        }

        #[test]
        fn flist_roundtrip_all_versions(list in proptest::collection::vec(entry_strategy(), 0..12), p in 27u32..=32, varint in any::<bool>()) {
            let mut o = FlistOptions::archive(p, if varint && p >= 30 { CF_VARINT_FLIST_FLAGS } else { 0 }, false);
            o.checksum_len = if p == 29 { Some(16) } else { None };
            let list: Vec<FileEntry> = list.into_iter().map(|e| {
                let mut e = normalise(e, p);
                if let Some(n) = o.checksum_len { if e.is_regular() { e.checksum = Some(vec![7; n]); } }
                e
            }).collect();
            roundtrip(o, list)?;
        }

        #[test]
        fn flist_roundtrip_hard_links(list in proptest::collection::vec(entry_strategy(), 1..12), links in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let o = FlistOptions::archive(31, 0x1fe, true);
            let mut list = list;
            list[0].hard_link = HardLink::Leader;
            let n = list.len();
            for l in links {
                let i = l.index(n);
                if i == 0 { continue; }
                let lead = list[0].clone();
                let e = &mut list[i];
                let name = e.name.clone();
                *e = FileEntry { name, hard_link: HardLink::Follower { first: 0 }, top_dir: false, user_name: None, group_name: None, ..lead };
            }
            roundtrip(o, list)?;
        }

        #[test]
        fn id_list_roundtrip(ids in proptest::collection::vec((1u32..100000, proptest::collection::vec(any::<u8>(), 0..20)), 0..10), id0 in any::<bool>()) {
            let l = IdList { entries: ids, id0_name: if id0 { Some(b"root".to_vec()) } else { None } };
            let mut o = Vec::new();
            encode_id_list(&l, 31, id0, &mut o);
            prop_assert_eq!(decode_id_list(&o, 31, id0, &Limits::default()).unwrap(), Decoded::Complete { value: l, consumed: o.len() });
        }

        #[test]
        fn decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = FlistDecoder::new(FlistOptions::archive(31, 0x1fe, true), Limits::default());
            let mut list = Vec::new();
            let mut pos = 0;
            while let Ok(Decoded::Complete { value, consumed }) = d.decode(&b[pos..], &list) {
                pos += consumed;
                match value { FlistItem::Entry(e) => list.push(e), FlistItem::End { .. } => break }
            }
        }
    }
}

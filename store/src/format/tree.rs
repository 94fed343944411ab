//! Tree objects: the deterministic encoding of one directory's entries.
//!
//! A directory is encoded as one leaf (its entries sorted by raw name bytes) or, when huge,
//! as a split node listing leaf parts with their first names. The encoding is versioned and
//! canonical, so an unchanged directory hashes to the same id and costs nothing in a new
//! snapshot.

use crate::error::DecodeError;
use crate::format::codec::{put_bytes, put_ivarint, put_uvarint, Reader};
use crate::format::id::Id;
use crate::format::*;

/// What kind of file system object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl EntryKind {
    pub fn code(self) -> u8 {
        match self {
            EntryKind::File => ENTRY_FILE,
            EntryKind::Dir => ENTRY_DIR,
            EntryKind::Symlink => ENTRY_SYMLINK,
            EntryKind::CharDevice => ENTRY_CHAR_DEVICE,
            EntryKind::BlockDevice => ENTRY_BLOCK_DEVICE,
            EntryKind::Fifo => ENTRY_FIFO,
            EntryKind::Socket => ENTRY_SOCKET,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            ENTRY_FILE => EntryKind::File,
            ENTRY_DIR => EntryKind::Dir,
            ENTRY_SYMLINK => EntryKind::Symlink,
            ENTRY_CHAR_DEVICE => EntryKind::CharDevice,
            ENTRY_BLOCK_DEVICE => EntryKind::BlockDevice,
            ENTRY_FIFO => EntryKind::Fifo,
            ENTRY_SOCKET => EntryKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_type_bits(self) -> u32 {
        match self {
            EntryKind::File => 0o100000,
            EntryKind::Dir => 0o040000,
            EntryKind::Symlink => 0o120000,
            EntryKind::CharDevice => 0o020000,
            EntryKind::BlockDevice => 0o060000,
            EntryKind::Fifo => 0o010000,
            EntryKind::Socket => 0o140000,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & 0o170000 {
            0o100000 => EntryKind::File,
            0o040000 => EntryKind::Dir,
            0o120000 => EntryKind::Symlink,
            0o020000 => EntryKind::CharDevice,
            0o060000 => EntryKind::BlockDevice,
            0o010000 => EntryKind::Fifo,
            0o140000 => EntryKind::Socket,
            _ => return None,
        })
    }
}

/// Ownership, permissions and time of an entry, kept exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; negative before 1970.
    pub mtime_sec: i64,
    /// Always in 0..1_000_000_000.
    pub mtime_nsec: u32,
}

/// One chunk of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub id: Id,
    pub len: u32,
}

/// Kind-specific data of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryData {
    File {
        size: u64,
        /// Entries of one snapshot sharing a non-zero group are hard links of each other.
        link_group: u64,
        chunks: Vec<ChunkRef>,
    },
    Dir {
        tree: Id,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Character or block device.
    Device {
        rdev: u64,
    },
    /// FIFO or socket: nothing beyond metadata.
    Special,
}

/// One named entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TreeEntry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Metadata,
    pub data: EntryData,
}

impl TreeEntry {
    pub fn file_size(&self) -> u64 {
        match &self.data {
            EntryData::File { size, .. } => *size,
            _ => 0,
        }
    }

    /// Blobs this entry references (what a tree's reference counts cover).
    pub fn children(&self, out: &mut Vec<Id>) {
        match &self.data {
            EntryData::File { chunks, .. } => out.extend(chunks.iter().map(|c| c.id)),
            EntryData::Dir { tree } => out.push(*tree),
            _ => {}
        }
    }
}

/// A decoded tree blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeNode {
    Leaf(Vec<TreeEntry>),
    /// Parts in name order: (first name in the part, part id).
    Split(Vec<(Vec<u8>, Id)>),
}

impl TreeNode {
    pub fn children(&self) -> Vec<Id> {
        let mut out = Vec::new();
        match self {
            TreeNode::Leaf(entries) => entries.iter().for_each(|e| e.children(&mut out)),
            TreeNode::Split(parts) => out.extend(parts.iter().map(|(_, id)| *id)),
        }
        out
    }
}

fn header(out: &mut Vec<u8>, node: u8) {
    out.extend_from_slice(TREE_MAGIC);
    out.push(TREE_FORMAT_VERSION);
    out.push(node);
}

/// Encodes entries that are already sorted by name with no duplicates.
pub fn encode_leaf(entries: &[TreeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 64);
    header(&mut out, TREE_NODE_LEAF);
    put_uvarint(&mut out, entries.len() as u64);
    for e in entries {
        encode_entry(&mut out, e);
    }
    out
}

/// Appends one entry as a leaf encodes it.
pub(crate) fn encode_entry(out: &mut Vec<u8>, e: &TreeEntry) {
    put_bytes(out, &e.name);
    out.push(e.kind.code());
    put_uvarint(out, u64::from(e.meta.perm));
    put_uvarint(out, u64::from(e.meta.uid));
    put_uvarint(out, u64::from(e.meta.gid));
    put_ivarint(out, e.meta.mtime_sec);
    put_uvarint(out, u64::from(e.meta.mtime_nsec));
    match &e.data {
        EntryData::File {
            size,
            link_group,
            chunks,
        } => {
            put_uvarint(out, *size);
            put_uvarint(out, *link_group);
            put_uvarint(out, chunks.len() as u64);
            for c in chunks {
                out.extend_from_slice(c.id.as_bytes());
                put_uvarint(out, u64::from(c.len));
            }
        }
        EntryData::Dir { tree } => out.extend_from_slice(tree.as_bytes()),
        EntryData::Symlink { target } => put_bytes(out, target),
        EntryData::Device { rdev } => put_uvarint(out, *rdev),
        EntryData::Special => {}
    }
}

pub fn encode_split(parts: &[(Vec<u8>, Id)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + parts.len() * 64);
    header(&mut out, TREE_NODE_SPLIT);
    put_uvarint(&mut out, parts.len() as u64);
    for (first, id) in parts {
        put_bytes(&mut out, first);
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Where a huge directory is cut: content-defined, so one new name disturbs one part.
pub fn split_points(entries: &[TreeEntry]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = i + 1 - start;
        let hash = u64::from_le_bytes(
            blake3::hash(&e.name).as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        );
        if len >= TREE_SPLIT_MAX_ENTRIES
            || (len >= TREE_SPLIT_MIN_ENTRIES && hash & TREE_SPLIT_MASK == 0)
        {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() || ranges.is_empty() {
        ranges.push(start..entries.len());
    }
    ranges
}

pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// Decodes a tree blob. Never panics; every count and length is bounded before allocating.
pub fn decode(bytes: &[u8]) -> Result<TreeNode, DecodeError> {
    let mut r = Reader::new(bytes);
    let magic: [u8; 4] = r.array()?;
    if &magic != TREE_MAGIC {
        return r.fail("bad tree magic");
    }
    if r.u8()? != TREE_FORMAT_VERSION {
        return r.fail("unsupported tree format version");
    }
    let node = r.u8()?;
    // Each entry takes at least 8 bytes, so a count above the remaining length is corrupt.
    let max_count = (bytes.len() / 8).min(MAX_TREE_ENTRIES) as u64;
    match node {
        TREE_NODE_LEAF => {
            let count = r.bounded(max_count, "entry count too large")? as usize;
            let mut entries: Vec<TreeEntry> = Vec::with_capacity(count);
            for _ in 0..count {
                let entry = decode_entry(&mut r)?;
                if let Some(prev) = entries.last() {
                    if prev.name >= entry.name {
                        return r.fail("entries not sorted or duplicated");
                    }
                }
                entries.push(entry);
            }
            if !r.is_empty() {
                return r.fail("trailing bytes after entries");
            }
            Ok(TreeNode::Leaf(entries))
        }
        TREE_NODE_SPLIT => {
            let count = r.bounded(max_count, "part count too large")? as usize;
            let mut parts: Vec<(Vec<u8>, Id)> = Vec::with_capacity(count);
            for _ in 0..count {
                let first = r.bytes(MAX_NAME_LEN, "name too long")?.to_vec();
                if let Some((prev, _)) = parts.last() {
                    if *prev >= first {
                        return r.fail("parts not sorted");
                    }
                }
                parts.push((first, Id(r.array()?)));
            }
            if !r.is_empty() {
                return r.fail("trailing bytes after parts");
            }
            Ok(TreeNode::Split(parts))
        }
        _ => r.fail("unknown tree node type"),
    }
}

/// Reads one entry as a leaf encodes it, checking what can be checked of an entry alone.
pub(crate) fn decode_entry(r: &mut Reader) -> Result<TreeEntry, DecodeError> {
    let name = r.bytes(MAX_NAME_LEN, "name too long")?.to_vec();
    if !valid_name(&name) {
        return r.fail("invalid entry name");
    }
    let kind = EntryKind::from_code(r.u8()?).ok_or(DecodeError {
        offset: r.position(),
        reason: "unknown entry kind",
    })?;
    let perm = r.bounded(0o7777, "permission bits out of range")? as u32;
    let uid = r.bounded(u64::from(u32::MAX), "uid out of range")? as u32;
    let gid = r.bounded(u64::from(u32::MAX), "gid out of range")? as u32;
    let mtime_sec = r.ivarint()?;
    let mtime_nsec = r.bounded(999_999_999, "nanoseconds out of range")? as u32;
    let meta = Metadata {
        perm,
        uid,
        gid,
        mtime_sec,
        mtime_nsec,
    };
    let data = match kind {
        EntryKind::File => {
            let size = r.uvarint()?;
            let link_group = r.uvarint()?;
            let remaining = r.remaining() / 33;
            let n = r.bounded(
                remaining.min(MAX_CHUNKS_PER_FILE) as u64,
                "chunk count too large",
            )? as usize;
            let mut chunks = Vec::with_capacity(n);
            let mut total: u64 = 0;
            for _ in 0..n {
                let id = Id(r.array()?);
                let len = r.bounded(u64::from(MAX_BLOB_LEN), "chunk too long")? as u32;
                total += u64::from(len);
                chunks.push(ChunkRef { id, len });
            }
            if total != size {
                return r.fail("chunk lengths do not add up to the file size");
            }
            EntryData::File {
                size,
                link_group,
                chunks,
            }
        }
        EntryKind::Dir => EntryData::Dir {
            tree: Id(r.array()?),
        },
        EntryKind::Symlink => EntryData::Symlink {
            target: r
                .bytes(MAX_SYMLINK_LEN, "symlink target too long")?
                .to_vec(),
        },
        EntryKind::CharDevice | EntryKind::BlockDevice => EntryData::Device { rdev: r.uvarint()? },
        EntryKind::Fifo | EntryKind::Socket => EntryData::Special,
    };
    Ok(TreeEntry {
        name,
        kind,
        meta,
        data,
    })
}

/// Stable non-zero group id for a hard-link set, derived from its first member's path, so
/// unchanged directories keep their tree ids between snapshots.
pub fn link_group_for(first_path: &[u8]) -> u64 {
    let h = blake3::hash(first_path);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) | 1
}

/// Linux `dev_t` encoding.
pub fn dev_major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

pub fn dev_minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

pub fn make_dev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = TreeEntry> {
        let name =
            proptest::collection::vec(1u8..=255, 1..40).prop_filter("valid", |n| valid_name(n));
        let meta = (
            0u32..=0o7777,
            any::<u32>(),
            any::<u32>(),
            any::<i64>(),
            0u32..1_000_000_000,
        )
            .prop_map(|(perm, uid, gid, mtime_sec, mtime_nsec)| Metadata {
                perm,
                uid,
                gid,
                mtime_sec,
                mtime_nsec,
            });
        let data = prop_oneof![
            (
                proptest::collection::vec((any::<[u8; 32]>(), 1u32..1000), 0..4),
                any::<u64>()
            )
                .prop_map(|(c, link_group)| {
                    let chunks: Vec<ChunkRef> = c
                        .into_iter()
                        .map(|(id, len)| ChunkRef { id: Id(id), len })
                        .collect();
                    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
                    (
                        EntryKind::File,
                        EntryData::File {
                            size,
                            link_group,
                            chunks,
                        },
                    )
                }),
            any::<[u8; 32]>().prop_map(|t| (EntryKind::Dir, EntryData::Dir { tree: Id(t) })),
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|target| (EntryKind::Symlink, EntryData::Symlink { target })),
            any::<u64>().prop_map(|rdev| (EntryKind::BlockDevice, EntryData::Device { rdev })),
            Just((EntryKind::Fifo, EntryData::Special)),
        ];
        (name, meta, data).prop_map(|(name, meta, (kind, data))| TreeEntry {
            name,
            kind,
            meta,
            data,
        })
    }

    proptest! {
        #[test]
        fn leaf_round_trips(mut entries in proptest::collection::vec(arb_entry(), 0..30)) {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries.dedup_by(|a, b| a.name == b.name);
            let bytes = encode_leaf(&entries);
            prop_assert_eq!(decode(&bytes).unwrap(), TreeNode::Leaf(entries));
        }

        #[test]
        fn decoder_never_panics_on_mutations(
            mut entries in proptest::collection::vec(arb_entry(), 1..10),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries.dedup_by(|a, b| a.name == b.name);
            let mut bytes = encode_leaf(&entries);
            for (at, v) in flips {
                let i = at % bytes.len();
                bytes[i] = v;
            }
            let _ = decode(&bytes);
            let _ = decode(&bytes[..bytes.len() / 2]);
        }
    }

    #[test]
    fn split_round_trips_and_cuts_are_bounded() {
        let parts = vec![(b"a".to_vec(), Id([1; 32])), (b"m".to_vec(), Id([2; 32]))];
        assert_eq!(
            decode(&encode_split(&parts)).unwrap(),
            TreeNode::Split(parts)
        );
        let entries: Vec<TreeEntry> = (0..50_000u32)
            .map(|i| TreeEntry {
                name: format!("f{i:06}").into_bytes(),
                kind: EntryKind::Fifo,
                meta: Metadata::default(),
                data: EntryData::Special,
            })
            .collect();
        let ranges = split_points(&entries);
        assert!(ranges.len() >= 50_000 / TREE_SPLIT_MAX_ENTRIES);
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 50_000);
        for r in &ranges[..ranges.len() - 1] {
            assert!(r.len() >= TREE_SPLIT_MIN_ENTRIES && r.len() <= TREE_SPLIT_MAX_ENTRIES);
        }
    }

    #[test]
    fn unsorted_and_bad_names_are_rejected() {
        let e = |n: &[u8]| TreeEntry {
            name: n.to_vec(),
            kind: EntryKind::Fifo,
            meta: Metadata::default(),
            data: EntryData::Special,
        };
        assert!(decode(&encode_leaf(&[e(b"b"), e(b"a")])).is_err());
        assert!(decode(&encode_leaf(&[e(b"..")])).is_err());
        assert!(decode(&encode_leaf(&[e(b"a/b")])).is_err());
        assert!(decode(b"TRKT\x01\x00\xff\xff\xff\xff\x0f").is_err());
    }

    #[test]
    fn device_numbers_round_trip() {
        for (ma, mi) in [(0, 0), (8, 1), (259, 65536), (4095, 1 << 19)] {
            let d = make_dev(ma, mi);
            assert_eq!((dev_major(d), dev_minor(d)), (ma, mi));
        }
        assert_eq!(make_dev(8, 1), 0x801);
    }
}

//! The one tree walk every way out of the store shares: export to a folder, export to tar,
//! and the rsync sender (push and restore).
//!
//! A [`SnapshotWalk`] visits a snapshot (or a sub-path of it) depth first in pre-order: a
//! folder, then its contents in stored (name) order, then a [`WalkEvent::DirDone`] for it.
//! Trees are read one folder at a time as the walk reaches them, so memory follows the depth
//! of the tree, not its size, unless the caller keeps the entries (as a sender building its
//! file list does, with [`Store::walk_entries`]). Names are checked here, once, so a caller
//! joining them into paths or passing them to `*at` calls gets one path component each.
//! Hard links are resolved on the way: the first entry of a link group met in walk order
//! leads it, later ones point back to it by index and path.

use std::collections::HashMap;

use crate::error::{Result, StoreError};
use crate::format::id::Id;
use crate::format::tree::{valid_name, EntryData, EntryKind, Metadata, TreeEntry};
use crate::read::join;
use crate::read::reader::FileReader;
use crate::snapshot::{split_path, Snapshot};
use crate::store::Store;

/// Where an entry stands in its hard-link group (only regular files are grouped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HardLink {
    /// Not hard-linked (`link_group` is 0), or not a regular file.
    None,
    /// The first member of its group met in this walk: the one whose content is sent or
    /// written.
    Leader,
    /// A later member of a group: a link to the leader, which the walk visited before.
    Follower {
        /// The leader's [`WalkEntry::index`].
        leader_index: usize,
        /// The leader's [`WalkEntry::path`].
        leader_path: Vec<u8>,
    },
}

/// One entry the walk visits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// Position in walk order, counting entries only (not [`WalkEvent::DirDone`]): 0 is the
    /// first entry, the root folder when the walk starts at a folder.
    pub index: usize,
    /// Raw path relative to the export root, components joined by `/`. Empty for the root
    /// folder itself (what an rsync sender lists as `.`). When the walk starts at something
    /// other than a folder, its only entry has its own name as its path.
    pub path: Vec<u8>,
    /// Components in `path` (0 for the root folder, 1 for its children).
    pub depth: usize,
    /// The stored entry: kind, metadata, and data (chunks, link group, symlink target,
    /// device number, subtree). `entry.name` is the last component of `path` (empty for the
    /// root folder, whose metadata is the snapshot's root metadata when the walk starts at
    /// the snapshot root).
    pub entry: TreeEntry,
    /// Hard-link role of a regular file.
    pub link: HardLink,
}

impl WalkEntry {
    /// Whether this is the root folder of the walk (the folder the walk started at).
    pub fn is_root(&self) -> bool {
        self.path.is_empty()
    }

    /// A regular file whose content must be read: not a hard link to an earlier entry.
    pub fn has_content(&self) -> bool {
        self.entry.kind == EntryKind::File && !matches!(self.link, HardLink::Follower { .. })
    }
}

/// What [`SnapshotWalk`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkEvent {
    /// An entry, before anything inside it (pre-order).
    Entry(WalkEntry),
    /// Everything inside the folder at `path` has been visited (post-order): the moment to
    /// apply a folder's metadata deepest first. Also sent for the root folder (empty path),
    /// last of all.
    DirDone {
        /// The folder's [`WalkEntry::index`].
        index: usize,
        path: Vec<u8>,
        meta: Metadata,
    },
}

/// A folder whose contents the walk is inside.
struct Frame {
    index: usize,
    path: Vec<u8>,
    meta: Metadata,
    /// Read when the walk first needs them, after the caller has seen the folder's entry.
    tree: Option<Id>,
    contents: std::vec::IntoIter<TreeEntry>,
}

/// A depth-first walk of a snapshot or a sub-path of it; an iterator of
/// `Result<WalkEvent>`. After an error it yields nothing more. Made by [`Store::walk`].
pub struct SnapshotWalk<'s> {
    store: &'s Store,
    first: Option<TreeEntry>,
    top_is_dir: bool,
    stack: Vec<Frame>,
    next_index: usize,
    /// Leader index and path of each link group met so far.
    leaders: HashMap<u64, (usize, Vec<u8>)>,
    failed: bool,
}

impl std::fmt::Debug for SnapshotWalk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWalk")
            .field("top_is_dir", &self.top_is_dir)
            .field("depth", &self.stack.len())
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl<'s> SnapshotWalk<'s> {
    /// Whether the walk starts at a folder (its first entry is then the root folder, with
    /// an empty path); otherwise it yields a single entry named after the sub-path's last
    /// component.
    pub fn top_is_dir(&self) -> bool {
        self.top_is_dir
    }

    /// The store the walk reads, e.g. to open a file with [`Store::open_file`].
    pub fn store(&self) -> &'s Store {
        self.store
    }

    fn visit(&mut self, path: Vec<u8>, depth: usize, entry: TreeEntry) -> WalkEvent {
        let index = self.next_index;
        self.next_index += 1;
        let mut link = HardLink::None;
        if let EntryData::File { link_group, .. } = &entry.data {
            if *link_group != 0 {
                link = match self.leaders.get(link_group) {
                    Some((leader_index, leader_path)) => HardLink::Follower {
                        leader_index: *leader_index,
                        leader_path: leader_path.clone(),
                    },
                    None => {
                        self.leaders.insert(*link_group, (index, path.clone()));
                        HardLink::Leader
                    }
                };
            }
        }
        if let EntryData::Dir { tree } = &entry.data {
            self.stack.push(Frame {
                index,
                path: path.clone(),
                meta: entry.meta,
                tree: Some(*tree),
                contents: Vec::new().into_iter(),
            });
        }
        WalkEvent::Entry(WalkEntry {
            index,
            path,
            depth,
            entry,
            link,
        })
    }

    fn step(&mut self) -> Result<Option<WalkEvent>> {
        if let Some(first) = self.first.take() {
            let path = if self.top_is_dir {
                Vec::new()
            } else {
                first.name.clone()
            };
            let depth = usize::from(!self.top_is_dir);
            return Ok(Some(self.visit(path, depth, first)));
        }
        let depth = self.stack.len();
        let Some(frame) = self.stack.last_mut() else {
            return Ok(None);
        };
        if let Some(tree) = frame.tree.take() {
            frame.contents = self.store.read_tree(&tree)?.into_iter();
        }
        match frame.contents.next() {
            Some(child) => {
                // Decoded trees hold only valid names; checked again here because every
                // caller builds paths and `*at` calls from them, one component each.
                let path = join(&frame.path, &child.name);
                if !valid_name(&child.name) {
                    return Err(StoreError::InvalidArgument(format!(
                        "invalid entry name at {}",
                        String::from_utf8_lossy(&path)
                    )));
                }
                Ok(Some(self.visit(path, depth, child)))
            }
            None => {
                let Some(done) = self.stack.pop() else {
                    return Ok(None);
                };
                Ok(Some(WalkEvent::DirDone {
                    index: done.index,
                    path: done.path,
                    meta: done.meta,
                }))
            }
        }
    }
}

impl Iterator for SnapshotWalk<'_> {
    type Item = Result<WalkEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(event) => event.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl Store {
    /// Starts a walk of `sub_path` of `snap` (empty for the whole snapshot). Fails at once
    /// as [`Store::lookup`] does: `InvalidArgument` for a path with `..` or an invalid
    /// component, `NoSuchPath` when it does not exist (or goes through a non-folder).
    /// A sub-path naming a file (or any non-folder) walks that one entry.
    pub fn walk(&self, snap: &Snapshot, sub_path: &[u8]) -> Result<SnapshotWalk<'_>> {
        let mut top = self.lookup(snap, sub_path)?;
        let top_is_dir = top.kind == EntryKind::Dir;
        if top_is_dir {
            top.name = Vec::new();
        } else {
            top.name = split_path(sub_path)?
                .last()
                .map(|n| n.to_vec())
                .unwrap_or_default();
        }
        Ok(SnapshotWalk {
            store: self,
            first: Some(top),
            top_is_dir,
            stack: Vec::new(),
            next_index: 0,
            leaders: HashMap::new(),
            failed: false,
        })
    }

    /// Every entry of a walk of `sub_path` of `snap`, in walk order (`result[i].index == i`),
    /// without the [`WalkEvent::DirDone`] events: a file list built up front. Holds each
    /// entry's chunk list, not its content; open a file later with [`Store::open_walked`].
    pub fn walk_entries(&self, snap: &Snapshot, sub_path: &[u8]) -> Result<Vec<WalkEntry>> {
        let mut entries = Vec::new();
        for event in self.walk(snap, sub_path)? {
            if let WalkEvent::Entry(e) = event? {
                entries.push(e);
            }
        }
        Ok(entries)
    }

    /// Opens the content of a walked regular file (a follower's content is its leader's:
    /// the same chunks). Streams one chunk at a time, each verified.
    pub fn open_walked(&self, entry: &WalkEntry) -> Result<FileReader> {
        self.open_file(&entry.entry)
    }

    /// [`Self::open_walked`] reusing `spent`, a reader done with its file (see
    /// [`Store::reopen_file`]).
    pub fn reopen_walked(&self, entry: &WalkEntry, spent: FileReader) -> Result<FileReader> {
        self.reopen_file(&entry.entry, spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::link_group_for;
    use crate::store::StoreConfig;

    fn meta(perm: u32) -> Metadata {
        Metadata {
            perm,
            uid: 1,
            gid: 2,
            mtime_sec: 3,
            mtime_nsec: 4,
        }
    }

    /// root/{a/{x, y (symlink)}, b (a link group's leader), c/ (empty), d (its follower)}
    fn snapshot(store: &Store) -> Snapshot {
        let mut w = store.begin_snapshot("m", "s").unwrap();
        w.set_root_meta(meta(0o755));
        let group = link_group_for(b"b");
        w.add_dir(b"a", meta(0o750)).unwrap();
        let mut f = w.add_file(b"a/x", meta(0o644), 0).unwrap();
        f.write_content(b"xx").unwrap();
        f.finish().unwrap();
        w.add_symlink(b"a/y", meta(0o777), b"../b").unwrap();
        let mut f = w.add_file(b"b", meta(0o600), group).unwrap();
        f.write_content(b"bbb").unwrap();
        f.finish().unwrap();
        w.add_dir(b"c", meta(0o700)).unwrap();
        let mut f = w.add_file(b"d", meta(0o600), group).unwrap();
        f.write_content(b"bbb").unwrap();
        f.finish().unwrap();
        w.commit().unwrap()
    }

    #[test]
    fn walks_pre_order_with_folders_done_after_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), StoreConfig::default()).unwrap();
        let snap = snapshot(&store);
        let events: Vec<String> = store
            .walk(&snap, b"")
            .unwrap()
            .map(|e| match e.unwrap() {
                WalkEvent::Entry(e) => format!(
                    "{}:{}:{}:{:?}",
                    e.index,
                    String::from_utf8_lossy(&e.path),
                    e.depth,
                    e.link
                ),
                WalkEvent::DirDone { index, path, .. } => {
                    format!("done {index}:{}", String::from_utf8_lossy(&path))
                }
            })
            .collect();
        assert_eq!(
            events,
            [
                "0::0:None",
                "1:a:1:None",
                "2:a/x:2:None",
                "3:a/y:2:None",
                "done 1:a",
                "4:b:1:Leader",
                "5:c:1:None",
                "done 5:c",
                "6:d:1:Follower { leader_index: 4, leader_path: [98] }",
                "done 0:",
            ]
        );
        let entries = store.walk_entries(&snap, b"").unwrap();
        assert_eq!(entries[0].entry.meta, meta(0o755));
        assert!(entries[0].is_root());
        assert!(entries.iter().enumerate().all(|(i, e)| e.index == i));
        assert!(entries[4].has_content() && !entries[6].has_content());
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut store.open_walked(&entries[2]).unwrap(), &mut content)
            .unwrap();
        assert_eq!(content, b"xx");
    }

    #[test]
    fn a_sub_path_walks_from_there_and_a_missing_one_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), StoreConfig::default()).unwrap();
        let snap = snapshot(&store);
        let sub = store.walk_entries(&snap, b"a").unwrap();
        let paths: Vec<&[u8]> = sub.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, [&b""[..], b"x", b"y"]);
        assert_eq!(sub[0].entry.meta, meta(0o750));
        let file = store.walk(&snap, b"a/x").unwrap();
        assert!(!file.top_is_dir());
        let only = store.walk_entries(&snap, b"a/x").unwrap();
        assert_eq!((only.len(), only[0].path.as_slice()), (1, &b"x"[..]));
        assert!(matches!(
            store.walk(&snap, b"nope"),
            Err(StoreError::NoSuchPath(_))
        ));
        assert!(matches!(
            store.walk(&snap, b"a/x/z"),
            Err(StoreError::NoSuchPath(_))
        ));
        assert!(matches!(
            store.walk(&snap, b"../a"),
            Err(StoreError::InvalidArgument(_))
        ));
    }
}

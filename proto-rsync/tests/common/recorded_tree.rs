//! The tree the recorded pushes transfer (tests/fixtures/README.md): every field fixed,
//! listed and served from memory, so a push's replay sends the same bytes as its recording;
//! [`build_tree`] writes it to disk for the recorded pulls.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use turku_proto_rsync::io::PushConfig;
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::sender::{ClientSender, PushOutcome, SendSource, SenderOptions};
use turku_proto_rsync::{FileEntry, HardLink, Limits, MessageKind, Secret, SinkError};

use super::transcript::{replay_handshake, replay_sender, Records};

/// One mtime for every file and directory of the tree (symlinks keep the time they were
/// made: the standard library cannot set a symlink's own time).
pub const MTIME: u64 = 1_700_000_000;
/// The file transferred as a delta: its basis differs in one region and one tail.
pub const DELTA_FILE: &str = "delta.bin";

/// Bytes from a fixed linear congruential generator: incompressible enough for rolling
/// checksums to find real matches, the same on every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        })
        .collect()
}

pub fn delta_new() -> Vec<u8> {
    pseudo_random(6000, 1)
}

/// The receiver's old copy of [`DELTA_FILE`]: one changed stretch in the middle and a
/// shorter tail, so the transfer is part blocks, part literal data.
pub fn delta_basis() -> Vec<u8> {
    let mut b = delta_new();
    b[2100..2300].copy_from_slice(&pseudo_random(200, 2));
    b.truncate(5200);
    b
}

/// What the recorded tree holds, as the receiving sink must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

pub fn expected_tree() -> BTreeMap<String, Node> {
    let linked = b"one content, two names\n".to_vec();
    BTreeMap::from([
        (".".into(), Node::Dir),
        ("dir".into(), Node::Dir),
        ("dir/nested".into(), Node::Dir),
        (
            "dir/nested/deep.txt".into(),
            Node::File(b"three levels down\n".to_vec()),
        ),
        ("dir/hard2".into(), Node::File(linked.clone())),
        ("hard1".into(), Node::File(linked)),
        (DELTA_FILE.into(), Node::File(delta_new())),
        ("empty".into(), Node::File(Vec::new())),
        ("small.txt".into(), Node::File(b"hello, rsync\n".to_vec())),
        (
            "link".into(),
            Node::Symlink(b"dir/nested/deep.txt".to_vec()),
        ),
    ])
}

/// Writes [`expected_tree`] under `root` (hard1 and dir/hard2 as one inode), all mtimes
/// [`MTIME`].
pub fn build_tree(root: &Path) {
    let tree = expected_tree();
    for (name, node) in &tree {
        let p = root.join(name);
        match node {
            Node::Dir => fs::create_dir_all(&p).expect("mkdir"),
            // Made below, once its leader exists.
            Node::File(_) if name == "dir/hard2" => {}
            Node::File(data) => fs::write(&p, data).expect("write"),
            Node::Symlink(target) => {
                let target = std::str::from_utf8(target).expect("utf-8 target");
                std::os::unix::fs::symlink(target, &p).expect("symlink");
            }
        }
    }
    fs::hard_link(root.join("hard1"), root.join("dir/hard2")).expect("hard link");
    // Times last, deepest first, so creating entries does not move a directory's time.
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME);
    for (name, node) in tree.iter().rev() {
        if !matches!(node, Node::Symlink(_)) {
            let f = fs::File::open(root.join(name)).expect("open for mtime");
            f.set_modified(when).expect("set mtime");
        }
    }
}

/// [`expected_tree`] as our sender lists it: walk order (parents first, the hard-link
/// leader before its follower), every field fixed so a replay lists the same bytes.
pub fn push_entries() -> Vec<FileEntry> {
    let tree = expected_tree();
    let order = [
        ".",
        DELTA_FILE,
        "empty",
        "hard1",
        "link",
        "small.txt",
        "dir",
        "dir/hard2",
        "dir/nested",
        "dir/nested/deep.txt",
    ];
    assert_eq!(order.len(), tree.len());
    let leader = order.iter().position(|n| *n == "hard1").expect("leader") as u32;
    order
        .iter()
        .map(|name| {
            let mut e = match &tree[*name] {
                Node::Dir => super::entry(name, 0o040_755, 0),
                Node::File(data) => super::entry(name, 0o100_644, data.len() as i64),
                Node::Symlink(target) => {
                    let mut e = super::entry(name, 0o120_777, target.len() as i64);
                    e.symlink = Some(target.clone());
                    e
                }
            };
            e.hard_link = match *name {
                "hard1" => HardLink::Leader,
                "dir/hard2" => HardLink::Follower { first: leader },
                _ => HardLink::None,
            };
            e
        })
        .collect()
}

/// Content of [`push_entries`] from memory.
pub struct MemSource {
    pub entries: Vec<FileEntry>,
    pub messages: Vec<String>,
}

impl SendSource for MemSource {
    type Content = std::io::Cursor<Vec<u8>>;
    fn open(&mut self, ndx: u32, entry: &FileEntry) -> Result<Self::Content, SinkError> {
        assert_eq!(self.entries[ndx as usize].name, entry.name);
        match &expected_tree()[&entry.name_lossy()] {
            Node::File(data) => Ok(std::io::Cursor::new(data.clone())),
            other => panic!("content of {other:?} asked for"),
        }
    }
    fn message(&mut self, _: MessageKind, text: &str) {
        self.messages.push(text.to_owned());
    }
}

/// What a push left in the daemon's module, as [`MemSink::tree`] shows a pull.
pub fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Node>) {
        let p = if rel == "." {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let meta = fs::symlink_metadata(&p).expect("lstat");
        let node = if meta.file_type().is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            Node::Symlink(
                fs::read_link(&p)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if meta.is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                let name = e.expect("dirent").file_name().into_string().expect("utf-8");
                let child = if rel == "." {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                walk(root, &child, out);
            }
            Node::Dir
        } else {
            Node::File(fs::read(&p).expect("read"))
        };
        out.insert(rel.to_owned(), node);
    }
    let mut out = BTreeMap::new();
    walk(root, ".", &mut out);
    out
}

/// Runs our handshake and sender, pushing this tree as `cfg` says (with `password`, when
/// the recording had one), over the recorded server chunks (one feed and one step a chunk);
/// returns the outcome and all we wrote.
pub fn replay_push(
    cfg: &PushConfig,
    password: Option<Secret>,
    records: &Records,
) -> (PushOutcome, Vec<u8>) {
    // As the driver builds them from `cfg`.
    let mut args = ServerArgs::push(&cfg.module, &cfg.path, cfg.hard_links, cfg.delete);
    args.numeric_ids = cfg.numeric_ids;
    args.checksum_seed = cfg.checksum_seed;
    let h = replay_handshake(args, cfg.protocol, &cfg.user, password, records)
        .unwrap_or_else(|(e, _)| panic!("handshake: {e}"));
    let entries = push_entries();
    let mut source = MemSource {
        entries: entries.clone(),
        messages: Vec::new(),
    };
    let sender = |neg| -> ClientSender<MemSource> {
        ClientSender::new(
            neg,
            SenderOptions {
                hard_links: cfg.hard_links,
                numeric_ids: cfg.numeric_ids,
                delete: false,
                filter_rules: Vec::new(),
                limits: Limits::default(),
            },
            entries,
            0,
        )
        .expect("sender")
    };
    replay_sender(h, sender, &mut source)
}

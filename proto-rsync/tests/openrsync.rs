//! Real conversations with an openrsync daemon (the rsync macOS 15+ ships: protocol 29,
//! `./`-prefixed names, one frame per small write, `@ERROR ` refusals), recorded once and
//! replayed here with no socket, so CI proves protocol-29 interop without the binary.
//!
//! What the recorded pull must rebuild is what stock rsync pulled from the same daemon at
//! the same moment: `openrsync-tree.manifest`, written from stock rsync's copy when the
//! transcripts were recorded. The recorded push (a restore into a writable module's root)
//! sends the stock cases' push tree; live, the module then held exactly that tree. Format,
//! trees and how to re-record: tests/fixtures/README.md
//! (`tests/fixtures/capture.sh /path/to/openrsync`).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mem_sink::MemSink;
use common::recorded_tree::{
    delta_basis, expected_tree, push_entries, read_tree, replay_push as replay_push_tree,
    MemSource, DELTA_FILE,
};
use common::transcript::{
    self, assert_same_output, decode_transcript, encode_transcript, replay_handshake,
    replay_receiver, take_records, Recorder, Records, MAGIC,
};
use sha2::{Digest, Sha256};
use turku_proto_rsync::io::{pull, push, PullConfig, PushConfig};
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::receiver::ReceiverOptions;
use turku_proto_rsync::session::sender::PushOutcome;
use turku_proto_rsync::{Error, FileEntry, FileKind, HardLink, Limits, Outcome, Secret, Timeouts};

/// The seed every recording asks the daemon for, so sums do not depend on the moment.
const SEED: i32 = 0x6d61_6373;
const MODULE: &str = "data";
const USER: &str = "mac";
const PASSWORD: &str = "mac-secret";
const WRONG_PASSWORD: &str = "not-the-password";
/// openrsync's answer to a wrong password (stock says "auth failed").
const AUTH_REFUSED: &str = "authentication failed";
const MANIFEST: &str = "openrsync-tree.manifest";
/// The awkward tree's two big files are cut to these sizes for the recording, so the
/// fixtures stay small; every other entry is as `make_awkward_tree` makes it.
const RANDOM_BIN_LEN: usize = 70_000;
const ZEROS_BIN_LEN: usize = 50_000;

/// What a recorded conversation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A first pull: every file's content moves.
    Pull,
    /// The same pull into a sink that already has every file: only the list moves.
    Repull,
    /// A wrong password: refused during the greeting.
    WrongPassword,
    /// Our sender pushing the recorded push tree (`common::recorded_tree`) into a writable
    /// module's root that holds only the old copy of its delta file (a restore).
    Push,
}

struct Case {
    file: &'static str,
    kind: Kind,
}

const PULL: Case = Case {
    file: "openrsync-pull-p29.transcript",
    kind: Kind::Pull,
};
const REPULL: Case = Case {
    file: "openrsync-repull-p29.transcript",
    kind: Kind::Repull,
};
const PUSH: Case = Case {
    file: "openrsync-push-p29.transcript",
    kind: Kind::Push,
};
/// The writable module a push goes into.
const PUSH_MODULE: &str = "incoming";
const WRONG_PASSWORD_CASE: Case = Case {
    file: "openrsync-badpass-p29.transcript",
    kind: Kind::WrongPassword,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn header(case: &Case) -> String {
    let role = match case.kind {
        Kind::Pull => "pull",
        Kind::Repull => "repull",
        Kind::WrongPassword => "badpass",
        Kind::Push => "push",
    };
    format!("{MAGIC} role={role} protocol=29 hard_links=1 seed={SEED} peer=openrsync\n")
}

// ------------------------------------------------------------------ manifests

/// A name as a manifest writes it: printable ASCII as is, anything else (and space,
/// backslash) as `\xNN`, so a line splits on spaces and newlines are no problem.
fn escape(name: &[u8]) -> String {
    let mut out = String::new();
    for &b in name {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One entry as both sides can tell it. `mtime` is `None` for symlinks: at protocol 29
/// stock rsync leaves a link's own time alone, so the bar has none to compare.
struct Line<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    size: Option<u64>,
    rdev: Option<(u32, u32)>,
    content: Option<&'a [u8]>,
    target: Option<&'a [u8]>,
    /// The first name (sorted) of the hard-link set this file belongs to.
    link: Option<&'a [u8]>,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl Line<'_> {
    /// With `content` false the content hash is left out (an unchanged pull moves none).
    fn render(&self, content: bool) -> String {
        format!(
            "{} mode={:o} uid={} gid={} mtime={} size={} rdev={} sha256={} target={} link={}\n",
            escape(self.name),
            self.mode,
            self.uid,
            self.gid,
            opt(self.mtime),
            opt(self.size),
            opt(self.rdev.map(|(a, b)| format!("{a},{b}"))),
            if content {
                opt(self.content.map(sha256_hex))
            } else {
                "-".to_owned()
            },
            opt(self.target.map(escape)),
            opt(self.link.map(escape)),
        )
    }
}

/// `major, minor` of a Linux `dev_t`, as a file list carries them.
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The manifest of a tree on disk (stock rsync's copy): every entry below `root` and `.`.
fn manifest_of_dir(root: &Path, content: bool) -> String {
    let mut names: Vec<Vec<u8>> = vec![b".".to_vec()];
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&rel))
        };
        for e in fs::read_dir(&dir).expect("readdir") {
            let e = e.expect("dirent");
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            if e.file_type().expect("type").is_dir() {
                stack.push(r.clone());
            }
            names.push(r);
        }
    }
    names.sort();
    let path = |n: &[u8]| {
        if n == b"." {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(n))
        }
    };
    let meta: Vec<fs::Metadata> = names
        .iter()
        .map(|n| fs::symlink_metadata(path(n)).expect("lstat"))
        .collect();
    let mut leaders: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    for (n, m) in names.iter().zip(&meta) {
        if m.file_type().is_file() && m.nlink() > 1 {
            leaders
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| n.clone());
        }
    }
    let mut out = String::new();
    for (n, m) in names.iter().zip(&meta) {
        let ft = m.file_type();
        let data = ft.is_file().then(|| fs::read(path(n)).expect("read"));
        let target = ft.is_symlink().then(|| {
            fs::read_link(path(n))
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let device = ft_is_device(m.mode());
        out.push_str(
            &Line {
                name: n,
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (!ft.is_symlink()).then_some(m.mtime()),
                size: (ft.is_file() || ft.is_symlink()).then_some(m.size()),
                rdev: device.then(|| split_dev(m.rdev())),
                content: data.as_deref(),
                target: target.as_deref(),
                link: leaders.get(&(m.dev(), m.ino())).map(Vec::as_slice),
            }
            .render(content),
        );
    }
    out
}

fn ft_is_device(mode: u32) -> bool {
    matches!(mode & 0o170_000, 0o020_000 | 0o060_000)
}

// ------------------------------------------------------------------ the sink

impl MemSink {
    /// The received list as a manifest (followers take their leader's content; a set is
    /// named by its first name).
    fn manifest(&self, content: bool) -> String {
        // A set is keyed by its leader's index, or (below 30, should the machine hand the
        // pairs through) by device and inode.
        let leader_of = |ndx: u32, e: &FileEntry| match e.hard_link {
            HardLink::Follower { first } => Some((i64::from(first), -1)),
            HardLink::Leader => Some((i64::from(ndx), -1)),
            HardLink::DevIno { dev, ino } => Some((dev, ino)),
            HardLink::None => None,
        };
        let mut set_name: BTreeMap<(i64, i64), Vec<u8>> = BTreeMap::new();
        for (ndx, e) in &self.entries {
            if let Some(l) = leader_of(*ndx, e) {
                let n = set_name.entry(l).or_insert_with(|| e.name.clone());
                if e.name < *n {
                    *n = e.name.clone();
                }
            }
        }
        let mut lines: Vec<(Vec<u8>, String)> = self
            .entries
            .iter()
            .map(|(ndx, e)| {
                let kind = e.kind();
                let leader = leader_of(*ndx, e);
                // A follower's content is its set's: whichever member was transferred.
                let data = (kind == FileKind::Regular).then(|| {
                    let members: Vec<u32> = match leader {
                        Some(key) => self
                            .entries
                            .iter()
                            .filter(|(n, m)| leader_of(**n, m) == Some(key))
                            .map(|(n, _)| *n)
                            .collect(),
                        None => vec![*ndx],
                    };
                    members
                        .iter()
                        .find_map(|n| self.files.get(n))
                        .map_or(&[][..], Vec::as_slice)
                });
                let line = Line {
                    name: &e.name,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime: (kind != FileKind::Symlink).then_some(e.mtime),
                    size: matches!(kind, FileKind::Regular | FileKind::Symlink)
                        .then_some(e.size as u64),
                    rdev: if ft_is_device(e.mode) { e.rdev } else { None },
                    content: data,
                    target: e.symlink.as_deref(),
                    link: leader.and_then(|l| set_name.get(&l)).map(Vec::as_slice),
                }
                .render(content);
                (e.name.clone(), line)
            })
            .collect();
        lines.sort();
        lines.into_iter().map(|(_, l)| l).collect()
    }
}

// ------------------------------------------------------------------ replays

fn read_fixture(name: &str) -> Vec<u8> {
    transcript::read_fixture(
        &fixtures().join(name),
        "tests/fixtures/capture.sh /path/to/openrsync",
    )
}

/// The terms every recorded session ran with, live and replayed: a macro because a pull's
/// and a push's config share these fields but no type.
macro_rules! recorded_terms {
    ($new:expr, $password:expr) => {{
        let mut cfg = $new;
        cfg.protocol = 29;
        cfg.user = USER.into();
        cfg.password = Some(Secret::new($password.as_bytes().to_vec()));
        cfg.hard_links = true;
        cfg.numeric_ids = true;
        cfg.checksum_seed = Some(SEED);
        cfg.timeouts = Timeouts {
            io: None,
            ..Timeouts::default()
        };
        cfg
    }};
}

fn pull_config(case: &Case) -> PullConfig {
    let password = match case.kind {
        Kind::WrongPassword => WRONG_PASSWORD,
        _ => PASSWORD,
    };
    recorded_terms!(PullConfig::new(MODULE), password)
}

/// Runs our handshake and receiver over the recorded server chunks, one feed and one step
/// a chunk as the tokio driver does. Returns the run's result and everything we wrote.
fn replay(case: &Case, records: &Records, sink: &mut MemSink) -> (Result<Outcome, Error>, Vec<u8>) {
    let cfg = pull_config(case);
    let mut args = ServerArgs::pull(&cfg.module, &cfg.path, cfg.hard_links);
    args.numeric_ids = cfg.numeric_ids;
    args.checksum_seed = cfg.checksum_seed;
    let h = match replay_handshake(args, cfg.protocol, &cfg.user, cfg.password.clone(), records) {
        Ok(h) => h,
        Err((e, ours)) => return (Err(e), ours),
    };
    let (outcome, ours) = replay_receiver(
        h,
        ReceiverOptions {
            hard_links: cfg.hard_links,
            numeric_ids: cfg.numeric_ids,
            filter_rules: Vec::new(),
            limits: Limits::default(),
        },
        sink,
    );
    (Ok(outcome), ours)
}

/// What each recorded case must have ended with, live or replayed; `manifest` is stock
/// rsync's copy of the same module.
fn check(case: &Case, result: Result<Outcome, Error>, sink: &MemSink, manifest: &str) {
    match case.kind {
        Kind::WrongPassword => {
            let e = result.expect_err("a wrong password must be refused");
            assert!(e.to_string().contains(AUTH_REFUSED), "{e}");
            assert!(sink.entries.is_empty(), "a refused pull listed entries");
        }
        Kind::Push => unreachable!("a push is checked by check_push"),
        Kind::Pull | Kind::Repull => {
            let o = result.expect("the pull");
            assert_eq!(o.protocol, 29);
            assert_eq!(o.exit_code, 0, "{o:?}; failed: {:?}", sink.failed);
            assert!(sink.failed.is_empty(), "{:?}", sink.failed);
            assert_eq!(o.checksum_seed, SEED);
            let content = case.kind == Kind::Pull;
            let want: String = if content {
                manifest.to_owned()
            } else {
                strip_content(manifest)
            };
            let got = sink.manifest(content);
            if got != want {
                let diff: Vec<String> = want
                    .lines()
                    .filter(|l| !got.lines().any(|g| g == *l))
                    .map(|l| format!("stock: {l}"))
                    .chain(
                        got.lines()
                            .filter(|l| !want.lines().any(|w| w == *l))
                            .map(|l| format!("ours:  {l}")),
                    )
                    .collect();
                panic!(
                    "{}: our pull differs from stock rsync's:\n{}",
                    case.file,
                    diff.join("\n")
                );
            }
            if case.kind == Kind::Repull {
                assert_eq!(o.files_received, 0, "{o:?}");
                assert_eq!(o.literal_bytes + o.matched_bytes, 0, "{o:?}");
            } else {
                assert!(o.literal_bytes > 0, "{o:?}");
            }
        }
    }
}

fn strip_content(manifest: &str) -> String {
    manifest
        .lines()
        .map(|l| {
            let mut words: Vec<String> = l.split(' ').map(str::to_owned).collect();
            for w in &mut words {
                if w.starts_with("sha256=") {
                    *w = "sha256=-".into();
                }
            }
            words.join(" ") + "\n"
        })
        .collect()
}

fn replay_case(case: &Case) {
    let records = decode_transcript(&read_fixture(case.file), &header(case));
    let manifest = String::from_utf8(read_fixture(MANIFEST)).expect("utf-8 manifest");
    let mut sink = MemSink {
        have_all: case.kind == Kind::Repull,
        ..MemSink::default()
    };
    let (result, ours) = replay(case, &records, &mut sink);
    assert_same_output(case.file, &ours, &records);
    check(case, result, &sink, &manifest);
}

#[test]
fn replay_openrsync_pull_of_the_awkward_tree() {
    replay_case(&PULL);
}

#[test]
fn replay_openrsync_unchanged_repull_moves_only_the_list() {
    replay_case(&REPULL);
}

#[test]
fn replay_openrsync_wrong_password_is_refused() {
    replay_case(&WRONG_PASSWORD_CASE);
}

// ------------------------------------------------------------------ the push

fn push_config() -> PushConfig {
    recorded_terms!(PushConfig::new(PUSH_MODULE), PASSWORD)
}

/// What the recorded push must have ended with, live or replayed: protocol 29 (openrsync's),
/// nothing failed, and the delta file sent as matches against the module's old copy.
fn check_push(o: &PushOutcome) {
    assert_eq!(o.protocol, 29);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert!(o.failed.is_empty(), "{o:?}");
    assert_eq!(o.checksum_seed, SEED);
    assert!(
        o.progress.matched_bytes > 0,
        "the delta used no block of the receiver's copy: {o:?}"
    );
}

/// Runs our handshake and sender over the recorded server chunks (one feed and one step a
/// chunk) and returns the outcome and all we wrote.
fn replay_push(records: &Records) -> (PushOutcome, Vec<u8>) {
    let cfg = push_config();
    replay_push_tree(&cfg, cfg.password.clone(), records)
}

fn replay_push_case() {
    let records = decode_transcript(&read_fixture(PUSH.file), &header(&PUSH));
    let (outcome, ours) = replay_push(&records);
    assert_same_output(PUSH.file, &ours, &records);
    check_push(&outcome);
}

#[test]
fn replay_openrsync_push_into_the_module_root() {
    replay_push_case();
}

/// The manifest is not vacuous: it holds the awkward tree's every kind of entry.
#[test]
fn the_manifest_covers_the_awkward_tree() {
    let manifest = String::from_utf8(read_fixture(MANIFEST)).expect("utf-8 manifest");
    for name in [
        "small.txt ",
        "random.bin ",
        "deep/a/b/c/d/e/f/g/h/i/j/leaf ",
        "not-utf8-\\xff\\xfe ",
        "with\\x0anewline ",
        "rel-link ",
        "fifo ",
        "deep/hard-b ",
    ] {
        assert!(
            manifest.lines().any(|l| l.starts_with(name)),
            "{name:?} missing from {MANIFEST}"
        );
    }
    assert!(manifest.lines().count() > 25, "{manifest}");
}

// ------------------------------------------------------------------ recording

/// Records every case against the openrsync daemon `TURKU_OPENRSYNC` names and rewrites
/// the fixtures and the manifest (run by `tests/fixtures/capture.sh /path/to/openrsync`).
/// Each live run passes the same checks as its replay, and each fresh transcript replays
/// before the next is recorded.
#[tokio::test]
#[ignore = "records the openrsync fixtures; run by tests/fixtures/capture.sh /path/to/openrsync"]
async fn record_openrsync_fixtures() {
    use turku_testkit::openrsync::{openrsync_binary, OpenrsyncDaemon, OpenrsyncModule};
    let binary = openrsync_binary();
    assert!(
        turku_testkit::is_root(),
        "record as root: the tree's devices and owners are part of it"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    turku_testkit::make_awkward_tree(&src);
    turku_testkit::random_file(&src.join("random.bin"), 1, RANDOM_BIN_LEN);
    fs::write(src.join("zeros.bin"), vec![0u8; ZEROS_BIN_LEN]).expect("zeros");
    // Stock rsync takes an entry made in the second of its source's mtime as right.
    turku_testkit::backdate_recent(&src);
    // The push's destination holds only the receiver's old copy of the delta file.
    let incoming = tmp.path().join("incoming");
    fs::create_dir(&incoming).expect("incoming");
    fs::write(incoming.join(DELTA_FILE), delta_basis()).expect("basis");
    let daemon = OpenrsyncDaemon::start(
        &binary,
        &tmp.path().join("openrsyncd"),
        &[
            OpenrsyncModule {
                name: MODULE,
                path: &src,
                writable: false,
            },
            OpenrsyncModule {
                name: PUSH_MODULE,
                path: &incoming,
                writable: true,
            },
        ],
        Some((USER, PASSWORD)),
    );

    let stock = tmp.path().join("stock");
    let out = Command::new("/usr/bin/rsync")
        .args(["-aH", "--numeric-ids"])
        .arg(format!(
            "rsync://{USER}@127.0.0.1:{}/{MODULE}/",
            daemon.port
        ))
        .arg(format!("{}/", stock.display()))
        .env("RSYNC_PASSWORD", PASSWORD)
        .output()
        .expect("stock rsync");
    assert!(
        out.status.success(),
        "stock rsync's pull: {}{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let manifest = manifest_of_dir(&stock, true);
    fs::write(fixtures().join(MANIFEST), &manifest).expect("write manifest");

    for case in [&PULL, &REPULL, &WRONG_PASSWORD_CASE] {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.port))
            .await
            .expect("connect");
        let (rec, log) = Recorder::new(stream);
        let mut sink = MemSink {
            have_all: case.kind == Kind::Repull,
            ..MemSink::default()
        };
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            pull(rec, &pull_config(case), &mut sink),
        )
        .await
        .expect("recording timed out");
        check(case, result, &sink, &manifest);
        let records = take_records(&log);
        let path = fixtures().join(case.file);
        fs::write(&path, encode_transcript(&header(case), &records)).expect("write fixture");
        replay_case(case);
        eprintln!("recorded {}", path.display());
    }

    // The push (a restore into the module root), checked by what the module then holds.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.port))
        .await
        .expect("connect");
    let (rec, log) = Recorder::new(stream);
    let entries = push_entries();
    let mut source = MemSource {
        entries: entries.clone(),
        messages: Vec::new(),
    };
    let o = tokio::time::timeout(
        Duration::from_secs(60),
        push(rec, &push_config(), entries, &mut source),
    )
    .await
    .expect("recording timed out")
    .unwrap_or_else(|e| panic!("live push: {e}\nopenrsync log:\n{}", daemon.log()));
    check_push(&o);
    assert_eq!(read_tree(&incoming), expected_tree(), "{}", daemon.log());
    let leader = fs::metadata(incoming.join("hard1")).expect("hard1");
    let follower = fs::metadata(incoming.join("dir/hard2")).expect("dir/hard2");
    assert_eq!(
        leader.ino(),
        follower.ino(),
        "hard1 and dir/hard2 not linked"
    );
    let records = take_records(&log);
    let path = fixtures().join(PUSH.file);
    fs::write(&path, encode_transcript(&header(&PUSH), &records)).expect("write fixture");
    replay_push_case();
    eprintln!("recorded {}", path.display());
}

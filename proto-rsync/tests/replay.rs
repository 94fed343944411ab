//! Real conversations with a stock `rsync --daemon`, recorded once and replayed here with
//! no socket and no daemon (the way gitoxide keeps real git transcripts): the recorded
//! server bytes go into our handshake and `ClientReceiver` in the chunks our client read
//! them in, and every byte the machines write must equal what our client wrote then. A
//! protocol regression (a changed request, a DONE too many, a different checksum) shows
//! here at its first differing byte.
//!
//! The transcripts are in `tests/fixtures/` (format and how to re-record: the README
//! there). The tree they transfer is built by [`build_tree`] and checked with
//! [`expected_tree`], so a recording and its replay agree on what arrived.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mem_sink::MemSink;
use common::recorded_tree::{
    build_tree, delta_basis, expected_tree, push_entries, read_tree,
    replay_push as replay_push_tree, MemSource, Node, DELTA_FILE,
};
use common::transcript::{
    assert_same_output, decode_transcript, encode_transcript, read_fixture, replay_handshake,
    replay_receiver, take_records, Dir, Recorder, Records, MAGIC,
};
use common::StockDaemon;
use turku_proto_rsync::io::{pull, push, PullConfig, PushConfig};
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::receiver::ReceiverOptions;
use turku_proto_rsync::session::sender::PushOutcome;
use turku_proto_rsync::{FileKind, HardLink, Limits, Outcome, Timeouts};

/// The seed every recording asks the daemon for (`--checksum-seed`), so block and file
/// sums do not depend on the time of the recording.
const SEED: i32 = 0x7475_726b;
/// The module the recording daemon exports and the user we announce (no auth, so the
/// user name never reaches the wire; fixed anyway so nothing depends on `$USER`).
const MODULE: &str = "pub";
const USER: &str = "replay";
/// One recorded conversation.
struct Case {
    /// File name under `tests/fixtures/`.
    file: &'static str,
    protocol: u32,
}

const PULLS: [Case; 5] = [
    Case {
        file: "pull-p32.transcript",
        protocol: 32,
    },
    Case {
        file: "pull-p31.transcript",
        protocol: 31,
    },
    Case {
        file: "pull-p30.transcript",
        protocol: 30,
    },
    Case {
        file: "pull-p29.transcript",
        protocol: 29,
    },
    Case {
        file: "pull-p27.transcript",
        protocol: 27,
    },
];

/// Pushes (our `ClientSender` into a stock daemon's receiver); the sender speaks 30+.
const PUSHES: [Case; 3] = [
    Case {
        file: "push-p32.transcript",
        protocol: 32,
    },
    Case {
        file: "push-p31.transcript",
        protocol: 31,
    },
    Case {
        file: "push-p30.transcript",
        protocol: 30,
    },
];

/// The module a push writes into.
const PUSH_MODULE: &str = "incoming";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn header(case: &Case) -> String {
    let role = case.file.split('-').next().unwrap_or("?");
    format!(
        "{MAGIC} role={role} protocol={} hard_links=1 seed={SEED}\n",
        case.protocol
    )
}

// ------------------------------------------------------------------ the sink

/// The sink of recording and replay alike: it offers [`delta_basis`] as the basis of
/// [`DELTA_FILE`] and nothing for the rest, so the machine makes the same requests both times.
fn delta_sink() -> MemSink {
    MemSink {
        basis: |e| (e.name == DELTA_FILE.as_bytes()).then(delta_basis),
        ..MemSink::default()
    }
}

impl MemSink {
    /// The tree as received: hard-link followers take their leader's content.
    fn tree(&self) -> BTreeMap<String, Node> {
        self.entries
            .iter()
            .map(|(ndx, e)| {
                let node = match e.kind() {
                    FileKind::Directory => Node::Dir,
                    FileKind::Symlink => Node::Symlink(e.symlink.clone().unwrap_or_default()),
                    _ => {
                        let from = match e.hard_link {
                            HardLink::Follower { first } => first,
                            _ => *ndx,
                        };
                        Node::File(self.files.get(&from).cloned().unwrap_or_default())
                    }
                };
                (e.name_lossy(), node)
            })
            .collect()
    }
}

/// What every recorded pull must have ended with, live or replayed.
fn check_run(case: &Case, o: &Outcome, sink: &MemSink) {
    assert_eq!(o.protocol, case.protocol);
    assert_eq!(o.exit_code, 0, "{o:?}; failed: {:?}", sink.failed);
    assert!(sink.failed.is_empty(), "{:?}", sink.failed);
    assert_eq!(o.checksum_seed, SEED);
    assert!(o.matched_bytes > 0, "the delta used no basis block: {o:?}");
    assert_eq!(sink.tree(), expected_tree());
}

/// The options a recording and its replay share: those of [`PullConfig`] that reach the
/// wire, fixed.
fn pull_config(case: &Case) -> PullConfig {
    let mut cfg = PullConfig::new(MODULE);
    cfg.protocol = case.protocol;
    cfg.user = USER.into();
    cfg.hard_links = true;
    cfg.numeric_ids = true;
    cfg.checksum_seed = Some(SEED);
    // No `--timeout` in the argv (and no keep-alives): a replay has no clock.
    cfg.timeouts = Timeouts {
        io: None,
        ..Timeouts::default()
    };
    cfg
}

/// Runs our handshake and receiver over the recorded server chunks, one feed and one step
/// a chunk as the tokio driver does, and returns the outcome and all we wrote.
fn replay(case: &Case, records: &Records, sink: &mut MemSink) -> (Outcome, Vec<u8>) {
    let cfg = pull_config(case);
    // As the driver builds it from `cfg`.
    let mut args = ServerArgs::pull(&cfg.module, &cfg.path, cfg.hard_links);
    args.numeric_ids = cfg.numeric_ids;
    args.checksum_seed = cfg.checksum_seed;
    let h = replay_handshake(args, cfg.protocol, &cfg.user, None, records)
        .unwrap_or_else(|(e, _)| panic!("handshake: {e}"));
    replay_receiver(
        h,
        ReceiverOptions {
            hard_links: cfg.hard_links,
            numeric_ids: cfg.numeric_ids,
            filter_rules: Vec::new(),
            limits: Limits::default(),
        },
        sink,
    )
}

fn read_transcript(case: &Case) -> Records {
    let raw = read_fixture(&fixtures().join(case.file), "tests/fixtures/capture.sh");
    decode_transcript(&raw, &header(case))
}

fn replay_case(case: &Case) {
    let records = read_transcript(case);
    let mut sink = delta_sink();
    let (outcome, ours) = replay(case, &records, &mut sink);
    assert_same_output(case.file, &ours, &records);
    check_run(case, &outcome, &sink);
}

#[test]
fn replay_pull_protocol_32() {
    replay_case(&PULLS[0]);
}

#[test]
fn replay_pull_protocol_31() {
    replay_case(&PULLS[1]);
}

#[test]
fn replay_pull_protocol_30() {
    replay_case(&PULLS[2]);
}

#[test]
fn replay_pull_protocol_29() {
    replay_case(&PULLS[3]);
}

#[test]
fn replay_pull_protocol_27() {
    replay_case(&PULLS[4]);
}

/// The transcript format round-trips (a broken reader would make every replay vacuous).
#[test]
fn transcript_format_round_trips() {
    let records: Records = vec![
        (Dir::Client, b"@RSYNCD: 32.0\n".to_vec()),
        (Dir::Server, Vec::new()),
        (Dir::Server, vec![0; 300]),
    ];
    let raw = encode_transcript("h\n", &records);
    assert_eq!(decode_transcript(&raw, "h\n"), records);
}

// ------------------------------------------------------------------ pushes

fn push_config(case: &Case) -> PushConfig {
    let mut cfg = PushConfig::new(PUSH_MODULE);
    cfg.protocol = case.protocol;
    cfg.user = USER.into();
    cfg.hard_links = true;
    cfg.numeric_ids = true;
    cfg.checksum_seed = Some(SEED);
    cfg.timeouts = Timeouts {
        io: None,
        ..Timeouts::default()
    };
    cfg
}

/// What every recorded push must have ended with, live or replayed.
fn check_push(case: &Case, o: &PushOutcome) {
    assert_eq!(o.protocol, case.protocol);
    assert_eq!(o.exit_code, 0, "{o:?}");
    assert!(o.failed.is_empty(), "{o:?}");
    assert_eq!(o.checksum_seed, SEED);
    assert!(
        o.progress.matched_bytes > 0,
        "the delta used no block of the receiver's copy: {o:?}"
    );
}

/// Runs our handshake and sender over the recorded server chunks (one feed and one step
/// a chunk) and returns the outcome and all we wrote.
fn replay_push(case: &Case, records: &Records) -> (PushOutcome, Vec<u8>) {
    replay_push_tree(&push_config(case), None, records)
}

fn replay_push_case(case: &Case) {
    let records = read_transcript(case);
    let (outcome, ours) = replay_push(case, &records);
    assert_same_output(case.file, &ours, &records);
    check_push(case, &outcome);
}

#[test]
fn replay_push_protocol_32() {
    replay_push_case(&PUSHES[0]);
}

#[test]
fn replay_push_protocol_31() {
    replay_push_case(&PUSHES[1]);
}

#[test]
fn replay_push_protocol_30() {
    replay_push_case(&PUSHES[2]);
}

// ------------------------------------------------------------------ recording

/// Records every case against the stock daemon and rewrites the fixtures (run by
/// `tests/fixtures/capture.sh`). Each live run must pass the same checks as its replay,
/// and the fresh transcript must replay before it is written.
#[tokio::test]
#[ignore = "records the fixtures against a live stock daemon; run by tests/fixtures/capture.sh"]
async fn record_fixtures() {
    let rsync = Path::new("/usr/bin/rsync");
    assert!(rsync.exists(), "stock rsync is needed to record");
    let src = tempfile::tempdir().expect("src");
    build_tree(src.path());
    let dir = tempfile::tempdir().expect("daemon dir");
    let ids = if common::is_root() {
        "uid = 0\ngid = 0\n"
    } else {
        ""
    };
    let conf = format!(
        "use chroot = no\n{ids}log file = {log}\n[{MODULE}]\npath = {src}\nread only = yes\n",
        log = dir.path().join("rsyncd.log").display(),
        src = src.path().display(),
    );
    let daemon = StockDaemon::launch(rsync, dir, &conf);
    for case in &PULLS {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.port))
            .await
            .expect("connect");
        let (rec, log) = Recorder::new(stream);
        let mut sink = delta_sink();
        let o = tokio::time::timeout(
            Duration::from_secs(60),
            pull(rec, &pull_config(case), &mut sink),
        )
        .await
        .expect("recording timed out")
        .expect("live pull");
        check_run(case, &o, &sink);
        let records = take_records(&log);
        let path = fixtures().join(case.file);
        fs::write(&path, encode_transcript(&header(case), &records)).expect("write fixture");
        replay_case(case);
        eprintln!("recorded {}", path.display());
    }
    drop(daemon);

    for case in &PUSHES {
        // A fresh module holding only the receiver's old copy of the delta file. Without
        // chroot a daemon munges symlinks unless told not to (a receiver running as root
        // with `use chroot = yes` keeps them verbatim anyway).
        let dst = tempfile::tempdir().expect("dst");
        fs::write(dst.path().join(DELTA_FILE), delta_basis()).expect("basis");
        let dir = tempfile::tempdir().expect("daemon dir");
        let conf = format!(
            "use chroot = no\n{ids}log file = {log}\n[{PUSH_MODULE}]\npath = {dst}\nread only = no\nmunge symlinks = no\n",
            log = dir.path().join("rsyncd.log").display(),
            dst = dst.path().display(),
        );
        let daemon = StockDaemon::launch(rsync, dir, &conf);
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
            push(rec, &push_config(case), entries, &mut source),
        )
        .await
        .expect("recording timed out")
        .expect("live push");
        check_push(case, &o);
        // The daemon exits its connection after our goodbye; its files are complete.
        drop(daemon);
        assert_eq!(read_tree(dst.path()), expected_tree(), "{}", case.file);
        let records = take_records(&log);
        let path = fixtures().join(case.file);
        fs::write(&path, encode_transcript(&header(case), &records)).expect("write fixture");
        replay_push_case(case);
        eprintln!("recorded {}", path.display());
    }
}

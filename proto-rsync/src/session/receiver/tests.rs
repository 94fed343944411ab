//! The receiver driven through scripted sessions and hand-built lists.

use super::flist::{sort_in_place, ListedEntry};
use super::*;
use crate::checksum::{ChecksumKind, FileHasher};
use crate::codec::flist::FlistEncoder;
use crate::codec::mux::{encode_data, encode_frame};
use crate::codec::prim::put_varlong;
use crate::codec::token::{encode_end, encode_literal};
use crate::session::demux::Demux;
use crate::session::EntryAction;
use crate::session::MessageKind;

#[derive(Default)]
struct MemSink {
    files: Vec<(String, Vec<u8>, bool)>,
    current: Vec<u8>,
    failed: Vec<String>,
    messages: Vec<String>,
    seen: Vec<String>,
    /// The basis offered for every file.
    basis: Option<Vec<u8>>,
}

impl ReceiveSink for MemSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, _: u32, e: &FileEntry) -> Result<EntryAction, crate::SinkError> {
        self.seen.push(e.name_lossy());
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, _: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, crate::SinkError> {
        Ok(self.basis.clone())
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), crate::SinkError> {
        self.current.clear();
        Ok(())
    }
    fn content(&mut self, d: &[u8]) -> Result<(), crate::SinkError> {
        self.current.extend_from_slice(d);
        Ok(())
    }
    fn end_content(&mut self, _: u32, e: &FileEntry, ok: bool) -> Result<(), crate::SinkError> {
        self.files
            .push((e.name_lossy(), std::mem::take(&mut self.current), ok));
        Ok(())
    }
    fn file_failed(&mut self, _: u32, e: &FileEntry, _: &str) -> Result<(), crate::SinkError> {
        self.failed.push(e.name_lossy());
        Ok(())
    }
    fn message(&mut self, _: MessageKind, t: &str) {
        self.messages.push(t.to_owned());
    }
}

fn entry(name: &str, mode: u32, size: i64) -> FileEntry {
    FileEntry {
        mtime: 1_700_000_000,
        mtime_nsec: 5,
        symlink: if mode & S_IFMT == S_IFLNK {
            Some(b"a".to_vec())
        } else {
            None
        },
        top_dir: name == ".",
        ..FileEntry::new(name.as_bytes().to_vec(), mode, size)
    }
}

fn neg() -> Negotiated {
    Negotiated {
        protocol: 31,
        compat_flags: 0x1fe,
        checksum: ChecksumKind::Xxh128,
        seed: 1,
        motd: Vec::new(),
        motd_dropped: 0,
    }
}

fn opts() -> ReceiverOptions {
    ReceiverOptions {
        hard_links: false,
        numeric_ids: true,
        filter_rules: vec!["- *.o".into()],
        limits: Limits::default(),
    }
}

/// Feeds `raw` one byte at a time (every field straddles reads) and collects output.
fn run_bytes(
    rx: &mut ClientReceiver<MemSink>,
    sink: &mut MemSink,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<Outcome>, Error> {
    for b in raw {
        rx.feed(std::slice::from_ref(b))?;
        if let Status::Finished(o) = rx.step(sink)? {
            out.extend(rx.take_output());
            return Ok(Some(*o));
        }
        out.extend(rx.take_output());
    }
    Ok(None)
}

/// Feeds a file list of `files`, steps once, then steps without input while the
/// generator says it has local work; returns how many steps the generator took.
fn steps_to_generate(sink: &mut MemSink, files: &[FileEntry]) -> usize {
    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
    rx.take_output();
    let mut data = Vec::new();
    let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
    enc.encode(&entry(".", S_IFDIR | 0o755, 4096), &mut data);
    for e in files {
        enc.encode(e, &mut data);
    }
    enc.encode_end(0, &mut data);
    let mut raw = Vec::new();
    encode_data(&data, &mut raw);
    rx.feed(&raw).unwrap();
    let mut steps = 0;
    loop {
        assert!(matches!(rx.step(sink).unwrap(), Status::NeedInput));
        rx.take_output();
        steps += 1;
        if !rx.has_local_work() {
            return steps;
        }
    }
}

#[test]
fn a_step_decides_a_bounded_number_of_entries() {
    let mut sink = MemSink::default();
    let files: Vec<FileEntry> = (0..5000)
        .map(|i| entry(&format!("f{i:05}"), S_IFREG | 0o644, 1))
        .collect();
    let steps = steps_to_generate(&mut sink, &files);
    assert_eq!(sink.seen.len(), 5001, "every entry is decided in the end");
    // With the budget at 8 MiB and 32 KiB an entry, 256 entries a step: 20 steps.
    assert!(steps >= 10, "{steps} steps");
}

#[test]
fn a_step_checksums_a_bounded_part_of_a_basis() {
    let len = 64 * 1024 * 1024;
    let mut sink = MemSink {
        basis: Some(vec![0; len]),
        ..MemSink::default()
    };
    let steps = steps_to_generate(&mut sink, &[entry("big", S_IFREG | 0o644, len as i64)]);
    // 8192 blocks of 8 KiB, each counted as MIN_WORK_COST: with the budget at 8 MiB,
    // 256 blocks a step, 32 steps.
    assert!(steps >= 16, "{steps} steps");
}

#[test]
fn scripted_session_with_messages_mid_stream() {
    let mut sink = MemSink::default();
    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
    let mut out = rx.take_output();
    // Server: file list in wire order (unsorted on purpose).
    let mut data = Vec::new();
    let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
    for e in [
        entry(".", S_IFDIR | 0o755, 4096),
        entry("b", S_IFREG | 0o644, 3),
        entry("a", S_IFREG | 0o644, 5),
        entry("l", S_IFLNK | 0o777, 1),
    ] {
        enc.encode(&e, &mut data);
    }
    enc.encode_end(0, &mut data);
    let mut raw = Vec::new();
    encode_data(&data, &mut raw);
    assert!(run_bytes(&mut rx, &mut sink, &raw, &mut out)
        .unwrap()
        .is_none());
    // Sorted: ".", "a", "b", "l" — requests for 1 and 2, then DONE.
    assert_eq!(sink.seen, [".", "a", "b", "l"]);
    let (mut got, mut msgs) = (Vec::new(), Vec::new());
    Demux::new(Limits::default())
        .push(&out, &mut got, &mut msgs)
        .unwrap();
    let mut want = Vec::new();
    crate::session::args::encode_filter_list(&["- *.o".into()], &mut want);
    let mut nd = NdxCodec::new(31);
    for ndx in [1, 2] {
        nd.encode(ndx, &mut want);
        want.extend_from_slice(&(ITEM_TRANSFER | ITEM_IS_NEW).to_le_bytes());
        SumHead::default().encode(31, &mut want);
    }
    nd.encode(NDX_DONE, &mut want);
    assert_eq!(got, want);

    // Server: reply for "a" with a message and a keep-alive inside the token stream,
    // MSG_NO_SEND for "b", the phase DONEs, stats and the extra DONE echo.
    let mut sn = NdxCodec::new(31);
    let mut raw = Vec::new();
    let mut d = Vec::new();
    sn.encode(1, &mut d);
    d.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
    SumHead::default().encode(31, &mut d);
    encode_literal(b"hel", &mut d);
    encode_data(&d[..d.len() - 1], &mut raw);
    encode_frame(MsgTag::Info, b"info in the middle\n", &mut raw);
    encode_data(&[], &mut raw);
    let mut d2 = vec![d[d.len() - 1]];
    encode_literal(b"lo", &mut d2);
    encode_end(&mut d2);
    let mut h = FileHasher::new(ChecksumKind::Xxh128, 1);
    h.update(b"hello");
    d2.extend_from_slice(&h.finish());
    encode_data(&d2, &mut raw);
    encode_frame(MsgTag::Warning, b"file has vanished: \"b\"\n", &mut raw);
    encode_frame(MsgTag::NoSend, &2i32.to_le_bytes(), &mut raw);
    encode_frame(
        MsgTag::IoError,
        &(IOERR_VANISHED as i32).to_le_bytes(),
        &mut raw,
    );
    let mut d3 = Vec::new();
    for _ in 0..3 {
        sn.encode(NDX_DONE, &mut d3);
    }
    for v in [10i64, 20, 8, 0, 1] {
        put_varlong(&mut d3, v, 3);
    }
    sn.encode(NDX_DONE, &mut d3);
    encode_data(&d3, &mut raw);
    let o = run_bytes(&mut rx, &mut sink, &raw, &mut out)
        .unwrap()
        .expect("finished");
    assert_eq!(sink.files, [("a".to_string(), b"hello".to_vec(), true)]);
    assert_eq!(sink.failed, ["b"]);
    assert_eq!(sink.messages.len(), 2);
    assert_eq!(o.exit_code, RERR_VANISHED);
    assert_eq!(o.literal_bytes, 5);
    assert_eq!(o.sender_stats.total_size, 8);
    assert_eq!(o.files_requested, 2);
    assert_eq!(o.files_received, 1);
    // Our side: 3 phase DONEs in total after the requests, the extra DONE and the goodbye.
    let (mut got, mut msgs) = (Vec::new(), Vec::new());
    Demux::new(Limits::default())
        .push(&out, &mut got, &mut msgs)
        .unwrap();
    assert_eq!(&got[got.len() - 5..], [0, 0, 0, 0, 0]);
}

#[test]
fn error_exit_is_acknowledged() {
    let mut sink = MemSink::default();
    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
    let _ = rx.take_output();
    let mut raw = Vec::new();
    encode_frame(MsgTag::Error, b"rsync: something broke\n", &mut raw);
    encode_frame(MsgTag::ErrorExit, &12i32.to_le_bytes(), &mut raw);
    rx.feed(&raw).unwrap();
    match rx.step(&mut sink) {
        Err(Error::RemoteExit { code, message }) => {
            assert_eq!(code, 12);
            assert_eq!(message, "rsync: something broke");
        }
        other => panic!("expected RemoteExit, got {other:?}"),
    }
    assert_eq!(rx.take_output(), [0, 0, 0, 0x5d]);
}

/// openrsync writes every name with a leading `./`; other senders may double slashes, keep
/// interior `.` components or end directories with `/`. The receiver cleans them as stock
/// does before its checks, so the sink sees the clean names and parents resolve.
#[test]
fn names_are_cleaned_before_they_are_checked() {
    let mut sink = MemSink::default();
    let files = [
        entry("./d", S_IFDIR | 0o755, 4096),
        entry("./d/f", S_IFREG | 0o644, 1),
        entry("./d//g/", S_IFDIR | 0o755, 4096),
        entry("./d/./g/./h", S_IFREG | 0o644, 1),
        entry("./x", S_IFREG | 0o644, 1),
    ];
    steps_to_generate(&mut sink, &files);
    assert_eq!(sink.seen, [".", "x", "d", "d/f", "d/g", "d/g/h"]);

    for (name, mode) in [
        ("../x", S_IFREG | 0o644),
        ("/x", S_IFREG | 0o644),
        ("./x/../../y", S_IFREG | 0o644),
        ("./", S_IFREG | 0o644),
    ] {
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
        let mut data = Vec::new();
        let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
        enc.encode(&entry(".", S_IFDIR | 0o755, 4096), &mut data);
        enc.encode(&entry(name, mode, 1), &mut data);
        enc.encode_end(0, &mut data);
        let mut raw = Vec::new();
        encode_data(&data, &mut raw);
        rx.feed(&raw).unwrap();
        let r = rx.step(&mut sink);
        assert!(
            matches!(r, Err(Error::Decode(DecodeError::BadName { .. }))),
            "{name}: {r:?}"
        );
    }
}

#[test]
fn rejects_unsafe_names_and_unrequested_replies() {
    let mut sink = MemSink::default();
    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
    let mut data = Vec::new();
    let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
    enc.encode(&entry("x/../../etc/passwd", S_IFREG | 0o644, 1), &mut data);
    enc.encode_end(0, &mut data);
    let mut raw = Vec::new();
    encode_data(&data, &mut raw);
    rx.feed(&raw).unwrap();
    assert!(matches!(
        rx.step(&mut sink),
        Err(Error::Decode(DecodeError::BadName { .. }))
    ));

    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
    let mut data = Vec::new();
    let mut enc = FlistEncoder::new(FlistOptions::archive(31, 0x1fe, false));
    enc.encode(&entry("d", S_IFDIR | 0o755, 1), &mut data);
    enc.encode_end(0, &mut data);
    NdxCodec::new(31).encode(0, &mut data);
    data.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
    let mut raw = Vec::new();
    encode_data(&data, &mut raw);
    rx.feed(&raw).unwrap();
    assert!(matches!(rx.step(&mut sink), Err(Error::Protocol(_))));
}

proptest::proptest! {
    /// Hostile data (well-framed, arbitrary content) after a valid list start: errors,
    /// never panics, never unbounded buffering.
    #[test]
    fn arbitrary_stream_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), proto in 27u32..=32, varint in proptest::prelude::any::<bool>()) {
        let n = Negotiated { protocol: proto, compat_flags: if varint && proto >= 30 { 0x1fe } else { 0x2e }, checksum: ChecksumKind::Md5 { seed_fix: true }, seed: 3, motd: Vec::new(), motd_dropped: 0 };
        let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(n, opts());
        let mut sink = MemSink::default();
        let mut data = Vec::new();
        let mut enc = FlistEncoder::new(FlistOptions::archive(proto, if varint && proto >= 30 { 0x1fe } else { 0x2e }, false));
        enc.encode(&entry(".", S_IFDIR | 0o755, 1), &mut data);
        enc.encode(&entry("f", S_IFREG | 0o644, 10), &mut data);
        data.extend_from_slice(&body);
        let mut raw = Vec::new();
        encode_data(&data, &mut raw);
        for c in raw.chunks(97) {
            if rx.feed(c).is_err() { break; }
            match rx.step(&mut sink) {
                Ok(Status::NeedInput) => { let _ = rx.take_output(); }
                _ => break,
            }
            proptest::prop_assert!(rx.data.len() <= 64 * 1024);
        }
    }
}

/// A finished file list is kept compact (a third of the entries as received: on a
/// tree of 110,000 files those were the receiver's largest allocation), sorted, and
/// gives sinks back every field as it was received.
#[test]
fn a_finished_file_list_is_kept_compact_sorted_and_whole() {
    assert!(
        std::mem::size_of::<ListedEntry>() <= 64,
        "{} bytes an entry",
        std::mem::size_of::<ListedEntry>()
    );
    let count = 4_000;
    let mut rx: ClientReceiver<MemSink> = ClientReceiver::new(neg(), opts());
    let mut wire = vec![entry(".", S_IFDIR | 0o755, 1)];
    for d in 0..40 {
        wire.push(entry(&format!("d{d:02}"), S_IFDIR | 0o755, 1));
    }
    // Wire order is not sorted order: the list is permuted, not just taken over.
    for i in (0..count).rev() {
        let mut e = entry(&format!("d{:02}/f{i:05}", i % 40), S_IFREG | 0o644, i);
        e.uid = i as u32;
        if i % 7 == 0 {
            e.checksum = Some(vec![i as u8; 16]);
            e.user_name = Some(b"alice".to_vec());
        }
        wire.push(e);
    }
    let mut link = entry("d00/link", S_IFLNK | 0o777, 1);
    link.symlink = Some(b"../target".to_vec());
    wire.push(link);
    let mut dev = entry("d01/dev", S_IFCHR | 0o600, 0);
    dev.rdev = Some((8, 1));
    wire.push(dev);
    rx.wire = wire.clone();
    rx.finish_file_list().unwrap();
    assert_eq!(rx.entry_count(), wire.len());
    assert_eq!(
        rx.entries.capacity(),
        rx.entries.len(),
        "no room kept for more"
    );
    let got: Vec<FileEntry> = (0..wire.len() as u32)
        .map(|i| rx.entry(i).unwrap())
        .collect();
    let order = crate::sort::sort_order(&got, 31);
    assert!(order.iter().enumerate().all(|(i, &o)| i == o), "sorted");
    let mut want = wire;
    want.sort_by(|a, b| a.name.cmp(&b.name));
    let mut got = got;
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, want);
}

#[test]
fn sorting_in_place_follows_the_order_and_refuses_a_repeated_index() {
    let mut entries: Vec<FileEntry> = (0..7)
        .map(|i| entry(&format!("f{i}"), S_IFREG | 0o644, i))
        .collect();
    let mut order = vec![3, 0, 6, 1, 2, 5, 4];
    let want: Vec<i64> = order.iter().map(|&i| i as i64).collect();
    sort_in_place(&mut entries, &mut order).unwrap();
    assert_eq!(entries.iter().map(|e| e.size).collect::<Vec<_>>(), want);
    for bad in [vec![1, 1, 0], vec![0, 2, 2], vec![0, 1, 7], vec![0, 1]] {
        let mut entries: Vec<FileEntry> = (0..3)
            .map(|i| entry(&format!("f{i}"), S_IFREG | 0o644, i))
            .collect();
        let mut order = bad.clone();
        assert!(sort_in_place(&mut entries, &mut order).is_err(), "{bad:?}");
    }
}

//! Sans-io tests of the whole sender against a scripted generator, and the replay of the
//! fuzz target's committed seeds.

use super::*;
use crate::checksum::{ChecksumKind, FileHasher};
use crate::codec::flist::{FlistDecoder, FlistItem, FlistOptions, HardLink};
use crate::codec::prim::put_i32;
use crate::codec::sums::SumHead;

struct Mem {
    fail_open: &'static [u8],
}

impl SendSource for Mem {
    type Content = std::io::Cursor<Vec<u8>>;
    fn open(&mut self, _: u32, e: &FileEntry) -> Result<Self::Content, SinkError> {
        if e.name == self.fail_open {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound).into());
        }
        Ok(std::io::Cursor::new(content_of(e)))
    }
}

fn content_of(e: &FileEntry) -> Vec<u8> {
    (0..e.size as usize)
        .map(|i| (i % 251) as u8 ^ e.name[0])
        .collect()
}

fn neg(protocol: u32) -> Negotiated {
    Negotiated {
        protocol,
        compat_flags: 0x1fe,
        checksum: ChecksumKind::Xxh128,
        seed: 99,
        motd: Vec::new(),
        motd_dropped: 0,
    }
}

/// Caller's order: `.`, `z` (100 000 bytes), `d`, `d/x` (hard link to `z`), `a` (5 bytes).
/// Sorted: 0 `.`, 1 `a`, 2 `z`, 3 `d`, 4 `d/x`.
fn list() -> Vec<FileEntry> {
    let mut dot = FileEntry::new(b".".to_vec(), S_IFDIR | 0o755, 0);
    dot.top_dir = true;
    let mut z = FileEntry::new(b"z".to_vec(), S_IFREG | 0o644, 100_000);
    z.hard_link = HardLink::Leader;
    let mut x = FileEntry::new(b"d/x".to_vec(), S_IFREG | 0o644, 100_000);
    x.hard_link = HardLink::Follower { first: 1 };
    vec![
        dot,
        z,
        FileEntry::new(b"d".to_vec(), S_IFDIR | 0o755, 0),
        x,
        FileEntry::new(b"a".to_vec(), S_IFREG | 0o600, 5),
    ]
}

fn mux(data: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    encode_data(data, &mut o);
    o
}

/// Runs the sender on `input` fed in `chunk`-byte pieces; returns its demultiplexed data,
/// its messages and the outcome (if it finished).
fn run(
    protocol: u32,
    opts: SenderOptions,
    input: &[u8],
    chunk: usize,
    fail_open: &'static [u8],
) -> (Vec<u8>, Vec<InMsg>, Option<PushOutcome>) {
    let mut tx: ClientSender<Mem> = ClientSender::new(neg(protocol), opts, list(), 0).unwrap();
    let mut src = Mem { fail_open };
    let mut wire = Vec::new();
    let mut done = None;
    for piece in input.chunks(chunk.max(1)) {
        tx.feed(piece).unwrap();
        loop {
            match tx.step(&mut src).unwrap() {
                Status::NeedInput => {
                    wire.extend(tx.take_output());
                    if !tx.has_local_work() {
                        break;
                    }
                }
                Status::Finished(o) => {
                    wire.extend(tx.take_output());
                    done = Some(*o);
                    break;
                }
            }
        }
    }
    let mut d = Demux::new(Limits::default());
    let (mut data, mut msgs) = (Vec::new(), Vec::new());
    d.push(&wire, &mut data, &mut msgs).unwrap();
    (data, msgs, done)
}

/// Decodes our file list from `data`; returns the entries and where the list ends.
fn decode_list(data: &[u8], protocol: u32, hard_links: bool) -> (Vec<FileEntry>, usize) {
    let mut dec = FlistDecoder::new(
        FlistOptions::archive(protocol, 0x1fe, hard_links),
        Limits::default(),
    );
    let mut got: Vec<FileEntry> = Vec::new();
    let mut at = 0;
    loop {
        let (item, n) = dec.decode(&data[at..], &got).unwrap().complete().unwrap();
        at += n;
        match item {
            FlistItem::Entry(e) => got.push(e),
            FlistItem::End { io_error } => {
                assert_eq!(io_error, 0);
                return (got, at);
            }
        }
    }
}

fn request(ndx: &mut NdxCodec, i: i32, iflags: u16, head: SumHead, out: &mut Vec<u8>) {
    ndx.encode(i, out);
    out.extend_from_slice(&iflags.to_le_bytes());
    head.encode(32, out);
}

/// A whole conversation at 31: list out, a whole-file request for `a`, a delta request
/// for `z` against an identical basis, an itemization echoed, the phases, delete stats and
/// the goodbye; fed a byte at a time and all at once.
#[test]
fn scripted_generator_conversation() {
    let entries = list();
    let z = content_of(&entries[1]);
    let head = SumHead::for_basis(z.len() as u64, 31, 16, false);
    let mut gen = Vec::new();
    let mut ndx = NdxCodec::new(31);
    request(&mut ndx, 1, ITEM_TRANSFER, SumHead::default(), &mut gen);
    request(
        &mut ndx,
        2,
        ITEM_TRANSFER | ITEM_REPORT_TIME,
        head,
        &mut gen,
    );
    for s in crate::delta::signature(&z, &head, ChecksumKind::Xxh128, 99) {
        crate::codec::sums::encode_block_sum(s.weak, &s.strong, &mut gen);
    }
    ndx.encode(0, &mut gen);
    gen.extend_from_slice(&ITEM_REPORT_TIME.to_le_bytes());
    for _ in 0..3 {
        ndx.encode(NDX_DONE, &mut gen);
    }
    ndx.encode(NDX_DEL_STATS, &mut gen);
    gen.extend_from_slice(&[1, 0, 0, 0, 0]);
    ndx.encode(NDX_DONE, &mut gen);
    ndx.encode(NDX_DONE, &mut gen);
    let input = mux(&gen);
    let opts = SenderOptions {
        hard_links: true,
        ..SenderOptions::default()
    };
    for chunk in [1, 7, input.len()] {
        let (data, msgs, outcome) = run(31, opts.clone(), &input, chunk, b"");
        assert!(msgs.is_empty(), "{msgs:?}");
        let o = outcome.expect("finished");
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.progress.files_sent, 2);
        assert_eq!(o.progress.literal_bytes, 5);
        assert_eq!(o.progress.matched_bytes, 100_000);
        assert_eq!(
            o.delete_stats,
            Some(DeleteStats {
                files: 1,
                ..DeleteStats::default()
            })
        );
        let (got, mut at) = decode_list(&data, 31, true);
        assert_eq!(got.len(), 5);
        assert_eq!(got[3].hard_link, HardLink::Follower { first: 1 });
        // Reply for `a`: echo, empty head, one literal, end, sum.
        let mut want = Vec::new();
        let mut ndx_out = NdxCodec::new(31);
        ndx_out.encode(1, &mut want);
        want.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
        SumHead::default().encode(31, &mut want);
        let a = content_of(&entries[4]);
        want.extend_from_slice(&5i32.to_le_bytes());
        want.extend_from_slice(&a);
        want.extend_from_slice(&0i32.to_le_bytes());
        let mut h = FileHasher::new(ChecksumKind::Xxh128, 99);
        h.update(&a);
        want.extend(h.finish());
        // Reply for `z`: echo, head, every block by reference, end, sum.
        ndx_out.encode(2, &mut want);
        want.extend_from_slice(&(ITEM_TRANSFER | ITEM_REPORT_TIME).to_le_bytes());
        head.encode(31, &mut want);
        for k in 0..head.count {
            crate::codec::token::encode_block(k, &mut want);
        }
        want.extend_from_slice(&0i32.to_le_bytes());
        let mut h = FileHasher::new(ChecksumKind::Xxh128, 99);
        h.update(&z);
        want.extend(h.finish());
        // The itemization echoed, two phase echoes, our final DONE, the goodbye answer.
        ndx_out.encode(0, &mut want);
        want.extend_from_slice(&ITEM_REPORT_TIME.to_le_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(&data[at..], &want[..], "chunk {chunk}");
        at = data.len();
        assert_eq!(at, data.len());
    }
}

/// A request carrying more sums than our limits keep (a stock generator's head for a
/// basis above 2 TiB, scaled down here by small limits): the sums are read and dropped, the
/// file goes out whole as literal data behind the echoed head, and the run completes.
#[test]
fn sums_beyond_our_limits_are_dropped_and_the_file_sent_whole() {
    let entries = list();
    let z = content_of(&entries[1]);
    let head = SumHead::for_basis(z.len() as u64, 31, 16, false);
    let sum_bytes = u64::from(head.count) * (4 + u64::from(head.s2length));
    let few_blocks = Limits {
        max_blocks: head.count - 1,
        ..Limits::default()
    };
    let few_bytes = Limits {
        max_sum_bytes: sum_bytes - 1,
        ..Limits::default()
    };
    let mut gen = Vec::new();
    let mut ndx = NdxCodec::new(31);
    request(&mut ndx, 2, ITEM_TRANSFER, head, &mut gen);
    for s in crate::delta::signature(&z, &head, ChecksumKind::Xxh128, 99) {
        crate::codec::sums::encode_block_sum(s.weak, &s.strong, &mut gen);
    }
    for _ in 0..5 {
        ndx.encode(NDX_DONE, &mut gen);
    }
    let input = mux(&gen);
    for limits in [few_blocks, few_bytes] {
        let opts = SenderOptions {
            hard_links: true,
            limits: limits.clone(),
            ..SenderOptions::default()
        };
        for chunk in [7, input.len()] {
            let (data, msgs, outcome) = run(31, opts.clone(), &input, chunk, b"");
            assert!(msgs.is_empty(), "{msgs:?}");
            let o = outcome.expect("finished");
            assert_eq!(o.exit_code, 0);
            assert_eq!(o.progress.files_sent, 1);
            assert_eq!(o.progress.literal_bytes, z.len() as u64);
            assert_eq!(o.progress.matched_bytes, 0);
            let (_, at) = decode_list(&data, 31, true);
            let mut want = Vec::new();
            let mut ndx_out = NdxCodec::new(31);
            ndx_out.encode(2, &mut want);
            want.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
            head.encode(31, &mut want);
            super::matcher::write_literal(&z, &mut want);
            want.extend_from_slice(&0i32.to_le_bytes());
            let mut h = FileHasher::new(ChecksumKind::Xxh128, 99);
            h.update(&z);
            want.extend(h.finish());
            // Two phase echoes, our final DONE, the goodbye answer.
            want.extend_from_slice(&[0, 0, 0, 0]);
            let got = &data[at..];
            let differ = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                differ.is_none() && got.len() == want.len(),
                "{limits:?} chunk {chunk}: {} bytes vs {} wanted, first difference at {differ:?}",
                got.len(),
                want.len()
            );
        }
    }
}

/// A file gone since listing: no reply, a warning and MSG_NO_SEND, exit 24; the filter
/// list goes out first with --delete; protocol 30 ends after one goodbye DONE.
#[test]
fn vanished_file_is_not_sent_and_named() {
    let mut gen = Vec::new();
    let mut ndx = NdxCodec::new(30);
    request(&mut ndx, 1, ITEM_TRANSFER, SumHead::default(), &mut gen);
    for _ in 0..4 {
        ndx.encode(NDX_DONE, &mut gen);
    }
    let opts = SenderOptions {
        delete: true,
        filter_rules: vec!["P keep".into()],
        ..SenderOptions::default()
    };
    let (data, msgs, outcome) = run(30, opts, &mux(&gen), 3, b"a");
    let o = outcome.expect("finished");
    assert_eq!(o.exit_code, RERR_VANISHED);
    assert_eq!(o.failed, ["a"]);
    assert!(matches!(&msgs[0], InMsg::Text(MessageKind::Warning, t) if t.contains("vanished")));
    assert_eq!(msgs[1], InMsg::NoSend(1));
    assert_eq!(msgs[2], InMsg::IoError(IOERR_VANISHED));
    assert_eq!(&data[..10], b"\x06\0\0\0P keep");
    assert_eq!(&data[10..14], &[0, 0, 0, 0]);
    let (_, at) = decode_list(&data[14..], 30, false);
    // Two phase echoes and our final DONE: nothing for the file.
    assert_eq!(&data[14 + at..], &[0, 0, 0]);
}

/// Requests are checked before anything is read or sent for them.
#[test]
fn bad_requests_are_typed_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x06, 0x00, 0x80], "ndx"),
        (vec![0x01, 0x00, 0x80], "dir"),
        (vec![0xFF, 0x05], "negative"),
        (
            [
                &[0x02, 0x00, 0x80][..],
                &[1, 0, 0, 0, 1, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0],
            ]
            .concat(),
            "blength",
        ),
        (
            [
                &[0x02, 0x00, 0x80][..],
                &[0, 0, 0, 0x80, 0, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
            ]
            .concat(),
            "count",
        ),
    ];
    for (script, what) in cases {
        let mut tx: ClientSender<Mem> =
            ClientSender::new(neg(32), SenderOptions::default(), list(), 0).unwrap();
        let mut src = Mem { fail_open: b"" };
        tx.feed(&mux(&script)).unwrap();
        let e = loop {
            match tx.step(&mut src) {
                Ok(Status::NeedInput) if tx.has_local_work() => continue,
                Ok(other) => panic!("{what}: expected an error, got {other:?}"),
                Err(e) => break e,
            }
        };
        match what {
            "ndx" => assert!(matches!(e, Error::Decode(DecodeError::BadNdx(5))), "{e:?}"),
            "dir" | "negative" => assert!(matches!(e, Error::BadRequest { .. }), "{e:?}"),
            "blength" => assert!(
                matches!(e, Error::Decode(DecodeError::BadSumHead { .. })),
                "{e:?}"
            ),
            _ => assert!(
                matches!(e, Error::Decode(DecodeError::BadSumHead { .. })),
                "{e:?}"
            ),
        }
    }
}

/// A large file streams in bounded output slices: the machine never queues much more than
/// its high-water mark, and `has_local_work` drives it to the end.
#[test]
fn output_stays_bounded_while_a_big_file_streams() {
    struct Big;
    impl SendSource for Big {
        type Content = std::io::Cursor<Vec<u8>>;
        fn open(&mut self, _: u32, _: &FileEntry) -> Result<Self::Content, SinkError> {
            Ok(std::io::Cursor::new(vec![3u8; 20 << 20]))
        }
    }
    let mut gen = Vec::new();
    let mut ndx = NdxCodec::new(32);
    request(&mut ndx, 2, ITEM_TRANSFER, SumHead::default(), &mut gen);
    let mut tx: ClientSender<Big> =
        ClientSender::new(neg(32), SenderOptions::default(), list(), 0).unwrap();
    tx.feed(&mux(&gen)).unwrap();
    let mut total = 0usize;
    let mut steps = 0;
    loop {
        assert!(matches!(tx.step(&mut Big).unwrap(), Status::NeedInput));
        let out = tx.take_output();
        assert!(
            out.len() < OUTPUT_HIGH_WATER + 2 * CONTENT_READ_SIZE,
            "{}",
            out.len()
        );
        total += out.len();
        steps += 1;
        if !tx.has_local_work() {
            break;
        }
    }
    assert!(total > 20 << 20);
    assert!(steps > 20);
    assert_eq!(tx.progress().files_sent, 1);
}

/// The fuzz target's committed seeds replayed through its body: the sender never panics
/// on them.
#[test]
fn fuzz_seeds_replay_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/rsync_sender");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            continue;
        }
        crate::fuzzing::rsync_sender(&std::fs::read(&p).unwrap());
        seen += 1;
    }
    assert!(seen >= 4, "seeds missing from {}", dir.display());
}

/// A generator that floods requests is read only as fast as they are answered: input
/// beyond the high-water mark waits in the socket, and draining the output lets the
/// machine take more.
#[test]
fn flood_of_requests_pauses_reading() {
    let mut gen = Vec::new();
    let mut ndx = NdxCodec::new(32);
    // The same small file again and again: 21 bytes a request, about 50 a reply.
    for _ in 0..300_000 {
        request(&mut ndx, 1, ITEM_TRANSFER, SumHead::default(), &mut gen);
    }
    let mut tx: ClientSender<Mem> =
        ClientSender::new(neg(32), SenderOptions::default(), list(), 0).unwrap();
    let mut src = Mem { fail_open: b"" };
    tx.feed(&mux(&gen)).unwrap();
    assert!(matches!(tx.step(&mut src).unwrap(), Status::NeedInput));
    assert!(
        !tx.wants_input(),
        "output is full, input must wait: {:?}, {} unprocessed",
        tx.progress(),
        tx.ctx.data.len() - tx.ctx.data_pos
    );
    let mut rounds = 0;
    while !tx.wants_input() {
        let _ = tx.take_output();
        assert!(matches!(tx.step(&mut src).unwrap(), Status::NeedInput));
        rounds += 1;
        assert!(rounds < 10_000);
    }
    assert!(tx.progress().files_sent > 1000);
}

/// Protocols 27–29 (openrsync's daemon, stock 2.6.x): our output is the bare stream (no
/// frames), indexes are int32s, item flags travel from 29 on, hard links as dev/ino pairs,
/// the list's io_error as an int32 after it, MD4 whole-file sums seeded first; the phases
/// end after three DONEs at 29 and two below. A file that cannot be opened gets no reply
/// and nothing out of band.
#[test]
fn old_protocols_send_a_bare_stream() {
    for (protocol, fail) in [(29u32, &b""[..]), (28, b""), (27, b""), (29, b"a")] {
        let neg = Negotiated {
            protocol,
            compat_flags: 0,
            checksum: ChecksumKind::Md4Old,
            seed: 7,
            motd: Vec::new(),
            motd_dropped: 0,
        };
        let opts = SenderOptions {
            hard_links: true,
            ..SenderOptions::default()
        };
        let mut tx: ClientSender<Mem> = ClientSender::new(neg, opts, list(), 0).unwrap();
        let mut src = Mem { fail_open: fail };
        let mut gen = Vec::new();
        put_i32(&mut gen, 1); // sorted 1 = `a`, whatever the sort
        if protocol >= 29 {
            gen.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
        }
        gen.extend_from_slice(&[0; 16]);
        let dones = if protocol >= 29 { 4 } else { 3 };
        for _ in 0..dones {
            put_i32(&mut gen, NDX_DONE);
        }
        let mut wire = Vec::new();
        let mut outcome = None;
        for b in mux(&gen) {
            tx.feed(&[b]).unwrap();
            if let Status::Finished(o) = tx.step(&mut src).unwrap() {
                outcome = Some(*o);
            }
            wire.extend(tx.take_output());
        }
        let o = outcome.expect("finished");
        tx.keepalive();
        assert!(tx.take_output().is_empty(), "no keep-alive frame below 30");

        let mut dec =
            FlistDecoder::new(FlistOptions::archive(protocol, 0, true), Limits::default());
        let mut got: Vec<FileEntry> = Vec::new();
        let mut at = 0;
        loop {
            let (item, n) = dec.decode(&wire[at..], &got).unwrap().complete().unwrap();
            at += n;
            match item {
                FlistItem::Entry(e) => got.push(e),
                FlistItem::End { .. } => break,
            }
        }
        assert_eq!(got.len(), 5, "{protocol}");
        assert_eq!(got[1].hard_link, got[3].hard_link, "{protocol}");
        assert!(matches!(got[1].hard_link, HardLink::DevIno { .. }));
        let mut want = 0i32.to_le_bytes().to_vec(); // the list's io_error
        if fail.is_empty() {
            want.extend_from_slice(&1i32.to_le_bytes());
            if protocol >= 29 {
                want.extend_from_slice(&ITEM_TRANSFER.to_le_bytes());
            }
            want.extend_from_slice(&[0; 16]);
            let a = content_of(&list()[4]);
            want.extend_from_slice(&(a.len() as i32).to_le_bytes());
            want.extend_from_slice(&a);
            want.extend_from_slice(&0i32.to_le_bytes());
            let mut h = FileHasher::new(ChecksumKind::Md4Old, 7);
            h.update(&a);
            want.extend_from_slice(&h.finish());
        }
        for _ in 0..dones - 1 {
            want.extend_from_slice(&NDX_DONE.to_le_bytes());
        }
        assert_eq!(&wire[at..], &want[..], "{protocol} {fail:?}");
        if fail.is_empty() {
            assert_eq!(o.exit_code, 0);
        } else {
            assert_eq!(o.failed, ["a"]);
            assert_eq!(o.exit_code, RERR_VANISHED);
        }
    }
}

//! The committed seeds of the rsync fuzz targets (`fuzz/seeds/rsync_*/`) replayed through
//! the targets' own bodies (`turku_proto_rsync::fuzzing`), so a decoder that starts
//! panicking on one of them fails a plain `cargo test`.
//!
//! `write_hand_made_seeds` (ignored) rebuilds the `hand-*` seeds: valid inputs built with
//! our encoders and cut from the recorded stock-rsync conversations in `tests/fixtures/`.

use std::fs;
use std::path::{Path, PathBuf};

use turku_proto_rsync::checksum::ChecksumKind;
use turku_proto_rsync::codec::flist::{FlistEncoder, FlistOptions};
use turku_proto_rsync::codec::mux::{encode_frame, MsgTag};
use turku_proto_rsync::codec::ndx::NdxCodec;
use turku_proto_rsync::codec::prim::*;
use turku_proto_rsync::codec::sums::{encode_block_sum, SumHead};
use turku_proto_rsync::codec::token::{encode_block, encode_end, encode_literal};
use turku_proto_rsync::fuzzing::{self, TOKENS_HEAD};
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::demux::Demux;
use turku_proto_rsync::session::handshake::{
    ClientHandshake, HandshakeOptions, HandshakeStatus, Negotiated,
};
use turku_proto_rsync::{FileEntry, HardLink, Limits};

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// Runs `body` on every seed of `target`, naming the seed that panics; a missing or empty
/// folder fails rather than testing nothing.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = seeds_dir(target);
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed folder entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in seeds {
        let data = fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: seed {} panics", seed.display());
        }
    }
}

#[test]
fn rsync_varint_seeds_replay_without_panic() {
    replay("rsync_varint", fuzzing::rsync_varint);
}

#[test]
fn rsync_ndx_seeds_replay_without_panic() {
    replay("rsync_ndx", fuzzing::rsync_ndx);
}

#[test]
fn rsync_mux_seeds_replay_without_panic() {
    replay("rsync_mux", fuzzing::rsync_mux);
}

#[test]
fn rsync_flist_seeds_replay_without_panic() {
    replay("rsync_flist", fuzzing::rsync_flist);
}

#[test]
fn rsync_sum_head_seeds_replay_without_panic() {
    replay("rsync_sum_head", fuzzing::rsync_sum_head);
}

#[test]
fn rsync_tokens_seeds_replay_without_panic() {
    replay("rsync_tokens", fuzzing::rsync_tokens);
}

#[test]
fn rsync_handshake_seeds_replay_without_panic() {
    replay("rsync_handshake", fuzzing::rsync_handshake);
}

#[test]
fn rsync_receiver_seeds_replay_without_panic() {
    replay("rsync_receiver", fuzzing::rsync_receiver);
}

#[test]
fn rsync_sender_seeds_replay_without_panic() {
    replay("rsync_sender", fuzzing::rsync_sender);
}

// ------------------------------------------------------------------ the hand-made seeds

/// Splits a recorded conversation (`tests/fixtures/README.md`) into the server's handshake
/// bytes, what the server sent after it, and what was negotiated.
fn split_transcript(file: &str, protocol: u32) -> (Vec<u8>, Vec<u8>, Negotiated) {
    let raw = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(file),
    )
    .expect("transcript");
    let header_end = raw.iter().position(|&b| b == b'\n').expect("header") + 1;
    let mut server = Vec::new();
    let mut at = header_end;
    while at < raw.len() {
        let len = u32::from_le_bytes(raw[at + 1..at + 5].try_into().expect("length")) as usize;
        if raw[at] == b'S' {
            server.extend_from_slice(&raw[at + 5..at + 5 + len]);
        }
        at += 5 + len;
    }
    let mut hs = ClientHandshake::new(HandshakeOptions {
        args: ServerArgs::pull("pub", "", true),
        protocol,
        user: "u".into(),
        password: None,
        limits: Limits::default(),
    })
    .expect("handshake");
    // One byte at a time, so what the handshake consumed is exactly its part.
    let mut fed = 0;
    let mut buf = Vec::new();
    loop {
        let (used, st) = hs.feed(&buf).expect("handshake input");
        buf.drain(..used);
        if let HandshakeStatus::Done(neg) = st {
            let split = fed - buf.len();
            return (server[..split].to_vec(), server[split..].to_vec(), neg);
        }
        buf.push(server[fed]);
        fed += 1;
    }
}

/// A selector byte with the option `flags` (bits 0x08 and up) whose remainder modulo
/// `choices` picks protocol choice `want` (the targets take the protocol from the whole byte).
fn selector(flags: u8, choices: u8, want: u8) -> u8 {
    (0..choices)
        .map(|low| flags | low)
        .find(|sel| sel % choices == want)
        .expect("a low part that picks the protocol")
}

/// The selector byte of the role targets that matches a recorded session.
fn role_selector(neg: &Negotiated) -> u8 {
    let mut flags = 0x40;
    if neg.compat_flags & 0x100 != 0 {
        flags |= 0x10;
    }
    if neg.checksum == ChecksumKind::Xxh128 {
        flags |= 0x20;
    }
    if neg.protocol < 30 {
        return selector(flags | 0x04, 3, (neg.protocol.saturating_sub(27) % 3) as u8);
    }
    selector(flags, 3, (neg.protocol.saturating_sub(30) % 3) as u8)
}

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = seeds_dir(target);
    fs::create_dir_all(&dir).expect("seed folder");
    assert!(data.len() < 64 * 1024, "{target}/{name} is too big");
    fs::write(dir.join(format!("hand-{name}")), data).expect("seed");
}

fn flist_entries() -> Vec<FileEntry> {
    let mut dot = FileEntry::new(b".".to_vec(), 0o40755, 0);
    dot.top_dir = true;
    dot.mtime = 1_700_000_000;
    let mut file = FileEntry::new(b"dir/file.txt".to_vec(), 0o100644, 12345);
    file.mtime = 1_700_000_100;
    file.mtime_nsec = 123_456_789;
    file.uid = 1000;
    file.gid = 1000;
    let mut lead = FileEntry::new(b"dir/a".to_vec(), 0o100600, 70_000);
    lead.hard_link = HardLink::Leader;
    lead.mtime = 1_600_000_000;
    let mut follow = FileEntry::new(b"dir/b".to_vec(), 0o100600, 70_000);
    follow.hard_link = HardLink::Follower { first: 2 };
    follow.mtime = 1_600_000_000;
    let mut link = FileEntry::new(b"dir/link".to_vec(), 0o120777, 8);
    link.symlink = Some(b"file.txt".to_vec());
    let mut chr = FileEntry::new(b"dev/null".to_vec(), 0o20666, 0);
    chr.rdev = Some((1, 3));
    let mut blk = FileEntry::new(b"dev/sda".to_vec(), 0o60660, 0);
    blk.rdev = Some((8, 300));
    let fifo = FileEntry::new(b"fifo".to_vec(), 0o10644, 0);
    let sock = FileEntry::new(b"sock".to_vec(), 0o140755, 0);
    let long = FileEntry::new(vec![b'x'; 300], 0o100644, 1 << 33);
    vec![
        dot,
        FileEntry::new(b"dir".to_vec(), 0o40755, 0),
        lead,
        follow,
        file,
        link,
        FileEntry::new(b"dev".to_vec(), 0o40700, 0),
        chr,
        blk,
        fifo,
        sock,
        long,
    ]
}

/// Rebuilds the `hand-*` seeds; run after a format change with
/// `cargo test -p turku-proto-rsync --test fuzz_seeds -- --ignored write_hand_made_seeds`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_hand_made_seeds() {
    // rsync_varint: one encoding each.
    for v in [
        0,
        1,
        0x7f,
        0x80,
        0x3fff,
        0x4000,
        0x1f_ffff,
        0x20_0000,
        i32::MAX,
        -1,
    ] {
        let mut o = Vec::new();
        put_varint(&mut o, v);
        write_seed("rsync_varint", &format!("varint-{v}"), &o);
    }
    for (v, min) in [(0i64, 3usize), (1 << 24, 3), (1 << 40, 4), (i64::MAX, 4)] {
        let mut o = Vec::new();
        put_varlong(&mut o, v, min);
        write_seed("rsync_varint", &format!("varlong{min}-{v}"), &o);
    }
    for v in [0x7fff_ffffi64, 1 << 33] {
        let mut o = Vec::new();
        put_longint(&mut o, v);
        write_seed("rsync_varint", &format!("longint-{v}"), &o);
    }
    for (name, s) in [
        ("empty", &b""[..]),
        ("names", b"xxh128 xxh3 xxh64 md5 md4 none"),
    ] {
        let mut o = Vec::new();
        put_vstring(&mut o, s);
        write_seed("rsync_varint", &format!("vstring-{name}"), &o);
    }

    // rsync_ndx: the protocol selector, then a request run as a generator sends it.
    let runs: [&[i32]; 3] = [
        &[0, 1, 2, 3, 7, -1, 1, 5, -1, -1],
        &[300, 301, 70_000, 5, -101, -102, -1],
        &[0, 40_000, 40_001, 1 << 24, -1],
    ];
    for proto in 29..=32u32 {
        for (i, run) in runs.iter().enumerate() {
            let mut o = vec![(proto - 29) as u8];
            let mut c = NdxCodec::new(proto);
            for &n in *run {
                c.encode(n, &mut o);
            }
            write_seed("rsync_ndx", &format!("p{proto}-run{i}"), &o);
        }
    }

    // rsync_mux: one frame of each kind, then the servers' recorded streams.
    let mut frames = vec![3u8];
    encode_frame(MsgTag::Data, b"file list bytes", &mut frames);
    encode_frame(
        MsgTag::Info,
        b"receiving incremental file list\n",
        &mut frames,
    );
    encode_frame(MsgTag::Warning, b"some warning\n", &mut frames);
    encode_frame(MsgTag::Error, b"rsync: [sender] failed\n", &mut frames);
    encode_frame(MsgTag::ErrorXfer, b"file vanished\n", &mut frames);
    encode_frame(MsgTag::IoError, &1i32.to_le_bytes(), &mut frames);
    encode_frame(MsgTag::Noop, b"", &mut frames);
    encode_frame(MsgTag::Deleted, b"gone.txt", &mut frames);
    encode_frame(MsgTag::Success, &4i32.to_le_bytes(), &mut frames);
    encode_frame(MsgTag::NoSend, &7i32.to_le_bytes(), &mut frames);
    encode_frame(MsgTag::ErrorExit, &23i32.to_le_bytes(), &mut frames);
    write_seed("rsync_mux", "every-tag", &frames);
    let mut big = vec![0u8];
    encode_frame(MsgTag::Data, &[0x5a; 4000], &mut big);
    write_seed("rsync_mux", "big-data", &big);

    let pulls = [
        ("pull-p32.transcript", 32),
        ("pull-p31.transcript", 31),
        ("pull-p30.transcript", 30),
    ];
    let pushes = [
        ("push-p32.transcript", 32),
        ("push-p31.transcript", 31),
        ("push-p30.transcript", 30),
    ];
    for (file, proto) in pulls
        .iter()
        .chain(&pushes)
        .chain(&[("pull-p29.transcript", 29), ("pull-p27.transcript", 27)])
    {
        let (handshake, after, neg) = split_transcript(file, *proto);
        let stem = file.trim_end_matches(".transcript");
        write_seed("rsync_handshake", stem, &handshake);
        if *proto >= 30 {
            write_seed("rsync_mux", stem, &after);
        }
        let mut role = vec![role_selector(&neg)];
        role.extend_from_slice(&after);
        if file.starts_with("pull") && *proto < 30 {
            write_seed("rsync_receiver", stem, &role);
        }
        if file.starts_with("pull") && *proto >= 30 {
            write_seed("rsync_receiver", stem, &role);
            // The same stream under the other checksum choice.
            role[0] = selector((role[0] & 0xf8) ^ 0x20, 3, (*proto - 30) as u8);
            write_seed("rsync_receiver", &format!("{stem}-flipped"), &role);
        }
        if file.starts_with("push") {
            write_seed("rsync_sender", stem, &role);
        }
        if file.starts_with("pull") {
            // The server's file list: the data of its multiplexed stream.
            let mut d = Demux::new(Limits::default());
            let (mut list, mut msgs) = (Vec::new(), Vec::new());
            let _ = d.push(&after, &mut list, &mut msgs);
            let varint_flags = if neg.compat_flags & 0x80 != 0 {
                0x08
            } else {
                0
            };
            let mut seed = vec![selector(0x20 | varint_flags, 6, (*proto - 27) as u8)];
            seed.extend_from_slice(&list);
            seed.truncate(16 * 1024);
            write_seed("rsync_flist", stem, &seed);
        }
    }
    write_seed(
        "rsync_handshake",
        "auth-then-motd",
        b"@RSYNCD: 31.0 sha512 sha256 sha1 md5 md4\nWelcome to the backup host\n\
          line two of the motd\n@RSYNCD: AUTHREQD aGVsbG8gd29ybGQ\n@RSYNCD: OK\n\x00\x00\x00\x00",
    );
    // openrsync: `@RSYNCD: 29` bare, the seed right after OK; `@ERROR ` without a colon.
    write_seed(
        "rsync_handshake",
        "openrsync-p29",
        b"@RSYNCD: 29\n@RSYNCD: AUTHREQD aGVsbG8gd29ybGQ\n@RSYNCD: OK\n\x78\x56\x34\x12",
    );
    write_seed(
        "rsync_handshake",
        "openrsync-refused",
        b"@RSYNCD: 29\n@RSYNCD: AUTHREQD abc\n@ERROR mod: authentication failed\n",
    );
    write_seed(
        "rsync_handshake",
        "unknown-module",
        b"@RSYNCD: 32.0 xxh128 xxh3 xxh64 md5 md4\n@ERROR: Unknown module 'm'\n",
    );
    write_seed(
        "rsync_handshake",
        "module-list",
        b"@RSYNCD: 30.0\npub            \tpublic files\nincoming\n@RSYNCD: EXIT\n",
    );

    // rsync_flist: our encoder's lists under the selector's option combinations.
    for sel in [0x00u8, 0x01, 0x02, 0x0b, 0x2c, 0x3d, 0x6d, 0x35, 0xa5] {
        let proto = 27 + u32::from(sel % 6);
        let compat =
            if sel & 0x08 != 0 { 0x80 } else { 0 } | if sel & 0x10 != 0 { 0x08 } else { 0 };
        let mut o = FlistOptions::archive(proto, compat, sel & 0x20 != 0);
        if sel & 0x40 != 0 {
            o.checksum_len = Some(16);
        }
        let mut enc = FlistEncoder::new(o);
        let mut seed = vec![sel];
        for mut e in flist_entries() {
            if o.checksum_len.is_some() && e.is_regular() {
                e.checksum = Some(vec![0xab; 16]);
            }
            if !o.preserve_hard_links {
                e.hard_link = HardLink::None;
            }
            enc.encode(&e, &mut seed);
        }
        enc.encode_end(0, &mut seed);
        write_seed("rsync_flist", &format!("encoded-{sel:02x}"), &seed);
    }

    // rsync_flist: names the receiver cleans (openrsync's `./x`, doubled slashes, interior
    // `.`, a trailing `/`) and names it still refuses, at 29 (openrsync) and 32 (varint).
    for sel in [0x02u8, 0x0b] {
        let proto = 27 + u32::from(sel % 6);
        let compat = if sel & 0x08 != 0 { 0x80 } else { 0 };
        let mut enc = FlistEncoder::new(FlistOptions::archive(proto, compat, false));
        let mut seed = vec![sel];
        for (name, mode) in [
            (".", 0o40755),
            ("./x", 0o100644),
            ("./d/", 0o40755),
            ("d//y", 0o100644),
            ("d/./z", 0o100644),
            ("../x", 0o100644),
            ("/x", 0o100644),
            ("d/../../y", 0o100644),
            ("d/.", 0o40755),
        ] {
            enc.encode(
                &FileEntry::new(name.as_bytes().to_vec(), mode, 1),
                &mut seed,
            );
        }
        enc.encode_end(0, &mut seed);
        write_seed("rsync_flist", &format!("names-p{proto}"), &seed);
    }

    // rsync_sender below 30: a whole-file request for sorted index 1 (`big` in the
    // target's list), then the generator's DONEs: int32 indexes, item flags from 29 on,
    // three DONEs before the goodbye at 29 and two below.
    for proto in [27u32, 28, 29] {
        let mut data = Vec::new();
        put_i32(&mut data, 1);
        if proto >= 29 {
            data.extend_from_slice(&0x8000u16.to_le_bytes());
        }
        for _ in 0..4 {
            put_i32(&mut data, 0);
        }
        for _ in 0..if proto >= 29 { 4 } else { 3 } {
            put_i32(&mut data, -1);
        }
        let mut seed = vec![selector(0x40 | 0x04, 3, (proto - 27) as u8)];
        encode_frame(MsgTag::Data, &data, &mut seed);
        write_seed("rsync_sender", &format!("whole-p{proto}"), &seed);
    }

    // rsync_sum_head: heads for real basis sizes, with their block sums.
    for (proto, len, redo) in [
        (31u32, 0u64, false),
        (31, 100, false),
        (31, 5000, false),
        (31, 70_000, true),
        (27, 3000, false),
    ] {
        let head = SumHead::for_basis(len, proto, 16, redo);
        let mut o = Vec::new();
        head.encode(proto, &mut o);
        for k in 0..head.count {
            encode_block_sum(
                0x1234_5678 ^ k,
                &vec![k as u8; head.s2length as usize],
                &mut o,
            );
        }
        write_seed("rsync_sum_head", &format!("p{proto}-len{len}"), &o);
    }

    // rsync_tokens: deltas against the target's basis (8 blocks).
    let mut only_blocks = Vec::new();
    for k in 0..TOKENS_HEAD.count {
        encode_block(k, &mut only_blocks);
    }
    encode_end(&mut only_blocks);
    write_seed("rsync_tokens", "all-blocks", &only_blocks);
    let mut mixed = Vec::new();
    encode_literal(b"new header", &mut mixed);
    encode_block(3, &mut mixed);
    encode_block(4, &mut mixed);
    encode_literal(&[0x11; 900], &mut mixed);
    encode_block(7, &mut mixed);
    encode_end(&mut mixed);
    write_seed("rsync_tokens", "mixed", &mixed);
    let mut literal = Vec::new();
    encode_literal(&[0x42; 40_000], &mut literal);
    encode_end(&mut literal);
    write_seed("rsync_tokens", "two-literal-runs", &literal);
    let mut empty = Vec::new();
    encode_end(&mut empty);
    write_seed("rsync_tokens", "empty", &empty);
}

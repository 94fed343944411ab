//! The bodies of the `rsync_*` fuzz targets (`fuzz/fuzz_targets/`), one function a target, so
//! the fuzzer and the replay of the committed seeds (`tests/fuzz_seeds.rs`) run the same code.
//! Each takes the raw fuzz input; a panic here (an assertion included) is a bug the fuzzer
//! found, never a rejected input.

use crate::checksum::ChecksumKind;
use crate::codec::flist::{clean_received_name, FlistDecoder, FlistItem, FlistOptions};
use crate::codec::handshake::{classify_line, decode_line, parse_greeting};
use crate::codec::mux::decode_frame;
use crate::codec::ndx::NdxCodec;
use crate::codec::prim::{
    decode_longint, decode_varint, decode_varlong, decode_vstring, put_varint, put_varlong,
};
use crate::codec::sums::{decode_block_sums, SumHead};
use crate::codec::token::{decode_owned_token, OwnedToken};
use crate::delta::apply;
use crate::session::args::ServerArgs;
use crate::session::demux::Demux;
use crate::session::handshake::{ClientHandshake, HandshakeOptions, HandshakeStatus, Negotiated};
use crate::session::receiver::{self, ClientReceiver, ReceiverOptions};
use crate::session::sender::{self, ClientSender, SenderOptions};
use crate::{
    Decoded, EntryAction, FileContent, FileEntry, HardLink, Limits, ReceiveSink, SendSource,
    SinkError,
};

/// varint / varlong / longint / vstring decoders: no panic on any input, and every decoded
/// value re-encodes to bytes that decode to the same value.
pub fn rsync_varint(data: &[u8]) {
    if let Ok(Decoded::Complete { value, .. }) = decode_varint(data) {
        let mut o = Vec::new();
        put_varint(&mut o, value);
        assert_eq!(
            decode_varint(&o)
                .ok()
                .and_then(|d| d.complete())
                .map(|x| x.0),
            Some(value)
        );
    }
    for min in [3usize, 4] {
        if let Ok(Decoded::Complete { value, .. }) = decode_varlong(data, min) {
            let mut o = Vec::new();
            put_varlong(&mut o, value, min);
            assert_eq!(
                decode_varlong(&o, min)
                    .ok()
                    .and_then(|d| d.complete())
                    .map(|x| x.0),
                Some(value)
            );
        }
    }
    let _ = decode_longint(data);
    let _ = decode_vstring(data, 0x7FFF);
}

/// The NDX decoder (byte-reduced file indexes) for protocols 29–32; the first byte picks
/// the protocol.
pub fn rsync_ndx(data: &[u8]) {
    let proto = 29 + u32::from(data.first().copied().unwrap_or(0) % 4);
    let mut r = NdxCodec::new(proto);
    let mut pos = 1.min(data.len());
    while let Ok(Decoded::Complete { consumed, .. }) = r.decode(&data[pos..]) {
        pos += consumed;
    }
}

/// Multiplexed frames: the frame decoder and the streaming demultiplexer, fed in arbitrary
/// split points.
pub fn rsync_mux(data: &[u8]) {
    let limits = Limits {
        max_message: 4096,
        ..Limits::default()
    };
    let mut pos = 0;
    while let Ok(Decoded::Complete { consumed, .. }) = decode_frame(&data[pos..], &limits) {
        pos += consumed;
    }
    let step = 1 + usize::from(data.first().copied().unwrap_or(0) % 17);
    let mut d = Demux::new(limits);
    let (mut out, mut msgs) = (Vec::new(), Vec::new());
    for chunk in data.chunks(step) {
        if d.push(chunk, &mut out, &mut msgs).is_err() {
            break;
        }
    }
}

/// File-list entries under every option combination the first byte selects (protocol
/// 27–32, varint flags, hard links, -c checksums, a tight byte bound), then the stock sort.
pub fn rsync_flist(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let proto = 27 + u32::from(sel % 6);
    let compat = if sel & 0x08 != 0 { 0x80 } else { 0 } | if sel & 0x10 != 0 { 0x08 } else { 0 };
    let mut o = FlistOptions::archive(proto, compat, sel & 0x20 != 0);
    if sel & 0x40 != 0 {
        o.checksum_len = Some(16);
    }
    // Small bounds so both the entry count and the estimated-bytes bound are reached.
    let limits = Limits {
        max_entries: 10_000,
        max_file_list_bytes: if sel & 0x80 != 0 { 16 * 1024 } else { 1 << 30 },
        ..Limits::default()
    };
    let mut d = FlistDecoder::new(o, limits);
    let mut list = Vec::new();
    let mut pos = 0;
    while let Ok(Decoded::Complete { value, consumed }) = d.decode(&rest[pos..], &list) {
        pos += consumed;
        match value {
            FlistItem::Entry(e) => list.push(e),
            FlistItem::End { .. } => break,
        }
    }
    // The receiver's cleaning: what it accepts is safe and already clean.
    let mut clean = Vec::with_capacity(list.len());
    for e in &list {
        if let Ok(name) = clean_received_name(&e.name, e.is_dir()) {
            let unsafe_part = name
                .split(|&c| c == b'/')
                .any(|p| p.is_empty() || p == b".." || (p == b"." && name != b"."));
            assert!(!unsafe_part && !name.contains(&0), "{name:?}");
            assert_eq!(clean_received_name(&name, e.is_dir()).as_ref(), Ok(&name));
            clean.push(FileEntry { name, ..e.clone() });
        }
    }
    let _ = crate::sort::sort_order(&list, proto);
    let _ = crate::sort::sort_order(&clean, proto);
}

/// Sum heads and the block sums that follow them (the sender side of a request).
pub fn rsync_sum_head(data: &[u8]) {
    let limits = Limits {
        max_blocks: 1 << 16,
        ..Limits::default()
    };
    for proto in [27u32, 31] {
        if let Ok(Decoded::Complete {
            value: head,
            consumed,
        }) = SumHead::decode(data, proto, 16, &limits)
        {
            let _ = decode_block_sums(&data[consumed..], &head);
        }
    }
}

/// The basis layout `rsync_tokens` applies its tokens to (8 blocks of 700, the last 100).
pub const TOKENS_HEAD: SumHead = SumHead {
    count: 8,
    blength: 700,
    s2length: 2,
    remainder: 100,
};

/// Delta tokens, applied to a small basis: whatever decodes applies.
pub fn rsync_tokens(data: &[u8]) {
    let limits = Limits {
        max_literal: 1 << 16,
        ..Limits::default()
    };
    let basis: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let head = TOKENS_HEAD;
    let mut toks = Vec::new();
    let mut pos = 0;
    while let Ok(Decoded::Complete { value, consumed }) =
        decode_owned_token(&data[pos..], head.count, &limits)
    {
        pos += consumed;
        if value == OwnedToken::End {
            break;
        }
        toks.push(value);
    }
    assert!(apply(&head, &basis, &toks).is_some());
}

/// Daemon handshake lines, greeting parsing, and the whole client handshake machine fed a
/// hostile server.
pub fn rsync_handshake(data: &[u8]) {
    let mut pos = 0;
    while let Ok(Decoded::Complete { value, consumed }) = decode_line(&data[pos..], 4096) {
        pos += consumed;
        let _ = parse_greeting(&value);
        let _ = classify_line(&value);
    }
    // The first byte, when it is a separator, lands in the module name: refused up front.
    let module = match data.first() {
        Some(&b) if matches!(b, b'\n' | b'\r' | 0) => format!("m{}", b as char),
        _ => "m".to_owned(),
    };
    let opts = HandshakeOptions {
        args: ServerArgs::pull(&module, "", false),
        protocol: 32,
        user: "u".into(),
        password: Some(b"p".to_vec().into()),
        // Small MOTD bounds so that dropping lines is reached.
        limits: Limits {
            max_motd_lines: 4,
            max_motd_bytes: 64,
            ..Limits::default()
        },
    };
    let Ok(mut h) = ClientHandshake::new(opts) else {
        return;
    };
    let mut buf = Vec::new();
    for chunk in data.chunks(7) {
        buf.extend_from_slice(chunk);
        match h.feed(&buf) {
            Ok((used, HandshakeStatus::NeedInput)) => {
                buf.drain(..used);
            }
            _ => break,
        }
        let _ = h.take_output();
    }
}

/// The session both role targets set up from their selector byte: bit 0x04 picks the old
/// protocols 27–29 (no compat flags, MD4 with the seed), else 30–32.
fn negotiated(sel: u8) -> Negotiated {
    if sel & 0x04 != 0 {
        return Negotiated {
            protocol: 27 + u32::from(sel % 3),
            compat_flags: 0,
            checksum: ChecksumKind::Md4Old,
            seed: 12345,
            motd: Vec::new(),
            motd_dropped: 0,
        };
    }
    Negotiated {
        protocol: 30 + u32::from(sel % 3),
        compat_flags: if sel & 0x10 != 0 { 0x1fe } else { 0x2e },
        checksum: if sel & 0x20 != 0 {
            ChecksumKind::Xxh128
        } else {
            ChecksumKind::Md5 { seed_fix: true }
        },
        seed: 12345,
        motd: Vec::new(),
        motd_dropped: 0,
    }
}

/// A sink that transfers every file, even-numbered ones from a small basis.
struct Sink;

impl ReceiveSink for Sink {
    type Basis = Vec<u8>;
    fn entry(&mut self, _: u32, _: &FileEntry) -> Result<EntryAction, SinkError> {
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, ndx: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(ndx.is_multiple_of(2).then(|| vec![7u8; 2000]))
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        Ok(())
    }
    fn content(&mut self, _: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    fn end_content(&mut self, _: u32, _: &FileEntry, _: bool) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The whole client receiver after setup (file list, requests, tokens, messages, end of
/// run: phase order, completeness, rebuilt-byte cap, parents) fed arbitrary multiplexed
/// input; the first byte picks protocol, checksum and options.
pub fn rsync_receiver(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let opts = ReceiverOptions {
        hard_links: sel & 0x40 != 0,
        numeric_ids: sel & 0x80 == 0,
        filter_rules: Vec::new(),
        // Small bounds so every one of them is reachable: list bytes, rebuilt bytes per
        // file, messages kept.
        limits: Limits {
            max_entries: 5_000,
            max_file_list_bytes: 256 * 1024,
            max_blocks: 1 << 12,
            max_literal: 1 << 16,
            rebuilt_slack: 4096,
            max_messages_kept: 8,
            max_message_bytes_kept: 256,
            ..Limits::default()
        },
    };
    let mut rx: ClientReceiver<Sink> = ClientReceiver::new(negotiated(sel), opts);
    let mut sink = Sink;
    for chunk in rest.chunks(64) {
        if rx.feed(chunk).is_err() {
            return;
        }
        match rx.step(&mut sink) {
            Ok(receiver::Status::NeedInput) => {
                let _ = rx.take_output();
            }
            _ => return,
        }
    }
}

/// Files read from memory: `locked` fails to open, `cut` fails midway.
struct Source;

struct Content {
    data: Vec<u8>,
    at: usize,
    fail_at: Option<usize>,
}

impl FileContent for Content {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError> {
        if self.fail_at.is_some_and(|f| self.at >= f) {
            return Err("injected read error".into());
        }
        let n = buf.len().min(self.data.len() - self.at).min(3000);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl SendSource for Source {
    type Content = Content;
    fn open(&mut self, ndx: u32, e: &FileEntry) -> Result<Content, SinkError> {
        if e.name == b"locked" {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied).into());
        }
        let data: Vec<u8> = (0..e.size as usize)
            .map(|i| (i * 7 + ndx as usize) as u8)
            .collect();
        Ok(Content {
            data,
            at: 0,
            fail_at: (e.name == b"cut").then_some(2500),
        })
    }
}

/// The list `rsync_sender` sends (its seeds' requests index into it).
fn sender_list() -> Vec<FileEntry> {
    let mut dot = FileEntry::new(b".".to_vec(), 0o40755, 0);
    dot.top_dir = true;
    let mut lead = FileEntry::new(b"big".to_vec(), 0o100644, 9000);
    lead.hard_link = HardLink::Leader;
    let mut follow = FileEntry::new(b"d/same".to_vec(), 0o100644, 9000);
    follow.hard_link = HardLink::Follower { first: 1 };
    let mut link = FileEntry::new(b"link".to_vec(), 0o120777, 3);
    link.symlink = Some(b"big".to_vec());
    vec![
        dot,
        lead,
        FileEntry::new(b"d".to_vec(), 0o40755, 0),
        follow,
        FileEntry::new(b"small".to_vec(), 0o100600, 5),
        FileEntry::new(b"locked".to_vec(), 0o100600, 10),
        FileEntry::new(b"cut".to_vec(), 0o100600, 6000),
        link,
    ]
}

/// The whole client sender after setup (requests, item flags, sum heads, block sums, phase
/// DONEs, the goodbye, delete stats, messages) fed arbitrary multiplexed input as the
/// receiver's generator would send it, over a small in-memory list; the first byte picks
/// protocol, checksum and options.
pub fn rsync_sender(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let opts = SenderOptions {
        hard_links: sel & 0x40 != 0,
        numeric_ids: sel & 0x80 == 0,
        delete: sel & 0x08 != 0,
        filter_rules: Vec::new(),
        limits: Limits {
            max_blocks: 1 << 12,
            max_sum_bytes: 64 * 1024,
            max_messages_kept: 8,
            max_message_bytes_kept: 256,
            ..Limits::default()
        },
    };
    let Ok(mut tx) = ClientSender::<Source>::new(negotiated(sel), opts, sender_list(), 0) else {
        return;
    };
    let mut source = Source;
    for chunk in rest.chunks(64) {
        if tx.feed(chunk).is_err() {
            return;
        }
        // Local work (a file streaming) runs to its end before more input.
        loop {
            match tx.step(&mut source) {
                Ok(sender::Status::NeedInput) => {
                    let _ = tx.take_output();
                    if !tx.has_local_work() {
                        break;
                    }
                }
                _ => return,
            }
        }
    }
}

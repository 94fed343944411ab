#![no_main]
//! The whole client receiver after setup (file list, requests, tokens, messages, end of
//! run: phase order, completeness, rebuilt-byte cap, parents) fed arbitrary multiplexed
//! input, with a sink that transfers every file from a small basis.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::checksum::ChecksumKind;
use turku_proto_rsync::session::handshake::Negotiated;
use turku_proto_rsync::session::receiver::{ClientReceiver, ReceiverOptions};
use turku_proto_rsync::{EntryAction, FileEntry, Limits, ReceiveSink, SinkError};

struct Sink;

impl ReceiveSink for Sink {
    type Basis = Vec<u8>;
    fn entry(&mut self, _: u32, _: &FileEntry) -> Result<EntryAction, SinkError> {
        Ok(EntryAction::Transfer)
    }
    fn basis(&mut self, ndx: u32, _: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok((ndx % 2 == 0).then(|| vec![7u8; 2000]))
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

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let neg = Negotiated {
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
    let mut rx: ClientReceiver<Sink> = ClientReceiver::new(neg, opts);
    let mut sink = Sink;
    for chunk in rest.chunks(64) {
        if rx.feed(chunk).is_err() {
            return;
        }
        match rx.step(&mut sink) {
            Ok(turku_proto_rsync::session::receiver::Status::NeedInput) => {
                let _ = rx.take_output();
            }
            _ => return,
        }
    }
});

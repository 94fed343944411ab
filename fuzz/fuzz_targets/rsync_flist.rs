#![no_main]
//! rsync file-list entries under every option combination the first byte selects
//! (protocol 27–32, varint flags, hard links, -c checksums, a tight byte bound), then the
//! stock sort.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::flist::{FlistDecoder, FlistItem, FlistOptions};
use turku_proto_rsync::{Decoded, Limits};

fuzz_target!(|data: &[u8]| {
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
    let _ = turku_proto_rsync::sort::sort_order(&list, proto);
});

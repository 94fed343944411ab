#![no_main]
//! rsync sum heads and the block sums that follow them (sender side of a request).
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::sums::{decode_block_sums, SumHead};
use turku_proto_rsync::{Decoded, Limits};

fuzz_target!(|data: &[u8]| {
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
});

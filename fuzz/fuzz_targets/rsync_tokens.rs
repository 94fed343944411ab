#![no_main]
//! rsync delta tokens, applied to a small basis.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::sums::SumHead;
use turku_proto_rsync::codec::token::{decode_owned_token, OwnedToken};
use turku_proto_rsync::delta::apply;
use turku_proto_rsync::{Decoded, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_literal: 1 << 16,
        ..Limits::default()
    };
    let basis: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let head = SumHead {
        count: 8,
        blength: 700,
        s2length: 2,
        remainder: 100,
    };
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
});

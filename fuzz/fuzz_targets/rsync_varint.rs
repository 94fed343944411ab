#![no_main]
//! rsync varint / varlong / longint / vstring decoders: no panic on any input, and every
//! decoded value re-encodes to bytes that decode to the same value.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::prim::*;
use turku_proto_rsync::Decoded;

fuzz_target!(|data: &[u8]| {
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
});

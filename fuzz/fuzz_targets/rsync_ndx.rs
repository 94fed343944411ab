#![no_main]
//! rsync NDX decoder (byte-reduced file indexes) for protocols 29–32.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::ndx::NdxCodec;
use turku_proto_rsync::Decoded;

fuzz_target!(|data: &[u8]| {
    let proto = 29 + u32::from(data.first().copied().unwrap_or(0) % 4);
    let mut r = NdxCodec::new(proto);
    let mut pos = 1.min(data.len());
    while let Ok(Decoded::Complete { consumed, .. }) = r.decode(&data[pos..]) {
        pos += consumed;
    }
});

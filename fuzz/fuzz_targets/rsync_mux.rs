#![no_main]
//! rsync multiplexed frames: the frame decoder and the streaming demultiplexer, fed in
//! arbitrary split points.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::mux::decode_frame;
use turku_proto_rsync::session::demux::Demux;
use turku_proto_rsync::{Decoded, Limits};

fuzz_target!(|data: &[u8]| {
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
});

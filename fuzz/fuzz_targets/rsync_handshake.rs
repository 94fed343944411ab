#![no_main]
//! rsync daemon handshake: line splitting, greeting parsing, and the whole client
//! handshake machine fed a hostile server.
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::codec::handshake::{classify_line, decode_line, parse_greeting};
use turku_proto_rsync::session::args::ServerArgs;
use turku_proto_rsync::session::handshake::{ClientHandshake, HandshakeOptions, HandshakeStatus};
use turku_proto_rsync::{Decoded, Limits};

fuzz_target!(|data: &[u8]| {
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
});

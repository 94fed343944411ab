//! Arbitrary bytes as a whole pack file: the trailer decoder must return an error naming the
//! offset, never panic or allocate past its limits; every blob it accepts is then decoded
//! and hash-checked, which must also fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turku_store::decode::{decode_blob, decode_trailer};

fuzz_target!(|data: &[u8]| {
    let mut read_at = |offset: u64, len: usize| -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        data.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::other("short read"))
    };
    let Ok(blobs) = decode_trailer(data.len() as u64, &mut read_at) else {
        return;
    };
    let Ok(mut d) = zstd_decompressor() else {
        return;
    };
    for b in blobs {
        let start = b.offset as usize;
        if let Some(stored) = data.get(start..start + b.stored_len as usize) {
            let _ = decode_blob(&b, stored, &mut d);
        }
    }
});

fn zstd_decompressor() -> std::io::Result<turku_store::decode::Decompressor> {
    turku_store::decode::Decompressor::new()
}

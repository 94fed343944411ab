//! The bodies of the `store_*` fuzz targets (`fuzz/fuzz_targets/`), one function a target, so
//! the fuzzer and the replay of the committed seeds (`tests/fuzz_seeds.rs`) run the same code.
//! Each takes the raw fuzz input; a panic here (an assertion included) is a bug the fuzzer
//! found, never a rejected input.

use crate::decode::{decode_blob, decode_snapshot_log, decode_trailer, decode_tree, Decompressor};
use crate::tree::{encode_leaf, encode_split, TreeNode};

/// Arbitrary bytes as a whole pack file: the trailer decoder returns an error naming the
/// offset, never panics or allocates past its limits; every blob it accepts is then decoded
/// and hash-checked, which must also fail cleanly.
pub fn store_pack(data: &[u8]) {
    let mut read_at = |offset: u64, len: usize| -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        data.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::other("short read"))
    };
    let Ok(blobs) = decode_trailer(data.len() as u64, &mut read_at) else {
        return;
    };
    let Ok(mut d) = Decompressor::new() else {
        return;
    };
    for b in blobs {
        let start = b.offset as usize;
        if let Some(stored) = data.get(start..start + b.stored_len as usize) {
            let _ = decode_blob(&b, stored, &mut d);
        }
    }
}

/// Arbitrary bytes as a tree object: decode errors are typed; what decodes re-encodes to the
/// same bytes (the encoding is canonical).
pub fn store_tree(data: &[u8]) {
    if let Ok(node) = decode_tree(data) {
        let again = match &node {
            TreeNode::Leaf(entries) => encode_leaf(entries),
            TreeNode::Split(parts) => encode_split(parts),
        };
        assert_eq!(again, data, "decoded tree must re-encode identically");
    }
}

/// Arbitrary bytes as the snapshot record log: torn, unparsable and malformed lines are set
/// aside as damage (never fatal); what decodes has its metadata brought into range
/// (permission bits only, nanoseconds below one second).
pub fn store_snapshot_log(data: &[u8]) {
    if let Ok(snapshots) = decode_snapshot_log(data) {
        for s in snapshots {
            assert!(s.root_meta.perm <= 0o7777, "{:o}", s.root_meta.perm);
            assert!(s.root_meta.mtime_nsec <= 999_999_999);
        }
    }
}

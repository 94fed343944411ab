//! Arbitrary bytes as a tree object: decode errors are typed, never panics; what decodes
//! re-encodes to the same bytes (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use turku_store::decode::decode_tree;
use turku_store::tree::{encode_leaf, encode_split, TreeNode};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = decode_tree(data) {
        let again = match &node {
            TreeNode::Leaf(entries) => encode_leaf(entries),
            TreeNode::Split(parts) => encode_split(parts),
        };
        assert_eq!(again, data, "decoded tree must re-encode identically");
    }
});

#![no_main]
//! rsync file-list entries under every option combination the first byte selects
//! (protocol 27–32, varint flags, hard links, -c checksums, a tight byte bound), then the
//! stock sort.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turku_proto_rsync::fuzzing::rsync_flist(data));

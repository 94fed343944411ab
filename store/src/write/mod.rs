//! Writing snapshots: the streaming writer, its chunker, the packing pipeline behind it
//! (compression threads, pack files, fsync and indexing), and `ingest` of a local folder.

pub(crate) mod chunker;
pub(crate) mod ingest;
pub(crate) mod packer;
pub(crate) mod pool;
pub(crate) mod writer;

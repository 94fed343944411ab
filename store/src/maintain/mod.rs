//! Keeping a store healthy: `forget` and `gc` reclaim space, `verify` re-hashes everything,
//! `repair` rebuilds the index from packs and snapshot records, `stats` reports, and
//! [`retention`] selects what to forget.

pub(crate) mod gc;
pub(crate) mod repair;
pub mod retention;
pub(crate) mod stats;
pub(crate) mod verify;

//! Pure codecs over byte slices. Every decoder returns [`Decoded::Incomplete`] on partial
//! input and never changes its state unless it returns `Complete`.

pub mod flist;
pub mod handshake;
pub mod mux;
pub mod ndx;
pub mod prim;
pub mod sums;
pub mod token;

pub use prim::Decoded;

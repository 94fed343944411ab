//! The rsync wire protocol (client receiver tested against stock 3.5.0 at versions 27–32), as a
//! sans-io core plus a thin tokio adapter.
//!
//! Order of operations of a pull (client receiver over the daemon protocol):
//! 1. [`session::handshake::ClientHandshake`]: greeting, module, `AUTHREQD`, argv, compat
//!    flags, checksum negotiation, seed.
//! 2. [`session::receiver::ClientReceiver`]: filter list out, file list in (sorted as stock
//!    does), then the generator (requests + block sums from the caller's basis) and the
//!    receiver (tokens → reconstructed content → whole-file check, redo) interleaved, and
//!    the end-of-run DONE choreography.
//! 3. The caller sees everything through [`session::ReceiveSink`].
//!
//! Codecs live in [`codec`]; each returns [`Decoded::Incomplete`] on partial input and
//! bounds wire lengths with [`Limits`]. Every wire constant is in [`constants`].
//!
//! A pull with the tokio adapter (feature `tokio`), against any `AsyncRead + AsyncWrite`:
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn demo<S: turku_proto_rsync::ReceiveSink>(sink: &mut S) -> Result<(), turku_proto_rsync::Error> {
//! use turku_proto_rsync::io::{pull, PullConfig};
//! let stream = tokio::net::TcpStream::connect("127.0.0.1:873").await?;
//! let mut cfg = PullConfig::new("module");
//! cfg.user = "backup".into();
//! cfg.password = Some(b"secret".to_vec().into());
//! cfg.filter_rules = vec!["- *.tmp".into()];
//! let outcome = pull(stream, &cfg, sink).await?;
//! // 0 and 24 (files vanished during the run) count as success, as in the original Turku.
//! assert!(outcome.is_success());
//! # Ok(())
//! # }
//! ```
//!
//! ```
//! use turku_proto_rsync::codec::prim::{put_varint, decode_varint};
//! use turku_proto_rsync::Decoded;
//! let mut b = Vec::new();
//! put_varint(&mut b, 0x1ff);
//! assert_eq!(b, [0x81, 0xff]);
//! assert_eq!(decode_varint(&b[..1]).unwrap(), Decoded::Incomplete { needed: 1 });
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod checksum;
pub mod codec;
pub mod config;
pub mod constants;
pub mod delta;
pub mod error;
/// The fuzz targets' bodies, shared with the replay of their committed seeds.
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod session;
pub mod sort;

#[cfg(feature = "tokio")]
pub mod io;

pub use codec::flist::{FileEntry, FileKind, HardLink};
pub use codec::Decoded;
pub use config::{Secret, Timeouts};
pub use error::{DecodeError, Error, SinkError, Timeout};
pub use limits::Limits;
pub use session::sender::dir::DirSource;
pub use session::sender::{
    FileContent, PushOutcome, PushProgress, SendSource, SenderOptions,
};
pub use session::{Basis, EntryAction, MessageKind, Outcome, ReceiveSink, SenderStats};

//! Every on-wire constant of the rsync protocol, in one place.
//!
//! NEVER change a value here: each one is fixed by stock rsync and was checked against
//! rsync 3.5.0 on the wire (`spec/rsync.md`). Names follow stock rsync's so that the spec
//! and captures can be cross-read.

// ---- protocol versions (spec §1) ----

/// The version we announce (3.4.0+ announce 32; it is wire-identical to 31).
pub const PROTOCOL_VERSION: u32 = 32;
/// We never pre-release, so our sub-protocol is always 0.
pub const SUBPROTOCOL_VERSION: u32 = 0;
/// Lowest version any codec here understands; 27–29 are parameterised but not yet driven.
pub const MIN_PROTOCOL_VERSION: u32 = 27;
/// Lowest version the client receiver accepts (27–29: fixed-width ints, MD4, plain
/// client output; exercised against stock 3.5.0 forced down with our announcement).
pub const MIN_SUPPORTED_SESSION_PROTOCOL: u32 = 27;
/// Stock refuses peers announcing more than this (garbage detection).
pub const MAX_PROTOCOL_VERSION: u32 = 40;

// ---- daemon text protocol (spec §2) ----

pub const RSYNCD_PREFIX: &str = "@RSYNCD: ";
pub const RSYNCD_OK: &str = "@RSYNCD: OK";
pub const RSYNCD_EXIT: &str = "@RSYNCD: EXIT";
pub const RSYNCD_AUTHREQD: &str = "@RSYNCD: AUTHREQD ";
pub const ERROR_PREFIX: &str = "@ERROR";
/// Default daemon port.
pub const RSYNC_PORT: u16 = 873;

// ---- compat flags (spec §3.1) ----

pub const CF_INC_RECURSE: u32 = 1 << 0;
pub const CF_SYMLINK_TIMES: u32 = 1 << 1;
pub const CF_SYMLINK_ICONV: u32 = 1 << 2;
pub const CF_SAFE_FLIST: u32 = 1 << 3;
pub const CF_AVOID_XATTR_OPTIM: u32 = 1 << 4;
pub const CF_CHKSUM_SEED_FIX: u32 = 1 << 5;
pub const CF_INPLACE_PARTIAL_DIR: u32 = 1 << 6;
pub const CF_VARINT_FLIST_FLAGS: u32 = 1 << 7;
pub const CF_ID0_NAMES: u32 = 1 << 8;

/// Client-info string sent after `-e`: stock's letters minus `i` (no incremental recursion).
pub const CLIENT_INFO_NO_INC_RECURSE: &str = ".LsfxCIvu";

// ---- multiplexing (spec §3.3) ----

pub const MPLEX_BASE: u8 = 7;
pub const MAX_FRAME_PAYLOAD: usize = 0x00FF_FFFF;
pub const MSG_DATA: u8 = 0;
pub const MSG_ERROR_XFER: u8 = 1;
pub const MSG_INFO: u8 = 2;
pub const MSG_ERROR: u8 = 3;
pub const MSG_WARNING: u8 = 4;
pub const MSG_ERROR_SOCKET: u8 = 5;
pub const MSG_LOG: u8 = 6;
pub const MSG_CLIENT: u8 = 7;
pub const MSG_ERROR_UTF8: u8 = 8;
pub const MSG_REDO: u8 = 9;
pub const MSG_STATS: u8 = 10;
pub const MSG_IO_ERROR: u8 = 22;
pub const MSG_IO_TIMEOUT: u8 = 33;
pub const MSG_NOOP: u8 = 42;
pub const MSG_ERROR_EXIT: u8 = 86;
pub const MSG_SUCCESS: u8 = 100;
pub const MSG_DELETED: u8 = 101;
pub const MSG_NO_SEND: u8 = 102;
/// Stock's I/O buffer; we cut outgoing data frames at this size.
pub const IO_BUFFER_SIZE: usize = 32 * 1024;

// ---- file indexes (spec §3.5) ----

pub const NDX_DONE: i32 = -1;
pub const NDX_FLIST_EOF: i32 = -2;
pub const NDX_DEL_STATS: i32 = -3;
pub const NDX_FLIST_OFFSET: i32 = -101;

// ---- file-list flags (spec §5.2) ----

pub const XMIT_TOP_DIR: u32 = 1 << 0;
pub const XMIT_SAME_MODE: u32 = 1 << 1;
pub const XMIT_EXTENDED_FLAGS: u32 = 1 << 2;
/// Below protocol 28 bit 2 meant "same rdev".
pub const XMIT_SAME_RDEV_PRE28: u32 = 1 << 2;
pub const XMIT_SAME_UID: u32 = 1 << 3;
pub const XMIT_SAME_GID: u32 = 1 << 4;
pub const XMIT_SAME_NAME: u32 = 1 << 5;
pub const XMIT_LONG_NAME: u32 = 1 << 6;
pub const XMIT_SAME_TIME: u32 = 1 << 7;
pub const XMIT_SAME_RDEV_MAJOR: u32 = 1 << 8;
pub const XMIT_NO_CONTENT_DIR: u32 = 1 << 8;
pub const XMIT_HLINKED: u32 = 1 << 9;
pub const XMIT_SAME_DEV_PRE30: u32 = 1 << 10;
pub const XMIT_USER_NAME_FOLLOWS: u32 = 1 << 10;
pub const XMIT_RDEV_MINOR_8_PRE30: u32 = 1 << 11;
pub const XMIT_GROUP_NAME_FOLLOWS: u32 = 1 << 11;
pub const XMIT_HLINK_FIRST: u32 = 1 << 12;
pub const XMIT_IO_ERROR_ENDLIST: u32 = 1 << 12;
pub const XMIT_MOD_NSEC: u32 = 1 << 13;
pub const XMIT_SAME_ATIME: u32 = 1 << 14;
pub const XMIT_CRTIME_EQ_MTIME: u32 = 1 << 17;

/// Linux's PATH_MAX: stock refuses names at or above it.
pub const MAXPATHLEN: usize = 4096;

// ---- io_error bits (spec §5.6) ----

pub const IOERR_GENERAL: u32 = 1 << 0;
pub const IOERR_VANISHED: u32 = 1 << 1;
pub const IOERR_DEL_LIMIT: u32 = 1 << 2;
pub const IOERR_KNOWN_BITS: u32 = IOERR_GENERAL | IOERR_VANISHED | IOERR_DEL_LIMIT;

// ---- itemize flags (spec §6.2) ----

pub const ITEM_REPORT_ATIME: u16 = 1 << 0;
pub const ITEM_REPORT_CHANGE: u16 = 1 << 1;
pub const ITEM_REPORT_SIZE: u16 = 1 << 2;
pub const ITEM_REPORT_TIME: u16 = 1 << 3;
pub const ITEM_REPORT_PERMS: u16 = 1 << 4;
pub const ITEM_REPORT_OWNER: u16 = 1 << 5;
pub const ITEM_REPORT_GROUP: u16 = 1 << 6;
pub const ITEM_BASIS_TYPE_FOLLOWS: u16 = 1 << 11;
pub const ITEM_XNAME_FOLLOWS: u16 = 1 << 12;
pub const ITEM_IS_NEW: u16 = 1 << 13;
pub const ITEM_LOCAL_CHANGE: u16 = 1 << 14;
pub const ITEM_TRANSFER: u16 = 1 << 15;

// ---- block checksums (spec §6.3) ----

pub const BLOCK_SIZE: u32 = 700;
pub const MAX_BLOCK_SIZE: u32 = 1 << 17;
pub const OLD_MAX_BLOCK_SIZE: u32 = 1 << 29;
pub const SUM_LENGTH: usize = 16;
pub const SHORT_SUM_LENGTH: usize = 2;
pub const BLOCKSUM_BIAS: u32 = 10;
pub const MAX_DIGEST_LEN: usize = 64;
/// Largest literal run we would ever emit; stock 3.4.3/3.4.4 reject larger.
pub const CHUNK_SIZE: usize = 32 * 1024;

// ---- file modes (POSIX values, as carried in the file list) ----

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

// ---- exit codes (spec §7.5) ----

pub const RERR_OK: i32 = 0;
pub const RERR_SYNTAX: i32 = 1;
pub const RERR_PROTOCOL: i32 = 2;
pub const RERR_STARTCLIENT: i32 = 5;
pub const RERR_PARTIAL: i32 = 23;
pub const RERR_VANISHED: i32 = 24;
pub const RERR_DEL_LIMIT: i32 = 25;

// ---- checksum and auth digest names, in stock preference order ----

/// The transfer checksums we offer (no md4: its seed order is build-dependent upstream).
pub const CHECKSUM_NAMES: &[&str] = &["xxh128", "xxh3", "xxh64", "md5"];
/// Daemon-auth digests we offer in our greeting.
pub const AUTH_DIGEST_NAMES: &[&str] = &["sha512", "sha256", "sha1", "md5"];

// ---- server argv of a pull (spec §2.4) ----

pub const ARG_SERVER: &str = "--server";
pub const ARG_SENDER: &str = "--sender";
pub const ARG_NUMERIC_IDS: &str = "--numeric-ids";
/// Asks a receiving server to delete what the sender's list does not hold.
pub const ARG_DELETE: &str = "--delete";
/// Fixes the session's checksum seed (`--checksum-seed=N`); testing and reproducibility.
pub const ARG_CHECKSUM_SEED: &str = "--checksum-seed=";
/// The client's I/O timeout in seconds (`--timeout=N`): the sender then sends keep-alives
/// when it has nothing else to say, as it does for a stock client.
pub const ARG_TIMEOUT: &str = "--timeout=";
/// Mandatory "current directory" placeholder between options and paths.
pub const ARG_DOT: &str = ".";
/// The module root as a push's destination below the module name (`MODULE/./`). openrsync's
/// receiver (macOS 15+) strips `MODULE/` to an empty path it then fails to create, with
/// stock clients too; `./` names the same directory and stock daemons accept it alike.
pub const PUSH_MODULE_ROOT: &str = "./";
/// `-a` minus `r`'s position: stock orders the cluster `l [H] o g D t p r`, then `e<info>`.
pub const CLUSTER_LINKS: &str = "-l";
pub const CLUSTER_HARD_LINKS: char = 'H';
pub const CLUSTER_ARCHIVE_REST: &str = "ogDtpr";
pub const CLUSTER_CLIENT_INFO: char = 'e';
/// Filter rule prefix for an exclude (spec §4).
pub const FILTER_EXCLUDE_PREFIX: &str = "- ";

// ---- encodings (spec §3.4, §3.5) ----

/// NDX: a negative index follows.
pub const NDX_NEG_MARKER: u8 = 0xFF;
/// NDX: a 2- or 4-byte form follows.
pub const NDX_LONG_MARKER: u8 = 0xFE;
/// Longest vstring (two length bytes with the top bit as marker).
pub const MAX_VSTRING: usize = 0x7FFF;
/// longint: this int32 means "an int64 follows".
pub const LONGINT_ESCAPE: i32 = -1;

//! Bounds on every length read from the wire, checked before allocating, and on what a
//! peer can make us keep or redo. Every field is a tuning knob a caller may set per source;
//! the defaults suit a storage unit pulling from untrusted machines.

/// Estimated memory an entry of the file list costs us beyond its variable-length bytes
/// (name, symlink target, owner names, checksum): the `FileEntry` itself, held twice while
/// the list is sorted, plus the receiver's per-entry state, sort keys and duplicate sets.
pub const FLIST_ENTRY_OVERHEAD: u64 = 512;

/// Upper bounds applied to peer-supplied lengths and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest handshake line (greeting, MOTD line, `@ERROR`).
    pub max_line: usize,
    /// Largest payload of an out-of-band multiplexed message (text, ints). Stock caps
    /// messages near 5 KiB; data frames are streamed and not bounded by this.
    pub max_message: usize,
    /// Longest file name (prefix + suffix), bytes.
    pub max_name: usize,
    /// Longest symlink target, bytes.
    pub max_symlink: usize,
    /// Most entries in one file list.
    pub max_entries: usize,
    /// Most estimated memory the file list may cost us: the sum over entries of their
    /// variable-length bytes plus [`FLIST_ENTRY_OVERHEAD`]. The entry count alone lets a
    /// peer send cheap entries that are expensive to keep.
    pub max_file_list_bytes: u64,
    /// Longest vstring (checksum name lists, xnames).
    pub max_vstring: usize,
    /// Most blocks in one sum head a receiver accepts. A sender keeps at most this many
    /// sums: beyond it (a stock generator sends up to 32 M blocks for a basis above
    /// 2 TiB) it reads and drops them and sends that file whole as literal data.
    pub max_blocks: u32,
    /// Most bytes of block sums (weak + strong) one request may make a sender hold in
    /// memory for the file it is matching; larger requests are answered as above.
    pub max_sum_bytes: u64,
    /// Longest literal token accepted. Literals are streamed, so this only guards sanity.
    pub max_literal: u32,
    /// Most entries in a uid or gid name list.
    pub max_id_entries: usize,
    /// The bytes a file copies from its basis by block tokens may reach this many times the
    /// larger of its announced size and the basis size, plus `rebuilt_slack`: one 4-byte
    /// token names a whole block, so a peer must not make us read and hash the basis without
    /// end. Literal bytes are not counted (each costs the sender a byte on the wire), so a
    /// file that grew between listing and sending still arrives.
    pub rebuilt_size_factor: u64,
    /// Bytes a file may copy from its basis beyond `rebuilt_size_factor` times those sizes.
    pub rebuilt_slack: u64,
    /// Warning and error messages kept in the outcome and passed to the sink; later ones
    /// are counted in `Outcome::messages_dropped` and otherwise ignored.
    pub max_messages_kept: usize,
    /// Total text bytes of the messages kept (same treatment beyond it).
    pub max_message_bytes_kept: usize,
    /// MOTD lines kept; later ones are counted in `Outcome::motd_dropped` and ignored.
    pub max_motd_lines: usize,
    /// Total bytes of the MOTD lines kept (same treatment beyond it).
    pub max_motd_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 4096,
            max_message: 64 * 1024,
            max_name: crate::constants::MAXPATHLEN - 1,
            max_symlink: crate::constants::MAXPATHLEN - 1,
            max_entries: 50_000_000,
            // About 6 M entries of 100-byte names: larger trees set it per source.
            max_file_list_bytes: 4 << 30,
            max_vstring: crate::constants::MAX_VSTRING,
            // 4 GiB per 700-byte block bound; at most 2^31 / 128 KiB blocks at large sizes.
            max_blocks: 1 << 24,
            // A 1 TiB file at the largest block size needs 8 M blocks of 7 bytes.
            max_sum_bytes: 128 << 20,
            max_literal: 1 << 24,
            max_id_entries: 1 << 20,
            rebuilt_size_factor: 2,
            rebuilt_slack: 1 << 20,
            max_messages_kept: 1000,
            max_message_bytes_kept: 1 << 20,
            max_motd_lines: 100,
            max_motd_bytes: 16 * 1024,
        }
    }
}

impl Limits {
    /// The most bytes a file announced at `size` may copy from a basis of `basis_len` bytes.
    pub fn max_rebuilt(&self, size: i64, basis_len: u64) -> u64 {
        u64::try_from(size)
            .unwrap_or(0)
            .max(basis_len)
            .saturating_mul(self.rebuilt_size_factor)
            .saturating_add(self.rebuilt_slack)
    }
}

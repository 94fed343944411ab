//! Bounds on every length read from the wire, checked before allocating.

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
    /// Longest vstring (checksum name lists, xnames).
    pub max_vstring: usize,
    /// Most blocks in one sum head.
    pub max_blocks: u32,
    /// Longest literal token accepted. Literals are streamed, so this only guards sanity.
    pub max_literal: u32,
    /// Most entries in a uid or gid name list.
    pub max_id_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 4096,
            max_message: 64 * 1024,
            max_name: crate::constants::MAXPATHLEN - 1,
            max_symlink: crate::constants::MAXPATHLEN - 1,
            max_entries: 50_000_000,
            max_vstring: crate::constants::MAX_VSTRING,
            // 4 GiB per 700-byte block bound; at most 2^31 / 128 KiB blocks at large sizes.
            max_blocks: 1 << 24,
            max_literal: 1 << 24,
            max_id_entries: 1 << 20,
        }
    }
}

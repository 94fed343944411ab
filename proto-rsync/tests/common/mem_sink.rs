//! A receive sink that keeps everything the receiver delivers in memory, for replays and
//! recordings alike (the same sink both times, so the machine makes the same requests).

use std::collections::BTreeMap;

use turku_proto_rsync::{EntryAction, FileEntry, MessageKind, ReceiveSink, SinkError};

pub struct MemSink {
    /// Answer every entry as unchanged, as a store holding the previous snapshot does.
    pub have_all: bool,
    /// The basis offered for an entry; none by default.
    pub basis: fn(&FileEntry) -> Option<Vec<u8>>,
    /// By sorted index: what the entry said.
    pub entries: BTreeMap<u32, FileEntry>,
    pub files: BTreeMap<u32, Vec<u8>>,
    pub current: Vec<u8>,
    pub failed: Vec<String>,
    pub messages: Vec<String>,
}

impl Default for MemSink {
    fn default() -> Self {
        MemSink {
            have_all: false,
            basis: |_| None,
            entries: BTreeMap::new(),
            files: BTreeMap::new(),
            current: Vec::new(),
            failed: Vec::new(),
            messages: Vec::new(),
        }
    }
}

impl ReceiveSink for MemSink {
    type Basis = Vec<u8>;
    fn entry(&mut self, ndx: u32, e: &FileEntry) -> Result<EntryAction, SinkError> {
        self.entries.insert(ndx, e.clone());
        Ok(if self.have_all {
            EntryAction::Skip
        } else {
            EntryAction::Transfer
        })
    }
    fn basis(&mut self, _: u32, e: &FileEntry) -> Result<Option<Vec<u8>>, SinkError> {
        Ok((self.basis)(e))
    }
    fn begin_content(&mut self, _: u32, _: &FileEntry) -> Result<(), SinkError> {
        self.current.clear();
        Ok(())
    }
    fn content(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.current.extend_from_slice(data);
        Ok(())
    }
    fn end_content(&mut self, ndx: u32, _: &FileEntry, verified: bool) -> Result<(), SinkError> {
        let data = std::mem::take(&mut self.current);
        if verified {
            self.files.insert(ndx, data);
        }
        Ok(())
    }
    fn file_failed(&mut self, _: u32, e: &FileEntry, reason: &str) -> Result<(), SinkError> {
        self.failed.push(format!("{}: {reason}", e.name_lossy()));
        Ok(())
    }
    fn message(&mut self, _: MessageKind, text: &str) {
        self.messages.push(text.to_owned());
    }
}

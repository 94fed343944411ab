#![no_main]
//! The whole client sender after setup (requests, item flags, sum heads, block sums,
//! phase DONEs, the goodbye, delete stats, messages) fed arbitrary multiplexed input as
//! the receiver's generator would send it, over a small in-memory list whose files are
//! read from memory (one fails to open, one fails midway).
use libfuzzer_sys::fuzz_target;
use turku_proto_rsync::checksum::ChecksumKind;
use turku_proto_rsync::session::handshake::Negotiated;
use turku_proto_rsync::session::sender::{ClientSender, SenderOptions, Status};
use turku_proto_rsync::{FileContent, FileEntry, HardLink, Limits, SendSource, SinkError};

struct Source;

struct Content {
    data: Vec<u8>,
    at: usize,
    fail_at: Option<usize>,
}

impl FileContent for Content {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SinkError> {
        if self.fail_at.is_some_and(|f| self.at >= f) {
            return Err("injected read error".into());
        }
        let n = buf.len().min(self.data.len() - self.at).min(3000);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl SendSource for Source {
    type Content = Content;
    fn open(&mut self, ndx: u32, e: &FileEntry) -> Result<Content, SinkError> {
        if e.name == b"locked" {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied).into());
        }
        let data: Vec<u8> = (0..e.size as usize).map(|i| (i * 7 + ndx as usize) as u8).collect();
        Ok(Content {
            data,
            at: 0,
            fail_at: (e.name == b"cut").then_some(2500),
        })
    }
}

fn list() -> Vec<FileEntry> {
    let mut dot = FileEntry::new(b".".to_vec(), 0o40755, 0);
    dot.top_dir = true;
    let mut lead = FileEntry::new(b"big".to_vec(), 0o100644, 9000);
    lead.hard_link = HardLink::Leader;
    let mut follow = FileEntry::new(b"d/same".to_vec(), 0o100644, 9000);
    follow.hard_link = HardLink::Follower { first: 1 };
    let mut link = FileEntry::new(b"link".to_vec(), 0o120777, 3);
    link.symlink = Some(b"big".to_vec());
    vec![
        dot,
        lead,
        FileEntry::new(b"d".to_vec(), 0o40755, 0),
        follow,
        FileEntry::new(b"small".to_vec(), 0o100600, 5),
        FileEntry::new(b"locked".to_vec(), 0o100600, 10),
        FileEntry::new(b"cut".to_vec(), 0o100600, 6000),
        link,
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let neg = Negotiated {
        protocol: 30 + u32::from(sel % 3),
        compat_flags: if sel & 0x10 != 0 { 0x1fe } else { 0x2e },
        checksum: if sel & 0x20 != 0 {
            ChecksumKind::Xxh128
        } else {
            ChecksumKind::Md5 { seed_fix: true }
        },
        seed: 12345,
        motd: Vec::new(),
        motd_dropped: 0,
    };
    let opts = SenderOptions {
        hard_links: sel & 0x40 != 0,
        numeric_ids: sel & 0x80 == 0,
        delete: sel & 0x08 != 0,
        filter_rules: Vec::new(),
        limits: Limits {
            max_blocks: 1 << 12,
            max_sum_bytes: 64 * 1024,
            max_messages_kept: 8,
            max_message_bytes_kept: 256,
            ..Limits::default()
        },
    };
    let Ok(mut tx) = ClientSender::<Source>::new(neg, opts, list(), 0) else {
        return;
    };
    let mut source = Source;
    for chunk in rest.chunks(64) {
        if tx.feed(chunk).is_err() {
            return;
        }
        // Local work (a file streaming) runs to its end before more input.
        loop {
            match tx.step(&mut source) {
                Ok(Status::NeedInput) => {
                    let _ = tx.take_output();
                    if !tx.has_local_work() {
                        break;
                    }
                }
                _ => return,
            }
        }
    }
});

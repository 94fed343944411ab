//! How the store's snapshots and entries are shown: the JSON of `snapshots --json` and
//! `ls --json`, and the text lines of `snapshots` and `ls`. Scripts parse these, so their
//! shape is part of the command line's interface.

use std::io::{self, Write};

use serde_json::json;
use turku_store::{format_ns, EntryData, EntryKind, Snapshot, TreeEntry};

/// One `snapshots` line: machine, source, name, end time and sizes, tab-separated.
pub fn write_snapshot_line(out: &mut impl Write, s: &Snapshot) -> io::Result<()> {
    writeln!(
        out,
        "{}\t{}\t{}\t{}\t{} files\t{} bytes\t{} new bytes",
        s.machine,
        s.source,
        s.name,
        s.time_end_rfc3339(),
        s.stats.files,
        s.stats.bytes,
        s.stats.new_bytes
    )
}

/// A snapshot as `snapshots --json` lists it.
pub fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "machine": s.machine,
        "source": s.source,
        "name": s.name,
        "base": s.base,
        "time_begin": s.time_begin_rfc3339(),
        "time_end": s.time_end_rfc3339(),
        "root": s.root.to_hex(),
        "stats": s.stats,
    })
}

/// The `type` an entry has in `ls --json`.
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::CharDevice => "char-device",
        EntryKind::BlockDevice => "block-device",
        EntryKind::Fifo => "fifo",
        EntryKind::Socket => "socket",
    }
}

/// A directory entry as `ls --json` lists it; a name that is not UTF-8 also carries
/// `name_hex`, so the exact bytes survive the lossy `name`.
pub fn entry_json(e: &TreeEntry) -> serde_json::Value {
    let mut v = json!({
        "name": String::from_utf8_lossy(&e.name),
        "type": kind_name(e.kind),
        "mode": format!("{:04o}", e.meta.perm),
        "uid": e.meta.uid,
        "gid": e.meta.gid,
        "mtime": e.meta.mtime_sec,
        "mtime_nsec": e.meta.mtime_nsec,
        "size": e.file_size(),
    });
    if std::str::from_utf8(&e.name).is_err() {
        v["name_hex"] = json!(hex_string(&e.name));
    }
    match &e.data {
        EntryData::Symlink { target } => v["target"] = json!(String::from_utf8_lossy(target)),
        EntryData::Device { rdev } => {
            v["major"] = json!(turku_store::dev_major(*rdev));
            v["minor"] = json!(turku_store::dev_minor(*rdev));
        }
        EntryData::File { link_group, .. } if *link_group != 0 => {
            v["link_group"] = json!(link_group)
        }
        _ => {}
    }
    v
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `ls -l` style type and permission column, set-id and sticky bits included.
pub fn mode_string(e: &TreeEntry) -> String {
    let t = match e.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
        EntryKind::Fifo => 'p',
        EntryKind::Socket => 's',
    };
    let p = e.meta.perm;
    let bit = |mask: u32, c: char| if p & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (p & x != 0, p & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        t,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// One `ls` line: the name and a symlink's target are written as raw bytes, so a name
/// that is not UTF-8 comes out exactly as stored.
pub fn write_ls_line(out: &mut impl Write, e: &TreeEntry) -> io::Result<()> {
    let size = match e.data {
        EntryData::Device { rdev } => format!(
            "{},{}",
            turku_store::dev_major(rdev),
            turku_store::dev_minor(rdev)
        ),
        _ => e.file_size().to_string(),
    };
    let when = format_ns(
        e.meta
            .mtime_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(e.meta.mtime_nsec)),
    );
    write!(
        out,
        "{} {:>6} {:>6} {:>12} {} ",
        mode_string(e),
        e.meta.uid,
        e.meta.gid,
        size,
        when
    )?;
    out.write_all(&e.name)?;
    if let EntryData::Symlink { target } = &e.data {
        out.write_all(b" -> ")?;
        out.write_all(target)?;
    }
    out.write_all(b"\n")
}

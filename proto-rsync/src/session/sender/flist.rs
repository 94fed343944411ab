//! Phase 1 of a push: the filter list (only with `--delete`, spec §4), then the file list
//! in the caller's order (spec §5.1–§5.7), its end marker, and the uid/gid name lists
//! unless `--numeric-ids`. The list is encoded a slice at a time so a huge one does not
//! sit in memory twice.

use super::{Ctx, SenderOptions, SentList, State};
use crate::codec::flist::{
    encode_id_list, FileEntry, FlistEncoder, FlistOptions, HardLink, IdList,
};
use crate::codec::prim::put_i32;
use crate::constants::*;
use crate::error::Error;
use crate::session::args::encode_filter_list;
use crate::session::Step;
use crate::sort::sort_order;
use std::collections::{BTreeMap, HashSet};

/// Checks the caller's list and sorts it as both sides will (spec §5.8).
pub(crate) fn prepare(
    mut entries: Vec<FileEntry>,
    protocol: u32,
    opts: &SenderOptions,
) -> Result<SentList, Error> {
    let bad = |index: usize, reason: &'static str| Error::BadFileList { index, reason };
    if entries.len() > opts.limits.max_entries || entries.len() >= i32::MAX as usize {
        return Err(bad(entries.len(), "more entries than Limits::max_entries"));
    }
    let mut names: HashSet<&[u8]> = HashSet::with_capacity(entries.len());
    let mut dirs: HashSet<&[u8]> = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let n = &e.name[..];
        if n.is_empty() || n.len() > opts.limits.max_name {
            return Err(bad(i, "name empty or longer than Limits::max_name"));
        }
        if n.contains(&0) || n[0] == b'/' || n.ends_with(b"/") {
            return Err(bad(i, "name holds a NUL or a leading or trailing '/'"));
        }
        if n != b"."
            && n.split(|&c| c == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(bad(i, "name holds an empty, '.' or '..' component"));
        }
        if crate::codec::flist::FileKind::from_mode(e.mode).is_none() {
            return Err(bad(i, "mode has an unknown file type"));
        }
        if !names.insert(n) {
            return Err(bad(i, "name listed twice"));
        }
        // The receiver creates each entry inside its parent: the parent must come first.
        match n.iter().rposition(|&c| c == b'/') {
            Some(slash) if !dirs.contains(&n[..slash]) => {
                return Err(bad(i, "parent directory is not listed before the entry"))
            }
            _ => {}
        }
        if e.is_dir() {
            dirs.insert(n);
        }
        match e.hard_link {
            HardLink::Follower { first } => {
                let leader = entries.get(first as usize).filter(|_| (first as usize) < i);
                match leader {
                    Some(l) if l.hard_link == HardLink::Leader && !e.is_dir() => {}
                    _ => return Err(bad(i, "hard-link follower without an earlier leader")),
                }
            }
            HardLink::Leader if e.is_dir() => {
                return Err(bad(i, "a directory cannot be hard-linked"))
            }
            HardLink::DevIno { .. } => {
                return Err(bad(i, "dev/ino hard links are for protocols below 30"))
            }
            _ => {}
        }
    }
    drop((names, dirs));
    adopt_leader_attributes(&mut entries);
    if protocol < 30 && opts.hard_links {
        identify_links_by_dev_ino(&mut entries, protocol);
    }
    let sorted = sort_order(&entries, protocol)
        .into_iter()
        .map(|w| w as u32)
        .collect();
    Ok(SentList { entries, sorted })
}

/// Gives each hard-link follower its leader's attributes. They are not sent for a
/// follower (30+): the receiver copies the leader's, and compares the next entry's with
/// those. A caller's follower may differ (a store lstats each link on its own, so a chmod
/// between two lstats shows), and the list we keep must be the one the receiver builds.
fn adopt_leader_attributes(entries: &mut [FileEntry]) {
    for i in 0..entries.len() {
        let HardLink::Follower { first } = entries[i].hard_link else {
            continue;
        };
        // Checked above: the leader comes earlier.
        let (before, rest) = entries.split_at_mut(i);
        let (Some(lead), Some(e)) = (before.get(first as usize), rest.first_mut()) else {
            continue;
        };
        e.mode = lead.mode;
        e.size = lead.size;
        e.mtime = lead.mtime;
        e.mtime_nsec = lead.mtime_nsec;
        e.uid = lead.uid;
        e.gid = lead.gid;
        e.user_name.clone_from(&lead.user_name);
        e.group_name.clone_from(&lead.group_name);
        e.rdev = lead.rdev;
        e.symlink.clone_from(&lead.symlink);
        e.checksum.clone_from(&lead.checksum);
    }
}

/// Below protocol 30 hard links travel as (dev, ino) pairs, which the receiver groups by:
/// we have no inode numbers to give, only groups, so each group gets its leader's position
/// as its "inode" on one made-up device. Below 28 every regular file carries a pair, so a
/// file outside any group gets its own position.
fn identify_links_by_dev_ino(entries: &mut [FileEntry], protocol: u32) {
    const LIST_DEVICE: i64 = 0;
    for (i, e) in entries.iter_mut().enumerate() {
        let ino = match e.hard_link {
            HardLink::Leader => i as i64,
            HardLink::Follower { first } => i64::from(first),
            HardLink::None if protocol < 28 && e.is_regular() => i as i64,
            _ => continue,
        };
        e.hard_link = HardLink::DevIno {
            dev: LIST_DEVICE,
            ino,
        };
    }
}

/// Below 29 the receiver's filter parser knows only `+ ` and `- ` rules; stock refuses to
/// send others ("filter rules are too modern for remote rsync"), and so do we.
pub(crate) fn check_filter_rules(opts: &SenderOptions, protocol: u32) -> Result<(), Error> {
    if protocol >= 29 || !opts.delete {
        return Ok(());
    }
    match opts
        .filter_rules
        .iter()
        .find(|r| !r.is_empty() && !r.starts_with("+ ") && !r.starts_with("- "))
    {
        Some(r) => Err(Error::FilterTooModern {
            rule: r.clone(),
            protocol,
        }),
        None => Ok(()),
    }
}

/// Encoding the list.
#[derive(Debug)]
pub(crate) struct ListPhase {
    next: usize,
    encoder: FlistEncoder,
    io_error: u32,
}

impl ListPhase {
    /// Queues the filter list when the receiver reads one.
    pub(crate) fn start(ctx: &mut Ctx, io_error: u32) -> ListPhase {
        // A receiving server reads a filter list only with --delete; sending one
        // otherwise (even the empty one) desynchronises the stream (spec §4).
        if ctx.opts.delete {
            let mut fl = Vec::new();
            encode_filter_list(&ctx.opts.filter_rules, &mut fl);
            ctx.send(&fl);
        }
        let p = ctx.neg.protocol;
        let fo = FlistOptions::archive(p, ctx.neg.compat_flags, ctx.opts.hard_links);
        ListPhase {
            next: 0,
            encoder: FlistEncoder::new(fo),
            io_error: io_error & IOERR_KNOWN_BITS,
        }
    }

    pub(crate) fn step<C>(&mut self, ctx: &mut Ctx) -> Result<Step<State<C>>, Error> {
        while self.next < ctx.list.entries.len() {
            if ctx.output_full() {
                return Ok(Step::NeedInput);
            }
            let e = &ctx.list.entries[self.next];
            let mut buf = Vec::with_capacity(e.name.len() + 32);
            if e.user_name.is_some() || e.group_name.is_some() {
                // Inline names are for incremental recursion; the lists carry them here.
                let mut plain = e.clone();
                plain.user_name = None;
                plain.group_name = None;
                self.encoder.encode(&plain, &mut buf);
            } else {
                self.encoder.encode(e, &mut buf);
            }
            ctx.send(&buf);
            ctx.spend(buf.len() as u64);
            self.next += 1;
        }
        let mut tail = Vec::new();
        self.encoder.encode_end(self.io_error, &mut tail);
        ctx.outcome.io_error |= self.io_error;
        if !ctx.opts.numeric_ids {
            let (uids, gids) = id_lists(&ctx.list.entries);
            let p = ctx.neg.protocol;
            let id0 = ctx.neg.compat_flags & CF_ID0_NAMES != 0;
            encode_id_list(&uids, p, id0, &mut tail);
            encode_id_list(&gids, p, id0, &mut tail);
        }
        // Below 30 the end marker has no room for it: it follows the lists.
        if ctx.neg.protocol < 30 {
            put_i32(&mut tail, self.io_error as i32);
        }
        ctx.send(&tail);
        ctx.flush_pending();
        tracing::debug!(entries = ctx.list.entries.len(), "file list sent");
        Ok(Step::Next(State::Transfer(
            super::transfer::TransferPhase::new(),
        )))
    }
}

/// The uid and gid name lists (spec §5.7): each id once, with the name its entries carry.
fn id_lists(entries: &[FileEntry]) -> (IdList, IdList) {
    let mut users: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut groups: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for e in entries {
        if let Some(n) = &e.user_name {
            users.entry(e.uid).or_insert_with(|| n.clone());
        }
        if let Some(n) = &e.group_name {
            groups.entry(e.gid).or_insert_with(|| n.clone());
        }
    }
    let list = |mut m: BTreeMap<u32, Vec<u8>>| IdList {
        id0_name: m.remove(&0),
        entries: m.into_iter().collect(),
    };
    (list(users), list(groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, mode: u32) -> FileEntry {
        FileEntry::new(name.as_bytes().to_vec(), mode, 0)
    }

    #[test]
    fn bad_lists_are_refused_with_the_entry_named() {
        let o = SenderOptions::default();
        let cases: Vec<(Vec<FileEntry>, usize)> = vec![
            (vec![e(".", S_IFDIR), e("a/b", S_IFREG)], 1),
            (vec![e(".", S_IFDIR), e("a", S_IFREG), e("a", S_IFREG)], 2),
            (vec![e(".", S_IFDIR), e("../x", S_IFREG)], 1),
            (vec![e(".", S_IFDIR), e("/abs", S_IFREG)], 1),
            (vec![e(".", S_IFDIR), e("x", 0o7_0000)], 1),
            (
                vec![e(".", S_IFDIR), {
                    let mut f = e("f", S_IFREG);
                    f.hard_link = HardLink::Follower { first: 0 };
                    f
                }],
                1,
            ),
        ];
        for (list, at) in cases {
            match prepare(list, 32, &o) {
                Err(Error::BadFileList { index, .. }) => assert_eq!(index, at),
                other => panic!("expected BadFileList, got {other:?}"),
            }
        }
        let mut lead = e("a", S_IFREG);
        lead.hard_link = HardLink::Leader;
        let mut follow = e("b", S_IFREG);
        follow.hard_link = HardLink::Follower { first: 1 };
        let l = prepare(vec![e(".", S_IFDIR), lead, follow, e("d", S_IFDIR)], 32, &o).unwrap();
        assert_eq!(l.sorted, [0, 1, 2, 3]);
    }

    /// Below 29 only `+ `/`- ` rules travel; stock refuses the rest, and so do we.
    #[test]
    fn modern_filter_rules_are_refused_below_29() {
        let mut o = SenderOptions {
            delete: true,
            filter_rules: vec!["- *.tmp".into(), "P keep/".into()],
            ..SenderOptions::default()
        };
        assert!(check_filter_rules(&o, 29).is_ok());
        assert!(matches!(
            check_filter_rules(&o, 28),
            Err(Error::FilterTooModern { rule, protocol: 28 }) if rule == "P keep/"
        ));
        o.filter_rules.pop();
        assert!(check_filter_rules(&o, 27).is_ok());
    }

    /// A follower listed with its own mode, times and owners leaves `prepare` with its
    /// leader's: what the receiver will believe it has.
    #[test]
    fn followers_take_their_leaders_attributes() {
        let mut lead = e("a", S_IFREG | 0o644);
        (lead.size, lead.mtime, lead.mtime_nsec, lead.uid, lead.gid) = (5, 1_000, 7, 10, 20);
        lead.user_name = Some(b"alice".to_vec());
        lead.hard_link = HardLink::Leader;
        let mut follow = e("b", S_IFREG | 0o600);
        (follow.size, follow.mtime, follow.uid, follow.gid) = (6, 2_000, 11, 21);
        follow.hard_link = HardLink::Follower { first: 1 };
        let o = SenderOptions::default();
        let l = prepare(vec![e(".", S_IFDIR), lead.clone(), follow], 32, &o).unwrap();
        let b = &l.entries[2];
        assert_eq!(b.name, b"b");
        assert_eq!(b.hard_link, HardLink::Follower { first: 1 });
        let attrs = |x: &FileEntry| {
            (
                x.mode,
                x.size,
                x.mtime,
                x.mtime_nsec,
                x.uid,
                x.gid,
                x.user_name.clone(),
            )
        };
        assert_eq!(attrs(b), attrs(&lead));
    }
}

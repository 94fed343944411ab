//! `verify`: re-hash every indexed blob, cross-check rows and records, and name the
//! snapshots and paths a bad or missing blob affects.

use std::collections::{HashMap, HashSet};
use std::fs;

use rusqlite::TransactionBehavior;
use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::format::id::Id;
use crate::format::pack;
use crate::format::tree::{EntryData, TreeNode};
use crate::index;
use crate::index::session::SessionState;
use crate::snapshot::{self, Replayed, Snapshot};
use crate::store::Store;

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong (a blob id, a pack, a snapshot).
    pub subject: String,
    pub reason: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    pub problems: Vec<Problem>,
    /// `machine/source/snapshot: path` for every file or directory a problem affects.
    pub affected: Vec<String>,
    /// Snapshots whose commit a crash interrupted (never visible); `gc` rolls them back.
    pub interrupted_commits: Vec<String>,
    /// Snapshots whose `forget` a crash cut short (logged, row still there); `gc` completes it.
    pub interrupted_forgets: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Re-hashes every indexed blob (or only those of one snapshot) and walks snapshots,
    /// naming the files any bad or missing blob affects.
    pub fn verify(&self, only: Option<&Snapshot>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut bad: HashSet<Id> = HashSet::new();
        let snapshots = match only {
            Some(s) => vec![s.clone()],
            None => {
                self.verify_packs(&mut report, &mut bad)?;
                self.verify_records(&mut report)?;
                self.snapshots(None, None)?
            }
        };
        let mut subtree_ok: HashMap<Id, bool> = HashMap::new();
        let mut checked: HashMap<Id, bool> = HashMap::new();
        for snap in &snapshots {
            report.snapshots += 1;
            let label = format!("{}/{}/{}", snap.machine, snap.source, snap.name);
            let mut walker = Walker {
                store: self,
                full: only.is_none(),
                bad: &bad,
                checked: &mut checked,
                subtree_ok: &mut subtree_ok,
                report: &mut report,
                label: &label,
            };
            walker.tree(&snap.root, b"")?;
        }
        report.problems.sort_by(|a, b| a.subject.cmp(&b.subject));
        report.problems.dedup();
        Ok(report)
    }

    fn verify_packs(&self, report: &mut VerifyReport, bad: &mut HashSet<Id>) -> Result<()> {
        let packs: Vec<(i64, String)> = {
            let db = self.db();
            let mut stmt = db.prepare("SELECT id, name FROM packs ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut seen: HashSet<Id> = HashSet::new();
        for (pack_id, name) in packs {
            report.packs += 1;
            let path = pack::pack_path(&self.packs_dir(), &name);
            let trailer = match pack::read_pack_trailer(&path, &name) {
                Ok(t) => t,
                Err(e) => {
                    report.problems.push(Problem {
                        subject: format!("pack {name}"),
                        reason: e.to_string(),
                    });
                    let db = self.db();
                    let mut stmt = db.prepare("SELECT id FROM blobs WHERE pack = ?1")?;
                    let ids = stmt.query_map([pack_id], |r| r.get::<_, Vec<u8>>(0))?;
                    for id in ids {
                        if let Some(id) = Id::from_slice(&id?) {
                            bad.insert(id);
                            seen.insert(id);
                        }
                    }
                    continue;
                }
            };
            let bytes = fs::read(&path).io_ctx("read pack", &path)?;
            let mut d = crate::store::new_decompressor(&path)?;
            for b in &trailer {
                let Some(row) = index::find_blob(&self.db(), &b.id)? else {
                    continue;
                };
                if row.pack_id != pack_id || row.location.offset != b.offset {
                    continue;
                }
                report.blobs += 1;
                seen.insert(b.id);
                let stored = usize::try_from(b.offset)
                    .ok()
                    .and_then(|o| bytes.get(o..o + b.stored_len as usize));
                let outcome = if row.location != *b {
                    Err("index and pack trailer disagree about this blob")
                } else {
                    match stored {
                        Some(s) => pack::check_blob(b, s, &mut d),
                        None => Err("blob lies past the end of the pack"),
                    }
                };
                if let Err(reason) = outcome {
                    report.problems.push(Problem {
                        subject: format!("blob {} (pack {name} offset {})", b.id, b.offset),
                        reason: reason.into(),
                    });
                    bad.insert(b.id);
                }
            }
        }
        let total: i64 = self
            .db()
            .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?;
        if total as usize != seen.len() {
            let db = self.db();
            let mut stmt = db.prepare("SELECT id FROM blobs")?;
            let ids = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            for id in ids {
                if let Some(id) = Id::from_slice(&id?) {
                    if !seen.contains(&id) {
                        report.problems.push(Problem {
                            subject: format!("blob {id}"),
                            reason: "indexed, but no pack trailer lists it there".into(),
                        });
                        bad.insert(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every snapshot row has its record in the log and the other way round.
    fn verify_records(&self, report: &mut VerifyReport) -> Result<()> {
        let rows = self.snapshots(None, None)?;
        let logged = snapshot::read_log(self)?;
        for line in logged.damaged_lines() {
            report.problems.push(Problem {
                subject: format!("snapshot log line {}", line.number),
                reason: format!(
                    "{} (a damaged record? kept as is: mend it by hand, then run repair)",
                    line.reason
                ),
            });
        }
        let in_log: HashMap<_, _> = logged.snapshots.iter().map(|s| (s.key(), s.root)).collect();
        for s in &rows {
            let subject = format!("snapshot {}/{}/{}", s.machine, s.source, s.name);
            match in_log.get(&s.key()) {
                Some(root) if *root == s.root => {}
                None if logged.forgotten.get(&s.key()) == Some(&s.root) => report
                    .interrupted_forgets
                    .push(format!("{}/{}/{}", s.machine, s.source, s.name)),
                Some(_) => report.problems.push(Problem {
                    subject,
                    reason: "the snapshot log names another root".into(),
                }),
                None => report.problems.push(Problem {
                    subject,
                    reason: "no record in the snapshot log".into(),
                }),
            }
        }
        for (s, writer) in snapshot::records_without_rows(self, &logged)? {
            let subject = format!("{}/{}/{}", s.machine, s.source, s.name);
            match writer {
                Some(SessionState::Dead) => report.interrupted_commits.push(subject),
                Some(SessionState::Live) => {} // a commit in progress
                Some(SessionState::Ended) | None => report.problems.push(Problem {
                    subject: format!("snapshot {subject}"),
                    reason: "in the snapshot log but not in the index (run repair)".into(),
                }),
            }
        }
        Ok(())
    }

    /// Deletes the rows of snapshots whose last log line is a forget: what a `forget` killed
    /// between logging and deleting the row leaves (the log decides; the row is the cache).
    /// Run by `gc` before it frees anything, and before it compacts those lines away.
    pub(crate) fn complete_interrupted_forgets(&self, logged: &Replayed) -> Result<usize> {
        if logged.forgotten.is_empty() {
            return Ok(0);
        }
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut completed = 0;
        for ((machine, source, name), root) in &logged.forgotten {
            // Another root: not this snapshot's forget (the log lost its record), a problem.
            let row = index::find_snapshot(&tx, machine, source, name)?;
            if let Some(row) = row.filter(|row| row.root == *root) {
                tracing::info!("completing the interrupted forget of {machine}/{source}/{name}");
                index::delete_snapshot(&tx, &row)?;
                completed += 1;
            }
        }
        tx.commit()?;
        Ok(completed)
    }
}

struct Walker<'a> {
    store: &'a Store,
    full: bool,
    bad: &'a HashSet<Id>,
    checked: &'a mut HashMap<Id, bool>,
    subtree_ok: &'a mut HashMap<Id, bool>,
    report: &'a mut VerifyReport,
    label: &'a str,
}

impl Walker<'_> {
    /// Whether a blob is present and intact (packs were re-hashed already in a full run).
    fn blob_ok(&mut self, id: &Id) -> Result<bool> {
        if let Some(&ok) = self.checked.get(id) {
            return Ok(ok);
        }
        let ok = if self.full {
            !self.bad.contains(id) && index::find_blob(&self.store.db(), id)?.is_some()
        } else {
            self.report.blobs += 1;
            self.store.read_blob(id).is_ok()
        };
        if !ok {
            let reason = if index::find_blob(&self.store.db(), id)?.is_none() {
                "referenced but missing"
            } else {
                "corrupt"
            };
            self.report.problems.push(Problem {
                subject: format!("blob {id}"),
                reason: reason.into(),
            });
        }
        self.checked.insert(*id, ok);
        Ok(ok)
    }

    fn affected(&mut self, path: &[u8]) {
        let shown = if path.is_empty() {
            b"/".as_slice()
        } else {
            path
        };
        self.report.affected.push(format!(
            "{}: {}",
            self.label,
            String::from_utf8_lossy(shown)
        ));
    }

    fn tree(&mut self, id: &Id, path: &[u8]) -> Result<bool> {
        if let Some(&ok) = self.subtree_ok.get(id) {
            if ok {
                return Ok(true);
            }
        }
        let mut ok = true;
        if !self.blob_ok(id)? {
            self.affected(path);
            self.subtree_ok.insert(*id, false);
            return Ok(false);
        }
        let node = match self.store.read_tree_node(id) {
            Ok(n) => n,
            Err(e) => {
                self.report.problems.push(Problem {
                    subject: format!("tree {id}"),
                    reason: e.to_string(),
                });
                self.affected(path);
                self.subtree_ok.insert(*id, false);
                return Ok(false);
            }
        };
        let entries = match node {
            TreeNode::Leaf(entries) => entries,
            TreeNode::Split(parts) => {
                for (_, part) in parts {
                    ok &= self.tree(&part, path)?;
                }
                self.subtree_ok.insert(*id, ok);
                return Ok(ok);
            }
        };
        for e in entries {
            let mut child = path.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&e.name);
            match &e.data {
                EntryData::Dir { tree } => ok &= self.tree(tree, &child)?,
                EntryData::File { chunks, .. } => {
                    let mut file_ok = true;
                    for c in chunks {
                        file_ok &= self.blob_ok(&c.id)?;
                    }
                    if !file_ok {
                        self.affected(&child);
                    }
                    ok &= file_ok;
                }
                _ => {}
            }
        }
        self.subtree_ok.insert(*id, ok);
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    /// A store with two committed snapshots of different one-file trees.
    fn store_with_two_snapshots() -> (tempfile::TempDir, Store, Snapshot, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
        let mut snaps = Vec::new();
        for content in [b"one".as_slice(), b"two"] {
            let src = dir.path().join(String::from_utf8_lossy(content).as_ref());
            fs::create_dir(&src).unwrap();
            fs::write(src.join("f"), content).unwrap();
            snaps.push(store.ingest_dir("m", "s", &src, None).unwrap().0);
        }
        let second = snaps.pop().unwrap();
        let first = snaps.pop().unwrap();
        (dir, store, first, second)
    }

    /// What a `forget` killed between logging the forget and deleting the row leaves:
    /// `verify` notes it, `gc` completes it.
    #[test]
    fn a_forget_cut_short_is_completed_by_gc() {
        let (_dir, store, first, second) = store_with_two_snapshots();
        snapshot::remove_record(&store, &first).unwrap();
        let report = store.verify(None).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(report.interrupted_forgets.len(), 1);
        let gc = store.gc().unwrap();
        assert_eq!(gc.completed_forgets, 1);
        assert!(gc.freed_blobs > 0);
        assert_eq!(store.snapshots(None, None).unwrap(), vec![second]);
        let report = store.verify(None).unwrap();
        assert!(report.is_clean() && report.interrupted_forgets.is_empty());
    }

    /// A forget line whose last record named another root is not this row's forget (the
    /// log lost the row's record): `gc` leaves the row, `verify` reports a problem.
    #[test]
    fn a_forget_of_another_root_is_not_completed() {
        let (_dir, store, first, second) = store_with_two_snapshots();
        let mut same_name = second.clone();
        same_name.name = first.name.clone();
        snapshot::write_record(&store, &same_name, 999_999).unwrap();
        snapshot::remove_record(&store, &same_name).unwrap();
        assert_eq!(store.gc().unwrap().completed_forgets, 0);
        assert_eq!(store.snapshots(None, None).unwrap().len(), 2);
        let report = store.verify(None).unwrap();
        assert!(report.interrupted_forgets.is_empty());
        assert!(!report.is_clean());
    }
}

//! The commit index: which transaction ended where, when, and what it dropped.
//!
//! Owns: [`IndexEntry`] (one per commit, commit prepared, abort, abort prepared, prepare and
//! named restore point), the in-memory, LSN-ordered [`CommitIndex`] shared by the indexer
//! (the only writer), the feed policy and the admin/CLI listings, and its on-disk form: an
//! append-only file `delay/commit-index` in the data directory made of self-checking
//! entries (length, CRC-32C, fields), so a torn last write is detected and cut off.
//!
//! Bounded: at most `max_entries` entries, and entries older than the oldest local segment
//! are dropped (the walsender cannot serve that WAL any more). The file is rewritten
//! (temp file + rename) when it holds twice as many entries as memory.
//!
//! Must not: read WAL (that is [`super::indexer`]) or decide what a feed may send
//! ([`super::policy`]).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::lsn::Lsn;
use crate::wal::{RelFileLocator, XactKind, XactRecord};

/// What an index entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Commit,
    CommitPrepared,
    Abort,
    AbortPrepared,
    Prepare,
    RestorePoint,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::Commit => 1,
            EntryKind::CommitPrepared => 2,
            EntryKind::Abort => 3,
            EntryKind::AbortPrepared => 4,
            EntryKind::Prepare => 5,
            EntryKind::RestorePoint => 6,
        }
    }
    fn from_code(c: u8) -> Option<EntryKind> {
        Some(match c {
            1 => EntryKind::Commit,
            2 => EntryKind::CommitPrepared,
            3 => EntryKind::Abort,
            4 => EntryKind::AbortPrepared,
            5 => EntryKind::Prepare,
            6 => EntryKind::RestorePoint,
            _ => return None,
        })
    }
    /// Commits are what `recovery_min_apply_delay` (and so a delayed feed) waits for.
    pub fn is_commit(self) -> bool {
        matches!(self, EntryKind::Commit | EntryKind::CommitPrepared)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Commit => "commit",
            EntryKind::CommitPrepared => "commit_prepared",
            EntryKind::Abort => "abort",
            EntryKind::AbortPrepared => "abort_prepared",
            EntryKind::Prepare => "prepare",
            EntryKind::RestorePoint => "restore_point",
        }
    }
}

impl From<XactKind> for EntryKind {
    fn from(k: XactKind) -> EntryKind {
        match k {
            XactKind::Commit => EntryKind::Commit,
            XactKind::CommitPrepared => EntryKind::CommitPrepared,
            XactKind::Abort => EntryKind::Abort,
            XactKind::AbortPrepared => EntryKind::AbortPrepared,
            XactKind::Prepare => EntryKind::Prepare,
        }
    }
}

/// One transaction end or restore point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Start of the record.
    pub lsn: Lsn,
    /// Just past the record.
    pub end: Lsn,
    /// Start of the first record of this transaction seen in the WAL (its lock records,
    /// its first change); `lsn` when unknown. The tripwire and `advance --before-xid` stop
    /// here, so the standby does not even take the transaction's locks.
    pub first: Lsn,
    pub kind: EntryKind,
    /// `xact_time` (restore point: `rp_time`), µs since 2000-01-01 UTC.
    pub time: i64,
    /// Top-level xid (0 for restore points).
    pub xid: u32,
    /// Relations whose files the commit drops (DROP TABLE, TRUNCATE, ...).
    pub dropped: Vec<RelFileLocator>,
    /// Restore point name.
    pub name: Option<String>,
}

impl IndexEntry {
    pub fn from_xact(lsn: Lsn, end: Lsn, x: XactRecord) -> IndexEntry {
        IndexEntry {
            lsn,
            end,
            first: lsn,
            kind: x.kind.into(),
            time: x.xact_time,
            xid: x.xid,
            dropped: x.dropped_rels,
            name: None,
        }
    }

    pub fn restore_point(lsn: Lsn, end: Lsn, time: i64, name: String) -> IndexEntry {
        IndexEntry {
            lsn,
            end,
            first: lsn,
            kind: EntryKind::RestorePoint,
            time,
            xid: 0,
            dropped: Vec::new(),
            name: Some(name),
        }
    }

    /// A commit that drops relations: what the tripwire stops before.
    pub fn drops_relations(&self) -> bool {
        self.kind.is_commit() && !self.dropped.is_empty()
    }

    /// `base/5/16384, base/5/16387`.
    pub fn dropped_paths(&self) -> String {
        self.dropped
            .iter()
            .map(RelFileLocator::path)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "lsn": self.lsn.to_string(),
            "first_lsn": self.first.to_string(),
            "end_lsn": self.end.to_string(),
            "kind": self.kind.as_str(),
            "time": super::time::format_pg_time(self.time),
            "xid": self.xid,
            "dropped_relations": self.dropped.iter().map(RelFileLocator::path).collect::<Vec<_>>(),
            "name": self.name,
        })
    }

    /// Appends the on-disk form: `u32 len | u32 crc32c(body) | body`, body =
    /// `lsn u64 | end u64 | time i64 | xid u32 | kind u8 | name_len u8 | ndropped u16 |
    /// dropped (3 × u32 each) | name | first u64`. Little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let name = self.name.as_deref().unwrap_or("").as_bytes();
        let name = name.get(..name.len().min(255)).unwrap_or(&[]);
        let ndropped = self.dropped.len().min(u16::MAX as usize);
        let mut body = Vec::with_capacity(
            ndropped
                .saturating_mul(12)
                .saturating_add(32)
                .saturating_add(name.len()),
        );
        body.extend_from_slice(&self.lsn.0.to_le_bytes());
        body.extend_from_slice(&self.end.0.to_le_bytes());
        body.extend_from_slice(&self.time.to_le_bytes());
        body.extend_from_slice(&self.xid.to_le_bytes());
        body.push(self.kind.code());
        body.push(name.len() as u8);
        body.extend_from_slice(&(ndropped as u16).to_le_bytes());
        for r in self.dropped.iter().take(ndropped) {
            body.extend_from_slice(&r.spc.to_le_bytes());
            body.extend_from_slice(&r.db.to_le_bytes());
            body.extend_from_slice(&r.rel.to_le_bytes());
        }
        body.extend_from_slice(name);
        body.extend_from_slice(&self.first.0.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
    }

    /// Decodes one entry from the front of `b`: `Some((entry, bytes used))`, `None` when the
    /// bytes are incomplete or corrupt (a torn write: the rest of the file is ignored).
    pub fn decode(b: &[u8]) -> Option<(IndexEntry, usize)> {
        let u32_at = |b: &[u8], at: usize| -> Option<u32> {
            let s = b.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes(s.try_into().ok()?))
        };
        let u64_at = |b: &[u8], at: usize| -> Option<u64> {
            let s = b.get(at..at.checked_add(8)?)?;
            Some(u64::from_le_bytes(s.try_into().ok()?))
        };
        let len = u32_at(b, 0)? as usize;
        let crc = u32_at(b, 4)?;
        let body = b.get(8..8usize.checked_add(len)?)?;
        if crc32c::crc32c(body) != crc || len < 32 {
            return None;
        }
        let lsn = Lsn(u64_at(body, 0)?);
        let end = Lsn(u64_at(body, 8)?);
        let time = u64_at(body, 16)? as i64;
        let xid = u32_at(body, 24)?;
        let kind = EntryKind::from_code(*body.get(28)?)?;
        let name_len = usize::from(*body.get(29)?);
        let nd = usize::from(u16::from_le_bytes([*body.get(30)?, *body.get(31)?]));
        let mut dropped = Vec::with_capacity(nd.min(1024));
        let mut at = 32usize;
        for _ in 0..nd {
            dropped.push(RelFileLocator {
                spc: u32_at(body, at)?,
                db: u32_at(body, at.checked_add(4)?)?,
                rel: u32_at(body, at.checked_add(8)?)?,
            });
            at = at.checked_add(12)?;
        }
        let name = body.get(at..at.checked_add(name_len)?)?;
        let first_at = at.checked_add(name_len)?;
        let first = Lsn(u64_at(body, first_at)?);
        if first_at.checked_add(8)? != body.len() || first > lsn {
            return None;
        }
        let name =
            (kind == EntryKind::RestorePoint).then(|| String::from_utf8_lossy(name).into_owned());
        Some((
            IndexEntry {
                lsn,
                end,
                first,
                kind,
                time,
                xid,
                dropped,
                name,
            },
            8usize.checked_add(len)?,
        ))
    }
}

/// What the index covers, published on a watch for feeds to wake on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Every transaction end starting before this position is in the index. Feeds never
    /// send past it (a commit not yet decoded cannot be held back).
    pub upto: Lsn,
    /// Oldest position whose records are indexed (entries before it may be missing).
    pub from: Lsn,
    /// Bumped whenever entries are added or removed.
    pub version: u64,
    /// Bumped when entries are removed from the end (timeline switch): cached scan
    /// positions are no longer valid.
    pub truncations: u64,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<IndexEntry>,
    /// The commits that drop relations (few), for the tripwire.
    drops: Vec<IndexEntry>,
}

/// The shared in-memory index. Cheap to clone.
#[derive(Clone)]
pub struct CommitIndex {
    inner: Arc<RwLock<Inner>>,
    coverage_tx: Arc<watch::Sender<Coverage>>,
    coverage: watch::Receiver<Coverage>,
}

impl Default for CommitIndex {
    fn default() -> Self {
        CommitIndex::new()
    }
}

impl CommitIndex {
    pub fn new() -> CommitIndex {
        let (tx, rx) = watch::channel(Coverage::default());
        CommitIndex {
            inner: Arc::new(RwLock::new(Inner::default())),
            coverage_tx: Arc::new(tx),
            coverage: rx,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to coverage changes.
    pub fn coverage(&self) -> watch::Receiver<Coverage> {
        self.coverage.clone()
    }
    pub fn coverage_now(&self) -> Coverage {
        *self.coverage.borrow()
    }

    /// Publishes new coverage (indexer only).
    pub fn set_coverage(&self, from: Lsn, upto: Lsn) {
        self.coverage_tx.send_if_modified(|c| {
            if c.upto != upto || c.from != from {
                c.upto = upto;
                c.from = from;
                c.version = c.version.wrapping_add(1);
                true
            } else {
                false
            }
        });
    }

    fn bump(&self) {
        self.coverage_tx
            .send_modify(|c| c.version = c.version.wrapping_add(1));
    }

    /// Appends entries in LSN order; entries at or before the last one are ignored (a
    /// re-scan after a restart sees them again).
    pub fn push(&self, new: impl IntoIterator<Item = IndexEntry>) -> usize {
        let mut g = self.write();
        let mut n = 0usize;
        for e in new {
            if g.entries.back().is_some_and(|l| l.lsn >= e.lsn) {
                continue;
            }
            if e.drops_relations() {
                g.drops.push(e.clone());
            }
            g.entries.push_back(e);
            n = n.saturating_add(1);
        }
        drop(g);
        if n > 0 {
            self.bump();
        }
        n
    }

    /// Drops entries at or after `lsn` (the WAL there was replaced by a new timeline).
    pub fn truncate_from(&self, lsn: Lsn) -> usize {
        let mut g = self.write();
        let keep = g.entries.partition_point(|e| e.lsn < lsn);
        let n = g.entries.len().saturating_sub(keep);
        g.entries.truncate(keep);
        g.drops.retain(|e| e.lsn < lsn);
        drop(g);
        if n > 0 {
            self.coverage_tx.send_modify(|c| {
                c.version = c.version.wrapping_add(1);
                c.truncations = c.truncations.saturating_add(1);
            });
        }
        n
    }

    /// Drops entries before `lsn` and beyond the newest `max` entries.
    pub fn prune(&self, before: Lsn, max: usize) -> usize {
        let mut g = self.write();
        let old = g.entries.partition_point(|e| e.lsn < before);
        let over = g.entries.len().saturating_sub(max);
        let n = old.max(over);
        g.entries.drain(..n);
        let oldest = g.entries.front().map_or(Lsn(u64::MAX), |e| e.lsn);
        g.drops.retain(|e| e.lsn >= oldest);
        n
    }

    pub fn len(&self) -> usize {
        self.read().entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn last(&self) -> Option<IndexEntry> {
        self.read().entries.back().cloned()
    }
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.read().entries.front().map(|e| e.lsn)
    }

    /// Runs `f` on the entries starting at or after `from`, in LSN order.
    pub fn with_from<R>(
        &self,
        from: Lsn,
        f: impl FnOnce(&mut dyn Iterator<Item = &IndexEntry>) -> R,
    ) -> R {
        let g = self.read();
        let i = g.entries.partition_point(|e| e.lsn < from);
        let mut it = g.entries.range(i..);
        f(&mut it)
    }

    /// The end of the last entry starting before `lsn` (`None` when there is none).
    pub fn last_end_before(&self, lsn: Lsn) -> Option<Lsn> {
        let g = self.read();
        let i = g.entries.partition_point(|e| e.lsn < lsn);
        i.checked_sub(1)
            .and_then(|i| g.entries.get(i))
            .map(|e| e.end)
    }

    /// Commits that drop relations, in LSN order.
    pub fn drops(&self) -> Vec<IndexEntry> {
        self.read().drops.clone()
    }

    /// All entries matching `pred`, at most `limit`.
    pub fn select(&self, limit: usize, pred: impl Fn(&IndexEntry) -> bool) -> Vec<IndexEntry> {
        self.read()
            .entries
            .iter()
            .filter(|e| pred(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// A copy of every entry (tests, file rewrite).
    pub fn snapshot(&self) -> Vec<IndexEntry> {
        self.read().entries.iter().cloned().collect()
    }
}

/// The index file in `dir` (the data directory).
pub fn index_path(data_dir: &Path) -> PathBuf {
    data_dir.join("delay").join("commit-index")
}

/// Reads the index file: entries in LSN order up to the first torn or corrupt entry, and the
/// length of the valid prefix.
pub fn load(path: &Path) -> io::Result<(Vec<IndexEntry>, u64)> {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    }
    let mut out: Vec<IndexEntry> = Vec::new();
    let mut at = 0usize;
    while let Some((e, n)) = buf.get(at..).and_then(IndexEntry::decode) {
        at = at.saturating_add(n);
        if out.last().is_some_and(|l| l.lsn >= e.lsn) {
            continue;
        }
        out.push(e);
    }
    Ok((out, at as u64))
}

/// The append side of the index file.
pub struct IndexFile {
    path: PathBuf,
    file: File,
    /// Entries in the file (including pruned ones not yet rewritten away).
    pub entries_in_file: usize,
}

impl IndexFile {
    /// Opens (creating) the file and cuts it to `valid_len` (dropping a torn tail).
    pub fn open(path: &Path, valid_len: u64, entries: usize) -> io::Result<IndexFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
        }
        Ok(IndexFile {
            path: path.to_path_buf(),
            file,
            entries_in_file: entries,
        })
    }

    /// Appends entries (one write; fsync is left to [`IndexFile::sync`]).
    pub fn append(&mut self, entries: &[IndexEntry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len().saturating_mul(48));
        for e in entries {
            e.encode(&mut buf);
        }
        self.file.write_all(&buf)?;
        self.entries_in_file = self.entries_in_file.saturating_add(entries.len());
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Another handle on the open file (to fsync it on a blocking thread).
    pub fn clone_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Replaces the file with exactly `entries` ([`crate::statefile::write_atomic`]).
    pub fn rewrite(&mut self, entries: &[IndexEntry]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len().saturating_mul(48));
        for e in entries {
            e.encode(&mut buf);
        }
        crate::statefile::write_atomic(&self.path, &buf)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.entries_in_file = entries.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lsn: u64, kind: EntryKind, time: i64, xid: u32, drops: usize) -> IndexEntry {
        IndexEntry {
            lsn: Lsn(lsn),
            end: Lsn(lsn + 40),
            first: Lsn(lsn.saturating_sub(8)),
            kind,
            time,
            xid,
            dropped: (0..drops)
                .map(|i| RelFileLocator {
                    spc: 1663,
                    db: 5,
                    rel: 16384 + i as u32,
                })
                .collect(),
            name: None,
        }
    }

    #[test]
    fn encode_decode_and_torn_tail() {
        let mut buf = Vec::new();
        let a = entry(100, EntryKind::Commit, 7, 700, 2);
        let b = IndexEntry::restore_point(Lsn(200), Lsn(300), 9, "before_upgrade".into());
        a.encode(&mut buf);
        b.encode(&mut buf);
        let (da, n) = IndexEntry::decode(&buf).unwrap();
        assert_eq!(da, a);
        let (db, m) = IndexEntry::decode(&buf[n..]).unwrap();
        assert_eq!(db, b);
        assert_eq!(n + m, buf.len());
        assert_eq!(a.dropped_paths(), "base/5/16384, base/5/16385");
        // every truncation and every single-byte corruption is rejected, never a panic
        for cut in 0..buf.len() - m {
            if cut != n {
                assert!(IndexEntry::decode(&buf[..cut]).map(|(_, k)| k) != Some(cut));
            }
        }
        for i in 0..n {
            let mut c = buf.clone();
            c[i] ^= 0x5a;
            if let Some((e, _)) = IndexEntry::decode(&c) {
                assert_eq!(e, a, "corruption at {i} went unnoticed");
            }
        }
    }

    #[test]
    fn file_round_trip_cuts_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let path = index_path(d.path());
        let mut f = IndexFile::open(&path, 0, 0).unwrap();
        let es: Vec<_> = (1..=5)
            .map(|i| entry(i * 100, EntryKind::Commit, i as i64, i as u32, 0))
            .collect();
        f.append(&es).unwrap();
        // a torn write
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[9, 0, 0, 0, 1, 2])
            .unwrap();
        let (loaded, len) = load(&path).unwrap();
        assert_eq!(loaded, es);
        let mut f = IndexFile::open(&path, len, loaded.len()).unwrap();
        f.append(&[entry(600, EntryKind::Abort, 6, 6, 0)]).unwrap();
        let (loaded, _) = load(&path).unwrap();
        assert_eq!(loaded.len(), 6);
        f.rewrite(&loaded[3..]).unwrap();
        assert_eq!(load(&path).unwrap().0.len(), 3);
    }

    #[test]
    fn index_order_prune_truncate() {
        let ix = CommitIndex::new();
        let v0 = ix.coverage_now().version;
        assert_eq!(
            ix.push((1..=10).map(|i| entry(i * 10, EntryKind::Commit, i as i64, i as u32, 0))),
            10
        );
        assert!(ix.coverage_now().version > v0);
        // duplicates from a re-scan are ignored
        assert_eq!(ix.push([entry(50, EntryKind::Commit, 5, 5, 0)]), 0);
        assert_eq!(ix.truncate_from(Lsn(85)), 2);
        assert_eq!(ix.last().unwrap().lsn, Lsn(80));
        assert_eq!(ix.prune(Lsn(25), 100), 2);
        assert_eq!(ix.prune(Lsn(0), 3), 3);
        assert_eq!(ix.first_lsn(), Some(Lsn(60)));
        let n = ix.with_from(Lsn(61), |it| it.count());
        assert_eq!(n, 2);
    }
}

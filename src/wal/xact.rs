//! Bodies of the records walrelay interprets: transaction end records (`xl_xact_commit`,
//! `xl_xact_abort`, and `PREPARE`'s `TwoPhaseFileHeader`; xact.h, twophase.c, parsed like
//! `ParseCommitRecord`/`ParseAbortRecord` in xactdesc.c) and restore points
//! (`xl_restore_point`, xlog_internal.h).
//!
//! Owns: those layouts. Must not: decide what to do with a commit (delay, stop) or do IO.

use super::record::{Record, RM_XACT_ID, RM_XLOG_ID};
use super::{le_u32, le_u64};

/// `XLOG_XACT_OPMASK`.
pub const XLOG_XACT_OPMASK: u8 = 0x70;
pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_PREPARE: u8 = 0x10;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// `XLOG_XACT_HAS_INFO`: an `xl_xact_xinfo` follows `xact_time`.
pub const XLOG_XACT_HAS_INFO: u8 = 0x80;

pub const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
/// Called `XACT_XINFO_HAS_RELFILENODES` before PostgreSQL 16; same layout.
pub const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
pub const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
pub const XACT_XINFO_HAS_AE_LOCKS: u32 = 1 << 6;
pub const XACT_XINFO_HAS_GID: u32 = 1 << 7;
/// PostgreSQL 15+: an `xl_xact_stats_items` follows the relfilelocators.
pub const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// `XLOG_RESTORE_POINT` (an `RM_XLOG_ID` record).
pub const XLOG_RESTORE_POINT: u8 = 0x70;
/// `MAXFNAMELEN`, the size of `xl_restore_point.rp_name`.
const RESTORE_POINT_NAME_LEN: usize = 64;

/// `sizeof(RelFileLocator)`, `sizeof(SharedInvalidationMessage)`, `sizeof(xl_xact_origin)`.
const LOCATOR_LEN: usize = 12;
const INVAL_MSG_LEN: usize = 16;
const ORIGIN_LEN: usize = 16;
/// `sizeof(xl_xact_stats_item)`: `{int kind; Oid dboid; Oid objoid}` in 15–17,
/// `{int kind; Oid dboid; uint32 objid_lo; uint32 objid_hi}` in 18.
const STATS_ITEM_LENS: [usize; 2] = [12, 16];

/// A relation file (`RelFileLocator` / `RelFileNode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelFileLocator {
    /// Tablespace OID (1663 `pg_default`, 1664 `pg_global`).
    pub spc: u32,
    /// Database OID (0 for shared relations).
    pub db: u32,
    /// `relfilenode` / `relNumber`.
    pub rel: u32,
}

impl RelFileLocator {
    /// The main fork's path relative to the data directory, as `relpathperm` (and so
    /// pg_waldump's `rels:` list) prints it for the default and global tablespaces; other
    /// tablespaces are shown as `pg_tblspc/<spc>/<db>/<rel>` (the real path also has a
    /// version directory).
    pub fn path(&self) -> String {
        match self.spc {
            1664 => format!("global/{}", self.rel),
            1663 => format!("base/{}/{}", self.db, self.rel),
            spc => format!("pg_tblspc/{spc}/{}/{}", self.db, self.rel),
        }
    }
}

/// Which transaction end a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XactKind {
    Commit,
    CommitPrepared,
    Abort,
    AbortPrepared,
    Prepare,
}

/// The parts of a transaction record walrelay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XactRecord {
    pub kind: XactKind,
    /// `xact_time` (for `Prepare`: `prepared_at`), µs since 2000-01-01 UTC.
    pub xact_time: i64,
    /// The transaction that ended: the prepared transaction's xid (`xl_xact_twophase`) for
    /// `CommitPrepared`/`AbortPrepared`, the `TwoPhaseFileHeader` xid for `Prepare`, else the
    /// record's `xl_xid`.
    pub xid: u32,
    /// Relations whose files are dropped by this commit/abort (`xl_xact_relfilelocators`).
    pub dropped_rels: Vec<RelFileLocator>,
}

/// Bounds-checked cursor over main data.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let v = le_u32(self.b, self.at)?;
        self.at = self.at.checked_add(4)?;
        Some(v)
    }
    /// A non-negative `int` count.
    fn count(&mut self) -> Option<usize> {
        let v = self.u32()? as i32;
        usize::try_from(v).ok()
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        let to = self.at.checked_add(n)?;
        if to > self.b.len() {
            return None;
        }
        self.at = to;
        Some(())
    }
    fn skip_items(&mut self, n: usize, each: usize) -> Option<()> {
        self.skip(n.checked_mul(each)?)
    }
    /// A NUL-terminated string (skipped).
    fn skip_cstr(&mut self) -> Option<()> {
        let rest = self.b.get(self.at..)?;
        let nul = rest.iter().position(|&c| c == 0)?;
        self.skip(nul.checked_add(1)?)
    }
}

struct Parsed {
    twophase_xid: Option<u32>,
    rels: Vec<RelFileLocator>,
    /// Whether the parse consumed the main data exactly.
    exact: bool,
}

/// Parses the variable part after `xact_time` (`ParseCommitRecord` when `commit`, else
/// `ParseAbortRecord`), with `stats_len` as the size of one dropped-stats item.
fn parse_end_record(main: &[u8], info: u8, commit: bool, stats_len: usize) -> Option<Parsed> {
    let mut c = Cursor { b: main, at: 8 };
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        c.u32()?
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        c.skip(8)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = c.count()?;
        c.skip_items(n, 4)?;
    }
    let mut rels = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        let n = c.count()?;
        // Bound the allocation by the bytes actually present.
        if n > main.len() / LOCATOR_LEN {
            return None;
        }
        rels.reserve(n);
        for _ in 0..n {
            let spc = c.u32()?;
            let db = c.u32()?;
            let rel = c.u32()?;
            rels.push(RelFileLocator { spc, db, rel });
        }
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = c.count()?;
        c.skip_items(n, stats_len)?;
    }
    if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = c.count()?;
        c.skip_items(n, INVAL_MSG_LEN)?;
    }
    let mut twophase_xid = None;
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        twophase_xid = Some(c.u32()?);
        if xinfo & XACT_XINFO_HAS_GID != 0 {
            c.skip_cstr()?;
        }
    }
    if xinfo & XACT_XINFO_HAS_ORIGIN != 0 {
        c.skip(ORIGIN_LEN)?;
    }
    Some(Parsed {
        twophase_xid,
        rels,
        exact: c.at == main.len(),
    })
}

/// Decodes a transaction commit, abort or prepare record; `None` for anything else
/// (other resource managers, assignments, invalidations) or for malformed main data.
///
/// The dropped-stats item size changed in PostgreSQL 18 (12 → 16 bytes) and a record does
/// not carry its version: the parse whose length consumes the main data exactly wins (they
/// cannot both, unless no stats items are listed, when the size does not matter); if
/// neither is exact, the first that stays in bounds is used.
pub fn decode_xact(r: &Record) -> Option<XactRecord> {
    if r.rmid != RM_XACT_ID {
        return None;
    }
    let op = r.info & XLOG_XACT_OPMASK;
    let kind = match op {
        XLOG_XACT_COMMIT => XactKind::Commit,
        XLOG_XACT_COMMIT_PREPARED => XactKind::CommitPrepared,
        XLOG_XACT_ABORT => XactKind::Abort,
        XLOG_XACT_ABORT_PREPARED => XactKind::AbortPrepared,
        XLOG_XACT_PREPARE => XactKind::Prepare,
        _ => return None,
    };
    let main = r.main_data()?;
    if kind == XactKind::Prepare {
        // TwoPhaseFileHeader: magic u32, total_len u32, xid u32, database Oid,
        // prepared_at TimestampTz (offset 16), owner, counts..., then the gid and state.
        let xid = le_u32(main, 8)?;
        let prepared_at = le_u64(main, 16)? as i64;
        return Some(XactRecord {
            kind,
            xact_time: prepared_at,
            xid,
            dropped_rels: Vec::new(),
        });
    }
    let xact_time = le_u64(main, 0)? as i64;
    let commit = matches!(kind, XactKind::Commit | XactKind::CommitPrepared);
    let mut fallback = None;
    let mut chosen = None;
    for stats_len in STATS_ITEM_LENS {
        if let Some(p) = parse_end_record(main, r.info, commit, stats_len) {
            if p.exact {
                chosen = Some(p);
                break;
            }
            if fallback.is_none() {
                fallback = Some(p);
            }
        }
    }
    let p = chosen.or(fallback)?;
    Some(XactRecord {
        kind,
        xact_time,
        xid: p.twophase_xid.unwrap_or(r.xid),
        dropped_rels: p.rels,
    })
}

/// Decodes an `XLOG_RESTORE_POINT` record: `(rp_time, rp_name)`. `None` for anything else.
pub fn decode_restore_point(r: &Record) -> Option<(i64, String)> {
    if r.rmid != RM_XLOG_ID || r.rm_info() != XLOG_RESTORE_POINT {
        return None;
    }
    let main = r.main_data()?;
    let time = le_u64(main, 0)? as i64;
    let name = main.get(8..8 + RESTORE_POINT_NAME_LEN)?;
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Some((time, String::from_utf8_lossy(name.get(..len)?).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::record::build::record;
    use super::*;
    use crate::lsn::Lsn;

    fn rec(rmid: u8, info: u8, xid: u32, main: &[u8]) -> Record {
        let data = record(rmid, info, xid, main);
        Record {
            lsn: Lsn(0x100),
            end: Lsn(0x200),
            xid,
            rmid,
            info,
            data: data.into(),
        }
    }

    fn commit_body(xinfo: u32, stats_len: usize) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&123_456_789i64.to_le_bytes());
        m.extend_from_slice(&xinfo.to_le_bytes());
        m.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]); // dbinfo
        m.extend_from_slice(&2i32.to_le_bytes()); // subxacts
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&1i32.to_le_bytes()); // rels
        for v in [1663u32, 5, 16384] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&2i32.to_le_bytes()); // dropped stats
        m.extend(std::iter::repeat_n(0u8, 2 * stats_len));
        m.extend_from_slice(&1i32.to_le_bytes()); // invals
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&777u32.to_le_bytes()); // twophase xid
        m.extend_from_slice(b"my gid\0");
        m.extend_from_slice(&[9; 16]); // origin (unaligned)
        m
    }

    #[test]
    fn commit_prepared_with_every_section() {
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILELOCATORS
            | XACT_XINFO_HAS_DROPPED_STATS
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE
            | XACT_XINFO_HAS_GID
            | XACT_XINFO_HAS_ORIGIN;
        for stats_len in [12, 16] {
            let r = rec(1, 0x30 | 0x80, 0, &commit_body(xinfo, stats_len));
            let x = decode_xact(&r).unwrap();
            assert_eq!(x.kind, XactKind::CommitPrepared);
            assert_eq!(x.xid, 777);
            assert_eq!(x.xact_time, 123_456_789);
            assert_eq!(x.dropped_rels[0].path(), "base/5/16384");
        }
    }

    #[test]
    fn plain_and_other_records() {
        let r = rec(1, 0x00, 42, &5i64.to_le_bytes());
        let x = decode_xact(&r).unwrap();
        assert_eq!((x.kind, x.xid, x.xact_time), (XactKind::Commit, 42, 5));
        assert!(x.dropped_rels.is_empty());
        let r = rec(1, 0x20, 43, &6i64.to_le_bytes());
        assert_eq!(decode_xact(&r).unwrap().kind, XactKind::Abort);
        // Assignment / invalidations / other rmgrs / truncated bodies.
        assert!(decode_xact(&rec(1, 0x50, 1, &[0; 16])).is_none());
        assert!(decode_xact(&rec(10, 0x00, 1, &[0; 16])).is_none());
        assert!(decode_xact(&rec(1, 0x00, 1, &[0; 7])).is_none());
        assert!(decode_xact(&rec(1, 0x80, 1, &[0; 9])).is_none());
        // Prepare: TwoPhaseFileHeader.
        let mut m = Vec::new();
        for v in [0x57F9_4534u32, 200, 900, 5] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&99i64.to_le_bytes());
        m.extend_from_slice(&[0; 40]);
        let x = decode_xact(&rec(1, 0x10, 900, &m)).unwrap();
        assert_eq!((x.kind, x.xid, x.xact_time), (XactKind::Prepare, 900, 99));
        // Restore point.
        let mut m = 77i64.to_le_bytes().to_vec();
        let mut name = [0u8; 64];
        name[..4].copy_from_slice(b"rp_1");
        m.extend_from_slice(&name);
        let r = rec(0, XLOG_RESTORE_POINT, 0, &m);
        assert_eq!(decode_restore_point(&r), Some((77, "rp_1".to_string())));
        assert!(decode_restore_point(&rec(0, 0x40, 0, &m)).is_none());
        assert!(decode_restore_point(&rec(0, XLOG_RESTORE_POINT, 0, &m[..40])).is_none());
    }
}

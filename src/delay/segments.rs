//! Reading transaction records back from segment files in a directory (walrelay's data
//! directory, or a local copy of archived segments).
//!
//! Owns: picking the file that holds a position (highest timeline not above the one asked
//! for, a complete segment preferred over a `.partial`), reading ranges from it, and the
//! offline scan behind `walrelay xacts -D DIR`: every segment decoded in order with
//! [`RecordDecoder`], a new decoder started after a gap or a decoding error. Must not: write.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::lsn::{Lsn, TimelineId};
use crate::store::scan::{self, SegmentFile};
use crate::wal::{decode_restore_point, decode_xact, PageHeader, RecordDecoder};

use super::index::IndexEntry;

/// The file holding segment `segno` for timeline `tli` (or an ancestor).
fn pick(segs: &[SegmentFile], segno: u64, tli: TimelineId, seg_size: u64) -> Option<&SegmentFile> {
    segs.iter()
        .filter(|s| s.segno == segno && s.tli <= tli && (s.partial || s.size == seg_size))
        .max_by_key(|s| (s.tli, !s.partial))
}

/// Reads up to `max` bytes at `lsn` (never past the segment end) from the segment file of
/// timeline `tli` (or the newest ancestor timeline that has it).
pub fn read_at(
    dir: &Path,
    seg_size: u64,
    tli: TimelineId,
    lsn: Lsn,
    max: usize,
) -> io::Result<Vec<u8>> {
    let (segs, _) = scan::list(dir, seg_size)?;
    let segno = lsn.segno(seg_size);
    let f = pick(&segs, segno, tli, seg_size).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no segment file for {lsn} on timeline {tli} in \"{}\"",
                dir.display()
            ),
        )
    })?;
    let off = lsn.segment_offset(seg_size);
    let n = (max as u64).min(seg_size.saturating_sub(off)) as usize;
    let mut buf = vec![0u8; n];
    let file = File::open(dir.join(&f.name))?;
    let mut done = 0usize;
    while done < n {
        let Some(dst) = buf.get_mut(done..) else {
            break;
        };
        let k = file.read_at(dst, off.saturating_add(done as u64))?;
        if k == 0 {
            break;
        }
        done = done.saturating_add(k);
    }
    buf.truncate(done);
    Ok(buf)
}

/// The oldest segment start present in `dir`, if any.
pub fn oldest_segment(dir: &Path, seg_size: u64) -> io::Result<Option<Lsn>> {
    let (segs, _) = scan::list(dir, seg_size)?;
    Ok(segs
        .iter()
        .map(|s| Lsn(s.segno.saturating_mul(seg_size)))
        .min())
}

/// The segment size written in the long header of any segment file in `dir`.
pub fn detect_segment_size(dir: &Path) -> io::Result<Option<u64>> {
    let (segs, _) = scan::list(dir, 16 << 20)?;
    let (more, _) = scan::list(dir, 1 << 30)?;
    for s in segs.iter().chain(more.iter()) {
        let mut b = [0u8; 40];
        let f = File::open(dir.join(&s.name))?;
        if f.read_at(&mut b, 0)? == 40 {
            if let Some(size) = PageHeader::parse(&b)
                .and_then(|h| h.long)
                .map(|l| u64::from(l.seg_size))
                .filter(|&sz| crate::lsn::valid_segment_size(sz))
            {
                return Ok(Some(size));
            }
        }
    }
    Ok(None)
}

/// Remembers where each open transaction's first record is (by `xl_xid`), so an entry can
/// say where its transaction began. Bounded: forgets everything past `MAX_OPEN` open xids
/// (transactions that end without a record, e.g. at a crash).
#[derive(Debug, Default)]
pub struct FirstSeen {
    open: std::collections::HashMap<u32, Lsn>,
}

const MAX_OPEN: usize = 100_000;

impl FirstSeen {
    /// Feeds one record; returns its entry (with `first` filled in) if it is one.
    pub fn entry(&mut self, r: &crate::wal::Record) -> Option<IndexEntry> {
        if r.xid != 0 {
            if self.open.len() >= MAX_OPEN && !self.open.contains_key(&r.xid) {
                self.open.clear();
            }
            self.open.entry(r.xid).or_insert(r.lsn);
        }
        let mut e = entry_of(r)?;
        if e.kind != super::EntryKind::RestorePoint {
            let first = self.open.remove(&e.xid);
            if r.xid != e.xid {
                self.open.remove(&r.xid);
            }
            if let Some(f) = first {
                e.first = f.min(e.lsn);
            }
        }
        Some(e)
    }
}

/// Transaction/restore-point entry of a record, if it is one.
pub fn entry_of(r: &crate::wal::Record) -> Option<IndexEntry> {
    if let Some(x) = decode_xact(r) {
        return Some(IndexEntry::from_xact(r.lsn, r.end, x));
    }
    decode_restore_point(r).map(|(t, name)| IndexEntry::restore_point(r.lsn, r.end, t, name))
}

/// Decodes every segment in `dir` and returns its transaction ends and restore points in
/// LSN order, plus warnings (gaps, decoding errors). Follows the highest timeline present.
pub fn scan_dir(dir: &Path) -> io::Result<(Vec<IndexEntry>, Vec<String>)> {
    let Some(seg_size) = detect_segment_size(dir)? else {
        return Ok((
            Vec::new(),
            vec![format!("no WAL segments in \"{}\"", dir.display())],
        ));
    };
    let (segs, _) = scan::list(dir, seg_size)?;
    let tli = segs.iter().map(|s| s.tli).max().unwrap_or(1);
    let mut segnos: Vec<u64> = segs.iter().map(|s| s.segno).collect();
    segnos.dedup();
    let mut out: Vec<IndexEntry> = Vec::new();
    let mut warnings = Vec::new();
    let mut dec: Option<RecordDecoder> = None;
    let mut firsts = FirstSeen::default();
    let mut prev_segno: Option<u64> = None;
    for segno in segnos {
        let Some(f) = pick(&segs, segno, tli, seg_size) else {
            continue;
        };
        let start = Lsn(segno.saturating_mul(seg_size));
        if prev_segno.is_some_and(|p| p.checked_add(1) != Some(segno)) {
            warnings.push(format!("gap in WAL before segment {}", f.name));
            dec = None;
        }
        prev_segno = Some(segno);
        let data = std::fs::read(dir.join(&f.name))?;
        let d = dec.get_or_insert_with(|| RecordDecoder::new(start, seg_size));
        if d.is_failed() || d.fed_end() != start {
            *d = RecordDecoder::new(start, seg_size);
        }
        if let Err(e) = d.feed(start, &data) {
            warnings.push(format!("{}: {e}", f.name));
            dec = None;
            continue;
        }
        while let Some(r) = d.next() {
            match r {
                Ok(r) => {
                    if let Some(e) = firsts.entry(&r) {
                        if out.last().is_none_or(|l| l.lsn < e.lsn) {
                            out.push(e);
                        }
                    }
                }
                Err(e) => {
                    // The end of valid WAL in a .partial (zero padding) is expected.
                    if !(f.partial && matches!(e, crate::wal::WalError::EndOfWal { .. })) {
                        warnings.push(format!("{}: {e}", f.name));
                    }
                    break;
                }
            }
        }
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_real_fixtures_like_pg_waldump() {
        for (dir, first) in [("fixtures/pg15", 7u64), ("fixtures/pg18", 8)] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let (entries, warnings) = scan_dir(&path).unwrap();
            assert!(!entries.is_empty(), "{dir}: {warnings:?}");
            // every transaction end pg_waldump printed is in our list, at the same LSN
            let dump = std::fs::read_to_string(path.join("waldump.txt")).unwrap();
            let mut checked = 0;
            for line in dump.lines().filter(|l| l.contains("rmgr: Transaction")) {
                let lsn: Lsn = line
                    .split("lsn: ")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let desc = line.split("desc: ").nth(1).unwrap();
                let e = entries
                    .iter()
                    .find(|e| e.lsn == lsn)
                    .unwrap_or_else(|| panic!("{dir}: {line}"));
                let kind = desc.split([' ', ':']).next().unwrap();
                assert_eq!(e.kind.as_str().to_uppercase(), kind, "{line}");
                if kind == "COMMIT" || kind == "ABORT" {
                    let t = super::super::time::format_pg_time(e.time);
                    // "2026-11-21 20:09:07.215974 UTC" vs "2026-11-21 20:09:07.215974+00"
                    assert!(desc.contains(t.trim_end_matches("+00")), "{line} vs {t}");
                }
                let has_rels = desc.contains("; rels: ");
                assert_eq!(!e.dropped.is_empty(), has_rels, "{line}");
                checked += 1;
            }
            assert!(checked > 5);
            let rp = entries
                .iter()
                .find(|e| e.kind == super::super::EntryKind::RestorePoint)
                .unwrap();
            assert_eq!(rp.name.as_deref(), Some("before_drop"));
            let seg = detect_segment_size(&path).unwrap().unwrap();
            assert!(entries[0].lsn >= Lsn(first * seg));
            let b = read_at(&path, seg, 1, Lsn(first * seg + 100), 50).unwrap();
            assert_eq!(b.len(), 50);
        }
    }
}

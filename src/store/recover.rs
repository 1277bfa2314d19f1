//! Start-up recovery: what the WAL files themselves say, with no control file.
//!
//! Owns: reading the data directory once when the store starts, to find
//! - the **identity** (system identifier, segment size, page magic) from the long page headers
//!   of the segment files (pg_receivewal's target directories hold nothing else), refusing a
//!   directory whose files disagree;
//! - the **end of valid WAL** in the newest segment, the way PostgreSQL's recovery finds the
//!   end of WAL: page headers checked with [`PageValidator`] (magic, page address, timeline,
//!   system id and segment size in long headers), then the record chain decoded with
//!   [`RecordDecoder`] (length, resource manager, `xl_prev`, CRC-32C). The walk stops at the
//!   first all-zero or invalid page header, and the chain at the first invalid, zero-length or
//!   torn record.
//!
//! The serving position is the end of the last valid record, extended over the bytes of the
//! *incomplete* record that follows it (a record the primary had not finished sending, or
//! whose tail was lost): those bytes are the primary's, acknowledged when they were fsynced,
//! and a downstream pg_receivewal may already have them. The extension stops at the first
//! 512-byte sector that is all zeros and then at the last non-zero byte before it, because
//! every byte the store ever puts in a segment file is either the primary's (checked page by
//! page before it is written) or the zeros the file was reserved with: after a crash a lost
//! write reads as zeros (an unwritten `fallocate` extent, or the zero padding), never as other
//! data. A *complete* record whose CRC fails is extended over only when zeros inside it show
//! that its tail was lost; non-zero garbage stops the walk at the last valid record (fail
//! closed). See docs/durability.md, "After a crash".
//!
//! Must not: write anything, or trust the control file for positions.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::lsn::{valid_segment_size, Lsn, TimelineId, WAL_PAGE_SIZE};
use crate::wal::page::{major_of_magic, PageHeader, PageValidator, LONG_HEADER_LEN};
use crate::wal::record::RecordDecoder;
use crate::wal::WalError;

/// Sector size used to tell lost writes (zeros) from data.
const SECTOR: u64 = 512;

/// The cluster a data directory's WAL belongs to, read from long page headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub system_id: u64,
    pub seg_size: u64,
    /// `xlp_magic` (tells the PostgreSQL major version).
    pub magic: u16,
}

/// What start-up recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub identity: Identity,
    /// Timeline of the newest segment.
    pub timeline: TimelineId,
    /// End of valid WAL: the position walrelay serves up to at once.
    pub end: Lsn,
    /// End of the last complete, valid record (≤ `end`), when one was found in the newest
    /// segment.
    pub last_record_end: Option<Lsn>,
    /// The file `end` was found in.
    pub file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("could not read \"{path}\": {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("data directory \"{dir}\" mixes WAL of different clusters: \"{a}\" is system {a_sysid} with segment size {a_seg}, \"{b}\" is system {b_sysid} with segment size {b_seg}")]
    MixedIdentity {
        dir: PathBuf,
        a: String,
        a_sysid: u64,
        a_seg: u64,
        b: String,
        b_sysid: u64,
        b_seg: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoverError + '_ {
    move |source| RecoverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY` or that plus `.partial` (upper-case hex, as PostgreSQL writes).
fn is_segment_name(name: &str) -> bool {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    base.len() == 24
        && base
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
}

/// The long page header at the start of a segment file, if it is a plausible one.
fn long_header_identity(head: &[u8]) -> Option<Identity> {
    let h = PageHeader::parse(head)?;
    let long = h.long?;
    major_of_magic(h.magic)?;
    let seg_size = u64::from(long.seg_size);
    if !valid_segment_size(seg_size)
        || u64::from(long.blcksz) != WAL_PAGE_SIZE
        || h.pageaddr.0 % seg_size != 0
        || long.sysid == 0
    {
        return None;
    }
    Some(Identity {
        system_id: long.sysid,
        seg_size,
        magic: h.magic,
    })
}

/// Reads the identity from the long headers of every segment file in `dir` (files whose
/// first page was never written, e.g. a reserved `.partial`, are skipped). `Ok(None)` when
/// no file has one. Files that disagree are an error.
pub fn identity(dir: &Path) -> Result<Option<Identity>, RecoverError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut found: Option<(String, Identity)> = None;
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_segment_name(&name) {
            continue;
        }
        let path = entry.path();
        let mut head = [0u8; LONG_HEADER_LEN];
        let n = match File::open(&path).and_then(|mut f| read_full(&mut f, &mut head)) {
            Ok(n) => n,
            // Removed meanwhile (retention) or unreadable: the recovery proper reports it.
            Err(_) => continue,
        };
        let Some(id) = head.get(..n).and_then(long_header_identity) else {
            continue;
        };
        match &found {
            None => found = Some((name, id)),
            Some((a, prev)) if prev.system_id != id.system_id || prev.seg_size != id.seg_size => {
                return Err(RecoverError::MixedIdentity {
                    dir: dir.to_path_buf(),
                    a: a.clone(),
                    a_sysid: prev.system_id,
                    a_seg: prev.seg_size,
                    b: name,
                    b_sysid: id.system_id,
                    b_seg: id.seg_size,
                });
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(_, id)| id))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0usize;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match f.read(rest) {
            Ok(0) => break,
            Ok(k) => n = n.saturating_add(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Finds the identity and the end of valid WAL of `dir`. `Ok(None)` when the directory
/// holds no segment with a readable long header.
pub fn recover(dir: &Path) -> Result<Option<Recovered>, RecoverError> {
    let Some(id) = identity(dir)? else {
        return Ok(None);
    };
    let seg_size = id.seg_size;
    let (segs, _) = super::scan::list(dir, seg_size).map_err(io_err(dir))?;
    let Some(newest) = segs
        .iter()
        .filter(|s| s.partial || s.size == seg_size)
        .max_by_key(|s| (s.segno, s.tli, !s.partial))
    else {
        return Ok(None);
    };
    let seg_start = Lsn(newest.segno.saturating_mul(seg_size));
    if !newest.partial {
        // A complete name is only given to a full segment after its fsync.
        return Ok(Some(Recovered {
            identity: id,
            timeline: newest.tli,
            end: Lsn(seg_start.0.saturating_add(seg_size)),
            last_record_end: None,
            file: newest.name.clone(),
        }));
    }
    let path = dir.join(&newest.name);
    let mut buf = Vec::new();
    let file = File::open(&path).map_err(io_err(&path))?;
    // After a kill -9 the file may hold written but never fsynced WAL (still in the page
    // cache): make it durable before serving or acknowledging any of it. The directory too,
    // for a rename whose directory fsync did not happen.
    file.sync_all().map_err(io_err(&path))?;
    super::fsutil::fsync_dir(dir).map_err(io_err(dir))?;
    file.take(seg_size)
        .read_to_end(&mut buf)
        .map_err(io_err(&path))?;
    let scan = valid_end(&buf, seg_start, id.system_id, seg_size, newest.tli);
    Ok(Some(Recovered {
        identity: id,
        timeline: newest.tli,
        end: scan.end,
        last_record_end: scan.last_record_end,
        file: newest.name.clone(),
    }))
}

/// Result of scanning one segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// End of valid WAL (see the module docs).
    pub end: Lsn,
    /// End of the last complete valid record, if any.
    pub last_record_end: Option<Lsn>,
    /// End of the run of pages with valid headers from the segment start.
    pub pages_end: Lsn,
}

/// Scans the bytes of one segment (`buf` starts at `seg_start`, a segment start) and finds
/// the end of valid WAL on timeline `tli`.
pub fn valid_end(
    buf: &[u8],
    seg_start: Lsn,
    sysid: u64,
    seg_size: u64,
    tli: TimelineId,
) -> SegmentScan {
    let len = buf
        .len()
        .min(usize::try_from(seg_size).unwrap_or(usize::MAX));
    let buf = buf.get(..len).unwrap_or(&[]);
    // 1. The run of valid pages.
    let mut validator = PageValidator::new(sysid, seg_size, tli);
    validator.reset(seg_start);
    let page = WAL_PAGE_SIZE as usize;
    let mut pages_len = 0usize;
    while let Some(p) = buf.get(pages_len..pages_len.saturating_add(page)) {
        if p.len() < page || p.iter().take(LONG_HEADER_LEN.min(p.len())).all(|&b| b == 0) {
            break;
        }
        let at = Lsn(seg_start.0.saturating_add(pages_len as u64));
        if validator.check(at, p).is_err() {
            break;
        }
        pages_len = pages_len.saturating_add(page);
    }
    let pages = buf.get(..pages_len).unwrap_or(&[]);
    let pages_end = Lsn(seg_start.0.saturating_add(pages_len as u64));

    // 2. The record chain.
    let mut dec = RecordDecoder::new(seg_start, seg_size);
    let mut last_record_end = None;
    let mut torn: Option<(Lsn, Lsn)> = None; // (record start, its raw end) of a CRC failure
    if dec.feed(seg_start, pages).is_ok() {
        while let Some(r) = dec.next() {
            match r {
                Ok(rec) => last_record_end = Some(rec.end),
                Err(WalError::BadCrc { lsn }) => {
                    torn = Some((lsn, dec.position()));
                    break;
                }
                Err(_) => break,
            }
        }
    }
    // The primary's flush positions are MAXALIGNed record starts: the padding after the last
    // record (zeros, on a page whose header is valid) is the primary's too.
    let records_end = last_record_end.map_or(seg_start, |e| {
        Lsn(crate::wal::maxalign(e.0).min(pages_end.0).max(e.0))
    });

    // 3. The incomplete record after the last valid one.
    let off = |l: Lsn| usize::try_from(l.0.saturating_sub(seg_start.0)).unwrap_or(usize::MAX);
    let extension = if let Some(start) = dec.pending_start() {
        // ran out of valid pages in the middle of it
        data_end(pages, off(start), pages_len, false)
    } else if let Some((start, raw_end)) = torn {
        data_end(pages, off(start), off(raw_end).min(pages_len), true)
    } else {
        None
    };
    let end = extension
        .map(|e| Lsn(seg_start.0.saturating_add(e as u64)))
        .filter(|e| *e > records_end)
        .unwrap_or(records_end);
    SegmentScan {
        end,
        last_record_end,
        pages_end,
    }
}

/// End (exclusive offset) of the data of an incomplete record starting at `from`, looking no
/// further than `limit`: up to the first all-zero sector, then back to the last non-zero
/// byte. With `need_loss`, `None` unless there are zeros between that point and `limit`
/// (else the record is corrupt rather than cut short).
fn data_end(buf: &[u8], from: usize, limit: usize, need_loss: bool) -> Option<usize> {
    let limit = limit.min(buf.len());
    if from >= limit {
        return None;
    }
    let sector = SECTOR as usize;
    // first all-zero sector (only its part at or after `from` for the first one)
    let mut cut = limit;
    let mut s = from.checked_div(sector)?.checked_mul(sector)?;
    while s < limit {
        let lo = s.max(from);
        let hi = s.saturating_add(sector).min(limit);
        if buf.get(lo..hi).is_some_and(|b| b.iter().all(|&x| x == 0)) {
            cut = lo;
            break;
        }
        s = s.saturating_add(sector);
    }
    let data = buf.get(from..cut)?;
    let last = data.iter().rposition(|&b| b != 0)?;
    let end = from.checked_add(last)?.checked_add(1)?;
    if need_loss && end >= limit {
        return None;
    }
    Some(end)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::wal::record::build::{record, Writer};

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 42; // what the test Writer puts in long headers

    /// A segment of `n` records of `size` bytes each, starting at segment 1; returns the bytes
    /// and each record's (start, end).
    fn segment(n: usize, size: usize) -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut w = Writer::new(SEG, SEG);
        let mut ends = Vec::new();
        for i in 0..n {
            let main: Vec<u8> = (0..size).map(|j| (i + j) as u8 | 1).collect();
            let lsn = w.record(record(10, 0, i as u32, &main));
            ends.push((lsn, w.pos()));
        }
        (w.buf, ends)
    }

    fn reserved(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(SEG as usize, 0);
        v
    }

    fn scan(buf: &[u8]) -> SegmentScan {
        valid_end(buf, Lsn(SEG), SYSID, SEG, 1)
    }

    #[test]
    fn complete_records_then_zeros() {
        let (wal, recs) = segment(50, 300);
        let s = scan(&reserved(&wal));
        let last = recs.last().unwrap().1;
        assert_eq!(s.last_record_end, Some(Lsn(last)));
        // up to the MAXALIGNed start of the next record (the primary flushes to there)
        assert_eq!(s.end, Lsn((last + 7) & !7));
    }

    /// kill -9 in the middle of a record: the bytes that reached the file are served, the
    /// zeros after them are not.
    #[test]
    fn incomplete_record_is_served_up_to_its_last_byte() {
        let (wal, recs) = segment(60, 1000);
        // cut inside record 40, on the same page and across a page boundary
        for (i, frac) in [(40usize, 3u64), (41, 7), (45, 9)] {
            let (start, end) = recs[i];
            let cut = start + (end - start) * frac / 10;
            let mut data = wal[..(cut - SEG) as usize].to_vec();
            // make sure the cut ends on a non-zero byte (the records are all odd bytes)
            assert_ne!(*data.last().unwrap(), 0);
            let s = scan(&reserved(&data));
            assert_eq!(s.last_record_end, Some(Lsn(recs[i - 1].1)), "cut {i}");
            assert_eq!(s.end, Lsn(cut), "cut {i}");
            // a lost sector in the middle of the incomplete record stops the extension there
            let hole = ((start - SEG) as usize / 512 + 2) * 512;
            if hole + 512 < data.len() {
                data[hole..hole + 512].fill(0);
                let s = scan(&reserved(&data));
                assert!(s.end <= Lsn(SEG + hole as u64), "cut {i}: {}", s.end);
                assert!(s.end >= Lsn(recs[i - 1].1));
            }
        }
    }

    #[test]
    fn corrupt_record_stops_the_chain() {
        let (mut wal, recs) = segment(30, 200);
        // flip a byte inside record 20: garbage, not zeros, so nothing past record 19
        let at = (recs[20].0 - SEG) as usize + 50;
        wal[at] ^= 0x40;
        let s = scan(&reserved(&wal));
        assert_eq!(s.last_record_end, Some(Lsn(recs[19].1)));
        assert_eq!(s.end, Lsn((recs[19].1 + 7) & !7));
    }

    #[test]
    fn bad_page_header_ends_the_pages() {
        let (mut wal, recs) = segment(200, 300);
        // page 3's address is wrong: nothing on it or after it counts
        let p3 = 3 * WAL_PAGE_SIZE as usize;
        wal[p3 + 8] ^= 1;
        let s = scan(&reserved(&wal));
        assert_eq!(s.pages_end, Lsn(SEG + p3 as u64));
        assert!(s.end <= Lsn(SEG + p3 as u64));
        let before = recs
            .iter()
            .filter(|r| r.1 <= SEG + p3 as u64)
            .last()
            .unwrap();
        assert!(s.end >= Lsn(before.1));
        // another system's page header: the same
        let s = valid_end(&reserved(&wal), Lsn(SEG), SYSID + 1, SEG, 1);
        assert_eq!(s.pages_end, Lsn(SEG));
        assert_eq!(s.end, Lsn(SEG));
    }

    #[test]
    fn empty_and_short_files() {
        assert_eq!(scan(&[]).end, Lsn(SEG));
        assert_eq!(scan(&vec![0u8; SEG as usize]).end, Lsn(SEG));
        let (wal, _) = segment(3, 10);
        assert_eq!(scan(&wal[..30]).end, Lsn(SEG));
    }

    #[test]
    fn identity_from_files_and_mixed_directories() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(identity(d.path()).unwrap(), None);
        let (wal, _) = segment(3, 10);
        std::fs::write(d.path().join("000000010000000000000001"), reserved(&wal)).unwrap();
        // an untouched reservation and unrelated files do not count
        std::fs::write(
            d.path().join("000000010000000000000002.partial"),
            [0u8; 100],
        )
        .unwrap();
        std::fs::write(d.path().join("junk"), b"x").unwrap();
        std::fs::write(d.path().join("0000000é000000000000001"), b"x").unwrap();
        let id = identity(d.path()).unwrap().unwrap();
        assert_eq!((id.system_id, id.seg_size, id.magic), (SYSID, SEG, 0xD110));
        let r = recover(d.path()).unwrap().unwrap();
        assert_eq!(
            r.end,
            Lsn(2 * SEG),
            "the complete segment is newest with data"
        );
        // another cluster's segment in the same directory
        let mut other = reserved(&wal);
        other[24..32].copy_from_slice(&7u64.to_le_bytes());
        std::fs::write(d.path().join("000000010000000000000003.partial"), other).unwrap();
        let e = identity(d.path()).unwrap_err();
        assert!(
            e.to_string().contains("mixes WAL of different clusters"),
            "{e}"
        );
    }
}

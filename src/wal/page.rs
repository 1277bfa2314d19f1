//! WAL page headers (`XLogPageHeaderData` / `XLogLongPageHeaderData` in `xlog_internal.h`)
//! and the streaming [`PageValidator`] that every received byte passes through.
//!
//! Owns: header layout, flag bits, known magic numbers, the checks PostgreSQL's
//! `XLogReaderValidatePageHeader` makes. Must not: look inside records (see
//! [`super::record`]) or do IO.

use super::{le_u16, le_u32, le_u64, WalError};
use crate::lsn::{segment_file_name, Lsn, TimelineId, WAL_PAGE_SIZE};

/// `SizeOfXLogShortPHD`, MAXALIGNed (20 bytes of fields + 4 padding).
pub const SHORT_HEADER_LEN: usize = 24;
/// `SizeOfXLogLongPHD`, MAXALIGNed.
pub const LONG_HEADER_LEN: usize = 40;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the continuation of a record.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: this is a segment's first page, with the long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_BKP_REMOVABLE`: full-page images on this page may be removed by archivers.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: a partial record before this page was abandoned.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` per PostgreSQL major version.
pub const KNOWN_MAGICS: [(u16, u32); 6] = [
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version that writes WAL with this page magic, if known.
pub fn major_of_magic(magic: u16) -> Option<u32> {
    KNOWN_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, v)| *v)
}

/// Fields only present in the long header (first page of each segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    /// `xlp_sysid`: the cluster's system identifier.
    pub sysid: u64,
    /// `xlp_seg_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`.
    pub blcksz: u32,
}

/// A parsed page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: TimelineId,
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a continued record still owed (with `XLP_FIRST_IS_CONTRECORD`).
    pub rem_len: u32,
    /// Present when `info` has [`XLP_LONG_HEADER`].
    pub long: Option<LongHeader>,
}

impl PageHeader {
    /// Parses a header from the start of `b`. Returns `None` if `b` is shorter than 24 bytes;
    /// `long` is filled when `info` has [`XLP_LONG_HEADER`] and `b` holds 40 bytes. No
    /// validation.
    pub fn parse(b: &[u8]) -> Option<PageHeader> {
        let magic = le_u16(b, 0)?;
        let info = le_u16(b, 2)?;
        let tli = le_u32(b, 4)?;
        let pageaddr = Lsn(le_u64(b, 8)?);
        let rem_len = le_u32(b, 16)?;
        if b.len() < SHORT_HEADER_LEN {
            return None;
        }
        let long = if info & XLP_LONG_HEADER != 0 && b.len() >= LONG_HEADER_LEN {
            Some(LongHeader {
                sysid: le_u64(b, 24)?,
                seg_size: le_u32(b, 32)?,
                blcksz: le_u32(b, 36)?,
            })
        } else {
            None
        };
        Some(PageHeader {
            magic,
            info,
            tli,
            pageaddr,
            rem_len,
            long,
        })
    }

    /// `XLogPageHeaderSize`: 40 with the long header, else 24.
    pub fn len(&self) -> usize {
        if self.info & XLP_LONG_HEADER != 0 {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Always false: a header is never empty (present for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }
}

/// Validates the page headers of a contiguous WAL byte stream, chunk by chunk.
///
/// Work is O(pages) per call: only the bytes of page headers are read, and a header split
/// across two calls is buffered in a fixed 40-byte array (no allocation; errors allocate
/// their message).
///
/// Checks (as `XLogReaderValidatePageHeader`, plus stream-level rules):
/// - a known magic, the same for every page of the stream;
/// - no unknown info bits; `XLP_LONG_HEADER` exactly on each segment's first page;
/// - `xlp_pageaddr` equals the page's LSN;
/// - `xlp_tli` ≤ the stream's timeline and non-decreasing;
/// - long headers: sysid (unless the validator was built with sysid 0, which means "learn
///   it from the first long header"), segment size, `XLOG_BLCKSZ` 8192;
/// - after an `XLOG_SWITCH` the rest of a segment may be zero-filled, headers included: an
///   all-zero header on a non-first page is accepted, and from then on every header up to the
///   end of that segment must be all zeros too.
///
/// After an error the validator's position is undefined: call [`PageValidator::reset`].
#[derive(Debug, Clone)]
pub struct PageValidator {
    sysid: u64,
    seg_size: u64,
    tli: TimelineId,
    magic: Option<u16>,
    last_tli: TimelineId,
    /// Where the next call must start (`None`: anywhere).
    next: Option<Lsn>,
    /// A header split across calls: its page LSN and the bytes received so far.
    pending_page: Lsn,
    pending: [u8; LONG_HEADER_LEN],
    pending_len: usize,
    /// Segment number in which an all-zero header was seen.
    zero_segno: Option<u64>,
}

impl PageValidator {
    /// `seg_size` must be a valid segment size (see [`crate::lsn::valid_segment_size`]);
    /// an invalid one makes every long header fail the segment-size check.
    pub fn new(sysid: u64, seg_size: u64, tli: TimelineId) -> PageValidator {
        PageValidator {
            sysid,
            seg_size: seg_size.max(WAL_PAGE_SIZE),
            tli,
            magic: None,
            last_tli: 0,
            next: None,
            pending_page: Lsn(0),
            pending: [0; LONG_HEADER_LEN],
            pending_len: 0,
            zero_segno: None,
        }
    }

    /// Forget the position (and the timeline ordering) and expect the next call at `start`.
    /// The stream's magic number is kept.
    pub fn reset(&mut self, start: Lsn) {
        self.next = Some(start);
        self.pending_len = 0;
        self.zero_segno = None;
        self.last_tli = 0;
    }

    /// Switch the stream's timeline (after a timeline switch upstream).
    pub fn set_tli(&mut self, tli: TimelineId) {
        self.tli = tli;
    }

    /// The magic number seen so far, if any.
    pub fn magic(&self) -> Option<u16> {
        self.magic
    }

    /// The system identifier being checked (learned from the first long header if the
    /// validator was created with 0).
    pub fn sysid(&self) -> u64 {
        self.sysid
    }

    /// Where the next chunk must start, if known.
    pub fn position(&self) -> Option<Lsn> {
        self.next
    }

    fn header_len_for(&self, page: Lsn) -> usize {
        // seg_size >= WAL_PAGE_SIZE (see `new`), so the remainder always exists.
        if page.0.checked_rem(self.seg_size) == Some(0) {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// End of the WAL whose page headers have all been checked. A page header split across
    /// `check` calls is validated only when its last byte arrives, so the bytes from its page
    /// start on are not vouched for yet: callers must not make them durable-and-acknowledged.
    pub fn validated_end(&self) -> Option<Lsn> {
        if self.pending_len > 0 {
            Some(self.pending_page)
        } else {
            self.next
        }
    }

    /// Validates every page header that starts inside `[start, start + data.len())`, and
    /// finishes a header begun in the previous call. `start` must equal the end of the
    /// previous call's data (or the position given to [`PageValidator::reset`]); the very
    /// first call may start anywhere.
    pub fn check(&mut self, start: Lsn, data: &[u8]) -> Result<(), WalError> {
        if let Some(expected) = self.next {
            if expected != start {
                return Err(WalError::NotContiguous {
                    expected,
                    got: start,
                });
            }
        } else {
            self.pending_len = 0;
        }
        let len = data.len() as u64;
        let end = start
            .checked_add(len)
            .ok_or(WalError::LsnOverflow { lsn: start })?;
        let mut consumed = 0usize;

        // Finish a header split across calls.
        if self.pending_len > 0 {
            let page = self.pending_page;
            let need = self.header_len_for(page);
            let take = need.saturating_sub(self.pending_len).min(data.len());
            let (dst, src) = (
                self.pending
                    .get_mut(self.pending_len..self.pending_len.saturating_add(take)),
                data.get(..take),
            );
            if let (Some(dst), Some(src)) = (dst, src) {
                dst.copy_from_slice(src);
            }
            self.pending_len = self.pending_len.saturating_add(take);
            consumed = take;
            if self.pending_len == need {
                self.pending_len = 0;
                let hdr = self.pending;
                self.next = None;
                self.validate(page, hdr.get(..need).unwrap_or(&hdr))?;
            }
        }

        // Page boundaries starting inside this chunk.
        let first = if start.0 % WAL_PAGE_SIZE == 0 {
            start.0
        } else {
            // The next page boundary; saturates at the top of the LSN range (then no loop).
            (start.0 / WAL_PAGE_SIZE)
                .checked_add(1)
                .and_then(|p| p.checked_mul(WAL_PAGE_SIZE))
                .unwrap_or(u64::MAX)
        };
        let mut page = first;
        while page < end.0 {
            let off = usize::try_from(page.saturating_sub(start.0)).unwrap_or(usize::MAX);
            let need = self.header_len_for(Lsn(page));
            let avail = data.len().saturating_sub(off);
            if off < consumed {
                // Cannot happen (a pending header belongs to an earlier page), but stay safe.
                page = match page.checked_add(WAL_PAGE_SIZE) {
                    Some(p) => p,
                    None => break,
                };
                continue;
            }
            if avail >= need {
                if let Some(h) = off.checked_add(need).and_then(|e| data.get(off..e)) {
                    self.next = None;
                    self.validate(Lsn(page), h)?;
                }
            } else {
                if let (Some(dst), Some(src)) = (self.pending.get_mut(..avail), data.get(off..)) {
                    dst.copy_from_slice(src);
                }
                self.pending_page = Lsn(page);
                self.pending_len = avail;
            }
            page = match page.checked_add(WAL_PAGE_SIZE) {
                Some(p) => p,
                None => break,
            };
        }
        self.next = Some(end);
        Ok(())
    }

    fn validate(&mut self, page: Lsn, h: &[u8]) -> Result<(), WalError> {
        // seg_size >= WAL_PAGE_SIZE (see `new`): neither operation can fail.
        let segno = page.0.checked_div(self.seg_size).unwrap_or(0);
        let first = page.0.checked_rem(self.seg_size) == Some(0);
        let (tli, seg_size) = (self.tli, self.seg_size);
        let segment = || segment_file_name(tli, segno, seg_size);
        let short = h.get(..SHORT_HEADER_LEN).unwrap_or(h);
        let all_zero = short.iter().all(|&b| b == 0);
        if self.zero_segno == Some(segno) {
            if !all_zero {
                return Err(WalError::NonZeroAfterZeroPage {
                    segment: segment(),
                    lsn: page,
                });
            }
            return Ok(());
        }
        self.zero_segno = None;
        if all_zero && !first {
            self.zero_segno = Some(segno);
            return Ok(());
        }
        // Non-first pages only have 24 bytes gathered: parse the long part only where it
        // must be (a long flag elsewhere is reported below).
        let parsed = if first {
            PageHeader::parse(h)
        } else {
            PageHeader::parse(short).map(|mut p| {
                p.long = None;
                p
            })
        };
        let hdr = parsed.ok_or(WalError::BadPageHeader {
            lsn: page,
            reason: "truncated header",
        })?;
        if major_of_magic(hdr.magic).is_none() {
            return Err(WalError::BadMagic {
                magic: hdr.magic,
                segment: segment(),
                lsn: page,
            });
        }
        match self.magic {
            Some(m) if m != hdr.magic => {
                return Err(WalError::MagicChanged {
                    magic: hdr.magic,
                    expected: m,
                    segment: segment(),
                    lsn: page,
                })
            }
            Some(_) => {}
            None => self.magic = Some(hdr.magic),
        }
        if hdr.info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::BadInfoBits {
                info: hdr.info,
                segment: segment(),
                lsn: page,
            });
        }
        let is_long = hdr.info & XLP_LONG_HEADER != 0;
        if first && !is_long {
            return Err(WalError::MissingLongHeader {
                segment: segment(),
                lsn: page,
            });
        }
        if !first && is_long {
            return Err(WalError::UnexpectedLongHeader {
                segment: segment(),
                lsn: page,
            });
        }
        if hdr.pageaddr != page {
            return Err(WalError::BadPageAddr {
                pageaddr: hdr.pageaddr,
                segment: segment(),
                lsn: page,
            });
        }
        if hdr.tli > self.tli {
            return Err(WalError::TimelineAhead {
                tli: hdr.tli,
                stream_tli: self.tli,
                segment: segment(),
                lsn: page,
            });
        }
        if hdr.tli < self.last_tli {
            return Err(WalError::TimelineOutOfSequence {
                tli: hdr.tli,
                prev: self.last_tli,
                segment: segment(),
                lsn: page,
            });
        }
        if let Some(long) = hdr.long {
            if self.sysid == 0 {
                self.sysid = long.sysid;
            } else if long.sysid != self.sysid {
                return Err(WalError::SysidMismatch {
                    found: long.sysid,
                    expected: self.sysid,
                    segment: segment(),
                    lsn: page,
                });
            }
            if u64::from(long.seg_size) != self.seg_size {
                return Err(WalError::SegSizeMismatch {
                    found: long.seg_size,
                    expected: self.seg_size,
                    segment: segment(),
                    lsn: page,
                });
            }
            if u64::from(long.blcksz) != WAL_PAGE_SIZE {
                return Err(WalError::BlckszMismatch {
                    found: long.blcksz,
                    segment: segment(),
                    lsn: page,
                });
            }
        }
        self.last_tli = hdr.tli;
        Ok(())
    }
}

/// Builds page headers for tests (here and in [`super::record`]).
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    pub fn header(
        magic: u16,
        info: u16,
        tli: u32,
        pageaddr: u64,
        rem_len: u32,
        long: Option<(u64, u32)>,
    ) -> Vec<u8> {
        let mut v = Vec::with_capacity(LONG_HEADER_LEN);
        let info = if long.is_some() {
            info | XLP_LONG_HEADER
        } else {
            info
        };
        v.extend_from_slice(&magic.to_le_bytes());
        v.extend_from_slice(&info.to_le_bytes());
        v.extend_from_slice(&tli.to_le_bytes());
        v.extend_from_slice(&pageaddr.to_le_bytes());
        v.extend_from_slice(&rem_len.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        if let Some((sysid, seg)) = long {
            v.extend_from_slice(&sysid.to_le_bytes());
            v.extend_from_slice(&seg.to_le_bytes());
            v.extend_from_slice(&8192u32.to_le_bytes());
        }
        v
    }

    /// A stream of `pages` empty pages starting at `start` (segment-first pages get long
    /// headers), all on timeline `tli`.
    pub fn pages(start: u64, pages: u64, seg: u64, sysid: u64, tli: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..pages {
            let addr = start + i * WAL_PAGE_SIZE;
            let long = (addr % seg == 0).then_some((sysid, seg as u32));
            let mut p = header(0xD110, 0, tli, addr, 0, long);
            p.resize(WAL_PAGE_SIZE as usize, 0);
            out.extend_from_slice(&p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_001;

    #[test]
    fn parse_short_and_long() {
        let h = header(0xD110, XLP_FIRST_IS_CONTRECORD, 3, 0x300_2000, 77, None);
        let p = PageHeader::parse(&h).unwrap();
        assert_eq!(p.len(), 24);
        assert!(p.is_contrecord() && !p.is_overwrite_contrecord());
        assert_eq!(
            (p.magic, p.tli, p.pageaddr, p.rem_len),
            (0xD110, 3, Lsn(0x300_2000), 77)
        );
        let h = header(0xD118, 0, 1, 0x300_0000, 0, Some((SYSID, SEG as u32)));
        let p = PageHeader::parse(&h).unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(
            p.long,
            Some(LongHeader {
                sysid: SYSID,
                seg_size: SEG as u32,
                blcksz: 8192
            })
        );
        assert_eq!(PageHeader::parse(&h[..39]).unwrap().long, None);
        assert!(PageHeader::parse(&h[..23]).is_none());
    }

    #[test]
    fn accepts_a_good_stream_in_any_chunking() {
        let data = pages(SEG * 3 - 4 * 8192, 10, SEG, SYSID, 1);
        let start = Lsn(SEG * 3 - 4 * 8192);
        for chunk in [1usize, 7, 24, 39, 40, 41, 1000, 8192, 8193, 100_000] {
            let mut v = PageValidator::new(SYSID, SEG, 1);
            let mut pos = start;
            for c in data.chunks(chunk) {
                v.check(pos, c)
                    .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
                pos = Lsn(pos.0 + c.len() as u64);
            }
            assert_eq!(v.magic(), Some(0xD110));
        }
    }

    fn check_all(data: &[u8], start: u64, chunk: usize) -> Result<(), WalError> {
        let mut v = PageValidator::new(SYSID, SEG, 2);
        let mut pos = Lsn(start);
        for c in data.chunks(chunk) {
            v.check(pos, c)?;
            pos = Lsn(pos.0 + c.len() as u64);
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_headers() {
        let start = SEG * 3 - 2 * 8192;
        let base = pages(start, 4, SEG, SYSID, 1);
        let seg_first = 2 * 8192usize; // offset of segment 3's first page
        let cases: Vec<(usize, usize, Vec<u8>, &str)> = vec![
            (
                0,
                0,
                vec![0x00, 0x00],
                "invalid magic number 0000 in WAL segment 000000020000000000000002, LSN 0/2FC000",
            ),
            (8192, 0, vec![0x13, 0xD1], "differs"),
            (8192, 2, vec![0x10, 0x00], "invalid info bits"),
            (8192, 2, vec![0x02, 0x00], "unexpected long page header"),
            (seg_first, 2, vec![0x00, 0x00], "missing long page header"),
            (8192, 8, vec![0x00, 0x10], "unexpected pageaddr"),
            (8192, 4, vec![3, 0, 0, 0], "beyond the stream's timeline"),
            (seg_first, 24, vec![9], "different database system"),
            (seg_first, 32, vec![0, 0, 0x20], "incorrect segment size"),
            (seg_first, 36, vec![0, 0x10], "XLOG_BLCKSZ"),
        ];
        for (page, off, bytes, want) in cases {
            let mut d = base.clone();
            d[page + off..page + off + bytes.len()].copy_from_slice(&bytes);
            for chunk in [5usize, 30, 8192, 1 << 20] {
                let e = check_all(&d, start, chunk).expect_err(want).to_string();
                assert!(e.contains(want), "{chunk}: {e} !~ {want}");
            }
        }
        // Timeline going backwards.
        let mut d = pages(start, 2, SEG, SYSID, 2);
        d[8192 + 4] = 1;
        let e = check_all(&d, start, 100).unwrap_err().to_string();
        assert!(e.contains("out-of-sequence timeline ID 1 (after 2)"), "{e}");
    }

    #[test]
    fn older_timeline_pages_and_set_tli() {
        let start = SEG * 3;
        let mut d = pages(start, 2, SEG, SYSID, 1);
        d.extend(pages(start + 2 * 8192, 2, SEG, SYSID, 2));
        let mut v = PageValidator::new(SYSID, SEG, 1);
        assert!(v.check(Lsn(start), &d).is_err());
        let mut v = PageValidator::new(SYSID, SEG, 1);
        v.check(Lsn(start), &d[..16384]).unwrap();
        v.set_tli(2);
        v.check(Lsn(start + 16384), &d[16384..]).unwrap();
    }

    #[test]
    fn contiguity_and_reset() {
        let start = SEG * 3;
        let d = pages(start, 2, SEG, SYSID, 1);
        let mut v = PageValidator::new(SYSID, SEG, 1);
        v.check(Lsn(start), &d[..100]).unwrap();
        let e = v.check(Lsn(start + 101), &d[101..]).unwrap_err();
        assert!(matches!(e, WalError::NotContiguous { .. }));
        v.reset(Lsn(start + 8192));
        v.check(Lsn(start + 8192), &d[8192..]).unwrap();
    }

    #[test]
    fn zero_pages_after_switch() {
        let start = SEG * 3;
        let mut d = pages(start, 128, SEG, SYSID, 1);
        d.extend(pages(start + SEG, 1, SEG, SYSID, 1));
        // Zero everything from page 5 to the end of the segment.
        for b in &mut d[5 * 8192..128 * 8192] {
            *b = 0;
        }
        for chunk in [3usize, 8192, 1 << 21] {
            check_all(&d, start, chunk).unwrap();
        }
        // A real header after a zero one inside the same segment is an error.
        let mut bad = d.clone();
        let h = header(0xD110, 0, 1, start + 9 * 8192, 0, None);
        bad[9 * 8192..9 * 8192 + 24].copy_from_slice(&h);
        let e = check_all(&bad, start, 4096).unwrap_err().to_string();
        assert!(e.contains("non-zero page header"), "{e}");
        // A zero first page of a segment is not accepted.
        let mut bad = d.clone();
        for b in &mut bad[128 * 8192..128 * 8192 + 40] {
            *b = 0;
        }
        assert!(check_all(&bad, start, 8192).is_err());
    }

    #[test]
    fn sysid_zero_learns() {
        let d = pages(SEG, 2, SEG, SYSID, 1);
        let mut v = PageValidator::new(0, SEG, 1);
        v.check(Lsn(SEG), &d).unwrap();
        assert_eq!(v.sysid(), SYSID);
    }
}

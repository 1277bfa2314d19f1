//! WAL records (`XLogRecord`, xlogrecord.h) and the incremental [`RecordDecoder`] that cuts a
//! raw WAL byte stream into whole, CRC-checked records the way `XLogReadRecord`
//! (xlogreader.c) does.
//!
//! Owns: record header layout, the page walk (short/long page headers, continuation
//! records, `XLOG_SWITCH` padding, `XLP_FIRST_IS_OVERWRITE_CONTRECORD`), CRC-32C, and locating
//! a record's main data. Must not: validate page headers beyond what the walk needs (that is
//! [`super::page::PageValidator`]'s job), interpret record bodies (see [`super::xact`]), or
//! do IO.

use bytes::Bytes;

use super::page::{PageHeader, LONG_HEADER_LEN, SHORT_HEADER_LEN, XLP_LONG_HEADER};
use super::{le_u16, le_u32, le_u64, maxalign, WalError};
use crate::lsn::{Lsn, WAL_PAGE_SIZE};

/// `SizeOfXLogRecord`.
pub const RECORD_HEADER_LEN: usize = 24;
/// Largest record accepted (PostgreSQL's `MaxAllocSize`; real records stay below
/// `XLogRecordMaxSize`, 1020 MB). Bounds the decoder's memory.
pub const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;
/// `RM_XLOG_ID`.
pub const RM_XLOG_ID: u8 = 0;
/// `RM_XACT_ID`.
pub const RM_XACT_ID: u8 = 1;
/// `XLOG_SWITCH` (info of an `RM_XLOG_ID` record, high nibble).
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLR_INFO_MASK`: the low nibble of `xl_info` belongs to the WAL machinery, the high
/// nibble to the resource manager.
pub const XLR_INFO_MASK: u8 = 0x0F;
/// `RM_MAX_BUILTIN_ID` across supported versions (21 = LogicalMessage) and the start of the
/// custom range (`RM_MIN_CUSTOM_ID`, 15+).
const RM_MAX_BUILTIN_ID: u8 = 21;
const RM_MIN_CUSTOM_ID: u8 = 128;

/// One whole WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Just past its last byte (`EndRecPtr`; not MAXALIGNed). For `XLOG_SWITCH` it is the
    /// start of the next segment, as in xlogreader.c.
    pub end: Lsn,
    /// `xl_xid`.
    pub xid: u32,
    /// `xl_rmid`.
    pub rmid: u8,
    /// `xl_info`.
    pub info: u8,
    /// The whole record, header included, without page headers.
    pub data: Bytes,
}

impl Record {
    /// `xl_tot_len`.
    pub fn tot_len(&self) -> u32 {
        le_u32(&self.data, 0).unwrap_or(0)
    }

    /// `xl_prev`.
    pub fn prev(&self) -> Lsn {
        Lsn(le_u64(&self.data, 8).unwrap_or(0))
    }

    /// The resource manager's part of `xl_info`.
    pub fn rm_info(&self) -> u8 {
        self.info & !XLR_INFO_MASK
    }

    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.rm_info() == XLOG_SWITCH
    }

    /// The record's main data (`XLogRecGetData`), found by walking the block headers as
    /// `DecodeXLogRecord` does; main data is always the last bytes of a record. `None` if the
    /// headers are inconsistent.
    ///
    /// Block images with a hole carry an extra 2-byte hole length only when compressed, and
    /// the "compressed" bits differ by version (`bimg_info & 0x1C` in 15+, `& 0x02` in 13/14).
    /// The record does not say which version wrote it, so the 15+ rule is tried first and the
    /// 13/14 rule if the lengths do not add up. Records walrelay decodes (xact, restore
    /// point) carry no block references at all.
    pub fn main_data(&self) -> Option<&[u8]> {
        let len = main_data_len(&self.data, 0x1C).or_else(|| main_data_len(&self.data, 0x02))?;
        let start = self.data.len().checked_sub(len)?;
        self.data.get(start..)
    }
}

/// Walks the block headers after the record header; returns the main data length if the
/// header and data lengths add up to the record length exactly.
fn main_data_len(rec: &[u8], compressed_mask: u8) -> Option<usize> {
    let tot = rec.len();
    let mut at = RECORD_HEADER_LEN;
    let mut datatotal: usize = 0;
    let mut main_len = 0usize;
    let u8_at = |at: usize| rec.get(at).copied();
    while tot.checked_sub(at)? > datatotal {
        let block_id = u8_at(at)?;
        at = at.checked_add(1)?;
        match block_id {
            255 => {
                main_len = usize::from(u8_at(at)?);
                at = at.checked_add(1)?;
                datatotal = datatotal.checked_add(main_len)?;
                break;
            }
            254 => {
                main_len = le_u32(rec, at)? as usize;
                at = at.checked_add(4)?;
                datatotal = datatotal.checked_add(main_len)?;
                break;
            }
            253 => at = at.checked_add(2)?, // replication origin
            252 => at = at.checked_add(4)?, // top-level xid
            0..=32 => {
                let fork_flags = u8_at(at)?;
                let data_len = le_u16(rec, at.checked_add(1)?)?;
                at = at.checked_add(3)?;
                datatotal = datatotal.checked_add(usize::from(data_len))?;
                if fork_flags & 0x10 != 0 {
                    // BKPBLOCK_HAS_IMAGE: XLogRecordBlockImageHeader
                    let bimg_len = le_u16(rec, at)?;
                    let bimg_info = u8_at(at.checked_add(4)?)?;
                    at = at.checked_add(5)?;
                    if bimg_info & 0x01 != 0 && bimg_info & compressed_mask != 0 {
                        at = at.checked_add(2)?; // XLogRecordBlockCompressHeader.hole_length
                    }
                    datatotal = datatotal.checked_add(usize::from(bimg_len))?;
                }
                if fork_flags & 0x80 == 0 {
                    at = at.checked_add(12)?; // RelFileLocator unless BKPBLOCK_SAME_REL
                }
                at = at.checked_add(4)?; // BlockNumber
            }
            _ => return None,
        }
    }
    if tot.checked_sub(at)? != datatotal {
        return None;
    }
    Some(main_len)
}

/// CRC-32C of a whole record as `ValidXLogRecord` computes it: bytes `[24, tot_len)` then
/// the header's `[0, 20)`.
pub fn record_crc(rec: &[u8]) -> Option<u32> {
    let body = rec.get(RECORD_HEADER_LEN..)?;
    let head = rec.get(..20)?;
    Some(crc32c::crc32c_append(crc32c::crc32c(body), head))
}

#[derive(Debug)]
enum State {
    /// At a page boundary where a leading continuation (of a record we do not have) must be
    /// skipped: decoder created at a page start, or such a continuation spans pages.
    SkipContinuation,
    /// Skip bytes up to `until` (never past a page end); then continue skipping a
    /// continuation on the next page if `then_continuation`, else expect a record.
    Skip { until: Lsn, then_continuation: bool },
    /// Skip bytes up to `until` without looking at page headers (after `XLOG_SWITCH`).
    SkipRaw { until: Lsn },
    /// The next record starts at the next MAXALIGNed position.
    RecordStart,
    /// Assembling the record starting at `lsn`; `total` is `xl_tot_len` once the header is
    /// complete (0 before).
    Reading {
        lsn: Lsn,
        buf: Vec<u8>,
        total: usize,
    },
}

/// Cuts a contiguous WAL byte stream into records.
///
/// Feed contiguous chunks of any size with [`RecordDecoder::feed`], then call
/// [`RecordDecoder::next`] until it returns `None` (more data needed). Bytes not yet
/// consumed are buffered, so memory is bounded by one record (≤ 1 GB) plus whatever was fed
/// and not yet pulled with `next`.
///
/// Checks made: page address of every page walked, `XLP_FIRST_IS_CONTRECORD` and `xlp_rem_len`
/// on continuation pages, record length (0 is reported as [`WalError::EndOfWal`]), resource
/// manager id, `xl_prev` against the previous record, CRC-32C. After an error the decoder
/// stops: `next` returns `None` from then on (see [`RecordDecoder::is_failed`]).
#[derive(Debug)]
pub struct RecordDecoder {
    seg_size: u64,
    raw: Vec<u8>,
    raw_off: usize,
    /// LSN of `raw[raw_off]`.
    pos: Lsn,
    state: State,
    /// Start of the previous record, when known (for the `xl_prev` check).
    prev: Option<Lsn>,
    failed: bool,
}

impl RecordDecoder {
    /// A decoder whose first byte will be `start`: either a record start or a page/segment
    /// start (then a leading continuation is skipped to the first whole record). `seg_size`
    /// is needed to find the next record after `XLOG_SWITCH`.
    pub fn new(start: Lsn, seg_size: u64) -> RecordDecoder {
        let state = if start.0 % WAL_PAGE_SIZE == 0 {
            State::SkipContinuation
        } else {
            State::RecordStart
        };
        RecordDecoder {
            seg_size: seg_size.max(WAL_PAGE_SIZE),
            raw: Vec::new(),
            raw_off: 0,
            pos: start,
            state,
            prev: None,
            failed: false,
        }
    }

    /// The position up to which bytes have been fed (where the next `feed` must start).
    pub fn fed_end(&self) -> Lsn {
        // `feed` refuses chunks that would overflow the LSN range.
        Lsn(self.pos.0.saturating_add(self.avail_len() as u64))
    }

    /// The position up to which bytes have been consumed.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// True once an error was returned; the decoder yields nothing more.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Start of the record being assembled when the fed bytes ran out in the middle of it
    /// (`None` between records, while skipping, or after an error). Crash recovery uses it
    /// to find the incomplete record at the end of a `.partial` segment.
    pub fn pending_start(&self) -> Option<Lsn> {
        match (&self.state, self.failed) {
            (State::Reading { lsn, .. }, false) => Some(*lsn),
            _ => None,
        }
    }

    /// Appends a chunk; `start` must equal [`RecordDecoder::fed_end`].
    pub fn feed(&mut self, start: Lsn, data: &[u8]) -> Result<(), WalError> {
        let expected = self.fed_end();
        if start != expected {
            return Err(WalError::NotContiguous {
                expected,
                got: start,
            });
        }
        if expected.checked_add(data.len() as u64).is_none() {
            return Err(WalError::LsnOverflow { lsn: expected });
        }
        if self.raw_off > 0 && self.raw_off >= self.raw.len() / 2 {
            self.raw.drain(..self.raw_off);
            self.raw_off = 0;
        }
        self.raw.extend_from_slice(data);
        Ok(())
    }

    fn avail_len(&self) -> usize {
        self.raw.len().saturating_sub(self.raw_off)
    }

    fn advance(&mut self, n: usize) {
        // n <= avail_len(), and `feed` bounds pos + avail_len() by the LSN range.
        self.raw_off = self.raw_off.saturating_add(n);
        self.pos = Lsn(self.pos.0.saturating_add(n as u64));
    }

    /// Skips towards `until`; true when reached.
    fn skip_to(&mut self, until: Lsn) -> bool {
        let n = until
            .0
            .saturating_sub(self.pos.0)
            .min(self.avail_len() as u64) as usize;
        self.advance(n);
        self.pos >= until
    }

    /// The next whole record, `None` if more data is needed (or after an error).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Record, WalError>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn step(&mut self) -> Result<Option<Record>, WalError> {
        loop {
            match self.state {
                State::SkipRaw { until } => {
                    if !self.skip_to(until) {
                        return Ok(None);
                    }
                    self.state = State::RecordStart;
                    continue;
                }
                State::Skip {
                    until,
                    then_continuation,
                } => {
                    if !self.skip_to(until) {
                        return Ok(None);
                    }
                    self.state = if then_continuation {
                        State::SkipContinuation
                    } else {
                        State::RecordStart
                    };
                    continue;
                }
                _ => {}
            }
            if self.pos.0 % WAL_PAGE_SIZE == 0 {
                if !self.page_header()? {
                    return Ok(None);
                }
                continue;
            }
            let page_end = (self.pos.0 / WAL_PAGE_SIZE)
                .saturating_add(1)
                .saturating_mul(WAL_PAGE_SIZE);
            let avail = self.avail_len();
            match &mut self.state {
                State::SkipRaw { .. } | State::Skip { .. } | State::SkipContinuation => {
                    // SkipContinuation only matters at a page boundary.
                    self.state = State::RecordStart;
                }
                State::RecordStart => {
                    let aligned = maxalign(self.pos.0);
                    self.state = if aligned != self.pos.0 {
                        // Padding never crosses a page end (pages are MAXALIGNed).
                        State::Skip {
                            until: Lsn(aligned),
                            then_continuation: false,
                        }
                    } else {
                        State::Reading {
                            lsn: self.pos,
                            buf: Vec::new(),
                            total: 0,
                        }
                    };
                }
                State::Reading { lsn, buf, total } => {
                    let lsn = *lsn;
                    let want = if *total == 0 {
                        RECORD_HEADER_LEN
                    } else {
                        *total
                    };
                    let n = want
                        .saturating_sub(buf.len())
                        .min(
                            usize::try_from(page_end.saturating_sub(self.pos.0))
                                .unwrap_or(usize::MAX),
                        )
                        .min(avail);
                    if n == 0 {
                        return Ok(None);
                    }
                    let raw_end = self.raw_off.saturating_add(n);
                    if let Some(src) = self.raw.get(self.raw_off..raw_end) {
                        buf.extend_from_slice(src);
                    }
                    // As `advance` (which cannot be called while `buf` borrows the state).
                    self.raw_off = raw_end;
                    self.pos = Lsn(self.pos.0.saturating_add(n as u64));
                    if *total == 0 && buf.len() >= 4 {
                        let len = le_u32(buf, 0).unwrap_or(0);
                        if len == 0 {
                            return Err(WalError::EndOfWal { lsn });
                        }
                        if (len as usize) < RECORD_HEADER_LEN {
                            return Err(WalError::RecordTooShort { lsn, len });
                        }
                        if len > MAX_RECORD_LEN {
                            return Err(WalError::RecordTooLong { lsn, len });
                        }
                    }
                    if *total == 0 && buf.len() == RECORD_HEADER_LEN {
                        let len = le_u32(buf, 0).unwrap_or(0);
                        let rmid = buf.get(17).copied().unwrap_or(0);
                        if rmid > RM_MAX_BUILTIN_ID && rmid < RM_MIN_CUSTOM_ID {
                            return Err(WalError::BadRmgr { rmid, lsn });
                        }
                        let prev = Lsn(le_u64(buf, 8).unwrap_or(0));
                        if let Some(expected) = self.prev {
                            if prev != expected {
                                return Err(WalError::BadPrevLink {
                                    prev,
                                    expected,
                                    lsn,
                                });
                            }
                        }
                        *total = len as usize;
                        // Grow with the data actually received, not with a claimed length.
                        buf.reserve((len as usize).min(1 << 20));
                    }
                    if *total != 0 && buf.len() == *total {
                        let buf = std::mem::take(buf);
                        self.state = State::RecordStart;
                        return self.finish(lsn, buf).map(Some);
                    }
                }
            }
        }
    }

    fn finish(&mut self, lsn: Lsn, buf: Vec<u8>) -> Result<Record, WalError> {
        let stored = le_u32(&buf, 20).unwrap_or(0);
        if record_crc(&buf) != Some(stored) {
            return Err(WalError::BadCrc { lsn });
        }
        let xid = le_u32(&buf, 4).unwrap_or(0);
        let info = buf.get(16).copied().unwrap_or(0);
        let rmid = buf.get(17).copied().unwrap_or(0);
        let mut end = self.pos;
        if rmid == RM_XLOG_ID && info & !XLR_INFO_MASK == XLOG_SWITCH {
            // seg_size >= WAL_PAGE_SIZE; the segment end saturates at the top of the range.
            let off = end.0.checked_rem(self.seg_size).unwrap_or(0);
            if off != 0 {
                end = Lsn(end.0.saturating_sub(off).saturating_add(self.seg_size));
                self.state = State::SkipRaw { until: end };
            }
        }
        self.prev = Some(lsn);
        Ok(Record {
            lsn,
            end,
            xid,
            rmid,
            info,
            data: Bytes::from(buf),
        })
    }

    /// Handles the page header at `self.pos` (a page boundary). Returns `Ok(false)` if the
    /// header is not complete yet.
    fn page_header(&mut self) -> Result<bool, WalError> {
        let page = self.pos;
        let avail = self.raw.get(self.raw_off..).unwrap_or(&[]);
        let Some(short) = avail.get(..SHORT_HEADER_LEN) else {
            return Ok(false);
        };
        let info = le_u16(short, 2).unwrap_or(0);
        let hdr_len = if info & XLP_LONG_HEADER != 0 {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        };
        let Some(hdr) = avail.get(..hdr_len).and_then(PageHeader::parse) else {
            return Ok(false);
        };
        if hdr.pageaddr != page {
            return Err(WalError::BadPageAddr {
                pageaddr: hdr.pageaddr,
                segment: crate::lsn::segment_file_name(
                    hdr.tli,
                    page.0.checked_div(self.seg_size).unwrap_or(0),
                    self.seg_size,
                ),
                lsn: page,
            });
        }
        self.advance(hdr_len);
        let after = self.pos;
        let room = WAL_PAGE_SIZE.saturating_sub(hdr_len as u64);
        match &self.state {
            State::Reading { buf, total, .. } => {
                if hdr.is_overwrite_contrecord() {
                    // The partial record was abandoned; a new record starts on this page.
                    self.prev = None;
                    self.state = State::RecordStart;
                    if hdr.is_contrecord() {
                        self.skip_continuation(hdr.rem_len, after, room);
                    }
                    return Ok(true);
                }
                if !hdr.is_contrecord() {
                    return Err(WalError::NoContRecord { lsn: page });
                }
                // xl_tot_len is always on the first page (records are MAXALIGNed).
                let tot = if *total != 0 {
                    *total as u64
                } else {
                    u64::from(le_u32(buf, 0).unwrap_or(0))
                };
                let owed = tot.saturating_sub(buf.len() as u64);
                if hdr.rem_len == 0 || (tot != 0 && u64::from(hdr.rem_len) != owed) {
                    return Err(WalError::BadContRecordLength {
                        rem_len: hdr.rem_len,
                        expected: owed,
                        lsn: page,
                    });
                }
            }
            State::SkipContinuation => {
                self.state = State::RecordStart;
                if hdr.is_contrecord() {
                    self.skip_continuation(hdr.rem_len, after, room);
                }
            }
            State::RecordStart | State::Skip { .. } | State::SkipRaw { .. } => {
                self.state = State::RecordStart;
                if hdr.is_contrecord() {
                    return Err(WalError::UnexpectedContRecord { lsn: page });
                }
            }
        }
        Ok(true)
    }

    /// Skips a continuation of `rem_len` bytes starting at `after` (right after a page
    /// header, `room` bytes left on the page), as `XLogFindNextRecord` does.
    fn skip_continuation(&mut self, rem_len: u32, after: Lsn, room: u64) {
        let skip = maxalign(u64::from(rem_len));
        self.state = if skip >= room {
            State::Skip {
                until: Lsn(after.0.saturating_add(room)),
                then_continuation: true,
            }
        } else {
            State::Skip {
                until: Lsn(after.0.saturating_add(skip)),
                then_continuation: false,
            }
        };
    }
}

/// A tiny WAL writer for tests: lays records out on pages the way PostgreSQL does.
#[cfg(test)]
pub(crate) mod build {
    use super::super::page::build::header;
    use super::super::page::{XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD};
    use super::*;

    /// Record bytes (CRC and `xl_prev` filled in by [`Writer::record`]).
    pub fn record(rmid: u8, info: u8, xid: u32, main: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let tot = 24 + main.len() + if main.len() < 256 { 2 } else { 5 };
        v.extend_from_slice(&(tot as u32).to_le_bytes());
        v.extend_from_slice(&xid.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
        if main.len() < 256 {
            v.extend_from_slice(&[255, main.len() as u8]);
        } else {
            v.push(254);
            v.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        v.extend_from_slice(main);
        v
    }

    pub struct Writer {
        pub seg: u64,
        pub start: u64,
        pub buf: Vec<u8>,
        pub prev: u64,
        pub next_page_flags: u16,
    }

    impl Writer {
        pub fn new(start: u64, seg: u64) -> Writer {
            Writer {
                seg,
                start,
                buf: Vec::new(),
                prev: 0,
                next_page_flags: 0,
            }
        }
        pub fn pos(&self) -> u64 {
            self.start + self.buf.len() as u64
        }
        fn page_header(&mut self, rem: u32) {
            let p = self.pos();
            let long = (p % self.seg == 0).then_some((42, self.seg as u32));
            let flags = if rem > 0 { XLP_FIRST_IS_CONTRECORD } else { 0 } | self.next_page_flags;
            self.next_page_flags = 0;
            self.buf
                .extend_from_slice(&header(0xD110, flags, 1, p, rem, long));
        }
        /// Writes (up to `limit` bytes of) a record; returns its LSN.
        pub fn record_limited(&mut self, mut rec: Vec<u8>, limit: usize) -> u64 {
            while self.pos() % 8 != 0 {
                self.buf.push(0);
            }
            if self.pos() % WAL_PAGE_SIZE == 0 {
                self.page_header(0);
            }
            let lsn = self.pos();
            rec[8..16].copy_from_slice(&self.prev.to_le_bytes());
            let crc = record_crc(&rec).unwrap();
            rec[20..24].copy_from_slice(&crc.to_le_bytes());
            let mut rest = &rec[..limit.min(rec.len())];
            let mut owed = rec.len();
            while !rest.is_empty() {
                if self.pos() % WAL_PAGE_SIZE == 0 {
                    self.page_header(owed as u32);
                }
                let room = (WAL_PAGE_SIZE - self.pos() % WAL_PAGE_SIZE) as usize;
                let n = room.min(rest.len());
                self.buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                owed -= n;
            }
            self.prev = lsn;
            lsn
        }
        pub fn record(&mut self, rec: Vec<u8>) -> u64 {
            self.record_limited(rec, usize::MAX)
        }
        /// Zero-fills to the next page boundary.
        pub fn pad_page(&mut self) {
            while self.pos() % WAL_PAGE_SIZE != 0 {
                self.buf.push(0);
            }
        }
        pub fn overwrite_next_page(&mut self) {
            self.pad_page();
            self.next_page_flags = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        }
        /// XLOG_SWITCH, then zeros to the end of the segment.
        pub fn switch(&mut self) -> u64 {
            let lsn = self.record(record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]));
            while self.pos() % self.seg != 0 {
                self.buf.push(0);
            }
            lsn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const SEG: u64 = 1 << 20;

    fn decode(start: u64, data: &[u8], chunk: usize) -> Vec<Result<Record, WalError>> {
        let mut d = RecordDecoder::new(Lsn(start), SEG);
        let mut out = Vec::new();
        let mut pos = start;
        for c in data.chunks(chunk.max(1)) {
            d.feed(Lsn(pos), c).unwrap();
            pos += c.len() as u64;
            while let Some(r) = d.next() {
                out.push(r);
            }
        }
        out
    }

    /// LSNs of the records decoded; a trailing `EndOfWal` (zero padding) is fine.
    fn ok_lsns(v: &[Result<Record, WalError>]) -> Vec<u64> {
        v.iter()
            .filter(|r| !matches!(r, Err(WalError::EndOfWal { .. })))
            .map(|r| r.as_ref().unwrap().lsn.0)
            .collect()
    }

    fn sample(w: &mut Writer) -> Vec<u64> {
        let mut lsns = Vec::new();
        for (i, size) in [0usize, 10, 300, 8100, 5, 20_000, 1, 7, 70_000, 33]
            .iter()
            .enumerate()
        {
            let main: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8).collect();
            lsns.push(w.record(record(10, 0x10, i as u32, &main)));
        }
        lsns
    }

    #[test]
    fn spanning_records_any_chunking() {
        let mut w = Writer::new(SEG * 5, SEG);
        let lsns = sample(&mut w);
        // A record header straddling a page boundary: fill to 8 bytes before a page end.
        let room = |w: &Writer| {
            let p = maxalign(w.pos());
            WAL_PAGE_SIZE - p % WAL_PAGE_SIZE
        };
        if room(&w) <= 32 {
            w.record(record(10, 0, 98, b"x"));
        }
        let fill = (room(&w) - 8) as usize;
        let len = if fill - 26 < 256 {
            fill - 26
        } else {
            fill - 29
        };
        w.record(record(10, 0, 97, &vec![3; len]));
        let straddle = w.record(record(10, 0, 99, b"straddling"));
        assert_eq!(straddle % WAL_PAGE_SIZE, WAL_PAGE_SIZE - 8);
        w.pad_page();
        let want: Vec<u64> = decode(SEG * 5, &w.buf, 1 << 20)
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| r.lsn.0))
            .collect();
        assert_eq!(want[..lsns.len()], lsns[..]);
        assert_eq!(*want.last().unwrap(), straddle);
        for chunk in [1usize, 3, 24, 4096, 8192, 9000, 1 << 20] {
            let got = decode(SEG * 5, &w.buf, chunk);
            assert_eq!(ok_lsns(&got), want, "chunk {chunk}");
            let r = got[5].as_ref().unwrap();
            assert_eq!(r.main_data().unwrap().len(), 20_000);
            assert_eq!(r.xid, 5);
            assert_eq!(r.end.0, r.lsn.0 + r.tot_len() as u64 + 2 * 24);
        }
    }

    #[test]
    fn start_at_page_with_continuation() {
        let mut w = Writer::new(SEG * 5, SEG);
        let lsns = sample(&mut w);
        w.pad_page();
        // Start on every page boundary; the first record must be the first one starting at
        // or after the page's header.
        let mut page = SEG * 5;
        while page < w.pos() {
            let off = (page - SEG * 5) as usize;
            let got = decode(page, &w.buf[off..], 5000);
            let want: Vec<u64> = lsns.iter().copied().filter(|l| *l > page).collect();
            assert_eq!(ok_lsns(&got), want, "page {page:X}");
            page += WAL_PAGE_SIZE;
        }
    }

    #[test]
    fn switch_skips_to_next_segment() {
        let mut w = Writer::new(SEG * 5 - 3 * WAL_PAGE_SIZE, SEG);
        w.record(record(10, 0, 1, b"a"));
        let sw = w.switch();
        let after = w.record(record(10, 0, 2, b"b"));
        assert_eq!(after, SEG * 5 + 40);
        for chunk in [7usize, 8192, 1 << 20] {
            let got = decode(w.start, &w.buf, chunk);
            assert_eq!(ok_lsns(&got)[1..], [sw, after]);
            assert_eq!(got[1].as_ref().unwrap().end, Lsn(SEG * 5));
            assert!(got[1].as_ref().unwrap().is_switch());
        }
    }

    #[test]
    fn overwrite_contrecord_drops_partial() {
        let mut w = Writer::new(SEG * 5, SEG);
        let a = w.record(record(10, 0, 1, b"a"));
        w.record_limited(record(10, 0, 2, &[9; 20_000]), 9000);
        w.overwrite_next_page();
        w.prev = 0; // xl_prev is not checked across an overwritten contrecord
        let c = w.record(record(0, 0x90, 0, &[1; 16]));
        let d = w.record(record(10, 0, 3, b"d"));
        w.pad_page();
        for chunk in [100usize, 8192, 1 << 20] {
            let got = decode(w.start, &w.buf, chunk);
            assert_eq!(ok_lsns(&got), [a, c, d], "chunk {chunk}");
        }
    }

    #[test]
    fn errors_stop_the_decoder() {
        let mut w = Writer::new(SEG * 5, SEG);
        w.record(record(10, 0, 1, b"a"));
        let b = w.record(record(10, 0, 2, &[5; 9000]));
        w.record(record(10, 0, 3, b"c"));
        w.pad_page();
        let boff = (b - w.start) as usize;

        let mut bad = w.buf.clone();
        bad[boff + 30] ^= 1;
        let got = decode(w.start, &bad, 1 << 20);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(WalError::BadCrc { lsn }) if lsn == Lsn(b)));

        let mut bad = w.buf.clone();
        bad[boff + 8] ^= 1;
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(e.to_string().contains("incorrect prev-link"), "{e}");

        let mut bad = w.buf.clone();
        bad[boff + 17] = 50;
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(matches!(e, WalError::BadRmgr { rmid: 50, .. }));

        let mut bad = w.buf.clone();
        bad[boff..boff + 4].copy_from_slice(&0u32.to_le_bytes());
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(matches!(e, WalError::EndOfWal { .. }), "{e}");

        let mut bad = w.buf.clone();
        bad[boff..boff + 4].copy_from_slice(&0x7000_0000u32.to_le_bytes());
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(matches!(e, WalError::RecordTooLong { .. }), "{e}");

        // The continuation page without XLP_FIRST_IS_CONTRECORD, or with a wrong rem_len.
        let cont_page = (b / WAL_PAGE_SIZE + 1) * WAL_PAGE_SIZE;
        let coff = (cont_page - w.start) as usize;
        let mut bad = w.buf.clone();
        bad[coff + 2] &= !1;
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(matches!(e, WalError::NoContRecord { .. }), "{e}");
        let mut bad = w.buf.clone();
        bad[coff + 16] ^= 4;
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(e.to_string().contains("invalid contrecord length"), "{e}");
        let mut bad = w.buf.clone();
        bad[coff + 9] ^= 1;
        let e = decode(w.start, &bad, 1 << 20).pop().unwrap().unwrap_err();
        assert!(e.to_string().contains("unexpected pageaddr"), "{e}");

        // After an error nothing more comes out.
        let mut d = RecordDecoder::new(Lsn(w.start), SEG);
        let mut bad = w.buf.clone();
        bad[boff + 30] ^= 1;
        d.feed(Lsn(w.start), &bad).unwrap();
        assert!(d.next().unwrap().is_ok());
        assert!(d.next().unwrap().is_err());
        assert!(d.is_failed() && d.next().is_none());
        // Non-contiguous feed.
        let mut d = RecordDecoder::new(Lsn(w.start), SEG);
        assert!(d.feed(Lsn(w.start + 1), &[0]).is_err());
    }

    #[test]
    fn main_data_after_block_references() {
        // Block 0 with data and a compressed image with a hole (15+ layout), block 1 with
        // the same relation, then a short main-data header.
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 0x10 | 0x20]); // block 0: HAS_IMAGE | HAS_DATA
        body.extend_from_slice(&3u16.to_le_bytes()); // data_length
        body.extend_from_slice(&5u16.to_le_bytes()); // bimg length
        body.extend_from_slice(&100u16.to_le_bytes()); // hole offset
        body.push(0x01 | 0x04); // HAS_HOLE | COMPRESS_PGLZ
        body.extend_from_slice(&50u16.to_le_bytes()); // hole length
        body.extend_from_slice(&[0; 12]); // RelFileLocator
        body.extend_from_slice(&7u32.to_le_bytes()); // block number
        body.extend_from_slice(&[1, 0x80 | 0x20]); // block 1: SAME_REL | HAS_DATA
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&8u32.to_le_bytes());
        body.extend_from_slice(&[252, 1, 2, 3, 4]); // top-level xid
        body.extend_from_slice(&[255, 4]); // main data: 4 bytes
        body.extend_from_slice(&[0xAA; 5 + 3 + 2]); // image + block data
        body.extend_from_slice(b"MAIN");
        let mut data = vec![0u8; 24];
        data[..4].copy_from_slice(&((24 + body.len()) as u32).to_le_bytes());
        data.extend_from_slice(&body);
        let r = Record {
            lsn: Lsn(1),
            end: Lsn(2),
            xid: 0,
            rmid: 10,
            info: 0,
            data: data.into(),
        };
        assert_eq!(r.main_data(), Some(&b"MAIN"[..]));
    }
}

//! WAL positions, timelines and file names.
//!
//! Owns: the [`Lsn`] newtype (printed and parsed as PostgreSQL's `X/X`), [`TimelineId`],
//! segment arithmetic and the names of segment and history files (`xlog_internal.h`).
//! Must not: do IO or know about the network.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]
use std::fmt;
use std::str::FromStr;

/// XLOG_BLCKSZ: the WAL page size. PostgreSQL builds with another value exist but are
/// vanishingly rare; walrelay checks `xlp_xlog_blcksz` in each segment's long header.
pub const WAL_PAGE_SIZE: u64 = 8192;

/// A WAL position (`XLogRecPtr`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A timeline id (`TimeLineID`).
pub type TimelineId = u32;

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }
    /// The segment number holding this position.
    /// (A zero `seg_size`, never valid, gives 0 rather than a panic.)
    pub fn segno(self, seg_size: u64) -> u64 {
        self.0.checked_div(seg_size).unwrap_or(0)
    }
    /// Offset of this position inside its segment.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0.checked_rem(seg_size).unwrap_or(0)
    }
    /// Rounded down to the start of its segment.
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0.saturating_sub(self.segment_offset(seg_size)))
    }
    /// Rounded down to the start of its page.
    pub fn page_start(self) -> Lsn {
        Lsn(self.0.saturating_sub(self.segment_offset(WAL_PAGE_SIZE)))
    }
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }
    pub fn saturating_sub(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

/// Error for an LSN that is not `hex/hex`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL location: \"{0}\"")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    /// Parses `X/X` as PostgreSQL prints it (also the zero-padded `X/%08X` form).
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let ok =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// Is `size` a valid `wal_segment_size` (a power of two from 1 MB to 1 GB)?
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

fn segments_per_xlogid(seg_size: u64) -> u64 {
    0x1_0000_0000u64.checked_div(seg_size).unwrap_or(0)
}

/// `XLogFileName`: `%08X%08X%08X` of timeline, segno / segments-per-id, segno % segments-per-id.
pub fn segment_file_name(tli: TimelineId, segno: u64, seg_size: u64) -> String {
    let per = segments_per_xlogid(seg_size);
    format!(
        "{:08X}{:08X}{:08X}",
        tli,
        segno.checked_div(per).unwrap_or(0),
        segno.checked_rem(per).unwrap_or(0)
    )
}

/// `TLHistoryFileName`: `%08X.history`.
pub fn history_file_name(tli: TimelineId) -> String {
    format!("{tli:08X}.history")
}

/// What a file name in a WAL directory names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileName {
    Segment {
        tli: TimelineId,
        segno: u64,
        partial: bool,
    },
    History {
        tli: TimelineId,
    },
}

/// Parses a segment name (optionally `.partial`) or a history file name.
/// Returns `None` for anything else, including names whose low part is out of range
/// for this segment size.
pub fn parse_wal_file_name(name: &str, seg_size: u64) -> Option<WalFileName> {
    let hex = |s: &str| {
        if s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        {
            u32::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    if let Some(t) = name.strip_suffix(".history") {
        if t.len() == 8 {
            return hex(t).map(|tli| WalFileName::History { tli });
        }
        return None;
    }
    let (base, partial) = match name.strip_suffix(".partial") {
        Some(b) => (b, true),
        None => (name, false),
    };
    if base.len() != 24 {
        return None;
    }
    // `get`, not indexing: 24 bytes of a non-ASCII name need not split at char boundaries.
    let tli = hex(base.get(0..8)?)?;
    let hi = u64::from(hex(base.get(8..16)?)?);
    let lo = u64::from(hex(base.get(16..24)?)?);
    let per = segments_per_xlogid(seg_size);
    if lo >= per || tli == 0 {
        return None;
    }
    Some(WalFileName::Segment {
        tli,
        segno: hi.checked_mul(per)?.checked_add(lo)?,
        partial,
    })
}

/// Current time as PostgreSQL's `TimestampTz`: microseconds since 2000-01-01 00:00 UTC.
pub fn pg_now() -> i64 {
    system_time_to_pg(std::time::SystemTime::now())
}

/// Seconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_UNIX_SECS * 1_000_000;

pub fn system_time_to_pg(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_sub(PG_EPOCH_MICROS),
        Err(_) => PG_EPOCH_MICROS.saturating_neg(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u64 = 16 << 20;

    /// Issue 12: a 24-byte object name with multi-byte characters panicked (string slice
    /// inside a character) and killed the archiver task.
    #[test]
    fn non_ascii_24_byte_names_are_not_wal_files() {
        // 24 bytes, with a 3-byte character across byte 8 or byte 16
        let across_8 = format!("{}€{}", "0".repeat(7), "0".repeat(14));
        let across_16 = format!("{}€{}", "0".repeat(15), "0".repeat(6));
        for name in [across_8, across_16] {
            assert_eq!(name.len(), 24);
            assert_eq!(parse_wal_file_name(&name, SEG), None, "{name}");
            assert_eq!(
                parse_wal_file_name(&format!("{name}.partial"), SEG),
                None,
                "{name}"
            );
        }
        let twelve = "é".repeat(12);
        assert_eq!(twelve.len(), 24);
        assert_eq!(parse_wal_file_name(&twelve, SEG), None);
        assert_eq!(parse_wal_file_name("0000000€.history", SEG), None);
        // a zero segment size is no panic either
        assert_eq!(parse_wal_file_name("000000010000000000000001", 0), None);
        assert_eq!(Lsn(5).segno(0), 0);
    }

    #[test]
    fn lsn_round_trip() {
        for s in ["0/0", "0/3000000", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("0/03000000".parse::<Lsn>().unwrap(), Lsn(0x300_0000));
        for bad in ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(segment_file_name(1, 3, SEG), "000000010000000000000003");
        assert_eq!(
            segment_file_name(2, 0x1_05, SEG),
            "000000020000000100000005"
        );
        assert_eq!(history_file_name(10), "0000000A.history");
        assert_eq!(
            parse_wal_file_name("000000020000000100000005.partial", SEG),
            Some(WalFileName::Segment {
                tli: 2,
                segno: 0x105,
                partial: true
            })
        );
        assert_eq!(
            parse_wal_file_name("0000000A.history", SEG),
            Some(WalFileName::History { tli: 10 })
        );
        assert_eq!(parse_wal_file_name("000000010000000000000100", SEG), None);
        assert_eq!(parse_wal_file_name("00000001000000000000000a", SEG), None);
        assert_eq!(
            parse_wal_file_name("000000010000000000000003.gz", SEG),
            None
        );
        // 1 GB segments: 4 per xlogid.
        assert_eq!(segment_file_name(1, 5, 1 << 30), "000000010000000100000001");
    }

    #[test]
    fn segment_math() {
        let l = Lsn(0x1_0300_1234);
        assert_eq!(l.segment_start(SEG), Lsn(0x1_0300_0000));
        assert_eq!(l.segment_offset(SEG), 0x1234);
        assert_eq!(l.page_start(), Lsn(0x1_0300_0000));
        assert!(
            valid_segment_size(SEG) && !valid_segment_size(3 << 20) && !valid_segment_size(1 << 19)
        );
    }
}

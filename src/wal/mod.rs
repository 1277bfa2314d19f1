//! Pure WAL format: page headers, timeline history files, records and the few record
//! bodies walrelay reads (transaction commit/abort/prepare, restore points).
//!
//! Owns: the byte layouts from PostgreSQL's `xlog_internal.h`, `xlogrecord.h`, `xact.h`,
//! `timeline.c` and `xlogreader.c`, re-expressed as non-panicking Rust decoders.
//! Must not: do IO, allocate per byte on the hot path, or panic on any input (all of it comes
//! from the network or from disk).
//!
//! | file | owns |
//! |---|---|
//! | [`page`] | page headers and the streaming [`page::PageValidator`] |
//! | [`history`] | `NNNNNNNN.history` parsing and timeline lookups |
//! | [`record`] | the incremental [`record::RecordDecoder`] (page walk, continuations, CRC) |
//! | [`xact`] | commit/abort/prepare and restore-point bodies |

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

pub mod history;
pub mod page;
pub mod record;
pub mod xact;

use crate::lsn::{Lsn, TimelineId};

pub use history::{parse_history, switch_point_of, tli_of_lsn, HistoryEntry};
pub use page::{PageHeader, PageValidator};
pub use record::{Record, RecordDecoder};
pub use xact::{decode_restore_point, decode_xact, RelFileLocator, XactKind, XactRecord};

/// `MAXALIGN` on every platform PostgreSQL ships WAL from in practice (8 bytes).
pub const MAXALIGN: u64 = 8;

/// Rounds `n` up to a multiple of [`MAXALIGN`] (saturating at the top of the range).
pub(crate) fn maxalign(n: u64) -> u64 {
    n.checked_add(MAXALIGN - 1)
        .map_or(!(MAXALIGN - 1), |v| v & !(MAXALIGN - 1))
}

/// Little-endian readers that return `None` instead of panicking.
pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    let mut a = [0u8; 2];
    a.copy_from_slice(s);
    Some(u16::from_le_bytes(a))
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Errors found in WAL bytes or in a history file. Messages name the LSN (and, for page
/// problems, the segment file) the way PostgreSQL's own reader does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("invalid magic number {magic:04X} in WAL segment {segment}, LSN {lsn}")]
    BadMagic {
        magic: u16,
        segment: String,
        lsn: Lsn,
    },
    #[error(
        "WAL page magic number {magic:04X} differs from the stream's {expected:04X} in WAL segment {segment}, LSN {lsn}"
    )]
    MagicChanged {
        magic: u16,
        expected: u16,
        segment: String,
        lsn: Lsn,
    },
    #[error("invalid info bits {info:04X} in WAL segment {segment}, LSN {lsn}")]
    BadInfoBits {
        info: u16,
        segment: String,
        lsn: Lsn,
    },
    #[error("unexpected pageaddr {pageaddr} in WAL segment {segment}, LSN {lsn}")]
    BadPageAddr {
        pageaddr: Lsn,
        segment: String,
        lsn: Lsn,
    },
    #[error(
        "out-of-sequence timeline ID {tli} (after {prev}) in WAL segment {segment}, LSN {lsn}"
    )]
    TimelineOutOfSequence {
        tli: TimelineId,
        prev: TimelineId,
        segment: String,
        lsn: Lsn,
    },
    #[error(
        "timeline ID {tli} is beyond the stream's timeline {stream_tli} in WAL segment {segment}, LSN {lsn}"
    )]
    TimelineAhead {
        tli: TimelineId,
        stream_tli: TimelineId,
        segment: String,
        lsn: Lsn,
    },
    #[error("missing long page header at the start of WAL segment {segment}, LSN {lsn}")]
    MissingLongHeader { segment: String, lsn: Lsn },
    #[error("unexpected long page header in WAL segment {segment}, LSN {lsn}")]
    UnexpectedLongHeader { segment: String, lsn: Lsn },
    #[error(
        "WAL file is from a different database system: WAL file database system identifier is {found}, expected {expected} (segment {segment}, LSN {lsn})"
    )]
    SysidMismatch {
        found: u64,
        expected: u64,
        segment: String,
        lsn: Lsn,
    },
    #[error(
        "WAL file is from a different database system: incorrect segment size {found} in page header, expected {expected} (segment {segment}, LSN {lsn})"
    )]
    SegSizeMismatch {
        found: u32,
        expected: u64,
        segment: String,
        lsn: Lsn,
    },
    #[error(
        "WAL file is from a different database system: incorrect XLOG_BLCKSZ {found} in page header (segment {segment}, LSN {lsn})"
    )]
    BlckszMismatch {
        found: u32,
        segment: String,
        lsn: Lsn,
    },
    #[error(
        "non-zero page header after an all-zero one (WAL switch padding) in WAL segment {segment}, LSN {lsn}"
    )]
    NonZeroAfterZeroPage { segment: String, lsn: Lsn },
    #[error(
        "WAL data for LSN {got} is not contiguous with the previous data ending at {expected}"
    )]
    NotContiguous { expected: Lsn, got: Lsn },
    #[error("invalid record length at {lsn}: wanted at least 24, got {len}")]
    RecordTooShort { lsn: Lsn, len: u32 },
    #[error("record length {len} at {lsn} too long")]
    RecordTooLong { lsn: Lsn, len: u32 },
    #[error("invalid record length at {lsn}: got 0 (end of WAL)")]
    EndOfWal { lsn: Lsn },
    #[error("invalid resource manager ID {rmid} at {lsn}")]
    BadRmgr { rmid: u8, lsn: Lsn },
    #[error("record with incorrect prev-link {prev} at {lsn} (expected {expected})")]
    BadPrevLink { prev: Lsn, expected: Lsn, lsn: Lsn },
    #[error("incorrect resource manager data checksum in record at {lsn}")]
    BadCrc { lsn: Lsn },
    #[error("there is no contrecord flag at {lsn}")]
    NoContRecord { lsn: Lsn },
    #[error("invalid contrecord length {rem_len} (expected {expected}) at {lsn}")]
    BadContRecordLength {
        rem_len: u32,
        expected: u64,
        lsn: Lsn,
    },
    #[error("contrecord is requested by {lsn}")]
    UnexpectedContRecord { lsn: Lsn },
    #[error("invalid page header at {lsn}: {reason}")]
    BadPageHeader { lsn: Lsn, reason: &'static str },
    #[error("WAL position {lsn} is out of range")]
    LsnOverflow { lsn: Lsn },
    #[error("syntax error in history file: {line}: {hint}")]
    HistorySyntax { line: String, hint: &'static str },
    #[error("invalid data in history file: {line}: Timeline IDs must be in increasing sequence.")]
    HistoryOrder { line: String },
    /// A history file that parses but cannot be the history of its timeline (see
    /// [`history::validate_history`]).
    #[error("invalid timeline history file \"{file}\": {reason}")]
    HistoryInvalid { file: String, reason: String },
}

impl crate::error::SqlState for WalError {
    fn sqlstate(&self) -> &'static str {
        crate::error::codes::INTERNAL_ERROR
    }
}

#[cfg(test)]
mod tests;

//! Reading the data directory: which WAL files exist, and where streaming resumes.
//!
//! Owns: the directory listing rules (`pg_receivewal`'s `FindStreamingStart`). Read-only.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::io;
use std::path::Path;

use crate::lsn::{parse_wal_file_name, Lsn, TimelineId, WalFileName};

/// A WAL segment file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub tli: TimelineId,
    pub segno: u64,
    pub partial: bool,
    pub size: u64,
    pub name: String,
}

/// Lists segment files (complete and `.partial`) and timeline history files.
pub fn list(dir: &Path, seg_size: u64) -> io::Result<(Vec<SegmentFile>, Vec<TimelineId>)> {
    let mut segs = Vec::new();
    let mut histories = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((segs, histories)),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // WAL file names are ASCII; anything else is a stray file (and must not reach the
        // byte-offset slicing of the name parser).
        if !name.is_ascii() {
            continue;
        }
        match parse_wal_file_name(&name, seg_size) {
            Some(WalFileName::Segment {
                tli,
                segno,
                partial,
            }) => {
                let size = entry.metadata()?.len();
                segs.push(SegmentFile {
                    tli,
                    segno,
                    partial,
                    size,
                    name,
                });
            }
            Some(WalFileName::History { tli }) => histories.push(tli),
            None => {}
        }
    }
    segs.sort_by_key(|s| (s.segno, s.tli, !s.partial));
    histories.sort_unstable();
    Ok((segs, histories))
}

/// Where streaming resumes from the files already present, as `pg_receivewal` decides it:
/// the highest segment number, then the highest timeline, a complete file preferred over a
/// partial one. A `.partial` restarts at its own segment start, a complete segment at the next
/// one. Files of the wrong size are skipped (a complete segment always has the full size; a
/// `.partial` that is short was interrupted while being zero-padded and is re-padded on open).
pub fn resume_point(dir: &Path, seg_size: u64) -> io::Result<Option<(Lsn, TimelineId)>> {
    let (mut segs, _) = list(dir, seg_size)?;
    // pg_receivewal --compress files (.gz, .lz4, and their .partial) count as well.
    segs.extend(super::compress::list(dir, seg_size)?);
    let best = segs
        .iter()
        .filter(|s| s.partial || s.size == seg_size)
        .max_by_key(|s| (s.segno, s.tli, !s.partial));
    Ok(best.map(|s| {
        let segno = if s.partial {
            s.segno
        } else {
            s.segno.saturating_add(1)
        };
        (Lsn(segno.saturating_mul(seg_size)), s.tli)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u64 = 1 << 20;

    fn touch(dir: &Path, name: &str, size: u64) {
        std::fs::File::create(dir.join(name))
            .unwrap()
            .set_len(size)
            .unwrap();
    }

    #[test]
    fn resume_rules() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(resume_point(d.path(), SEG).unwrap(), None);
        touch(d.path(), "000000010000000000000001", SEG);
        touch(d.path(), "000000010000000000000002", SEG);
        assert_eq!(
            resume_point(d.path(), SEG).unwrap(),
            Some((Lsn(3 * SEG), 1))
        );
        touch(d.path(), "000000010000000000000003.partial", SEG);
        assert_eq!(
            resume_point(d.path(), SEG).unwrap(),
            Some((Lsn(3 * SEG), 1))
        );
        // a newer timeline's partial for the same segment wins
        touch(d.path(), "000000020000000000000003.partial", SEG);
        assert_eq!(
            resume_point(d.path(), SEG).unwrap(),
            Some((Lsn(3 * SEG), 2))
        );
        // a short complete segment is ignored
        touch(d.path(), "000000020000000000000004", 100);
        assert_eq!(
            resume_point(d.path(), SEG).unwrap(),
            Some((Lsn(3 * SEG), 2))
        );
        touch(d.path(), "00000002.history", 40);
        touch(d.path(), "junk", 1);
        let (segs, hist) = list(d.path(), SEG).unwrap();
        assert_eq!(segs.len(), 5);
        assert_eq!(hist, vec![2]);
    }
}

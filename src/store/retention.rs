//! Local retention: which completed segments may leave the data directory, and removing them.
//!
//! Owns: the retention rule and the removal itself (run on the store thread, the only writer
//! of WAL files; the archiver decides and asks through [`super::Store::remove_segments`]).
//! A completed segment is removed only when all of these hold:
//! - it is in the archive (the caller's `archived` predicate: confirmed uploaded),
//! - it is behind every proxy-side replication slot (`slot_floor`),
//! - it is outside the keep window: older than `keep_age` (file mtime) AND not among the
//!   newest `keep_size` bytes of WAL in the directory.
//!
//! `.partial` files, history files and the segment being written are never removed.
//! Must not: talk to object stores.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::scan::SegmentFile;
use super::{fsutil, io_err, StoreError};
use crate::lsn::{parse_wal_file_name, Lsn, TimelineId, WalFileName};

/// The keep window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_size: u64,
    pub keep_age: Duration,
}

/// Names of the completed segments among `segs` that may be removed (see the module docs).
/// `mtime` gives a file's modification time (None: unknown, kept).
pub fn removable(
    segs: &[SegmentFile],
    seg_size: u64,
    policy: &RetentionPolicy,
    slot_floor: Option<Lsn>,
    now: SystemTime,
    archived: impl Fn(TimelineId, u64) -> bool,
    mtime: impl Fn(&SegmentFile) -> Option<SystemTime>,
) -> Vec<String> {
    if seg_size == 0 {
        return Vec::new();
    }
    let newest_end = segs
        .iter()
        .filter_map(|s| s.segno.checked_add(1)?.checked_mul(seg_size))
        .max()
        .unwrap_or(0);
    let size_limit = newest_end.saturating_sub(policy.keep_size);
    segs.iter()
        .filter(|s| !s.partial && s.size == seg_size)
        .filter(|s| {
            let Some(end) = s.segno.checked_add(1).and_then(|n| n.checked_mul(seg_size)) else {
                return false;
            };
            if end > size_limit {
                return false;
            }
            if slot_floor.is_some_and(|f| end > f.0) {
                return false;
            }
            if !archived(s.tli, s.segno) {
                return false;
            }
            match mtime(s) {
                Some(t) => now
                    .duration_since(t)
                    .map(|age| age >= policy.keep_age)
                    .unwrap_or(false),
                None => false,
            }
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Removes completed segment files by name on the store thread; `open` is the name of the
/// segment being written (refused, like anything that is not a completed segment name).
/// fsyncs the directory once at the end. Returns how many files were removed.
pub(super) fn remove(
    dir: &Path,
    names: &[String],
    seg_size: u64,
    open: Option<&str>,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    if seg_size == 0 {
        return Ok(0);
    }
    for name in names {
        let ok = matches!(
            parse_wal_file_name(name, seg_size),
            Some(WalFileName::Segment { partial: false, .. })
        );
        if !ok || open == Some(name.as_str()) {
            tracing::warn!("segment store: refusing to remove \"{name}\": not a completed segment");
            continue;
        }
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    if removed > 0 {
        fsutil::fsync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u64 = 1 << 20;

    fn seg(segno: u64, partial: bool) -> SegmentFile {
        SegmentFile {
            tli: 1,
            segno,
            partial,
            size: SEG,
            name: crate::lsn::segment_file_name(1, segno, SEG)
                + if partial { ".partial" } else { "" },
        }
    }

    #[test]
    fn rule() {
        let segs: Vec<SegmentFile> = (1..=10).map(|n| seg(n, n == 10)).collect();
        let now = SystemTime::now();
        let old = Some(now - Duration::from_secs(7200));
        let p = RetentionPolicy {
            keep_size: 3 * SEG,
            keep_age: Duration::from_secs(3600),
        };
        // newest end = 11 segs; keep 3 -> ends <= 8 segs, i.e. segnos 1..=7
        let r = removable(&segs, SEG, &p, None, now, |_, _| true, |_| old);
        assert_eq!(r.len(), 7);
        // not archived: kept
        let r = removable(&segs, SEG, &p, None, now, |_, n| n < 4, |_| old);
        assert_eq!(r.len(), 3);
        // slot at segment 5's start: segments ending after it stay
        let r = removable(
            &segs,
            SEG,
            &p,
            Some(Lsn(5 * SEG)),
            now,
            |_, _| true,
            |_| old,
        );
        assert_eq!(r.len(), 4);
        // too young
        let r = removable(&segs, SEG, &p, None, now, |_, _| true, |_| Some(now));
        assert!(r.is_empty());
        // unknown mtime, zero seg size: nothing
        assert!(removable(&segs, SEG, &p, None, now, |_, _| true, |_| None).is_empty());
        assert!(removable(&segs, 0, &p, None, now, |_, _| true, |_| old).is_empty());
    }

    #[test]
    fn removal_refuses_partials_and_open() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "00000002.history",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let names: Vec<String> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "00000002.history",
            "../etc",
            "000000010000000000000009",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let n = remove(d.path(), &names, SEG, Some("000000010000000000000002")).unwrap();
        assert_eq!(n, 1);
        assert!(!d.path().join("000000010000000000000001").exists());
        assert!(d.path().join("000000010000000000000002").exists());
        assert!(d.path().join("000000010000000000000003.partial").exists());
        assert!(d.path().join("00000002.history").exists());
    }
}

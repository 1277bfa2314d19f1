//! Compares the WAL walrelay stored with the primary's own `pg_wal` byte by byte.
//!
//! Owns nothing; only reads. Complete segments are files named by 24 hex digits; a
//! `<segment>.partial` file is compared up to a given offset inside the segment.
use std::path::Path;

fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// For every complete segment file in `walrelay_dir` (not recursive), the file of the same
/// name in `pg_wal_dir` must be byte-identical. Ok(number compared) or Err(description naming
/// the file and the first differing offset, or the missing file).
pub fn segments_identical(walrelay_dir: &Path, pg_wal_dir: &Path) -> Result<usize, String> {
    let mut names: Vec<String> = std::fs::read_dir(walrelay_dir)
        .map_err(|e| format!("read_dir {}: {e}", walrelay_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_segment_name(n))
        .collect();
    names.sort();
    for name in &names {
        let ours = std::fs::read(walrelay_dir.join(name))
            .map_err(|e| format!("read walrelay's {name}: {e}"))?;
        let theirs = std::fs::read(pg_wal_dir.join(name)).map_err(|e| {
            format!(
                "segment {name} written by walrelay has no counterpart in {}: {e}",
                pg_wal_dir.display()
            )
        })?;
        if let Some(off) = first_difference(&ours, &theirs) {
            return Err(format!(
                "segment {name} differs from the primary's at byte offset {off} (0x{off:x}); \
                 sizes {} (walrelay) vs {} (primary)",
                ours.len(),
                theirs.len()
            ));
        }
    }
    Ok(names.len())
}

/// Panicking form of [`segments_identical`]; returns the number of segments compared.
pub fn assert_segments_identical(walrelay_dir: &Path, pg_wal_dir: &Path) -> usize {
    segments_identical(walrelay_dir, pg_wal_dir).unwrap_or_else(|e| panic!("{e}"))
}

/// `partial` (a `<segment>.partial` file) must equal the primary's segment of the same name
/// for its first `upto` bytes (an offset inside the segment, e.g. the flushed LSN's
/// `segment_offset`). The partial file must be at least `upto` bytes long.
pub fn partial_matches(partial: &Path, pg_wal_dir: &Path, upto: u64) -> Result<(), String> {
    let fname = partial
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("bad path {}", partial.display()))?;
    let seg = fname
        .strip_suffix(".partial")
        .filter(|s| is_segment_name(s))
        .ok_or_else(|| format!("{fname} is not a <segment>.partial file"))?;
    let upto = usize::try_from(upto).map_err(|_| "offset too large".to_string())?;
    let ours = std::fs::read(partial).map_err(|e| format!("read {fname}: {e}"))?;
    let theirs = std::fs::read(pg_wal_dir.join(seg))
        .map_err(|e| format!("primary's {seg} for {fname}: {e}"))?;
    if ours.len() < upto {
        return Err(format!(
            "{fname} is {} bytes, shorter than the expected {upto}",
            ours.len()
        ));
    }
    if theirs.len() < upto {
        return Err(format!(
            "primary's {seg} is {} bytes, shorter than {upto}",
            theirs.len()
        ));
    }
    if let Some(off) = first_difference(&ours[..upto], &theirs[..upto]) {
        return Err(format!(
            "{fname} differs from the primary's {seg} at byte offset {off} (0x{off:x}), \
             comparing the first {upto} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_detects_difference() {
        let a = crate::harness::TestDir::new("cmp-a");
        let b = crate::harness::TestDir::new("cmp-b");
        let name = "000000010000000000000001";
        std::fs::write(a.join(name), [1u8, 2, 3, 4]).unwrap();
        std::fs::write(b.join(name), [1u8, 2, 3, 4]).unwrap();
        std::fs::write(a.join("000000010000000000000002.partial"), [9u8, 8, 0, 0]).unwrap();
        std::fs::write(b.join("000000010000000000000002"), [9u8, 8, 7, 6]).unwrap();
        assert_eq!(segments_identical(a.path(), b.path()), Ok(1));
        let partial = a.join("000000010000000000000002.partial");
        assert!(partial_matches(&partial, b.path(), 2).is_ok());
        let err = partial_matches(&partial, b.path(), 3).unwrap_err();
        assert!(err.contains("offset 2"), "{err}");
        std::fs::write(b.join(name), [1u8, 2, 5, 4]).unwrap();
        let err = segments_identical(a.path(), b.path()).unwrap_err();
        assert!(err.contains("offset 2"), "{err}");
    }
}

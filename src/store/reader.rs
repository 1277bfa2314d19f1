//! Read-only access to WAL segment files for walsenders.
//!
//! Owns: opening a timeline's segment file (complete name first, then `.partial`, retrying
//! once if the store renamed it in between), keeping the last one open (an open file
//! descriptor survives the rename), and reads into the caller's buffer that never cross a
//! segment boundary nor go past what the caller says is readable. Nothing read is kept:
//! sharing it between sessions is [`super::readcache`]'s. A missing segment is
//! [`ReadError::Removed`], which the walsender reports as PostgreSQL does (58P01 "requested
//! WAL segment … has already been removed").
//!
//! Must not: write, rename or delete anything; decide how far a client may read (the caller
//! bounds reads by the flush position).

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
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{codes, SqlState};
use crate::lsn::{segment_file_name, Lsn, TimelineId};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("requested WAL segment {0} has already been removed")]
    Removed(String),
    #[error("could not read from file \"{path}\": {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("could not read from file \"{path}\": read {got} of {wanted}")]
    Short {
        path: PathBuf,
        got: usize,
        wanted: usize,
    },
}

impl SqlState for ReadError {
    fn sqlstate(&self) -> &'static str {
        match self {
            ReadError::Removed(_) => codes::UNDEFINED_FILE,
            _ => codes::IO_ERROR,
        }
    }
}

struct OpenFile {
    tli: TimelineId,
    segno: u64,
    file: File,
    path: PathBuf,
}

/// A per-session reader of the data directory's WAL files.
pub struct WalReader {
    dir: PathBuf,
    seg_size: u64,
    open: Option<OpenFile>,
}

impl WalReader {
    pub fn new(dir: &Path, seg_size: u64) -> WalReader {
        WalReader {
            dir: dir.to_path_buf(),
            seg_size,
            open: None,
        }
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    fn open(&mut self, tli: TimelineId, segno: u64) -> Result<&OpenFile, ReadError> {
        if !self
            .open
            .as_ref()
            .is_some_and(|o| o.tli == tli && o.segno == segno)
        {
            self.open = None;
            let name = segment_file_name(tli, segno, self.seg_size);
            let mut found = None;
            'attempts: for _ in 0..2 {
                for candidate in [name.clone(), format!("{name}.partial")] {
                    let path = self.dir.join(&candidate);
                    match File::open(&path) {
                        Ok(file) => {
                            found = Some(OpenFile {
                                tli,
                                segno,
                                file,
                                path,
                            });
                            break 'attempts;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => return Err(ReadError::Io { path, source }),
                    }
                }
            }
            self.open = Some(found.ok_or(ReadError::Removed(name))?);
        }
        self.open
            .as_ref()
            .ok_or_else(|| ReadError::Removed(segment_file_name(tli, segno, self.seg_size)))
    }

    /// Whether the segment holding `lsn` exists on timeline `tli` (complete or partial).
    pub fn exists(&self, tli: TimelineId, lsn: Lsn) -> bool {
        let name = segment_file_name(tli, lsn.segno(self.seg_size), self.seg_size);
        self.dir.join(&name).exists() || self.dir.join(format!("{name}.partial")).exists()
    }

    /// Reads up to `len` bytes at `start` from timeline `tli`'s file, stopping at the end of
    /// the segment.
    pub fn read(&mut self, tli: TimelineId, start: Lsn, len: usize) -> Result<Bytes, ReadError> {
        self.read_into(tli, start, len, len, Vec::new())
            .map(Bytes::from)
    }

    /// Reads up to `len` bytes at `start` from timeline `tli`'s file into `buf` (cleared; e.g.
    /// a pooled buffer), stopping at the end of the segment; fewer than `at_least` bytes
    /// (capped at the segment end) is [`ReadError::Short`]. Nothing is kept: the caller
    /// guarantees the `len` bytes are durable and caches them if it wants to.
    pub fn read_into(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        len: usize,
        at_least: usize,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, ReadError> {
        let seg_size = self.seg_size;
        let offset = start.segment_offset(seg_size);
        let in_segment = usize::try_from(seg_size.saturating_sub(offset)).unwrap_or(usize::MAX);
        let n = len.min(in_segment);
        let at_least = at_least.min(n);
        let f = self.open(tli, start.segno(seg_size))?;
        // read into spare capacity (no zero-fill of a buffer that is overwritten anyway)
        buf.clear();
        buf.reserve_exact(n);
        let mut file = &f.file;
        let res = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(n as u64).read_to_end(&mut buf));
        if let Err(source) = res {
            return Err(ReadError::Io {
                path: f.path.clone(),
                source,
            });
        }
        if buf.len() < at_least {
            return Err(ReadError::Short {
                path: f.path.clone(),
                got: buf.len(),
                wanted: at_least,
            });
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_then_partial_and_reports_removed() {
        let dir = tempfile::tempdir().unwrap();
        let seg: u64 = 1 << 20;
        let data: Vec<u8> = (0..seg).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("000000010000000000000001"), &data).unwrap();
        std::fs::write(dir.path().join("000000010000000000000002.partial"), &data).unwrap();
        let mut r = WalReader::new(dir.path(), seg);
        let b = r.read(1, Lsn(seg + 10), 5).unwrap();
        assert_eq!(&b[..], &data[10..15]);
        // never crosses the segment end
        let b = r.read(1, Lsn(2 * seg - 3), 100).unwrap();
        assert_eq!(b.len(), 3);
        let b = r.read(1, Lsn(2 * seg), 4).unwrap();
        assert_eq!(&b[..], &data[..4]);
        let e = r.read(1, Lsn(3 * seg), 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "requested WAL segment 000000010000000000000003 has already been removed"
        );
        assert_eq!(e.sqlstate(), "58P01");
        assert!(r.exists(1, Lsn(2 * seg)));
        assert!(!r.exists(2, Lsn(2 * seg)));
    }

    #[test]
    fn read_into_keeps_nothing_and_reports_short_reads() {
        let dir = tempfile::tempdir().unwrap();
        let seg: u64 = 1 << 20;
        let data: Vec<u8> = (0..seg).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("000000010000000000000001.partial");
        std::fs::write(&path, &data[..1000]).unwrap();
        let mut r = WalReader::new(dir.path(), seg);
        // a reused buffer is cleared first
        let b = r.read_into(1, Lsn(seg + 100), 50, 10, vec![7; 3]).unwrap();
        assert_eq!(&b[..], &data[100..150]);
        // what the file holds, when at least `at_least`
        let b = r.read_into(1, Lsn(seg), 4096, 1000, Vec::new()).unwrap();
        assert_eq!(&b[..], &data[..1000]);
        let e = r
            .read_into(1, Lsn(seg), 4096, 1001, Vec::new())
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("000000010000000000000001.partial\": read 1000 of 1001"),
            "{e}"
        );
        assert_eq!(e.sqlstate(), "58030");
        // nothing buffered: the file's new content is read through the same descriptor
        std::fs::write(&path, vec![0u8; 2000]).unwrap();
        let b = r.read_into(1, Lsn(seg + 100), 4, 4, Vec::new()).unwrap();
        assert_eq!(&b[..], &[0, 0, 0, 0]);
        // never past the segment end, whatever is asked
        std::fs::write(&path, &data).unwrap();
        let b = r
            .read_into(1, Lsn(2 * seg - 3), 1 << 20, 1 << 20, Vec::new())
            .unwrap();
        assert_eq!(&b[..], &data[data.len() - 3..]);
    }
}

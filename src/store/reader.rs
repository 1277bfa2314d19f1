//! Read-only access to WAL segment files for walsenders.
//!
//! Owns: opening a timeline's segment file (complete name first, then `.partial`, retrying
//! once if the store renamed it in between), keeping the last one open (an open file
//! descriptor survives the rename), and positional reads that never cross a segment
//! boundary. A missing segment is [`ReadError::Removed`], which the walsender reports as
//! PostgreSQL does (58P01 "requested WAL segment … has already been removed").
//!
//! Must not: write, rename or delete anything; decide how far a client may read (the caller
//! bounds reads by the flush position).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

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
        let seg_size = self.seg_size;
        let offset = start.segment_offset(seg_size);
        let len = len.min((seg_size - offset) as usize);
        let f = self.open(tli, start.segno(seg_size))?;
        let mut buf = BytesMut::zeroed(len);
        let mut got = 0;
        while got < len {
            match f.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => {
                    return Err(ReadError::Short {
                        path: f.path.clone(),
                        got,
                        wanted: len,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ReadError::Io {
                        path: f.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(buf.freeze())
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
}

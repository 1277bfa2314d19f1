//! Fault injection for power-loss tests: a storage layer under the store that loses every
//! write not yet fsynced when the process dies.
//!
//! Owns: the test-only switch `WALRELAY_TEST_UNSYNCED_LOSS=1` (read once when the store
//! starts; a WARNING is logged) and the in-memory pending writes of the open segment.
//! With the switch on, `pwrite`s to a segment are held in memory and reach the file only when
//! the store fsyncs it (then written and `fdatasync`ed), and the rename that completes a
//! segment takes effect only when the directory is fsynced. `kill -9` then leaves the files
//! exactly as a power cut would leave a filesystem that keeps only what was fsynced — unlike
//! a plain `kill -9`, which keeps the page cache and so cannot show a missing fsync.
//! This is a scripted fake for a fault the test machine cannot produce (a real power cut);
//! production never sets it. Not covered: the timeline history and control files (written by
//! [`super::fsutil::write_atomic`], which fsyncs file and directory itself), and torn writes
//! inside one fsync (the store never relies on the order of writes within one).
//!
//! Must not: be enabled by anything but the environment variable.

use std::io;
use std::path::PathBuf;

pub const ENV: &str = "WALRELAY_TEST_UNSYNCED_LOSS";

/// Whether the fault injection is switched on.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1")
}

/// Writes of one file not yet fsynced.
#[derive(Debug, Default)]
pub struct Pending {
    writes: Vec<(u64, Vec<u8>)>,
}

impl Pending {
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }

    /// Writes everything held with `write(data, offset)` (the caller fsyncs next).
    pub fn apply(&mut self, mut write: impl FnMut(&[u8], u64) -> io::Result<()>) -> io::Result<()> {
        for (off, data) in self.writes.drain(..) {
            write(&data, off)?;
        }
        Ok(())
    }

    /// Lays the held writes over `buf`, which was read from the file at `offset`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset.saturating_add(buf.len() as u64);
        for (off, data) in &self.writes {
            let w_end = off.saturating_add(data.len() as u64);
            let lo = (*off).max(offset);
            let hi = w_end.min(end);
            if lo >= hi {
                continue;
            }
            let (Ok(dst_lo), Ok(src_lo), Ok(n)) = (
                usize::try_from(lo - offset),
                usize::try_from(lo - off),
                usize::try_from(hi - lo),
            ) else {
                continue;
            };
            if let (Some(dst), Some(src)) = (
                buf.get_mut(dst_lo..dst_lo.saturating_add(n)),
                data.get(src_lo..src_lo.saturating_add(n)),
            ) {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// Renames waiting for the directory fsync.
#[derive(Debug, Default)]
pub struct PendingRenames {
    renames: Vec<(PathBuf, PathBuf)>,
}

impl PendingRenames {
    pub fn push(&mut self, from: PathBuf, to: PathBuf) {
        self.renames.push((from, to));
    }

    /// Performs the held renames (the caller fsyncs the directory next).
    pub fn apply(&mut self) -> io::Result<()> {
        for (from, to) in self.renames.drain(..) {
            std::fs::rename(&from, &to)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    #[test]
    fn held_until_applied_and_overlaid() {
        let d = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(d.path().join("f"))
            .unwrap();
        f.set_len(16).unwrap();
        let mut p = Pending::default();
        p.write(2, b"abcd");
        p.write(4, b"XY");
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0; 8], "nothing reached the file");
        p.overlay(1, &mut buf);
        assert_eq!(&buf, b"\0abXY\0\0\0");
        p.apply(|d, o| f.write_all_at(d, o)).unwrap();
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"\0\0abXY\0\0");
    }
}

//! Setting divergent WAL aside: walrelay holds WAL of timeline `tli` past the point where the
//! upstream's current history forked off it (a failover to a standby that was behind
//! walrelay). That WAL is not on the server's history any more: it must never be served or
//! archived as `tli`'s WAL, yet it is kept for inspection.
//!
//! Owns: moving those files into `<data>/diverged/<TLI>-<fork>/` (for example
//! `diverged/00000001-0-312750/000000010000000000000004.partial`), and cutting the segment
//! that holds the fork point back to it: its original is copied there first, then the bytes
//! from the fork on are zeroed and the file is kept as `<segment>.partial` (the timeline ends
//! inside it, as after a promotion in PostgreSQL). The subdirectory is invisible to everything
//! that lists the data directory (resume point, archiver, retention, walsender), which only
//! read its top level.
//!
//! Every step is durable before the next and the steps can be repeated: a crash in the
//! middle leaves either the original, or the copy plus the original, and running again
//! finishes the job (an existing copy is never overwritten).
//!
//! Runs on the store thread (blocking I/O). Must not: decide whether WAL diverged (the
//! receive loop does, from the server's history) or touch the open segment (the store closes
//! it first).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{control, fsutil, io_err, scan, StoreError};
use crate::lsn::{Lsn, TimelineId};

/// The subdirectory of the data directory that holds divergent WAL.
pub const DIVERGED_DIR: &str = "diverged";

/// What [`set_aside`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAside {
    /// Where the files went.
    pub dir: PathBuf,
    /// Files moved or copied there, by their original names.
    pub files: Vec<String>,
    /// Bytes of WAL set aside: from the fork point to the end of the data in each file
    /// (trailing zero padding excluded).
    pub bytes: u64,
}

/// `diverged/<TLI>-<hi>-<lo>` for timeline `tli` forked at `fork`.
pub fn diverged_dir(data_dir: &Path, tli: TimelineId, fork: Lsn) -> PathBuf {
    data_dir.join(DIVERGED_DIR).join(format!(
        "{tli:08X}-{:X}-{:X}",
        fork.0 >> 32,
        fork.0 & 0xFFFF_FFFF
    ))
}

/// Offset just past the last non-zero byte of `path` (0 for a file of zeros).
fn data_extent(path: &Path) -> io::Result<u64> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut end = len;
    while end > 0 {
        let n = end.min(buf.len() as u64) as usize;
        let start = end - n as u64;
        let chunk = buf.get_mut(..n).unwrap_or_default();
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Moves or copies WAL of timeline `tli` at and past `fork` out of the way (see the module
/// documentation). Returns what was set aside; nothing when walrelay's WAL on `tli` ends at
/// or before `fork`.
pub fn set_aside(
    data_dir: &Path,
    seg_size: u64,
    tli: TimelineId,
    fork: Lsn,
) -> io::Result<SetAside> {
    let target = diverged_dir(data_dir, tli, fork);
    let fork_seg = fork.segno(seg_size);
    let fork_off = fork.segment_offset(seg_size);
    let (segs, _) = scan::list(data_dir, seg_size)?;
    let mut out = SetAside {
        dir: target.clone(),
        ..SetAside::default()
    };
    for s in segs.iter().filter(|s| s.tli == tli && s.segno >= fork_seg) {
        let path = data_dir.join(&s.name);
        let extent = data_extent(&path)?;
        let whole = s.segno > fork_seg || fork_off == 0;
        let dest = target.join(&s.name);
        if !whole && extent <= fork_off {
            // The switch segment holds nothing past the fork. If an earlier run cut it but
            // died before the rename, finish that.
            if !s.partial && dest.exists() {
                fsutil::durable_rename(&path, &data_dir.join(format!("{}.partial", s.name)))?;
            }
            continue;
        }
        fsutil::ensure_dir(&target)?;
        if whole {
            if dest.exists() {
                // Set aside before (a repeated fork at the same point): keep both.
                let mut n = 1;
                while target.join(format!("{}.{n}", s.name)).exists() {
                    n += 1;
                }
                std::fs::rename(&path, target.join(format!("{}.{n}", s.name)))?;
            } else {
                std::fs::rename(&path, &dest)?;
            }
            out.bytes += extent.saturating_sub(if s.segno == fork_seg { fork_off } else { 0 });
        } else {
            // The segment holding the fork: keep [segment start, fork) on `tli`.
            if !dest.exists() {
                let tmp = target.join(format!("{}.tmp", s.name));
                std::fs::copy(&path, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
                fsutil::fsync_dir(&target)?;
            }
            let f = OpenOptions::new().write(true).open(&path)?;
            let zeros = vec![0u8; 1 << 20];
            let mut off = fork_off;
            while off < extent {
                let n = (extent - off).min(zeros.len() as u64) as usize;
                f.write_all_at(zeros.get(..n).unwrap_or_default(), off)?;
                off += n as u64;
            }
            f.sync_all()?;
            drop(f);
            if !s.partial {
                std::fs::rename(&path, data_dir.join(format!("{}.partial", s.name)))?;
            }
            out.bytes += extent - fork_off;
        }
        out.files.push(s.name.clone());
    }
    if !out.files.is_empty() {
        fsutil::fsync_dir(&target)?;
        if let Some(parent) = target.parent() {
            fsutil::fsync_dir(parent)?;
        }
        fsutil::fsync_dir(data_dir)?;
    }
    Ok(out)
}

impl super::Writer {
    /// The store thread's side of [`super::Store::set_aside_diverged`]: closes the open
    /// segment, sets the files aside, and when the store was writing `tli` past `fork`, pulls
    /// its positions (and the control file's) back to the fork, forgets the in-memory tail and
    /// accepts no more WAL until the next `begin`.
    pub(super) fn set_aside_diverged(
        &mut self,
        tli: TimelineId,
        fork: Lsn,
    ) -> Result<SetAside, StoreError> {
        let seg_size = self.seg_size();
        if seg_size == 0 {
            return Err(StoreError::NotOpen);
        }
        // Whatever happens below, nothing at or past the fork may stay published: on a
        // failure to close or to set the files aside, the positions and the floor still go
        // back to the fork and the store fails (a walsender must not serve diverged WAL).
        let r = self.close_open().and_then(|()| {
            set_aside(&self.dir, seg_size, tli, fork)
                .map_err(io_err("set aside diverged WAL in", &self.dir))
        });
        if self.pos.timeline == tli && self.pos.write_lsn > fork {
            self.pos.write_lsn = fork;
            self.pos.flush_lsn = self.pos.flush_lsn.min(fork);
            self.tail.reset(tli);
            self.validator = None;
        }
        // The published positions never go below the floor on its timeline; past a fork that
        // promise is void (the WAL is not on the history any more), so the floor goes back too.
        if let Some((ftli, f)) = self.floor {
            if ftli == tli && f > fork {
                self.floor = Some((tli, fork));
            }
        }
        let control = match self.control.as_mut() {
            Some(c) if c.timeline == tli && c.flush_lsn() > fork => {
                c.flush_lsn = fork.to_string();
                let path = self.dir.join(control::CONTROL_FILE);
                control::write(&self.dir, c).map_err(io_err("write", &path))
            }
            _ => Ok(()),
        };
        match (r, control) {
            (Ok(r), Ok(())) => Ok(r),
            (Err(e), _) | (Ok(_), Err(e)) => {
                let reply = match &e {
                    StoreError::Io { op, path, source } => StoreError::Io {
                        op,
                        path: path.clone(),
                        source: std::io::Error::new(source.kind(), source.to_string()),
                    },
                    other => StoreError::Recovery(other.to_string()),
                };
                self.fail(e);
                Err(reply)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u64 = 1 << 20;

    fn seg_with(dir: &Path, name: &str, data_len: usize, fill: u8) {
        let mut v = vec![0u8; SEG as usize];
        v[..data_len].fill(fill);
        std::fs::write(dir.join(name), v).unwrap();
    }

    #[test]
    fn sets_aside_past_the_fork_and_cuts_the_switch_segment() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        seg_with(p, "000000010000000000000002", SEG as usize, 1);
        seg_with(p, "000000010000000000000003", SEG as usize, 2);
        seg_with(p, "000000010000000000000004", SEG as usize, 3);
        seg_with(p, "000000010000000000000005.partial", 1000, 4);
        seg_with(p, "000000020000000000000003.partial", 10, 9);
        let fork = Lsn(3 * SEG + 0x12750);
        let r = set_aside(p, SEG, 1, fork).unwrap();
        assert_eq!(
            r.files,
            vec![
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000005.partial"
            ]
        );
        assert_eq!(r.bytes, (SEG - 0x12750) + SEG + 1000);
        assert_eq!(r.dir, p.join("diverged/00000001-0-312750"));
        // the switch segment keeps the bytes before the fork, as a partial
        assert!(!p.join("000000010000000000000003").exists());
        let cut = std::fs::read(p.join("000000010000000000000003.partial")).unwrap();
        assert!(cut[..0x12750].iter().all(|&b| b == 2));
        assert!(cut[0x12750..].iter().all(|&b| b == 0));
        assert_eq!(cut.len() as u64, SEG);
        // the original, whole, is kept aside
        let orig = std::fs::read(r.dir.join("000000010000000000000003")).unwrap();
        assert!(orig.iter().all(|&b| b == 2));
        assert!(r.dir.join("000000010000000000000004").is_file());
        assert!(r.dir.join("000000010000000000000005.partial").is_file());
        // untouched: before the fork, and other timelines
        assert!(p.join("000000010000000000000002").is_file());
        assert!(p.join("000000020000000000000003.partial").is_file());
        // the data directory's listing no longer shows anything past the fork on timeline 1
        let (segs, _) = scan::list(p, SEG).unwrap();
        assert!(segs.iter().all(|s| s.tli != 1 || s.segno <= 3));
        // repeating finds nothing more to do
        let again = set_aside(p, SEG, 1, fork).unwrap();
        assert!(again.files.is_empty(), "{again:?}");
        assert_eq!(again.bytes, 0);
    }

    #[test]
    fn nothing_past_the_fork_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        seg_with(p, "000000010000000000000003.partial", 0x12750, 2);
        let r = set_aside(p, SEG, 1, Lsn(3 * SEG + 0x12750)).unwrap();
        assert!(r.files.is_empty());
        assert!(!p.join(DIVERGED_DIR).exists());
        // a fork at a segment boundary sets the whole segment aside
        let r = set_aside(p, SEG, 1, Lsn(3 * SEG)).unwrap();
        assert_eq!(r.files, vec!["000000010000000000000003.partial"]);
        assert_eq!(r.bytes, 0x12750);
        assert!(p
            .join("diverged/00000001-0-300000/000000010000000000000003.partial")
            .is_file());
    }

    #[test]
    fn a_crash_after_the_copy_is_finished_by_the_next_run() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        seg_with(p, "000000010000000000000003", SEG as usize, 2);
        let fork = Lsn(3 * SEG + 0x100);
        // the copy was made, then the process died before the cut
        let dir = diverged_dir(p, 1, fork);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            p.join("000000010000000000000003"),
            dir.join("000000010000000000000003"),
        )
        .unwrap();
        let r = set_aside(p, SEG, 1, fork).unwrap();
        assert_eq!(r.files, vec!["000000010000000000000003"]);
        let cut = std::fs::read(p.join("000000010000000000000003.partial")).unwrap();
        assert!(cut[0x100..].iter().all(|&b| b == 0));
        let orig = std::fs::read(dir.join("000000010000000000000003")).unwrap();
        assert!(orig.iter().all(|&b| b == 2));
        // cut, but the rename to .partial did not happen: the next run renames it
        std::fs::rename(
            p.join("000000010000000000000003.partial"),
            p.join("000000010000000000000003"),
        )
        .unwrap();
        let r = set_aside(p, SEG, 1, fork).unwrap();
        assert!(r.files.is_empty());
        assert!(p.join("000000010000000000000003.partial").is_file());
        assert!(!p.join("000000010000000000000003").exists());
    }
    /// A store thread on a fresh directory holding four flushed pages of timeline 1.
    async fn store_with_four_flushed_pages() -> (tempfile::TempDir, crate::store::Store, Vec<u8>) {
        use crate::store::{Store, StoreOptions};
        use crate::wal::page::build::pages;
        use bytes::Bytes;
        const SYSID: u64 = 7_000_000_000_000_000_001;
        let d = tempfile::tempdir().unwrap();
        let store = Store::start(d.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(0)).await.unwrap();
        let wal = pages(0, 4, SEG, SYSID, 1);
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal))
            .await
            .unwrap();
        store.flush().await.unwrap();
        let mut rx = store.positions();
        while rx.borrow_and_update().flush_lsn < Lsn(4 * 8192) {
            rx.changed().await.unwrap();
        }
        (d, store, wal)
    }

    /// Through the store thread: positions, floor and tail go back to the fork; nothing more
    /// is accepted on the old timeline until the next `begin`.
    #[tokio::test]
    async fn the_store_pulls_its_positions_back_to_the_fork() {
        use bytes::Bytes;
        let (d, store, wal) = store_with_four_flushed_pages().await;
        let fork = Lsn(8192 + 100);
        assert_eq!(store.positions().borrow().rewinds, 0);
        let r = store.set_aside_diverged(1, fork).await.unwrap();
        assert_eq!(r.files, vec!["000000010000000000000000.partial"]);
        // flush_lsn stepped back on timeline 1: counted, so caches of file bytes let go
        assert_eq!(store.positions().borrow().rewinds, 1);
        let extent = wal.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
        assert_eq!(r.bytes, extent - fork.0);
        let p = store.positions().borrow().clone();
        assert_eq!((p.timeline, p.write_lsn, p.flush_lsn), (1, fork, fork));
        assert_eq!(store.tail().get(1, Lsn(0), Lsn(4 * 8192), 1 << 20), None);
        let cut = std::fs::read(d.path().join("000000010000000000000000.partial")).unwrap();
        assert_eq!(&cut[..fork.0 as usize], &wal[..fork.0 as usize]);
        assert!(cut[fork.0 as usize..].iter().all(|&b| b == 0));
        // no more WAL on timeline 1
        store
            .write(fork, Bytes::copy_from_slice(&wal[fork.0 as usize..]))
            .await
            .unwrap();
        store.flush().await.unwrap();
        let mut rx = store.positions();
        while rx.borrow_and_update().error.is_none() {
            rx.changed().await.unwrap();
        }
        assert_eq!(store.positions().borrow().flush_lsn, fork);
        // the next timeline begins normally
        store.begin(2, Lsn(0)).await.unwrap();
        let p = store.positions().borrow().clone();
        assert_eq!((p.timeline, p.error, p.rewinds), (2, None, 1));
    }
    /// A failure to set the files aside still pulls the published positions back to the fork
    /// and fails the store: nothing past the fork may be served.
    #[tokio::test]
    async fn a_failed_set_aside_still_caps_at_the_fork_and_fails_the_store() {
        use bytes::Bytes;
        let (d, store, wal) = store_with_four_flushed_pages().await;
        // injected failure: the diverged/ directory cannot be created (a file is in the way)
        std::fs::write(d.path().join(DIVERGED_DIR), b"in the way").unwrap();
        let fork = Lsn(8192 + 100);
        let e = store.set_aside_diverged(1, fork).await.unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::Io {
                    op: "set aside diverged WAL in",
                    ..
                }
            ),
            "{e}"
        );
        let p = store.positions().borrow().clone();
        assert_eq!((p.timeline, p.write_lsn, p.flush_lsn), (1, fork, fork));
        assert!(p.error.is_some(), "{p:?}");
        assert_eq!(store.tail().get(1, Lsn(0), Lsn(4 * 8192), 1 << 20), None);
        // failed: more WAL does not move the positions
        store
            .write(fork, Bytes::copy_from_slice(&wal[fork.0 as usize..]))
            .await
            .unwrap();
        store.flush().await.unwrap();
        assert_eq!(store.positions().borrow().flush_lsn, fork);
    }
}

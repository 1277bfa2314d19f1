//! The segment store: the only writer of WAL files.
//!
//! Owns: the data directory's WAL files (`<segment>.partial` while open, reserved at the full
//! segment size (fallocate, else zeros); fsync, rename, fsync of the directory when a segment completes), timeline
//! history files, the control file, the published positions (`write_lsn`, `flush_lsn`) and an
//! in-memory tail of recent WAL that walsenders share without copying.
//!
//! Runs on its own OS thread ([`Store::start`]): writes are handed over through a bounded
//! queue, so a slow disk pushes back on the network reader instead of growing memory, and
//! network receive overlaps with disk writes. After draining the queue the thread fsyncs
//! (group commit), so `flush_lsn` trails `write_lsn` by at most one batch.
//!
//! Everything is checked before it is written: the chunk must start exactly at `write_lsn`
//! and every page header inside it must carry the right magic, address, timeline, system id
//! and segment size ([`crate::wal::page::PageValidator`]). A failed check or an I/O error puts
//! the store into a failed state: it writes nothing more, `flush_lsn` stops moving (so nothing
//! more is acknowledged) and the error is published in [`Positions::error`] until the next
//! [`Store::begin`].
//!
//! Must not: touch sockets or object stores.

pub mod control;
pub mod fsutil;
pub mod reader;
pub mod retention;
pub mod scan;
mod tail;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::lsn::{history_file_name, segment_file_name, Lsn, TimelineId};
use crate::wal::page::PageValidator;
pub use control::ControlData;
pub use tail::Tail;

/// What the store has made of the WAL so far. Published on a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    pub system_id: u64,
    pub wal_segment_size: u64,
    /// Timeline being written.
    pub timeline: TimelineId,
    /// End of the WAL written to files (not necessarily durable).
    pub write_lsn: Lsn,
    /// End of the WAL fsynced to disk on `timeline`.
    pub flush_lsn: Lsn,
    /// Number of segments completed (durably renamed) since start; archivers wake on it.
    pub completed_segments: u64,
    /// Set when the store stopped accepting WAL; cleared by the next `begin`.
    pub error: Option<String>,
}

/// Errors of the segment store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not {op} file \"{path}\": {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("got WAL data at {got}, expected {expected}")]
    Discontinuity { got: Lsn, expected: Lsn },
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("data directory \"{dir}\" holds WAL of system {found} with segment size {found_seg_size}, but the server is system {expected} with segment size {expected_seg_size}")]
    IdentityMismatch {
        dir: PathBuf,
        found: u64,
        found_seg_size: u64,
        expected: u64,
        expected_seg_size: u64,
    },
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("segment {0} is already complete in the data directory; refusing to overwrite it")]
    SegmentExists(String),
    #[error("the store is not open: call open and begin first")]
    NotOpen,
    #[error("the store thread has stopped")]
    Stopped,
}

impl crate::error::SqlState for StoreError {
    fn sqlstate(&self) -> &'static str {
        use crate::error::codes;
        match self {
            StoreError::Io { source, .. } if source.raw_os_error() == Some(28) => codes::DISK_FULL,
            StoreError::Io { .. } => codes::IO_ERROR,
            _ => codes::INTERNAL_ERROR,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

enum Request {
    Open {
        system_id: u64,
        seg_size: u64,
        server_version: String,
        reply: oneshot::Sender<Result<Option<(Lsn, TimelineId)>, StoreError>>,
    },
    Begin {
        tli: TimelineId,
        start: Lsn,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Write {
        start: Lsn,
        data: Bytes,
    },
    Flush,
    History {
        tli: TimelineId,
        content: Bytes,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RemoveSegments {
        names: Vec<String>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

/// Handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    positions: watch::Receiver<Positions>,
    tail: Arc<Tail>,
    dir: PathBuf,
}

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Chunks queued between the network reader and the writer thread.
    pub queue_chunks: usize,
    /// Bytes of recent WAL kept in memory for walsenders.
    pub tail_bytes: usize,
    /// Shortest time between two fsyncs of the open segment when nobody asked for one (group
    /// commit). WAL written after a quiet spell (no fsync for this long) is fsynced as soon as
    /// the queue is drained, so a lone commit pays no delay; under a continuous stream fsyncs
    /// are at most this often. `Store::flush` (used by `--synchronous`) fsyncs at the end of
    /// the current batch regardless.
    pub flush_delay: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue_chunks: 256,
            tail_bytes: 64 << 20,
            flush_delay: std::time::Duration::from_millis(10),
        }
    }
}

impl Store {
    /// Starts the writer thread for `dir` (created if missing).
    pub fn start(dir: &Path, opts: StoreOptions) -> io::Result<Store> {
        fsutil::ensure_dir(dir)?;
        let (tx, rx) = mpsc::channel(opts.queue_chunks.max(1));
        let (pos_tx, positions) = watch::channel(Positions::default());
        let tail = Arc::new(Tail::new(opts.tail_bytes));
        let mut writer = Writer::new(dir.to_path_buf(), pos_tx, tail.clone(), opts.flush_delay);
        let rt = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("walrelay-store".into())
            .spawn(move || writer.run(rx, rt))?;
        Ok(Store {
            tx,
            positions,
            tail,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn positions(&self) -> watch::Receiver<Positions> {
        self.positions.clone()
    }
    pub fn tail(&self) -> &Arc<Tail> {
        &self.tail
    }

    /// Checks the directory against the server's identity (recording it on first use) and
    /// returns where streaming resumes from the files present, if any.
    pub async fn open(
        &self,
        system_id: u64,
        seg_size: u64,
        server_version: &str,
    ) -> Result<Option<(Lsn, TimelineId)>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Open {
            system_id,
            seg_size,
            server_version: server_version.into(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Starts writing timeline `tli` at `start` (a segment start). Closes (keeping it
    /// `.partial`) any segment left open by a previous timeline or connection.
    pub async fn begin(&self, tli: TimelineId, start: Lsn) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Begin { tli, start, reply }).await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues WAL for writing. Waits only when the queue is full.
    pub async fn write(&self, start: Lsn, data: Bytes) -> Result<(), StoreError> {
        self.send(Request::Write { start, data }).await
    }

    /// Asks for an fsync of everything written so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.send(Request::Flush).await
    }

    /// Stores a timeline history file durably.
    pub async fn write_history(&self, tli: TimelineId, content: Bytes) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::History {
            tli,
            content,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// fsyncs and closes the open segment (it stays `.partial`), and records positions in the
    /// control file.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Close { reply }).await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Removes completed segment files (retention; see [`retention`]). Partial files, history
    /// files and the open segment are refused. Returns how many files were removed.
    pub async fn remove_segments(&self, names: Vec<String>) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::RemoveSegments { names, reply }).await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    pub fn has_history(&self, tli: TimelineId) -> bool {
        self.dir.join(history_file_name(tli)).is_file()
    }

    async fn send(&self, req: Request) -> Result<(), StoreError> {
        self.tx.send(req).await.map_err(|_| StoreError::Stopped)
    }
}

struct OpenSegment {
    segno: u64,
    file: File,
    path: PathBuf,
}

/// State owned by the store thread.
struct Writer {
    dir: PathBuf,
    control: Option<ControlData>,
    validator: Option<PageValidator>,
    open: Option<OpenSegment>,
    pos: Positions,
    pos_tx: watch::Sender<Positions>,
    tail: Arc<Tail>,
    dirty: bool,
    /// When the oldest unflushed write happened.
    dirty_since: Option<std::time::Instant>,
    /// When the last fsync of WAL data finished (the group-commit clock).
    last_fsync: Option<std::time::Instant>,
    flush_requested: bool,
    flush_delay: std::time::Duration,
    failed: bool,
    zeros: Vec<u8>,
}

impl Writer {
    fn new(
        dir: PathBuf,
        pos_tx: watch::Sender<Positions>,
        tail: Arc<Tail>,
        flush_delay: std::time::Duration,
    ) -> Writer {
        Writer {
            dir,
            control: None,
            validator: None,
            open: None,
            pos: Positions::default(),
            pos_tx,
            tail,
            dirty: false,
            dirty_since: None,
            last_fsync: None,
            flush_requested: false,
            flush_delay,
            failed: false,
            zeros: Vec::new(),
        }
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Request>, rt: Option<tokio::runtime::Handle>) {
        loop {
            // Wait for work; while WAL is waiting for its fsync, only until its deadline.
            let deadline = self.dirty_since.map(|_| self.fsync_due_in());
            let req = match (deadline, &rt) {
                (Some(wait), Some(rt)) if !wait.is_zero() => {
                    match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(req)) => Some(req),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
                (Some(_), _) => match rx.try_recv() {
                    Ok(req) => Some(req),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                },
                (None, _) => match rx.blocking_recv() {
                    Some(req) => Some(req),
                    None => break,
                },
            };
            if let Some(req) = req {
                self.handle(req);
                // Group commit: take what else is queued before deciding on an fsync.
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(req) => self.handle(req),
                        Err(_) => break,
                    }
                }
            }
            let due = self.dirty_since.is_some() && self.fsync_due_in().is_zero();
            if self.dirty && (self.flush_requested || due) {
                if let Err(e) = self.fsync() {
                    self.fail(e);
                }
            }
            self.flush_requested = false;
            self.publish();
        }
        // The handle is gone (the process is stopping): make the open segment durable. When
        // `close` already did it there is nothing left, so no control-file write can race with
        // the process exit.
        if self.open.is_some() {
            let _ = self.close_open();
        }
    }

    /// How long until written WAL is due for its fsync: zero after a quiet spell, else what is
    /// left of `flush_delay` since the last fsync.
    fn fsync_due_in(&self) -> std::time::Duration {
        self.last_fsync.map_or(std::time::Duration::ZERO, |t| {
            self.flush_delay.saturating_sub(t.elapsed())
        })
    }

    fn publish(&mut self) {
        let pos = self.pos.clone();
        self.pos_tx.send_if_modified(|p| {
            if *p != pos {
                *p = pos;
                true
            } else {
                false
            }
        });
    }

    fn fail(&mut self, e: StoreError) {
        // Make what was written correctly before the failure durable, unless the failure was
        // an fsync itself: after a failed fsync the page cache cannot be trusted.
        let fsync_failed = matches!(&e, StoreError::Io { op, .. } if op.starts_with("fsync"));
        if self.dirty && !fsync_failed && self.fsync().is_err() {
            self.pos.flush_lsn = self.pos.flush_lsn.min(self.pos.write_lsn);
        }
        tracing::error!("segment store: {e}; stopped accepting WAL until the stream restarts");
        crate::ops::record_error("store", e.to_string());
        metrics::counter!(crate::metrics::ERRORS, "kind" => "store").increment(1);
        self.failed = true;
        self.dirty = false;
        self.dirty_since = None;
        self.open = None;
        self.pos.error = Some(e.to_string());
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::RemoveSegments { names, reply } => {
                let open = self
                    .open
                    .as_ref()
                    .map(|o| segment_file_name(self.pos.timeline, o.segno, self.seg_size()));
                let r = retention::remove(&self.dir, &names, self.seg_size(), open.as_deref());
                let _ = reply.send(r);
            }
            Request::Open {
                system_id,
                seg_size,
                server_version,
                reply,
            } => {
                let _ = reply.send(self.open_dir(system_id, seg_size, server_version));
            }
            Request::Begin { tli, start, reply } => {
                let r = self.begin(tli, start);
                self.publish();
                let _ = reply.send(r);
            }
            Request::Write { start, data } => {
                if !self.failed {
                    if let Err(e) = self.write(start, data) {
                        self.fail(e);
                    }
                }
            }
            Request::Flush => self.flush_requested = true,
            Request::History {
                tli,
                content,
                reply,
            } => {
                let path = self.dir.join(history_file_name(tli));
                let _ = reply
                    .send(fsutil::write_atomic(&path, &content).map_err(io_err("write", &path)));
            }
            Request::Close { reply } => {
                let r = self.close_open();
                self.publish();
                let _ = reply.send(r);
            }
        }
    }

    fn open_dir(
        &mut self,
        system_id: u64,
        seg_size: u64,
        server_version: String,
    ) -> Result<Option<(Lsn, TimelineId)>, StoreError> {
        let mut control = match control::read(&self.dir)? {
            Some(c) => {
                if c.system_id() != Some(system_id) || c.wal_segment_size != seg_size {
                    return Err(StoreError::IdentityMismatch {
                        dir: self.dir.clone(),
                        found: c.system_id().unwrap_or(0),
                        found_seg_size: c.wal_segment_size,
                        expected: system_id,
                        expected_seg_size: seg_size,
                    });
                }
                c
            }
            None => ControlData::new(system_id, seg_size),
        };
        if control.server_version != server_version || self.control.is_none() {
            control.server_version = server_version;
            control::write(&self.dir, &control)
                .map_err(io_err("write", &self.dir.join(control::CONTROL_FILE)))?;
        }
        self.control = Some(control);
        self.pos.system_id = system_id;
        self.pos.wal_segment_size = seg_size;
        scan::resume_point(&self.dir, seg_size).map_err(io_err("read directory", &self.dir))
    }

    fn begin(&mut self, tli: TimelineId, start: Lsn) -> Result<(), StoreError> {
        let control = self.control.as_ref().ok_or(StoreError::NotOpen)?;
        let seg_size = control.wal_segment_size;
        let sysid = control.system_id().unwrap_or(0);
        self.close_open()?;
        self.failed = false;
        self.pos.error = None;
        if self.pos.timeline != tli {
            self.tail.reset(tli);
        }
        self.pos.timeline = tli;
        self.pos.write_lsn = start;
        self.pos.flush_lsn = start;
        self.validator = Some(PageValidator::new(sysid, seg_size, tli));
        if let Some(v) = self.validator.as_mut() {
            v.reset(start);
        }
        self.tail.restart_at(start);
        Ok(())
    }

    /// What an fsync makes acknowledgeable: everything written, except the bytes of a page
    /// header that is still incomplete (not yet validated).
    fn durable_end(&self) -> Lsn {
        let written = self.pos.write_lsn;
        match self.validator.as_ref().and_then(|v| v.validated_end()) {
            Some(v) => written.min(v),
            None => written,
        }
    }

    fn seg_size(&self) -> u64 {
        self.pos.wal_segment_size
    }

    fn write(&mut self, start: Lsn, data: Bytes) -> Result<(), StoreError> {
        let validator = self.validator.as_mut().ok_or(StoreError::NotOpen)?;
        if start != self.pos.write_lsn {
            return Err(StoreError::Discontinuity {
                got: start,
                expected: self.pos.write_lsn,
            });
        }
        validator.check(start, &data)?;
        let seg_size = self.seg_size();
        let mut lsn = start;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let segno = lsn.segno(seg_size);
            let offset = lsn.segment_offset(seg_size);
            let n = rest.len().min((seg_size - offset) as usize);
            self.ensure_open(segno)?;
            let seg = self.open.as_ref().ok_or(StoreError::NotOpen)?;
            seg.file
                .write_all_at(&rest[..n], offset)
                .map_err(io_err("write to", &seg.path))?;
            self.dirty = true;
            self.dirty_since.get_or_insert_with(std::time::Instant::now);
            lsn = Lsn(lsn.0 + n as u64);
            rest = &rest[n..];
            self.pos.write_lsn = lsn;
            if offset + n as u64 == seg_size {
                self.complete_segment()?;
            }
        }
        self.tail.push(start, data);
        metrics::counter!(crate::metrics::STORE_WRITTEN_BYTES).increment(lsn.0 - start.0);
        Ok(())
    }

    fn ensure_open(&mut self, segno: u64) -> Result<(), StoreError> {
        if self.open.as_ref().is_some_and(|s| s.segno == segno) {
            return Ok(());
        }
        self.close_open()?;
        let seg_size = self.seg_size();
        let name = segment_file_name(self.pos.timeline, segno, seg_size);
        if self.dir.join(&name).exists() {
            return Err(StoreError::SegmentExists(name));
        }
        let path = self.dir.join(format!("{name}.partial"));
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len < seg_size {
            // Reserve the full size up front, so a full disk shows up here and not in the
            // middle of a record. fallocate allocates the blocks without writing them (they
            // read as zeros; fdatasync later records them as written); where the filesystem
            // cannot, zero-pad like pg_receivewal. A crash while padding only leaves a short
            // .partial that is re-padded here.
            let reserved =
                fsutil::allocate(&file, len, seg_size - len).map_err(io_err("fallocate", &path))?;
            if !reserved && self.zeros.is_empty() {
                self.zeros = vec![0u8; 1 << 20];
            }
            let mut off = if reserved { seg_size } else { len };
            while off < seg_size {
                let n = (seg_size - off).min(self.zeros.len() as u64) as usize;
                file.write_all_at(&self.zeros[..n], off)
                    .map_err(io_err("zero-fill", &path))?;
                off += n as u64;
            }
            file.sync_all().map_err(io_err("fsync", &path))?;
        } else if len > seg_size {
            file.set_len(seg_size).map_err(io_err("truncate", &path))?;
        }
        if !existed || len < seg_size {
            fsutil::fsync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
        }
        self.open = Some(OpenSegment { segno, file, path });
        Ok(())
    }

    fn fsync(&mut self) -> Result<(), StoreError> {
        if let Some(seg) = &self.open {
            seg.file.sync_data().map_err(io_err("fsync", &seg.path))?;
        }
        self.dirty = false;
        self.dirty_since = None;
        self.last_fsync = Some(std::time::Instant::now());
        self.pos.flush_lsn = self.durable_end();
        Ok(())
    }

    /// The open segment is full: make it durable under its final name.
    fn complete_segment(&mut self) -> Result<(), StoreError> {
        let Some(seg) = self.open.take() else {
            return Ok(());
        };
        seg.file.sync_data().map_err(io_err("fsync", &seg.path))?;
        drop(seg.file);
        let final_path = seg.path.with_extension("");
        std::fs::rename(&seg.path, &final_path).map_err(io_err("rename", &seg.path))?;
        fsutil::fsync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
        self.dirty = false;
        self.dirty_since = None;
        self.last_fsync = Some(std::time::Instant::now());
        self.pos.flush_lsn = self.durable_end();
        self.pos.completed_segments += 1;
        metrics::counter!(crate::metrics::SEGMENTS_COMPLETED).increment(1);
        if let Some(name) = final_path.file_name().and_then(|n| n.to_str()) {
            crate::ops::segment_completed(name);
        }
        if let Some(c) = self.control.as_mut() {
            c.timeline = self.pos.timeline;
            c.flush_lsn = self.pos.flush_lsn.to_string();
            let path = self.dir.join(control::CONTROL_FILE);
            control::write(&self.dir, c).map_err(io_err("write", &path))?;
        }
        Ok(())
    }

    /// fsync and close the open segment, keeping it `.partial`.
    fn close_open(&mut self) -> Result<(), StoreError> {
        if let Some(seg) = self.open.take() {
            if self.dirty && !self.failed {
                seg.file.sync_data().map_err(io_err("fsync", &seg.path))?;
                self.pos.flush_lsn = self.durable_end();
            }
        }
        self.dirty = false;
        self.dirty_since = None;
        if let Some(c) = self.control.as_mut() {
            if !self.failed && self.pos.timeline != 0 {
                c.timeline = self.pos.timeline;
                c.flush_lsn = self.pos.flush_lsn.to_string();
                let path = self.dir.join(control::CONTROL_FILE);
                control::write(&self.dir, c).map_err(io_err("write", &path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::build::pages;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_001;

    async fn wait_flush(store: &Store, lsn: Lsn) -> Positions {
        let mut rx = store.positions();
        loop {
            let p = rx.borrow_and_update().clone();
            if p.flush_lsn >= lsn || p.error.is_some() {
                return p;
            }
            rx.changed().await.unwrap();
        }
    }

    #[tokio::test]
    async fn writes_segments_durably_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.open(SYSID, SEG, "15.0").await.unwrap(), None);
        store.begin(1, Lsn(SEG)).await.unwrap();
        // one and a half segments, in uneven chunks
        let wal = pages(SEG, 192, SEG, SYSID, 1);
        let mut off = 0usize;
        for n in [100usize, 8092, 500_000, 1_000_000] {
            let end = (off + n).min(wal.len());
            store
                .write(
                    Lsn(SEG + off as u64),
                    Bytes::copy_from_slice(&wal[off..end]),
                )
                .await
                .unwrap();
            off = end;
        }
        store
            .write(Lsn(SEG + off as u64), Bytes::copy_from_slice(&wal[off..]))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(SEG + wal.len() as u64)).await;
        assert_eq!(p.error, None);
        assert_eq!(p.completed_segments, 1);
        let full = std::fs::read(dir.path().join("000000010000000000000001")).unwrap();
        assert_eq!(&full[..], &wal[..SEG as usize]);
        let partial = std::fs::read(dir.path().join("000000010000000000000002.partial")).unwrap();
        assert_eq!(partial.len() as u64, SEG);
        assert_eq!(&partial[..wal.len() - SEG as usize], &wal[SEG as usize..]);
        assert!(partial[wal.len() - SEG as usize..].iter().all(|&b| b == 0));
        store.close().await.unwrap();
        // the tail serves the latest bytes without copying
        assert_eq!(
            store
                .tail()
                .get(1, Lsn(SEG + 10), Lsn(SEG + 20), 100)
                .unwrap()
                .len(),
            10
        );
        // a restart resumes at the partial's segment start
        let store2 = Store::start(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            store2.open(SYSID, SEG, "15.0").await.unwrap(),
            Some((Lsn(2 * SEG), 1))
        );
        // another cluster's directory is refused
        let e = store2.open(SYSID + 1, SEG, "15.0").await.unwrap_err();
        assert!(e.to_string().contains("holds WAL of system"), "{e}");
    }

    #[tokio::test]
    async fn group_commit_fsyncs_at_once_after_a_quiet_spell_and_paces_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let delay = std::time::Duration::from_secs(3);
        let opts = StoreOptions {
            flush_delay: delay,
            ..StoreOptions::default()
        };
        let store = Store::start(dir.path(), opts).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(0)).await.unwrap();
        let wal = pages(0, 3, SEG, SYSID, 1);
        // a lone write after a quiet spell: durable well before the group-commit delay
        let t0 = std::time::Instant::now();
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal[..8192]))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(8192)).await;
        assert_eq!(p.error, None);
        assert!(t0.elapsed() < delay - std::time::Duration::from_millis(500));
        // the next write, right after that fsync, waits for the delay to pass
        store
            .write(Lsn(8192), Bytes::copy_from_slice(&wal[8192..16384]))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(store.positions().borrow().flush_lsn, Lsn(8192));
        assert_eq!(store.positions().borrow().write_lsn, Lsn(16384));
        let p = wait_flush(&store, Lsn(16384)).await;
        assert_eq!(p.error, None);
        assert!(t0.elapsed() >= delay);
    }

    #[tokio::test]
    async fn refuses_gaps_and_bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start(dir.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(0)).await.unwrap();
        let wal = pages(0, 4, SEG, SYSID, 1);
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal[..8192]))
            .await
            .unwrap();
        store
            .write(Lsn(16384), Bytes::copy_from_slice(&wal[16384..]))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(u64::MAX)).await;
        assert_eq!(
            p.error.as_deref(),
            Some("got WAL data at 0/4000, expected 0/2000")
        );
        assert_eq!(p.flush_lsn, Lsn(8192));

        // wrong system id in the long header: nothing of the chunk is written
        store.begin(1, Lsn(0)).await.unwrap();
        let other = pages(0, 2, SEG, SYSID + 1, 1);
        store
            .write(Lsn(0), Bytes::copy_from_slice(&other))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(u64::MAX)).await;
        assert!(
            p.error.as_deref().unwrap().contains("system"),
            "{:?}",
            p.error
        );
        assert_eq!(p.flush_lsn, Lsn(0));
        let partial = std::fs::read(dir.path().join("000000010000000000000000.partial")).unwrap();
        assert_eq!(
            &partial[..8192],
            &wal[..8192],
            "the good page written earlier stays, nothing new"
        );
        assert!(partial[8192..16384].iter().all(|&b| b == 0));
    }

    /// A chunk that ends inside a page header: the header's bytes are not acknowledged until
    /// the header is complete and valid; when it turns out invalid they never were.
    #[tokio::test]
    async fn split_page_header_is_not_acknowledged_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start(dir.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(0)).await.unwrap();
        let mut wal = pages(0, 3, SEG, SYSID, 1);
        // corrupt the third page's address (bytes 8..16 of its header)
        wal[2 * 8192 + 8] ^= 0xff;
        let split = 2 * 8192 + 10; // 10 bytes into the third page's header
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal[..split]))
            .await
            .unwrap();
        store.flush().await.unwrap();
        let p = wait_flush(&store, Lsn(2 * 8192)).await;
        assert_eq!(p.write_lsn, Lsn(split as u64));
        assert_eq!(
            p.flush_lsn,
            Lsn(2 * 8192),
            "a half-checked header was acknowledged"
        );
        store
            .write(Lsn(split as u64), Bytes::copy_from_slice(&wal[split..]))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(u64::MAX)).await;
        assert!(p.error.is_some());
        assert_eq!(p.flush_lsn, Lsn(2 * 8192));
    }
}

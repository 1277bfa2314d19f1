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

pub mod compress;
pub mod control;
pub mod direct;
pub mod diverge;
pub mod fsutil;
pub mod lossy;
pub mod readcache;
pub mod reader;
pub mod recover;
pub mod retention;
pub mod scan;
mod tail;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

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
    /// How many times the published `flush_lsn` went back on the same timeline (WAL past it
    /// set aside as divergent, or found different from the upstream's and to be rewritten).
    /// Bytes read from the files past the new `flush_lsn` before such a step may differ from
    /// what the files hold after it: a cache of file bytes (the walsenders' read cache) keeps
    /// only what was read at the current count.
    pub rewinds: u64,
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
    #[error("start-up recovery of the data directory failed: {0}")]
    Recovery(String),
    #[error("WAL received for {lsn} differs from the WAL already stored there on timeline {tli}; refusing to overwrite it")]
    RewriteMismatch { lsn: Lsn, tli: TimelineId },
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
        /// The chunk's share of [`StoreOptions::queue_bytes`], returned when it is written.
        _permit: Option<OwnedSemaphorePermit>,
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
    SetAsideDiverged {
        tli: TimelineId,
        fork: Lsn,
        reply: oneshot::Sender<Result<diverge::SetAside, StoreError>>,
    },
}

/// Handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    /// Bytes of WAL queued and not yet written ([`StoreOptions::queue_bytes`]).
    queued: Arc<Semaphore>,
    queue_bytes: u32,
    positions: watch::Receiver<Positions>,
    tail: Arc<Tail>,
    dir: PathBuf,
    recovered: watch::Receiver<bool>,
}

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Chunks queued between the network reader and the writer thread.
    pub queue_chunks: usize,
    /// Bytes of WAL queued between the network reader and the writer thread: what bounds the
    /// memory held in flight (a chunk larger than this is queued alone).
    pub queue_bytes: usize,
    /// Bytes of recent WAL kept in memory for walsenders.
    pub tail_bytes: usize,
    /// Shortest time between two fsyncs of the open segment when nobody asked for one (group
    /// commit). WAL written after a quiet spell (no fsync for this long) is fsynced as soon as
    /// the queue is drained, so a lone commit pays no delay; under a continuous stream fsyncs
    /// are at most this often. `Store::flush` (used by `--synchronous`) fsyncs at the end of
    /// the current batch regardless.
    pub flush_delay: std::time::Duration,
    /// pg_receivewal `--compress`: segments written as `.gz` / `.lz4` (see [`compress`]).
    pub compression: compress::Compression,
    /// Keep `walrelay.control` in the directory (`walrelay run`: it records the primary's
    /// `server_version` for serving while the primary is unreachable). Off for a
    /// pg_receivewal target directory, which holds nothing but WAL files: the identity check
    /// reads the segments' long page headers either way.
    pub control_file: bool,
    /// Write uncompressed segments with O_DIRECT from an aligned buffer in whole pages
    /// ([`direct`]); buffered with early writeback where the filesystem refuses it, or when
    /// this is off.
    pub direct_io: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue_chunks: 256,
            queue_bytes: 8 << 20,
            tail_bytes: 64 << 20,
            flush_delay: std::time::Duration::from_millis(10),
            compression: compress::Compression::none(),
            control_file: false,
            direct_io: true,
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
        writer.compression = opts.compression;
        writer.control_enabled = opts.control_file;
        writer.direct_io = opts.direct_io;
        writer.file_mode = fsutil::create_modes(dir).0;
        if lossy::enabled() {
            tracing::warn!(
                "{}=1: fault injection on, unsynced WAL writes are held in memory and lost on a crash (tests only)",
                lossy::ENV
            );
            writer.lossy = Some(lossy::PendingRenames::default());
        }
        let (ready_tx, recovered) = watch::channel(false);
        let rt = tokio::runtime::Handle::try_current().ok();
        let cluster = crate::ops::current(); // metrics label and errors of the store thread
        std::thread::Builder::new()
            .name("walrelay-store".into())
            .spawn(move || {
                crate::ops::set_thread_cluster(cluster);
                // Start-up recovery first: positions are published from the files before
                // any request is handled.
                writer.recover();
                let _ = ready_tx.send(true);
                writer.run(rx, rt)
            })?;
        let queue_bytes = u32::try_from(opts.queue_bytes.max(1)).unwrap_or(u32::MAX >> 4);
        Ok(Store {
            tx,
            queued: Arc::new(Semaphore::new(queue_bytes as usize)),
            queue_bytes,
            positions,
            tail,
            dir: dir.to_path_buf(),
            recovered,
        })
    }

    /// Waits until start-up recovery has read the data directory and published the end of
    /// valid WAL found there (see [`recover`]). Call it before serving.
    pub async fn recovered(&self) {
        let mut rx = self.recovered.clone();
        let _ = rx.wait_for(|done| *done).await;
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

    /// Queues WAL for writing. Waits only when the queue is full (in bytes or chunks).
    pub async fn write(&self, start: Lsn, data: Bytes) -> Result<(), StoreError> {
        let n = u32::try_from(data.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.queue_bytes);
        let permit = self
            .queued
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| StoreError::Stopped)?;
        self.send(Request::Write {
            start,
            data,
            _permit: Some(permit),
        })
        .await
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

    /// Sets WAL of timeline `tli` at and past `fork` aside (see [`diverge`]): the upstream's
    /// history says `tli` ended at `fork`.
    pub async fn set_aside_diverged(
        &self,
        tli: TimelineId,
        fork: Lsn,
    ) -> Result<diverge::SetAside, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::SetAsideDiverged { tli, fork, reply })
            .await?;
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
    /// The file, written directly or buffered ([`direct`]).
    io: direct::SegmentFile,
    path: PathBuf,
    /// The compressed stream writing to (a clone of) the file, with `--compress`.
    z: Option<compress::Segment>,
    /// Writes not yet fsynced, with the power-loss fault injection ([`lossy`]) on.
    pending: Option<lossy::Pending>,
    /// A restarted compressed segment is written to a temporary file (`path`); the old
    /// `.partial` (here, with the end of the WAL published from it) stays until the rewrite
    /// is durable at or past that end, then the temporary file is renamed over it.
    replaces: Option<(PathBuf, Lsn)>,
}

impl OpenSegment {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(z) = self.z.as_mut() {
            return z.append(data);
        }
        match &mut self.pending {
            Some(p) => {
                p.write(offset, data);
                Ok(())
            }
            None => self.io.write_at(data, offset),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.io.read_at(buf, offset)?;
        if let Some(p) = &self.pending {
            p.overlay(offset, buf);
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if let Some(z) = self.z.as_mut() {
            z.flush()?;
        }
        if let Some(p) = &mut self.pending {
            let io = &mut self.io;
            p.apply(|data, offset| io.write_at(data, offset))?;
        }
        self.io.sync_data()
    }
}

/// State owned by the store thread.
struct Writer {
    dir: PathBuf,
    /// Whether `walrelay.control` is kept (see [`StoreOptions::control_file`]).
    control_enabled: bool,
    control: Option<ControlData>,
    /// `(system id, segment size)` once `open` accepted the server.
    ident: Option<(u64, u64)>,
    /// The identity read from the segment files at start-up.
    file_identity: Option<recover::Identity>,
    recovery_error: Option<String>,
    /// The highest position ever published as flushed on a timeline (the start-up recovery
    /// end, then every flush): published positions never go below it on that timeline, and
    /// WAL re-received below it must equal what the files hold.
    floor: Option<(TimelineId, Lsn)>,
    /// After a failed check: the end of the bytes that were vouched for before it.
    fail_cap: Option<Lsn>,
    file_mode: u32,
    scratch: Vec<u8>,
    /// The power-loss fault injection ([`lossy`]): renames held until the directory fsync.
    lossy: Option<lossy::PendingRenames>,
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
    compression: compress::Compression,
    /// Write segments with O_DIRECT where the filesystem allows it ([`direct`]).
    direct_io: bool,
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
            control_enabled: false,
            control: None,
            ident: None,
            file_identity: None,
            recovery_error: None,
            floor: None,
            fail_cap: None,
            file_mode: fsutil::FILE_MODE_OWNER,
            scratch: Vec::new(),
            lossy: None,
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
            compression: compress::Compression::none(),
            direct_io: true,
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

    /// Reads the data directory (identity, end of valid WAL) and publishes what it found.
    fn recover(&mut self) {
        match recover::recover(&self.dir) {
            Ok(Some(r)) => {
                let last = r.last_record_end.map_or(String::new(), |l| {
                    format!(", last complete record ends at {l}")
                });
                tracing::info!(
                    "recovered WAL from \"{}\": timeline {}, valid WAL up to {} in {}{last}",
                    self.dir.display(),
                    r.timeline,
                    r.end,
                    r.file
                );
                self.file_identity = Some(r.identity);
                self.pos.system_id = r.identity.system_id;
                self.pos.wal_segment_size = r.identity.seg_size;
                self.pos.timeline = r.timeline;
                self.pos.write_lsn = r.end;
                self.pos.flush_lsn = r.end;
                self.floor = Some((r.timeline, r.end));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("segment store: {e}");
                self.recovery_error = Some(e.to_string());
                self.pos.error = Some(e.to_string());
            }
        }
        self.publish();
    }

    /// The positions as published: never below the floor on its timeline (bytes below it
    /// are durable in the files even while a reconnect rewrites them); the floor follows.
    fn published(&mut self) -> Positions {
        let mut p = self.pos.clone();
        match self.floor {
            Some((tli, f)) if tli == p.timeline => {
                p.write_lsn = p.write_lsn.max(f);
                p.flush_lsn = p.flush_lsn.max(f);
                self.floor = Some((tli, p.flush_lsn));
            }
            _ if p.timeline != 0 => self.floor = Some((p.timeline, p.flush_lsn)),
            _ => {}
        }
        let prev = self.pos_tx.borrow();
        if prev.timeline == p.timeline && p.flush_lsn < prev.flush_lsn {
            self.pos.rewinds = self.pos.rewinds.wrapping_add(1);
        }
        drop(prev);
        p.rewinds = self.pos.rewinds;
        p
    }

    fn publish(&mut self) {
        let pos = self.published();
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
            Request::SetAsideDiverged { tli, fork, reply } => {
                let r = self.set_aside_diverged(tli, fork);
                self.publish();
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
            Request::Write { start, data, .. } => {
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
        if let Some(e) = &self.recovery_error {
            return Err(StoreError::Recovery(e.clone()));
        }
        if let Some(id) = self.file_identity {
            if id.system_id != system_id || id.seg_size != seg_size {
                return Err(StoreError::IdentityMismatch {
                    dir: self.dir.clone(),
                    found: id.system_id,
                    found_seg_size: id.seg_size,
                    expected: system_id,
                    expected_seg_size: seg_size,
                });
            }
        }
        self.ident = Some((system_id, seg_size));
        self.pos.system_id = system_id;
        self.pos.wal_segment_size = seg_size;
        if !self.control_enabled {
            return scan::resume_point(&self.dir, seg_size)
                .map_err(io_err("read directory", &self.dir));
        }
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
        let (sysid, seg_size) = self.ident.ok_or(StoreError::NotOpen)?;
        self.close_open()?;
        self.failed = false;
        self.fail_cap = None;
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
        let end = match self.validator.as_ref().and_then(|v| v.validated_end()) {
            Some(v) => written.min(v),
            None => written,
        };
        match self.fail_cap {
            Some(cap) => end.min(cap),
            None => end,
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
        // What was vouched for before this chunk: a page header split across the previous
        // chunk and this one is checked now, and if it fails, its first bytes (already
        // written) must never count as flushed.
        let vouched = validator.validated_end().unwrap_or(start);
        if let Err(e) = validator.check(start, &data) {
            self.fail_cap = Some(vouched.min(start));
            return Err(e.into());
        }
        let seg_size = self.seg_size();
        let mut lsn = start;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let segno = lsn.segno(seg_size);
            let offset = lsn.segment_offset(seg_size);
            let n = rest.len().min((seg_size - offset) as usize);
            self.ensure_open(segno)?;
            if self.open.as_ref().is_some_and(|s| s.z.is_none()) {
                // (compressed files cannot be read back; nothing is served from them)
                self.check_rewrite(lsn, offset, &rest[..n])?;
            }
            let seg = self.open.as_mut().ok_or(StoreError::NotOpen)?;
            seg.write_at(&rest[..n], offset)
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

    /// WAL re-received below the floor (after a restart or reconnect the stream restarts at
    /// the segment start) must be the bytes already stored: the floor was served and
    /// acknowledged. A difference means the upstream's WAL on this timeline is not what
    /// walrelay holds; fail closed instead of mixing the two.
    fn check_rewrite(&mut self, lsn: Lsn, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let Some((tli, floor)) = self.floor else {
            return Ok(());
        };
        if tli != self.pos.timeline || lsn >= floor {
            return Ok(());
        }
        let n = usize::try_from(floor.0 - lsn.0)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let seg = self.open.as_ref().ok_or(StoreError::NotOpen)?;
        self.scratch.resize(n, 0);
        seg.read_at(&mut self.scratch[..n], offset)
            .map_err(io_err("read", &seg.path))?;
        if let Some(i) = self.scratch[..n]
            .iter()
            .zip(&data[..n])
            .position(|(a, b)| a != b)
        {
            let at = Lsn(lsn.0 + i as u64);
            // Serve only what matched.
            self.floor = Some((tli, at));
            return Err(StoreError::RewriteMismatch { lsn: at, tli });
        }
        Ok(())
    }

    fn ensure_open(&mut self, segno: u64) -> Result<(), StoreError> {
        if self.open.as_ref().is_some_and(|s| s.segno == segno) {
            return Ok(());
        }
        self.close_open()?;
        let seg_size = self.seg_size();
        let mut name = segment_file_name(self.pos.timeline, segno, seg_size);
        if let Some(m) = self.compression.method {
            name.push_str(m.suffix());
        }
        if self.dir.join(&name).exists() {
            return Err(StoreError::SegmentExists(name));
        }
        let path = self.dir.join(format!("{name}.partial"));
        if let Some(m) = self.compression.method {
            // A compressed segment is a stream written from the segment start: no padding.
            // Restarting one that holds published WAL writes a new stream beside it (a
            // compressed file cannot be rewritten in place without losing what it held).
            let seg_start = Lsn(segno * seg_size);
            let seg_end = Lsn((segno + 1) * seg_size);
            let published = match self.floor {
                Some((tli, f)) if tli == self.pos.timeline && f > seg_start => Some(f.min(seg_end)),
                _ => None,
            };
            let (path, replaces) = match published {
                Some(end) if path.exists() => (
                    self.dir.join(format!("{name}.partial.rewrite")),
                    Some((path, end)),
                ),
                _ => (path, None),
            };
            let existed = path.exists();
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(self.file_mode)
                .open(&path)
                .map_err(io_err("open", &path))?;
            if !existed {
                fsutil::set_mode(&file, self.file_mode).map_err(io_err("chmod", &path))?;
            }
            let z = file
                .try_clone()
                .and_then(|f| compress::Segment::create(f, m, self.compression.level))
                .map_err(io_err("open", &path))?;
            fsutil::fsync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
            self.open = Some(OpenSegment {
                segno,
                io: direct::SegmentFile::buffered(file),
                path,
                z: Some(z),
                pending: None,
                replaces,
            });
            return Ok(());
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(self.file_mode)
            .open(&path)
            .map_err(io_err("open", &path))?;
        if !existed {
            fsutil::set_mode(&file, self.file_mode).map_err(io_err("chmod", &path))?;
        }
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
        let pending = self.lossy.as_ref().map(|_| lossy::Pending::default());
        let io =
            direct::SegmentFile::open(file, &path, seg_size, existed && len > 0, self.direct_io)
                .map_err(io_err("open", &path))?;
        self.open = Some(OpenSegment {
            segno,
            io,
            path,
            z: None,
            pending,
            replaces: None,
        });
        Ok(())
    }

    /// A restarted compressed segment that is durable at or past what was published from the
    /// old file replaces it (see [`OpenSegment::replaces`]).
    fn adopt_rewrite(&mut self, durable: Lsn) -> Result<(), StoreError> {
        let Some(seg) = self.open.as_mut() else {
            return Ok(());
        };
        let Some((old, end)) = seg.replaces.clone() else {
            return Ok(());
        };
        if durable < end {
            return Ok(());
        }
        std::fs::rename(&seg.path, &old).map_err(io_err("rename", &seg.path))?;
        fsutil::fsync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
        seg.path = old;
        seg.replaces = None;
        Ok(())
    }

    fn fsync(&mut self) -> Result<(), StoreError> {
        if let Some(seg) = &mut self.open {
            seg.sync_data().map_err(io_err("fsync", &seg.path))?;
        }
        self.dirty = false;
        self.dirty_since = None;
        self.last_fsync = Some(std::time::Instant::now());
        self.pos.flush_lsn = self.durable_end();
        self.adopt_rewrite(self.pos.flush_lsn)
    }

    /// The open segment is full: make it durable under its final name.
    fn complete_segment(&mut self) -> Result<(), StoreError> {
        let Some(mut seg) = self.open.take() else {
            return Ok(());
        };
        if let Some(z) = seg.z.take() {
            z.finish().map_err(io_err("write to", &seg.path))?;
        }
        seg.sync_data().map_err(io_err("fsync", &seg.path))?;
        drop(seg.io);
        if let Some((old, _)) = seg.replaces.take() {
            // Complete: the rewrite holds the whole segment.
            std::fs::rename(&seg.path, &old).map_err(io_err("rename", &seg.path))?;
            seg.path = old;
        }
        let final_path = seg.path.with_extension("");
        match &mut self.lossy {
            Some(held) => {
                held.push(seg.path.clone(), final_path.clone());
                held.apply().map_err(io_err("rename", &seg.path))?;
            }
            None => std::fs::rename(&seg.path, &final_path).map_err(io_err("rename", &seg.path))?,
        }
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
        if let Some(mut seg) = self.open.take() {
            // A compressed .partial is left a complete stream, as pg_receivewal leaves it.
            if let (Some(z), false) = (seg.z.take(), self.failed) {
                z.finish().map_err(io_err("write to", &seg.path))?;
                seg.sync_data().map_err(io_err("fsync", &seg.path))?;
                if let Some((old, end)) = seg.replaces.take() {
                    // A rewrite that holds less than the old file is dropped; the old stays.
                    if self.durable_end() >= end {
                        std::fs::rename(&seg.path, &old).map_err(io_err("rename", &seg.path))?;
                    } else {
                        std::fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
                    }
                    fsutil::fsync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
                }
            }
            if self.dirty && !self.failed {
                seg.sync_data().map_err(io_err("fsync", &seg.path))?;
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

    /// A restarted compressed segment is written beside the old `.partial`, which stays
    /// (holding everything published) until the rewrite is durable past it: truncating it in
    /// place lost acknowledged WAL on a power loss before the rewrite was fsynced.
    #[tokio::test]
    async fn a_restarted_compressed_segment_keeps_the_old_file_until_caught_up() {
        use compress::{Compression, Method};
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            compression: Compression {
                method: Some(Method::Gzip),
                level: 1,
            },
            ..StoreOptions::default()
        };
        let store = Store::start(dir.path(), opts).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(0)).await.unwrap();
        let wal = pages(0, 6, SEG, SYSID, 1);
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal[..4 * 8192]))
            .await
            .unwrap();
        store.flush().await.unwrap();
        assert_eq!(wait_flush(&store, Lsn(4 * 8192)).await.error, None);
        let old = dir.path().join("000000010000000000000000.gz.partial");
        let rewrite = dir
            .path()
            .join("000000010000000000000000.gz.partial.rewrite");
        // a reconnect restarts the segment; the close comes before it caught up
        store.begin(1, Lsn(0)).await.unwrap();
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal[..8192]))
            .await
            .unwrap();
        store.close().await.unwrap();
        assert_eq!(
            compress::uncompressed_size(&old, Method::Gzip, SEG).unwrap(),
            4 * 8192
        );
        assert!(!rewrite.exists());
        assert_eq!(store.positions().borrow().flush_lsn, Lsn(4 * 8192));
        // caught up and past: the rewrite replaces the old file
        store.begin(1, Lsn(0)).await.unwrap();
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal))
            .await
            .unwrap();
        store.flush().await.unwrap();
        assert_eq!(wait_flush(&store, Lsn(6 * 8192)).await.error, None);
        assert!(!rewrite.exists());
        store.close().await.unwrap();
        assert_eq!(
            compress::uncompressed_size(&old, Method::Gzip, SEG).unwrap(),
            6 * 8192
        );
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
        // the good page written before stays flushed: a restart of the stream never takes
        // the published position back
        assert_eq!(p.flush_lsn, Lsn(8192));
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

    /// The failure path of a split page header: the first bytes of the header arrive in one
    /// chunk, the rest (invalid) in the next, both before any fsync. The failure's fsync must
    /// not publish the header's first bytes as flushed (walsenders would serve them).
    #[tokio::test]
    async fn failed_split_page_header_is_never_published() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            flush_delay: std::time::Duration::from_secs(5),
            ..StoreOptions::default()
        };
        let store = Store::start(dir.path(), opts).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(0)).await.unwrap();
        let mut wal = pages(0, 3, SEG, SYSID, 1);
        wal[2 * 8192 + 9] ^= 0x01; // the third page's address
                                   // a first page, fsynced at once (quiet spell): the group-commit clock now runs
        store
            .write(Lsn(0), Bytes::copy_from_slice(&wal[..8192]))
            .await
            .unwrap();
        assert_eq!(wait_flush(&store, Lsn(8192)).await.flush_lsn, Lsn(8192));
        // within the delay: the second page plus 10 bytes of the third header, then the rest
        let split = 2 * 8192 + 10;
        store
            .write(Lsn(8192), Bytes::copy_from_slice(&wal[8192..split]))
            .await
            .unwrap();
        store
            .write(Lsn(split as u64), Bytes::copy_from_slice(&wal[split..]))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(u64::MAX)).await;
        assert!(
            p.error.as_deref().unwrap_or("").contains("pageaddr"),
            "{:?}",
            p.error
        );
        assert_eq!(
            p.flush_lsn,
            Lsn(2 * 8192),
            "bytes of the invalid header were published as flushed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(store.positions().borrow().flush_lsn, Lsn(2 * 8192));
    }

    /// WAL as the test writer lays it out (system id 42): `n` records of `size` bytes from
    /// segment 1; returns the bytes and each record's end.
    fn records(n: usize, size: usize) -> (Vec<u8>, Vec<u64>) {
        use crate::wal::record::build::{record, Writer as WalWriter};
        let mut w = WalWriter::new(SEG, SEG);
        let mut ends = Vec::new();
        for i in 0..n {
            let main: Vec<u8> = (0..size).map(|j| (i + j) as u8 | 1).collect();
            w.record(record(10, 0, i as u32, &main));
            ends.push(w.pos());
        }
        (w.buf, ends)
    }
    const REC_SYSID: u64 = 42;

    /// kill -9: the `.partial` holds WAL up to the middle of a record, with no control file.
    /// The store publishes that end at once, before any upstream; a reconnect that restarts
    /// the stream at the segment start does not take it back; re-received bytes must match.
    #[tokio::test]
    async fn recovers_the_end_of_wal_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, ends) = records(200, 700);
        let cut = (ends[150] + ends[151]) / 2;
        let mut file = wal[..(cut - SEG) as usize].to_vec();
        file.resize(SEG as usize, 0);
        std::fs::write(dir.path().join("000000010000000000000001.partial"), &file).unwrap();
        let store = Store::start(dir.path(), StoreOptions::default()).unwrap();
        store.recovered().await;
        let p = store.positions().borrow().clone();
        assert_eq!(
            (p.system_id, p.wal_segment_size, p.timeline),
            (REC_SYSID, SEG, 1)
        );
        assert_eq!((p.write_lsn, p.flush_lsn), (Lsn(cut), Lsn(cut)));
        assert_eq!(p.error, None);

        // the upstream comes back: streaming restarts at the segment start
        assert_eq!(
            store.open(REC_SYSID, SEG, "15.0").await.unwrap(),
            Some((Lsn(SEG), 1))
        );
        store.begin(1, Lsn(SEG)).await.unwrap();
        let p = store.positions().borrow().clone();
        assert_eq!(p.flush_lsn, Lsn(cut), "flush went back on begin");
        // the same bytes again, up to a bit past the old end
        let upto = (ends[160] - SEG) as usize;
        store
            .write(Lsn(SEG), Bytes::copy_from_slice(&wal[..4000]))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(store.positions().borrow().flush_lsn, Lsn(cut));
        store
            .write(Lsn(SEG + 4000), Bytes::copy_from_slice(&wal[4000..upto]))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(ends[160])).await;
        assert_eq!(p.error, None);
        assert_eq!(p.flush_lsn, Lsn(ends[160]));
        store.close().await.unwrap();
        assert!(!dir.path().join(control::CONTROL_FILE).exists());

        // different bytes below the floor on the same timeline: refused, nothing overwritten
        let store = Store::start(dir.path(), StoreOptions::default()).unwrap();
        store.recovered().await;
        // (up to the MAXALIGNed start of the next record: the padding is the primary's too)
        assert_eq!(
            store.positions().borrow().flush_lsn,
            Lsn((ends[160] + 7) & !7)
        );
        store.open(REC_SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(SEG)).await.unwrap();
        let mut other = wal[..8192].to_vec();
        other[100] ^= 0xff;
        store
            .write(Lsn(SEG), Bytes::copy_from_slice(&other))
            .await
            .unwrap();
        let p = wait_flush(&store, Lsn(u64::MAX)).await;
        assert_eq!(
            p.error.as_deref(),
            Some("WAL received for 0/100064 differs from the WAL already stored there on timeline 1; refusing to overwrite it")
        );
        assert_eq!(p.flush_lsn, Lsn(SEG + 100));
        let on_disk = std::fs::read(dir.path().join("000000010000000000000001.partial")).unwrap();
        assert_eq!(&on_disk[..upto], &wal[..upto]);

        // another cluster is refused from the segments alone (no control file)
        let e = store.open(REC_SYSID + 1, SEG, "15.0").await.unwrap_err();
        assert!(e.to_string().contains("holds WAL of system 42"), "{e}");
    }

    /// Files 0600 (0640 in a group-readable directory), as pg_receivewal and PostgreSQL.
    #[tokio::test]
    async fn file_modes_follow_the_directory() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for (dir_mode, want) in [
            (0o700, 0o600),
            (0o750, 0o640),
            (0o755, 0o640),
            (0o711, 0o600),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(dir_mode))
                .unwrap();
            let opts = StoreOptions {
                control_file: true,
                ..StoreOptions::default()
            };
            let store = Store::start(dir.path(), opts).unwrap();
            store.open(SYSID, SEG, "15.0").await.unwrap();
            store
                .write_history(
                    2,
                    Bytes::from_static(b"1\t0/1000000\tno recovery target specified\n"),
                )
                .await
                .unwrap();
            store.begin(1, Lsn(0)).await.unwrap();
            let wal = pages(0, 129, SEG, SYSID, 1);
            store.write(Lsn(0), Bytes::from(wal)).await.unwrap();
            wait_flush(&store, Lsn(129 * 8192)).await;
            store.close().await.unwrap();
            for f in [
                "000000010000000000000000",
                "000000010000000000000001.partial",
                "00000002.history",
                control::CONTROL_FILE,
            ] {
                assert_eq!(
                    mode(&dir.path().join(f)),
                    want,
                    "{f} in a {dir_mode:o} directory"
                );
            }
        }
        // a data directory walrelay creates is 0700
        let parent = tempfile::tempdir().unwrap();
        let d = parent.path().join("a/b");
        let _store = Store::start(&d, StoreOptions::default()).unwrap();
        assert_eq!(mode(&d), 0o700);
    }
}

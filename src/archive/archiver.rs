//! The background uploader: finds completed segments and history files in the data
//! directory, uploads them with bounded parallelism, uploads snapshots of the open segment on
//! a timer, applies local retention, and publishes `archived_lsn`.
//!
//! Owns: the archiver task and its state file `walrelay.archive-state` in the data directory
//! (the last persisted `archived_lsn` and its timeline, so that a restart does not
//! re-upload; written by a [`StateFile`] writer thread, never on the async workers; a state
//! file that cannot be read stops start-up with a message saying how to recover). Work is found by
//! scanning the directory (restart-safe, nothing depends on a notification being seen) when
//! the store's `completed_segments` changes and every `archive.scan_interval`.
//!
//! `archived_lsn` is the end of the contiguous prefix of WAL of the store's current timeline
//! that is in the object store: it starts at the first local segment (or the persisted
//! value) and moves over each segment number whose file on the timeline that owns it (per
//! the current timeline's history: the newest timeline that began at or before the segment,
//! as PostgreSQL's recovery picks files) has been uploaded; a snapshot of the very next
//! segment extends it to the snapshot's end. It never moves backwards on a timeline; when the
//! store follows a new timeline it is capped at the fork point (where the old and the new
//! history part) until the new timeline's segments are archived.
//!
//! A completed segment still in the store's in-memory tail (the normal case when the archive
//! keeps up) is hashed and uploaded from the tail's shared buffers: the bytes the store wrote
//! to that file, without reading it back or taking an upload buffer.
//!
//! Must not: write or delete WAL files itself (retention goes through
//! [`Store::remove_segments`]), or hold up the store: it only reads files, positions and the
//! tail (a read lock held while slicing it, never across I/O).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backend::{self, Backend};
use super::buffers::BufferPool;
use super::layout::{self, compression_name, sha256_hex, Identity, Layout, Manifest};
use super::upload::{self, PutOutcome, UploadPolicy};
use super::{ArchiveError, ArchiveSettings};
use crate::config::{AckMode, ArchiveConfig, Compression};
use crate::lsn::{
    history_file_name, parse_wal_file_name, segment_file_name, Lsn, TimelineId, WalFileName,
};
use crate::statefile::{self, StateFile};
use crate::store::retention::{self, RetentionPolicy};
use crate::store::scan::{self, SegmentFile};
use crate::store::Tail;
use crate::store::{control, Positions, Store};
use crate::wal::history::{self, HistoryEntry};

mod upload_jobs;
use upload_jobs::*;
pub(crate) use upload_jobs::{copy_segment, prepare_bytes, store_segment};

/// Name of the archiver's state file in the data directory.
pub const STATE_FILE: &str = "walrelay.archive-state";

/// What the archiver has done so far (for status output and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStatus {
    /// Segments uploaded by this process (created, or found identical).
    pub uploaded_segments: u64,
    /// Of those, found already present with the same content (retries after a crash).
    pub already_present: u64,
    /// Completed local segments not yet in the archive.
    pub pending: usize,
    pub conflicts: u64,
    pub partial_snapshots: u64,
    pub removed_segments: u64,
    /// Most recent failure (cleared by the next success).
    pub last_error: Option<String>,
}

/// Handle to a running archiver.
pub struct ArchiverHandle {
    /// End of the contiguous WAL in the object store (see module docs).
    pub archived_lsn: watch::Receiver<Lsn>,
    pub status: watch::Receiver<ArchiverStatus>,
    task: JoinHandle<()>,
}

impl ArchiverHandle {
    /// The receiver's `flush_cap` for an acknowledgement mode: `Some(archived_lsn)` for
    /// `ack = "archive"`, `None` for `ack = "local"`.
    pub fn flush_cap(&self, ack: AckMode) -> Option<watch::Receiver<Lsn>> {
        match ack {
            AckMode::Local => None,
            AckMode::Archive => Some(self.archived_lsn.clone()),
        }
    }
    /// Stops the task at once, abandoning uploads in flight (what a crash does to them).
    pub fn abort(&self) {
        self.task.abort();
    }
    /// Waits for the task to end (after shutdown).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

pub struct Archiver;

impl Archiver {
    /// Opens the archive named by `settings` (no network traffic yet) and starts the
    /// uploader task on the current tokio runtime. `shutdown` set to true stops it; uploads in
    /// flight are abandoned (they are create-if-absent, so the next start redoes them).
    /// Returns `Ok(None)` when archiving is disabled (`archive.url = "none"`).
    pub fn start(
        settings: ArchiveSettings,
        store: &Store,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Option<ArchiverHandle>, ArchiveError> {
        let Some(url) = settings.url() else {
            return Ok(None);
        };
        let backend = backend::open(&url, &settings.config)?;
        read_state(store.dir())?;
        Ok(Some(Archiver::start_with_backend(
            settings, backend, store, shutdown,
        )))
    }

    /// [`Archiver::start`] with an already opened backend (tests use `InMemory`).
    pub fn start_with_backend(
        settings: ArchiveSettings,
        backend: Backend,
        store: &Store,
        shutdown: watch::Receiver<bool>,
    ) -> ArchiverHandle {
        let dir = store.dir().to_path_buf();
        let state = read_state(&dir)
            .ok()
            .flatten()
            .filter(|s| s.url == backend.url);
        let initial = state
            .as_ref()
            .and_then(|s| s.archived_lsn.parse().ok())
            .unwrap_or(Lsn::INVALID);
        let (lsn_tx, archived_lsn) = watch::channel(initial);
        let (status_tx, status) = watch::channel(ArchiverStatus::default());
        let run = Run {
            cfg: settings.config.clone(),
            slot_floor: settings.slot_floor.clone(),
            policy: policy_of(&settings.config),
            backend,
            dir: dir.clone(),
            store: store.clone(),
            lsn_tx,
            status_tx,
            state_sysid: state.as_ref().map(|s| s.system_id.clone()),
            state_file: StateFile::new(dir.join(STATE_FILE)),
            sysid: 0,
            prefix_tli: state.as_ref().and_then(|s| s.timeline),
            history: None,
            carry: Lsn::INVALID,
            prefix_end: initial,
            persisted: initial,
            persisted_tli: state.as_ref().and_then(|s| s.timeline),
            archived: BTreeSet::new(),
            in_flight: HashSet::new(),
            cooldown: HashMap::new(),
            histories_done: HashSet::new(),
            snapshot: None,
            disk_alarm: false,
            status: ArchiverStatus::default(),
        };
        let task = tokio::spawn(crate::ops::inherit(run.main(store.positions(), shutdown)));
        ArchiverHandle {
            archived_lsn,
            status,
            task,
        }
    }
}

pub(crate) fn policy_of(cfg: &ArchiveConfig) -> UploadPolicy {
    UploadPolicy {
        multipart_threshold: cfg.multipart_threshold,
        part_size: cfg.part_size,
        retry_min: cfg.retry_min,
        retry_max: cfg.retry_max.max(cfg.retry_min),
        key: cfg.encryption_key.clone(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    system_id: String,
    url: String,
    archived_lsn: String,
    /// Timeline `archived_lsn` was computed on (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline: Option<TimelineId>,
}

/// Reads the state file (`None`: there is none); an unusable one is an error that says how
/// to recover.
fn read_state(dir: &Path) -> Result<Option<State>, ArchiveError> {
    let path = dir.join(STATE_FILE);
    let corrupt = |problem: String| {
        ArchiveError::Config(statefile::corrupt_message(
            &path,
            &problem,
            "remove it: the archiver then lists the archive again to learn what is archived \
             (nothing is lost; segments already archived are found identical and not stored \
             twice)",
        ))
    };
    let Some(b) = statefile::read(&path).map_err(|e| corrupt(format!("could not read it: {e}")))?
    else {
        return Ok(None);
    };
    let st: State =
        serde_json::from_slice(&b).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    if st.archived_lsn.parse::<Lsn>().is_err() {
        return Err(corrupt(format!(
            "invalid archived_lsn \"{}\"",
            st.archived_lsn
        )));
    }
    Ok(Some(st))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Job {
    Segment {
        tli: TimelineId,
        segno: u64,
    },
    History {
        tli: TimelineId,
    },
    Partial {
        tli: TimelineId,
        segno: u64,
        end: Lsn,
    },
}

/// Everything an upload job needs, shared by all jobs.
pub(crate) struct Ctx {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    policy: UploadPolicy,
    dir: PathBuf,
    seg_size: u64,
    compression: Compression,
    level: i32,
    /// Listings come back in lexicographic order (object stores; not the file system).
    sorted_listing: bool,
    /// Segment-sized buffers: one per upload in flight (see [`BufferPool`]).
    buffers: BufferPool,
    /// The store's in-memory tail: a completed segment still in it is hashed and uploaded
    /// from its shared buffers, without reading the file or taking an upload buffer.
    tail: Option<Arc<Tail>>,
    /// The `file://` archive, when objects are stored as they are (no compression, no
    /// encryption): a segment read back from a file is copied in pieces
    /// ([`super::local_copy`]) instead of through a segment-sized buffer.
    pub(crate) local: Option<super::durable_fs::DurableFs>,
}

impl Ctx {
    /// Where the tail may hold timeline `tli`'s WAL from `start` (for a streamed copy).
    fn in_tail(&self, tli: TimelineId, start: Lsn) -> Option<super::local_copy::InTail> {
        self.tail
            .clone()
            .map(|tail| super::local_copy::InTail { tail, tli, start })
    }

    /// The upload context for WAL of system `sysid` under `prefix` of `backend`, with the
    /// `[archive]` settings of `cfg`; local files are read from `dir`.
    pub(crate) fn new(
        backend: &Backend,
        prefix: &object_store::path::Path,
        sysid: u64,
        seg_size: u64,
        cfg: &ArchiveConfig,
        dir: PathBuf,
    ) -> Ctx {
        // a job holds one buffer while it uploads, two for a moment while it compresses;
        // uploads in flight: `concurrency` segments and one snapshot
        let keep = cfg.concurrency.max(1) + 1;
        Ctx {
            store: backend.store.clone(),
            layout: Layout::new(prefix, sysid),
            policy: policy_of(cfg),
            dir,
            seg_size,
            compression: cfg.compression,
            level: cfg.compression_level,
            sorted_listing: backend.scheme != "file",
            buffers: BufferPool::new(buffer_capacity(seg_size), keep),
            tail: None,
            local: backend
                .local
                .clone()
                .filter(|_| cfg.compression == Compression::None && cfg.encryption_key.is_none()),
        }
    }
}

/// Capacity of the upload buffers: a segment, or its compressed form (which can be slightly
/// larger for incompressible data).
fn buffer_capacity(seg_size: u64) -> usize {
    zstd::zstd_safe::compress_bound(seg_size as usize)
}

struct Run {
    cfg: ArchiveConfig,
    slot_floor: Option<watch::Receiver<Option<Lsn>>>,
    policy: UploadPolicy,
    backend: Backend,
    dir: PathBuf,
    store: Store,
    lsn_tx: watch::Sender<Lsn>,
    status_tx: watch::Sender<ArchiverStatus>,
    state_sysid: Option<String>,
    state_file: StateFile,
    sysid: u64,
    /// Timeline `prefix_end` was computed on (`None`: not known yet).
    prefix_tli: Option<TimelineId>,
    /// The current timeline and its history (read from its history file).
    history: Option<(TimelineId, Vec<HistoryEntry>)>,
    /// After a timeline switch: archived WAL common to both histories (up to the fork point)
    /// that counts until `prefix_end` passes it.
    carry: Lsn,
    /// End of the contiguous prefix of completed segments in the archive.
    prefix_end: Lsn,
    persisted: Lsn,
    persisted_tli: Option<TimelineId>,
    /// (segno, tli) of segments known to be in the archive.
    archived: BTreeSet<(u64, TimelineId)>,
    in_flight: HashSet<Job>,
    /// Jobs that failed for a non-transient reason, and when to try them again.
    cooldown: HashMap<Job, Instant>,
    histories_done: HashSet<TimelineId>,
    /// Last uploaded snapshot of an open segment.
    snapshot: Option<(TimelineId, u64, Lsn)>,
    disk_alarm: bool,
    status: ArchiverStatus,
}

type JobFuture = BoxFuture<'static, (Job, Result<PutOutcome, ArchiveError>)>;

impl Run {
    async fn main(
        mut self,
        mut positions: watch::Receiver<Positions>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some((sysid, seg_size)) = self.wait_identity(&mut positions, &mut shutdown).await
        else {
            return;
        };
        if self
            .state_sysid
            .as_deref()
            .is_some_and(|s| s != sysid.to_string())
        {
            self.prefix_end = Lsn::INVALID;
            self.persisted = Lsn::INVALID;
        }
        self.sysid = sysid;
        let ctx = Arc::new(Ctx {
            tail: Some(self.store.tail().clone()),
            ..Ctx::new(
                &self.backend,
                &self.backend.prefix,
                sysid,
                seg_size,
                &self.cfg,
                self.dir.clone(),
            )
        });
        tracing::info!(
            "archive: archiving to {} (system {sysid}, compression {}, concurrency {})",
            self.backend.url,
            compression_name(self.cfg.compression),
            self.cfg.concurrency.max(1)
        );
        if let Err(e) = self.prepare(&ctx, sysid, &mut shutdown).await {
            if !matches!(e, ArchiveError::Shutdown) {
                tracing::error!("archive: {e}; archiving stopped");
                crate::ops::record_error("archive", format!("{e}; archiving stopped"));
                self.status.last_error = Some(e.to_string());
                self.publish_status();
            }
            return;
        }

        let mut jobs: FuturesUnordered<JobFuture> = FuturesUnordered::new();
        let mut tick =
            tokio::time::interval(self.cfg.scan_interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let partial_every = self.cfg.partial_interval;
        let mut ptick = tokio::time::interval(partial_every.max(Duration::from_millis(100)));
        ptick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_completed = positions.borrow().completed_segments;
        let mut store_alive = true;
        let mut need_scan = true;
        let job_shutdown = shutdown.clone();
        loop {
            // Lag moves when WAL arrives (here, on every event) and when archived_lsn moves
            // (`advance` publishes it then).
            self.publish_lag();
            if need_scan {
                need_scan = false;
                self.scan_and_schedule(&ctx, &mut jobs, &job_shutdown).await;
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                r = positions.changed(), if store_alive => {
                    if r.is_err() {
                        store_alive = false;
                        continue;
                    }
                    let p = positions.borrow_and_update().clone();
                    if p.completed_segments != last_completed {
                        last_completed = p.completed_segments;
                        need_scan = true;
                    }
                }
                _ = tick.tick() => need_scan = true,
                _ = ptick.tick(), if !partial_every.is_zero() => {
                    let p = positions.borrow().clone();
                    self.maybe_snapshot(&ctx, &p, &mut jobs, &job_shutdown);
                }
                Some((job, result)) = jobs.next(), if !jobs.is_empty() => {
                    self.finish(job, result);
                    need_scan = true;
                }
            }
        }
        tracing::info!("archive: stopped at archived_lsn {}", *self.lsn_tx.borrow());
    }

    /// Waits until the system id and segment size are known: from the control file of a
    /// directory used before, or from the store once it has talked to the primary.
    async fn wait_identity(
        &self,
        positions: &mut watch::Receiver<Positions>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<(u64, u64)> {
        loop {
            if let Ok(Some(c)) = control::read(&self.dir) {
                if let Some(id) = c.system_id() {
                    if crate::lsn::valid_segment_size(c.wal_segment_size) {
                        return Some((id, c.wal_segment_size));
                    }
                }
            }
            {
                let p = positions.borrow();
                if p.system_id != 0 && crate::lsn::valid_segment_size(p.wal_segment_size) {
                    return Some((p.system_id, p.wal_segment_size));
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return None,
                _ = positions.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes (or checks) the archive's identity and learns which local segments are already
    /// archived by listing their manifests.
    async fn prepare(
        &mut self,
        ctx: &Arc<Ctx>,
        sysid: u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ArchiveError> {
        let ident = Identity::new(sysid, ctx.seg_size);
        let path = ctx.layout.identity();
        let policy = self.policy.clone();
        upload::retry(&policy, shutdown, "writing the archive identity", || {
            let ctx = ctx.clone();
            let ident = ident.clone();
            let path = path.clone();
            async move {
                let body = Bytes::from(ident.encode());
                let Some(b) = upload::create_or_existing(&ctx.store, &path, body).await? else {
                    return Ok(());
                };
                match Identity::decode(&b) {
                    Some(found)
                        if found.system_id() == Some(sysid)
                            && found.wal_segment_size == ctx.seg_size =>
                    {
                        Ok(())
                    }
                    Some(found) => Err(ArchiveError::IdentityMismatch {
                        found: found.system_id().unwrap_or(0),
                        found_seg_size: found.wal_segment_size,
                        expected: sysid,
                        expected_seg_size: ctx.seg_size,
                    }),
                    None => Err(ArchiveError::Corrupt {
                        path: path.to_string(),
                        reason: "not an archive identity".into(),
                    }),
                }
            }
        })
        .await?;

        let (segs, _) = list_dir(&self.dir, ctx.seg_size).await;
        let mut first: HashMap<TimelineId, u64> = HashMap::new();
        for s in &segs {
            let e = first.entry(s.tli).or_insert(s.segno);
            *e = (*e).min(s.segno);
        }
        for (tli, segno) in first {
            let found = upload::retry(&policy, shutdown, "listing the archive", || {
                list_archived(ctx.clone(), tli, segno)
            })
            .await?;
            self.archived.extend(found);
        }
        if !self.prefix_end.is_valid() {
            if let Some(min) = segs.iter().map(|s| s.segno).min() {
                self.prefix_end = Lsn(min.saturating_mul(ctx.seg_size));
            }
        }
        self.advance(&segs, ctx.seg_size, &Positions::default());
        Ok(())
    }

    async fn scan_and_schedule(
        &mut self,
        ctx: &Arc<Ctx>,
        jobs: &mut FuturesUnordered<JobFuture>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let seg_size = ctx.seg_size;
        let (segs, histories) = list_dir(&self.dir, seg_size).await;
        if !self.prefix_end.is_valid() {
            if let Some(min) = segs.iter().map(|s| s.segno).min() {
                self.prefix_end = Lsn(min.saturating_mul(seg_size));
            }
        }
        let now = Instant::now();
        self.cooldown.retain(|_, until| *until > now);
        let mut todo: Vec<Job> = histories
            .iter()
            .filter(|t| !self.histories_done.contains(t))
            .map(|&tli| Job::History { tli })
            .collect();
        let mut pending = 0usize;
        for s in segs.iter().filter(|s| !s.partial && s.size == seg_size) {
            if !self.archived.contains(&(s.segno, s.tli)) {
                pending += 1;
                todo.push(Job::Segment {
                    tli: s.tli,
                    segno: s.segno,
                });
            }
        }
        self.status.pending = pending;
        metrics::gauge!(super::PENDING_SEGMENTS).set(pending as f64);
        let limit = self.cfg.concurrency.max(1);
        for job in todo {
            if self
                .in_flight
                .iter()
                .filter(|j| !matches!(j, Job::Partial { .. }))
                .count()
                >= limit
            {
                break;
            }
            if self.in_flight.contains(&job) || self.cooldown.contains_key(&job) {
                continue;
            }
            self.in_flight.insert(job);
            jobs.push(Box::pin(run_job(ctx.clone(), job, shutdown.clone())));
        }
        let p = self.store.positions().borrow().clone();
        self.follow_timeline(p.timeline, seg_size).await;
        self.advance(&segs, seg_size, &p);
        self.retention(&segs, seg_size).await;
        self.publish_status();
    }

    fn maybe_snapshot(
        &mut self,
        ctx: &Arc<Ctx>,
        p: &Positions,
        jobs: &mut FuturesUnordered<JobFuture>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let seg_size = ctx.seg_size;
        if p.timeline == 0 || seg_size == 0 || p.wal_segment_size != seg_size {
            return;
        }
        let offset = p.flush_lsn.segment_offset(seg_size);
        let segno = p.flush_lsn.segno(seg_size);
        if offset == 0 || self.archived.contains(&(segno, p.timeline)) {
            return;
        }
        if self
            .in_flight
            .iter()
            .any(|j| matches!(j, Job::Partial { .. }))
        {
            return;
        }
        if let Some((tli, s, end)) = self.snapshot {
            if tli == p.timeline && s == segno && end >= p.flush_lsn {
                return;
            }
        }
        let job = Job::Partial {
            tli: p.timeline,
            segno,
            end: p.flush_lsn,
        };
        self.in_flight.insert(job);
        jobs.push(Box::pin(run_job(ctx.clone(), job, shutdown.clone())));
    }

    fn finish(&mut self, job: Job, result: Result<PutOutcome, ArchiveError>) {
        self.in_flight.remove(&job);
        match result {
            Ok(outcome) => {
                self.status.last_error = None;
                match job {
                    Job::Segment { tli, segno } => {
                        self.archived.insert((segno, tli));
                        let seg_size = self.store.positions().borrow().wal_segment_size;
                        if crate::lsn::valid_segment_size(seg_size) {
                            crate::ops::note_archived(&crate::lsn::segment_file_name(
                                tli, segno, seg_size,
                            ));
                        }
                        self.status.uploaded_segments += 1;
                        metrics::counter!(super::UPLOADED_SEGMENTS).increment(1);
                        if outcome == PutOutcome::AlreadyPresent {
                            self.status.already_present += 1;
                        }
                    }
                    Job::History { tli } => {
                        self.histories_done.insert(tli);
                    }
                    Job::Partial { tli, segno, end } => {
                        self.snapshot = Some((tli, segno, end));
                        self.status.partial_snapshots += 1;
                        metrics::counter!(super::PARTIAL_SNAPSHOTS).increment(1);
                    }
                }
            }
            Err(ArchiveError::Shutdown) => {}
            Err(e) => {
                if matches!(e, ArchiveError::Conflict { .. }) {
                    self.status.conflicts += 1;
                }
                tracing::error!("archive: {e}");
                crate::ops::record_error("archive", e.to_string());
                self.status.last_error = Some(e.to_string());
                let wait = if matches!(e, ArchiveError::Conflict { .. }) {
                    Duration::from_secs(60)
                } else {
                    self.policy.retry_max
                };
                self.cooldown.insert(job, Instant::now() + wait);
            }
        }
        self.publish_status();
    }

    /// Follows the store's timeline `tli`: reads its history and, when `archived_lsn` was
    /// computed on another timeline, caps it at the point where the two histories part.
    async fn follow_timeline(&mut self, tli: TimelineId, seg_size: u64) {
        if tli == 0 || self.history.as_ref().is_some_and(|(t, _)| *t == tli) {
            return;
        }
        let new = read_history(&self.dir, tli).await;
        if let Some(old) = self.prefix_tli.filter(|&t| t != tli) {
            let old_h = read_history(&self.dir, old).await;
            let fork = fork_point(&old_h, &new);
            let cur = *self.lsn_tx.borrow();
            let top = self.prefix_end.max(cur);
            if top.is_valid() && top > fork {
                self.carry = cur.min(fork);
                self.prefix_end = self.prefix_end.min(fork.segment_start(seg_size));
                tracing::info!(
                    "archive: timeline {tli} forked from timeline {old} at {fork}; archived_lsn is {} until timeline {tli}'s segments are archived",
                    self.prefix_end.max(self.carry)
                );
            }
            if self.snapshot.is_some_and(|(t, _, _)| t != tli) {
                self.snapshot = None;
            }
        }
        self.prefix_tli = Some(tli);
        self.history = Some((tli, new));
    }

    /// Moves the contiguous prefix over archived segments and publishes `archived_lsn`.
    fn advance(&mut self, segs: &[SegmentFile], seg_size: u64, p: &Positions) {
        if seg_size == 0 || !self.prefix_end.is_valid() && segs.is_empty() {
            return;
        }
        loop {
            let segno = self.prefix_end.segno(seg_size);
            let done = match &self.history {
                // the file of the timeline that owns the segment on the current history
                Some((tli, h)) => {
                    let last = Lsn(segno.saturating_add(1).saturating_mul(seg_size) - 1);
                    let owner = history::tli_of_lsn(h, *tli, last);
                    self.archived.contains(&(segno, owner))
                }
                None => {
                    let local: Vec<&SegmentFile> = segs
                        .iter()
                        .filter(|s| s.segno == segno && !s.partial && s.size == seg_size)
                        .collect();
                    if local.is_empty() {
                        self.archived
                            .range((segno, 0)..=(segno, u32::MAX))
                            .next()
                            .is_some()
                    } else {
                        local
                            .iter()
                            .all(|s| self.archived.contains(&(segno, s.tli)))
                    }
                }
            };
            if !done {
                break;
            }
            self.prefix_end = Lsn(self.prefix_end.0.saturating_add(seg_size));
        }
        let mut lsn = self.prefix_end.max(self.carry);
        if let Some((tli, segno, end)) = self.snapshot {
            if segno == self.prefix_end.segno(seg_size) && (p.timeline == 0 || p.timeline == tli) {
                lsn = lsn.max(end);
            }
        }
        self.lsn_tx.send_if_modified(|cur| {
            if lsn != *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
        metrics::gauge!(super::ARCHIVED_LSN).set(self.lsn_tx.borrow().0 as f64);
        self.publish_lag();
        if self.prefix_end != self.persisted || self.prefix_tli != self.persisted_tli {
            let state = State {
                system_id: self.sysid.to_string(),
                url: self.backend.url.clone(),
                archived_lsn: self.prefix_end.to_string(),
                timeline: self.prefix_tli,
            };
            let body = serde_json::to_vec_pretty(&state).unwrap_or_default();
            // written by the state writer thread; a lost write only means re-checking
            self.state_file.submit(body);
            self.persisted = self.prefix_end;
            self.persisted_tli = self.prefix_tli;
        }
    }

    async fn retention(&mut self, segs: &[SegmentFile], seg_size: u64) {
        let total: u64 = segs.iter().map(|s| s.size).sum();
        metrics::gauge!(super::LOCAL_WAL_BYTES).set(total as f64);
        let cap = self.cfg.local_disk_cap;
        let alarm = cap > 0 && total.saturating_mul(10) > cap.saturating_mul(9);
        if alarm && !self.disk_alarm {
            tracing::error!(
                "archive: local WAL uses {total} bytes, above 90% of archive.local_disk_cap \
                 ({cap}); {} completed segments are not archived yet (is the object store \
                 reachable?)",
                self.status.pending
            );
        } else if !alarm && self.disk_alarm {
            tracing::info!("archive: local WAL back below 90% of archive.local_disk_cap");
        }
        self.disk_alarm = alarm;
        metrics::gauge!(super::DISK_CAP_ALARM).set(if alarm { 1.0 } else { 0.0 });

        let policy = RetentionPolicy {
            keep_size: self.cfg.keep_local_size,
            keep_age: self.cfg.keep_local_age,
        };
        let floor = self.slot_floor.as_ref().and_then(|r| *r.borrow());
        let dir = self.dir.clone();
        let names = retention::removable(
            segs,
            seg_size,
            &policy,
            floor,
            SystemTime::now(),
            |tli, segno| self.archived.contains(&(segno, tli)),
            |s| {
                std::fs::metadata(dir.join(&s.name))
                    .and_then(|m| m.modified())
                    .ok()
            },
        );
        if names.is_empty() {
            return;
        }
        match self.store.remove_segments(names).await {
            Ok(n) => {
                self.status.removed_segments += n as u64;
                metrics::counter!(super::REMOVED_SEGMENTS).increment(n as u64);
            }
            Err(e) => tracing::warn!("archive: retention could not remove segments: {e}"),
        }
    }

    /// Sets `walrelay_archive_lag_bytes` from the store's `flush_lsn` and `archived_lsn`.
    /// Until the archiver knows where the local WAL starts (`prefix_end`) nothing is
    /// published: a lag from 0/0 would be the whole LSN.
    fn publish_lag(&self) {
        let flush = self.store.positions().borrow().flush_lsn;
        let base = (*self.lsn_tx.borrow()).max(self.prefix_end);
        if !base.is_valid() {
            return;
        }
        let lag = archive_lag(flush, base);
        metrics::gauge!(super::ARCHIVE_LAG).set(lag as f64);
    }

    fn publish_status(&self) {
        let s = self.status.clone();
        self.status_tx.send_if_modified(|cur| {
            if *cur != s {
                *cur = s;
                true
            } else {
                false
            }
        });
    }
}

/// The history of timeline `tli` from its local history file (timeline 1, or a file that
/// cannot be read or parsed: none).
async fn read_history(dir: &Path, tli: TimelineId) -> Vec<HistoryEntry> {
    if tli <= 1 {
        return Vec::new();
    }
    let path = dir.join(history_file_name(tli));
    let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
        .await
        .ok()
        .and_then(Result::ok);
    text.and_then(|t| history::parse_history(&t).ok())
        .unwrap_or_default()
}

/// Where two timeline histories part: the first entry they do not share ends the common
/// WAL (the lower of the two switch points there). Identical histories of two timelines part
/// at their last switch point.
fn fork_point(a: &[HistoryEntry], b: &[HistoryEntry]) -> Lsn {
    let same = |x: &HistoryEntry, y: &HistoryEntry| {
        x.parent_tli == y.parent_tli && x.switchpoint == y.switchpoint
    };
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) if same(x, y) => continue,
            (x, y) => {
                let sw = |e: Option<&HistoryEntry>| e.map_or(Lsn(u64::MAX), |e| e.switchpoint);
                return sw(x).min(sw(y));
            }
        }
    }
    a.last().map_or(Lsn(0), |e| e.switchpoint)
}

/// Bytes of flushed WAL not yet in the archive.
fn archive_lag(flush: Lsn, archived: Lsn) -> u64 {
    flush.saturating_sub(archived)
}

async fn list_dir(dir: &Path, seg_size: u64) -> (Vec<SegmentFile>, Vec<TimelineId>) {
    let d = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || scan::list(&d, seg_size)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("archive: could not list {}: {e}", dir.display());
            (Vec::new(), Vec::new())
        }
        Err(_) => (Vec::new(), Vec::new()),
    }
}

/// Segments of timeline `tli` from `segno` on that have a manifest in the archive.
async fn list_archived(
    ctx: Arc<Ctx>,
    tli: TimelineId,
    segno: u64,
) -> Result<Vec<(u64, TimelineId)>, ArchiveError> {
    let prefix = ctx.layout.manifest_dir();
    let offset = prefix.child(segment_file_name(tli, segno, ctx.seg_size));
    let mut stream = ctx.store.list_with_offset(Some(&prefix), &offset);
    let mut out = Vec::new();
    let tli_hex = format!("{tli:08X}");
    while let Some(item) = stream.next().await {
        let meta = item.map_err(ArchiveError::store("list", &prefix))?;
        let Some(file) = meta.location.filename() else {
            continue;
        };
        let Some(name) = file.strip_suffix(".json") else {
            continue;
        };
        if let Some(WalFileName::Segment {
            tli: t,
            segno: s,
            partial: false,
        }) = parse_wal_file_name(name, ctx.seg_size)
        {
            if t == tli && s >= segno {
                out.push((s, t));
            }
        }
        if name > tli_hex.as_str() && !name.starts_with(&tli_hex) && ctx_lists_sorted(&ctx) {
            break;
        }
    }
    Ok(out)
}

/// Object stores list in lexicographic order; the local file system does not.
fn ctx_lists_sorted(ctx: &Ctx) -> bool {
    ctx.sorted_listing
}

async fn run_job(
    ctx: Arc<Ctx>,
    job: Job,
    mut shutdown: watch::Receiver<bool>,
) -> (Job, Result<PutOutcome, ArchiveError>) {
    let r = match job {
        Job::Segment { tli, segno } => upload_segment(&ctx, tli, segno, &mut shutdown).await,
        Job::History { tli } => upload_history(&ctx, tli, &mut shutdown).await,
        Job::Partial { tli, segno, end } => {
            upload_snapshot(&ctx, tli, segno, end, &mut shutdown).await
        }
    };
    (job, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::WAL_PAGE_SIZE;
    use crate::store::StoreOptions;
    use crate::wal::page::build::pages;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_042;

    async fn wait_lsn(rx: &mut watch::Receiver<Lsn>, lsn: Lsn) {
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|l| *l >= lsn))
            .await
            .expect("archived_lsn did not advance")
            .unwrap();
    }

    fn settings(data: &Path, url: &str) -> ArchiveSettings {
        let mut cfg = ArchiveConfig {
            url: Some(url.into()),
            scan_interval: Duration::from_millis(200),
            partial_interval: Duration::from_millis(200),
            keep_local_size: 2 * SEG,
            keep_local_age: Duration::ZERO,
            compression: Compression::Zstd,
            ..Default::default()
        };
        cfg.concurrency = 2;
        ArchiveSettings::new(cfg, data)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_prefix_snapshots_retention_and_restart() {
        let data = tempfile::tempdir().unwrap();
        let arch = tempfile::tempdir().unwrap();
        let url = format!("file://{}", arch.path().display());
        let store = Store::start(data.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(SEG)).await.unwrap();
        // 4.5 segments: segments 1..=4 complete, 5 open
        let wal = pages(SEG, 4 * 128 + 64, SEG, SYSID, 1);
        store
            .write(Lsn(SEG), Bytes::from(wal.clone()))
            .await
            .unwrap();
        store.flush().await.unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let h = Archiver::start(settings(data.path(), &url), &store, stop)
            .unwrap()
            .unwrap();
        let mut rx = h.archived_lsn.clone();
        // the snapshot of the open segment extends archived_lsn to the flush position
        let end = Lsn(SEG + wal.len() as u64);
        wait_lsn(&mut rx, end).await;
        assert!(h.flush_cap(AckMode::Local).is_none());
        assert!(h.flush_cap(AckMode::Archive).is_some());
        let root = arch.path().join(SYSID.to_string());
        for n in 1..=4 {
            let name = segment_file_name(1, n, SEG);
            assert!(root.join("wal").join(format!("{name}.zst")).is_file());
            let m = Manifest::decode(
                &std::fs::read(root.join("manifest").join(format!("{name}.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(m.size, SEG);
            assert_eq!(m.timeline, 1);
            assert_eq!(m.compression, "zstd");
        }
        // the reader gets back exactly the local bytes, and the snapshot
        let reader = super::super::ArchiveReader::open(&settings(data.path(), &url))
            .await
            .unwrap();
        let seg2 = reader.fetch_segment(1, 2).await.unwrap().unwrap();
        assert_eq!(&seg2[..], &wal[SEG as usize..2 * SEG as usize]);
        assert!(reader.fetch_segment(1, 9).await.unwrap().is_none());
        let (off, snap) = reader.latest_snapshot(1, 5).await.unwrap().unwrap();
        assert_eq!(off, wal.len() as u64 - 4 * SEG);
        assert_eq!(&snap[..], &wal[4 * SEG as usize..]);
        // retention: keep 2 segments' worth (newest end = 6 segs) -> segments 1..=3 go
        tokio::time::timeout(Duration::from_secs(10), async {
            while data.path().join(segment_file_name(1, 1, SEG)).exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("retention did not remove segment 1");
        assert!(data.path().join(segment_file_name(1, 4, SEG)).exists());
        stop_tx.send(true).unwrap();
        h.join().await;

        // complete segment 5; a restarted archiver uploads only it
        let more = pages(end.0, 64, SEG, SYSID, 1);
        store.write(end, Bytes::from(more)).await.unwrap();
        store.flush().await.unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let h = Archiver::start(settings(data.path(), &url), &store, stop)
            .unwrap()
            .unwrap();
        let mut rx = h.archived_lsn.clone();
        wait_lsn(&mut rx, Lsn(6 * SEG)).await;
        let st = h.status.borrow().clone();
        assert_eq!(st.uploaded_segments, 1, "{st:?}");
        assert_eq!(st.already_present, 0, "{st:?}");
        // the superseded snapshots of segment 5 are gone (cleanup runs after the upload that
        // advanced archived_lsn finished: wait for it, boundedly)
        let count_left = || {
            std::fs::read_dir(root.join("partial"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count_left() != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count_left(), 0, "superseded snapshots left behind");
    }

    #[test]
    fn histories_part_at_the_first_difference() {
        let h = |v: &[(u32, u64)]| -> Vec<HistoryEntry> {
            v.iter()
                .map(|&(t, l)| HistoryEntry {
                    parent_tli: t,
                    switchpoint: Lsn(l),
                    reason: String::new(),
                })
                .collect()
        };
        // timeline 2 forked from 1 at 0x300
        assert_eq!(fork_point(&[], &h(&[(1, 0x300)])), Lsn(0x300));
        // 2 forked from 1 at 0x500, 3 from 1 at 0x300: they share WAL up to 0x300
        assert_eq!(fork_point(&h(&[(1, 0x500)]), &h(&[(1, 0x300)])), Lsn(0x300));
        // 3 forked from 2 at 0x700, 2 from 1 at 0x500: following 2 -> 3 parts at 0x700
        assert_eq!(
            fork_point(&h(&[(1, 0x500)]), &h(&[(1, 0x500), (2, 0x700)])),
            Lsn(0x700)
        );
    }

    /// walrelay archived timeline 1 past the point where timeline 2 forked: archived_lsn
    /// drops to the fork point on timeline 2 (it stayed above it, so `ack = "archive"` could
    /// acknowledge timeline-2 WAL that was not archived), and moves on only as timeline 2's
    /// own segments are archived.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archived_lsn_is_capped_at_the_fork_point_of_a_new_timeline() {
        let data = tempfile::tempdir().unwrap();
        let arch = tempfile::tempdir().unwrap();
        let url = format!("file://{}", arch.path().display());
        let store = Store::start(data.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(SEG)).await.unwrap();
        let wal = pages(SEG, 5 * 128, SEG, SYSID, 1);
        store.write(Lsn(SEG), Bytes::from(wal)).await.unwrap();
        store.flush().await.unwrap();
        let mut st = settings(data.path(), &url);
        st.config.keep_local_size = 64 * SEG;
        let (_stop_tx, stop) = watch::channel(false);
        let h = Archiver::start(st, &store, stop).unwrap().unwrap();
        let mut rx = h.archived_lsn.clone();
        wait_lsn(&mut rx, Lsn(6 * SEG)).await;
        // timeline 2 forks inside segment 2
        let fork = Lsn(2 * SEG + 4 * WAL_PAGE_SIZE);
        store
            .write_history(
                2,
                Bytes::from(format!("1\t{fork}\tno recovery target specified\n")),
            )
            .await
            .unwrap();
        store.begin(2, fork).await.unwrap();
        let tail = pages(fork.0, 8, SEG, SYSID, 2);
        let end2 = Lsn(fork.0 + tail.len() as u64);
        store.write(fork, Bytes::from(tail)).await.unwrap();
        store.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|l| *l <= end2))
            .await
            .expect("archived_lsn stayed above timeline 2's WAL")
            .unwrap();
        // timeline 2 fills segments 2 and 3: archived_lsn follows its own segments
        let more = pages(end2.0, 2 * 128 - 12, SEG, SYSID, 2);
        store.write(end2, Bytes::from(more)).await.unwrap();
        store.flush().await.unwrap();
        wait_lsn(&mut rx, Lsn(4 * SEG)).await;
        let root = arch.path().join(SYSID.to_string());
        for n in 2..=3 {
            let name = segment_file_name(2, n, SEG);
            assert!(root.join("manifest").join(format!("{name}.json")).is_file());
        }
        let state: State =
            serde_json::from_slice(&std::fs::read(data.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(state.timeline, Some(2));
    }

    /// A state file that cannot be read stops the archiver's start with the way out.
    #[tokio::test]
    async fn corrupt_state_file_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::start(data.path(), StoreOptions::default()).unwrap();
        std::fs::write(data.path().join(STATE_FILE), b"{\"system_id\": ").unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let url = format!("file://{}", data.path().join("a").display());
        let e = Archiver::start(settings(data.path(), &url), &store, stop)
            .err()
            .expect("a corrupt state file was accepted");
        let m = e.to_string();
        assert!(m.contains(STATE_FILE) && m.contains("remove it"), "{m}");
    }

    /// Files are read into pooled buffers, hashed as read, and the buffers come back; a
    /// segment of the wrong size and a short snapshot source are refused.
    #[tokio::test]
    async fn prepare_file_hashes_and_reuses_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend::open(
            &format!("file://{}", dir.path().join("a").display()),
            &ArchiveConfig::default(),
        )
        .unwrap();
        for compression in [Compression::None, Compression::Zstd] {
            let cfg = ArchiveConfig {
                compression,
                ..Default::default()
            };
            let ctx = Arc::new(Ctx::new(
                &backend,
                &backend.prefix,
                SYSID,
                SEG,
                &cfg,
                dir.path().into(),
            ));
            let body: Vec<u8> = (0..SEG as u32).map(|i| (i % 253) as u8).collect();
            let f = dir.path().join("seg");
            std::fs::write(&f, &body).unwrap();
            let p = prepare_file(&ctx, f.clone(), SEG, true, "x".into(), None)
                .await
                .unwrap();
            assert_eq!(p.raw_len, SEG);
            assert_eq!(p.sha256, sha256_hex(&body));
            let raw =
                layout::decompress(one(&p.stored), compression, SEG as usize, &"x".into()).unwrap();
            assert_eq!(&raw[..], &body[..]);
            let ptr = one(&p.stored).as_ptr();
            drop((p, raw));
            // the buffer is back and is used again (no copy, no new allocation)
            assert!(ctx.buffers.idle() >= 1);
            let p = prepare_file(&ctx, f.clone(), 1000, false, "x".into(), None)
                .await
                .unwrap();
            assert_eq!(p.sha256, sha256_hex(&body[..1000]));
            if compression == Compression::None {
                assert_eq!(one(&p.stored).as_ptr(), ptr);
            }
            drop(p);
            let e = prepare_file(&ctx, f.clone(), SEG / 2, true, "x".into(), None)
                .await
                .err()
                .unwrap();
            assert!(matches!(e, ArchiveError::Corrupt { .. }), "{e}");
            let e = prepare_file(&ctx, f.clone(), SEG + 1, false, "x".into(), None)
                .await
                .err()
                .unwrap();
            assert!(matches!(e, ArchiveError::Io { .. }), "{e}");
            assert!(ctx.buffers.idle() <= cfg.concurrency + 1);
        }
    }

    /// The single buffer of a payload prepared from a file.
    fn one(p: &PutPayload) -> Bytes {
        assert_eq!(p.as_ref().len(), 1, "one buffer");
        p.as_ref()[0].clone()
    }

    /// A completed segment still in the store's tail is hashed and uploaded from the tail's
    /// own buffers: the same SHA-256 and the same stored bytes as from the file (plain,
    /// compressed, encrypted), no upload buffer taken and the file not read (it differs here
    /// on purpose); a segment the tail holds only part of is read from the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_in_the_tail_are_uploaded_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend::open(
            &format!("file://{}", dir.path().join("a").display()),
            &ArchiveConfig::default(),
        )
        .unwrap();
        let body: Vec<u8> = (0..SEG as u32).map(|i| (i % 251) as u8).collect();
        let tail = Arc::new(Tail::new(4 * SEG as usize));
        tail.reset(1);
        // segment 3 of timeline 1, pushed as the store does: in pieces
        let start = Lsn(3 * SEG);
        let mut at = 0usize;
        for n in [1usize, 8191, 131_072, 65_536].into_iter().cycle() {
            if at >= body.len() {
                break;
            }
            let end = (at + n).min(body.len());
            tail.push(
                Lsn(start.0 + at as u64),
                Bytes::copy_from_slice(&body[at..end]),
            );
            at = end;
        }
        let f = dir.path().join("seg");
        std::fs::write(&f, vec![0u8; SEG as usize]).unwrap();
        let key = crate::archive::crypt::Key::from_bytes([7; 32], Path::new("k"));
        for (compression, key) in [
            (Compression::None, None),
            (Compression::Zstd, None),
            (Compression::None, Some(key)),
        ] {
            let cfg = ArchiveConfig {
                compression,
                ..Default::default()
            };
            let mut ctx = Ctx::new(
                &backend,
                &backend.prefix,
                SYSID,
                SEG,
                &cfg,
                dir.path().into(),
            );
            ctx.policy.key = key.clone();
            ctx.tail = Some(tail.clone());
            let ctx = Arc::new(ctx);
            let p = prepare_file(&ctx, f.clone(), SEG, true, "x".into(), Some((1, start)))
                .await
                .unwrap();
            assert_eq!(p.raw_len, SEG);
            assert_eq!(p.sha256, sha256_hex(&body), "{compression:?}");
            let joined = Bytes::from(p.stored.clone());
            let plain = match &key {
                Some(k) => {
                    Bytes::from(crate::archive::crypt::decrypt(Some(k), &joined, "x").unwrap())
                }
                None => joined,
            };
            let raw = layout::decompress(plain, compression, SEG as usize, &"x".into()).unwrap();
            assert_eq!(&raw[..], &body[..]);
            if compression == Compression::None && key.is_none() {
                // the tail's buffers themselves, no pool buffer
                assert!(p.stored.as_ref().len() > 1);
                assert_eq!(ctx.buffers.idle(), 0);
                // the upload stores exactly those bytes, and finds them identical again
                let path = ObjPath::from("t/seg");
                for want in [PutOutcome::Created, PutOutcome::AlreadyPresent] {
                    let o = upload::put_create_payload(
                        &ctx.store,
                        &path,
                        p.stored.clone(),
                        &p.sha256,
                        SEG as usize,
                        &ctx.policy,
                    )
                    .await
                    .unwrap();
                    assert_eq!(o, want);
                }
                let got = ctx.store.get(&path).await.unwrap().bytes().await.unwrap();
                assert_eq!(&got[..], &body[..]);
            }
            // another timeline, or a segment the tail holds only in part: the file
            for src in [(2, start), (1, Lsn(4 * SEG)), (1, Lsn(start.0 - 1))] {
                let p = prepare_file(&ctx, f.clone(), SEG, true, "x".into(), Some(src))
                    .await
                    .unwrap();
                assert_eq!(p.sha256, sha256_hex(&vec![0u8; SEG as usize]), "{src:?}");
            }
        }
    }

    /// `walrelay_archive_lag_bytes` follows archived_lsn too, not only incoming WAL: once the
    /// archive has caught up with WAL that stopped arriving, it reads 0 at once.
    #[test]
    fn lag_gauge_follows_archived_lsn() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let gauge = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("walrelay_archive_lag_bytes "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let data = tempfile::tempdir().unwrap();
                let arch = tempfile::tempdir().unwrap();
                let url = format!("file://{}", arch.path().display());
                let store = Store::start(data.path(), StoreOptions::default()).unwrap();
                store.open(SYSID, SEG, "15.0").await.unwrap();
                store.begin(1, Lsn(SEG)).await.unwrap();
                // segments 1 and 2, complete; then no more WAL
                let wal = pages(SEG, 2 * 128, SEG, SYSID, 1);
                store.write(Lsn(SEG), Bytes::from(wal)).await.unwrap();
                store.flush().await.unwrap();
                let mut s = settings(data.path(), &url);
                s.config.compression = Compression::None;
                s.config.partial_interval = Duration::ZERO;
                // no periodic rescans: only the uploads finishing wake the archiver
                s.config.scan_interval = Duration::from_secs(3600);
                let (_t, stop) = watch::channel(false);
                let h = Archiver::start(s, &store, stop).unwrap().unwrap();
                let mut rx = h.archived_lsn.clone();
                wait_lsn(&mut rx, Lsn(3 * SEG)).await;
                let text = handle.render();
                assert_eq!(gauge(&text), Some(0.0), "{text}");
            })
        });
    }

    #[tokio::test]
    async fn conflict_is_never_overwritten() {
        let data = tempfile::tempdir().unwrap();
        let arch = tempfile::tempdir().unwrap();
        let url = format!("file://{}", arch.path().display());
        let store = Store::start(data.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(SEG)).await.unwrap();
        let wal = pages(SEG, 2 * 128, SEG, SYSID, 1);
        store.write(Lsn(SEG), Bytes::from(wal)).await.unwrap();
        store.flush().await.unwrap();
        // someone else's segment 1 is in the archive already
        let name = segment_file_name(1, 1, SEG);
        let wal_dir = arch.path().join(SYSID.to_string()).join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(wal_dir.join(&name), vec![1u8; SEG as usize]).unwrap();
        let mut s = settings(data.path(), &url);
        s.config.compression = Compression::None;
        s.config.partial_interval = Duration::ZERO;
        let (_t, stop) = watch::channel(false);
        let h = Archiver::start(s, &store, stop).unwrap().unwrap();
        let mut st = h.status.clone();
        tokio::time::timeout(Duration::from_secs(10), st.wait_for(|s| s.conflicts > 0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read(wal_dir.join(&name)).unwrap(),
            vec![1u8; SEG as usize]
        );
        // segment 2 is archived, but archived_lsn stays at segment 1's start
        tokio::time::timeout(
            Duration::from_secs(10),
            st.wait_for(|s| s.uploaded_segments >= 1),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(*h.archived_lsn.borrow(), Lsn(SEG));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_and_wal_fetch() {
        use crate::archive::fetch::{wal_fetch, FetchOutcome, WalFetchOptions};
        use crate::archive::verify::{verify, SegmentStatus, VerifyOptions};
        let data = tempfile::tempdir().unwrap();
        let arch = tempfile::tempdir().unwrap();
        let url = format!("file://{}", arch.path().display());
        let store = Store::start(data.path(), StoreOptions::default()).unwrap();
        store.open(SYSID, SEG, "15.0").await.unwrap();
        store.begin(1, Lsn(SEG)).await.unwrap();
        let wal = pages(SEG, 5 * 128, SEG, SYSID, 1);
        store
            .write(Lsn(SEG), Bytes::from(wal.clone()))
            .await
            .unwrap();
        store.flush().await.unwrap();
        let (_t, stop) = watch::channel(false);
        let s = settings(data.path(), &url);
        let h = Archiver::start(s.clone(), &store, stop).unwrap().unwrap();
        let mut rx = h.archived_lsn.clone();
        wait_lsn(&mut rx, Lsn(6 * SEG)).await;
        let reader = crate::archive::ArchiveReader::open(&s).await.unwrap();
        let r = verify(&reader, &VerifyOptions::default()).await.unwrap();
        assert!(r.ok(), "{}", r.render());
        assert_eq!(r.segments.len(), 5);

        // wal-fetch: restores, prefetches into the spool, quiet NotFound for the future
        let pg_wal = tempfile::tempdir().unwrap();
        let dest = pg_wal.path().join("RECOVERYXLOG");
        let opts = WalFetchOptions {
            spool: None,
            prefetch: 2,
            partial: false,
        };
        let o = wal_fetch(&reader, &segment_file_name(1, 1, SEG), &dest, &opts)
            .await
            .unwrap();
        assert_eq!(o, FetchOutcome::Restored { from_spool: false });
        assert_eq!(std::fs::read(&dest).unwrap(), &wal[..SEG as usize]);
        let o = wal_fetch(&reader, &segment_file_name(1, 2, SEG), &dest, &opts)
            .await
            .unwrap();
        assert_eq!(o, FetchOutcome::Restored { from_spool: true });
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            &wal[SEG as usize..2 * SEG as usize]
        );
        let o = wal_fetch(&reader, "00000002.history", &dest, &opts)
            .await
            .unwrap();
        assert_eq!(o, FetchOutcome::NotFound);
        let o = wal_fetch(&reader, &segment_file_name(1, 9, SEG), &dest, &opts)
            .await
            .unwrap();
        assert_eq!(o, FetchOutcome::NotFound);

        // a deleted and a corrupted object are found
        let wal_dir = arch.path().join(SYSID.to_string()).join("wal");
        std::fs::remove_file(wal_dir.join(format!("{}.zst", segment_file_name(1, 2, SEG))))
            .unwrap();
        let bad = wal_dir.join(format!("{}.zst", segment_file_name(1, 4, SEG)));
        let mut b = std::fs::read(&bad).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&bad, b).unwrap();
        let r = verify(&reader, &VerifyOptions::default()).await.unwrap();
        assert!(!r.ok());
        assert_eq!(r.missing(), 1, "{}", r.render());
        assert_eq!(r.corrupt(), 1, "{}", r.render());
        assert_eq!(r.segments[1].status, SegmentStatus::Missing);
        assert!(matches!(r.segments[3].status, SegmentStatus::Corrupt(_)));
        assert!(r.render().contains("MISSING  000000010000000000000002"));
    }
}

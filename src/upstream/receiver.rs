//! The receive loop: streams WAL from the primary into the [`Store`], like `pg_receivewal`.
//!
//! Owns: choosing the start position (with [`super::timeline`]: the server's timeline and
//! history checked against walrelay's, divergent WAL set aside), the timeline-following
//! loop, status updates to the primary, `--endpos`, reconnect with backoff. Reports to the
//! primary only what the store has published as durable (`flush_lsn`), never more.
//!
//! Must not: write files (the store does), or serve clients.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::conn::{CopyEvent, ReplConnection};
use super::conninfo::ConnInfo;
use super::error::UpstreamError;
use super::timeline;
use crate::lsn::{Lsn, TimelineId};
use crate::metrics as m;
use crate::store::{Positions, Store, StoreError};

/// What walrelay knows of its upstream server, published on a `watch` channel for the
/// walsender (which mirrors `server_version` and friends) and the status view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamInfo {
    pub connected: bool,
    pub server_version: String,
    /// ParameterStatus values the upstream reported, sorted by name.
    pub parameters: Vec<(String, String)>,
    pub system_id: u64,
    pub timeline: TimelineId,
    pub wal_segment_size: u64,
    /// "host:port" of the server reached.
    pub server: String,
}

/// Hot-standby feedback to forward upstream (the minimum over downstream standbys; zeros when
/// none needs it, which clears the xmin the primary's slot holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HsFeedback {
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

/// The default receive timeout: `wal_receiver_timeout`'s default.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the receive loop behaves.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    pub conninfo: ConnInfo,
    pub slot: Option<String>,
    /// Create `slot` (PHYSICAL RESERVE_WAL) when it does not exist (`walrelay run`).
    pub create_slot_if_missing: bool,
    /// Ask for an fsync after every message, and report right after it.
    pub synchronous: bool,
    pub status_interval: Duration,
    /// Like `wal_receiver_timeout`: the connection is dropped when nothing arrived from the
    /// server for this long (a status asking for a reply goes out at half of it); also the
    /// longest wait for each message answering a command. Zero: never.
    pub receive_timeout: Duration,
    pub endpos: Option<Lsn>,
    /// Stop instead of reconnecting when the connection ends or fails.
    pub no_loop: bool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// `ack = "archive"`: the flush position reported to the primary is capped by this
    /// position (`archived_lsn`), so that the primary's slot keeps WAL until it is in the
    /// object store. `write` is still reported at local fsync.
    pub flush_cap: Option<watch::Receiver<Lsn>>,
    /// Published on every (re)connection and timeline change.
    pub info: Option<watch::Sender<UpstreamInfo>>,
    /// Feedback to forward upstream: sent once per connection and whenever it changes.
    pub hs_feedback: Option<watch::Receiver<HsFeedback>>,
}

/// Why the receive loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverExit {
    /// `--endpos` was reached.
    EndPos(Lsn),
    /// Shutdown was requested (signal).
    Shutdown,
    /// With `no_loop`: the server ended the stream (it shut down, or a timeline ended
    /// without a successor).
    StreamEnded,
}

/// Errors that end the receive loop for good, or one attempt of it.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Stream(String),
    /// The server's timeline is older than the one walrelay's files end on: following it
    /// would go back in history (PostgreSQL's walreceiver refuses the same way).
    #[error("highest timeline {server} of the primary is behind recovery timeline {ours}")]
    ServerTimelineBehind {
        server: TimelineId,
        ours: TimelineId,
    },
    /// A history file that is invalid, or disagrees with walrelay's WAL and histories.
    #[error("timeline history: {0}")]
    History(String),
}

impl ReceiverError {
    /// Errors that retrying cannot fix: walrelay stops instead of looping.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            ReceiverError::Store(StoreError::IdentityMismatch { .. } | StoreError::Control(_))
        )
    }
}

enum CopyOutcome {
    /// The server ended the timeline; WAL was received up to the position given.
    EndOfTimeline(Lsn),
    ServerShutdown,
    EndPos(Lsn),
    Shutdown,
}

/// Runs until `shutdown` turns true, `endpos` is reached, or (with `no_loop`) the first
/// disconnection.
pub async fn run(
    store: Store,
    opts: ReceiverOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReceiverExit, ReceiverError> {
    let mut backoff = opts.reconnect_min;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = stream_once(&store, &opts, shutdown.clone()) => r,
            _ = wait_true(&mut shutdown) => Ok(ReceiverExit::Shutdown),
        };
        m_streaming(false);
        if let Some(info) = &opts.info {
            info.send_modify(|i| i.connected = false);
        }
        let err = match result {
            Ok(ReceiverExit::StreamEnded) if !opts.no_loop => None,
            Ok(exit) => return Ok(exit),
            Err(e) => Some(e),
        };
        let wait = match &err {
            Some(e) if e.is_fatal() || opts.no_loop => {
                return Err(err.unwrap_or_else(|| ReceiverError::Stream("stopped".into())))
            }
            Some(e) => {
                crate::ops::upstream_error(&e.to_string());
                let kind = match e {
                    ReceiverError::Upstream(u) if u.is_auth_failure() => "auth",
                    ReceiverError::Upstream(_) => "upstream",
                    ReceiverError::Store(_) => "store",
                    ReceiverError::Stream(_) => "protocol",
                    ReceiverError::ServerTimelineBehind { .. } | ReceiverError::History(_) => {
                        "timeline"
                    }
                };
                metrics::counter!(m::ERRORS, "kind" => kind).increment(1);
                // A wrong password does not fix itself: wait the longest interval, no storm.
                if matches!(e, ReceiverError::Upstream(u) if u.is_auth_failure()) {
                    opts.reconnect_max
                } else {
                    backoff
                }
            }
            None => opts.reconnect_min,
        };
        if started.elapsed() > Duration::from_secs(60) {
            backoff = opts.reconnect_min;
        } else {
            backoff = backoff.saturating_mul(2).min(opts.reconnect_max);
        }
        let jitter_max = (wait.as_millis() as u64 / 4).saturating_add(1);
        let jitter =
            Duration::from_millis(rand::random::<u64>().checked_rem(jitter_max).unwrap_or(0));
        tracing::info!(
            "disconnected; waiting {:.1} seconds to try again",
            wait.saturating_add(jitter).as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(wait.saturating_add(jitter)) => {}
            _ = wait_true(&mut shutdown) => return Ok(ReceiverExit::Shutdown),
        }
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn m_streaming(on: bool) {
    metrics::gauge!(m::UPSTREAM_STREAMING).set(if on { 1.0 } else { 0.0 });
}

/// Where to start when the directory holds no WAL: the slot's restart_lsn (PG 15+), else the
/// server's current position; always a segment start.
async fn initial_start(
    conn: &mut ReplConnection,
    opts: &ReceiverOptions,
    ident_tli: TimelineId,
    xlogpos: Lsn,
    seg_size: u64,
) -> Result<(Lsn, TimelineId), ReceiverError> {
    if let (Some(slot), true) = (&opts.slot, conn.server_version_num() >= 150000) {
        match conn.read_replication_slot(slot).await? {
            Some(info) => {
                if let Some(lsn) = info.restart_lsn.filter(|l| l.is_valid()) {
                    let tli = info.restart_tli.unwrap_or(ident_tli);
                    return Ok((lsn.segment_start(seg_size), tli));
                }
            }
            // pg_receivewal's GetSlotInformation wording.
            None => {
                return Err(ReceiverError::Stream(format!(
                    "replication slot \"{slot}\" does not exist"
                )))
            }
        }
    }
    Ok((xlogpos.segment_start(seg_size), ident_tli))
}

async fn stream_once(
    store: &Store,
    opts: &ReceiverOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<ReceiverExit, ReceiverError> {
    let mut conn = ReplConnection::connect(&opts.conninfo).await?;
    conn.set_reply_timeout(Some(opts.receive_timeout));
    metrics::counter!(m::UPSTREAM_CONNECTS).increment(1);
    let ident = conn.identify_system().await?;
    let seg_size = conn.wal_segment_size().await?;
    let version = conn
        .parameter("server_version")
        .unwrap_or_default()
        .to_string();
    let resume = store.open(ident.systemid, seg_size, &version).await?;
    {
        let (host, port) = conn.host_port();
        tracing::info!(
            "connected to upstream {host}:{port} (PostgreSQL {version}, system identifier {}, timeline {})",
            ident.systemid,
            ident.timeline
        );
    }
    if let Some(info) = &opts.info {
        let (host, port) = conn.host_port();
        let before = info.borrow().server.clone();
        if !before.is_empty() && before != format!("{host}:{port}") {
            tracing::warn!("upstream server changed from {before} to {host}:{port}");
        }
        info.send_replace(UpstreamInfo {
            connected: true,
            server_version: version.clone(),
            parameters: conn.parameters(),
            system_id: ident.systemid,
            timeline: ident.timeline,
            wal_segment_size: seg_size,
            server: format!("{host}:{port}"),
        });
    }

    if let (Some(slot), true) = (&opts.slot, opts.create_slot_if_missing) {
        match conn.create_physical_slot(slot, true).await {
            Ok(()) => tracing::info!("created replication slot \"{slot}\""),
            Err(UpstreamError::Server(e)) if e.code == "42710" => {}
            Err(e) => return Err(e.into()),
        }
    }

    // With WAL already here: the server's timeline must not be older, its history must agree
    // with walrelay's, and WAL past a fork in that history is set aside (diverged).
    let (mut start, mut tli, mut switched_from) = match resume {
        Some((start, tli)) => {
            let r =
                timeline::reconcile(&mut conn, store, ident.timeline, start, tli, seg_size).await?;
            (r.start, r.tli, r.from)
        }
        None => {
            let (start, tli) =
                initial_start(&mut conn, opts, ident.timeline, ident.xlogpos, seg_size).await?;
            (start, tli, None)
        }
    };
    start = start.segment_start(seg_size);

    loop {
        if tli > 1 {
            timeline::ensure_history(&mut conn, store, tli, switched_from.take()).await?;
        }
        store.begin(tli, start).await?;
        tracing::info!("starting log streaming at {start} (timeline {tli})");
        metrics::gauge!(m::TIMELINE).set(tli as f64);
        conn.start_replication(opts.slot.as_deref(), start, tli)
            .await?;
        m_streaming(true);
        let outcome = copy_loop(&mut conn, store, opts, shutdown.clone()).await?;
        match outcome {
            CopyOutcome::EndOfTimeline(received_end) => {
                let written = wait_durable(store, received_end.max(start)).await?;
                match conn.finish_timeline().await? {
                    Some((next_tli, next_start)) => {
                        if next_tli <= tli {
                            return Err(ReceiverError::Stream(format!("server reported unexpected next timeline {next_tli}, following timeline {tli}")));
                        }
                        if next_start > written {
                            return Err(ReceiverError::Stream(format!(
                                "server stopped streaming timeline {tli} at {written}, but reported next timeline {next_tli} to begin at {next_start}"
                            )));
                        }
                        tracing::info!("switched to timeline {next_tli} at {next_start}");
                        if let Some(info) = &opts.info {
                            info.send_modify(|i| i.timeline = i.timeline.max(next_tli));
                        }
                        switched_from = Some((tli, next_start));
                        tli = next_tli;
                        start = next_start.segment_start(seg_size);
                    }
                    None => {
                        store.close().await?;
                        return Ok(ReceiverExit::StreamEnded);
                    }
                }
            }
            CopyOutcome::ServerShutdown => {
                tracing::info!("the server ended streaming (shutdown)");
                store.close().await?;
                return Ok(ReceiverExit::StreamEnded);
            }
            CopyOutcome::EndPos(lsn) => {
                store.close().await?;
                conn.close().await;
                return Ok(ReceiverExit::EndPos(lsn));
            }
            CopyOutcome::Shutdown => {
                store.close().await?;
                conn.close().await;
                return Ok(ReceiverExit::Shutdown);
            }
        }
    }
}

/// Flushes and waits until everything received, up to `received_end`, is written and
/// durable; returns the durable position. (Writes are queued: positions read before the
/// store thread processed them would be stale, hence the explicit end.)
async fn wait_durable(store: &Store, received_end: Lsn) -> Result<Lsn, ReceiverError> {
    store.flush().await?;
    let mut rx = store.positions();
    loop {
        {
            let p = rx.borrow_and_update();
            if let Some(e) = &p.error {
                return Err(ReceiverError::Stream(e.clone()));
            }
            if p.write_lsn >= received_end && p.flush_lsn >= p.write_lsn {
                return Ok(p.flush_lsn);
            }
        }
        rx.changed().await.map_err(|_| StoreError::Stopped)?;
    }
}

struct Reporter {
    last_flush: Lsn,
    last_write: Lsn,
    cap: Option<watch::Receiver<Lsn>>,
}

impl Reporter {
    /// Sends write/flush as the store published them. `flush` is only ever fsynced WAL; it is
    /// kept monotonic within a connection (a position reported earlier stays durable).
    async fn send(
        &mut self,
        conn: &mut ReplConnection,
        p: &Positions,
        reply: bool,
    ) -> Result<(), UpstreamError> {
        let durable = match &self.cap {
            Some(cap) => p.flush_lsn.min(*cap.borrow()),
            None => p.flush_lsn,
        };
        self.last_flush = self.last_flush.max(durable);
        self.last_write = self.last_write.max(p.write_lsn).max(p.flush_lsn);
        conn.send_status(self.last_write, self.last_flush, Lsn::INVALID, reply)
            .await
    }
}

async fn copy_loop(
    conn: &mut ReplConnection,
    store: &Store,
    opts: &ReceiverOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<CopyOutcome, ReceiverError> {
    let mut positions = store.positions();
    let mut reporter = Reporter {
        last_flush: Lsn::INVALID,
        last_write: Lsn::INVALID,
        cap: opts.flush_cap.clone(),
    };
    let mut cap = opts.flush_cap.clone();
    let mut feedback = opts.hs_feedback.clone();
    if let Some(f) = feedback.as_mut() {
        // One message on connect, zeros included, so that the slot holds no stale xmin.
        let fb = *f.borrow_and_update();
        conn.send_hs_feedback(
            fb.xmin,
            fb.xmin_epoch,
            fb.catalog_xmin,
            fb.catalog_xmin_epoch,
        )
        .await?;
    }
    // A zero interval (pg_receivewal -s 0) sends no periodic status packets.
    let periodic = !opts.status_interval.is_zero();
    let mut status = tokio::time::interval(opts.status_interval.max(Duration::from_millis(100)));
    status.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut endpos_reached: Option<Lsn> = None;
    let mut received_end = store.positions().borrow().write_lsn;
    let mut liveness = Liveness::new(opts.receive_timeout);
    loop {
        let liveness_deadline = liveness.deadline();
        tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => {
                let flushed = wait_durable(store, received_end).await?;
                let p = positions.borrow().clone();
                reporter.send(conn, &p, false).await?;
                tracing::info!("received interrupt signal, stopped at {flushed}");
                return Ok(CopyOutcome::Shutdown);
            }
            changed = positions.changed() => {
                changed.map_err(|_| StoreError::Stopped)?;
                let p = positions.borrow_and_update().clone();
                if let Some(e) = &p.error {
                    return Err(ReceiverError::Stream(format!("stopped streaming: {e}")));
                }
                metrics::gauge!(m::WRITE_LSN).set(p.write_lsn.0 as f64);
                metrics::gauge!(m::FLUSH_LSN).set(p.flush_lsn.0 as f64);
                if p.flush_lsn > reporter.last_flush {
                    reporter.send(conn, &p, false).await?;
                }
                if let Some(end) = endpos_reached {
                    if p.write_lsn >= end && p.flush_lsn >= p.write_lsn {
                        return Ok(CopyOutcome::EndPos(end));
                    }
                }
            }
            Some(()) = async { match cap.as_mut() { Some(c) => c.changed().await.ok(), None => std::future::pending().await } } => {
                let p = positions.borrow().clone();
                reporter.send(conn, &p, false).await?;
            }
            Some(fb) = async { match feedback.as_mut() { Some(f) => f.changed().await.ok().map(|_| *f.borrow_and_update()), None => std::future::pending().await } } => {
                conn.send_hs_feedback(fb.xmin, fb.xmin_epoch, fb.catalog_xmin, fb.catalog_xmin_epoch).await?;
            }
            ev = conn.recv_copy(), if endpos_reached.is_none() => {
                let ev = ev?;
                liveness.received();
                match ev {
                    CopyEvent::XLogData { data_start, wal_end, data, .. } => {
                        let end = data_start.checked_add(data.len() as u64).ok_or_else(|| {
                            ReceiverError::Stream(format!("XLogData at {data_start} overflows the WAL address space"))
                        })?;
                        received_end = received_end.max(end);
                        metrics::counter!(m::RECEIVED_BYTES).increment(data.len() as u64);
                        metrics::gauge!(m::UPSTREAM_WAL_END).set(wal_end.0 as f64);
                        crate::ops::note_upstream(wal_end, received_end);
                        metrics::gauge!(m::UPSTREAM_LAG).set(wal_end.0.saturating_sub(reporter.last_flush.0) as f64);
                        write(store, data_start, data).await?;
                        // Caught up with what the primary has flushed (its walEnd): nothing more
                        // is on its way, and a primary waiting for a synchronous commit waits for
                        // exactly this, so fsync now, as PostgreSQL's walreceiver does when it
                        // has drained its socket. While catching up on a backlog the store's
                        // group commit batches fsyncs instead; --synchronous fsyncs every message.
                        if opts.synchronous || end >= wal_end {
                            store.flush().await?;
                        }
                        if let Some(stop) = opts.endpos {
                            if end >= stop {
                                tracing::info!("stopped log streaming at {end} (timeline {})", store.positions().borrow().timeline);
                                store.flush().await?;
                                endpos_reached = Some(end);
                            }
                        }
                    }
                    CopyEvent::Keepalive { wal_end, reply_requested, .. } => {
                        metrics::gauge!(m::UPSTREAM_WAL_END).set(wal_end.0 as f64);
                        crate::ops::note_upstream(wal_end, received_end);
                        if reply_requested {
                            let p = positions.borrow().clone();
                            reporter.send(conn, &p, false).await?;
                        }
                    }
                    CopyEvent::EndOfTimeline => return Ok(CopyOutcome::EndOfTimeline(received_end)),
                    CopyEvent::ServerShutdown => return Ok(CopyOutcome::ServerShutdown),
                }
            }
            _ = status.tick(), if periodic => {
                let p = positions.borrow().clone();
                reporter.send(conn, &p, false).await?;
            }
            _ = sleep_until_opt(liveness_deadline) => {
                match liveness.check(Instant::now()) {
                    LivenessAction::None => {}
                    LivenessAction::Ping => {
                        tracing::debug!("nothing received for half the receive timeout; requesting a reply");
                        let p = positions.borrow().clone();
                        reporter.send(conn, &p, true).await?;
                    }
                    LivenessAction::Terminate => {
                        return Err(UpstreamError::Timeout(
                            "terminating walreceiver due to timeout".into(),
                        )
                        .into());
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Half of `d` (a `Duration` divided by a non-zero constant cannot fail).
fn half(d: Duration) -> Duration {
    d.checked_div(2).unwrap_or(d)
}

/// The receive timeout, as PostgreSQL's walreceiver keeps it (`WalReceiverMain`): the time
/// of the last message received; at half the timeout one status asking for a reply
/// (`ping_sent`), at the full timeout the connection is given up.
struct Liveness {
    timeout: Duration,
    last_recv: Instant,
    ping_sent: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum LivenessAction {
    None,
    Ping,
    Terminate,
}

impl Liveness {
    fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout,
            last_recv: Instant::now(),
            ping_sent: false,
        }
    }

    fn received(&mut self) {
        self.last_recv = Instant::now();
        self.ping_sent = false;
    }

    /// When to look again: the ping time until the ping went out, then the timeout.
    fn deadline(&self) -> Option<Instant> {
        if self.timeout.is_zero() {
            return None;
        }
        let wait = if self.ping_sent {
            self.timeout
        } else {
            half(self.timeout)
        };
        self.last_recv.checked_add(wait)
    }

    fn check(&mut self, now: Instant) -> LivenessAction {
        if self.timeout.is_zero() {
            return LivenessAction::None;
        }
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= self.timeout {
            LivenessAction::Terminate
        } else if !self.ping_sent && silent >= half(self.timeout) {
            self.ping_sent = true;
            LivenessAction::Ping
        } else {
            LivenessAction::None
        }
    }
}

async fn write(store: &Store, start: Lsn, data: Bytes) -> Result<(), ReceiverError> {
    if data.is_empty() {
        return Ok(());
    }
    store.write(start, data).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_pings_at_half_and_terminates_at_the_timeout() {
        let mut l = Liveness::new(Duration::from_secs(60));
        let t0 = l.last_recv;
        assert_eq!(l.deadline(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(l.check(t0 + Duration::from_secs(29)), LivenessAction::None);
        assert_eq!(l.check(t0 + Duration::from_secs(30)), LivenessAction::Ping);
        // One ping per silence, then the full timeout.
        assert_eq!(l.check(t0 + Duration::from_secs(31)), LivenessAction::None);
        assert_eq!(l.deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(
            l.check(t0 + Duration::from_secs(60)),
            LivenessAction::Terminate
        );
        // Anything received starts over.
        l.received();
        assert!(!l.ping_sent);
        assert!(l
            .deadline()
            .is_some_and(|d| d > t0 + Duration::from_secs(30)));
        // Zero: off.
        let mut off = Liveness::new(Duration::ZERO);
        assert_eq!(off.deadline(), None);
        assert_eq!(
            off.check(t0 + Duration::from_secs(3600)),
            LivenessAction::None
        );
    }
}

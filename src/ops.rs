//! What an operator needs that no single task owns: the last errors, when the upstream last
//! spoke, what was archived last, one log line per completed/archived segment — per cluster.
//!
//! Owns: the per-cluster operational state ([`ClusterOps`]): a bounded ring of the last
//! errors ([`record_error`], fed by the upstream, archive and store error paths), the time
//! and WAL end of the last upstream message ([`note_upstream`]), the last archived segment
//! and its time ([`note_archived`]) and the rate-limited segment log lines
//! ([`segment_completed`], [`segment_archived`]); and the *cluster scope* that tells a
//! task or thread which cluster it works for ([`scope`], [`inherit`], [`set_thread_cluster`],
//! read by [`current`] and by the metrics recorder for the `cluster` label). The free
//! functions act on the current cluster (the `default` one outside any scope), so call
//! sites in the store, archive and upstream need no cluster argument. Hot paths touch only
//! their own cluster's atomics and short mutexes; the registry lock is taken at start-up and
//! by the status endpoints. Must not: decide anything — it only remembers and reports.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::lsn::Lsn;

/// How many errors the ring keeps (per cluster).
pub const ERROR_RING: usize = 32;

/// One remembered error.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorEvent {
    /// RFC 3339 UTC.
    pub time: String,
    /// Seconds since the Unix epoch.
    pub unix_time: f64,
    /// `upstream`, `archive` or `store`.
    pub source: &'static str,
    pub message: String,
}

/// The operational state of one cluster.
pub struct ClusterOps {
    name: Arc<str>,
    errors: Mutex<VecDeque<ErrorEvent>>,
    /// Milliseconds since the epoch of the last message from the upstream (0 = none yet).
    last_message_ms: AtomicU64,
    /// The primary's WAL end of the last message.
    upstream_wal_end: AtomicU64,
    /// Milliseconds since the epoch when the received WAL last reached the primary's WAL end.
    caught_up_ms: AtomicU64,
    archive: Mutex<ArchiveEvents>,
    /// The last listing of the archive (segments of this system, oldest, newest), as JSON.
    listing: Mutex<Option<serde_json::Value>>,
    completed: Mutex<SegLog>,
    archived: Mutex<SegLog>,
    /// With several clusters: the `cluster{name=…}` span its tasks' log lines carry.
    span: std::sync::OnceLock<tracing::Span>,
}

/// Every cluster's state, in registration order (the default one first).
static REGISTRY: Mutex<Vec<Arc<ClusterOps>>> = Mutex::new(Vec::new());
static DEFAULT: LazyLock<Arc<ClusterOps>> =
    LazyLock::new(|| cluster(crate::config::DEFAULT_CLUSTER));

tokio::task_local! {
    static TASK_CLUSTER: Arc<ClusterOps>;
}
thread_local! {
    static THREAD_CLUSTER: RefCell<Option<Arc<ClusterOps>>> = const { RefCell::new(None) };
}

/// The state of cluster `name` (created and registered on first use).
pub fn cluster(name: &str) -> Arc<ClusterOps> {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = reg.iter().find(|c| &*c.name == name) {
        return c.clone();
    }
    let c = Arc::new(ClusterOps {
        name: name.into(),
        errors: Mutex::new(VecDeque::new()),
        last_message_ms: AtomicU64::new(0),
        upstream_wal_end: AtomicU64::new(0),
        caught_up_ms: AtomicU64::new(0),
        archive: Mutex::new(ArchiveEvents::default()),
        listing: Mutex::new(None),
        completed: Mutex::new(SegLog::new("completed")),
        archived: Mutex::new(SegLog::new("archived")),
        span: std::sync::OnceLock::new(),
    });
    reg.push(c.clone());
    c
}

/// Every registered cluster.
pub fn clusters() -> Vec<Arc<ClusterOps>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The cluster the running task (or thread) works for; the `default` cluster outside any
/// scope.
pub fn current() -> Arc<ClusterOps> {
    if let Ok(c) = TASK_CLUSTER.try_with(|c| c.clone()) {
        return c;
    }
    THREAD_CLUSTER
        .with(|t| t.borrow().clone())
        .unwrap_or_else(|| DEFAULT.clone())
}

/// The name of the current cluster (the `cluster` label of metrics).
pub fn current_name() -> Arc<str> {
    if let Ok(n) = TASK_CLUSTER.try_with(|c| c.name.clone()) {
        return n;
    }
    THREAD_CLUSTER
        .with(|t| t.borrow().as_ref().map(|c| c.name.clone()))
        .unwrap_or_else(|| DEFAULT.name.clone())
}

/// Runs `f` as work of cluster `c` (in its log span, if it has one).
pub fn scope<F: Future>(c: Arc<ClusterOps>, f: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let span = c.span.get().cloned().unwrap_or_else(tracing::Span::none);
    TASK_CLUSTER.scope(c, f.instrument(span))
}

/// `f` in the cluster scope (and log span) of the caller: for
/// `tokio::spawn(ops::inherit(fut))` (a spawned task inherits neither by itself).
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    TASK_CLUSTER.scope(current(), f.instrument(tracing::Span::current()))
}

/// Marks the calling thread (e.g. a store thread) as working for `c`.
pub fn set_thread_cluster(c: Arc<ClusterOps>) {
    THREAD_CLUSTER.with(|t| *t.borrow_mut() = Some(c));
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// RFC 3339 (UTC, milliseconds) of a Unix time.
pub fn rfc3339(unix: f64) -> String {
    let ms = (unix * 1000.0) as i64;
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClusterOps {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Log lines of this cluster's tasks carry `cluster{name=…}` from now on (several
    /// clusters in one process).
    pub fn name_in_logs(&self) {
        let _ = self
            .span
            .set(tracing::info_span!("cluster", name = %self.name));
    }

    /// Remembers an error (the oldest is forgotten past [`ERROR_RING`]).
    pub fn record_error(&self, source: &'static str, message: impl Into<String>) {
        let unix = now_unix();
        let ev = ErrorEvent {
            time: rfc3339(unix),
            unix_time: unix,
            source,
            message: message.into(),
        };
        let mut ring = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= ERROR_RING {
            ring.pop_front();
        }
        ring.push_back(ev);
    }

    /// The remembered errors, newest first.
    pub fn last_errors(&self) -> Vec<ErrorEvent> {
        let ring = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }

    /// The newest error of `source`.
    pub fn last_error_of(&self, source: &str) -> Option<ErrorEvent> {
        let ring = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().find(|e| e.source == source).cloned()
    }

    /// Called for every message from the upstream: its WAL end and the end of WAL received.
    pub fn note_upstream(&self, wal_end: Lsn, received_end: Lsn) {
        let now = now_ms();
        self.last_message_ms.store(now, Ordering::Relaxed);
        self.upstream_wal_end
            .fetch_max(wal_end.0, Ordering::Relaxed);
        if received_end >= wal_end {
            self.caught_up_ms.store(now, Ordering::Relaxed);
        }
    }

    pub fn liveness(&self) -> Liveness {
        let ms = |v: u64| (v != 0).then_some(v as f64 / 1000.0);
        let end = self.upstream_wal_end.load(Ordering::Relaxed);
        Liveness {
            last_message: ms(self.last_message_ms.load(Ordering::Relaxed)),
            wal_end: (end != 0).then_some(Lsn(end)),
            caught_up: ms(self.caught_up_ms.load(Ordering::Relaxed)),
        }
    }

    /// Called by the archiver when segment `name` is in the archive.
    pub fn note_archived(&self, name: &str) {
        {
            let mut a = self.archive.lock().unwrap_or_else(|e| e.into_inner());
            if a.first_segment.as_deref().is_none_or(|f| name < f) {
                a.first_segment = Some(name.to_string());
            }
            if a.last_segment.as_deref().is_none_or(|l| name >= l) {
                a.last_segment = Some(name.to_string());
            }
            a.last_time = Some(now_unix());
        }
        self.seg_event(&self.archived, name);
    }

    pub fn set_archive_listing(&self, v: serde_json::Value) {
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }

    pub fn archive_listing(&self) -> Option<serde_json::Value> {
        self.listing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn archive_events(&self) -> ArchiveEvents {
        self.archive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn seg_event(&self, l: &Mutex<SegLog>, name: &str) {
        let line = l
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .event(name, Instant::now());
        self.log(line);
    }

    fn log(&self, line: Option<String>) {
        if let Some(l) = line {
            // named when the line is not already in the cluster's span (the sampler task)
            if self.span.get().is_some() && tracing::Span::current().is_none() {
                tracing::info!("cluster {}: {l}", self.name);
            } else {
                tracing::info!("{l}");
            }
        }
    }

    fn flush_segment_logs(&self) {
        let now = Instant::now();
        for l in [&self.completed, &self.archived] {
            let line = {
                let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                if l.last_line
                    .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
                {
                    l.flush(now)
                } else {
                    None
                }
            };
            self.log(line);
        }
    }
}

/// Remembers an error of the current cluster.
pub fn record_error(source: &'static str, message: impl Into<String>) {
    current().record_error(source, message);
}

/// The current cluster's remembered errors, newest first.
pub fn last_errors() -> Vec<ErrorEvent> {
    current().last_errors()
}

/// The current cluster's newest error of `source`.
pub fn last_error_of(source: &str) -> Option<ErrorEvent> {
    current().last_error_of(source)
}

/// An error's text for a log line: PostgreSQL's `ERROR:  ` severity prefix is dropped
/// (the log line has its own level), the rest (DETAIL, HINT) kept.
pub fn plain(message: &str) -> &str {
    for sev in ["ERROR:  ", "FATAL:  ", "PANIC:  "] {
        if let Some(rest) = message.strip_prefix(sev) {
            return rest;
        }
    }
    message
}

/// Logs an upstream failure once (no doubled `ERROR ERROR:`) and remembers it.
pub fn upstream_error(message: &str) {
    tracing::error!("{}", plain(message));
    record_error("upstream", message);
}

// --- upstream liveness ---------------------------------------------------------------

/// Called for every message from the upstream (of the current cluster).
pub fn note_upstream(wal_end: Lsn, received_end: Lsn) {
    current().note_upstream(wal_end, received_end);
}

/// What is known of the upstream's liveness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Liveness {
    /// Unix time of the last message.
    pub last_message: Option<f64>,
    /// The primary's WAL end as last reported.
    pub wal_end: Option<Lsn>,
    /// Unix time when walrelay last had all WAL the primary reported.
    pub caught_up: Option<f64>,
}

/// The current cluster's upstream liveness.
pub fn liveness() -> Liveness {
    current().liveness()
}

impl Liveness {
    /// Bytes between the primary's reported WAL end and `flush` (None before any message).
    pub fn lag_bytes(&self, flush: Lsn) -> Option<u64> {
        self.wal_end.map(|e| e.0.saturating_sub(flush.0))
    }
    /// Seconds walrelay has been behind the primary: 0 when it has all WAL the primary
    /// reported, else the time since it last had (like a standby's replay lag, it does not
    /// grow on an idle primary).
    pub fn lag_seconds(&self, flush: Lsn, now: f64) -> Option<f64> {
        let behind = self.lag_bytes(flush)? > 0;
        Some(match (behind, self.caught_up.or(self.last_message)) {
            (false, _) => 0.0,
            (true, Some(t)) => (now - t).max(0.0),
            (true, None) => 0.0,
        })
    }
}

// --- archive ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchiveEvents {
    /// Newest segment file name archived by this process.
    pub last_segment: Option<String>,
    /// Unix time of that upload.
    pub last_time: Option<f64>,
    /// Oldest segment file name archived by this process.
    pub first_segment: Option<String>,
}

/// Called by the archiver when segment `name` is in the archive (current cluster).
pub fn note_archived(name: &str) {
    current().note_archived(name);
}

pub fn set_archive_listing(v: serde_json::Value) {
    current().set_archive_listing(v);
}

pub fn archive_listing() -> Option<serde_json::Value> {
    current().archive_listing()
}

pub fn archive_events() -> ArchiveEvents {
    current().archive_events()
}

// --- segment log lines -----------------------------------------------------------------

/// At most one line per kind and this interval; the rest are aggregated.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

struct SegLog {
    what: &'static str,
    last_line: Option<Instant>,
    pending: u64,
    newest: String,
}

impl SegLog {
    const fn new(what: &'static str) -> SegLog {
        SegLog {
            what,
            last_line: None,
            pending: 0,
            newest: String::new(),
        }
    }
    /// Counts a segment; returns the line to log now, if any.
    fn event(&mut self, name: &str, now: Instant) -> Option<String> {
        self.pending += 1;
        if name >= self.newest.as_str() {
            self.newest = name.to_string();
        }
        if self
            .last_line
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
        {
            self.flush(now)
        } else {
            None
        }
    }
    /// The aggregated line for what is pending.
    fn flush(&mut self, now: Instant) -> Option<String> {
        let line = match self.pending {
            0 => return None,
            1 => format!("{} segment {}", self.what, self.newest),
            n => format!("{} {n} segments up to {}", self.what, self.newest),
        };
        self.pending = 0;
        self.last_line = Some(now);
        Some(line)
    }
}

/// One INFO line per completed segment (aggregated when many per second).
pub fn segment_completed(name: &str) {
    let c = current();
    c.seg_event(&c.completed, name);
}

/// Writes the aggregated lines still pending, of every cluster (called every second).
pub fn flush_segment_logs() {
    for c in clusters() {
        c.flush_segment_logs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_drops_the_severity() {
        assert_eq!(
            plain("ERROR:  replication slot \"x\" does not exist"),
            "replication slot \"x\" does not exist"
        );
        assert_eq!(plain("could not connect"), "could not connect");
    }

    #[test]
    fn ring_is_bounded_newest_first() {
        for i in 0..(ERROR_RING + 5) {
            record_error("store", format!("e{i}"));
        }
        let all = last_errors();
        assert!(all.len() <= ERROR_RING);
        let newest_store = last_error_of("store").unwrap();
        assert_eq!(newest_store.message, format!("e{}", ERROR_RING + 4));
        assert!(newest_store.time.ends_with('Z'));
    }

    #[tokio::test]
    async fn clusters_are_separate() {
        let a = cluster("ops-test-a");
        let b = cluster("ops-test-b");
        scope(a.clone(), async {
            record_error("archive", "a failed");
            note_upstream(Lsn(100), Lsn(50));
            assert_eq!(&*current_name(), "ops-test-a");
            tokio::spawn(inherit(async { record_error("store", "a store") }))
                .await
                .unwrap();
        })
        .await;
        assert_eq!(a.last_error_of("archive").unwrap().message, "a failed");
        assert_eq!(a.last_error_of("store").unwrap().message, "a store");
        assert!(b.last_errors().is_empty());
        assert_eq!(b.liveness().wal_end, None);
        assert_eq!(a.liveness().wal_end, Some(Lsn(100)));
        assert_eq!(&*current_name(), "default");
    }

    #[test]
    fn segment_lines_aggregate_within_a_second() {
        let mut l = SegLog::new("archived");
        let t0 = Instant::now();
        assert_eq!(
            l.event("000000010000000000000001", t0).as_deref(),
            Some("archived segment 000000010000000000000001")
        );
        assert_eq!(l.event("000000010000000000000002", t0), None);
        assert_eq!(
            l.event("000000010000000000000003", t0 + Duration::from_millis(10)),
            None
        );
        assert_eq!(
            l.flush(t0 + LOG_INTERVAL).as_deref(),
            Some("archived 2 segments up to 000000010000000000000003")
        );
        assert_eq!(l.flush(t0 + LOG_INTERVAL * 3), None);
        assert_eq!(
            l.event("000000010000000000000004", t0 + LOG_INTERVAL * 3)
                .as_deref(),
            Some("archived segment 000000010000000000000004")
        );
    }

    #[test]
    fn lag_seconds_is_zero_when_caught_up() {
        let l = Liveness {
            last_message: Some(100.0),
            wal_end: Some(Lsn(1000)),
            caught_up: Some(90.0),
        };
        assert_eq!(l.lag_bytes(Lsn(1000)), Some(0));
        assert_eq!(l.lag_seconds(Lsn(1000), 500.0), Some(0.0));
        assert_eq!(l.lag_bytes(Lsn(400)), Some(600));
        assert_eq!(l.lag_seconds(Lsn(400), 100.0), Some(10.0));
        let none = Liveness {
            last_message: None,
            wal_end: None,
            caught_up: None,
        };
        assert_eq!(none.lag_bytes(Lsn(5)), None);
    }
}

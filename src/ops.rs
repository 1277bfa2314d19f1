//! What an operator needs that no single task owns: the last errors, when the upstream last
//! spoke, what was archived last, one log line per completed/archived segment.
//!
//! Owns: a bounded ring of the last errors ([`record_error`], fed by the upstream, archive
//! and store error paths), the time and WAL end of the last upstream message
//! ([`note_upstream`]), the last archived segment and its time ([`note_archived`]) and the
//! rate-limited segment log lines ([`segment_completed`], [`segment_archived`]). The state is
//! process-global (one walrelay per process) and cheap to update from hot paths (atomics,
//! short mutexes). Must not: decide anything — it only remembers and reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::lsn::Lsn;

/// How many errors the ring keeps.
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

static ERRORS: Mutex<VecDeque<ErrorEvent>> = Mutex::new(VecDeque::new());

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

/// Remembers an error (the oldest is forgotten past [`ERROR_RING`]).
pub fn record_error(source: &'static str, message: impl Into<String>) {
    let unix = now_unix();
    let ev = ErrorEvent {
        time: rfc3339(unix),
        unix_time: unix,
        source,
        message: message.into(),
    };
    let mut ring = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    if ring.len() >= ERROR_RING {
        ring.pop_front();
    }
    ring.push_back(ev);
}

/// The remembered errors, newest first.
pub fn last_errors() -> Vec<ErrorEvent> {
    let ring = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    ring.iter().rev().cloned().collect()
}

/// The newest error of `source`.
pub fn last_error_of(source: &str) -> Option<ErrorEvent> {
    let ring = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    ring.iter().rev().find(|e| e.source == source).cloned()
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

/// Milliseconds since the epoch of the last message from the upstream (0 = none yet).
static LAST_MESSAGE_MS: AtomicU64 = AtomicU64::new(0);
/// The primary's WAL end of the last message.
static UPSTREAM_WAL_END: AtomicU64 = AtomicU64::new(0);
/// Milliseconds since the epoch when the received WAL last reached the primary's WAL end.
static CAUGHT_UP_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Called for every message from the upstream: its WAL end and the end of WAL received.
pub fn note_upstream(wal_end: Lsn, received_end: Lsn) {
    let now = now_ms();
    LAST_MESSAGE_MS.store(now, Ordering::Relaxed);
    UPSTREAM_WAL_END.fetch_max(wal_end.0, Ordering::Relaxed);
    if received_end >= wal_end {
        CAUGHT_UP_MS.store(now, Ordering::Relaxed);
    }
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

pub fn liveness() -> Liveness {
    let ms = |v: u64| (v != 0).then_some(v as f64 / 1000.0);
    let end = UPSTREAM_WAL_END.load(Ordering::Relaxed);
    Liveness {
        last_message: ms(LAST_MESSAGE_MS.load(Ordering::Relaxed)),
        wal_end: (end != 0).then_some(Lsn(end)),
        caught_up: ms(CAUGHT_UP_MS.load(Ordering::Relaxed)),
    }
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

static ARCHIVE: Mutex<ArchiveEvents> = Mutex::new(ArchiveEvents {
    last_segment: None,
    last_time: None,
    first_segment: None,
});

/// Called by the archiver when segment `name` is in the archive.
pub fn note_archived(name: &str) {
    {
        let mut a = ARCHIVE.lock().unwrap_or_else(|e| e.into_inner());
        if a.first_segment.as_deref().is_none_or(|f| name < f) {
            a.first_segment = Some(name.to_string());
        }
        if a.last_segment.as_deref().is_none_or(|l| name >= l) {
            a.last_segment = Some(name.to_string());
        }
        a.last_time = Some(now_unix());
    }
    segment_archived(name);
}

/// The last listing of the archive (segments of this system, oldest, newest), as JSON.
static ARCHIVE_LISTING: Mutex<Option<serde_json::Value>> = Mutex::new(None);

pub fn set_archive_listing(v: serde_json::Value) {
    *ARCHIVE_LISTING.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
}

pub fn archive_listing() -> Option<serde_json::Value> {
    ARCHIVE_LISTING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

pub fn archive_events() -> ArchiveEvents {
    ARCHIVE.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

static COMPLETED: Mutex<SegLog> = Mutex::new(SegLog::new("completed"));
static ARCHIVED: Mutex<SegLog> = Mutex::new(SegLog::new("archived"));

fn log(line: Option<String>) {
    if let Some(l) = line {
        tracing::info!("{l}");
    }
}

/// One INFO line per completed segment (aggregated when many per second).
pub fn segment_completed(name: &str) {
    let line = COMPLETED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .event(name, Instant::now());
    log(line);
}

fn segment_archived(name: &str) {
    let line = ARCHIVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .event(name, Instant::now());
    log(line);
}

/// Writes the aggregated lines still pending (called every second).
pub fn flush_segment_logs() {
    let now = Instant::now();
    for l in [&COMPLETED, &ARCHIVED] {
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
        log(line);
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

//! The downstream view, like `pg_stat_replication`.
//!
//! Owns: one [`WalSenderStatus`] per connected replication session (updated by the session
//! as it sends WAL and reads status updates), the write/flush/replay lag measurement (time
//! between sending a position and the standby reporting it, as PostgreSQL's `LagTracker`
//! does), and the per-standby metrics labelled by `application_name`. The lead serves
//! [`super::ServerHandle::status`] as JSON on the metrics listener. Must not: change
//! replication behaviour.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Serialize, Serializer};

use crate::lsn::{Lsn, TimelineId};

/// Bytes of WAL sent to downstream clients.
pub const SENT_BYTES: &str = "walrelay_walsender_sent_bytes_total";
/// WAL messages served from the shared read cache of segment files (read by another session
/// or earlier, possibly after waiting for that read): a count of lookups, not bytes.
pub const READ_CACHE_HITS: &str = "walrelay_walsender_read_cache_hits_total";
/// Chunks (≤ 1 MB) a session read from a segment file into the shared read cache: a count.
pub const READ_CACHE_MISSES: &str = "walrelay_walsender_read_cache_misses_total";
/// Per standby positions (bytes since 0/0) and lag.
pub const SENT_LSN: &str = "walrelay_walsender_sent_lsn_bytes";
pub const FLUSH_LSN: &str = "walrelay_walsender_flush_lsn_bytes";
pub const REPLAY_LSN: &str = "walrelay_walsender_replay_lsn_bytes";
pub const FLUSH_LAG_BYTES: &str = "walrelay_walsender_flush_lag_bytes";
pub const REPLAY_LAG_SECONDS: &str = "walrelay_walsender_replay_lag_seconds";
/// Replication sessions currently connected.
pub const SESSIONS: &str = "walrelay_walsender_sessions";
/// Connections refused, by reason (`auth`, `too_many`, `protocol`, `tls`).
pub const REFUSED: &str = "walrelay_server_refused_connections_total";
/// Failed `accept()` calls on the walsender listeners (EMFILE …).
pub const ACCEPT_ERRORS: &str = "walrelay_server_accept_errors_total";

pub fn ser_opt_lsn<S: Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

/// One row of the downstream view.
#[derive(Debug, Clone, Serialize)]
pub struct WalSenderStatus {
    pub pid: i32,
    pub usename: String,
    pub application_name: String,
    pub client_addr: String,
    pub client_port: u16,
    /// Seconds since the Unix epoch.
    pub backend_start: u64,
    /// `startup`, `catchup`, `streaming` or `stopping`.
    pub state: String,
    pub timeline: TimelineId,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub sent_lsn: Option<Lsn>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub write_lsn: Option<Lsn>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub flush_lsn: Option<Lsn>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub replay_lsn: Option<Lsn>,
    /// Seconds.
    pub write_lag: Option<f64>,
    pub flush_lag: Option<f64>,
    pub replay_lag: Option<f64>,
    /// Always `async`: walrelay does not release commits on the primary for its standbys.
    pub sync_state: String,
    pub slot_name: Option<String>,
    /// Seconds since the Unix epoch of the last status update.
    pub reply_time: Option<u64>,
}

/// All sessions' rows.
#[derive(Default)]
pub struct StatusRegistry {
    rows: Mutex<BTreeMap<u64, WalSenderStatus>>,
}

impl StatusRegistry {
    pub fn set(&self, session: u64, row: WalSenderStatus) {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, row);
    }
    pub fn update(&self, session: u64, f: impl FnOnce(&mut WalSenderStatus)) {
        if let Some(r) = self
            .rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&session)
        {
            f(r);
        }
    }
    pub fn remove(&self, session: u64) {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session);
    }
    pub fn snapshot(&self) -> Vec<WalSenderStatus> {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Lag measurement: remembers when each sent position went out and, when the standby
/// reports a position, yields how long ago the newest sample at or below it was sent.
pub struct LagTracker {
    samples: VecDeque<(Lsn, Instant)>,
    /// Oldest position not yet reported by each of write / flush / replay.
    last: [Option<f64>; 3],
    reported: [Lsn; 3],
}

const MAX_SAMPLES: usize = 4096;

impl Default for LagTracker {
    fn default() -> Self {
        LagTracker {
            samples: VecDeque::new(),
            last: [None; 3],
            reported: [Lsn(0); 3],
        }
    }
}

impl LagTracker {
    /// WAL up to `end` was sent now.
    pub fn sent(&mut self, end: Lsn, now: Instant) {
        if self.samples.back().is_some_and(|(l, _)| *l >= end) {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            // Keep the memory bounded: drop every other old sample (coarser, still honest).
            self.samples.pop_front();
        }
        self.samples.push_back((end, now));
    }

    /// The standby reported write/flush/apply; returns the three lags in seconds.
    pub fn reported(&mut self, pos: [Lsn; 3], now: Instant) -> [Option<f64>; 3] {
        for ((p, reported), last) in pos
            .iter()
            .zip(self.reported.iter_mut())
            .zip(self.last.iter_mut())
        {
            if !p.is_valid() || *p <= *reported {
                continue;
            }
            *reported = *p;
            if let Some((_, t)) = self.samples.iter().rev().find(|(l, _)| *l <= *p) {
                *last = Some(now.duration_since(*t).as_secs_f64());
            }
        }
        // Samples every position has passed are no longer needed.
        let min = self
            .reported
            .iter()
            .copied()
            .filter(|l| l.is_valid())
            .min()
            .unwrap_or(Lsn(0));
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|(l, _)| *l <= min) {
            self.samples.pop_front();
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lag_is_time_since_send() {
        let t0 = Instant::now();
        let mut lt = LagTracker::default();
        lt.sent(Lsn(100), t0);
        lt.sent(Lsn(200), t0 + Duration::from_secs(1));
        let l = lt.reported([Lsn(150), Lsn(100), Lsn(0)], t0 + Duration::from_secs(3));
        assert_eq!(l[0], Some(3.0));
        assert_eq!(l[1], Some(3.0));
        assert_eq!(l[2], None);
        let l = lt.reported([Lsn(200), Lsn(200), Lsn(0)], t0 + Duration::from_secs(4));
        assert_eq!(l[0], Some(3.0));
        assert!(lt.samples.len() <= 2);
    }
}

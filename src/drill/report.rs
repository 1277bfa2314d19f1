//! The drill's report: what was restored, each phase's time, the replay rate, the check
//! query's answer, and — on failure — the phase that failed and why. Rendered as text,
//! JSON, or one Nagios line (with performance data).
//!
//! Owns: the report type and its renderings; the exit status of each output style.
//! Must not: run anything.

use serde::Serialize;

/// Nagios exit statuses.
pub const NAGIOS_OK: i32 = 0;
pub const NAGIOS_CRITICAL: i32 = 2;
pub const NAGIOS_UNKNOWN: i32 = 3;

/// One timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
}

/// How the drill went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// The drill could not run (no binaries, bad options, no archive): UNKNOWN.
    Setup,
    /// The backup or its WAL is broken, or the restored server did not come up: CRITICAL.
    Critical,
}

/// The drill's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub backup_id: Option<String>,
    pub backup_start_lsn: Option<String>,
    pub backup_stop_lsn: Option<String>,
    pub server_version: Option<u32>,
    pub target: String,
    pub phases: Vec<Phase>,
    pub total_seconds: f64,
    /// Replayed WAL: from the backup's start LSN to the last replayed LSN.
    pub replay_lsn: Option<String>,
    pub replay_bytes: u64,
    pub replay_seconds: f64,
    pub replay_gb_per_hour: f64,
    pub check_query: String,
    pub check_result: Option<String>,
    /// `pg_stat_wal_receiver.status` with `--standby`.
    pub standby_status: Option<String>,
    pub failed_phase: Option<String>,
    pub failure: Option<Failure>,
    pub error: Option<String>,
    /// The kept working directory (`--keep`).
    pub kept: Option<String>,
}

impl Report {
    pub fn phase(&mut self, name: &'static str, seconds: f64) {
        self.phases.push(Phase { name, seconds });
    }

    pub fn fail(&mut self, phase: &str, kind: Failure, error: String) {
        self.ok = false;
        self.failed_phase = Some(phase.to_string());
        self.failure = Some(kind);
        self.error = Some(error);
    }

    /// Exit status: Nagios-style, or 0/1.
    pub fn exit_code(&self, nagios: bool) -> i32 {
        match (self.ok, self.failure, nagios) {
            (true, _, true) => NAGIOS_OK,
            (false, Some(Failure::Setup), true) => NAGIOS_UNKNOWN,
            (false, _, true) => NAGIOS_CRITICAL,
            (true, _, false) => 0,
            (false, _, false) => 1,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn perfdata(&self) -> String {
        let mut p: Vec<String> = self
            .phases
            .iter()
            .map(|ph| format!("{}={:.3}s", ph.name, ph.seconds))
            .collect();
        p.push(format!("total={:.3}s", self.total_seconds));
        p.push(format!("replay_bytes={}B", self.replay_bytes));
        p.push(format!("replay_gb_per_hour={:.3}", self.replay_gb_per_hour));
        p.join(" ")
    }

    /// One line for Nagios.
    pub fn nagios(&self) -> String {
        let id = self.backup_id.as_deref().unwrap_or("?");
        if self.ok {
            format!(
                "DRILL OK - backup {id} restored and replayed to {} ({} bytes at {:.2} GB/h), check: {} | {}",
                self.replay_lsn.as_deref().unwrap_or("?"),
                self.replay_bytes,
                self.replay_gb_per_hour,
                self.check_result.as_deref().unwrap_or(""),
                self.perfdata()
            )
        } else {
            let level = if self.failure == Some(Failure::Setup) {
                "UNKNOWN"
            } else {
                "CRITICAL"
            };
            format!(
                "DRILL {level} - {} failed (backup {id}): {} | {}",
                self.failed_phase.as_deref().unwrap_or("drill"),
                self.error.as_deref().unwrap_or("").replace('\n', " "),
                self.perfdata()
            )
        }
    }

    /// Human-readable.
    pub fn text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "drill {}: backup {}\n",
            if self.ok { "OK" } else { "FAILED" },
            self.backup_id.as_deref().unwrap_or("?")
        ));
        for p in &self.phases {
            s.push_str(&format!("  {:<8} {:>9.3} s\n", p.name, p.seconds));
        }
        s.push_str(&format!("  {:<8} {:>9.3} s\n", "total", self.total_seconds));
        if self.replay_bytes > 0 || self.ok {
            s.push_str(&format!(
                "  replayed {} bytes of WAL to {} in {:.3} s: {:.2} GB/h\n",
                self.replay_bytes,
                self.replay_lsn.as_deref().unwrap_or("?"),
                self.replay_seconds,
                self.replay_gb_per_hour
            ));
        }
        if let Some(r) = &self.check_result {
            s.push_str(&format!("  check query: {} -> {r}\n", self.check_query));
        }
        if let Some(st) = &self.standby_status {
            s.push_str(&format!("  standby: {st}\n"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(
                "  FAILED in {}: {e}\n",
                self.failed_phase.as_deref().unwrap_or("?")
            ));
        }
        if let Some(k) = &self.kept {
            s.push_str(&format!("  kept: {k}\n"));
        }
        s
    }
}

/// GB/h from bytes and seconds (GB = 10^9 bytes); 0 for a zero time.
pub fn gb_per_hour(bytes: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e9 / (seconds / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_rate() {
        let mut r = Report {
            ok: true,
            ..Default::default()
        };
        assert_eq!(r.exit_code(true), 0);
        assert_eq!(r.exit_code(false), 0);
        r.fail("restore", Failure::Critical, "missing segment".into());
        assert_eq!(r.exit_code(true), 2);
        assert_eq!(r.exit_code(false), 1);
        assert!(r.nagios().starts_with("DRILL CRITICAL - restore failed"));
        r.failure = Some(Failure::Setup);
        assert_eq!(r.exit_code(true), 3);
        assert!((gb_per_hour(1_000_000_000, 3600.0) - 1.0).abs() < 1e-9);
        assert_eq!(gb_per_hour(5, 0.0), 0.0);
    }
}

//! The human views of `/status`: the text of `walrelay status`, the self-contained HTML
//! status page (`/` on the metrics listener) and the in-memory lag history it charts.
//!
//! Owns: [`text`] (CLI output), [`History`] (a bounded ring of lag samples, one every
//! [`SAMPLE_EVERY`], [`HISTORY_LEN`] of them = the last hour) and the page (`status.html`,
//! inline CSS/JS/SVG, no external assets; it reads `/status` and `/history`). Must not:
//! show anything the metrics listener may not (no transactions: the page reads only the
//! read-only documents).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::admin::Target;

/// Time between lag samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
pub const HISTORY_LEN: usize = 360;

/// One lag sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub t: f64,
    pub upstream_lag_bytes: Option<u64>,
    pub archive_lag_bytes: Option<u64>,
    /// The largest lag of a connected standby.
    pub standby_lag_bytes: Option<u64>,
    /// The largest lag of a delayed feed.
    pub feed_lag_bytes: Option<u64>,
}

impl Sample {
    /// The figures of a `/status` document; of several clusters, the largest of each.
    pub fn from_status(t: f64, doc: &serde_json::Value) -> Sample {
        if let Some(all) = doc["clusters"].as_array() {
            let each: Vec<Sample> = all.iter().map(|c| Sample::from_status(t, c)).collect();
            let max = |f: fn(&Sample) -> Option<u64>| each.iter().filter_map(f).max();
            return Sample {
                t,
                upstream_lag_bytes: max(|s| s.upstream_lag_bytes),
                archive_lag_bytes: max(|s| s.archive_lag_bytes),
                standby_lag_bytes: max(|s| s.standby_lag_bytes),
                feed_lag_bytes: max(|s| s.feed_lag_bytes),
            };
        }
        let max_of = |key: &str| {
            doc[key]
                .as_array()
                .and_then(|a| a.iter().filter_map(|r| r["lag_bytes"].as_u64()).max())
        };
        Sample {
            t,
            upstream_lag_bytes: doc["upstream"]["lag_bytes"].as_u64(),
            archive_lag_bytes: doc["archive"]["lag_bytes"].as_u64(),
            standby_lag_bytes: max_of("walsenders"),
            feed_lag_bytes: max_of("feeds"),
        }
    }
}

/// The last hour of samples.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    pub fn push(&self, s: Sample) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= HISTORY_LEN {
            q.pop_front();
        }
        q.push_back(s);
    }
    pub fn samples(&self) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// The page (`GET /` on the metrics listener).
pub const PAGE: &str = include_str!("status.html");

/// `/status` of a running walrelay.
pub async fn fetch(target: &Target) -> Result<serde_json::Value, String> {
    let (code, body) = crate::admin::call(target, "GET", "/status", &[])
        .await
        .map_err(|e| format!("could not reach walrelay: {e}"))?;
    if code != 200 {
        return Err(format!("walrelay answered {code}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("invalid /status answer: {e}"))
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// `walrelay status` without `--json`: of several clusters, one block per cluster under a
/// `cluster NAME` line.
pub fn text(doc: &serde_json::Value) -> String {
    match doc["clusters"].as_array() {
        Some(all) => all
            .iter()
            .map(|c| format!("cluster {}\n{}", s(&c["cluster"]), cluster_text(c)))
            .collect::<Vec<_>>()
            .join("\n"),
        None => cluster_text(doc),
    }
}

fn cluster_text(doc: &serde_json::Value) -> String {
    let mut o = String::new();
    let u = &doc["upstream"];
    o.push_str(&format!(
        "upstream:   {} {} (PostgreSQL {}, system {}, timeline {})\n",
        s(&u["state"]),
        s(&u["server"]),
        s(&u["server_version"]),
        s(&u["system_identifier"]),
        s(&u["timeline"])
    ));
    o.push_str(&format!(
        "            last message {} ({} s ago), WAL end {}, lag {} bytes / {} s\n",
        s(&u["last_message_at"]),
        s(&u["last_message_age_seconds"]),
        s(&u["wal_end"]),
        s(&u["lag_bytes"]),
        s(&u["lag_seconds"])
    ));
    let st = &doc["store"];
    o.push_str(&format!(
        "store:      timeline {}, write {}, flush {}, {} segments completed{}\n",
        s(&st["timeline"]),
        s(&st["write_lsn"]),
        s(&st["flush_lsn"]),
        s(&st["completed_segments"]),
        st["error"]
            .as_str()
            .map(|e| format!(", FAILING: {e}"))
            .unwrap_or_default()
    ));
    let a = &doc["archive"];
    if a["enabled"] == true {
        o.push_str(&format!(
            "archive:    archived up to {}, lag {} bytes, {} pending; segments {}..{}, last at {} ({} s ago)\n",
            s(&a["archived_lsn"]),
            s(&a["lag_bytes"]),
            s(&a["pending_segments"]),
            s(&a["first_archived_segment"]),
            s(&a["last_archived_segment"]),
            s(&a["last_archived_at"]),
            s(&a["last_archived_age_seconds"])
        ));
        let l = &a["listing"];
        if l.is_object() {
            o.push_str(&format!(
                "            the archive holds {} segments {}..{} (listed {})\n",
                s(&l["segments"]),
                s(&l["oldest_segment"]),
                s(&l["newest_segment"]),
                s(&l["listed_at"])
            ));
        }
    } else {
        o.push_str("archive:    disabled\n");
    }
    for w in doc["walsenders"].as_array().into_iter().flatten() {
        o.push_str(&format!(
            "standby:    {} from {} {}: sent {}, flush {}, replay {}, lag {} bytes / {} s\n",
            s(&w["application_name"]),
            s(&w["client_addr"]),
            s(&w["state"]),
            s(&w["sent_lsn"]),
            s(&w["flush_lsn"]),
            s(&w["replay_lsn"]),
            s(&w["lag_bytes"]),
            s(&w["lag_seconds"])
        ));
    }
    for f in doc["feeds"].as_array().into_iter().flatten() {
        o.push_str(&format!(
            "feed:       {} {} at {}, delay {} s, lag {} bytes / {} s{}\n",
            s(&f["name"]),
            s(&f["state"]),
            s(&f["position"]),
            s(&f["delay_seconds"]),
            s(&f["lag_bytes"]),
            s(&f["lag_seconds"]),
            if f["tripwire_hold"] == true {
                format!(" — HELD BY TRIPWIRE at {}", s(&f["held_at"]))
            } else {
                String::new()
            }
        ));
    }
    let errors = doc["errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        o.push_str("errors:     none\n");
    }
    for e in errors.iter().take(5) {
        o.push_str(&format!(
            "error:      {} {}: {}\n",
            s(&e["time"]),
            s(&e["source"]),
            s(&e["message"]).replace('\n', " ")
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded() {
        let h = History::default();
        for i in 0..(HISTORY_LEN + 10) {
            h.push(Sample {
                t: i as f64,
                upstream_lag_bytes: Some(1),
                archive_lag_bytes: None,
                standby_lag_bytes: None,
                feed_lag_bytes: None,
            });
        }
        let s = h.samples();
        assert_eq!(s.len(), HISTORY_LEN);
        assert_eq!(s[0].t, 10.0);
    }

    #[test]
    fn sample_and_text_from_status() {
        let doc = serde_json::json!({
            "upstream": {"state": "streaming", "server": "db1:5432", "lag_bytes": 5},
            "store": {"flush_lsn": "0/3000000"},
            "archive": {"enabled": true, "lag_bytes": 7},
            "walsenders": [{"application_name": "s1", "lag_bytes": 3}, {"application_name": "s2", "lag_bytes": 9}],
            "feeds": [{"name": "f", "state": "tripwire", "tripwire_hold": true, "held_at": "0/2000000", "lag_bytes": 11}],
            "errors": [],
        });
        let s = Sample::from_status(1.0, &doc);
        assert_eq!(s.upstream_lag_bytes, Some(5));
        assert_eq!(s.standby_lag_bytes, Some(9));
        assert_eq!(s.feed_lag_bytes, Some(11));
        let t = text(&doc);
        assert!(t.contains("upstream:   streaming db1:5432"), "{t}");
        assert!(t.contains("standby:    s2"), "{t}");
        assert!(t.contains("HELD BY TRIPWIRE at 0/2000000"), "{t}");
        let mut other = doc.clone();
        other["cluster"] = "b".into();
        other["upstream"]["lag_bytes"] = 50.into();
        let mut first = doc;
        first["cluster"] = "a".into();
        let fleet = serde_json::json!({ "clusters": [first, other] });
        let s = Sample::from_status(1.0, &fleet);
        assert_eq!(s.upstream_lag_bytes, Some(50));
        assert_eq!(s.archive_lag_bytes, Some(7));
        let t = text(&fleet);
        assert!(t.starts_with("cluster a\nupstream:   streaming"), "{t}");
        assert!(t.contains("\ncluster b\nupstream:"), "{t}");
    }
}

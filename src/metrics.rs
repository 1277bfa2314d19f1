//! The metric catalogue and the Prometheus endpoint.
//!
//! Owns: metric names, their descriptions, the Prometheus recorder
//! (`metrics-exporter-prometheus`; the metrics listener serves it), and the per-standby
//! series ([`render_standbys`]). Modules record values through the `metrics` macros with
//! the names below. Must not: hold business logic.
//!
//! Labels are bounded: every label value recorded through the macros comes from a fixed
//! set (error kinds, refusal reasons, configured feed names). Per-standby series are *not*
//! recorded through the recorder (it never forgets a label set, and `application_name` is
//! chosen by the client): they are rendered at scrape time from the sessions connected now,
//! so a series disappears when its session ends, at most [`MAX_STANDBY_SERIES`] sessions
//! get series, and the client-chosen name is sanitized and truncated ([`label_value`]).

pub use metrics_exporter_prometheus::PrometheusHandle;

/// Bytes of WAL received from the primary.
pub const RECEIVED_BYTES: &str = "walrelay_received_bytes_total";
/// Bytes written to segment files.
pub const STORE_WRITTEN_BYTES: &str = "walrelay_store_written_bytes_total";
/// Segments completed and durably renamed.
pub const SEGMENTS_COMPLETED: &str = "walrelay_segments_completed_total";
/// `write_lsn` as a number (bytes since 0/0).
pub const WRITE_LSN: &str = "walrelay_write_lsn_bytes";
/// `flush_lsn` as a number.
pub const FLUSH_LSN: &str = "walrelay_flush_lsn_bytes";
/// The primary's WAL end as last reported by it.
pub const UPSTREAM_WAL_END: &str = "walrelay_upstream_wal_end_bytes";
/// How far `flush_lsn` trails the primary's reported WAL end.
pub const UPSTREAM_LAG: &str = "walrelay_upstream_lag_bytes";
/// Seconds walrelay has been behind the primary's WAL end (0 while it has all of it).
pub const UPSTREAM_LAG_SECONDS: &str = "walrelay_upstream_lag_seconds";
/// Seconds since the last message from the primary.
pub const UPSTREAM_MESSAGE_AGE: &str = "walrelay_upstream_last_message_age_seconds";
/// Timeline being received.
pub const TIMELINE: &str = "walrelay_timeline";
/// Connections to the primary (re)established.
pub const UPSTREAM_CONNECTS: &str = "walrelay_upstream_connects_total";
/// Errors by kind (`upstream`, `store`, `protocol`, `auth`, ...).
pub const ERRORS: &str = "walrelay_errors_total";
/// 1 while streaming from the primary.
pub const UPSTREAM_STREAMING: &str = "walrelay_upstream_streaming";

/// Registers descriptions for the catalogue.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        RECEIVED_BYTES,
        Unit::Bytes,
        "WAL bytes received from the primary"
    );
    describe_counter!(
        STORE_WRITTEN_BYTES,
        Unit::Bytes,
        "WAL bytes written to segment files"
    );
    describe_counter!(
        SEGMENTS_COMPLETED,
        "WAL segments completed (fsynced and renamed)"
    );
    describe_gauge!(
        WRITE_LSN,
        Unit::Bytes,
        "write_lsn: end of WAL written to files"
    );
    describe_gauge!(
        FLUSH_LSN,
        Unit::Bytes,
        "flush_lsn: end of WAL fsynced to disk"
    );
    describe_gauge!(
        UPSTREAM_WAL_END,
        Unit::Bytes,
        "the primary's WAL end as last reported"
    );
    describe_gauge!(
        UPSTREAM_LAG,
        Unit::Bytes,
        "bytes between the primary's WAL end and flush_lsn"
    );
    describe_gauge!(
        UPSTREAM_LAG_SECONDS,
        Unit::Seconds,
        "seconds walrelay has been behind the primary's WAL end (0 when caught up)"
    );
    describe_gauge!(
        UPSTREAM_MESSAGE_AGE,
        Unit::Seconds,
        "seconds since the last message from the primary"
    );
    describe_gauge!(TIMELINE, "timeline being received");
    describe_counter!(UPSTREAM_CONNECTS, "connections to the primary established");
    describe_counter!(ERRORS, "errors by kind");
    describe_gauge!(UPSTREAM_STREAMING, "1 while streaming from the primary");
}

/// Installs the Prometheus recorder (wrapped in [`ClusterLabel`]); the admin endpoint
/// renders it on `GET /metrics`.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(ClusterLabel(recorder))
        .map_err(|e| format!("could not install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

/// The label every per-cluster series carries (also with one cluster: `default` or its
/// `name`).
pub const CLUSTER_LABEL: &str = "cluster";

/// A recorder that adds `cluster="<name>"` to every series, the name being the cluster the
/// recording task or thread works for ([`crate::ops::current_name`]); a series that already
/// has a `cluster` label keeps it. Call sites record through the plain macros.
pub struct ClusterLabel<R>(pub R);

fn with_cluster(key: &metrics::Key) -> metrics::Key {
    if key.labels().any(|l| l.key() == CLUSTER_LABEL) {
        return key.clone();
    }
    let mut labels = Vec::with_capacity(key.labels().len().saturating_add(1));
    labels.push(metrics::Label::new(
        CLUSTER_LABEL,
        crate::ops::current_name().to_string(),
    ));
    labels.extend(key.labels().cloned());
    metrics::Key::from_parts(key.name_shared(), labels)
}

impl<R: metrics::Recorder> metrics::Recorder for ClusterLabel<R> {
    fn describe_counter(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.0.describe_counter(key, unit, description)
    }
    fn describe_gauge(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.0.describe_gauge(key, unit, description)
    }
    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.0.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &metrics::Key, m: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0.register_counter(&with_cluster(key), m)
    }
    fn register_gauge(&self, key: &metrics::Key, m: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0.register_gauge(&with_cluster(key), m)
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        m: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.0.register_histogram(&with_cluster(key), m)
    }
}

/// Per-standby series (rendered by [`render_standbys`]).
pub const STANDBY_SENT_LSN: &str = "walrelay_walsender_sent_lsn_bytes";
pub const STANDBY_FLUSH_LSN: &str = "walrelay_walsender_flush_lsn_bytes";
pub const STANDBY_REPLAY_LSN: &str = "walrelay_walsender_replay_lsn_bytes";
pub const STANDBY_FLUSH_LAG_BYTES: &str = "walrelay_walsender_flush_lag_bytes";
pub const STANDBY_REPLAY_LAG_SECONDS: &str = "walrelay_walsender_replay_lag_seconds";
/// Sessions beyond [`MAX_STANDBY_SERIES`], which get no series of their own.
pub const STANDBY_UNLABELLED: &str = "walrelay_walsender_unlabelled_sessions";

/// Most sessions with per-standby series.
pub const MAX_STANDBY_SERIES: usize = 64;
/// Longest label value (PostgreSQL's NAMEDATALEN - 1).
pub const MAX_LABEL_LEN: usize = 63;

/// One connected session's positions (bytes since 0/0).
#[derive(Debug, Clone, Default)]
pub struct StandbySample {
    pub application_name: String,
    pub sent: Option<u64>,
    pub flush: Option<u64>,
    pub replay: Option<u64>,
    pub replay_lag_seconds: Option<f64>,
}

/// A client-chosen string as a label value: ASCII letters, digits and `_ - . : @ /` kept,
/// anything else `_`, at most [`MAX_LABEL_LEN`] characters; empty becomes `unnamed`.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .take(MAX_LABEL_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:@/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() {
        "unnamed".into()
    } else {
        v
    }
}

/// Prometheus text for the sessions connected now, per cluster, in the order given
/// (oldest first): labels `cluster`, `application_name` (sanitized) and `session` (1, 2, …
/// among the cluster's sessions with the same sanitized name), so a reconnecting standby
/// keeps its series. At most [`MAX_STANDBY_SERIES`] sessions per cluster get series.
pub fn render_standbys(clusters: &[(String, Vec<StandbySample>)]) -> String {
    use std::collections::HashMap;
    use std::fmt::Write;
    let mut labelled: Vec<(String, &StandbySample)> = Vec::new();
    let mut unlabelled: Vec<(&str, usize)> = Vec::new();
    for (cluster, samples) in clusters {
        let mut seen: HashMap<String, u32> = HashMap::new();
        let cl = label_value(cluster);
        labelled.extend(samples.iter().take(MAX_STANDBY_SERIES).map(|s| {
            let name = label_value(&s.application_name);
            let n = seen.entry(name.clone()).or_insert(0);
            *n = n.saturating_add(1);
            (
                format!("cluster=\"{cl}\",application_name=\"{name}\",session=\"{n}\""),
                s,
            )
        }));
        unlabelled.push((cluster, samples.len().saturating_sub(MAX_STANDBY_SERIES)));
    }
    type Get = fn(&StandbySample) -> Option<f64>;
    let series: [(&str, &str, Get); 5] = [
        (STANDBY_SENT_LSN, "end of WAL sent to the standby", |s| {
            s.sent.map(|v| v as f64)
        }),
        (
            STANDBY_FLUSH_LSN,
            "flush position the standby reported",
            |s| s.flush.map(|v| v as f64),
        ),
        (
            STANDBY_REPLAY_LSN,
            "replay position the standby reported",
            |s| s.replay.map(|v| v as f64),
        ),
        (
            STANDBY_FLUSH_LAG_BYTES,
            "bytes sent but not yet flushed by the standby",
            |s| match (s.sent, s.flush) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64),
                _ => None,
            },
        ),
        (
            STANDBY_REPLAY_LAG_SECONDS,
            "time between sending WAL and the standby replaying it",
            |s| s.replay_lag_seconds,
        ),
    ];
    let mut out = String::new();
    for (name, help, get) in series {
        let rows: Vec<(&String, f64)> = labelled
            .iter()
            .filter_map(|(l, s)| get(s).map(|v| (l, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (l, v) in rows {
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP {STANDBY_UNLABELLED} sessions beyond {MAX_STANDBY_SERIES} without series of their own\n# TYPE {STANDBY_UNLABELLED} gauge"
    );
    for (cluster, n) in unlabelled {
        let _ = writeln!(
            out,
            "{STANDBY_UNLABELLED}{{cluster=\"{}\"}} {n}",
            label_value(cluster)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sanitized_and_bounded() {
        assert_eq!(label_value("standby_one"), "standby_one");
        assert_eq!(label_value("a\"b\\c\n}{ é"), "a_b_c_____");
        assert_eq!(label_value(""), "unnamed");
        assert_eq!(label_value(&"x".repeat(500)).len(), MAX_LABEL_LEN);
        let many: Vec<StandbySample> = (0..100)
            .map(|i| StandbySample {
                application_name: if i < 2 {
                    "sb".into()
                } else {
                    format!("evil{i}\"")
                },
                sent: Some(100),
                flush: Some(40),
                ..Default::default()
            })
            .collect();
        let text = render_standbys(&[
            ("default".to_string(), many),
            (
                "b".to_string(),
                vec![StandbySample {
                    application_name: "sb".into(),
                    sent: Some(7),
                    ..Default::default()
                }],
            ),
        ]);
        assert!(
            text.contains(
                "walrelay_walsender_sent_lsn_bytes{cluster=\"default\",application_name=\"sb\",session=\"1\"} 100"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "walrelay_walsender_flush_lag_bytes{cluster=\"default\",application_name=\"sb\",session=\"2\"} 60"
            ),
            "{text}"
        );
        assert!(text.contains("application_name=\"evil2_\""), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(STANDBY_SENT_LSN))
                .count(),
            MAX_STANDBY_SERIES + 1
        );
        assert!(text.contains(
            "walrelay_walsender_sent_lsn_bytes{cluster=\"b\",application_name=\"sb\",session=\"1\"} 7"
        ));
        assert_eq!(
            text.matches("# TYPE walrelay_walsender_sent_lsn_bytes")
                .count(),
            1
        );
        assert!(
            text.contains(&format!("{STANDBY_UNLABELLED}{{cluster=\"default\"}} 36")),
            "{text}"
        );
        assert!(!text.contains(STANDBY_REPLAY_LSN), "no rows, no family");
        // no sessions: no per-standby series at all
        assert!(!render_standbys(&[]).contains(STANDBY_SENT_LSN));
    }

    #[tokio::test]
    async fn series_carry_the_cluster_label() {
        use metrics::Recorder;
        let rec = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = rec.handle();
        let rec = ClusterLabel(rec);
        let meta = metrics::Metadata::new("t", metrics::Level::INFO, None);
        let key =
            metrics::Key::from_parts("walrelay_t_total", vec![metrics::Label::new("kind", "x")]);
        rec.register_counter(&key, &meta).increment(2);
        crate::ops::scope(crate::ops::cluster("shard9"), async {
            rec.register_counter(&key, &meta).increment(3);
        })
        .await;
        let text = handle.render();
        assert!(
            text.contains("walrelay_t_total{cluster=\"default\",kind=\"x\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("walrelay_t_total{cluster=\"shard9\",kind=\"x\"} 3"),
            "{text}"
        );
    }
}

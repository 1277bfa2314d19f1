//! The metric catalogue and the Prometheus endpoint.
//!
//! Owns: metric names, their descriptions, and the Prometheus recorder
//! (`metrics-exporter-prometheus`; [`crate::admin`] serves it). Modules record values through the `metrics` macros
//! with the names below. Must not: hold business logic.

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
    describe_gauge!(TIMELINE, "timeline being received");
    describe_counter!(UPSTREAM_CONNECTS, "connections to the primary established");
    describe_counter!(ERRORS, "errors by kind");
    describe_gauge!(UPSTREAM_STREAMING, "1 while streaming from the primary");
}

/// Installs the Prometheus recorder; the admin endpoint renders it on `GET /metrics`.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("could not install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

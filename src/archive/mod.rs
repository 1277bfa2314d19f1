//! Archiving WAL to object storage, and reading it back.
//!
//! Owns: the object-store side of walrelay: opening a store from a URL ([`backend`]; the
//! `file://` archive fsyncs before a write succeeds, [`durable_fs`]), the
//! object layout and per-object manifests ([`layout`]), create-if-absent uploads with retries
//! ([`upload`]), the background uploader that publishes `archived_lsn` ([`archiver`]), the
//! reader with read-ahead that walsenders and `wal-fetch` use ([`reader`], [`fetch`]), the
//! start-up probe ([`probe`]), the archive checker ([`verify`]) and the upload benchmark `walrelay bench-archive` ([`bench`]).
//! The layout and the guarantees are described in `docs/archive.md`.
//!
//! Must not: write, rename or delete local WAL files (the segment store is their only writer;
//! retention asks it to remove files through [`crate::store::Store::remove_segments`]), or
//! block the upstream receive path (the archiver only reads files and the store's positions).

pub mod archiver;
pub mod backend;
pub mod bench;
pub mod buffers;
pub mod cli;
pub mod crypt;
pub mod durable_fs;
pub mod expire;
pub mod fetch;
pub mod layout;
pub mod local_copy;
pub mod probe;
pub mod reader;
pub mod upload;
pub mod verify;

use std::path::PathBuf;

pub use archiver::{Archiver, ArchiverHandle};
pub use backend::Backend;
pub use reader::{ArchiveReader, LazyArchiveReader};

use crate::config::ArchiveConfig;

/// Segments uploaded.
pub const UPLOADED_SEGMENTS: &str = "walrelay_archive_uploaded_segments_total";
/// Bytes uploaded (as stored, after compression).
pub const UPLOADED_BYTES: &str = "walrelay_archive_uploaded_bytes_total";
pub const FROM_TAIL_BYTES: &str = "walrelay_archive_from_tail_bytes_total";
/// Failed object-store operations (each retry counts).
pub const UPLOAD_ERRORS: &str = "walrelay_archive_upload_errors_total";
/// Objects found in the archive with different content than the local file.
pub const CONFLICTS: &str = "walrelay_archive_conflicts_total";
/// `archived_lsn` as a number.
pub const ARCHIVED_LSN: &str = "walrelay_archived_lsn_bytes";
/// Bytes between the store's `flush_lsn` and `archived_lsn`.
pub const ARCHIVE_LAG: &str = "walrelay_archive_lag_bytes";
/// Completed local segments not yet archived.
pub const PENDING_SEGMENTS: &str = "walrelay_archive_pending_segments";
/// Partial-segment snapshots uploaded.
pub const PARTIAL_SNAPSHOTS: &str = "walrelay_archive_partial_snapshots_total";
/// Bytes of WAL files in the data directory.
pub const LOCAL_WAL_BYTES: &str = "walrelay_local_wal_bytes";
/// 1 while local WAL exceeds 90% of `archive.local_disk_cap`.
pub const DISK_CAP_ALARM: &str = "walrelay_archive_disk_cap_alarm";
/// Local segments removed by retention.
pub const REMOVED_SEGMENTS: &str = "walrelay_archive_removed_segments_total";
/// Segments served from the archive by the reader.
pub const READER_FETCHES: &str = "walrelay_archive_reader_fetches_total";

/// Registers descriptions of the archive metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(UPLOADED_SEGMENTS, "WAL segments uploaded to the archive");
    describe_counter!(UPLOADED_BYTES, Unit::Bytes, "bytes uploaded to the archive");
    describe_counter!(
        FROM_TAIL_BYTES,
        Unit::Bytes,
        "WAL bytes archived straight from the store's in-memory tail (no file read)"
    );
    describe_counter!(UPLOAD_ERRORS, "failed object-store operations (retried)");
    describe_counter!(
        CONFLICTS,
        "archive objects whose content differs from the local file (never overwritten)"
    );
    describe_gauge!(
        ARCHIVED_LSN,
        Unit::Bytes,
        "end of the contiguous archived WAL"
    );
    describe_gauge!(ARCHIVE_LAG, Unit::Bytes, "flush_lsn minus archived_lsn");
    describe_gauge!(PENDING_SEGMENTS, "completed segments waiting for upload");
    describe_counter!(PARTIAL_SNAPSHOTS, "snapshots of the open segment uploaded");
    describe_gauge!(
        LOCAL_WAL_BYTES,
        Unit::Bytes,
        "bytes of WAL files in the data directory"
    );
    describe_gauge!(
        DISK_CAP_ALARM,
        "1 while local WAL is above 90% of local_disk_cap"
    );
    describe_counter!(REMOVED_SEGMENTS, "local segments removed by retention");
    describe_counter!(READER_FETCHES, "segments read back from the archive");
}

/// Errors of the archive layer.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid archive configuration: {0}")]
    Config(String),
    #[error("object store: could not {op} \"{path}\": {source}")]
    ObjectStore {
        op: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("archive conflict: \"{path}\" already exists with different content; it is never overwritten")]
    Conflict { path: String },
    #[error("archive object \"{path}\" is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("could not {op} file \"{path}\": {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the archive holds WAL of system {found} with segment size {found_seg_size}, expected system {expected} with segment size {expected_seg_size}")]
    IdentityMismatch {
        found: u64,
        found_seg_size: u64,
        expected: u64,
        expected_seg_size: u64,
    },
    #[error("{0}")]
    NoSystem(String),
    /// A missing or different encryption key.
    #[error("{0}")]
    Encryption(String),
    /// The start-up probe failed: no such bucket, credentials, refused write, unreachable.
    #[error("archive {url} is not usable: {reason}")]
    Unusable { url: String, reason: String },
    #[error("shutting down")]
    Shutdown,
}

impl ArchiveError {
    pub(crate) fn store<'a>(
        op: &'static str,
        path: &'a object_store::path::Path,
    ) -> impl FnOnce(object_store::Error) -> ArchiveError + 'a {
        move |source| ArchiveError::ObjectStore {
            op,
            path: path.to_string(),
            source,
        }
    }
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
        move |source| ArchiveError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
    /// Worth retrying later (network, server errors), as opposed to a conflict or bad input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ArchiveError::ObjectStore { .. } | ArchiveError::Io { .. }
        )
    }
}

/// What the archive layer needs to run: the `[archive]` section and the data directory
/// (whose `archive/` subdirectory is the default `file://` archive).
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub config: ArchiveConfig,
    pub data_dir: PathBuf,
    /// The lowest `restart_lsn` of proxy-side replication slots, if any; retention never
    /// removes segments at or above it. `None`: no slots.
    pub slot_floor: Option<tokio::sync::watch::Receiver<Option<crate::Lsn>>>,
}

impl ArchiveSettings {
    pub fn new(config: ArchiveConfig, data_dir: impl Into<PathBuf>) -> ArchiveSettings {
        ArchiveSettings {
            config,
            data_dir: data_dir.into(),
            slot_floor: None,
        }
    }

    /// The archive URL in effect: `archive.url`, or `file://<data_dir>/archive` when unset;
    /// `None` when archiving is disabled (`url = "none"`).
    pub fn url(&self) -> Option<String> {
        resolve_url(self.config.url.as_deref(), &self.data_dir)
    }
}

/// See [`ArchiveSettings::url`].
pub fn resolve_url(url: Option<&str>, data_dir: &std::path::Path) -> Option<String> {
    match url.map(str::trim) {
        Some("none") | Some("") => None,
        Some(u) => Some(u.to_string()),
        None => {
            let dir = std::path::absolute(data_dir.join("archive"))
                .unwrap_or_else(|_| data_dir.join("archive"));
            Some(format!("file://{}", dir.display()))
        }
    }
}

//! Base backups in the archive: `walrelay backup`, `walrelay backups`, `[backup]` in `run`.
//!
//! Owns: the backup layout under `<prefix>/<system id>/backups/<ID>/` and its metadata
//! (`backup.json`), listing and completeness ([`catalog`], also the reader API that restore
//! and walrelay's own BASE_BACKUP serve from), taking a backup over the replication protocol
//! and streaming it into the archive ([`take`]), the schedule in `run` ([`schedule`]) and
//! retention with the archive expiry floor it implies ([`retention`]).
//! Must not: write or delete WAL objects (the archiver and archive expiry own them), or hold a
//! whole backup in memory or on local disk.

pub mod catalog;
pub mod cli;
pub mod retention;
pub mod schedule;
pub mod take;
mod tar;

pub use catalog::{BackupMeta, BackupStatus, Catalog};

use crate::archive::ArchiveError;
use crate::upstream::error::UpstreamError;

/// Backups taken (successfully).
pub const TAKEN: &str = "walrelay_backup_taken_total";
/// Failed backup attempts.
pub const FAILED: &str = "walrelay_backup_failed_total";
/// Unix time of the last successful backup.
pub const LAST_SUCCESS: &str = "walrelay_backup_last_success_timestamp_seconds";
/// Duration of the last successful backup.
pub const LAST_DURATION: &str = "walrelay_backup_last_duration_seconds";
/// Tar bytes of the last successful backup.
pub const LAST_SIZE: &str = "walrelay_backup_last_size_bytes";
/// Backups whose WAL should be archived by now but is missing (the alarm).
pub const MISSING_WAL: &str = "walrelay_backup_missing_wal_backups";
/// Backups deleted by retention.
pub const DELETED: &str = "walrelay_backup_deleted_total";

/// Registers descriptions of the backup metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(TAKEN, "base backups taken");
    describe_counter!(FAILED, "failed base backup attempts");
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "unix time of the last successful base backup"
    );
    describe_gauge!(
        LAST_DURATION,
        Unit::Seconds,
        "duration of the last successful base backup"
    );
    describe_gauge!(
        LAST_SIZE,
        Unit::Bytes,
        "tar bytes of the last successful base backup"
    );
    describe_gauge!(
        MISSING_WAL,
        "backups missing a WAL segment that the archive should hold by now"
    );
    describe_counter!(DELETED, "base backups deleted by retention");
}

/// Errors of taking, listing and reading backups.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Upstream(Box<UpstreamError>),
    #[error("no backup \"{0}\" in the archive")]
    NotFound(String),
    #[error("{0}")]
    NoComplete(String),
    #[error("backup {id}: backup.json is invalid: {reason}")]
    BadMeta { id: String, reason: String },
    #[error("backup {id}: \"{name}\" is not an archive of this backup")]
    NoSuchArchive { id: String, name: String },
    #[error("backup {id} already exists in the archive; refusing to overwrite it")]
    Exists { id: String },
    #[error("the server's BASE_BACKUP answer is not understood: {0}")]
    Protocol(String),
    #[error("archive object \"{path}\" does not match backup.json: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

impl From<UpstreamError> for BackupError {
    fn from(e: UpstreamError) -> BackupError {
        BackupError::Upstream(Box::new(e))
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// The `backups` item of `walrelay check`: CRITICAL when a backup misses WAL the archive
/// should hold (a hole), WARNING when `backup.every` is set and no complete backup is younger
/// than twice that; `None` (no item) when the archive holds no backups and none are scheduled.
pub async fn check_item(
    cfg: &crate::config::Config,
    system_id: Option<u64>,
) -> Option<(crate::check::Level, String)> {
    use crate::check::Level;
    let mut a = cfg.archive.clone();
    if a.system_id.is_none() {
        a.system_id = system_id;
    }
    let settings = crate::archive::ArchiveSettings::new(a, &cfg.data_dir);
    settings.url()?;
    let scheduled = !cfg.backup.every.is_zero();
    let cat = match Catalog::open(&settings).await {
        Ok(c) => c,
        Err(e) if scheduled => return Some((Level::Warning, format!("backups: {e}"))),
        Err(_) => return None,
    };
    let listing = match catalog::list_with_alarms(&cat).await {
        Ok(l) => l,
        Err(e) => return Some((Level::Critical, format!("backups cannot be listed: {e}"))),
    };
    if listing.backups.is_empty() && !scheduled {
        return None;
    }
    if let Some(id) = listing.alarms.first() {
        let first = listing
            .backups
            .iter()
            .find(|(m, _)| &m.id == id)
            .and_then(|(_, s)| match s {
                BackupStatus::Incomplete { missing } => missing.first().cloned(),
                BackupStatus::Complete => None,
            })
            .unwrap_or_default();
        return Some((
            Level::Critical,
            format!(
                "backup {id} misses WAL the archive should hold: {first} ({} backup(s) affected)",
                listing.alarms.len()
            ),
        ));
    }
    let newest = listing
        .backups
        .iter()
        .rev()
        .find(|(_, s)| s.is_complete())
        .map(|(m, _)| m.id.clone());
    let age = newest
        .as_deref()
        .and_then(retention::id_time)
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
    let n = listing.backups.len();
    match (newest, age) {
        (Some(id), Some(age)) if !scheduled || age <= cfg.backup.every.saturating_mul(2) => {
            Some((Level::Ok, format!("{n} backup(s), newest complete {id}")))
        }
        (Some(id), _) => Some((
            Level::Warning,
            format!(
                "the newest complete backup {id} is older than twice backup.every ({})",
                humantime::format_duration(cfg.backup.every)
            ),
        )),
        (None, _) => Some((
            Level::Warning,
            format!("no complete backup in the archive ({n} incomplete)"),
        )),
    }
}

//! `[backup] every = "24h"` in `walrelay run`: one tracked task that takes a backup when the
//! newest one in the archive is `every` old (at once when there is none), then applies
//! retention. A failed backup is retried after `min(every, 5 min)`. It looks at the archive
//! at least every 10 minutes, which refreshes `walrelay_backup_missing_wal_backups` (and logs
//! an error per backup with a WAL hole).
//!
//! Owns: the timing and the task. Must not: take backups any other way than [`take`] does.

use std::time::{Duration, SystemTime};

use super::catalog::{self, Catalog};
use super::retention::{self, Policy};
use super::take::{take_recorded, TakeOptions};
use crate::archive::ArchiveSettings;
use crate::config::BackupConfig;
use crate::upstream::conninfo::ConnInfo;

/// Starts the schedule; `None` when `backup.every` is 0 or archiving is off.
pub fn spawn(
    cfg: &BackupConfig,
    conninfo: ConnInfo,
    settings: ArchiveSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.every.is_zero() || settings.url().is_none() {
        return None;
    }
    super::describe_metrics();
    let mut conninfo = conninfo;
    conninfo.application_name = Some("walrelay backup".into());
    tracing::info!(
        "scheduled base backups every {} (keep {}, keep_for {})",
        humantime::format_duration(cfg.every),
        cfg.keep,
        humantime::format_duration(cfg.keep_for)
    );
    let every = cfg.every;
    let policy = Policy::from_config(cfg);
    let opts = TakeOptions {
        conninfo,
        settings,
        label: cfg.label.clone(),
        fast_checkpoint: cfg.fast_checkpoint,
    };
    Some(tokio::spawn(async move {
        let mut wait = Duration::from_secs(5);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            wait = match due_in(&opts.settings, every).await {
                // wake up at least every REFRESH to refresh the missing-WAL alarm
                Some(d) if !d.is_zero() => d.min(REFRESH),
                _ => match take_recorded(&opts).await {
                    Ok(m) => {
                        tracing::info!("scheduled backup {} stored", m.id);
                        if policy.enabled() {
                            if let Ok(cat) = Catalog::open(&opts.settings).await {
                                if let Err(e) =
                                    retention::apply(&cat, &policy, SystemTime::now(), false).await
                                {
                                    tracing::warn!("backup retention: {e}");
                                }
                            }
                        }
                        every
                    }
                    Err(e) => {
                        tracing::warn!("scheduled backup failed: {e}");
                        every.min(Duration::from_secs(300))
                    }
                },
            };
        }
    }))
}

/// Longest sleep between two looks at the archive (the alarm gauge is set on each look).
const REFRESH: Duration = Duration::from_secs(600);

/// How long until the next backup is due (`Some(0)`: now); `None`: back up now (no backup
/// yet, the archive holds nothing of the system yet, or its backups cannot be listed).
async fn due_in(settings: &ArchiveSettings, every: Duration) -> Option<Duration> {
    let cat = Catalog::open(settings).await.ok()?;
    // also sets walrelay_backup_missing_wal_backups
    let listing = match catalog::list_with_alarms(&cat).await {
        Ok(l) => l,
        Err(e) => {
            // a broken listing does not stop backups: take one now, then every `every`
            tracing::warn!("backups: the archive's backups cannot be listed: {e}");
            return None;
        }
    };
    for id in &listing.alarms {
        tracing::error!("backup {id} misses WAL that the archive should hold (walrelay backups)");
    }
    let newest = listing
        .backups
        .last()
        .and_then(|(m, _)| retention::id_time(&m.id))?;
    let age = SystemTime::now().duration_since(newest).unwrap_or_default();
    Some(every.saturating_sub(age))
}

//! `[backup] every = "24h"` in `walrelay run`: one tracked task that takes a backup when the
//! newest one in the archive is `every` old (at once when there is none), then applies
//! retention. A failed backup is retried after `min(every, 5 min)`.
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
                Some(d) if !d.is_zero() => d,
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

/// How long until the next backup is due (`Some(0)`: now); `None`: the archive cannot be
/// read yet (no WAL of the system): back up now.
async fn due_in(settings: &ArchiveSettings, every: Duration) -> Option<Duration> {
    let cat = Catalog::open(settings).await.ok()?;
    let ids = catalog::list_ids(&cat).await.ok()?;
    let mut newest = None;
    for id in ids.iter().rev() {
        if let Ok(Some(m)) = catalog::read_meta(&cat, id).await {
            newest = retention::id_time(&m.id);
            break;
        }
    }
    let newest = newest?;
    let age = SystemTime::now().duration_since(newest).unwrap_or_default();
    Some(every.saturating_sub(age))
}

//! `walrelay backup` and `walrelay backups`: arguments, output and exit statuses.
//!
//! Exit statuses of `walrelay backup`: 0 the backup is stored and the archive holds all its
//! WAL (or `--wait-wal 0`: stored, not waited for); 1 it failed (nothing is listed);
//! 3 it is stored but its WAL was not all archived within `--wait-wal` (listed as
//! incomplete until it is: is `walrelay run` archiving this server?).
//! `walrelay backups`: 0 listed; 1 the archive could not be read; 2 a backup misses WAL the
//! archive should hold by now (a hole: a later segment is archived).
//! Must not: do anything the library functions do not.

use std::path::PathBuf;
use std::time::Duration;

use super::catalog::{self, BackupStatus, Catalog};
use super::take::{self, TakeOptions};
use crate::archive::ArchiveSettings;
use crate::upstream::conninfo::ConnInfo;

/// Exit status: stored, but its WAL is not all in the archive.
pub const EXIT_WAL_MISSING: i32 = 3;
/// Exit status of `backups`: a backup misses WAL the archive should hold.
pub const EXIT_ALARM: i32 = 2;

/// `walrelay backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// TOML configuration file (`[upstream]`, `[archive]`, `[backup]` and `data_dir` are used).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Server to back up (libpq connection string or URI; overrides upstream.conninfo).
    #[arg(long, value_name = "CONNINFO")]
    pub upstream: Option<String>,
    /// Archive URL (overrides archive.url).
    #[arg(long, value_name = "URL")]
    pub archive: Option<String>,
    /// Data directory (for the default file://<data_dir>/archive).
    #[arg(short = 'D', long)]
    pub data_dir: Option<PathBuf>,
    /// Backup label (default backup.label, "walrelay").
    #[arg(long)]
    pub label: Option<String>,
    /// How long to wait for the archive to hold the backup's WAL; 0: do not wait.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "60s")]
    pub wait_wal: Duration,
}

/// `walrelay backups`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupsArgs {
    /// TOML configuration file (`[archive]` and `data_dir` are used).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Archive URL (overrides archive.url).
    #[arg(long, value_name = "URL")]
    pub archive: Option<String>,
    /// Data directory (for the default file://<data_dir>/archive).
    #[arg(short = 'D', long)]
    pub data_dir: Option<PathBuf>,
    /// System id, when the archive holds several.
    #[arg(long)]
    pub system_id: Option<u64>,
    /// One JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn load(config: &Option<PathBuf>) -> Result<crate::config::Config, String> {
    match config {
        Some(p) => crate::config::Config::load(p).map_err(|e| e.to_string()),
        None => Ok(crate::config::Config::default()),
    }
}

fn archive_settings(
    cfg: &crate::config::Config,
    url: &Option<String>,
    data_dir: &Option<PathBuf>,
    sysid: Option<u64>,
) -> ArchiveSettings {
    let mut a = cfg.archive.clone();
    if url.is_some() {
        a.url = url.clone();
    }
    if sysid.is_some() {
        a.system_id = sysid;
    }
    ArchiveSettings::new(a, data_dir.clone().unwrap_or_else(|| cfg.data_dir.clone()))
}

/// `walrelay backup`: the exit status.
pub async fn backup_main(a: BackupArgs) -> i32 {
    match backup(&a).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrelay backup: {e}");
            1
        }
    }
}

async fn backup(a: &BackupArgs) -> Result<i32, String> {
    let cfg = load(&a.config)?;
    let conninfo = a
        .upstream
        .clone()
        .or_else(|| cfg.upstream.conninfo.clone())
        .ok_or("no server to back up: use --upstream CONNINFO or upstream.conninfo in the configuration file")?;
    let mut ci = ConnInfo::parse(&conninfo).map_err(|e| e.to_string())?;
    ci.apply_env(&|k| std::env::var(k).ok());
    if ci.application_name.is_none() {
        ci.application_name = Some("walrelay backup".into());
    }
    let settings = archive_settings(&cfg, &a.archive, &a.data_dir, None);
    let opts = TakeOptions {
        conninfo: ci,
        settings: settings.clone(),
        label: a.label.clone().unwrap_or_else(|| cfg.backup.label.clone()),
        fast_checkpoint: cfg.backup.fast_checkpoint,
    };
    let meta = take::take_recorded(&opts)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "backup {} stored: {} to {} on timeline {}, {} bytes in {} archive(s){}",
        meta.id,
        meta.start_lsn,
        meta.stop_lsn,
        meta.stop_timeline,
        meta.size(),
        meta.archives.len(),
        if meta.manifest.is_some() {
            ", with manifest"
        } else {
            ""
        }
    );
    if a.wait_wal.is_zero() {
        println!("backup {}: not waiting for its WAL (--wait-wal 0)", meta.id);
        return Ok(0);
    }
    let mut s = settings;
    s.config.system_id = meta.system_id.parse().ok();
    let cat = Catalog::open(&s).await.map_err(|e| e.to_string())?;
    match take::wait_for_wal(&cat, &meta, a.wait_wal)
        .await
        .map_err(|e| e.to_string())?
    {
        BackupStatus::Complete => {
            println!(
                "backup {} is complete: the archive holds all its WAL",
                meta.id
            );
            Ok(0)
        }
        BackupStatus::Incomplete { missing } => {
            eprintln!(
                "walrelay backup: backup {} is stored but INCOMPLETE: after {} the archive still lacks {} WAL file(s), first {}; is `walrelay run` archiving this server?",
                meta.id,
                humantime::format_duration(a.wait_wal),
                missing.len(),
                missing.first().map_or("?", String::as_str)
            );
            Ok(EXIT_WAL_MISSING)
        }
    }
}

/// `walrelay backups`: the exit status.
pub async fn backups_main(a: BackupsArgs) -> i32 {
    match backups(&a).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrelay backups: {e}");
            1
        }
    }
}

async fn backups(a: &BackupsArgs) -> Result<i32, String> {
    let cfg = load(&a.config)?;
    let settings = archive_settings(&cfg, &a.archive, &a.data_dir, a.system_id);
    let cat = Catalog::open(&settings).await.map_err(|e| e.to_string())?;
    let listing = catalog::list_with_alarms(&cat)
        .await
        .map_err(|e| e.to_string())?;
    if a.json {
        let rows: Vec<serde_json::Value> = listing
            .backups
            .iter()
            .map(|(m, s)| {
                let missing = match s {
                    BackupStatus::Complete => Vec::new(),
                    BackupStatus::Incomplete { missing } => missing.clone(),
                };
                serde_json::json!({
                    "id": m.id,
                    "label": m.label,
                    "start_lsn": m.start_lsn,
                    "stop_lsn": m.stop_lsn,
                    "timeline": m.timeline,
                    "stop_timeline": m.stop_timeline,
                    "start_time": m.start_time,
                    "stop_time": m.stop_time,
                    "server_version": m.server_version,
                    "size": m.size(),
                    "stored_size": m.stored_size(),
                    "encrypted": m.encrypted,
                    "status": if s.is_complete() { "complete" } else { "incomplete" },
                    "first_missing": missing.first(),
                    "missing": missing,
                    "alarm": listing.alarms.contains(&m.id),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:<16}  {:>14}  {:>14}  {:>3}  {:>14}  STATUS",
            "ID", "START LSN", "STOP LSN", "TLI", "SIZE"
        );
        for (m, s) in &listing.backups {
            let status = match s {
                BackupStatus::Complete => "complete".to_string(),
                BackupStatus::Incomplete { missing } => format!(
                    "incomplete: missing {}{}",
                    missing.first().map_or("?", String::as_str),
                    if listing.alarms.contains(&m.id) {
                        " (ALARM: a later segment is archived)"
                    } else {
                        ""
                    }
                ),
            };
            println!(
                "{:<16}  {:>14}  {:>14}  {:>3}  {:>14}  {status}",
                m.id,
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                m.size(),
            );
        }
    }
    Ok(if listing.alarms.is_empty() {
        0
    } else {
        EXIT_ALARM
    })
}

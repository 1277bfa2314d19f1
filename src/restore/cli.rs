//! `walrelay restore`: its options, choosing the backup, and the run.
//!
//! Owns: the command line (shared target options with `walrelay drill`: [`TargetArgs`]),
//! the choice of backup (given, else the newest complete one that ends before the target:
//! time — `stop_time` ≤ T; LSN — `stop_lsn` ≤ L; otherwise the newest), the refusal of an
//! incomplete backup (unless `--force`) naming its first missing WAL file, the
//! `restore_command` (this binary's absolute path, `wal-fetch` with the same archive
//! options) and the standby's `primary_conninfo` (walrelay's `server.listen`).
//! Must not: unpack or verify itself ([`super::core`]).

use std::path::{Path, PathBuf};

use super::core::{self as rcore, Restored};
use super::recovery::{Action, Settings, Standby, Target};
use super::source::{parts, CatalogOpener};
use super::RestoreError;
use crate::archive::ArchiveSettings;
use crate::backup::catalog::{self, BackupMeta, BackupStatus, Catalog};
use crate::lsn::Lsn;

/// Where the archive is (shared by restore and drill).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ArchiveArgs {
    /// walrelay's configuration file (its `[archive]` section, `data_dir`, `server.listen`).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Archive URL (overrides `archive.url`).
    #[arg(long)]
    pub archive: Option<String>,
    /// System id, when the archive holds several.
    #[arg(long)]
    pub system_id: Option<u64>,
}

/// The recovery target (at most one) and what to do there.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// Backup to restore: an ID or `latest` (default: the newest complete backup that
    /// ends before the target).
    #[arg(long, value_name = "ID|latest")]
    pub backup: Option<String>,
    /// Recover to this time (e.g. "2026-12-02 01:00:00+00", "now-10m").
    #[arg(long, group = "target", value_name = "TIME")]
    pub target_time: Option<String>,
    /// Recover to this transaction id (e.g. from `walrelay xacts`).
    #[arg(long, group = "target", value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, group = "target", value_name = "NAME")]
    pub target_name: Option<String>,
    /// Recover to this LSN.
    #[arg(long, group = "target", value_name = "LSN")]
    pub target_lsn: Option<Lsn>,
    /// Recover all WAL the archive has (the default without a target).
    #[arg(long, group = "target")]
    pub latest: bool,
    /// Stop as soon as the backup is consistent (`recovery_target = 'immediate'`).
    #[arg(long, group = "target")]
    pub immediate: bool,
    /// What PostgreSQL does at the target (default: PostgreSQL's, pause).
    #[arg(long, value_enum)]
    pub target_action: Option<Action>,
    /// Stop just after (true, PostgreSQL's default) or just before the target.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub target_inclusive: Option<bool>,
}

impl TargetArgs {
    /// The target as PostgreSQL will be told it (times normalized to UTC).
    pub fn target(&self) -> Result<Target, RestoreError> {
        Ok(if let Some(t) = &self.target_time {
            let pg = crate::delay::time::parse_pg_time(t, crate::lsn::pg_now())
                .map_err(|e| RestoreError::Usage(e.to_string()))?;
            Target::Time(crate::delay::time::format_pg_time(pg))
        } else if let Some(x) = &self.target_xid {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RestoreError::Usage(format!(
                    "invalid transaction id \"{x}\""
                )));
            }
            Target::Xid(x.clone())
        } else if let Some(n) = &self.target_name {
            Target::Name(n.clone())
        } else if let Some(l) = self.target_lsn {
            Target::Lsn(l)
        } else if self.immediate {
            Target::Immediate
        } else {
            Target::Latest
        })
    }
}

/// `walrelay restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Directory to restore into (absent or empty; created 0700).
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Restore a backup the archive lacks WAL for (recovery will stop where WAL is missing).
    #[arg(long)]
    pub force: bool,
    /// Write standby.signal: a standby that streams from walrelay after the archive.
    #[arg(long)]
    pub standby: bool,
    /// The standby's primary_conninfo (default: walrelay's server.listen).
    #[arg(long, requires = "standby", value_name = "CONNINFO")]
    pub primary_conninfo: Option<String>,
    /// The standby's primary_slot_name.
    #[arg(long, requires = "standby", value_name = "SLOT")]
    pub slot: Option<String>,
    /// Restore tablespace OLD into NEW (repeatable), like pg_basebackup's.
    #[arg(short = 'T', long, value_name = "OLD=NEW", value_parser = parse_mapping)]
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
}

fn parse_mapping(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| "the tablespace mapping must be OLD=NEW".to_string())?;
    let (a, b) = (PathBuf::from(a), PathBuf::from(b));
    if !a.is_absolute() || !b.is_absolute() {
        return Err("both directories of a tablespace mapping must be absolute".into());
    }
    Ok((a, b))
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub meta: BackupMeta,
    pub status: BackupStatus,
    pub restored: Restored,
    /// The setting lines written to postgresql.auto.conf.
    pub settings: String,
}

fn load_config(a: &ArchiveArgs) -> Result<crate::config::Config, RestoreError> {
    match &a.config {
        Some(p) => crate::config::Config::load(p).map_err(|e| RestoreError::Usage(e.to_string())),
        None => Ok(crate::config::Config::default()),
    }
}

/// The archive settings of these options.
pub fn archive_settings(a: &ArchiveArgs) -> Result<ArchiveSettings, RestoreError> {
    let cfg = load_config(a)?;
    let mut ac = cfg.archive.clone();
    if a.archive.is_some() {
        ac.url = a.archive.clone();
    }
    if a.system_id.is_some() {
        ac.system_id = a.system_id;
    }
    Ok(ArchiveSettings::new(ac, cfg.data_dir))
}

/// `restore_command`'s argv: this binary, `wal-fetch`, the same archive options.
fn wal_fetch_argv(a: &ArchiveArgs, s: &ArchiveSettings) -> Result<Vec<String>, RestoreError> {
    let exe = std::env::current_exe().map_err(|e| RestoreError::Io {
        op: "find the walrelay binary",
        path: PathBuf::from("/proc/self/exe"),
        source: e,
    })?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut v = vec![exe.display().to_string(), "wal-fetch".to_string()];
    if let Some(c) = &a.config {
        v.push("-c".into());
        v.push(abs(c).display().to_string());
    }
    // the URL in effect, absolute: wal-fetch runs in the data directory
    if let Some(url) = s.url() {
        v.push("--archive".into());
        v.push(url);
    }
    if let Some(id) = a.system_id {
        v.push("--system-id".into());
        v.push(id.to_string());
    }
    Ok(v)
}

/// `primary_conninfo` for walrelay's first `server.listen` address.
fn walrelay_conninfo(cfg: &crate::config::Config) -> Option<String> {
    let first = cfg
        .server
        .listen
        .as_deref()?
        .split(',')
        .next()?
        .trim()
        .to_string();
    if first.starts_with('/') {
        // a socket path: libpq wants the directory and the port
        let p = Path::new(&first);
        let name = p.file_name()?.to_str()?;
        let port = name.strip_prefix(".s.PGSQL.")?;
        return Some(format!(
            "host={} port={port} application_name=walrelay_restore",
            p.parent()?.display()
        ));
    }
    let (host, port) = first.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() || host == "0.0.0.0" || host == "*" {
        "127.0.0.1"
    } else if host == "::" {
        "::1"
    } else {
        host
    };
    Some(format!("host={host} port={port}"))
}

fn pg_time_of_rfc3339(s: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    let micros = t.timestamp_micros();
    micros.checked_sub(crate::lsn::PG_EPOCH_UNIX_SECS.checked_mul(1_000_000)?)
}

/// Chooses the backup for `t` among `all` (oldest first).
pub fn choose(
    all: Vec<(BackupMeta, BackupStatus)>,
    t: &Target,
) -> Result<(BackupMeta, BackupStatus), RestoreError> {
    let fits = |m: &BackupMeta| match t {
        Target::Time(text) => {
            let want = crate::delay::time::parse_pg_time(text, crate::lsn::pg_now()).ok();
            match (pg_time_of_rfc3339(&m.stop_time), want) {
                (Some(stop), Some(want)) => stop <= want,
                _ => false,
            }
        }
        Target::Lsn(l) => m.stop() <= *l,
        _ => true,
    };
    let candidates: Vec<_> = all.into_iter().filter(|(m, _)| fits(m)).collect();
    if let Some(c) = candidates.iter().rev().find(|(_, s)| s.is_complete()) {
        return Ok(c.clone());
    }
    match candidates.into_iter().next_back() {
        Some((m, BackupStatus::Incomplete { missing })) => Err(RestoreError::Incomplete {
            id: m.id,
            missing: missing.first().cloned().unwrap_or_default(),
        }),
        Some(c) => Ok(c),
        None => Err(RestoreError::NoBackup(match t {
            Target::Time(_) | Target::Lsn(_) => {
                "the archive holds no backup that ends before the target".to_string()
            }
            _ => "the archive holds no backup".to_string(),
        })),
    }
}

/// Finds the backup: `which` (an ID, `latest`) or by target.
pub async fn select(
    cat: &Catalog,
    which: Option<&str>,
    t: &Target,
    force: bool,
) -> Result<(BackupMeta, BackupStatus), RestoreError> {
    let archive_err = |e: crate::backup::BackupError| RestoreError::Archive(e.to_string());
    let (meta, status) = match which {
        Some(id) if id != "latest" => catalog::find(cat, id).await.map_err(archive_err)?,
        _ => {
            let all = catalog::list(cat).await.map_err(archive_err)?;
            match choose(all.clone(), t) {
                Err(RestoreError::Incomplete { .. }) if force => all
                    .into_iter()
                    .next_back()
                    .ok_or_else(|| RestoreError::NoBackup("the archive holds no backup".into()))?,
                r => r?,
            }
        }
    };
    if let BackupStatus::Incomplete { missing } = &status {
        if !force {
            return Err(RestoreError::Incomplete {
                id: meta.id.clone(),
                missing: missing.first().cloned().unwrap_or_default(),
            });
        }
    }
    Ok((meta, status))
}

/// Runs a restore; the caller prints. Blocking work runs on a blocking thread.
pub async fn run(args: &RestoreArgs) -> Result<Outcome, RestoreError> {
    let cfg = load_config(&args.archive)?;
    let s = archive_settings(&args.archive)?;
    let target = args.target.target()?;
    if s.url().is_none() {
        return Err(RestoreError::Usage(
            "archiving is disabled (archive.url = \"none\")".into(),
        ));
    }
    let cat = Catalog::open(&s)
        .await
        .map_err(|e| RestoreError::Archive(e.to_string()))?;
    let (meta, status) = select(&cat, args.target.backup.as_deref(), &target, args.force).await?;
    let manifest = match catalog::open_manifest(&cat, &meta)
        .await
        .map_err(|e| RestoreError::Archive(e.to_string()))?
    {
        Some(m) => Some(
            m.read_to_end()
                .await
                .map_err(|e| RestoreError::Archive(e.to_string()))?,
        ),
        None => None,
    };
    let standby = if args.standby {
        Some(Standby {
            primary_conninfo: args
                .primary_conninfo
                .clone()
                .or_else(|| walrelay_conninfo(&cfg)),
            slot: args.slot.clone(),
        })
    } else {
        None
    };
    let settings = Settings {
        wal_fetch: wal_fetch_argv(&args.archive, &s)?,
        target,
        action: args.target.target_action,
        inclusive: args.target.target_inclusive,
        standby,
    };
    let rendered = settings.render();
    let opener = CatalogOpener {
        handle: tokio::runtime::Handle::current(),
        catalog: cat,
        meta: meta.clone(),
    };
    let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    let mapping = args.tablespace_mapping.clone();
    let ps = parts(&meta);
    let restored = tokio::task::spawn_blocking(move || {
        rcore::restore(
            &dir,
            &ps,
            manifest.as_deref(),
            &opener,
            &mapping,
            Some(&settings),
        )
    })
    .await
    .map_err(|e| RestoreError::Backup(format!("restore task failed: {e}")))??;
    Ok(Outcome {
        meta,
        status,
        restored,
        settings: rendered,
    })
}

/// `walrelay restore`: exit status 0 restored, 1 failed (the reason on stderr).
pub async fn main(args: RestoreArgs) -> i32 {
    match run(&args).await {
        Ok(o) => {
            let m = &o.meta;
            println!(
                "restored backup {} (start {}, stop {}, timeline {}) into {}: {} files, {} bytes{}",
                m.id,
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                args.dir.display(),
                o.restored.files,
                o.restored.bytes,
                if o.restored.manifest_checked {
                    ", verified against its backup manifest"
                } else {
                    " (the backup has no manifest: not verified)"
                }
            );
            for (oid, d) in &o.restored.tablespaces {
                println!("tablespace {oid} restored into {}", d.display());
            }
            for e in &o.restored.extra {
                println!("warning: {e}");
            }
            if let BackupStatus::Incomplete { missing } = &o.status {
                println!(
                    "warning: restored with --force although the archive is missing {}",
                    missing.join(", ")
                );
            }
            print!("settings appended to postgresql.auto.conf:{}", o.settings);
            println!("start it with: pg_ctl -D {} start", args.dir.display());
            0
        }
        Err(e) => {
            eprintln!("walrelay restore: {e}");
            1
        }
    }
}

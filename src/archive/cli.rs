//! The archive subcommands, ready for `main.rs` to mount: `wal-fetch` and `verify`.
//!
//! Owns: their arguments (clap derive) and exit statuses. `main.rs` only has to add
//! `WalFetch(archive::cli::WalFetchArgs)` / `Verify(archive::cli::VerifyArgs)` variants and call
//! [`wal_fetch`] / [`verify`] with the loaded `[archive]` configuration and data directory.
//! Must not: do anything the library functions do not.

use std::path::PathBuf;

use super::fetch::{FetchOutcome, WalFetchOptions};
use super::verify::VerifyOptions;
use super::{ArchiveReader, ArchiveSettings};
use crate::config::ArchiveConfig;
use crate::lsn::{Lsn, TimelineId};

/// `walrelay wal-fetch %f %p`: restore_command.
#[derive(Debug, Clone, clap::Args)]
pub struct WalFetchArgs {
    /// TOML configuration file (its `[archive]` section and `data_dir` are used).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Data directory (for the default `file://<data_dir>/archive`).
    #[arg(short = 'D', long)]
    pub data_dir: Option<PathBuf>,
    /// WAL file name PostgreSQL asks for (`%f`).
    pub file: String,
    /// Where to put it (`%p`).
    pub dest: PathBuf,
    /// Archive URL (overrides `archive.url`).
    #[arg(long)]
    pub archive: Option<String>,
    /// System id, when the archive holds several.
    #[arg(long)]
    pub system_id: Option<u64>,
    /// Spool directory for prefetched segments (default `<dir of %p>/walrelay-spool`).
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Segments to prefetch (default `archive.prefetch`).
    #[arg(long)]
    pub prefetch: Option<usize>,
}

/// `walrelay verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// TOML configuration file (its `[archive]` section and `data_dir` are used).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Data directory (for the default `file://<data_dir>/archive`).
    #[arg(short = 'D', long)]
    pub data_dir: Option<PathBuf>,
    /// Archive URL (overrides `archive.url`).
    #[arg(long)]
    pub archive: Option<String>,
    #[arg(long)]
    pub system_id: Option<u64>,
    /// First LSN to check (default: the first archived segment).
    #[arg(long)]
    pub from: Option<Lsn>,
    /// Timeline whose history decides which segments are expected (default: the highest).
    #[arg(long)]
    pub timeline: Option<TimelineId>,
    /// Parallel downloads.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

fn settings(
    cfg: &ArchiveConfig,
    data_dir: &std::path::Path,
    url: &Option<String>,
    sysid: Option<u64>,
) -> ArchiveSettings {
    let mut cfg = cfg.clone();
    if url.is_some() {
        cfg.url = url.clone();
    }
    if sysid.is_some() {
        cfg.system_id = sysid;
    }
    ArchiveSettings::new(cfg, data_dir)
}

fn load(
    config: &Option<PathBuf>,
    data_dir: &Option<PathBuf>,
) -> Result<(ArchiveConfig, PathBuf), String> {
    let cfg = match config {
        Some(p) => crate::config::Config::load(p).map_err(|e| e.to_string())?,
        None => crate::config::Config::default(),
    };
    let dir = data_dir.clone().unwrap_or(cfg.data_dir);
    Ok((cfg.archive, dir))
}

/// `walrelay wal-fetch` from its arguments alone (loads `--config`); the exit status.
pub async fn wal_fetch_main(args: WalFetchArgs) -> i32 {
    match load(&args.config, &args.data_dir) {
        Ok((cfg, dir)) => wal_fetch(&args, &cfg, &dir).await,
        Err(e) => {
            eprintln!("walrelay wal-fetch: {e}");
            1
        }
    }
}

/// `walrelay verify` from its arguments alone (loads `--config`); the exit status.
pub async fn verify_main(args: VerifyArgs) -> i32 {
    match load(&args.config, &args.data_dir) {
        Ok((cfg, dir)) => verify(&args, &cfg, &dir).await,
        Err(e) => {
            eprintln!("walrelay verify: {e}");
            1
        }
    }
}

/// Runs `wal-fetch`; returns the exit status (0 restored, 1 not found — silently — or error).
pub async fn wal_fetch(
    args: &WalFetchArgs,
    cfg: &ArchiveConfig,
    data_dir: &std::path::Path,
) -> i32 {
    let s = settings(cfg, data_dir, &args.archive, args.system_id);
    let reader = match ArchiveReader::open(&s).await {
        Ok(r) => r,
        Err(super::ArchiveError::NoSystem(_)) => return 1,
        Err(e) => {
            eprintln!("walrelay wal-fetch: {e}");
            return 1;
        }
    };
    let opts = WalFetchOptions {
        spool: args.spool.clone(),
        prefetch: args.prefetch.unwrap_or(s.config.prefetch),
    };
    match super::fetch::wal_fetch(&reader, &args.file, &args.dest, &opts).await {
        Ok(FetchOutcome::Restored { .. }) => 0,
        Ok(FetchOutcome::NotFound) => 1,
        Err(e) => {
            eprintln!("walrelay wal-fetch: {}: {e}", args.file);
            1
        }
    }
}

/// Runs `verify`, printing the report on stdout; 0 when everything checks out, 1 otherwise.
pub async fn verify(args: &VerifyArgs, cfg: &ArchiveConfig, data_dir: &std::path::Path) -> i32 {
    let s = settings(cfg, data_dir, &args.archive, args.system_id);
    let reader = match ArchiveReader::open(&s).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walrelay verify: {e}");
            return 1;
        }
    };
    let opts = VerifyOptions {
        from: args.from,
        timeline: args.timeline,
        progress: true,
        concurrency: args.concurrency,
    };
    match super::verify::verify(&reader, &opts).await {
        Ok(r) => {
            print!("{}", r.render());
            if r.ok() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("walrelay verify: {e}");
            1
        }
    }
}

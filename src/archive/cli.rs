//! The archive subcommands, ready for `main.rs` to mount: `wal-fetch`, `verify` and
//! `bench-archive`.
//!
//! Owns: their arguments (clap derive) and exit statuses. `main.rs` only has to add
//! `WalFetch(archive::cli::WalFetchArgs)` / `Verify(archive::cli::VerifyArgs)` variants and call
//! [`wal_fetch`] / [`verify`] with the loaded `[archive]` configuration and data directory.
//! Must not: do anything the library functions do not.

// Handles outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::path::PathBuf;

use super::fetch::{FetchOutcome, WalFetchOptions};
use super::verify::VerifyOptions;
use super::{ArchiveReader, ArchiveSettings};
use crate::config::{parse_size, ArchiveConfig, Compression};
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
    /// When the archive has no complete segment, deliver its newest partial snapshot
    /// (zero-padded): recovery to the end of the archived WAL (`archive.fetch_partial`).
    #[arg(long)]
    pub partial: bool,
    /// How long to retry an archive that fails (unreachable, missing directory, refused)
    /// before exiting with status 255, which PostgreSQL treats as fatal
    /// (default `archive.fetch_retry_timeout`, 60s).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub retry_timeout: Option<std::time::Duration>,
}

/// `wal-fetch`'s exit status when the archive could not be asked: above 125, so
/// PostgreSQL's restore_command caller (`wait_result_is_any_signal(rc, true)`) stops with
/// FATAL instead of taking it for "file not found" and ending recovery early; not
/// 128 + SIGTERM (143), which PostgreSQL reads as a requested shutdown.
pub const WAL_FETCH_FATAL: i32 = 255;

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

/// `walrelay bench-archive`: upload throughput to an archive by concurrency.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArchiveArgs {
    /// TOML configuration file (its `[archive]` section: URL, credentials, compression,
    /// multipart and retry settings, as `walrelay run` uses them).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Archive URL (overrides `archive.url`): s3://bucket/prefix, az://…, gs://…, file:///dir.
    #[arg(long)]
    pub url: Option<String>,
    /// Upload concurrency levels to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    pub concurrency: Vec<usize>,
    /// Segments uploaded per level.
    #[arg(long, default_value_t = 32)]
    pub segments: usize,
    /// Segment size (bytes, or with a unit: 16MB; a power of two from 1MB to 1GB).
    #[arg(long, value_parser = parse_size, default_value = "16MB")]
    pub segment_size: u64,
    /// none or zstd (overrides `archive.compression`).
    #[arg(long, value_parser = parse_compression)]
    pub compression: Option<Compression>,
    /// zstd level (overrides `archive.compression_level`).
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// One JSON object per level instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!("unknown compression \"{s}\" (none, zstd)")),
    }
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
            // an unreadable configuration is not "file absent"
            eprintln!("walrelay wal-fetch: {e}");
            WAL_FETCH_FATAL
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

/// What one `wal-fetch` attempt found.
enum Attempt {
    Restored,
    /// The archive answered that it does not have the file (or any WAL of this system).
    Absent,
}

async fn wal_fetch_once(
    args: &WalFetchArgs,
    s: &ArchiveSettings,
    opts: &WalFetchOptions,
) -> Result<Attempt, super::ArchiveError> {
    if let Some(url) = s.url() {
        super::probe::check_file_url_exists(&url)?;
    }
    let reader = match ArchiveReader::open(s).await {
        Ok(r) => r,
        // the archive answered: it holds nothing of this system
        Err(super::ArchiveError::NoSystem(_)) => return Ok(Attempt::Absent),
        Err(e) => return Err(e),
    };
    match super::fetch::wal_fetch(&reader, &args.file, &args.dest, opts).await? {
        FetchOutcome::Restored { .. } => Ok(Attempt::Restored),
        FetchOutcome::RestoredPartial { bytes } => {
            eprintln!(
                "walrelay wal-fetch: {}: restored from a partial snapshot ({bytes} bytes of WAL, zero-padded)",
                args.file
            );
            Ok(Attempt::Restored)
        }
        FetchOutcome::NotFound => Ok(Attempt::Absent),
    }
}

/// Runs `wal-fetch`; returns the exit status: 0 restored; 1 (silently) when the archive
/// answered that the file is absent; [`WAL_FETCH_FATAL`] after retrying any other failure
/// for `archive.fetch_retry_timeout` (at once for a configuration error or a corrupt
/// object, which waiting does not mend).
pub async fn wal_fetch(
    args: &WalFetchArgs,
    cfg: &ArchiveConfig,
    data_dir: &std::path::Path,
) -> i32 {
    use std::time::{Duration, Instant};
    let s = settings(cfg, data_dir, &args.archive, args.system_id);
    let opts = WalFetchOptions {
        spool: args.spool.clone(),
        prefetch: args.prefetch.unwrap_or(s.config.prefetch),
        partial: args.partial || s.config.fetch_partial,
    };
    let timeout = args.retry_timeout.unwrap_or(s.config.fetch_retry_timeout);
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        let e = match wal_fetch_once(args, &s, &opts).await {
            Ok(Attempt::Restored) => return 0,
            Ok(Attempt::Absent) => return 1,
            Err(e) => e,
        };
        let retryable = e.is_transient() || matches!(e, super::ArchiveError::Unusable { .. });
        let elapsed = start.elapsed();
        if !retryable || elapsed.saturating_add(delay) > timeout {
            let why = if retryable {
                format!(
                    "giving up after {attempts} attempts in {} s",
                    elapsed.as_secs()
                )
            } else {
                "not retried".to_string()
            };
            eprintln!(
                "walrelay wal-fetch: {}: {e}; {why}: exiting with status {WAL_FETCH_FATAL} so that PostgreSQL stops instead of taking the file for absent",
                args.file
            );
            return WAL_FETCH_FATAL;
        }
        if attempts == 1 {
            eprintln!(
                "walrelay wal-fetch: {}: {e}; retrying for up to {timeout:?}",
                args.file
            );
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(Duration::from_secs(5));
    }
}

/// Runs `verify`, printing the report on stdout; 0 when everything checks out, 1 otherwise.
pub async fn verify(args: &VerifyArgs, cfg: &ArchiveConfig, data_dir: &std::path::Path) -> i32 {
    let s = settings(cfg, data_dir, &args.archive, args.system_id);
    if let Err(e) = super::probe::open_checked(&s, super::probe::Access::ReadOnly).await {
        eprintln!("walrelay verify: {e}");
        return 1;
    }
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

/// `walrelay bench-archive` from its arguments alone (loads `--config`); the exit status.
/// Prints a table (or JSON lines) on stdout; `shutdown` stops it early (what was uploaded is
/// deleted either way).
pub async fn bench_archive_main(
    args: BenchArchiveArgs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> i32 {
    use super::bench::{BenchOptions, LevelResult};
    let (mut cfg, _) = match load(&args.config, &None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walrelay bench-archive: {e}");
            return 1;
        }
    };
    if let Some(c) = args.compression {
        cfg.compression = c;
    }
    if let Some(l) = args.compression_level {
        cfg.compression_level = l;
    }
    let url = match args.url.clone().or_else(|| cfg.url.clone()) {
        Some(u) if !matches!(u.trim(), "" | "none") => u,
        _ => {
            eprintln!(
                "walrelay bench-archive: no archive given: use --url or archive.url in --config"
            );
            return 1;
        }
    };
    let backend = match super::backend::open(&url, &cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("walrelay bench-archive: {e}");
            return 1;
        }
    };
    let probe = super::probe::probe(
        &backend,
        super::probe::Access::ReadWrite,
        super::probe::PROBE_TIMEOUT,
    );
    if let Err(e) = probe.await {
        eprintln!("walrelay bench-archive: {e}");
        return 1;
    }
    let opts = BenchOptions {
        concurrency: args.concurrency.clone(),
        segments: args.segments,
        segment_size: args.segment_size,
    };
    let mb = |b: u64| b as f64 / 1_048_576.0;
    if !args.json {
        println!(
            "{} segments of {} MB per level to {url} (compression {}), deleted afterwards",
            opts.segments,
            mb(opts.segment_size),
            super::layout::compression_name(cfg.compression)
        );
        println!(
            "{:>11} {:>8} {:>9} {:>10} {:>9} {:>8}",
            "concurrency", "segments", "MB", "stored MB", "seconds", "MB/s"
        );
    }
    let report = |r: &LevelResult| {
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "concurrency": r.concurrency,
                    "segments": r.segments,
                    "segment_size": opts.segment_size,
                    "compression": super::layout::compression_name(cfg.compression),
                    "bytes": r.bytes,
                    "stored_bytes": r.stored_bytes,
                    "seconds": r.seconds,
                    "mbps": r.mbps(),
                })
            );
        } else {
            println!(
                "{:>11} {:>8} {:>9.0} {:>10.0} {:>9.2} {:>8.1}",
                r.concurrency,
                r.segments,
                mb(r.bytes),
                mb(r.stored_bytes),
                r.seconds,
                r.mbps()
            );
        }
    };
    match super::bench::run(&backend, &cfg, &opts, shutdown, report).await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("walrelay bench-archive: {e}");
            1
        }
    }
}

/// `walrelay archive …`: archive maintenance.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub cmd: ArchiveCmd,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ArchiveCmd {
    /// Delete archived segments (and their manifests) by `[archive.retention]`, never what
    /// proxy slots, delayed feeds or local WAL still need.
    Expire(ExpireArgs),
}

/// `walrelay archive expire`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpireArgs {
    /// TOML configuration file (its `[archive]` section and `data_dir` are used).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Data directory: its oldest WAL segment and `slots.json` set the floor.
    #[arg(short = 'D', long)]
    pub data_dir: Option<PathBuf>,
    /// Archive URL (overrides `archive.url`).
    #[arg(long)]
    pub archive: Option<String>,
    #[arg(long)]
    pub system_id: Option<u64>,
    /// Keep segments younger than this (overrides `archive.retention.keep_age`).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub keep_age: Option<std::time::Duration>,
    /// Keep the newest this many bytes (overrides `archive.retention.keep_size`).
    #[arg(long, value_parser = parse_size)]
    pub keep_size: Option<u64>,
    /// Never delete at or past this LSN either (needed when the data directory has no WAL).
    #[arg(long)]
    pub floor: Option<Lsn>,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `walrelay archive …` from its arguments alone; the exit status.
pub async fn archive_main(args: ArchiveArgs) -> i32 {
    match args.cmd {
        ArchiveCmd::Expire(a) => match load(&a.config, &a.data_dir) {
            Ok((cfg, dir)) => match expire(&a, &cfg, &dir).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("walrelay archive expire: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("walrelay archive expire: {e}");
                1
            }
        },
    }
}

async fn expire(
    args: &ExpireArgs,
    cfg: &ArchiveConfig,
    data_dir: &std::path::Path,
) -> Result<(), String> {
    use super::expire;
    let s = settings(cfg, data_dir, &args.archive, args.system_id);
    let mut policy = s.config.retention.clone();
    if let Some(v) = args.keep_age {
        policy.keep_age = v;
    }
    if let Some(v) = args.keep_size {
        policy.keep_size = v;
    }
    if !expire::enabled(&policy) {
        return Err(
            "no retention rule: set archive.retention.keep_age and/or keep_size (or --keep-age, --keep-size)"
                .into(),
        );
    }
    super::probe::open_checked(&s, super::probe::Access::ReadWrite)
        .await
        .map_err(|e| e.to_string())?;
    let reader = ArchiveReader::open(&s).await.map_err(|e| e.to_string())?;
    let seg = reader.wal_segment_size();
    let dir = data_dir.to_path_buf();
    let local = tokio::task::spawn_blocking(move || expire::oldest_local(&dir, seg))
        .await
        .map_err(|e| e.to_string())?;
    let (slots, slot_min) =
        crate::server::slots::Slots::load(data_dir, usize::MAX, None).map_err(|e| e.to_string())?;
    let slot_floor = *slot_min.borrow();
    drop(slots);
    // Delayed (and held) feeds need WAL from their last position on; a feeds.json that
    // cannot be read is an error, never a floor of "nothing needed".
    let feed_floor = crate::delay::state::needed_floor(data_dir).map_err(|e| e.to_string())?;
    let known = [local, slot_floor, feed_floor, args.floor];
    let Some(floor) = known.iter().flatten().min().copied() else {
        return Err(format!(
            "the data directory \"{}\" holds no WAL, so what proxy slots and delayed feeds still need is unknown; use -D with walrelay's data directory, or --floor LSN",
            data_dir.display()
        ));
    };
    let r = expire::expire(
        &reader,
        &policy,
        floor,
        std::time::SystemTime::now(),
        args.dry_run,
    )
    .await
    .map_err(|e| e.to_string())?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for n in &r.deleted {
        println!("{verb} {n}");
    }
    println!(
        "{verb} {} segments ({} bytes), {} kept; floor {floor}",
        r.deleted.len(),
        r.deleted_bytes,
        r.kept
    );
    Ok(())
}

//! `walrelay drill`: the restore firedrill as one command, and its schedule in `run`.
//!
//! Restores a backup (the newest complete one by default) into a throwaway directory with
//! every tablespace mapped inside it, starts PostgreSQL of the backup's major version on a
//! private socket and a free port (no TCP, no archiving), waits for the target (or
//! consistency, or the end of the archive), runs a check query, optionally confirms that it
//! streams from walrelay as a standby, reports the time of each phase and the replay rate,
//! and tears everything down (unless `--keep`).
//!
//! Owns: the drill's phases and options, `[drill]` scheduling ([`spawn_schedule`]) and its
//! metrics. Must not: write to the archive or anywhere outside its working directory; run
//! blocking work (psql, waiting for the server) on an async worker.

pub mod pgctl;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backup::catalog::{BackupMeta, Catalog};
use crate::restore::cli::{self as rcli, ArchiveArgs, TargetArgs};
use crate::restore::recovery::Target;
use report::{gb_per_hour, Failure, Report};

/// Unix time of the last successful drill.
pub const LAST_SUCCESS: &str = "walrelay_drill_last_success_timestamp_seconds";
/// Duration of the last drill (successful or not).
pub const DURATION: &str = "walrelay_drill_duration_seconds";
/// Replay rate of the last successful drill.
pub const REPLAY_RATE: &str = "walrelay_drill_replay_bytes_per_second";
/// Failed drills.
pub const FAILED: &str = "walrelay_drill_failed_total";

/// Default check query.
pub const DEFAULT_CHECK: &str = "SELECT count(*) FROM pg_class";

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "unix time of the last successful restore drill"
    );
    describe_gauge!(
        DURATION,
        Unit::Seconds,
        "duration of the last restore drill"
    );
    describe_gauge!(
        REPLAY_RATE,
        "WAL bytes per second replayed by the last successful drill"
    );
    describe_counter!(FAILED, "failed restore drills");
}

/// `walrelay drill`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// SQL run on the restored server; its answer is in the report.
    #[arg(long, value_name = "SQL", default_value = DEFAULT_CHECK)]
    pub check_query: String,
    /// Start it as a standby of walrelay and confirm pg_stat_wal_receiver says streaming.
    #[arg(long)]
    pub standby: bool,
    /// The standby's primary_conninfo (default: walrelay's server.listen).
    #[arg(long, requires = "standby", value_name = "CONNINFO")]
    pub primary_conninfo: Option<String>,
    /// PostgreSQL bin directory (default /usr/lib/postgresql/<major>/bin, else PATH).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Run PostgreSQL as this user (needed as root; it must be able to read the archive).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Database role for the check query (the backup's superuser).
    #[arg(long, value_name = "ROLE", default_value = "postgres")]
    pub db_user: String,
    /// Working directory (absent or empty; default a new one under the temp dir).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Keep the directory (and stop the server) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Longest wait for the server to reach its target.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "1h")]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "nagios")]
    pub json: bool,
    /// One Nagios line; exit status 0 OK, 2 CRITICAL, 3 UNKNOWN.
    #[arg(long)]
    pub nagios: bool,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn default_workdir() -> PathBuf {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("walrelay-drill-{}-{t}", std::process::id()));
    // Created here, exclusively (fails if the name exists, never follows a link): a
    // directory another local user made in advance in the shared temporary directory would
    // let them edit the restored cluster before PostgreSQL starts.
    use std::os::unix::fs::DirBuilderExt;
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        tracing::warn!(
            "could not create drill directory \"{}\": {e}",
            dir.display()
        );
    }
    dir
}

/// Tablespace locations of the backup (from its archives or its tablespace_map).
fn tablespace_locations(meta: &BackupMeta) -> Result<Vec<(u32, PathBuf)>, String> {
    let map = meta
        .tablespace_map
        .as_deref()
        .map(crate::restore::unpack::parse_tablespace_map)
        .transpose()?
        .unwrap_or_default();
    let mut out = Vec::new();
    for a in &meta.archives {
        if let Some(oid) = a.tablespace_oid {
            let loc = a
                .location
                .as_ref()
                .map(PathBuf::from)
                .or_else(|| map.iter().find(|(o, _)| *o == oid).map(|(_, l)| l.clone()))
                .ok_or_else(|| format!("backup {}: no location for tablespace {oid}", meta.id))?;
            out.push((oid, loc));
        }
    }
    Ok(out)
}

/// Runs one drill.
pub async fn run(args: &DrillArgs) -> Report {
    let t0 = Instant::now();
    let mut rep = Report {
        check_query: args.check_query.clone(),
        ..Default::default()
    };
    let work = args.workdir.clone().unwrap_or_else(default_workdir);
    let r = drill(args, &work, &mut rep).await;
    if let Err((phase, kind, e)) = r {
        rep.fail(phase, kind, e);
    } else {
        rep.ok = true;
    }
    let keep = args.keep;
    let w = work.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if !keep {
            let _ = std::fs::remove_dir_all(&w);
        }
    })
    .await;
    if keep {
        rep.kept = Some(work.display().to_string());
    }
    rep.total_seconds = secs(t0.elapsed());
    rep
}

type PhaseErr = (&'static str, Failure, String);

async fn drill(args: &DrillArgs, work: &Path, rep: &mut Report) -> Result<(), PhaseErr> {
    let setup = |e: String| ("setup", Failure::Setup, e);
    let mut target = args.target.clone();
    let t = target.target().map_err(|e| setup(e.to_string()))?;
    rep.target = match &t {
        Target::Latest => "latest".to_string(),
        Target::Immediate => "immediate".to_string(),
        Target::Time(x) => format!("time {x}"),
        Target::Xid(x) => format!("xid {x}"),
        Target::Name(x) => format!("name {x}"),
        Target::Lsn(x) => format!("lsn {x}"),
    };
    let run_as = match &args.run_as {
        Some(u) => Some(pgctl::lookup_user(u).map_err(setup)?),
        None if pgctl::is_root() => {
            return Err(setup(
                "PostgreSQL does not run as root: use --run-as USER".to_string(),
            ))
        }
        None => None,
    };
    // the backup: chosen once, restored by ID
    let t_restore = Instant::now();
    let settings = rcli::archive_settings(&args.archive).map_err(|e| setup(e.to_string()))?;
    let cat = Catalog::open(&settings)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let (meta, _) = rcli::select(&cat, target.backup.as_deref(), &t, false)
        .await
        .map_err(|e| ("restore", Failure::Critical, e.to_string()))?;
    rep.backup_id = Some(meta.id.clone());
    rep.backup_start_lsn = Some(meta.start_lsn.clone());
    rep.backup_stop_lsn = Some(meta.stop_lsn.clone());
    rep.server_version = Some(meta.server_version);
    let bin = {
        let given = args.pg_bin.clone();
        let major = pgctl::major_of(meta.server_version);
        tokio::task::spawn_blocking(move || pgctl::find_bin(given.as_deref(), major))
            .await
            .map_err(|e| setup(e.to_string()))?
            .map_err(setup)?
    };
    crate::restore::core::prepare_empty_dir(work, "drill directory")
        .map_err(|e| setup(e.to_string()))?;
    let data = work.join("data");
    let mapping = tablespace_locations(&meta)
        .map_err(setup)?
        .into_iter()
        .map(|(oid, loc)| (loc, work.join("tblspc").join(oid.to_string())))
        .collect();
    target.backup = Some(meta.id.clone());
    let ra = rcli::RestoreArgs {
        dir: data.clone(),
        archive: args.archive.clone(),
        target,
        force: false,
        standby: args.standby,
        primary_conninfo: args.primary_conninfo.clone(),
        slot: None,
        tablespace_mapping: mapping,
    };
    rcli::run(&ra)
        .await
        .map_err(|e| ("restore", Failure::Critical, e.to_string()))?;
    rep.phase("restore", secs(t_restore.elapsed()));

    // the server: blocking work on a blocking thread
    let o = ServeOptions {
        bin,
        data,
        work: work.to_path_buf(),
        run_as,
        db_user: args.db_user.clone(),
        check_query: args.check_query.clone(),
        standby: args.standby,
        stop_lsn: meta.stop(),
        start_lsn: meta.start(),
        timeout: args.timeout,
    };
    let mut r2 = rep.clone();
    let res = tokio::task::spawn_blocking(move || {
        let r = serve(&o, &mut r2);
        (r, r2)
    })
    .await
    .map_err(|e| {
        (
            "start",
            Failure::Critical,
            format!("drill task failed: {e}"),
        )
    })?;
    *rep = res.1;
    res.0
}

struct ServeOptions {
    bin: PathBuf,
    data: PathBuf,
    work: PathBuf,
    run_as: Option<pgctl::RunAs>,
    db_user: String,
    check_query: String,
    standby: bool,
    stop_lsn: crate::Lsn,
    start_lsn: crate::Lsn,
    timeout: Duration,
}

fn serve(o: &ServeOptions, rep: &mut Report) -> Result<(), PhaseErr> {
    if let Some(r) = o.run_as {
        pgctl::chown_tree(&o.work, r).map_err(|e| {
            (
                "start",
                Failure::Setup,
                format!("chown {}: {e}", o.work.display()),
            )
        })?;
    }
    let t_start = Instant::now();
    let mut srv = pgctl::Server::start(&pgctl::StartOptions {
        bin: &o.bin,
        data: &o.data,
        work: &o.work,
        run_as: o.run_as,
        db_user: &o.db_user,
    })
    .map_err(|e| ("start", Failure::Critical, e))?;
    let died = |srv: &pgctl::Server, st: std::process::ExitStatus| {
        format!(
            "PostgreSQL exited ({st}); its log ends:\n{}",
            srv.log_tail(15)
        )
    };
    // accepting connections (consistent)
    loop {
        if let Some(st) = srv.exited() {
            return Err(("start", Failure::Critical, died(&srv, st)));
        }
        if srv.psql("select 1").is_ok() {
            break;
        }
        if t_start.elapsed() > o.timeout {
            return Err((
                "start",
                Failure::Critical,
                format!(
                    "not accepting connections after {:?}:\n{}",
                    o.timeout,
                    srv.log_tail(15)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    rep.phase("start", secs(t_start.elapsed()));
    // replay to the target
    let t_replay = Instant::now();
    let replay_lsn = loop {
        if let Some(st) = srv.exited() {
            return Err(("replay", Failure::Critical, died(&srv, st)));
        }
        let q = srv.psql(
            "select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), \
             case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() else '' end",
        );
        if let Ok(row) = q {
            let f: Vec<&str> = row.split('|').collect();
            if let [rec, lsn, pause] = f.as_slice() {
                let lsn: Option<crate::Lsn> = lsn.parse().ok();
                let done = if o.standby {
                    *rec == "t" && lsn.is_some_and(|l| l >= o.stop_lsn)
                } else {
                    *rec == "f" || *pause == "paused"
                };
                if done {
                    break lsn;
                }
            }
        }
        if t_replay.elapsed() > o.timeout {
            return Err((
                "replay",
                Failure::Critical,
                format!(
                    "target not reached after {:?}:\n{}",
                    o.timeout,
                    srv.log_tail(15)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    rep.phase("replay", secs(t_replay.elapsed()));
    if let Some(l) = replay_lsn {
        rep.replay_lsn = Some(l.to_string());
        rep.replay_bytes = l.0.saturating_sub(o.start_lsn.0);
    }
    rep.replay_seconds = secs(t_start.elapsed());
    rep.replay_gb_per_hour = gb_per_hour(rep.replay_bytes, rep.replay_seconds);
    // the check query
    let t_check = Instant::now();
    let v = srv.psql(&o.check_query).map_err(|e| {
        (
            "check",
            Failure::Critical,
            format!("check query failed: {e}"),
        )
    })?;
    rep.check_result = Some(v);
    rep.phase("check", secs(t_check.elapsed()));
    if o.standby {
        let t_sb = Instant::now();
        let wait = o.timeout.min(Duration::from_secs(120));
        loop {
            let st = srv
                .psql("select coalesce((select status from pg_stat_wal_receiver), 'none')")
                .unwrap_or_default();
            if st == "streaming" {
                rep.standby_status = Some(st);
                break;
            }
            if t_sb.elapsed() > wait {
                rep.standby_status = Some(st.clone());
                return Err((
                    "standby",
                    Failure::Critical,
                    format!(
                        "pg_stat_wal_receiver.status is \"{st}\", not streaming, after {wait:?}:\n{}",
                        srv.log_tail(10)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        rep.phase("standby", secs(t_sb.elapsed()));
    }
    let t_stop = Instant::now();
    srv.stop(Duration::from_secs(60));
    rep.phase("stop", secs(t_stop.elapsed()));
    Ok(())
}

/// `walrelay drill`: prints the report; the exit status.
pub async fn main(args: DrillArgs) -> i32 {
    let rep = run(&args).await;
    if args.json {
        println!("{}", rep.json());
    } else if args.nagios {
        println!("{}", rep.nagios());
    } else {
        print!("{}", rep.text());
    }
    rep.exit_code(args.nagios)
}

/// Drill arguments from `[drill]` (the archive from the same configuration file).
pub fn args_from_config(cfg: &crate::config::DrillConfig, config: Option<PathBuf>) -> DrillArgs {
    DrillArgs {
        archive: ArchiveArgs {
            config,
            archive: None,
            system_id: None,
        },
        target: TargetArgs {
            backup: Some(cfg.backup.clone()),
            ..Default::default()
        },
        check_query: cfg.check_query.clone(),
        standby: cfg.standby,
        primary_conninfo: None,
        pg_bin: cfg.pg_bin.clone(),
        run_as: cfg.run_as.clone(),
        db_user: cfg.db_user.clone(),
        workdir: None,
        keep: false,
        timeout: cfg.timeout,
        json: false,
        nagios: false,
    }
}

/// `[drill] every = "24h"` in `walrelay run`: one tracked task, the first drill `every`
/// after start, then every `every`; `None` when `every` is 0.
pub fn spawn_schedule(
    cfg: &crate::config::DrillConfig,
    config: Option<PathBuf>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.every.is_zero() {
        return None;
    }
    describe_metrics();
    let every = cfg.every;
    let args = args_from_config(cfg, config);
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let rep = run(&args).await;
            record(&rep);
        }
    }))
}

/// Publishes a drill's result as metrics and a log line.
pub fn record(rep: &Report) {
    metrics::gauge!(DURATION).set(rep.total_seconds);
    if rep.ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!(LAST_SUCCESS).set(now);
        if rep.replay_seconds > 0.0 {
            metrics::gauge!(REPLAY_RATE).set(rep.replay_bytes as f64 / rep.replay_seconds);
        }
        tracing::info!("restore drill: {}", rep.nagios());
    } else {
        metrics::counter!(FAILED).increment(1);
        tracing::error!("restore drill: {}", rep.nagios());
    }
}

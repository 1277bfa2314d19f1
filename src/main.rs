//! The `walrelay` command: wiring only (CLI, configuration, tasks, ordered shutdown).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use walrelay::cluster::ClusterHandle;
use walrelay::config::{parse_duration, Config};
use walrelay::lsn::Lsn;
use walrelay::pgreceivewal;
use walrelay::server::{Server, ServerSettings};

#[derive(Parser)]
#[command(
    name = "walrelay",
    version,
    about = "Receives, stores, archives and re-serves PostgreSQL WAL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream WAL from a primary into a directory: pg_receivewal, same options (see
    /// `walrelay receive --help`; installed under the name pg_receivewal it is pg_receivewal).
    Receive(ReceiveArgs),
    /// Run the long-running server (receive, store; serve, archive as configured).
    Run(RunArgs),
    /// Print a SCRAM-SHA-256 verifier (or with --md5 an md5 hash) for [server.users],
    /// reading the password from standard input.
    Passwd(PasswdArgs),
    /// restore_command: fetch WAL file %f from the archive into %p.
    WalFetch(walrelay::archive::cli::WalFetchArgs),
    /// Restore a base backup from the archive into a directory, ready to recover to a target.
    Restore(walrelay::restore::RestoreArgs),
    /// Restore drill: restore a backup into a throwaway directory, start PostgreSQL, replay,
    /// check, report (--json, --nagios), tear down.
    Drill(walrelay::drill::DrillArgs),
    /// Check the archive: every segment FOUND / MISSING / CORRUPT, timeline histories.
    Verify(walrelay::archive::cli::VerifyArgs),
    /// Measure upload throughput to an archive by concurrency (uploads throwaway
    /// segment-sized objects under a prefix of their own, then deletes them).
    BenchArchive(walrelay::archive::cli::BenchArchiveArgs),
    /// Archive maintenance: `archive expire [--dry-run]` deletes old archived WAL.
    Archive(walrelay::archive::cli::ArchiveArgs),
    /// Take a base backup over the replication protocol into the archive (docs/backups.md).
    Backup(walrelay::backup::cli::BackupArgs),
    /// List the base backups in the archive: LSNs, size, complete or the first missing WAL.
    Backups(walrelay::backup::cli::BackupsArgs),
    /// Control delayed feeds of a running walrelay: list, pause, resume, advance.
    Feed(FeedArgs),
    /// List decoded transactions (commit time, xid, LSN, dropped relations) to find the bad
    /// one: from a running walrelay's commit index, or with -D from segment files.
    Xacts(XactsArgs),
    /// Check upstream, slot, system identifier, archive, lag, disk, feeds and recent errors;
    /// exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios).
    Check(walrelay::check::CheckArgs),
    /// What a running walrelay receives, stores, archives and serves, with lags and the
    /// last errors.
    Status(StatusArgs),
    /// Cluster-wide restore points: `restore-point create NAME --group G`.
    RestorePoint(walrelay::fleet::cli::RestorePointArgs),
    /// List the cluster-wide restore points recorded in the archive.
    RestorePoints(walrelay::fleet::cli::RestorePointsArgs),
    /// Man pages and shell completions (for packagers): `generate man DIR`,
    /// `generate completions SHELL`.
    #[command(hide = true)]
    Generate(walrelay::generate::GenerateArgs),
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    control: ControlArgs,
}

/// Where the control endpoint of a running walrelay is (see `docs/security.md`).
#[derive(Args)]
struct ControlArgs {
    /// Control endpoint: its Unix socket, or http://HOST:PORT for control.listen
    /// (default: $WALRELAY_CONTROL, else from --data-dir or --config). `walrelay feed`
    /// takes it repeatedly and acts on every instance listed (an HA pair, docs/ha.md).
    #[arg(long, value_name = "SOCKET|URL", global = true)]
    control: Vec<String>,
    /// Data directory of the running walrelay (its control socket is in there).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// walrelay's configuration file (to find control.socket or data_dir).
    #[arg(short = 'c', long, global = true)]
    config: Option<PathBuf>,
    /// Bearer token file for an http:// control endpoint (default:
    /// $WALRELAY_CONTROL_TOKEN_FILE, else control.token_file of --config).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print the JSON answer.
    #[arg(long, global = true)]
    json: bool,
}

impl ControlArgs {
    /// [`ControlArgs::target`], ignoring a --config that is not a `run` configuration when
    /// --control or --data-dir says where walrelay is (the `--group` commands' file).
    fn target_lenient(&self) -> Result<walrelay::admin::Target, String> {
        self.target().or_else(
            |e| match !self.control.is_empty() || self.data_dir.is_some() {
                true if self.control.len() <= 1 => walrelay::endpoints::resolve_target(
                    self.control.first().map(String::as_str),
                    &|k| std::env::var(k).ok(),
                    self.data_dir.as_deref(),
                    None,
                    self.token_file.as_deref(),
                ),
                _ => Err(e),
            },
        )
    }

    fn target(&self) -> Result<walrelay::admin::Target, String> {
        if self.control.len() > 1 {
            return Err("--control may be given more than once only for walrelay feed".into());
        }
        self.target_of(self.control.first().map(String::as_str))
    }

    /// Every `--control` given, labelled as given.
    fn targets(&self) -> Result<Vec<(String, walrelay::admin::Target)>, String> {
        let t = |c: &String| Ok((c.clone(), self.target_of(Some(c))?));
        self.control.iter().map(t).collect()
    }

    fn target_of(&self, control: Option<&str>) -> Result<walrelay::admin::Target, String> {
        walrelay::endpoints::resolve_target(
            control,
            &|k| std::env::var(k).ok(),
            self.data_dir.as_deref(),
            self.config.as_deref(),
            self.token_file.as_deref(),
        )
    }
}

#[derive(Args)]
struct FeedArgs {
    #[command(subcommand)]
    action: FeedAction,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Subcommand)]
enum FeedAction {
    /// Position, delay, hold and the next commit waiting, for every feed.
    List,
    /// Hold the feed where it is (the standby keeps its connection).
    Pause {
        /// The feed (or --group).
        #[arg(required_unless_present = "group")]
        name: Option<String>,
        /// Every delayed feed of every cluster of this [[group]] (needs -c).
        #[arg(long, conflicts_with = "name")]
        group: Option<String>,
    },
    /// Drop any hold (and acknowledge a tripwire): the delay alone decides again.
    Resume {
        /// The feed (or --group).
        #[arg(required_unless_present = "group")]
        name: Option<String>,
        /// Every delayed feed of every cluster of this [[group]] (needs -c).
        #[arg(long, conflicts_with = "name")]
        group: Option<String>,
    },
    /// Move the feed to exactly this point, past the delay if need be, and hold it there.
    Advance {
        /// The feed (or --group).
        #[arg(required_unless_present = "group")]
        name: Option<String>,
        /// Every delayed feed of every cluster of this [[group]], all or nothing (needs -c).
        #[arg(long, conflicts_with = "name")]
        group: Option<String>,
        /// Just before the first commit after this time (e.g. "2026-11-21 18:58:59+00").
        #[arg(long, group = "target")]
        to_time: Option<String>,
        /// Just before this transaction's commit.
        #[arg(long, group = "target")]
        before_xid: Option<u32>,
        /// Exactly this LSN.
        #[arg(long, group = "target")]
        to_lsn: Option<Lsn>,
        /// Just after this named restore point (pg_create_restore_point).
        #[arg(long, group = "target")]
        to_restore_point: Option<String>,
    },
}

#[derive(Args)]
struct XactsArgs {
    /// Oldest commit time to list (e.g. "2026-11-21 18:00", "now-2h", "@1700000000").
    #[arg(long)]
    since: Option<String>,
    /// Newest commit time to list.
    #[arg(long)]
    until: Option<String>,
    /// Only commits that drop relations (DROP TABLE, TRUNCATE, ...).
    #[arg(long)]
    drops_only: bool,
    /// Decode the segment files in this directory instead of asking a running walrelay.
    #[arg(short = 'D', long, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// The cluster whose commit index to list (when several clusters have feeds).
    #[arg(long)]
    cluster: Option<String>,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args)]
struct PasswdArgs {
    /// User name (the md5 hash depends on it).
    user: String,
    /// Print an md5 hash instead (only for clients that cannot do SCRAM).
    #[arg(long)]
    md5: bool,
}

/// `walrelay receive`: pg_receivewal's own command line (see `walrelay receive --help`).
#[derive(Args)]
#[command(disable_help_flag = true)]
struct ReceiveArgs {
    /// pg_receivewal's options.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Connection string of the primary (overrides upstream.conninfo).
    #[arg(long)]
    upstream: Option<String>,
    /// Data directory (overrides data_dir; default ./walrelay-data).
    #[arg(short = 'D', long)]
    data_dir: Option<PathBuf>,
    /// Replication slot on the primary (overrides upstream.slot; default "walrelay").
    #[arg(long)]
    slot: Option<String>,
    /// fsync and report after every received message, also while catching up (by default:
    /// at once when caught up with the primary). Overrides upstream.synchronous.
    #[arg(long)]
    synchronous: bool,
    /// Walsender listen address (overrides server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Archive URL (overrides archive.url).
    #[arg(long)]
    archive: Option<String>,
    /// Prometheus endpoint address (overrides metrics.listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Status interval, e.g. 10s (overrides upstream.status_interval).
    #[arg(long, value_parser = parse_duration)]
    status_interval: Option<Duration>,
    /// Drop a silent upstream connection after this long, e.g. 60s; 0 = never (overrides
    /// upstream.receive_timeout).
    #[arg(long, value_parser = parse_duration)]
    receive_timeout: Option<Duration>,
    /// Output verbose messages.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<walrelay::logging::LogFormat>,
}

fn init_logging(default: &str) {
    walrelay::logging::init(walrelay::logging::LogFormat::Text, None, default);
}

fn main() -> ExitCode {
    // Multi-call binary: invoked as `pg_receivewal`, walrelay is pg_receivewal; `walrelay
    // receive` is the same mode under walrelay's name.
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv0 = argv.first().cloned().unwrap_or_default();
    if pgreceivewal::invoked_as_pg_receivewal(&argv0) {
        let inv = pgreceivewal::Invocation::from_argv0(&argv0);
        return exit_code(pgreceivewal::main(inv, argv[1..].to_vec()));
    }
    if argv.get(1).map(String::as_str) == Some("receive") {
        let inv = pgreceivewal::Invocation::walrelay_receive(&argv0);
        return exit_code(pgreceivewal::main(inv, argv[2..].to_vec()));
    }
    let cli = Cli::parse();
    if let Command::Receive(a) = &cli.command {
        let inv = pgreceivewal::Invocation::walrelay_receive(&argv0);
        return exit_code(pgreceivewal::main(inv, a.args.clone()));
    }
    if let Command::Generate(a) = &cli.command {
        let cmd = <Cli as clap::CommandFactory>::command();
        return match walrelay::generate::main(a, cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("walrelay: error: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    if matches!(cli.command, Command::Run(_)) {
        // Two malloc arenas, not 8 per core: buffers allocated on blocking-pool threads and
        // freed on workers otherwise stay in per-thread arenas (docs/benchmarks.md, issue 14).
        // And a fixed mmap threshold of 256 kB: glibc's default raises it to the size of every
        // large block freed (up to 32 MB), after which the upstream's 512 kB read buffers, the
        // read cache's and the archive's 1 MB pieces — freed in another order than allocated —
        // fragment the heap; mmapped, each goes back to the kernel when its last slice is
        // dropped. Peak RSS of `bench/memory.sh` 148 -> 101 MB for the same CPU (docs/benchmarks.md).
        // SAFETY: mallopt only sets allocator parameters, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walrelay: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The work runs on a runtime worker, not on the thread blocked in `block_on`: socket
    // readiness is then handled by the worker that polls the task, without a wake-up hop.
    let result = rt.block_on(async {
        let work = tokio::spawn(async move {
            match cli.command {
                Command::Receive(_) => Ok(()), // handled before the runtime starts
                Command::Run(a) => run(a).await,
                Command::Passwd(a) => passwd(a),
                Command::WalFetch(a) => exit_with(walrelay::archive::cli::wal_fetch_main(a).await),
                Command::Verify(a) => exit_with(walrelay::archive::cli::verify_main(a).await),
                Command::Restore(a) => exit_with(walrelay::restore::main(a).await),
                Command::Drill(a) => exit_with(walrelay::drill::main(a).await),
                Command::Archive(a) => exit_with(walrelay::archive::cli::archive_main(a).await),
                Command::Backup(a) => exit_with(walrelay::backup::cli::backup_main(a).await),
                Command::Backups(a) => exit_with(walrelay::backup::cli::backups_main(a).await),
                Command::BenchArchive(a) => {
                    init_logging("warn");
                    exit_with(
                        walrelay::archive::cli::bench_archive_main(
                            a,
                            pgreceivewal::shutdown_signal(),
                        )
                        .await,
                    )
                }
                Command::Feed(a) => feed(a).await,
                Command::Xacts(a) => xacts(a).await,
                Command::Check(a) => exit_with(walrelay::check::main(a).await),
                Command::Status(a) => {
                    let doc = walrelay::statusview::fetch(&a.control.target()?).await?;
                    if a.control.json {
                        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                    } else {
                        print!("{}", walrelay::statusview::text(&doc));
                    }
                    Ok(())
                }
                Command::Generate(_) => Ok(()), // handled before the runtime starts
                Command::RestorePoint(a) => walrelay::fleet::cli::restore_point_main(a).await,
                Command::RestorePoints(a) => walrelay::fleet::cli::restore_points_main(a).await,
            }
        });
        work.await
            .unwrap_or_else(|e| Err(format!("internal error: {e}")))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("walrelay: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Exit status of the archive subcommands (which print their own messages).
fn exit_with(code: i32) -> Result<(), String> {
    if code == 0 {
        Ok(())
    } else {
        std::process::exit(code)
    }
}

fn passwd(a: PasswdArgs) -> Result<(), String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        eprint!("Password for {} (echoed): ", a.user);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("could not read the password: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("empty password".into());
    }
    if a.md5 {
        println!(
            "{}",
            postgres_protocol::password::md5(password.as_bytes(), &a.user)
        );
    } else {
        println!("{}", walrelay::server::auth::scram_verifier(password));
    }
    Ok(())
}

async fn run(a: RunArgs) -> Result<(), String> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let log_format = match (a.log_format, cfg.log.format.as_deref()) {
        (Some(f), _) => f,
        (None, Some(f)) => walrelay::logging::LogFormat::parse(f)?,
        (None, None) => walrelay::logging::LogFormat::Text,
    };
    walrelay::logging::init(
        log_format,
        cfg.log.level.as_deref(),
        if a.verbose > 0 { "debug" } else { "info" },
    );
    let file_cfg = cfg.clone(); // what a SIGHUP reload compares with
    apply_run_flags(&mut cfg, &a)?;
    // a bad control token file or certificate fails before the data directory is touched
    walrelay::endpoints::load_control_secrets(&cfg)?;
    let metrics = match &cfg.metrics.listen {
        Some(_) => {
            let handle = walrelay::metrics::install_recorder()?;
            walrelay::archive::describe_metrics();
            Some(handle)
        }
        None => None,
    };
    let multi = cfg.is_multi_cluster();
    let fleet = walrelay::fleet::Fleet::from_config(&cfg)?; // [[group]]s checked before start
    let shutdown = pgreceivewal::shutdown_signal();
    let mut clusters = Vec::new();
    for c in cfg.clusters() {
        if multi {
            walrelay::ops::cluster(&c.name).name_in_logs();
        }
        let h = ClusterHandle::start(&c, cfg.shared_server().is_some(), shutdown.clone())
            .await
            .map_err(|e| {
                if multi {
                    format!("cluster \"{}\": {e}", c.name)
                } else {
                    e
                }
            })?;
        clusters.push(h);
    }
    // the shared listener of several clusters (routing by name) stops with the walsenders
    let (shared_stop_tx, shared_stop) = watch::channel(false);
    let shared = match cfg.shared_server() {
        Some(sc) => Some(start_shared_listener(&cfg, sc, &clusters, shared_stop).await?),
        None => None,
    };
    let sources: Vec<_> = clusters.iter().map(|c| c.sources.clone()).collect();
    walrelay::endpoints::start(&cfg, metrics, &sources, shutdown.clone()).await?;
    let drills = walrelay::drill::spawn_schedule(&cfg.drill, a.config.clone(), shutdown.clone());
    // periodic cluster-wide restore points ([[group]] every), tracked and joined below
    // (stopped below when shutdown begins, also after a fatal receiver error)
    let (rp_stop_tx, rp_stop) = watch::channel(false);
    let restore_point_tasks = walrelay::fleet::schedule::spawn(fleet, rp_stop);
    for c in &clusters {
        tracing::info!(
            "walrelay starting{}: data directory \"{}\"",
            if multi {
                format!(" cluster \"{}\"", c.name)
            } else {
                String::new()
            },
            c.data_dir_path().display()
        );
    }
    let (server, listen, feeds) = match (&shared, clusters.as_slice()) {
        (Some(s), _) => (Some(s.access_reloader()), cfg.server.listen.clone(), None),
        (None, [one]) => (
            one.server.as_ref().map(|s| s.access_reloader()),
            one.listen.clone(),
            one.feeds.clone(),
        ),
        (None, _) => (None, None, None),
    };
    walrelay::reload::spawn(
        walrelay::reload::ReloadTargets {
            path: a.config.clone(),
            loaded: file_cfg,
            server,
            listen,
            feeds,
        },
        shutdown.clone(),
    )?;
    for c in &mut clusters {
        c.spawn_receiver(shutdown.clone());
    }
    // systemd (Type=notify): the stores have recovered and every listener is up.
    walrelay::sdnotify::ready("streaming from the upstream", shutdown.clone());
    // One cluster: its receiver's end (shutdown or a fatal error) ends walrelay, as before.
    // Several: a cluster whose receiver fails keeps serving what it stored, the others go
    // on; walrelay ends at the shutdown signal and then reports the failures.
    let mut failed = Vec::new();
    for c in &mut clusters {
        if let Err(e) = c.wait_receiver().await {
            if !multi {
                failed.push(e);
                break;
            }
            tracing::error!("cluster \"{}\": {e}", c.name);
            c.ops.record_error("upstream", e.clone());
            failed.push(format!("cluster \"{}\": {e}", c.name));
        }
    }
    walrelay::sdnotify::stopping();
    if let Some(t) = drills {
        t.abort();
        let _ = t.await;
    }
    let _ = rp_stop_tx.send(true);
    for t in restore_point_tasks {
        let _ = t.await;
    }
    // The walsenders stop after the receivers; standbys get what is flushed before the
    // stores close (ordered walsender shutdown), cluster by cluster.
    let _ = shared_stop_tx.send(true);
    if let Some(s) = shared {
        s.wait().await;
    }
    let mut close_errors = Vec::new();
    for c in clusters {
        let name = c.name.clone();
        if let Err(e) = c.stop().await {
            close_errors.push(if multi {
                format!("cluster \"{name}\": {e}")
            } else {
                e
            });
        }
    }
    if let Some(e) = failed.into_iter().chain(close_errors).next() {
        return Err(e);
    }
    tracing::info!("walrelay stopped");
    Ok(())
}

/// Command-line flags over the file: the single-cluster keys (--upstream, --data-dir,
/// --slot, --listen) only in the single-cluster form; the upstream timings apply to every
/// cluster.
fn apply_run_flags(cfg: &mut Config, a: &RunArgs) -> Result<(), String> {
    if cfg.is_multi_cluster() {
        if a.upstream.is_some() || a.data_dir.is_some() || a.slot.is_some() || a.listen.is_some() {
            return Err("--upstream, --data-dir, --slot and --listen apply to a single cluster: with [[cluster]] sections set them in each [[cluster]]".into());
        }
    } else {
        if let Some(v) = &a.upstream {
            cfg.upstream.conninfo = Some(v.clone());
        }
        if let Some(v) = &a.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &a.slot {
            cfg.upstream.slot = Some(v.clone());
        }
        if let Some(v) = &a.listen {
            cfg.server.listen = Some(v.clone());
        }
    }
    if let Some(v) = &a.archive {
        cfg.archive.url = Some(v.clone());
    }
    if let Some(v) = &a.metrics_listen {
        cfg.metrics.listen = Some(v.clone());
    }
    let mut upstreams: Vec<&mut walrelay::config::UpstreamConfig> = vec![&mut cfg.upstream];
    upstreams.extend(cfg.cluster.iter_mut().map(|c| &mut c.upstream));
    for u in upstreams {
        if a.synchronous {
            u.synchronous = true;
        }
        if let Some(v) = a.status_interval {
            u.status_interval = v;
        }
        if let Some(v) = a.receive_timeout {
            u.receive_timeout = v;
        }
    }
    Ok(())
}

/// The top-level `[server]` of a multi-cluster configuration: one listener for every
/// cluster, routing each connection by the cluster it names (see docs/fleet.md).
async fn start_shared_listener(
    cfg: &Config,
    sc: &walrelay::config::ServerConfig,
    clusters: &[ClusterHandle],
    stop: watch::Receiver<bool>,
) -> Result<walrelay::server::ServerHandle, String> {
    let settings = ServerSettings::from_config(sc).map_err(|e| e.to_string())?;
    for (user, cluster) in &sc.route_users {
        if !clusters.iter().any(|c| &c.name == cluster) {
            return Err(format!(
                "server.route_users: user \"{user}\" is mapped to cluster \"{cluster}\", which is not configured"
            ));
        }
    }
    let targets = clusters
        .iter()
        .filter_map(|c| {
            c.server
                .as_ref()
                .map(|s| (c.name.clone(), s.route_target()))
        })
        .collect();
    // its socket lock files (and an unused slot file) live beside the first cluster's data
    let state_dir = cfg
        .cluster
        .first()
        .map(|c| c.data_dir.join("shared-listener"))
        .unwrap_or_else(|| cfg.data_dir.join("shared-listener"));
    tokio::fs::create_dir_all(&state_dir)
        .await
        .map_err(|e| format!("could not create \"{}\": {e}", state_dir.display()))?;
    Server::start_shared(settings, targets, sc.route_users.clone(), state_dir, stop)
        .await
        .map_err(|e| e.to_string())
}

async fn feed(a: FeedArgs) -> Result<(), String> {
    use walrelay::delay::api::{feed_command, FeedCommand};
    let (target, config, json) = (
        a.control.target_lenient(),
        a.control.config.clone(),
        a.control.json,
    );
    let targets = match a.control.control.len() > 1 {
        true => a
            .control
            .targets()
            .map(|t| t.into_iter().map(|(l, t)| (l, Ok(t))).collect()),
        false => Ok(vec![(String::new(), target)]),
    };
    let group = |g: &str, action: &'static str, p: &[(&'static str, String)]| {
        feed_group_each(
            targets.clone(),
            config.clone(),
            g.to_string(),
            action,
            p.to_vec(),
            json,
        )
    };
    let cmd = match a.action {
        FeedAction::List => FeedCommand::List,
        FeedAction::Pause { group: Some(g), .. } => return group(&g, "pause", &[]).await,
        FeedAction::Resume { group: Some(g), .. } => return group(&g, "resume", &[]).await,
        FeedAction::Pause { name, .. } => FeedCommand::Pause(name.unwrap_or_default()),
        FeedAction::Resume { name, .. } => FeedCommand::Resume(name.unwrap_or_default()),
        FeedAction::Advance {
            name,
            group: g,
            to_time,
            before_xid,
            to_lsn,
            to_restore_point,
        } => {
            let p: Vec<(&'static str, String)> = [
                ("to_time", to_time),
                ("before_xid", before_xid.map(|x| x.to_string())),
                ("to_lsn", to_lsn.map(|l| l.to_string())),
                ("to_restore_point", to_restore_point),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            if p.is_empty() {
                return Err(
                    "feed advance needs --to-time, --before-xid, --to-lsn or --to-restore-point"
                        .into(),
                );
            }
            match g {
                Some(g) => return group(&g, "advance", &p).await,
                None => FeedCommand::Advance(name.unwrap_or_default(), p),
            }
        }
    };
    if a.control.control.len() > 1 {
        let (out, failed) =
            walrelay::delay::api::feed_fanout(&a.control.targets()?, &cmd, a.control.json).await;
        print!("{out}");
        return match failed.len() {
            0 => Ok(()),
            n => Err(format!("failed on {n} instance(s): {}", failed.join("; "))),
        };
    }
    print!(
        "{}",
        feed_command(&a.control.target()?, &cmd, a.control.json).await?
    );
    Ok(())
}

/// Control endpoints by their `--control` label (each possibly unresolvable).
type LabelledTargets = Vec<(String, Result<walrelay::admin::Target, String>)>;

/// `feed … --group` on every `--control` given (an HA pair, docs/ha.md): each instance in
/// turn, reported on stderr, non-zero if any failed.
async fn feed_group_each(
    targets: Result<LabelledTargets, String>,
    config: Option<PathBuf>,
    group: String,
    action: &'static str,
    params: Vec<(&'static str, String)>,
    json: bool,
) -> Result<(), String> {
    use walrelay::fleet::cli::feed_group;
    let mut targets = targets?;
    if targets.len() == 1 {
        let (_, t) = targets.remove(0);
        return feed_group(t, config, group, action, params, json).await;
    }
    let mut failed = Vec::new();
    for (label, t) in targets {
        match feed_group(
            t,
            config.clone(),
            group.clone(),
            action,
            params.clone(),
            json,
        )
        .await
        {
            Ok(()) => eprintln!("walrelay at {label}: ok"),
            Err(e) => {
                eprintln!("walrelay at {label}: failed: {e}");
                failed.push(format!("{label}: {e}"));
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        n => Err(format!("failed on {n} instance(s): {}", failed.join("; "))),
    }
}

async fn xacts(a: XactsArgs) -> Result<(), String> {
    use walrelay::delay::api;
    let list = match &a.directory {
        Some(dir) => {
            let filter = api::XactFilter {
                since: api::parse_time_arg(a.since.as_deref())?,
                until: api::parse_time_arg(a.until.as_deref())?,
                drops_only: a.drops_only,
                limit: 0,
            };
            api::xacts_local(dir, &filter)?
        }
        None if a.cluster.is_some() => {
            walrelay::endpoints::xacts_of_cluster(
                &a.control.target()?,
                a.cluster.as_deref().unwrap_or_default(),
                a.since.as_deref(),
                a.until.as_deref(),
                a.drops_only,
            )
            .await?
        }
        None => {
            api::xacts_remote(
                &a.control.target()?,
                a.since.as_deref(),
                a.until.as_deref(),
                a.drops_only,
            )
            .await?
        }
    };
    if a.control.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "xacts": list })).unwrap_or_default()
        );
    } else {
        print!("{}", api::format_xacts(&list));
    }
    Ok(())
}

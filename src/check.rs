//! `walrelay check [--nagios|--json]`: one verdict on everything walrelay depends on, like
//! `barman check` or `pgbackrest check`.
//!
//! Owns: the list of checks, their thresholds (`[check]`), the verdict (worst item wins)
//! and the three outputs (text lines, one Nagios line with perfdata, JSON). Exit status is
//! the Nagios one in every output: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
//!
//! What it looks at: the upstream (its own replication connection: REPLICATION privilege,
//! IDENTIFY_SYSTEM, READ_REPLICATION_SLOT), the data directory (control file, free space),
//! the archive (identity, newest segment, a throwaway create-if-absent put that is deleted
//! again) and the running walrelay's `/status` over the control socket (streaming, lag,
//! feeds, last errors). Must not: change anything but its own throwaway archive object.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::Serialize;

use crate::archive::backend;
use crate::archive::layout::{self, Identity, Layout};
use crate::config::{CheckConfig, Config};
use crate::lsn::Lsn;
use crate::upstream::conn::ReplConnection;
use crate::upstream::conninfo::ConnInfo;

/// `walrelay check` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// TOML configuration file (the one `walrelay run` uses).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Connection string of the primary (overrides upstream.conninfo).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Data directory (overrides data_dir).
    #[arg(short = 'D', long)]
    pub data_dir: Option<PathBuf>,
    /// Replication slot on the primary (overrides upstream.slot).
    #[arg(long)]
    pub slot: Option<String>,
    /// Archive URL (overrides archive.url).
    #[arg(long)]
    pub archive: Option<String>,
    /// The running walrelay's control endpoint (default: the socket in the data directory).
    #[arg(long, value_name = "SOCKET|URL")]
    pub control: Option<String>,
    /// One line for Nagios/Icinga: `WALRELAY OK - ...|perfdata`.
    #[arg(long, conflicts_with = "json")]
    pub nagios: bool,
    /// The verdict and every item as JSON.
    #[arg(long)]
    pub json: bool,
}

/// An item's or the verdict's level (the Nagios exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }
    /// Nagios's order of badness: CRITICAL > WARNING > UNKNOWN > OK.
    fn rank(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Unknown => 1,
            Level::Warning => 2,
            Level::Critical => 3,
        }
    }
}

/// One checked item.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The cluster checked (several clusters: every item is one cluster's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub name: &'static str,
    pub status: Level,
    pub message: String,
}

/// Everything checked.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Item>,
    /// Nagios perfdata: label, value, unit, warn, crit.
    #[serde(skip)]
    pub perf: Vec<(String, String, &'static str, String, String)>,
}

impl Report {
    fn add(&mut self, name: &'static str, status: Level, message: impl Into<String>) {
        self.checks.push(Item {
            cluster: None,
            name,
            status,
            message: message.into(),
        });
    }
    fn perf(
        &mut self,
        label: &str,
        value: impl ToString,
        unit: &'static str,
        warn: impl ToString,
        crit: impl ToString,
    ) {
        self.perf.push((
            label.to_string(),
            value.to_string(),
            unit,
            warn.to_string(),
            crit.to_string(),
        ));
    }
    /// The worst level of all items.
    pub fn verdict(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|l| l.rank())
            .unwrap_or(Level::Unknown)
    }

    /// `WALRELAY CRITICAL - slot: ...; upstream lag: ...|a=1;2;3 b=...`
    pub fn nagios_line(&self) -> String {
        let v = self.verdict();
        let bad: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.status != Level::Ok)
            .map(|c| format!("{}{}: {}", prefix(c), c.name, one_line(&c.message)))
            .collect();
        let text = if bad.is_empty() {
            format!("{} checks passed", self.checks.len())
        } else {
            bad.join("; ")
        };
        let perf: Vec<String> = self
            .perf
            .iter()
            .map(|(l, v, u, w, c)| format!("{l}={v}{u};{w};{c}"))
            .collect();
        // '|' separates perfdata: it must not appear in the text
        format!(
            "WALRELAY {} - {}|{}",
            v.name(),
            text.replace('|', "/"),
            perf.join(" ")
        )
    }

    /// One line per item, like `barman check`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "\t{}{}: {} ({})\n",
                prefix(c),
                c.name,
                c.status.name(),
                one_line(&c.message)
            ));
        }
        out.push_str(&format!("walrelay check: {}\n", self.verdict().name()));
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let v = self.verdict();
        serde_json::json!({
            "status": v.name(),
            "exit_code": v as i32,
            "checks": self.checks,
            "perfdata": self.perf.iter().map(|(l, v, u, w, c)| {
                serde_json::json!({"label": l, "value": v, "unit": u, "warn": w, "crit": c})
            }).collect::<Vec<_>>(),
        })
    }
}

/// `shard1 ` before an item of cluster `shard1`.
fn prefix(c: &Item) -> String {
    c.cluster
        .as_ref()
        .map(|n| format!("{n} "))
        .unwrap_or_default()
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compares `value` with warn/crit (higher is worse).
pub fn grade(value: f64, warn: f64, crit: f64) -> Level {
    if value >= crit {
        Level::Critical
    } else if value >= warn {
        Level::Warning
    } else {
        Level::Ok
    }
}

/// Errors this recent make the `errors` item a warning.
pub const RECENT_ERRORS: Duration = Duration::from_secs(300);

/// Runs the checks and prints the chosen output; returns the exit status.
pub async fn main(args: CheckArgs) -> i32 {
    let cfg = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => return unknown(&args, &e.to_string()),
        },
        None => Config::default(),
    };
    let report = run(&args, cfg).await;
    if args.nagios {
        println!("{}", report.nagios_line());
    } else if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).unwrap_or_default()
        );
    } else {
        print!("{}", report.text());
    }
    report.verdict() as i32
}

fn unknown(args: &CheckArgs, msg: &str) -> i32 {
    let mut r = Report::default();
    r.add("configuration", Level::Unknown, msg);
    if args.nagios {
        println!("{}", r.nagios_line());
    } else if args.json {
        println!("{}", r.json());
    } else {
        print!("{}", r.text());
    }
    Level::Unknown as i32
}

/// What the upstream said.
struct Upstream {
    system_id: u64,
    xlogpos: Lsn,
}

/// Runs every check; of several clusters, every check of every cluster (each item names
/// its cluster, the worst status wins).
pub async fn run(args: &CheckArgs, cfg: Config) -> Report {
    if !cfg.is_multi_cluster() {
        return run_one(args, cfg, None).await;
    }
    let mut all = Report::default();
    if args.upstream.is_some() || args.data_dir.is_some() || args.slot.is_some() {
        all.add(
            "configuration",
            Level::Unknown,
            "--upstream, --data-dir and --slot apply to a single cluster: with [[cluster]] sections each cluster is checked as configured",
        );
        return all;
    }
    let socket = cfg.control_socket();
    for c in cfg.clusters() {
        let mut one = cfg.clone();
        one.cluster.clear();
        one.data_dir = c.data_dir.clone();
        one.upstream = c.upstream.clone();
        one.archive = c.archive.clone();
        one.control.socket = Some(socket.clone());
        let r = run_one(args, one, Some(&c.name)).await;
        all.checks.extend(r.checks.into_iter().map(|mut i| {
            i.cluster = Some(c.name.clone());
            i
        }));
        all.perf.extend(
            r.perf
                .into_iter()
                .map(|(l, v, u, w, cr)| (format!("{}_{l}", c.name), v, u, w, cr)),
        );
    }
    all
}

/// The checks of one cluster (`cluster`: its name in a multi-cluster `/status`).
async fn run_one(args: &CheckArgs, mut cfg: Config, cluster: Option<&str>) -> Report {
    if let Some(v) = &args.upstream {
        cfg.upstream.conninfo = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        cfg.data_dir = v.clone();
    }
    if let Some(v) = &args.slot {
        cfg.upstream.slot = Some(v.clone());
    }
    if let Some(v) = &args.archive {
        cfg.archive.url = Some(v.clone());
    }
    let th = cfg.check.clone();
    let mut r = Report::default();

    let up = check_upstream(&mut r, &cfg).await;
    let local_sysid = check_data_dir(&mut r, &cfg, &th);
    let status = running_status(&mut r, args, &cfg, cluster).await;
    check_archive(
        &mut r,
        &cfg,
        up.as_ref().map(|u| u.system_id).or(local_sysid),
        status.as_ref(),
        &th,
    )
    .await;
    check_system_id(&mut r, up.as_ref().map(|u| u.system_id), local_sysid);
    if let Some(st) = &status {
        check_lag(&mut r, st, up.as_ref(), &th);
        check_feeds(&mut r, st);
        check_errors(&mut r, st);
    }
    r
}

async fn check_upstream(r: &mut Report, cfg: &Config) -> Option<Upstream> {
    let Some(conninfo) = cfg.upstream.conninfo.as_deref() else {
        r.add(
            "upstream",
            Level::Unknown,
            "no upstream configured (upstream.conninfo or --upstream)",
        );
        return None;
    };
    let mut ci = match ConnInfo::parse(conninfo) {
        Ok(c) => c,
        Err(e) => {
            r.add("upstream", Level::Unknown, e.to_string());
            return None;
        }
    };
    ci.apply_env(&|k| std::env::var(k).ok());
    if ci.application_name.is_none() {
        ci.application_name = Some("walrelay check".into());
    }
    let mut conn =
        match tokio::time::timeout(Duration::from_secs(30), ReplConnection::connect(&ci)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                r.add(
                    "upstream",
                    Level::Critical,
                    crate::ops::plain(&e.to_string()).to_string(),
                );
                return None;
            }
            Err(_) => {
                r.add(
                    "upstream",
                    Level::Critical,
                    "no answer from the upstream in 30 s",
                );
                return None;
            }
        };
    let ident = match conn.identify_system().await {
        Ok(i) => i,
        Err(e) => {
            r.add(
                "upstream",
                Level::Critical,
                crate::ops::plain(&e.to_string()).to_string(),
            );
            return None;
        }
    };
    let (host, port) = conn.host_port();
    r.add(
        "upstream",
        Level::Ok,
        format!(
            "{host}:{port} answers with REPLICATION: system {}, timeline {}, WAL at {}",
            ident.systemid, ident.timeline, ident.xlogpos
        ),
    );
    if let Some(slot) = cfg.upstream.slot.as_deref() {
        if conn.server_version_num() < 150000 {
            r.add(
                "slot",
                Level::Ok,
                format!("slot \"{slot}\" not checked: READ_REPLICATION_SLOT needs PostgreSQL 15"),
            );
        } else {
            match conn.read_replication_slot(slot).await {
                Ok(Some(info)) if info.slot_type == "physical" => r.add(
                    "slot",
                    Level::Ok,
                    format!(
                        "replication slot \"{slot}\" exists (restart_lsn {})",
                        info.restart_lsn
                            .map(|l| l.to_string())
                            .unwrap_or("none".into())
                    ),
                ),
                Ok(Some(info)) => r.add(
                    "slot",
                    Level::Critical,
                    format!(
                        "replication slot \"{slot}\" is {}, not physical",
                        info.slot_type
                    ),
                ),
                Ok(None) => r.add(
                    "slot",
                    Level::Critical,
                    format!("replication slot \"{slot}\" does not exist on the upstream"),
                ),
                Err(e) => r.add(
                    "slot",
                    Level::Critical,
                    crate::ops::plain(&e.to_string()).to_string(),
                ),
            }
        }
    }
    conn.close().await;
    Some(Upstream {
        system_id: ident.systemid,
        xlogpos: ident.xlogpos,
    })
}

/// The data directory's system identifier (control file) and free space.
fn check_data_dir(r: &mut Report, cfg: &Config, th: &CheckConfig) -> Option<u64> {
    let dir = &cfg.data_dir;
    if !dir.is_dir() {
        r.add(
            "data_dir",
            Level::Critical,
            format!("data directory \"{}\" does not exist", dir.display()),
        );
        return None;
    }
    let sysid = match crate::store::control::read(dir) {
        Ok(Some(c)) => c.system_id.parse().ok(),
        Ok(None) => None,
        Err(e) => {
            r.add("data_dir", Level::Critical, e.to_string());
            return None;
        }
    };
    match free_percent(dir) {
        Some((pct, avail)) => {
            let lvl = grade(-pct, -th.warn_free_percent, -th.crit_free_percent);
            r.add(
                "disk",
                lvl,
                format!(
                    "{pct:.1}% free ({} MB) on the file system of \"{}\"",
                    avail >> 20,
                    dir.display()
                ),
            );
            r.perf(
                "free_percent",
                format!("{pct:.1}"),
                "%",
                th.warn_free_percent,
                th.crit_free_percent,
            );
        }
        None => r.add(
            "disk",
            Level::Unknown,
            "could not read the free space (statvfs)",
        ),
    }
    sysid
}

/// Percent free (for unprivileged users) and bytes available on `dir`'s file system.
fn free_percent(dir: &std::path::Path) -> Option<(f64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let avail = (st.f_bavail as u64).saturating_mul(frsize);
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    Some((avail as f64 * 100.0 / total as f64, avail))
}

fn check_system_id(r: &mut Report, upstream: Option<u64>, local: Option<u64>) {
    match (upstream, local) {
        (Some(u), Some(l)) if u != l => r.add(
            "system_id",
            Level::Critical,
            format!("the upstream is system {u} but the data directory holds WAL of system {l}"),
        ),
        (Some(u), _) | (None, Some(u)) => r.add(
            "system_id",
            Level::Ok,
            format!("system {u} (upstream, data directory and archive agree)"),
        ),
        (None, None) => {}
    }
}

/// `/status` of the running walrelay.
async fn running_status(
    r: &mut Report,
    args: &CheckArgs,
    cfg: &Config,
    cluster: Option<&str>,
) -> Option<serde_json::Value> {
    let target = match crate::endpoints::resolve_target(
        args.control.as_deref(),
        &|k| std::env::var(k).ok(),
        None,
        None,
        None,
    ) {
        Ok(t) => t,
        Err(_) => crate::admin::Target::Unix(cfg.control.socket_path(&cfg.data_dir)),
    };
    let answer = crate::admin::call(&target, "GET", "/status", &[]).await;
    let doc = match answer {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).ok(),
        _ => None,
    };
    // several clusters: this cluster's part of the document
    let doc = match (doc, cluster) {
        (Some(d), Some(name)) if d["clusters"].is_array() => d["clusters"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["cluster"] == name).cloned()),
        (d, _) => d,
    };
    let Some(doc) = doc else {
        let e = match answer_err(&target) {
            Some(e) => e,
            None => "no /status".into(),
        };
        r.add(
            "walrelay",
            Level::Critical,
            format!("walrelay is not running: {e}"),
        );
        return None;
    };
    let up = &doc["upstream"];
    if up["connected"] == true {
        r.add(
            "walrelay",
            Level::Ok,
            format!(
                "running, streaming from {} (timeline {})",
                up["server"].as_str().unwrap_or("?"),
                up["timeline"]
            ),
        );
    } else {
        let why = up["last_error"]["message"]
            .as_str()
            .map(|m| format!(": {}", crate::ops::plain(m)))
            .unwrap_or_default();
        r.add(
            "walrelay",
            Level::Critical,
            format!("running but not streaming from the upstream{why}"),
        );
    }
    Some(doc)
}

fn answer_err(target: &crate::admin::Target) -> Option<String> {
    match target {
        crate::admin::Target::Unix(p) => {
            Some(format!("no answer on control socket \"{}\"", p.display()))
        }
        crate::admin::Target::Tcp { addr, .. } => Some(format!("no answer from {addr}")),
    }
}

async fn check_archive(
    r: &mut Report,
    cfg: &Config,
    sysid: Option<u64>,
    status: Option<&serde_json::Value>,
    th: &CheckConfig,
) {
    let Some(url) = crate::archive::resolve_url(cfg.archive.url.as_deref(), &cfg.data_dir) else {
        r.add(
            "archive",
            Level::Ok,
            "archiving is disabled (archive.url = \"none\")",
        );
        return;
    };
    let b = match backend::open(&url, &cfg.archive) {
        Ok(b) => b,
        Err(e) => {
            r.add("archive", Level::Critical, e.to_string());
            return;
        }
    };
    // writable: a throwaway create-if-absent put, deleted again
    let probe = b.prefix.child(".walrelay-check").child(format!(
        "probe-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let put = b
        .store
        .put_opts(
            &probe,
            PutPayload::from_static(b"walrelay check\n"),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await;
    match put {
        Ok(_) => {
            let _ = b.store.delete(&probe).await;
            r.add(
                "archive_writable",
                Level::Ok,
                format!("{} accepts writes", b.url),
            );
        }
        Err(e) => {
            r.add(
                "archive_writable",
                Level::Critical,
                format!("could not write to {}: {e}", b.url),
            );
            return;
        }
    }
    let Some(sysid) = sysid else { return };
    let lay = Layout::new(&b.prefix, sysid);
    let ident = match b.store.get(&lay.identity()).await {
        Ok(g) => g.bytes().await.ok().and_then(|x| Identity::decode(&x)),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => {
            r.add(
                "archive",
                Level::Critical,
                format!("could not read {}: {e}", b.url),
            );
            return;
        }
    };
    if ident.is_none() {
        // another system's WAL under the prefix is a wrong archive, none at all a new one
        let other = crate::archive::reader::detect_system(&b).await.ok();
        match other {
            Some(o) if o != sysid => r.add(
                "system_id_archive",
                Level::Critical,
                format!("the archive {} holds WAL of system {o}, not {sysid}", b.url),
            ),
            _ => r.add(
                "archive",
                Level::Ok,
                format!("{} holds no WAL of system {sysid} yet", b.url),
            ),
        }
        return;
    }
    if let Some(id) = ident.as_ref().and_then(Identity::system_id) {
        if id != sysid {
            r.add(
                "system_id_archive",
                Level::Critical,
                format!("the archive identity says system {id}, expected {sysid}"),
            );
        }
    }
    // newest and oldest segment, newest upload time
    let listing = match list_archive(&b, sysid).await {
        Ok(l) => l,
        Err(e) => {
            r.add("archive", Level::Critical, e);
            return;
        }
    };
    let count = listing.segments;
    let min = listing.oldest.clone();
    let max = listing.newest.clone().zip(listing.newest_at);
    let lag = status.and_then(|s| s["archive"]["lag_bytes"].as_u64());
    let seg = status
        .and_then(|s| s["store"]["wal_segment_size"].as_u64())
        .unwrap_or(16 << 20);
    match &max {
        None => r.add(
            "archive",
            Level::Ok,
            format!("{}: no segment archived yet", b.url),
        ),
        Some((newest, at)) => {
            let age = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
                .signed_duration_since(*at)
                .num_seconds()
                .max(0);
            // the age matters only while completed segments wait for the archive
            let waiting = lag.is_some_and(|l| l >= seg);
            let lvl = if waiting {
                grade(
                    age as f64,
                    th.warn_archive_age.as_secs_f64(),
                    th.crit_archive_age.as_secs_f64(),
                )
            } else {
                Level::Ok
            };
            r.add(
                "archive",
                lvl,
                format!(
                    "{count} segments {}..{newest}, newest archived {age} s ago{}",
                    min.as_deref().unwrap_or("?"),
                    if waiting { " while segments wait" } else { "" }
                ),
            );
            r.perf(
                "archive_age_seconds",
                age,
                "s",
                th.warn_archive_age.as_secs(),
                th.crit_archive_age.as_secs(),
            );
        }
    }
    if let Some(l) = lag {
        let lvl = grade(
            l as f64,
            th.warn_archive_lag_bytes as f64,
            th.crit_archive_lag_bytes as f64,
        );
        r.add(
            "archive_lag",
            lvl,
            format!("{l} bytes of stored WAL not archived yet"),
        );
        r.perf(
            "archive_lag_bytes",
            l,
            "B",
            th.warn_archive_lag_bytes,
            th.crit_archive_lag_bytes,
        );
    }
}

/// What the archive holds of one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchiveListing {
    pub segments: u64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// When the newest segment was uploaded.
    pub newest_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Lists the segments of system `sysid` in the archive `b`.
pub async fn list_archive(b: &backend::Backend, sysid: u64) -> Result<ArchiveListing, String> {
    let lay = Layout::new(&b.prefix, sysid);
    let mut out = ArchiveListing::default();
    let mut list = b.store.list(Some(&lay.wal_dir()));
    while let Some(m) = list.next().await {
        let m = m.map_err(|e| format!("could not list {}: {e}", b.url))?;
        let Some(file) = m.location.filename() else {
            continue;
        };
        let (name, _) = layout::strip_compression(file);
        if name.len() != 24 || !name.bytes().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        out.segments += 1;
        if out.oldest.as_deref().is_none_or(|x| name < x) {
            out.oldest = Some(name.to_string());
        }
        if out.newest.as_deref().is_none_or(|x| name > x) {
            out.newest = Some(name.to_string());
            out.newest_at = Some(m.last_modified);
        }
    }
    Ok(out)
}

/// Lag behind the upstream: bytes from the upstream's current WAL position (the check's
/// own IDENTIFY_SYSTEM), seconds from the running walrelay.
fn check_lag(r: &mut Report, st: &serde_json::Value, up: Option<&Upstream>, th: &CheckConfig) {
    let flush = st["store"]["flush_lsn"]
        .as_str()
        .and_then(|s| s.parse::<Lsn>().ok());
    if let (Some(u), Some(f)) = (up, flush) {
        let bytes = u.xlogpos.0.saturating_sub(f.0);
        let lvl = grade(
            bytes as f64,
            th.warn_lag_bytes as f64,
            th.crit_lag_bytes as f64,
        );
        r.add(
            "lag_bytes",
            lvl,
            format!(
                "flushed {f}, the upstream is at {} ({bytes} bytes behind)",
                u.xlogpos
            ),
        );
        r.perf(
            "lag_bytes",
            bytes,
            "B",
            th.warn_lag_bytes,
            th.crit_lag_bytes,
        );
    }
    if let Some(sec) = st["upstream"]["lag_seconds"].as_f64() {
        let lvl = grade(
            sec,
            th.warn_lag_seconds.as_secs_f64(),
            th.crit_lag_seconds.as_secs_f64(),
        );
        r.add(
            "lag_seconds",
            lvl,
            format!("{sec:.1} s behind the upstream"),
        );
        r.perf(
            "lag_seconds",
            format!("{sec:.1}"),
            "s",
            th.warn_lag_seconds.as_secs(),
            th.crit_lag_seconds.as_secs(),
        );
    }
}

/// A tripwire hold is a warning (the feed waits for an operator), a pause is deliberate.
fn check_feeds(r: &mut Report, st: &serde_json::Value) {
    let Some(feeds) = st["feeds"].as_array() else {
        return;
    };
    let held: Vec<String> = feeds
        .iter()
        .filter(|f| f["tripwire_hold"] == true)
        .map(|f| {
            format!(
                "feed \"{}\" held by the tripwire at {}",
                f["name"].as_str().unwrap_or("?"),
                f["held_at"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if held.is_empty() {
        let states: Vec<String> = feeds
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f["name"].as_str().unwrap_or("?"),
                    f["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        r.add(
            "feeds",
            Level::Ok,
            format!("{} feeds: {}", feeds.len(), states.join(", ")),
        );
    } else {
        r.add(
            "feeds",
            Level::Warning,
            format!(
                "{}; `walrelay feed resume NAME` releases it",
                held.join(", ")
            ),
        );
    }
}

/// The newest upstream and archive errors; recent ones are a warning.
fn check_errors(r: &mut Report, st: &serde_json::Value) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut recent = Vec::new();
    for src in ["upstream", "archive", "store"] {
        let e = match src {
            "store" => &st["store"]["last_error"],
            s => &st[s]["last_error"],
        };
        let (Some(msg), Some(t)) = (e["message"].as_str(), e["unix_time"].as_f64()) else {
            continue;
        };
        if now - t <= RECENT_ERRORS.as_secs_f64() {
            recent.push(format!(
                "{src} at {}: {}",
                e["time"].as_str().unwrap_or("?"),
                one_line(crate::ops::plain(msg))
            ));
        }
    }
    if recent.is_empty() {
        r.add("errors", Level::Ok, "no error in the last 5 minutes");
    } else {
        r.add("errors", Level::Warning, recent.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_and_nagios_line() {
        let mut r = Report::default();
        r.add("upstream", Level::Ok, "fine");
        r.perf("lag_bytes", 10, "B", 100, 200);
        assert_eq!(r.verdict(), Level::Ok);
        assert_eq!(
            r.nagios_line(),
            "WALRELAY OK - 1 checks passed|lag_bytes=10B;100;200"
        );
        r.add("feeds", Level::Warning, "held | x\nmore");
        r.add("slot", Level::Unknown, "?");
        assert_eq!(r.verdict(), Level::Warning);
        r.add("slot", Level::Critical, "gone");
        assert_eq!(r.verdict(), Level::Critical);
        let line = r.nagios_line();
        assert!(
            line.starts_with("WALRELAY CRITICAL - feeds: held / x more; slot: ?; slot: gone|"),
            "{line}"
        );
        assert_eq!(line.matches('|').count(), 1);
        assert_eq!(r.json()["exit_code"], 2);
    }

    #[test]
    fn grades() {
        assert_eq!(grade(5.0, 10.0, 20.0), Level::Ok);
        assert_eq!(grade(10.0, 10.0, 20.0), Level::Warning);
        assert_eq!(grade(25.0, 10.0, 20.0), Level::Critical);
    }
}

//! Which HTTP routes go where: the read-only metrics listener and the control endpoint
//! (see [`crate::admin`] for the machinery and `docs/security.md` for why).
//!
//! Owns: the `/metrics`, `/health` and `/status` handlers, the split of routes between the
//! two listeners, starting them from the configuration, and finding a running walrelay's
//! control endpoint for the CLI ([`resolve_target`]). Must not: hold feed or store state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

mod fleet_feeds;

use crate::admin::{self, Endpoint, Policy, Response, Routes, Target, Token, Transport};
use crate::archive::archiver::ArchiverStatus;
use crate::config::Config;
use crate::delay::FeedController;
use crate::lsn::Lsn;
use crate::metrics::{PrometheusHandle, StandbySample};
use crate::ops;
use crate::server::StatusSource;
use crate::statusview::{self, History};
use crate::store::Positions;
use crate::upstream::receiver::UpstreamInfo;

/// What the endpoints show of one cluster.
#[derive(Clone)]
pub struct Sources {
    /// The cluster's name (its `cluster` label).
    pub cluster: String,
    /// Its errors, upstream liveness and archive events.
    pub ops: Arc<ops::ClusterOps>,
    /// Its archive (for the archive listing in `/status`).
    pub archive: Option<(String, crate::config::ArchiveConfig)>,
    pub positions: watch::Receiver<Positions>,
    pub upstream: watch::Receiver<UpstreamInfo>,
    pub walsenders: Option<StatusSource>,
    pub archived: Option<watch::Receiver<Lsn>>,
    pub feeds: Option<Arc<FeedController>>,
    /// The archiver's counters (pending segments, last error).
    pub archiver: Option<watch::Receiver<ArchiverStatus>>,
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A standby's flushed position as `pg_stat_replication` shows it: a client that reports
/// flush 0/0 (pg_receivewal without --synchronous) has none.
pub fn valid_lsn(l: Option<Lsn>) -> Option<Lsn> {
    l.filter(|l| l.is_valid())
}

/// The `/status` document: with one cluster, that cluster's document (with its name in
/// `cluster`); with several, `{"clusters": [one document per cluster]}`.
pub fn fleet_status_json(all: &[Sources]) -> serde_json::Value {
    match all {
        [one] => status_json(one),
        _ => serde_json::json!({
            "clusters": all.iter().map(status_json).collect::<Vec<_>>(),
        }),
    }
}

/// One cluster's `/status` document: what walrelay receives, stores, archives and serves,
/// the lag of everything downstream, and the last errors.
pub fn status_json(s: &Sources) -> serde_json::Value {
    let p = s.positions.borrow().clone();
    let i = s.upstream.borrow().clone();
    let archived = s.archived.as_ref().map(|a| *a.borrow());
    let now = now_unix();
    let o = &s.ops;
    let live = o.liveness();
    let ev = o.archive_events();
    let astat = s.archiver.as_ref().map(|a| a.borrow().clone());
    let host = i
        .server
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let mut doc = serde_json::json!({
        "cluster": s.cluster,
        "upstream": {
            "connected": i.connected,
            "state": if i.connected { "streaming" } else { "disconnected" },
            "server": i.server,
            "host": host,
            "server_version": i.server_version,
            "system_identifier": i.system_id.to_string(),
            "timeline": i.timeline,
            "last_message_at": live.last_message.map(ops::rfc3339),
            "last_message_age_seconds": live.last_message.map(|t| round1((now - t).max(0.0))),
            "wal_end": live.wal_end.map(|l| l.to_string()),
            "lag_bytes": live.lag_bytes(p.flush_lsn),
            "lag_seconds": live.lag_seconds(p.flush_lsn, now).map(round1),
            "last_error": o.last_error_of("upstream"),
        },
        "store": {
            "timeline": p.timeline,
            "write_lsn": p.write_lsn.to_string(),
            "flush_lsn": p.flush_lsn.to_string(),
            "wal_segment_size": p.wal_segment_size,
            "completed_segments": p.completed_segments,
            "error": p.error,
            "last_error": o.last_error_of("store"),
        },
        "archive": {
            "enabled": archived.is_some(),
            "archived_lsn": archived.filter(|l| l.is_valid()).map(|l| l.to_string()),
            "lag_bytes": archived.filter(|l| l.is_valid()).map(|a| p.flush_lsn.0.saturating_sub(a.0)),
            "pending_segments": astat.as_ref().map(|a| a.pending),
            "uploaded_segments": astat.as_ref().map(|a| a.uploaded_segments),
            "first_archived_segment": ev.first_segment,
            "last_archived_segment": ev.last_segment,
            "last_archived_at": ev.last_time.map(ops::rfc3339),
            "last_archived_age_seconds": ev.last_time.map(|t| round1((now - t).max(0.0))),
            "last_error": o.last_error_of("archive"),
            // the whole archive of this system, listed every few minutes
            "listing": o.archive_listing(),
        },
        "errors": o.last_errors(),
    });
    if let Some(w) = &s.walsenders {
        let rows: Vec<serde_json::Value> = w
            .status()
            .into_iter()
            .map(|mut r| {
                r.flush_lsn = valid_lsn(r.flush_lsn);
                let reached = r.flush_lsn.or(valid_lsn(r.write_lsn));
                let lag_bytes = reached.map(|l| p.flush_lsn.0.saturating_sub(l.0));
                let lag_seconds = r.replay_lag.or(r.flush_lag).or(r.write_lag);
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                v["lag_bytes"] = serde_json::json!(lag_bytes);
                v["lag_seconds"] = serde_json::json!(lag_seconds);
                v
            })
            .collect();
        doc["walsenders"] = serde_json::Value::Array(rows);
        doc["slots"] = serde_json::to_value(w.slots()).unwrap_or_default();
    }
    if let Some(f) = &s.feeds {
        doc["feeds"] = feeds_summary(&f.list(), p.flush_lsn);
    }
    doc
}

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_USECS: i64 = 946_684_800_000_000;

/// Feeds as the read-only views show them: position, state, lag, hold — not the
/// transactions (those stay on the control endpoint).
fn feeds_summary(list: &serde_json::Value, flush: Lsn) -> serde_json::Value {
    let feeds = list["feeds"].as_array().cloned().unwrap_or_default();
    serde_json::Value::Array(
        feeds
            .iter()
            .map(|f| {
                let pos = f["position"].as_str().and_then(|s| s.parse::<Lsn>().ok());
                let waiting_since = f["waiting_commit"]["commit_time"]
                    .as_str()
                    .map(str::to_string);
                // how far behind the primary the feed's standby is: 0 when it has
                // everything, else the age of the first commit it does not have yet
                let lag_seconds = if f["state"] == "caught_up" {
                    Some(0.0)
                } else {
                    waiting_since.as_deref().and_then(|t| {
                        let now_pg = (now_unix() * 1e6) as i64 - PG_EPOCH_UNIX_USECS;
                        crate::delay::time::parse_pg_time(t, now_pg)
                            .ok()
                            .map(|c| round1(now_pg.saturating_sub(c) as f64 / 1e6).max(0.0))
                    })
                };
                serde_json::json!({
                    "name": f["name"],
                    "application_name": f["application_name"],
                    "state": f["state"],
                    "position": f["position"],
                    "held_at": f["held_at"],
                    "delay_seconds": f["delay_seconds"],
                    "sessions": f["sessions"],
                    "tripwire_hold": f["state"] == "tripwire",
                    "lag_bytes": pos.map(|l| flush.0.saturating_sub(l.0)),
                    "lag_seconds": lag_seconds,
                })
            })
            .collect(),
    )
}

fn add_status(routes: &mut Routes, all: &[Sources]) {
    let all = all.to_vec();
    routes.add(
        "GET",
        "/status",
        Arc::new(move |_| Response::json(200, &fleet_status_json(&all))),
    );
}

/// Routes of the metrics listener: `/metrics`, `/health`, `/status`, `/history` and the
/// status page `/` — read-only.
pub fn metrics_routes(handle: PrometheusHandle, all: &[Sources], history: &History) -> Routes {
    let mut routes = Routes::default();
    let clusters = all.to_vec();
    routes.add(
        "GET",
        "/metrics",
        Arc::new(move |_| {
            let now = now_unix();
            let mut standbys = Vec::with_capacity(clusters.len());
            for s in &clusters {
                // the upstream lag from the current flush position and the last message,
                // not the value of the last XLogData (stale when WAL stops arriving)
                let flush = s.positions.borrow().flush_lsn;
                let live = s.ops.liveness();
                let label = (crate::metrics::CLUSTER_LABEL, s.cluster.clone());
                if let Some(b) = live.lag_bytes(flush) {
                    metrics::gauge!(crate::metrics::UPSTREAM_LAG, std::slice::from_ref(&label))
                        .set(b as f64);
                }
                if let Some(sec) = live.lag_seconds(flush, now) {
                    metrics::gauge!(
                        crate::metrics::UPSTREAM_LAG_SECONDS,
                        std::slice::from_ref(&label)
                    )
                    .set(sec);
                }
                if let Some(t) = live.last_message {
                    metrics::gauge!(crate::metrics::UPSTREAM_MESSAGE_AGE, &[label])
                        .set((now - t).max(0.0));
                }
                if let Some(w) = &s.walsenders {
                    let samples: Vec<StandbySample> = w
                        .status()
                        .into_iter()
                        .map(|r| StandbySample {
                            application_name: r.application_name,
                            sent: r.sent_lsn.map(|l| l.0),
                            // pg_receivewal reports flush 0/0: its write position is what
                            // it has
                            flush: valid_lsn(r.flush_lsn)
                                .or(valid_lsn(r.write_lsn))
                                .map(|l| l.0),
                            replay: r.replay_lsn.map(|l| l.0),
                            replay_lag_seconds: r.replay_lag,
                        })
                        .collect();
                    standbys.push((s.cluster.clone(), samples));
                }
            }
            let mut text = handle.render();
            if !standbys.is_empty() {
                text.push_str(&crate::metrics::render_standbys(&standbys));
            }
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: text.into_bytes(),
            }
        }),
    );
    let health: Vec<(String, watch::Receiver<Positions>)> = all
        .iter()
        .map(|s| (s.cluster.clone(), s.positions.clone()))
        .collect();
    routes.add(
        "GET",
        "/health",
        Arc::new(move |_| {
            // failing when any cluster's store failed (the first one named)
            let failing = health
                .iter()
                .find_map(|(n, p)| p.borrow().error.clone().map(|e| (n.clone(), e)));
            match failing {
                None => Response::json(200, &serde_json::json!({ "status": "ok" })),
                Some((cluster, e)) if health.len() > 1 => Response::json(
                    503,
                    &serde_json::json!({ "status": "failing", "cluster": cluster, "error": e }),
                ),
                Some((_, e)) => {
                    Response::json(503, &serde_json::json!({ "status": "failing", "error": e }))
                }
            }
        }),
    );
    add_status(&mut routes, all);
    add_history(&mut routes, history);
    // last: "/" is a prefix of every path, so it answers only the root itself
    routes.add(
        "GET",
        "/",
        Arc::new(|req| {
            if req.segments.is_empty() {
                Response {
                    status: 200,
                    content_type: "text/html; charset=utf-8",
                    body: statusview::PAGE.as_bytes().to_vec(),
                }
            } else {
                Response::error(404, format!("no such endpoint: {}", req.path))
            }
        }),
    );
    routes
}

fn add_history(routes: &mut Routes, history: &History) {
    let h = history.clone();
    routes.add(
        "GET",
        "/history",
        Arc::new(move |_| {
            Response::json(
                200,
                &serde_json::json!({
                    "interval_seconds": statusview::SAMPLE_EVERY.as_secs(),
                    "samples": h.samples(),
                }),
            )
        }),
    );
}

/// Samples the lags into `history` every [`statusview::SAMPLE_EVERY`] and writes the
/// aggregated segment log lines every second, until shutdown.
fn spawn_sampler(all: &[Sources], history: History, mut shutdown: watch::Receiver<bool>) {
    let all = all.to_vec();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let every = statusview::SAMPLE_EVERY.as_secs().max(1);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
            ops::flush_segment_logs();
            if n % every == 0 {
                let doc = fleet_status_json(&all);
                history.push(statusview::Sample::from_status(now_unix(), &doc));
            }
            n = n.wrapping_add(1);
        }
        ops::flush_segment_logs();
    });
}

/// How often the archive is listed for `/status` (`archive.listing`).
const LIST_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Lists the archive's segments of this system now and then (first a few seconds after
/// start) for the oldest/newest segment in `/status`.
fn spawn_archive_lister(s: &Sources, mut shutdown: watch::Receiver<bool>) {
    let Some((url, archive)) = &s.archive else {
        return;
    };
    let Ok(b) = crate::archive::backend::open(url, archive) else {
        return;
    };
    let positions = s.positions.clone();
    let o = s.ops.clone();
    tokio::spawn(async move {
        let mut last: Option<(std::time::Instant, Option<String>)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
            let sysid = positions.borrow().system_id;
            // again every LIST_EVERY, or sooner when this process archived past the listing
            let archived = o.archive_events().last_segment;
            let due = match &last {
                None => true,
                Some((at, newest)) => at.elapsed() >= LIST_EVERY || archived > *newest,
            };
            if sysid == 0 || !due {
                continue;
            }
            match crate::check::list_archive(&b, sysid).await {
                Ok(l) => {
                    o.set_archive_listing(serde_json::json!({
                        "segments": l.segments,
                        "oldest_segment": l.oldest,
                        "newest_segment": l.newest,
                        "newest_uploaded_at": l.newest_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                        "listed_at": ops::rfc3339(now_unix()),
                    }));
                    last = Some((std::time::Instant::now(), l.newest));
                }
                Err(e) => {
                    tracing::warn!("archive: {e}");
                    last = Some((std::time::Instant::now(), archived));
                }
            }
        }
    });
}

/// Routes of the control endpoint: `/status`, and with feeds `/feeds…` and `/xacts`.
pub fn control_routes(all: &[Sources]) -> Routes {
    let mut routes = Routes::default();
    add_status(&mut routes, all);
    let feeds: Vec<(String, Arc<FeedController>)> = all
        .iter()
        .filter_map(|s| s.feeds.clone().map(|f| (s.cluster.clone(), f)))
        .collect();
    match (all, feeds.as_slice()) {
        ([_], [(_, f)]) => crate::delay::api::register_routes(&mut routes, f.clone()),
        (_, []) => {}
        _ => fleet_feeds::register_routes(&mut routes, feeds),
    }
    routes
}

/// The control listener's token and TLS material, loaded (and checked) from the
/// configuration; `walrelay run` calls this before touching the data directory so a bad
/// token file fails at once.
pub fn load_control_secrets(
    cfg: &Config,
) -> Result<(Option<Token>, Option<Arc<rustls::ServerConfig>>), String> {
    if cfg.control.listen.is_none() {
        return Ok((None, None));
    }
    let token_file = cfg
        .control
        .token_file
        .as_deref()
        .ok_or("control.listen needs control.token_file")?;
    let token = Token::from_file(token_file).map_err(|e| e.to_string())?;
    let tls = match (&cfg.control.tls_cert, &cfg.control.tls_key) {
        (Some(c), Some(k)) => Some(crate::server::tls::load(c, k, None)?.config),
        _ => None,
    };
    Ok((Some(token), tls))
}

/// `walrelay xacts --cluster NAME`: one cluster's commit index when several clusters have
/// feeds (`GET /xacts?cluster=NAME&…`).
pub async fn xacts_of_cluster(
    target: &Target,
    cluster: &str,
    since: Option<&str>,
    until: Option<&str>,
    drops_only: bool,
) -> Result<Vec<serde_json::Value>, String> {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    let mut q = vec![format!("cluster={}", enc(cluster))];
    q.extend(since.map(|s| format!("since={}", enc(s))));
    q.extend(until.map(|u| format!("until={}", enc(u))));
    if drops_only {
        q.push("drops_only=1".into());
    }
    let (status, body) = admin::call(target, "GET", &format!("/xacts?{}", q.join("&")), &[])
        .await
        .map_err(|e| format!("could not reach walrelay's control endpoint at {target}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if status != 200 {
        let msg = v
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(body.trim());
        return Err(msg.to_string());
    }
    Ok(v.get("xacts")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// Longest Unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Starts the metrics listener (when `metrics.listen` is set), the control socket and the
/// control TCP listener (when `control.listen` is set).
pub async fn start(
    cfg: &Config,
    metrics: Option<PrometheusHandle>,
    all: &[Sources],
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let s = all;
    let history = History::default();
    spawn_sampler(all, history.clone(), shutdown.clone());
    for c in all {
        spawn_archive_lister(c, shutdown.clone());
    }
    if let (Some(addr), Some(handle)) = (&cfg.metrics.listen, metrics) {
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| format!("invalid metrics.listen \"{addr}\": {e}"))?;
        let ep = Endpoint::new(
            "metrics.listen",
            metrics_routes(handle, s, &history),
            Policy::new(
                Transport::Tcp { tls: false },
                None,
                &cfg.metrics.allowed_hosts,
            ),
        );
        let serving = admin::serve_tcp(addr, ep, shutdown.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(local) = serving.local_addr {
            tracing::info!("status page on http://{local}/ (and /metrics, /health, /status)");
        }
    }
    let routes = control_routes(s);
    let socket = cfg.control_socket();
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "control socket path \"{}\" is longer than {MAX_SOCKET_PATH} bytes: set control.socket to a shorter path",
            socket.display()
        ));
    }
    let ep = Endpoint::new(
        "control socket",
        routes.clone(),
        Policy::new(Transport::Unix, None, &[]),
    );
    admin::serve_unix(&socket, ep, shutdown.clone())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("control endpoint on Unix socket \"{}\"", socket.display());
    if let Some(listen) = &cfg.control.listen {
        let addr: std::net::SocketAddr = listen
            .parse()
            .map_err(|e| format!("invalid control.listen \"{listen}\": {e}"))?;
        let (token, tls) = load_control_secrets(cfg)?;
        let mut ep = Endpoint::new(
            "control.listen",
            routes,
            Policy::new(
                Transport::Tcp { tls: tls.is_some() },
                token,
                &cfg.control.allowed_hosts,
            ),
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        ep.tls = tls;
        let serving = admin::serve_tcp(addr, ep, shutdown)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(local) = serving.local_addr {
            tracing::info!("control endpoint on {scheme}://{local} (bearer token required)");
        }
    }
    Ok(())
}

/// Where the CLI finds the control endpoint, first match wins: `--control` (a socket path or
/// `http://HOST:PORT`), `$WALRELAY_CONTROL` (same forms), `--data-dir`, `--config`
/// (`control.socket`, else its `data_dir`). The token for `http://` comes from
/// `--token-file`, `$WALRELAY_CONTROL_TOKEN_FILE` or the configuration's
/// `control.token_file`.
pub fn resolve_target(
    control: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    data_dir: Option<&Path>,
    config: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Target, String> {
    let cfg = config
        .map(|p| Config::load(p).map_err(|e| e.to_string()))
        .transpose()?;
    let given = control
        .map(str::to_string)
        .or_else(|| env("WALRELAY_CONTROL").filter(|v| !v.is_empty()));
    if let Some(c) = given {
        if c.starts_with("https://") {
            return Err("the walrelay CLI does not speak TLS to control.listen: use the control socket (--data-dir, or --control PATH)".into());
        }
        if let Some(addr) = c.strip_prefix("http://") {
            let token_file: Option<PathBuf> = token_file
                .map(Path::to_path_buf)
                .or_else(|| env("WALRELAY_CONTROL_TOKEN_FILE").map(PathBuf::from))
                .or_else(|| cfg.as_ref().and_then(|c| c.control.token_file.clone()));
            let token = token_file
                .map(|p| Token::read_secret(&p).map_err(|e| e.to_string()))
                .transpose()?;
            return Ok(Target::Tcp {
                addr: addr.trim_end_matches('/').to_string(),
                token,
            });
        }
        return Ok(Target::Unix(PathBuf::from(c)));
    }
    if let Some(d) = data_dir {
        return Ok(Target::Unix(d.join(admin::CONTROL_SOCKET)));
    }
    if let Some(c) = cfg {
        return Ok(Target::Unix(c.control_socket()));
    }
    Err("where is walrelay? use --data-dir DIR, --config FILE, --control SOCKET|http://HOST:PORT or $WALRELAY_CONTROL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_control_endpoint() {
        let none = |_: &str| None;
        assert_eq!(
            resolve_target(None, &none, Some(Path::new("/d")), None, None).unwrap(),
            Target::Unix("/d/walrelay.control.sock".into())
        );
        let env = |k: &str| (k == "WALRELAY_CONTROL").then(|| "/s.sock".to_string());
        assert_eq!(
            resolve_target(None, &env, Some(Path::new("/d")), None, None).unwrap(),
            Target::Unix("/s.sock".into())
        );
        assert_eq!(
            resolve_target(Some("http://127.0.0.1:1/"), &env, None, None, None).unwrap(),
            Target::Tcp {
                addr: "127.0.0.1:1".into(),
                token: None
            }
        );
        assert!(resolve_target(Some("https://x:1"), &none, None, None, None).is_err());
        let e = resolve_target(None, &none, None, None, None).unwrap_err();
        assert!(e.contains("where is walrelay"), "{e}");
    }
}

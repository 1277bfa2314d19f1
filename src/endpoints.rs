//! Which HTTP routes go where: the read-only metrics listener and the control endpoint
//! (see [`crate::admin`] for the machinery and `docs/security.md` for why).
//!
//! Owns: the `/metrics`, `/health` and `/status` handlers, the split of routes between the
//! two listeners, starting them from the configuration, and finding a running walrelay's
//! control endpoint for the CLI ([`resolve_target`]). Must not: hold feed or store state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::{self, Endpoint, Policy, Response, Routes, Target, Token, Transport};
use crate::config::Config;
use crate::delay::FeedController;
use crate::lsn::Lsn;
use crate::metrics::{PrometheusHandle, StandbySample};
use crate::server::StatusSource;
use crate::store::Positions;
use crate::upstream::receiver::UpstreamInfo;

/// What the endpoints show.
#[derive(Clone)]
pub struct Sources {
    pub positions: watch::Receiver<Positions>,
    pub upstream: watch::Receiver<UpstreamInfo>,
    pub walsenders: Option<StatusSource>,
    pub archived: Option<watch::Receiver<Lsn>>,
    pub feeds: Option<Arc<FeedController>>,
}

/// The `/status` document: what walrelay receives, stores, archives and serves.
pub fn status_json(s: &Sources) -> serde_json::Value {
    let p = s.positions.borrow().clone();
    let i = s.upstream.borrow().clone();
    let archived = s.archived.as_ref().map(|a| *a.borrow());
    let mut doc = serde_json::json!({
        "upstream": {
            "connected": i.connected,
            "server": i.server,
            "server_version": i.server_version,
            "system_identifier": i.system_id.to_string(),
            "timeline": i.timeline,
        },
        "store": {
            "timeline": p.timeline,
            "write_lsn": p.write_lsn.to_string(),
            "flush_lsn": p.flush_lsn.to_string(),
            "wal_segment_size": p.wal_segment_size,
            "completed_segments": p.completed_segments,
            "error": p.error,
        },
        "archive": {
            "archived_lsn": archived.map(|l| l.to_string()),
        },
    });
    if let Some(w) = &s.walsenders {
        doc["walsenders"] = serde_json::to_value(w.status()).unwrap_or_default();
        doc["slots"] = serde_json::to_value(w.slots()).unwrap_or_default();
    }
    doc
}

fn add_status(routes: &mut Routes, s: &Sources) {
    let s = s.clone();
    routes.add(
        "GET",
        "/status",
        Arc::new(move |_| Response::json(200, &status_json(&s))),
    );
}

/// Routes of the metrics listener: `/metrics`, `/health`, `/status` — read-only.
pub fn metrics_routes(handle: PrometheusHandle, s: &Sources) -> Routes {
    let mut routes = Routes::default();
    let walsenders = s.walsenders.clone();
    routes.add(
        "GET",
        "/metrics",
        Arc::new(move |_| {
            let mut text = handle.render();
            if let Some(w) = &walsenders {
                let samples: Vec<StandbySample> = w
                    .status()
                    .into_iter()
                    .map(|r| StandbySample {
                        application_name: r.application_name,
                        sent: r.sent_lsn.map(|l| l.0),
                        flush: r.flush_lsn.map(|l| l.0),
                        replay: r.replay_lsn.map(|l| l.0),
                        replay_lag_seconds: r.replay_lag,
                    })
                    .collect();
                text.push_str(&crate::metrics::render_standbys(&samples));
            }
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: text.into_bytes(),
            }
        }),
    );
    let positions = s.positions.clone();
    routes.add(
        "GET",
        "/health",
        Arc::new(move |_| match &positions.borrow().error {
            None => Response::json(200, &serde_json::json!({ "status": "ok" })),
            Some(e) => Response::json(503, &serde_json::json!({ "status": "failing", "error": e })),
        }),
    );
    add_status(&mut routes, s);
    routes
}

/// Routes of the control endpoint: `/status`, and with feeds `/feeds…` and `/xacts`.
pub fn control_routes(s: &Sources) -> Routes {
    let mut routes = Routes::default();
    add_status(&mut routes, s);
    if let Some(f) = &s.feeds {
        crate::delay::api::register_routes(&mut routes, f.clone());
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

/// Longest Unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Starts the metrics listener (when `metrics.listen` is set), the control socket and the
/// control TCP listener (when `control.listen` is set).
pub async fn start(
    cfg: &Config,
    metrics: Option<PrometheusHandle>,
    s: &Sources,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    if let (Some(addr), Some(handle)) = (&cfg.metrics.listen, metrics) {
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| format!("invalid metrics.listen \"{addr}\": {e}"))?;
        let ep = Endpoint::new(
            "metrics.listen",
            metrics_routes(handle, s),
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
            tracing::info!(
                "metrics, health and status on http://{local}/metrics, /health and /status"
            );
        }
    }
    let routes = control_routes(s);
    let socket = cfg.control.socket_path(&cfg.data_dir);
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
        return Ok(Target::Unix(c.control.socket_path(&c.data_dir)));
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

//! The admin routes for feeds and transactions, and the client side used by the
//! `walrelay feed` and `walrelay xacts` commands.
//!
//! Owns: the HTTP surface of the control endpoint (`GET /feeds`, `GET /feeds/NAME`, `POST /feeds/NAME/pause`,
//! `POST /feeds/NAME/resume`, `POST /feeds/NAME/advance?to_time=…|before_xid=…|to_lsn=…|
//! to_restore_point=…`, `GET /xacts?since=…&until=…&drops_only=1&limit=…`), the text the
//! commands print, `walrelay xacts -D DIR` (decoding segment files without a server), and the
//! fan-out of `walrelay feed` to every `--control` given (the instances of an HA pair);
//! the group paths `POST /feedset/pause|resume|advance?feeds=CLUSTER:FEED,…` (logic in
//! [`super::group`]) and the client side of `walrelay feed … --group`.
//! Must not: hold feed state (that is [`super::feeds`]).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::admin::{Request, Response, Routes, Target};
use crate::lsn::pg_now;

use super::feeds::{AdvanceTarget, FeedController};
use super::index::IndexEntry;
use super::time::{format_pg_time, parse_pg_time};

/// Which transactions `xacts` lists.
#[derive(Debug, Clone, Default)]
pub struct XactFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub drops_only: bool,
    pub limit: usize,
}

impl XactFilter {
    pub fn matches(&self, e: &IndexEntry) -> bool {
        self.since.is_none_or(|s| e.time >= s)
            && self.until.is_none_or(|u| e.time <= u)
            && (!self.drops_only || e.drops_relations())
    }
}

/// The `GET /xacts` query arguments (`since`, `until`, `drops_only`, `limit`) of a request;
/// `pub` for the `http_request` fuzz target only.
#[doc(hidden)]
pub fn filter_from(req: &Request) -> Result<XactFilter, String> {
    let now = pg_now();
    let t = |k: &str| -> Result<Option<i64>, String> {
        req.param(k)
            .map(|v| parse_pg_time(v, now).map_err(|e| e.to_string()))
            .transpose()
    };
    Ok(XactFilter {
        since: t("since")?,
        until: t("until")?,
        drops_only: matches!(req.param("drops_only"), Some("1" | "true" | "yes" | "")),
        limit: req
            .param("limit")
            .map(|l| l.parse().map_err(|_| format!("invalid limit \"{l}\"")))
            .transpose()?
            .unwrap_or(10_000),
    })
}

/// Registers the feed and xacts routes.
pub fn register_routes(routes: &mut Routes, feeds: Arc<FeedController>) {
    let f = feeds.clone();
    routes.add(
        "GET",
        "/feeds",
        Arc::new(move |req: &Request| match req.rest(1) {
            [] => Response::json(200, &f.list()),
            [name] => match f.show(name) {
                Ok(v) => Response::json(200, &v),
                Err(e) => Response::error(e.http_status(), e.to_string()),
            },
            _ => Response::error(404, format!("no such endpoint: {}", req.path)),
        }),
    );
    let f = feeds.clone();
    routes.add(
        "POST",
        "/feeds",
        Arc::new(move |req: &Request| {
            let [name, action] = req.rest(1) else {
                return Response::error(404, "use POST /feeds/NAME/pause|resume|advance");
            };
            feed_action(&f, name, action, req)
        }),
    );
    let f = feeds.clone();
    register_group_routes(
        routes,
        Arc::new(move |name: &str| f.show(name).ok().map(|_| f.clone())),
    );
    let f = feeds;
    routes.add(
        "GET",
        "/xacts",
        Arc::new(move |req: &Request| {
            let filter = match filter_from(req) {
                Ok(x) => x,
                Err(e) => return Response::error(400, e),
            };
            let list = f.index().select(filter.limit, |e| filter.matches(e));
            Response::json(200, &xacts_json(&list))
        }),
    );
}

/// Finds the controller that has a feed of this name (the process may run several clusters).
/// `POST /feeds/NAME/ACTION` on the controller that owns feed `name` (single- and
/// multi-cluster routes share it).
pub(crate) fn feed_action(f: &FeedController, name: &str, action: &str, req: &Request) -> Response {
    let r = match action {
        "pause" => f.pause(name),
        "resume" => f.resume(name),
        "advance" => {
            let get = |k: &str| req.param(k).map(str::to_string);
            match AdvanceTarget::from_params(&get, pg_now()) {
                Ok(t) => f.advance(name, &t),
                Err(e) => return Response::error(400, e),
            }
        }
        _ => return Response::error(404, format!("unknown feed action \"{action}\"")),
    };
    match r {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(e.http_status(), e.to_string()),
    }
}

pub type FeedLookup = Arc<dyn Fn(&str) -> Option<Arc<FeedController>> + Send + Sync>;

/// Registers `POST /feedset/pause|resume|advance?feeds=CLUSTER:FEED,…[&to_restore_point=…]`:
/// the group-wide feed control of [`super::group`] (all or nothing).
pub fn register_group_routes(routes: &mut Routes, lookup: FeedLookup) {
    routes.add(
        "POST",
        "/feedset",
        Arc::new(move |req: &Request| {
            let [action] = req.rest(1) else {
                return Response::error(404, "use POST /feedset/pause|resume|advance?feeds=…");
            };
            let action = match action.as_str() {
                "pause" => super::group::GroupAction::Pause,
                "resume" => super::group::GroupAction::Resume,
                "advance" => {
                    let get = |k: &str| req.param(k).map(str::to_string);
                    match AdvanceTarget::from_params(&get, pg_now()) {
                        Ok(t) => super::group::GroupAction::Advance(t),
                        Err(e) => return Response::error(400, e),
                    }
                }
                _ => return Response::error(404, format!("unknown feed action \"{action}\"")),
            };
            let list = match super::group::parse_members(req.param("feeds").unwrap_or("")) {
                Ok(l) => l,
                Err(e) => return Response::error(400, e),
            };
            let mut members = Vec::with_capacity(list.len());
            let mut unknown = Vec::new();
            for (cluster, feed) in list {
                match lookup(&feed) {
                    Some(controller) => members.push(super::group::Member {
                        cluster,
                        feed,
                        controller,
                    }),
                    None => {
                        unknown.push(format!("cluster \"{cluster}\": no feed named \"{feed}\""))
                    }
                }
            }
            if !unknown.is_empty() {
                return Response::error(
                    404,
                    format!(
                        "refused for the whole group, no feed changed: {}",
                        unknown.join("; ")
                    ),
                );
            }
            match super::group::apply(&members, &action) {
                Ok(v) => Response::json(200, &v),
                Err(e) => Response::error(e.http_status(), e.to_string()),
            }
        }),
    );
}

fn xacts_json(list: &[IndexEntry]) -> Value {
    json!({ "xacts": list.iter().map(IndexEntry::to_json).collect::<Vec<_>>() })
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

async fn call(target: &Target, method: &str, path: &str) -> Result<Value, String> {
    let (status, body) = crate::admin::call(target, method, path, &[])
        .await
        .map_err(|e| format!("could not reach walrelay's control endpoint at {target}: {e}"))?;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    if status != 200 {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or(body.trim());
        return Err(msg.to_string());
    }
    Ok(v)
}

/// `walrelay feed pause|resume|advance --group G`: `action` on every delayed feed of the
/// group's clusters (`feeds`: cluster and feed names), all or nothing; the text to print.
pub async fn group_command(
    addr: &Target,
    action: &str,
    feeds: &[(String, String)],
    params: &[(&'static str, String)],
    as_json: bool,
) -> Result<String, String> {
    let list: Vec<String> = feeds.iter().map(|(c, f)| format!("{c}:{f}")).collect();
    let mut q = vec![format!("feeds={}", enc(&list.join(",")))];
    q.extend(params.iter().map(|(k, v)| format!("{k}={}", enc(v))));
    let v = call(addr, "POST", &format!("/feedset/{action}?{}", q.join("&"))).await?;
    if as_json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let mut out = String::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    for m in v
        .get("feeds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = m.get("feed").cloned().unwrap_or(Value::Null);
        out.push_str(&format!(
            "cluster {:<16} feed {:<16} {:<10} held at {}\n",
            s(m, "cluster"),
            s(&f, "name"),
            s(&f, "state"),
            s(&f, "held_at")
        ));
    }
    Ok(out)
}

/// What `walrelay feed` was asked to do.
#[derive(Debug, Clone)]
pub enum FeedCommand {
    List,
    Pause(String),
    Resume(String),
    Advance(String, Vec<(&'static str, String)>),
}

/// Runs `walrelay feed …` against the control endpoint; returns the text to print.
pub async fn feed_command(
    addr: &Target,
    cmd: &FeedCommand,
    as_json: bool,
) -> Result<String, String> {
    let v = feed_call(addr, cmd).await?;
    if as_json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    Ok(format_feeds(&v))
}

/// `walrelay feed …` with `--control` given more than once (an HA pair, docs/ha.md): the
/// same command on every instance, one after the other in the order given, each reported
/// under its `--control` text. Returns the text to print and the instances that failed
/// (the caller exits non-zero if any did). Holds are per instance; since both instances of
/// a pair hold the same WAL, an advance to a restore point, a transaction or an LSN holds
/// both at the same point.
pub async fn feed_fanout(
    targets: &[(String, Target)],
    cmd: &FeedCommand,
    as_json: bool,
) -> (String, Vec<String>) {
    let mut failed = Vec::new();
    let mut out = String::new();
    let mut json = Vec::new();
    for (label, target) in targets {
        match feed_call(target, cmd).await {
            Ok(v) => {
                if as_json {
                    json.push(json!({ "control": label, "ok": true, "result": v }));
                } else {
                    out.push_str(&format!("walrelay at {label}: ok\n{}", format_feeds(&v)));
                }
            }
            Err(e) => {
                if as_json {
                    json.push(json!({ "control": label, "ok": false, "error": e }));
                } else {
                    out.push_str(&format!("walrelay at {label}: failed: {e}\n"));
                }
                failed.push(format!("{label}: {e}"));
            }
        }
    }
    if as_json {
        out = serde_json::to_string_pretty(&json!({ "instances": json })).unwrap_or_default();
        out.push('\n');
    }
    (out, failed)
}

/// One `walrelay feed …` request; the JSON answer.
async fn feed_call(addr: &Target, cmd: &FeedCommand) -> Result<Value, String> {
    Ok(match cmd {
        FeedCommand::List => call(addr, "GET", "/feeds").await?,
        FeedCommand::Pause(n) => call(addr, "POST", &format!("/feeds/{}/pause", enc(n))).await?,
        FeedCommand::Resume(n) => call(addr, "POST", &format!("/feeds/{}/resume", enc(n))).await?,
        FeedCommand::Advance(n, params) => {
            let q: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", enc(v)))
                .collect();
            call(
                addr,
                "POST",
                &format!("/feeds/{}/advance?{}", enc(n), q.join("&")),
            )
            .await?
        }
    })
}

/// The feed table printed by `walrelay feed` (a list or one feed's answer).
fn format_feeds(v: &Value) -> String {
    let feeds: Vec<Value> = match v.get("feeds").and_then(Value::as_array) {
        Some(a) => a.clone(),
        None => vec![v.clone()],
    };
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:>8} {:>4} {:<14} {:<14} {:<10} {:<14} {}\n",
        "feed",
        "delay",
        "conn",
        "position",
        "send limit",
        "state",
        "held at",
        "next commit waiting"
    ));
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    for f in feeds {
        let w = f.get("waiting_commit").cloned().unwrap_or(Value::Null);
        let waiting = if w.is_null() {
            "-".to_string()
        } else {
            let mut t = format!(
                "xid {} at {} committed {}",
                w.get("xid").unwrap_or(&Value::Null),
                s(&w, "lsn"),
                s(&w, "commit_time")
            );
            if let Some(d) = w.get("due_in_seconds").and_then(Value::as_f64) {
                t.push_str(&format!(", due in {d:.1}s"));
            }
            if let Some(r) = w.get("dropped_relations").and_then(Value::as_array) {
                let r: Vec<&str> = r.iter().filter_map(Value::as_str).collect();
                t.push_str(&format!(", drops {}", r.join(", ")));
            }
            t
        };
        out.push_str(&format!(
            "{:<16} {:>8} {:>4} {:<14} {:<14} {:<10} {:<14} {}\n",
            s(&f, "name"),
            s(&f, "delay"),
            f.get("sessions").and_then(Value::as_u64).unwrap_or(0),
            s(&f, "position"),
            s(&f, "send_limit"),
            s(&f, "state"),
            s(&f, "held_at"),
            waiting
        ));
    }
    out
}

/// Text table of transactions.
pub fn format_xacts(list: &[Value]) -> String {
    let mut out = format!(
        "{:<30} {:>10} {:<14} {:<16} {}\n",
        "commit time", "xid", "lsn", "kind", "dropped relations / name"
    );
    for x in list {
        let s = |k: &str| x.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let rels: Vec<&str> = x
            .get("dropped_relations")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let extra = if rels.is_empty() {
            s("name")
        } else {
            rels.join(", ")
        };
        out.push_str(&format!(
            "{:<30} {:>10} {:<14} {:<16} {}\n",
            s("time"),
            x.get("xid").and_then(Value::as_u64).unwrap_or(0),
            s("lsn"),
            s("kind"),
            extra
        ));
    }
    out
}

/// `walrelay xacts` through the control endpoint (the running server's index).
pub async fn xacts_remote(
    addr: &Target,
    since: Option<&str>,
    until: Option<&str>,
    drops_only: bool,
) -> Result<Vec<Value>, String> {
    let mut q = Vec::new();
    if let Some(s) = since {
        q.push(format!("since={}", enc(s)));
    }
    if let Some(u) = until {
        q.push(format!("until={}", enc(u)));
    }
    if drops_only {
        q.push("drops_only=1".into());
    }
    let v = call(addr, "GET", &format!("/xacts?{}", q.join("&"))).await?;
    Ok(v.get("xacts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// `walrelay xacts -D DIR`: decodes the segment files in `dir`. Warnings go to stderr.
pub fn xacts_local(dir: &Path, filter: &XactFilter) -> Result<Vec<Value>, String> {
    let (entries, warnings) = super::segments::scan_dir(dir)
        .map_err(|e| format!("could not read WAL in \"{}\": {e}", dir.display()))?;
    for w in warnings {
        eprintln!("walrelay: warning: {w}");
    }
    Ok(entries
        .iter()
        .filter(|e| filter.matches(e))
        .take(if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        })
        .map(IndexEntry::to_json)
        .collect())
}

/// Parses `--since`/`--until` for the local mode.
pub fn parse_time_arg(s: Option<&str>) -> Result<Option<i64>, String> {
    s.map(|v| parse_pg_time(v, pg_now()).map_err(|e| e.to_string()))
        .transpose()
}

/// Formats a time for messages.
pub fn time_text(t: i64) -> String {
    format_pg_time(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{serve_tcp, Endpoint, Policy, Transport};

    /// Two instances, one answering and one not: the command reaches the first, each is
    /// reported under its label, and the failure is returned for the exit status.
    #[tokio::test]
    async fn fanout_reports_every_instance() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let mut routes = Routes::default();
        routes.add(
            "POST",
            "/feeds",
            Arc::new(|r: &Request| {
                assert_eq!(r.path, "/feeds/lag/pause");
                Response::json(200, &json!({"name": "lag", "state": "paused"}))
            }),
        );
        let ep = Endpoint::new(
            "test",
            routes,
            Policy::new(Transport::Tcp { tls: false }, None, &[]),
        );
        let s = serve_tcp("127.0.0.1:0".parse().unwrap(), ep, rx)
            .await
            .unwrap();
        let up = format!("http://{}", s.local_addr.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("walrelay.control.sock");
        let targets = vec![
            (
                up.clone(),
                Target::Tcp {
                    addr: s.local_addr.unwrap().to_string(),
                    token: None,
                },
            ),
            (gone.display().to_string(), Target::Unix(gone.clone())),
        ];
        let cmd = FeedCommand::Pause("lag".into());
        let (out, failed) = feed_fanout(&targets, &cmd, false).await;
        assert!(
            out.starts_with(&format!("walrelay at {up}: ok\nfeed ")),
            "{out}"
        );
        assert!(out.contains("paused"), "{out}");
        let down = format!("walrelay at {}: failed: could not reach", gone.display());
        assert!(out.contains(&down), "{out}");
        assert_eq!(failed.len(), 1);
        assert!(failed[0].starts_with(&gone.display().to_string()));

        let (out, failed) = feed_fanout(&targets, &cmd, true).await;
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["instances"][0]["control"], up.as_str());
        assert_eq!(v["instances"][0]["ok"], true);
        assert_eq!(v["instances"][0]["result"]["state"], "paused");
        assert_eq!(v["instances"][1]["ok"], false);
        assert!(v["instances"][1]["error"]
            .as_str()
            .unwrap()
            .contains("could not reach"));
        assert_eq!(failed.len(), 1);
    }
}

//! The feed routes of the control endpoint when several clusters have feeds: one surface
//! over every cluster's [`FeedController`], feeds addressed by their process-unique name.
//!
//! Owns: `GET /feeds` (every cluster's feeds, each with its `cluster`), `GET /feeds/NAME`,
//! `POST /feeds/NAME/pause|resume|advance` (sent to the feed's cluster) and
//! `GET /xacts?cluster=NAME&…` (one cluster's commit index; `cluster` is required with
//! several). Must not: hold feed state.

// Parses outside input (request paths and parameters).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::sync::Arc;

use serde_json::{json, Value};

use crate::admin::{Request, Response, Routes};
use crate::delay::FeedController;

type Clusters = Arc<Vec<(String, Arc<FeedController>)>>;

/// The feeds of one controller's list (`{"feeds": [...]}`).
fn feeds_of(f: &FeedController) -> Vec<Value> {
    f.list()
        .get("feeds")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn feed_names(f: &FeedController) -> Vec<String> {
    feeds_of(f)
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The controller holding feed `name`.
fn owner(all: &Clusters, name: &str) -> Option<Arc<FeedController>> {
    all.iter()
        .find(|(_, f)| feed_names(f).iter().any(|n| n == name))
        .map(|(_, f)| f.clone())
}

fn not_found(name: &str) -> Response {
    Response::error(404, format!("no feed named \"{name}\""))
}

pub(super) fn register_routes(routes: &mut Routes, feeds: Vec<(String, Arc<FeedController>)>) {
    let all: Clusters = Arc::new(feeds);
    let a = all.clone();
    routes.add(
        "GET",
        "/feeds",
        Arc::new(move |req: &Request| match req.rest(1) {
            [] => {
                let mut list: Vec<Value> = Vec::new();
                for (cluster, f) in a.iter() {
                    for mut v in feeds_of(f) {
                        if let Some(o) = v.as_object_mut() {
                            o.insert("cluster".into(), json!(cluster));
                        }
                        list.push(v);
                    }
                }
                Response::json(200, &json!({ "feeds": list }))
            }
            [name] => match owner(&a, name) {
                Some(f) => match f.show(name) {
                    Ok(v) => Response::json(200, &v),
                    Err(e) => Response::error(e.http_status(), e.to_string()),
                },
                None => not_found(name),
            },
            _ => Response::error(404, format!("no such endpoint: {}", req.path)),
        }),
    );
    let a = all.clone();
    routes.add(
        "POST",
        "/feeds",
        Arc::new(move |req: &Request| {
            let [name, action] = req.rest(1) else {
                return Response::error(404, "use POST /feeds/NAME/pause|resume|advance");
            };
            let Some(f) = owner(&a, name) else {
                return not_found(name);
            };
            crate::delay::api::feed_action(&f, name, action, req)
        }),
    );
    // group feed control (restorepoints agent): POST /feedset/… over every cluster's feeds
    let a = all.clone();
    crate::delay::api::register_group_routes(routes, Arc::new(move |n: &str| owner(&a, n)));
    let a = all;
    routes.add(
        "GET",
        "/xacts",
        Arc::new(move |req: &Request| {
            let names = a
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let Some(cluster) = req.param("cluster") else {
                return Response::error(
                    400,
                    format!("several clusters have feeds: add cluster=NAME, `walrelay xacts --cluster NAME` ({names})"),
                );
            };
            let Some((_, f)) = a.iter().find(|(n, _)| n == cluster) else {
                return Response::error(
                    404,
                    format!("no cluster \"{cluster}\" with feeds ({names})"),
                );
            };
            let filter = match crate::delay::api::filter_from(req) {
                Ok(x) => x,
                Err(e) => return Response::error(400, e),
            };
            let list = f.index().select(filter.limit, |e| filter.matches(e));
            Response::json(
                200,
                &json!({ "xacts": list.iter().map(|e| e.to_json()).collect::<Vec<_>>() }),
            )
        }),
    );
}

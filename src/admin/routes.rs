//! The route table of the HTTP endpoints: what a handler sees ([`Request`]), what it returns
//! ([`Response`]) and how a request finds its handler ([`Routes`]).
//!
//! Owns: decoding the request target (percent-decoding per path segment with
//! `percent-encoding`, the query string with `form_urlencoded`) and method/path dispatch
//! (404 for an unknown path, 405 for a known path with another method). Must not: do IO or
//! decide who may call what (that is [`super::guard`]).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::sync::Arc;

/// A request as routes see it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Decoded path without the query string (for messages).
    pub path: String,
    /// The path's segments, each percent-decoded on its own (so `%2F` stays inside one).
    pub segments: Vec<String>,
    /// Decoded `key=value` pairs of the query string.
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A request target that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request target: {0}")]
pub struct TargetError(pub &'static str);

impl Request {
    /// Builds a request from the method and the raw `path?query` target.
    pub fn from_target(
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> Result<Request, TargetError> {
        if !path.starts_with('/') {
            return Err(TargetError("the path must start with '/'"));
        }
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| TargetError("the path is not UTF-8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let query = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Request {
            method: method.to_string(),
            path: format!("/{}", segments.join("/")),
            segments,
            query,
            body: Vec::new(),
        })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The segments after the route prefix's segments.
    pub fn rest(&self, prefix_segments: usize) -> &[String] {
        self.segments.get(prefix_segments..).unwrap_or(&[])
    }
}

/// A response: status code, content type, body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
        }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

/// A handler for every path starting with its prefix. Handlers run on a blocking thread.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

#[derive(Clone)]
struct Route {
    method: &'static str,
    prefix: Vec<String>,
    handler: Handler,
}

#[derive(Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Registers `handler` for `method` and paths equal to `prefix` or below `prefix/`.
    pub fn add(&mut self, method: &'static str, prefix: &str, handler: Handler) {
        let prefix = prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        self.routes.push(Route {
            method,
            prefix,
            handler,
        });
    }

    /// Runs the handler for `req`, or answers 404/405.
    pub fn dispatch(&self, req: &Request) -> Response {
        let mut path_known = false;
        for r in self.routes.iter() {
            if req.segments.starts_with(&r.prefix) {
                path_known = true;
                if r.method == req.method {
                    return (r.handler)(req);
                }
            }
        }
        if path_known {
            Response::error(
                405,
                format!("method {} not allowed on {}", req.method, req.path),
            )
        } else {
            Response::error(404, format!("no such endpoint: {}", req.path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_targets() {
        let r = Request::from_target(
            "POST",
            "/feeds/a%20b/advance",
            Some("to_lsn=0%2F3000000&x&y=a+b"),
        )
        .unwrap();
        assert_eq!(r.segments, ["feeds", "a b", "advance"]);
        assert_eq!(r.path, "/feeds/a b/advance");
        assert_eq!(r.param("to_lsn"), Some("0/3000000"));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(r.param("y"), Some("a b"));
        let r = Request::from_target("GET", "/feeds/a%2Fb", None).unwrap();
        assert_eq!(r.segments, ["feeds", "a/b"]);
        assert!(Request::from_target("GET", "/%ff", None).is_err());
        assert!(Request::from_target("GET", "x", None).is_err());
        // invalid escapes are kept verbatim, never a panic
        let r = Request::from_target("GET", "/%zz%4", Some("%zz=%")).unwrap();
        assert_eq!(r.segments, ["%zz%4"]);
        assert_eq!(r.param("%zz"), Some("%"));
    }

    #[test]
    fn dispatches() {
        let mut routes = Routes::default();
        routes.add(
            "GET",
            "/feeds",
            Arc::new(|r| Response::text(200, r.rest(1).join(","))),
        );
        let get = |m: &str, p: &str| routes.dispatch(&Request::from_target(m, p, None).unwrap());
        assert_eq!(get("GET", "/feeds/a").body, b"a");
        assert_eq!(get("GET", "/feeds").status, 200);
        assert_eq!(get("GET", "/feedsx").status, 404);
        assert_eq!(get("POST", "/feeds/a").status, 405);
        assert_eq!(get("GET", "/").status, 404);
    }
}

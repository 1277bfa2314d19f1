//! The admin HTTP endpoint: Prometheus metrics, the JSON status view, and control commands.
//!
//! Owns: a deliberately small HTTP/1.1 server (one request per connection, bounded request
//! size, timeouts) and the routing of requests to [`Route`]s registered by the wiring in
//! `main.rs`. Must not: hold business logic — routes call into the modules that own state.
//!
//! Endpoints (all on `metrics.listen`):
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`: JSON (upstream, store positions, archive, walsenders, feeds).
//! - other routes registered by modules (e.g. `POST /feeds/<name>/pause`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A request as routes see it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Decoded `key=value` pairs of the query string.
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
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

/// A handler for every path starting with `prefix`.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

#[derive(Clone, Default)]
pub struct Routes {
    routes: Vec<(String, String, Handler)>,
}

impl Routes {
    /// Registers `handler` for `method` and paths equal to `prefix` or below `prefix/`.
    pub fn add(&mut self, method: &str, prefix: &str, handler: Handler) {
        self.routes
            .push((method.to_string(), prefix.to_string(), handler));
    }

    fn dispatch(&self, req: &Request) -> Response {
        let mut path_known = false;
        for (method, prefix, handler) in &self.routes {
            let matches = req.path == *prefix || req.path.starts_with(&format!("{prefix}/"));
            if matches {
                path_known = true;
                if *method == req.method {
                    return handler(req);
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

const MAX_REQUEST: usize = 64 * 1024;

/// Binds `addr` and serves `routes` until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    routes: Routes,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((sock, _)) = r else { continue };
                    let routes = routes.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(30), handle(sock, &routes)).await;
                    });
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
            }
        }
    });
    Ok(local)
}

async fn handle(mut sock: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_end, req) = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break (pos + 4, parse_head(&buf[..pos]));
        }
        if buf.len() > MAX_REQUEST {
            return write_response(&mut sock, &Response::error(431, "request header too large"))
                .await;
        }
    };
    let Some((mut req, content_length)) = req else {
        return write_response(&mut sock, &Response::error(400, "malformed request")).await;
    };
    if content_length > MAX_REQUEST {
        return write_response(&mut sock, &Response::error(413, "request body too large")).await;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < content_length {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    req.body = body;
    let resp = routes.dispatch(&req);
    write_response(&mut sock, &resp).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Option<(Request, usize)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let mut content_length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().ok()?;
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some((
        Request {
            method,
            path: percent_decode(path),
            query,
            body: Vec::new(),
        },
        content_length,
    ))
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept verbatim.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn write_response(sock: &mut TcpStream, r: &Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&r.body).await?;
    sock.shutdown().await
}

/// A blocking HTTP request to an admin endpoint, for the CLI (`walrelay feed …`).
/// Returns the status code and body.
pub fn request(addr: &str, method: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let (r, cl) = parse_head(b"POST /feeds/a%20b/advance?to-lsn=0%2F3000000&x HTTP/1.1\r\nContent-Length: 5\r\nHost: x").unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/feeds/a b/advance");
        assert_eq!(r.param("to-lsn"), Some("0/3000000"));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(cl, 5);
        assert!(parse_head(b"\xff\xfe").is_none());
        assert!(parse_head(b"GET").is_none());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[tokio::test]
    async fn serves_routes() {
        let mut routes = Routes::default();
        routes.add(
            "GET",
            "/status",
            Arc::new(|_| Response::json(200, &serde_json::json!({"ok": true}))),
        );
        let (_tx, rx) = watch::channel(false);
        let addr = serve("127.0.0.1:0".parse().unwrap(), routes, rx)
            .await
            .unwrap();
        let a = addr.to_string();
        let (st, body) = tokio::task::spawn_blocking(move || request(&a, "GET", "/status"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st, 200);
        assert!(body.contains("\"ok\": true"));
        let a = addr.to_string();
        let (st, _) = tokio::task::spawn_blocking(move || request(&a, "POST", "/status"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st, 405);
        let a = addr.to_string();
        let (st, _) = tokio::task::spawn_blocking(move || request(&a, "GET", "/nope"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st, 404);
    }
}

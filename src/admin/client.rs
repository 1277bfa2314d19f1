//! The client side of the HTTP endpoints, for `walrelay feed`, `walrelay xacts` and tests:
//! one request over a Unix socket or TCP (with the bearer token when given), via hyper.
//!
//! Owns: building the request (Host, `Authorization`, `Content-Type: application/json` on
//! POST) and reading the status and body (at most 64 MiB, 30 s). Must not: interpret bodies.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Where a running walrelay's endpoint is.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// The control socket.
    Unix(PathBuf),
    /// `host:port`, with the token for the control listener.
    Tcp { addr: String, token: Option<String> },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "Unix({})", p.display()),
            Target::Tcp { addr, token } => write!(
                f,
                "Tcp({addr}{})",
                if token.is_some() {
                    ", token <redacted>"
                } else {
                    ""
                }
            ),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "\"{}\"", p.display()),
            Target::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REPLY: usize = 64 << 20;

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

async fn send<I>(io: I, req: hyper::Request<Full<Bytes>>) -> std::io::Result<(u16, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(other)?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.map_err(other)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(other)?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    driver.abort();
    result
}

/// One request; `headers` are added (and may override the defaults).
pub async fn call(
    target: &Target,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let host = match target {
        Target::Unix(_) => "localhost",
        Target::Tcp { addr, .. } => addr.as_str(),
    };
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, host);
    if method != "GET" && method != "HEAD" {
        b = b.header(http::header::CONTENT_TYPE, "application/json");
    }
    if let Target::Tcp { token: Some(t), .. } = target {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut req = b.body(Full::new(Bytes::new())).map_err(other)?;
    for (k, v) in headers {
        let name = http::header::HeaderName::from_bytes(k.as_bytes()).map_err(other)?;
        let value = http::header::HeaderValue::from_str(v).map_err(other)?;
        req.headers_mut().insert(name, value);
    }
    let work = async {
        match target {
            Target::Unix(p) => send(tokio::net::UnixStream::connect(p).await?, req).await,
            Target::Tcp { addr, .. } => {
                send(tokio::net::TcpStream::connect(addr).await?, req).await
            }
        }
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s"))?
}

/// [`call`] from a thread that is not running async code.
pub fn call_blocking(
    target: &Target,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(call(target, method, path_and_query, headers))
}

/// A plain request to a TCP listener without a token (the metrics listener), blocking.
pub fn request(addr: &str, method: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    call_blocking(
        &Target::Tcp {
            addr: addr.to_string(),
            token: None,
        },
        method,
        path_and_query,
        &[],
    )
}

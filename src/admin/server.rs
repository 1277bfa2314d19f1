//! Serving [`Routes`] over HTTP/1.1 with hyper, on TCP (optionally TLS) or a Unix socket.
//!
//! Owns: the accept loop and its limits — a semaphore taken *before* `accept` (at most
//! [`Limits::max_connections`] connections at once, the rest wait in the kernel's backlog),
//! at most [`Limits::max_waiting`] connections that have not yet sent a complete request
//! head (the oldest is dropped when a new one arrives, so silent connections cannot starve
//! a Prometheus scrape) and at most [`Limits::max_waiting_per_address`] of them per client
//! address (beyond that the oldest *from that address* is dropped, so one host cannot fill
//! the queue and evict everyone else's, yet a scrape from a flooding host still gets in; the
//! walsender listener's `max_startup_connections_per_address` is the same idea), a header-read timeout, a body size limit and timeout, one request
//! per connection, a total per-connection timeout, and accept errors logged at most every
//! 10 s (with a short back-off so `EMFILE` does not spin). Every request passes
//! [`Policy::check`] before routing; handlers run on a blocking thread.
//! Must not: know routes or decide access rules (that is [`super::guard`]).

// Handles outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use super::guard::{Policy, Transport};
use super::routes::{Request, Response, Routes};

/// Resource limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once (taken before accept).
    pub max_connections: usize,
    /// Connections that have not sent a complete request head yet; the oldest is dropped
    /// beyond this.
    pub max_waiting: usize,
    /// Of those, from one client IP address; beyond this a new connection from that address
    /// drops its oldest one (never another address's).
    pub max_waiting_per_address: usize,
    /// Time to send the request head (and complete TLS).
    pub header_timeout: Duration,
    /// Time to send the body.
    pub body_timeout: Duration,
    /// Longest life of a connection.
    pub connection_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// Largest request head (start line and headers).
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            max_waiting: 32,
            max_waiting_per_address: 8,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_body: 64 * 1024,
            max_head: 16 * 1024,
        }
    }
}

/// What a listener serves and to whom.
#[derive(Clone)]
pub struct Endpoint {
    /// For messages, e.g. `metrics.listen`.
    pub name: &'static str,
    pub routes: Routes,
    pub policy: Policy,
    pub limits: Limits,
    /// TLS for a TCP listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A running listener; dropping it does not stop it (the shutdown watch does).
pub struct Serving {
    /// The bound address of a TCP listener.
    pub local_addr: Option<SocketAddr>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Errors binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("could not listen on {addr} ({name}): {source}")]
    Tcp {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not listen on Unix socket \"{path}\" ({name}): {source}")]
    Unix {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Unix socket \"{0}\" is in use by another process (is another walrelay running on this data directory?)")]
    InUse(PathBuf),
}

enum Acceptor {
    Tcp(TcpListener, Option<tokio_rustls::TlsAcceptor>),
    Unix(UnixListener),
}

/// Binds `addr` and serves `ep` until `shutdown` turns true.
pub async fn serve_tcp(
    addr: SocketAddr,
    ep: Endpoint,
    shutdown: watch::Receiver<bool>,
) -> Result<Serving, BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Tcp {
            name: ep.name,
            addr,
            source,
        })?;
    let local = listener.local_addr().ok();
    let tls = ep.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(accept_loop(
        Acceptor::Tcp(listener, tls),
        Arc::new(ep),
        shutdown,
    ));
    Ok(Serving {
        local_addr: local,
        task,
    })
}

/// Binds a Unix socket at `path` with mode 0600 and serves `ep` until `shutdown` turns true;
/// the socket file is removed then. A stale socket file (nobody listening) is replaced.
pub async fn serve_unix(
    path: &Path,
    ep: Endpoint,
    shutdown: watch::Receiver<bool>,
) -> Result<Serving, BindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| BindError::Unix {
        name: ep.name,
        path: path.into(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.into()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let owned = path.to_path_buf();
    let task = tokio::spawn(async move {
        accept_loop(Acceptor::Unix(listener), Arc::new(ep), shutdown).await;
        let _ = std::fs::remove_file(&owned);
    });
    Ok(Serving {
        local_addr: None,
        task,
    })
}

/// Resolves once `rx` is true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Accept errors, logged at most every 10 s.
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn log(&mut self, name: &str, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.suppressed = self.suppressed.saturating_add(1);
            return;
        }
        tracing::warn!(
            "could not accept a connection on {name}: {e} ({} more since the last message)",
            self.suppressed
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Connections still waiting for their request head, oldest first, and how many of them
/// each client address has.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    queue: VecDeque<(u64, Option<IpAddr>, oneshot::Sender<()>)>,
    per_address: HashMap<IpAddr, usize>,
}

impl Waiting {
    /// Registers a new connection from `ip` (`None` for a Unix socket): if `ip` already has
    /// `max_waiting_per_address`, its oldest is dropped; then the oldest of all beyond
    /// `max_waiting`.
    fn add(&mut self, limits: &Limits, ip: Option<IpAddr>) -> (u64, oneshot::Receiver<()>) {
        if let Some(ip) = ip {
            let n = self.per_address.get(&ip).copied().unwrap_or(0);
            if n >= limits.max_waiting_per_address.max(1) {
                let oldest = self.queue.iter().position(|(_, a, _)| *a == Some(ip));
                if let Some((_, old_ip, evict)) = oldest.and_then(|p| self.queue.remove(p)) {
                    self.forget(old_ip);
                    let _ = evict.send(());
                }
            }
        }
        while self.queue.len() >= limits.max_waiting.max(1) {
            if let Some((_, old_ip, evict)) = self.queue.pop_front() {
                self.forget(old_ip);
                let _ = evict.send(());
            }
        }
        let (tx, rx) = oneshot::channel();
        self.next_id = self.next_id.wrapping_add(1);
        self.queue.push_back((self.next_id, ip, tx));
        if let Some(ip) = ip {
            let n = self.per_address.entry(ip).or_insert(0);
            *n = n.saturating_add(1);
        }
        (self.next_id, rx)
    }

    /// The connection sent its request head, or ended (called more than once: harmless).
    fn done(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|(i, _, _)| *i == id) {
            if let Some((_, ip, _)) = self.queue.remove(pos) {
                self.forget(ip);
            }
        }
    }

    fn forget(&mut self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }
}

async fn accept_loop(acceptor: Acceptor, ep: Arc<Endpoint>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(ep.limits.max_connections.max(1)));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let mut conns = JoinSet::new();
    let mut errors = ErrorLog {
        last: None,
        suppressed: 0,
    };
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let waiting = waiting.clone();
        let ep2 = ep.clone();
        match &acceptor {
            Acceptor::Tcp(l, tls) => {
                let r = tokio::select! {
                    r = l.accept() => r,
                    _ = stopped(&mut shutdown) => break,
                };
                match r {
                    Ok((sock, peer)) => {
                        let (id, evicted) = lock(&waiting).add(&ep2.limits, Some(peer.ip()));
                        let _ = sock.set_nodelay(true);
                        let tls = tls.clone();
                        conns.spawn(async move {
                            let _permit = permit;
                            match tls {
                                None => connection(sock, ep2, waiting, id, evicted).await,
                                Some(acc) => {
                                    let hs = tokio::time::timeout(
                                        ep2.limits.header_timeout,
                                        acc.accept(sock),
                                    )
                                    .await;
                                    match hs {
                                        Ok(Ok(s)) => connection(s, ep2, waiting, id, evicted).await,
                                        _ => lock(&waiting).done(id),
                                    }
                                }
                            }
                        });
                    }
                    Err(e) => {
                        errors.log(ep.name, &e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Acceptor::Unix(l) => {
                let r = tokio::select! {
                    r = l.accept() => r,
                    _ = stopped(&mut shutdown) => break,
                };
                match r {
                    Ok((sock, _)) => {
                        let (id, evicted) = lock(&waiting).add(&ep2.limits, None);
                        conns.spawn(async move {
                            let _permit = permit;
                            connection(sock, ep2, waiting, id, evicted).await;
                        });
                    }
                    Err(e) => {
                        errors.log(ep.name, &e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
    conns.shutdown().await;
}

fn lock(w: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one connection (one request).
async fn connection<I>(
    io: I,
    ep: Arc<Endpoint>,
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
    evicted: oneshot::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ep2 = ep.clone();
    let w2 = waiting.clone();
    let svc = hyper::service::service_fn(move |req| {
        lock(&w2).done(id);
        let ep = ep2.clone();
        async move { Ok::<_, Infallible>(handle(req, &ep).await) }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(ep.limits.header_timeout)
        .max_buf_size(ep.limits.max_head.max(8192))
        .max_header_size(ep.limits.max_head)
        .keep_alive(false);
    let conn = b.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = tokio::time::timeout(ep.limits.connection_timeout, conn) => {}
        // dropped for a newer connection while still silent
        Ok(()) = evicted => {}
    }
    lock(&waiting).done(id);
}

async fn handle(req: hyper::Request<Incoming>, ep: &Endpoint) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if let Err(r) = ep.policy.check(&parts.method, &parts.headers) {
        return to_http(Response::error(r.status, r.message));
    }
    let collected = tokio::time::timeout(
        ep.limits.body_timeout,
        Limited::new(body, ep.limits.max_body).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return to_http(Response::error(413, "request body too large"))
        }
        Ok(Err(_)) => return to_http(Response::error(400, "could not read the request body")),
        Err(_) => return to_http(Response::error(408, "request body not sent in time")),
    };
    let mut request =
        match Request::from_target(parts.method.as_str(), parts.uri.path(), parts.uri.query()) {
            Ok(r) => r,
            Err(e) => return to_http(Response::error(400, e.to_string())),
        };
    request.body = body.to_vec();
    let routes = ep.routes.clone();
    let resp = tokio::task::spawn_blocking(move || routes.dispatch(&request))
        .await
        .unwrap_or_else(|_| Response::error(500, "internal error"));
    to_http(resp)
}

fn to_http(r: Response) -> hyper::Response<Full<Bytes>> {
    let status =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut b = hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, r.content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff");
    if status == http::StatusCode::UNAUTHORIZED {
        b = b.header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"walrelay\"");
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

impl Endpoint {
    /// An endpoint with default limits.
    pub fn new(name: &'static str, routes: Routes, policy: Policy) -> Endpoint {
        Endpoint {
            name,
            routes,
            policy,
            limits: Limits::default(),
            tls: None,
        }
    }

    /// Whether this endpoint's policy is for `transport`.
    pub fn transport(&self) -> Transport {
        self.policy.transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::client::{call, Target};
    use tokio::io::AsyncWriteExt;

    fn routes() -> Routes {
        let mut routes = Routes::default();
        routes.add(
            "GET",
            "/status",
            Arc::new(|_| Response::json(200, &serde_json::json!({"ok": true}))),
        );
        routes.add(
            "POST",
            "/echo",
            Arc::new(|r| Response::text(200, String::from_utf8_lossy(&r.body).into_owned())),
        );
        routes
    }

    /// Writes `req` and reads the reply until the server closes.
    async fn raw(addr: SocketAddr, req: &[u8]) -> String {
        use tokio::io::AsyncReadExt;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(req).await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_tcp_with_limits() {
        let (_tx, rx) = watch::channel(false);
        let mut ep = Endpoint::new(
            "test",
            routes(),
            Policy::new(Transport::Tcp { tls: false }, None, &[]),
        );
        ep.limits.max_waiting = 4;
        ep.limits.max_connections = 8;
        ep.limits.max_body = 10;
        let s = serve_tcp("127.0.0.1:0".parse().unwrap(), ep, rx)
            .await
            .unwrap();
        let t = Target::Tcp {
            addr: s.local_addr.unwrap().to_string(),
            token: None,
        };
        let (st, body) = call(&t, "GET", "/status", &[]).await.unwrap();
        assert_eq!(st, 200);
        assert!(body.contains("\"ok\": true"));
        assert_eq!(call(&t, "POST", "/status", &[]).await.unwrap().0, 405);
        assert_eq!(call(&t, "GET", "/nope", &[]).await.unwrap().0, 404);
        assert_eq!(call(&t, "GET", "/%ff", &[]).await.unwrap().0, 400);
        assert_eq!(
            call(&t, "GET", "/status", &[("host", "evil.example")])
                .await
                .unwrap()
                .0,
            421
        );
        // many silent connections: the oldest are dropped, a real request is answered
        let addr = s.local_addr.unwrap();
        let mut silent = Vec::new();
        for _ in 0..50 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (st, _) = call(&t, "GET", "/status", &[]).await.unwrap();
        assert_eq!(st, 200);
        // a head larger than max_head is answered 431, not buffered without bound
        let head = format!(
            "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        assert!(raw(addr, head.as_bytes()).await.starts_with("HTTP/1.1 431"));
        // a body larger than max_body: 413
        let post = format!(
            "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}",
            "b".repeat(100)
        );
        assert!(raw(addr, post.as_bytes()).await.starts_with("HTTP/1.1 413"));
        let post = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        let reply = raw(addr, post.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.ends_with("hello"),
            "{reply}"
        );
        drop(silent);
    }

    #[test]
    fn waiting_is_limited_per_address() {
        let limits = Limits {
            max_waiting: 4,
            max_waiting_per_address: 2,
            ..Limits::default()
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut w = Waiting::default();
        let (_a1, mut ra1) = w.add(&limits, Some(a));
        let (_a2, mut ra2) = w.add(&limits, Some(a));
        assert!(ra1.try_recv().is_err());
        // a third from a drops a's oldest
        let (a3, _ra3) = w.add(&limits, Some(a));
        assert!(ra1.try_recv().is_ok(), "a1 dropped");
        assert_eq!(w.per_address.get(&a), Some(&2));
        let (_b1, mut rb1) = w.add(&limits, Some(b));
        // more from a drop a's own (a2), never b's
        let (_a4, _ra4) = w.add(&limits, Some(a));
        assert!(ra2.try_recv().is_ok(), "a2 dropped");
        assert!(rb1.try_recv().is_err(), "b1 kept");
        assert_eq!(w.queue.len(), 3);
        // a3's request head arrived; done twice counts once
        w.done(a3);
        w.done(a3);
        assert_eq!(w.per_address.get(&a), Some(&1));
        let (_a5, _ra5) = w.add(&limits, Some(a));
        let (_b2, _rb2) = w.add(&limits, Some(b));
        assert_eq!(w.queue.len(), 4);
        assert!(rb1.try_recv().is_err(), "b1 kept");
        // the queue is full (b1, a4, a5, b2): a Unix connection (no address) drops the oldest
        let _u = w.add(&limits, None);
        assert!(rb1.try_recv().is_ok(), "b1 dropped by the overall limit");
        assert_eq!(w.queue.len(), 4);
        assert_eq!(w.per_address.get(&a), Some(&2));
        assert_eq!(w.per_address.get(&b), Some(&1));
    }

    #[tokio::test]
    async fn silent_connections_are_limited_per_address() {
        use tokio::io::AsyncReadExt;
        let (_tx, rx) = watch::channel(false);
        let mut ep = Endpoint::new(
            "test",
            routes(),
            Policy::new(Transport::Tcp { tls: false }, None, &[]),
        );
        ep.limits.max_waiting = 32;
        ep.limits.max_waiting_per_address = 2;
        // long enough that only the per-address limit can close a silent connection here
        ep.limits.header_timeout = Duration::from_secs(120);
        ep.limits.connection_timeout = Duration::from_secs(120);
        let s = serve_tcp("127.0.0.1:0".parse().unwrap(), ep, rx)
            .await
            .unwrap();
        let addr = s.local_addr.unwrap();
        let from = |ip: &str| {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            sock.connect(addr)
        };
        let req = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        async fn reply(c: &mut tokio::net::TcpStream, req: &[u8]) -> Vec<u8> {
            c.write_all(req).await.unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            out
        }
        let mut a1 = from("127.0.0.1").await.unwrap();
        let mut a2 = from("127.0.0.1").await.unwrap();
        let mut b1 = from("127.0.0.2").await.unwrap();
        // a third silent connection from 127.0.0.1 drops 127.0.0.1's oldest
        let _a3 = from("127.0.0.1").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(30), a1.read(&mut buf))
            .await
            .expect("the oldest connection beyond the per-address limit was not closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // the other address's silent connection was not touched, nor 127.0.0.1's newer ones
        assert!(reply(&mut b1, req).await.starts_with(b"HTTP/1.1 200"));
        assert!(reply(&mut a2, req).await.starts_with(b"HTTP/1.1 200"));
        // a request from the flooding address still gets through
        let mut a4 = from("127.0.0.1").await.unwrap();
        assert!(reply(&mut a4, req).await.starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn body_limit_and_unix_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, rx) = watch::channel(false);
        let mut ep = Endpoint::new("test", routes(), Policy::new(Transport::Unix, None, &[]));
        ep.limits.max_body = 10;
        let s = serve_unix(&path, ep, rx.clone()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let t = Target::Unix(path.clone());
        assert_eq!(call(&t, "GET", "/status", &[]).await.unwrap().0, 200);
        // a second server on the same socket is refused while the first runs
        let again = serve_unix(
            &path,
            Endpoint::new("test", routes(), Policy::new(Transport::Unix, None, &[])),
            rx,
        )
        .await;
        assert!(
            matches!(again, Err(BindError::InUse(_))),
            "{:?}",
            again.err()
        );
        let (st, body) = call(&t, "POST", "/echo", &[]).await.unwrap();
        assert_eq!((st, body.as_str()), (200, ""));
        let (st, _) = call(&t, "POST", "/echo", &[("origin", "http://evil.example")])
            .await
            .unwrap();
        assert_eq!(st, 403);
        let (st, _) = call(&t, "POST", "/echo", &[("content-type", "text/plain")])
            .await
            .unwrap();
        assert_eq!(st, 415);
        tx.send(true).unwrap();
        s.task.await.unwrap();
        assert!(!path.exists(), "socket removed at shutdown");
    }
}

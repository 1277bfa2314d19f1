//! The replication connection to the upstream server.
//!
//! Split along the lines tokio-postgres uses; each file one concern:
//! - this file, the connection: [`ReplConnection`], opening the socket (TCP with keepalives,
//!   Unix-domain sockets, TLS per `sslmode`) for each host in turn, the startup packet
//!   (`replication=true`), `target_session_attrs`, message IO with its size limits and the
//!   reply timeout, connection state;
//! - [`auth`]: the authentication exchange (trust, cleartext, md5, linear SCRAM with
//!   channel binding, `require_auth`, `sslcertmode=require`);
//! - [`commands`]: simple queries and the replication commands (`IDENTIFY_SYSTEM`, `SHOW`,
//!   slots, `TIMELINE_HISTORY`) with their typed results;
//! - [`copy`]: `START_REPLICATION` and the CopyBoth streaming phase
//!   ([`ReplConnection::recv_copy`], status and feedback, ending a timeline).
//!
//! Must not: write WAL files or interpret WAL contents.
//!
//! Framing, backend messages and the CopyData payloads are decoded by [`crate::protocol`]
//! (`frame::split_frame`, `BackendMessage::decode`, `ServerCopyMessage::decode`), status
//! and feedback encoded by `protocol::replication`; the other frontend messages and SCRAM
//! come from `postgres_protocol`. This file owns the conversation, not the byte layouts.
//! Nothing here panics on network input.
//!
//! Message size limits: messages before the first ReadyForQuery (authentication, parameter
//! status) may be at most [`MAX_STARTUP_MESSAGE`] (1 MiB); any later message at most
//! [`MAX_MESSAGE`] (1 GiB, PostgreSQL's own allocation limit). Once a frame's header has
//! arrived, `split_frame` reserves room for the rest (so up to the limit), and the frame is
//! handed on as `Bytes` split off the read buffer: XLogData is never copied.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::lsn::{Lsn, TimelineId};
use crate::protocol::backend::BackendMessage as Msg;
use crate::protocol::frame::split_frame;
use crate::protocol::ProtocolError;
use crate::upstream::conninfo::{ConnInfo, HostSpec, SslMode, TargetSessionAttrs, TcpOptions};
use crate::upstream::error::{server_label, AuthFailure, ErrorFields, HostFailure, UpstreamError};
use crate::upstream::tls;

mod auth;
mod commands;
mod copy;

pub use commands::{parse_wal_segment_size, quote_ident, IdentifySystem, QueryResult, SlotInfo};
pub use copy::CopyEvent;

type Result<T, E = UpstreamError> = std::result::Result<T, E>;

/// Largest message accepted before the connection is ready.
pub const MAX_STARTUP_MESSAGE: usize = 1 << 20;
/// Largest message accepted afterwards (CopyData included).
pub const MAX_MESSAGE: usize = 1 << 30;

// ---------------------------------------------------------------------------------------
// Stream

enum Stream {
    Plain(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Maps a framing error to the client's texts: a length above the limit is reported as a
/// too-large message (naming the limit), anything else with the codec's text.
fn frame_error(e: ProtocolError, max: usize) -> UpstreamError {
    match e {
        ProtocolError::InvalidLength { tag, len } if len >= 4 => UpstreamError::protocol(format!(
            "message of type \"{}\" too large ({len} bytes, limit {max})",
            tag.escape_ascii()
        )),
        e => UpstreamError::protocol(e.to_string()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Ready for a command.
    Idle,
    /// An ErrorResponse ended COPY; its ReadyForQuery has not been read yet.
    StaleReadyForQuery,
    /// Streaming.
    Copy,
    /// The server sent CopyDone; `finish_timeline` must run.
    ServerCopyDone,
    /// START_REPLICATION was answered without COPY (start exactly at the switch point).
    EndedWithoutCopy(Option<(TimelineId, Lsn)>),
    /// The connection cannot be used any more.
    Broken,
}

// ---------------------------------------------------------------------------------------
// The connection

/// A physical replication connection (`replication=true`).
pub struct ReplConnection {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    pid: i32,
    host: String,
    port: u16,
    tls: bool,
    cb_hash: Option<Vec<u8>>,
    /// Client-certificate requests seen in the TLS handshake (`sslcertmode=require`).
    cert_tracker: Option<std::sync::Arc<tls::ClientCertTracker>>,
    state: State,
    max_msg: usize,
    /// Longest wait for each message of a command's answer (not for streaming, where the
    /// receive loop keeps its own timeout); `None`: wait forever.
    reply_timeout: Option<std::time::Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TlsWant {
    No,
    /// Ask; continue in plaintext if the server says 'N'.
    Prefer,
    Required,
}

fn startup_error(e: ErrorFields) -> UpstreamError {
    if e.code.starts_with("28") || e.code == "42501" {
        UpstreamError::Auth(AuthFailure::Server(e))
    } else {
        UpstreamError::Server(e)
    }
}

/// libpq's texts for a failed connect to a Unix-domain socket.
fn unix_connect_text(e: std::io::Error) -> UpstreamError {
    let text = match e.raw_os_error() {
        Some(libc::ENOENT) => "No such file or directory".to_string(),
        Some(libc::ECONNREFUSED) => "Connection refused".to_string(),
        _ => return io_text(e),
    };
    UpstreamError::Io(std::io::Error::new(
        e.kind(),
        format!(
            "{text}\n\tIs the server running locally and accepting connections on that socket?"
        ),
    ))
}

/// Connects to a Unix-domain socket path; a leading `@` is the Linux abstract namespace
/// (libpq replaces it with the NUL byte).
async fn connect_unix(path: &str) -> std::io::Result<UnixStream> {
    match path.strip_prefix('@') {
        None => UnixStream::connect(path).await,
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            // connect(2) on a local socket does not wait on the network; still, keep it off
            // the async workers.
            let s = tokio::task::spawn_blocking(move || {
                std::os::unix::net::UnixStream::connect_addr(&addr)
            })
            .await
            .map_err(std::io::Error::other)??;
            s.set_nonblocking(true)?;
            UnixStream::from_std(s)
        }
    }
}

/// Applies libpq's `keepalives*` and `tcp_user_timeout` to a connected socket.
fn set_tcp_options(tcp: &TcpStream, o: &TcpOptions) -> Result<()> {
    let sock = socket2::SockRef::from(tcp);
    let fail = |what: &str, e: std::io::Error| {
        UpstreamError::Io(std::io::Error::new(e.kind(), format!("{what} failed: {e}")))
    };
    if o.keepalives {
        let mut k = socket2::TcpKeepalive::new();
        if let Some(t) = o.keepalives_idle {
            k = k.with_time(t);
        }
        if let Some(t) = o.keepalives_interval {
            k = k.with_interval(t);
        }
        if let Some(n) = o.keepalives_count {
            k = k.with_retries(n);
        }
        sock.set_tcp_keepalive(&k)
            .map_err(|e| fail("setsockopt(SO_KEEPALIVE)", e))?;
    } else {
        sock.set_keepalive(false)
            .map_err(|e| fail("setsockopt(SO_KEEPALIVE)", e))?;
    }
    if let Some(t) = o.user_timeout {
        sock.set_tcp_user_timeout(Some(t))
            .map_err(|e| fail("setsockopt(TCP_USER_TIMEOUT)", e))?;
    }
    Ok(())
}

fn tsa_name(t: TargetSessionAttrs) -> &'static str {
    match t {
        TargetSessionAttrs::Any => "any",
        TargetSessionAttrs::ReadWrite => "read-write",
        TargetSessionAttrs::ReadOnly => "read-only",
        TargetSessionAttrs::Primary => "primary",
        TargetSessionAttrs::Standby => "standby",
        TargetSessionAttrs::PreferStandby => "prefer-standby",
    }
}

/// libpq's `requirepeer`: the server process's user (SO_PEERCRED) must be this one.
fn check_requirepeer(s: &UnixStream, want: &str) -> Result<()> {
    let cred = s
        .peer_cred()
        .map_err(|e| UpstreamError::auth_client(format!("could not get peer credentials: {e}")))?;
    let uid = cred.uid();
    match crate::upstream::conninfo::user_name_of_uid(uid) {
        None => Err(UpstreamError::auth_client(format!(
            "local user with ID {uid} does not exist"
        ))),
        Some(name) if name != want => Err(UpstreamError::auth_client(format!(
            "requirepeer specifies \"{want}\", but actual peer user name is \"{name}\""
        ))),
        Some(_) => Ok(()),
    }
}

fn io_text(e: std::io::Error) -> UpstreamError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => UpstreamError::Io(std::io::Error::new(
            e.kind(),
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        )),
        std::io::ErrorKind::UnexpectedEof => UpstreamError::Io(std::io::Error::new(
            e.kind(),
            "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.",
        )),
        _ => UpstreamError::Io(e),
    }
}

fn parse_version_num(v: &str) -> u32 {
    let head: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut it = head.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    if major >= 10 {
        major.saturating_mul(10000).saturating_add(minor)
    } else {
        let patch = it.next().unwrap_or(0);
        major
            .saturating_mul(10000)
            .saturating_add(minor.saturating_mul(100))
            .saturating_add(patch)
    }
}

impl ReplConnection {
    /// Connects to the first host that accepts us and matches `target_session_attrs`.
    /// `ci` should already have had [`ConnInfo::apply_env`] applied.
    pub async fn connect(ci: &ConnInfo) -> Result<ReplConnection> {
        Self::connect_mode(ci, true).await
    }

    /// [`ReplConnection::connect`] with the `replication` startup parameter on (`true`) or
    /// left out (`false`: an ordinary SQL session, used by [`crate::upstream::sql`]).
    pub async fn connect_mode(ci: &ConnInfo, replication: bool) -> Result<ReplConnection> {
        ci.validate()?;
        let hosts = ci.hosts()?;
        let tsa = ci.target_session_attrs()?;
        let passes: &[TargetSessionAttrs] = if tsa == TargetSessionAttrs::PreferStandby {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        } else {
            std::slice::from_ref(&tsa)
        };
        let timeout = ci.connect_timeout()?;
        let mut failures = Vec::new();
        for want in passes {
            for h in &hosts {
                let attempt = Self::connect_host(ci, h, *want, replication);
                let res = match timeout {
                    Some(t) => match tokio::time::timeout(t, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(UpstreamError::Timeout("timeout expired".into())),
                    },
                    None => attempt.await,
                };
                let failure = |error| HostFailure {
                    host: h.host.clone(),
                    port: h.port,
                    socket: h.socket_path(),
                    error,
                };
                match res {
                    Ok(c) => {
                        tracing::info!(
                            "connected to {} (target_session_attrs={})",
                            server_label(&h.host, h.port, h.socket_path().as_deref()),
                            tsa_name(*want)
                        );
                        return Ok(c);
                    }
                    Err(error) => {
                        let f = failure(error);
                        tracing::warn!("{f}");
                        failures.push(f)
                    }
                }
            }
        }
        Err(UpstreamError::AllHostsFailed(failures))
    }

    async fn connect_host(
        ci: &ConnInfo,
        h: &HostSpec,
        want: TargetSessionAttrs,
        replication: bool,
    ) -> Result<ReplConnection> {
        let attempt = |tls| Self::attempt(ci, h, tls, want, replication);
        if h.socket_path().is_some() {
            // libpq never requests SSL over a Unix-domain socket, whatever sslmode says.
            return attempt(TlsWant::No).await;
        }
        match ci.sslmode()? {
            SslMode::Disable => attempt(TlsWant::No).await,
            SslMode::Allow => match attempt(TlsWant::No).await {
                Err(
                    e @ (UpstreamError::Auth(AuthFailure::Server(_)) | UpstreamError::Server(_)),
                ) => {
                    tracing::debug!("retrying with SSL after: {e}");
                    attempt(TlsWant::Required).await
                }
                r => r,
            },
            SslMode::Prefer => match attempt(TlsWant::Prefer).await {
                // A failed handshake, or a pg_hba rejection of the TLS connection
                // (hostnossl): try again without TLS like libpq.
                Err(e @ UpstreamError::Tls(_)) => {
                    tracing::debug!("retrying without SSL after: {e}");
                    attempt(TlsWant::No).await
                }
                Err(UpstreamError::Auth(AuthFailure::Server(e))) if e.code == "28000" => {
                    tracing::debug!("retrying without SSL after: {e}");
                    match attempt(TlsWant::No).await {
                        Ok(c) => Ok(c),
                        Err(_) => Err(UpstreamError::Auth(AuthFailure::Server(e))),
                    }
                }
                r => r,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                attempt(TlsWant::Required).await
            }
        }
    }

    async fn attempt(
        ci: &ConnInfo,
        h: &HostSpec,
        tls_want: TlsWant,
        want: TargetSessionAttrs,
        replication: bool,
    ) -> Result<ReplConnection> {
        let mut cb_hash = None;
        let mut on_tls = false;
        let mut cert_tracker = None;
        let stream = if let Some(path) = h.socket_path() {
            let s = connect_unix(&path).await.map_err(unix_connect_text)?;
            if let Some(peer) = ci.requirepeer.as_deref().filter(|p| !p.is_empty()) {
                check_requirepeer(&s, peer)?;
            }
            Stream::Unix(s)
        } else if tls_want == TlsWant::No {
            Stream::Plain(Self::connect_tcp(ci, h).await?)
        } else {
            let mut tcp = Self::connect_tcp(ci, h).await?;
            let mode = ci.sslmode()?;
            let (config, tracker) = tls::client_config_tracked(ci, mode)?;
            cert_tracker = Some(tracker);
            let mut b = BytesMut::new();
            frontend::ssl_request(&mut b);
            tcp.write_all(&b).await.map_err(io_text)?;
            let answer = tcp.read_u8().await.map_err(io_text)?;
            match answer {
                b'S' => {
                    let name = tls::server_name(&h.host)?;
                    let connector = tokio_rustls::TlsConnector::from(config);
                    let s = connector.connect(name, tcp).await.map_err(|e| {
                        UpstreamError::Tls(tls::describe_handshake_error(&e, &h.host))
                    })?;
                    cb_hash = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| tls::channel_binding_hash(c));
                    on_tls = true;
                    Stream::Tls(Box::new(s))
                }
                b'N' if tls_want == TlsWant::Prefer => Stream::Plain(tcp),
                b'N' => {
                    return Err(UpstreamError::Tls(
                        "server does not support SSL, but SSL was required".into(),
                    ))
                }
                b'E' => {
                    return Err(UpstreamError::protocol(
                        "server sent an error response during SSL exchange",
                    ))
                }
                other => {
                    return Err(UpstreamError::protocol(format!(
                        "received invalid response to SSL negotiation: {}",
                        other.escape_ascii()
                    )))
                }
            }
        };

        let mut conn = ReplConnection {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            pid: 0,
            host: h.host.clone(),
            port: h.port,
            tls: on_tls,
            cb_hash,
            cert_tracker: if on_tls { cert_tracker } else { None },
            state: State::Broken,
            max_msg: MAX_STARTUP_MESSAGE,
            reply_timeout: None,
        };
        conn.startup(ci, h, replication).await?;
        conn.max_msg = MAX_MESSAGE;
        conn.state = State::Idle;
        if let Err(e) = conn.check_session(want).await {
            conn.close().await;
            return Err(e);
        }
        Ok(conn)
    }

    async fn connect_tcp(ci: &ConnInfo, h: &HostSpec) -> Result<TcpStream> {
        let addr = h.addr.as_deref().unwrap_or(&h.host);
        let tcp = TcpStream::connect((addr, h.port)).await.map_err(io_text)?;
        let _ = tcp.set_nodelay(true);
        set_tcp_options(&tcp, &ci.tcp_options()?)?;
        Ok(tcp)
    }

    async fn startup(&mut self, ci: &ConnInfo, h: &HostSpec, replication: bool) -> Result<()> {
        let user = ci.user_or_default();
        let db = ci.dbname_or_default();
        let app = ci.application_name_or_default();
        let mut params: Vec<(&str, &str)> = vec![("user", &user), ("database", &db)];
        if replication {
            params.push(("replication", "true"));
        }
        params.push(("application_name", &app));
        if let Some(o) = ci.options.as_deref() {
            params.push(("options", o));
        }
        frontend::startup_message(params, &mut self.wbuf)?;
        self.flush().await?;

        self.authenticate(ci, h, &user, &db).await?;
        loop {
            match self.read_msg().await? {
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                Msg::BackendKeyData { pid, .. } => self.pid = pid,
                Msg::ReadyForQuery(_) => return Ok(()),
                Msg::ErrorResponse(e) => return Err(startup_error(e)),
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::NegotiateProtocolVersion { .. } => {}
                other => {
                    return Err(UpstreamError::protocol(format!(
                        "unexpected message during startup: {other:?}"
                    )))
                }
            }
        }
    }

    /// `target_session_attrs`. Uses the `in_hot_standby` and `default_transaction_read_only`
    /// ParameterStatus values (PG 14+). Servers that do not report them (13 and older) are
    /// asked `SHOW transaction_read_only` (which a walsender answers; it is `on` in recovery
    /// and when `default_transaction_read_only` is on), used for both read-only-ness and,
    /// as an approximation, hot standby.
    async fn check_session(&mut self, want: TargetSessionAttrs) -> Result<()> {
        if want == TargetSessionAttrs::Any {
            return Ok(());
        }
        let hs = self.parameter("in_hot_standby").map(|v| v == "on");
        let dro = self
            .parameter("default_transaction_read_only")
            .map(|v| v == "on");
        let fallback = if hs.is_none() || dro.is_none() {
            Some(self.show("transaction_read_only").await? == "on")
        } else {
            None
        };
        let in_standby = hs.or(fallback).unwrap_or(false);
        let read_only = match (hs, dro) {
            (Some(a), Some(b)) => a || b,
            _ => fallback.unwrap_or(false),
        };
        let fail = |m: &str| Err(UpstreamError::SessionAttrs(m.to_string()));
        match want {
            TargetSessionAttrs::ReadWrite if read_only => fail("session is read-only"),
            TargetSessionAttrs::ReadOnly if !read_only => fail("session is not read-only"),
            TargetSessionAttrs::Primary if in_standby => fail("server is in hot standby mode"),
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby if !in_standby => {
                fail("server is not in hot standby mode")
            }
            _ => Ok(()),
        }
    }

    // ---- IO helpers ----

    /// Writes all buffered output. Cancel-safe: unwritten bytes stay in the buffer.
    async fn flush(&mut self) -> Result<()> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await.map_err(io_text)?;
            if n == 0 {
                return Err(UpstreamError::Io(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "could not send data to server",
                )));
            }
            self.wbuf.advance(n);
        }
        self.stream.flush().await.map_err(io_text)?;
        Ok(())
    }

    /// Reads one message. Cancel-safe: bytes read stay in `rbuf` until a whole frame is there.
    async fn read_msg(&mut self) -> Result<Msg> {
        loop {
            match split_frame(&mut self.rbuf, self.max_msg) {
                Ok(Some(frame)) => {
                    return Msg::decode(frame).map_err(|e| {
                        self.state = State::Broken;
                        UpstreamError::protocol(e.to_string())
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    self.state = State::Broken;
                    return Err(frame_error(e, self.max_msg));
                }
            }
            // `split_frame` has reserved room for the rest of a pending frame (XLogData is up
            // to 128 kB), so a frame is never moved more than once while it arrives; keep
            // some room for the next reads in any case.
            if self.rbuf.capacity().saturating_sub(self.rbuf.len()) < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            let n = match self.stream.read_buf(&mut self.rbuf).await {
                Ok(n) => n,
                Err(e) => {
                    self.state = State::Broken;
                    return Err(io_text(e));
                }
            };
            if n == 0 {
                self.state = State::Broken;
                return Err(io_text(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof",
                )));
            }
        }
    }

    /// Reads one message of a command's answer, within the reply timeout.
    async fn read_reply(&mut self) -> Result<Msg> {
        let Some(t) = self.reply_timeout else {
            return self.read_msg().await;
        };
        match tokio::time::timeout(t, self.read_msg()).await {
            Ok(r) => r,
            Err(_) => {
                self.state = State::Broken;
                Err(UpstreamError::Timeout(format!(
                    "terminating connection: no answer from the server for {} s",
                    t.as_secs_f64()
                )))
            }
        }
    }

    /// Sets the longest wait for each message answering a command (IDENTIFY_SYSTEM, SHOW,
    /// START_REPLICATION, the end of COPY...), so that a server that went silent between
    /// commands is noticed like one that went silent while streaming. `None`: forever.
    pub fn set_reply_timeout(&mut self, t: Option<std::time::Duration>) {
        self.reply_timeout = t.filter(|t| !t.is_zero());
    }

    async fn ensure_idle(&mut self) -> Result<()> {
        match self.state {
            State::Idle => Ok(()),
            State::StaleReadyForQuery => {
                loop {
                    match self.read_reply().await? {
                        Msg::ReadyForQuery(_) => break,
                        Msg::ParameterStatus { name: k, value: v } => {
                            self.params.insert(k, v);
                        }
                        Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                        _ => {}
                    }
                }
                self.state = State::Idle;
                Ok(())
            }
            ref s => Err(UpstreamError::protocol(format!(
                "connection is not ready for a command (state {s:?})"
            ))),
        }
    }

    // ---- public API ----

    /// A ParameterStatus value reported by the server (kept up to date).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(|s| s.as_str())
    }

    /// Every ParameterStatus value reported by the server, sorted by name.
    pub fn parameters(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }

    /// `server_version` as a number like `PQserverVersion` (150018 for 15.18); 0 if unknown.
    pub fn server_version_num(&self) -> u32 {
        self.parameter("server_version")
            .map(parse_version_num)
            .unwrap_or(0)
    }

    /// The walsender's process id (BackendKeyData).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// The host and port this connection reached.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Sends Terminate and closes the socket (errors ignored).
    pub async fn close(mut self) {
        self.close_inner().await
    }

    async fn close_inner(&mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        self.state = State::Broken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SqlState;
    use crate::protocol::frame::Frame;
    use bytes::BufMut;

    #[tokio::test]
    async fn tcp_liveness_options_are_set() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = HostSpec {
            host: "127.0.0.1".into(),
            addr: None,
            port,
        };
        let sock_opts = |t: &TcpStream| {
            let s = socket2::SockRef::from(t);
            (
                s.keepalive().unwrap(),
                s.tcp_keepalive_time().unwrap(),
                s.tcp_keepalive_interval().unwrap(),
                s.tcp_keepalive_retries().unwrap(),
                s.tcp_user_timeout().unwrap(),
            )
        };
        let ci = ConnInfo::parse("").unwrap();
        let t = ReplConnection::connect_tcp(&ci, &h).await.unwrap();
        assert_eq!(
            sock_opts(&t),
            (
                true,
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(5),
                3,
                Some(std::time::Duration::from_secs(30))
            )
        );
        let ci = ConnInfo::parse(
            "keepalives_idle=20 keepalives_interval=2 keepalives_count=9 tcp_user_timeout=2500",
        )
        .unwrap();
        let t = ReplConnection::connect_tcp(&ci, &h).await.unwrap();
        assert_eq!(
            sock_opts(&t),
            (
                true,
                std::time::Duration::from_secs(20),
                std::time::Duration::from_secs(2),
                9,
                Some(std::time::Duration::from_millis(2500))
            )
        );
        let ci = ConnInfo::parse("keepalives=0").unwrap();
        let t = ReplConnection::connect_tcp(&ci, &h).await.unwrap();
        assert!(!sock_opts(&t).0);
    }

    #[test]
    fn version_num() {
        assert_eq!(
            parse_version_num("15.18 (Debian 15.18-1.pgdg120+1)"),
            150018
        );
        assert_eq!(parse_version_num("18devel"), 180000);
        assert_eq!(parse_version_num("9.6.24"), 90624);
        assert_eq!(parse_version_num("garbage"), 0);
    }

    #[test]
    fn frame_errors_keep_their_texts() {
        let mut b = BytesMut::from(&b"Z\0\0\0\x03"[..]);
        let e = frame_error(split_frame(&mut b, 100).unwrap_err(), 100);
        assert_eq!(
            e.to_string(),
            "protocol error: invalid message length 3 for message type \"Z\""
        );
        let mut b = BytesMut::from(&b"\xe9\x7f\0\0\0"[..]);
        let e = frame_error(split_frame(&mut b, MAX_STARTUP_MESSAGE).unwrap_err(), 100);
        assert_eq!(
            e.to_string(),
            "protocol error: message of type \"\\xe9\" too large (2130706432 bytes, limit 100)"
        );
        assert_eq!(e.sqlstate(), "08P01");
    }

    #[test]
    fn error_display() {
        let mut b = BytesMut::new();
        for (t, v) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"bob\""),
        ] {
            b.put_u8(t);
            b.put_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        let Ok(Msg::ErrorResponse(f)) = Msg::decode(Frame::new(b'E', b.freeze())) else {
            panic!()
        };
        let e = UpstreamError::AllHostsFailed(vec![HostFailure {
            host: "127.0.0.1".into(),
            port: 5432,
            socket: None,
            error: startup_error(f),
        }]);
        assert!(e.is_auth_failure());
        assert_eq!(
            e.to_string(),
            "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"bob\""
        );
        let mut f = ErrorFields::error("58P01", "requested WAL segment has already been removed");
        f.detail = Some("d".into());
        f.hint = Some("h".into());
        assert_eq!(
            UpstreamError::Server(f).to_string(),
            "ERROR:  requested WAL segment has already been removed\nDETAIL:  d\nHINT:  h"
        );
    }
}

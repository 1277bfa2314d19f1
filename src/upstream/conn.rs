//! The replication connection to the upstream server.
//!
//! Owns: opening the TCP/TLS connection (trying each host in turn), the startup packet
//! (`replication=true`), authentication (trust, cleartext, md5, SCRAM-SHA-256 and
//! SCRAM-SHA-256-PLUS), `target_session_attrs`, the replication commands walrelay sends, and
//! the CopyBoth streaming phase ([`ReplConnection::recv_copy`], status and feedback).
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

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::lsn::{pg_now, valid_segment_size, Lsn, TimelineId};
use crate::protocol::backend::BackendMessage as Msg;
use crate::protocol::frame::split_frame;
use crate::protocol::replication::{encode_hs_feedback, encode_status_update, ServerCopyMessage};
use crate::protocol::ProtocolError;
use crate::upstream::conninfo::{ConnInfo, HostSpec, SslMode, TargetSessionAttrs, TcpOptions};
use crate::upstream::error::{server_label, AuthFailure, ErrorFields, HostFailure, UpstreamError};
use crate::upstream::tls;

mod auth;

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

// ---------------------------------------------------------------------------------------
// Streaming events

/// A message received during streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// WAL bytes starting at `data_start`; `wal_end` is the sender's flush position.
    XLogData {
        data_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// Primary keepalive; answer at once when `reply_requested`.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
    /// The server ended the timeline (CopyDone); call [`ReplConnection::finish_timeline`].
    EndOfTimeline,
    /// The server is shutting down (`COPY 0` inside COPY); the connection is over.
    ServerShutdown,
}

impl From<ServerCopyMessage> for CopyEvent {
    fn from(m: ServerCopyMessage) -> CopyEvent {
        match m {
            ServerCopyMessage::XLogData {
                data_start,
                wal_end,
                send_time,
                data,
            } => CopyEvent::XLogData {
                data_start,
                wal_end,
                send_time,
                data,
            },
            ServerCopyMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            } => CopyEvent::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            },
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

// ---------------------------------------------------------------------------------------
// Results

/// The result of a simple query: the first result set's column names, all rows (text, or
/// `None` for NULL), and the last CommandComplete tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

#[derive(Debug, Default)]
struct RawResult {
    columns: Vec<String>,
    rows: Vec<Vec<Option<Bytes>>>,
    tag: String,
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifySystem {
    pub systemid: u64,
    pub timeline: TimelineId,
    pub xlogpos: Lsn,
}

/// `READ_REPLICATION_SLOT`'s answer for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_type: String,
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
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

/// Quotes an identifier for a replication command: `"` doubled, always quoted.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Parses `SHOW wal_segment_size` output (`16MB`, `1GB`, also `kB` and bare bytes) and
/// checks it is a power of two from 1 MB to 1 GB.
pub fn parse_wal_segment_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("WAL segment size could not be parsed: \"{s}\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(format!("WAL segment size could not be parsed: \"{s}\"")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("WAL segment size could not be parsed: \"{s}\""))?;
    if !valid_segment_size(bytes) {
        return Err(format!(
            "WAL segment size must be a power of two between 1 MB and 1 GB, but the remote server reported a value of {bytes} bytes"
        ));
    }
    Ok(bytes)
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

fn text(b: Option<&Option<Bytes>>, what: &str) -> Result<Option<String>> {
    match b {
        None => Err(UpstreamError::protocol(format!("missing column {what}"))),
        Some(None) => Ok(None),
        Some(Some(v)) => std::str::from_utf8(v)
            .map(|s| Some(s.to_string()))
            .map_err(|_| UpstreamError::protocol(format!("invalid UTF-8 in column {what}"))),
    }
}

impl ReplConnection {
    /// Connects to the first host that accepts us and matches `target_session_attrs`.
    /// `ci` should already have had [`ConnInfo::apply_env`] applied.
    pub async fn connect(ci: &ConnInfo) -> Result<ReplConnection> {
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
                let attempt = Self::connect_host(ci, h, *want);
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
    ) -> Result<ReplConnection> {
        if h.socket_path().is_some() {
            // libpq never requests SSL over a Unix-domain socket, whatever sslmode says.
            return Self::attempt(ci, h, TlsWant::No, want).await;
        }
        match ci.sslmode()? {
            SslMode::Disable => Self::attempt(ci, h, TlsWant::No, want).await,
            SslMode::Allow => match Self::attempt(ci, h, TlsWant::No, want).await {
                Err(
                    e @ (UpstreamError::Auth(AuthFailure::Server(_)) | UpstreamError::Server(_)),
                ) => {
                    tracing::debug!("retrying with SSL after: {e}");
                    Self::attempt(ci, h, TlsWant::Required, want).await
                }
                r => r,
            },
            SslMode::Prefer => match Self::attempt(ci, h, TlsWant::Prefer, want).await {
                // A failed handshake, or a pg_hba rejection of the TLS connection
                // (hostnossl): try again without TLS like libpq.
                Err(e @ UpstreamError::Tls(_)) => {
                    tracing::debug!("retrying without SSL after: {e}");
                    Self::attempt(ci, h, TlsWant::No, want).await
                }
                Err(UpstreamError::Auth(AuthFailure::Server(e))) if e.code == "28000" => {
                    tracing::debug!("retrying without SSL after: {e}");
                    match Self::attempt(ci, h, TlsWant::No, want).await {
                        Ok(c) => Ok(c),
                        Err(_) => Err(UpstreamError::Auth(AuthFailure::Server(e))),
                    }
                }
                r => r,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::attempt(ci, h, TlsWant::Required, want).await
            }
        }
    }

    async fn attempt(
        ci: &ConnInfo,
        h: &HostSpec,
        tls_want: TlsWant,
        want: TargetSessionAttrs,
    ) -> Result<ReplConnection> {
        let mut cb_hash = None;
        let mut on_tls = false;
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
            let config = tls::client_config(ci, mode)?;
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
            state: State::Broken,
            max_msg: MAX_STARTUP_MESSAGE,
            reply_timeout: None,
        };
        conn.startup(ci, h).await?;
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

    async fn startup(&mut self, ci: &ConnInfo, h: &HostSpec) -> Result<()> {
        let user = ci.user_or_default();
        let db = ci.dbname_or_default();
        let app = ci.application_name_or_default();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &user),
            ("database", &db),
            ("replication", "true"),
            ("application_name", &app),
        ];
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
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
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

    async fn query_raw(&mut self, q: &str) -> Result<RawResult> {
        self.ensure_idle().await?;
        tracing::debug!(query = q, "upstream command");
        frontend::query(q, &mut self.wbuf)?;
        self.flush().await?;
        let mut res = RawResult::default();
        let mut seen_desc = false;
        let mut err = None;
        loop {
            match self.read_reply().await? {
                Msg::RowDescription(c) => {
                    if !seen_desc {
                        res.columns = c.into_iter().map(|f| f.name).collect();
                        seen_desc = true;
                    }
                }
                Msg::DataRow(r) => res.rows.push(r),
                Msg::CommandComplete(t) => res.tag = t,
                Msg::EmptyQueryResponse => {}
                Msg::ErrorResponse(e) => err = Some(e),
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                Msg::ReadyForQuery(_) => break,
                other => {
                    self.state = State::Broken;
                    return Err(UpstreamError::protocol(format!(
                        "unexpected response to \"{q}\": {other:?}"
                    )));
                }
            }
        }
        match err {
            Some(e) => Err(UpstreamError::Server(e)),
            None => Ok(res),
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

    /// Runs a command with the simple query protocol. An ErrorResponse becomes
    /// [`UpstreamError::Server`] (the session stays usable).
    pub async fn simple_query(&mut self, q: &str) -> Result<QueryResult> {
        let raw = self.query_raw(q).await?;
        let mut rows = Vec::with_capacity(raw.rows.len());
        for r in &raw.rows {
            let mut out = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                out.push(text(r.get(i), &i.to_string())?);
            }
            rows.push(out);
        }
        Ok(QueryResult {
            columns: raw.columns,
            rows,
            tag: raw.tag,
        })
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = match (r.rows.as_slice(), r.columns.len()) {
            ([row], n) if n >= 3 && row.len() >= 3 => row,
            (rows, n) => {
                return Err(UpstreamError::protocol(format!(
                    "could not identify system: got {} rows and {n} fields, expected 1 rows and 3 or more fields",
                    rows.len()
                )))
            }
        };
        let bad = |what: &str| UpstreamError::protocol(format!("IDENTIFY_SYSTEM: invalid {what}"));
        let systemid = row[0]
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("systemid"))?;
        let timeline = row[1]
            .as_deref()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|t| *t != 0)
            .ok_or_else(|| bad("timeline"))?;
        let xlogpos = row[2]
            .as_deref()
            .and_then(|s| s.parse::<Lsn>().ok())
            .ok_or_else(|| bad("xlogpos"))?;
        Ok(IdentifySystem {
            systemid,
            timeline,
            xlogpos,
        })
    }

    /// `SHOW name`: the setting's text.
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let simple = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        let q = if simple {
            format!("SHOW {name}")
        } else {
            format!("SHOW {}", quote_ident(name))
        };
        let r = self.simple_query(&q).await?;
        match r.rows.first().and_then(|row| row.first()) {
            Some(Some(v)) => Ok(v.clone()),
            _ => Err(UpstreamError::protocol(format!(
                "could not fetch setting \"{name}\": unexpected result"
            ))),
        }
    }

    /// `SHOW wal_segment_size` in bytes (a power of two from 1 MB to 1 GB).
    pub async fn wal_segment_size(&mut self) -> Result<u64> {
        let v = self.show("wal_segment_size").await?;
        parse_wal_segment_size(&v).map_err(UpstreamError::Protocol)
    }

    /// `READ_REPLICATION_SLOT` (PG 15+): `None` for a slot that does not exist.
    pub async fn read_replication_slot(&mut self, slot: &str) -> Result<Option<SlotInfo>> {
        let r = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(slot)))
            .await?;
        let row = match r.rows.as_slice() {
            [row] if row.len() >= 3 => row,
            rows => {
                return Err(UpstreamError::protocol(format!(
                    "could not read replication slot \"{slot}\": got {} rows and {} fields, expected 1 rows and 3 fields",
                    rows.len(),
                    r.columns.len()
                )))
            }
        };
        let Some(slot_type) = row[0].clone() else {
            return Ok(None);
        };
        let restart_lsn = match row[1].as_deref() {
            None => None,
            Some(s) => Some(s.parse::<Lsn>().map_err(|_| {
                UpstreamError::protocol(format!(
                    "could not parse restart_lsn \"{s}\" for replication slot \"{slot}\""
                ))
            })?),
        };
        let restart_tli = match row[2].as_deref() {
            None => None,
            Some(s) => Some(s.parse::<u32>().map_err(|_| {
                UpstreamError::protocol(format!(
                    "invalid restart_tli \"{s}\" for replication slot \"{slot}\""
                ))
            })?),
        };
        Ok(Some(SlotInfo {
            slot_type,
            restart_lsn,
            restart_tli,
        }))
    }

    /// `CREATE_REPLICATION_SLOT "name" PHYSICAL [RESERVE_WAL]` (legacy syntax, 13–18).
    /// An existing slot gives `Server` with SQLSTATE 42710.
    pub async fn create_physical_slot(&mut self, slot: &str, reserve_wal: bool) -> Result<()> {
        let q = format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL{}",
            quote_ident(slot),
            if reserve_wal { " RESERVE_WAL" } else { "" }
        );
        self.simple_query(&q).await.map(|_| ())
    }

    /// `DROP_REPLICATION_SLOT "name"`.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<()> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(slot)))
            .await
            .map(|_| ())
    }

    /// `TIMELINE_HISTORY n`: the file name and its exact contents.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes)> {
        let r = self.query_raw(&format!("TIMELINE_HISTORY {tli}")).await?;
        match r.rows.as_slice() {
            [row] if row.len() >= 2 => {
                let name = text(row.first(), "filename")?
                    .ok_or_else(|| UpstreamError::protocol("TIMELINE_HISTORY: NULL filename"))?;
                let content = row
                    .get(1)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| UpstreamError::protocol("TIMELINE_HISTORY: NULL content"))?;
                Ok((name, content))
            }
            rows => Err(UpstreamError::protocol(format!(
                "unexpected response to TIMELINE_HISTORY command: got {} rows and {} fields, expected 1 rows and 2 fields",
                rows.len(),
                r.columns.len()
            ))),
        }
    }

    /// `START_REPLICATION [SLOT "s"] PHYSICAL X/X TIMELINE n`. Returns once the server
    /// has entered COPY mode; an ErrorResponse before that is `Server`. If the server answers
    /// without COPY (start exactly at the end of a historic timeline), the first
    /// [`recv_copy`](Self::recv_copy) returns `EndOfTimeline` and
    /// [`finish_timeline`](Self::finish_timeline) returns the next timeline.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<()> {
        self.ensure_idle().await?;
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        let q = format!("START_REPLICATION {slot}PHYSICAL {start} TIMELINE {tli}");
        tracing::debug!(query = %q, "upstream command");
        frontend::query(&q, &mut self.wbuf)?;
        self.flush().await?;
        let mut next = None;
        let mut err = None;
        loop {
            match self.read_reply().await? {
                Msg::CopyBothResponse if err.is_none() => {
                    self.state = State::Copy;
                    return Ok(());
                }
                Msg::ErrorResponse(e) => err = Some(e),
                Msg::RowDescription(_) | Msg::CommandComplete(_) => {}
                Msg::DataRow(r) => next = Self::next_tli_row(&r)?,
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                Msg::ReadyForQuery(_) => {
                    if let Some(e) = err {
                        self.state = State::Idle;
                        return Err(UpstreamError::Server(e));
                    }
                    self.state = State::EndedWithoutCopy(next);
                    return Ok(());
                }
                other => {
                    self.state = State::Broken;
                    return Err(UpstreamError::protocol(format!(
                        "unexpected response to START_REPLICATION: {other:?}"
                    )));
                }
            }
        }
    }

    fn next_tli_row(r: &[Option<Bytes>]) -> Result<Option<(TimelineId, Lsn)>> {
        let tli = text(r.first(), "next_tli")?;
        let pos = text(r.get(1), "next_tli_startpos")?;
        match (tli, pos) {
            (Some(t), Some(p)) => {
                let t = t.parse::<u32>().map_err(|_| {
                    UpstreamError::protocol(format!("invalid next timeline \"{t}\""))
                })?;
                let p = p.parse::<Lsn>().map_err(|_| {
                    UpstreamError::protocol(format!(
                        "could not parse next timeline's starting point \"{p}\""
                    ))
                })?;
                Ok(Some((t, p)))
            }
            _ => Ok(None),
        }
    }

    /// The next streaming event. Cancel-safe (use it in `tokio::select!`): partial input is
    /// kept in the connection's buffer. NoticeResponse is logged, ParameterStatus recorded.
    /// An ErrorResponse inside COPY is returned as `Server` (COPY is over; the session
    /// can take commands again if the error was not FATAL).
    pub async fn recv_copy(&mut self) -> Result<CopyEvent> {
        match self.state {
            State::Copy => {}
            State::EndedWithoutCopy(_) | State::ServerCopyDone => {
                return Ok(CopyEvent::EndOfTimeline)
            }
            ref s => {
                return Err(UpstreamError::protocol(format!(
                    "not in COPY mode (state {s:?})"
                )))
            }
        }
        loop {
            match self.read_msg().await? {
                Msg::CopyData(p) => {
                    return ServerCopyMessage::decode(&p)
                        .map(CopyEvent::from)
                        .map_err(|e| UpstreamError::protocol(e.to_string()))
                }
                Msg::CopyDone => {
                    self.state = State::ServerCopyDone;
                    return Ok(CopyEvent::EndOfTimeline);
                }
                Msg::CommandComplete(t) if t == "COPY 0" => {
                    self.state = State::Broken;
                    return Ok(CopyEvent::ServerShutdown);
                }
                Msg::ErrorResponse(e) => {
                    self.state = if e.severity == "ERROR" {
                        State::StaleReadyForQuery
                    } else {
                        State::Broken
                    };
                    return Err(UpstreamError::Server(e));
                }
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                other => {
                    self.state = State::Broken;
                    return Err(UpstreamError::protocol(format!(
                        "unexpected message during streaming: {other:?}"
                    )));
                }
            }
        }
    }

    /// Sends a standby status update (`r`) with the current time.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        encode_status_update(
            &mut self.wbuf,
            write,
            flush,
            apply,
            pg_now(),
            reply_requested,
        );
        self.flush().await
    }

    /// Sends hot standby feedback (`h`) with the current time.
    pub async fn send_hs_feedback(
        &mut self,
        xmin: u32,
        xmin_epoch: u32,
        catalog_xmin: u32,
        catalog_xmin_epoch: u32,
    ) -> Result<()> {
        encode_hs_feedback(
            &mut self.wbuf,
            pg_now(),
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch,
        );
        self.flush().await
    }

    /// Ends COPY: after `EndOfTimeline` (server CopyDone) or to stop streaming ourselves.
    /// Sends CopyDone, discards WAL still in flight (client stop), reads the optional
    /// `next_tli, next_tli_startpos` row, the CommandCompletes and ReadyForQuery.
    /// Returns the next timeline and its start when the server reported one.
    pub async fn finish_timeline(&mut self) -> Result<Option<(TimelineId, Lsn)>> {
        match std::mem::replace(&mut self.state, State::Broken) {
            State::EndedWithoutCopy(next) => {
                self.state = State::Idle;
                return Ok(next);
            }
            State::ServerCopyDone => {
                frontend::copy_done(&mut self.wbuf);
                self.flush().await?;
            }
            State::Copy => {
                frontend::copy_done(&mut self.wbuf);
                self.flush().await?;
                loop {
                    match self.read_reply().await? {
                        Msg::CopyData(_) => {}
                        Msg::CopyDone => break,
                        Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                        Msg::ParameterStatus { name: k, value: v } => {
                            self.params.insert(k, v);
                        }
                        Msg::ErrorResponse(e) => {
                            self.state = State::StaleReadyForQuery;
                            return Err(UpstreamError::Server(e));
                        }
                        Msg::CommandComplete(t) if t == "COPY 0" => {
                            return Err(UpstreamError::protocol("server shut down"))
                        }
                        other => {
                            return Err(UpstreamError::protocol(format!(
                                "unexpected message while ending COPY: {other:?}"
                            )))
                        }
                    }
                }
            }
            s => {
                self.state = s.clone();
                return Err(UpstreamError::protocol(format!(
                    "finish_timeline called while not streaming (state {s:?})"
                )));
            }
        }
        let mut next = None;
        let mut err = None;
        loop {
            match self.read_reply().await? {
                Msg::RowDescription(_) | Msg::CommandComplete(_) => {}
                Msg::DataRow(r) => next = Self::next_tli_row(&r)?,
                Msg::ErrorResponse(e) => err = Some(e),
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                // Late CopyData after the server's CopyDone cannot happen; tolerate none.
                Msg::ReadyForQuery(_) => break,
                other => {
                    return Err(UpstreamError::protocol(format!(
                        "unexpected message after COPY: {other:?}"
                    )))
                }
            }
        }
        self.state = State::Idle;
        match err {
            Some(e) => Err(UpstreamError::Server(e)),
            None => Ok(next),
        }
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
    use crate::protocol::replication::{encode_keepalive, encode_xlogdata_header};
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
    fn segment_size() {
        assert_eq!(parse_wal_segment_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_wal_segment_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_wal_segment_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_wal_segment_size("64MB"), Ok(64 << 20));
        assert!(parse_wal_segment_size("2GB").is_err());
        assert!(parse_wal_segment_size("512kB").is_err());
        assert!(parse_wal_segment_size("24MB").is_err());
        assert!(parse_wal_segment_size("MB").is_err());
        assert!(parse_wal_segment_size("16XB").is_err());
        assert!(parse_wal_segment_size("").is_err());
        assert!(parse_wal_segment_size("99999999999999999999GB").is_err());
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
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
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
    fn copy_payloads() {
        let mut buf = BytesMut::new();
        encode_status_update(&mut buf, Lsn(1), Lsn(2), Lsn(3), 4, true);
        encode_hs_feedback(&mut buf, 5, 1, 2, 3, 4);
        encode_keepalive(&mut buf, Lsn(0x1_0000_0010), 77, true);
        let mut w = BytesMut::new();
        encode_xlogdata_header(&mut w, Lsn(0x300_0000), Lsn(0x300_0100), 5, 3);
        w.extend_from_slice(b"wal");
        buf.extend_from_slice(&w);
        let mut frames = Vec::new();
        while let Some(f) = split_frame(&mut buf, MAX_MESSAGE).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].body.len(), 34);
        assert_eq!(frames[1].body.len(), 25);
        let ev = |f: &Frame| ServerCopyMessage::decode(&f.body).map(CopyEvent::from);
        assert_eq!(
            ev(&frames[2]).unwrap(),
            CopyEvent::Keepalive {
                wal_end: Lsn(0x1_0000_0010),
                send_time: 77,
                reply_requested: true
            }
        );
        match ev(&frames[3]).unwrap() {
            CopyEvent::XLogData {
                data_start, data, ..
            } => {
                assert_eq!(data_start, Lsn(0x300_0000));
                assert_eq!(&data[..], b"wal");
                // Sliced from the frame, not copied.
                assert_eq!(data.as_ptr(), frames[3].body[25..].as_ptr());
            }
            e => panic!("{e:?}"),
        }
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

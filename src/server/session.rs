//! One client connection: startup, TLS, authentication, then replication commands.
//!
//! Owns: the pre-authentication exchange (SSLRequest → `S`/`N`, GSSENCRequest → `N`,
//! CancelRequest accepted and ignored, direct TLS, protocol 3.0 with NegotiateProtocolVersion
//! for 3.x / `_pq_` options, startup timeout, connection limit), the hba decision and the
//! password exchange, the ParameterStatus mirror of the upstream server, and the simple-query
//! command loop with the walsender's answers (IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY,
//! READ/CREATE/DROP_REPLICATION_SLOT; START_REPLICATION is in `walsender.rs`). Every message
//! goes out through a per-session writer task fed by a bounded channel, so a client that
//! stops reading blocks only its own session. Must not: write WAL.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::auth::{self, AuthError, Credential, Method, ScramServer};
use super::{status, ServeView, Shared};
use crate::error::{codes, SqlState};
use crate::lsn::{history_file_name, Lsn};
use crate::protocol::backend::{self, ErrorFields, Field, INT4_OID, INT8_OID, TEXT_OID};
use crate::protocol::command::{parse_command, ReplicationCommand, SlotKind};
use crate::protocol::frame::{split_frame, Frame};
use crate::protocol::frontend::{
    parse_password, parse_sasl_initial, parse_startup, FrontendMessage, StartupPacket,
};

/// Any byte stream a session can run on (TCP or TLS over TCP).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}
type BoxIo = Box<dyn Io>;

/// Longest message accepted after startup (queries and standby messages are small).
const MAX_MESSAGE: usize = 1 << 20;
/// Longest password / SASL message (PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH).
const MAX_AUTH_MESSAGE: usize = 65535;
/// Messages queued towards one client before its session waits.
const OUT_QUEUE: usize = 16;

/// One item for the writer task: a message, or an XLogData header followed by WAL bytes
/// shared with the store's tail (no copy).
pub(crate) enum Out {
    Msg(Bytes),
    Wal(Bytes, Bytes),
}

/// Why a session ends early; FATAL errors are sent to the client first.
#[derive(Debug)]
pub(crate) enum End {
    /// The client went away or the connection failed.
    Gone,
    /// Send this FATAL and close.
    Fatal(ErrorFields),
}

pub(crate) fn fatal(code: &str, message: impl Into<String>) -> ErrorFields {
    ErrorFields {
        severity: "FATAL".into(),
        ..ErrorFields::error(code, message)
    }
}

pub(crate) fn err_of<E: SqlState + std::fmt::Display>(e: &E) -> ErrorFields {
    ErrorFields::error(e.sqlstate(), e.to_string())
}

struct ConnGuard(Arc<Shared>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Entry point of a connection task.
pub(crate) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let count = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = ConnGuard(shared.clone());
    let over_limit = count > shared.settings.max_connections;
    let timeout = shared.settings.startup_timeout;
    let io: BoxIo = Box::new(tcp);
    let started = tokio::time::timeout(timeout, startup(&shared, io, peer, over_limit)).await;
    let est = match started {
        Ok(Ok(Some(est))) => est,
        Ok(Ok(None)) => return,
        Ok(Err(StartupFail { io: fail_io, error })) => {
            if let Some(mut io) = fail_io {
                if let Some(e) = error {
                    let mut buf = BytesMut::new();
                    backend::error_response(&mut buf, &e);
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = io.write_all(&buf).await;
                        let _ = io.flush().await;
                        let _ = io.shutdown().await;
                    })
                    .await;
                }
            }
            return;
        }
        Err(_) => {
            // PostgreSQL: "canceling authentication due to timeout", then close.
            tracing::info!("connection from {peer}: startup timed out");
            metrics::counter!(status::REFUSED, "reason" => "timeout").increment(1);
            return;
        }
    };
    let Established {
        io,
        rbuf,
        user,
        application_name,
        pid,
    } = est;
    let (rd, wr) = tokio::io::split(io);
    let (out, rx) = mpsc::channel(OUT_QUEUE);
    let writer = tokio::spawn(writer_task(wr, rx));
    let id = shared.new_session_id();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    shared.status.set(
        id,
        status::WalSenderStatus {
            pid,
            usename: user.clone(),
            application_name: application_name.clone(),
            client_addr: peer.ip().to_string(),
            client_port: peer.port(),
            backend_start: now_unix,
            state: "startup".into(),
            timeline: 0,
            sent_lsn: None,
            write_lsn: None,
            flush_lsn: None,
            replay_lsn: None,
            write_lag: None,
            flush_lag: None,
            replay_lag: None,
            sync_state: "async".into(),
            slot_name: None,
            reply_time: None,
        },
    );
    metrics::gauge!(status::SESSIONS).increment(1.0);
    let mut session = Session {
        shared: shared.clone(),
        id,
        pid,
        user,
        application_name,
        conn: MessageReader { rd, rbuf },
        out,
        shutdown,
        skip_until_sync: false,
    };
    let end = session.command_loop().await;
    if let End::Fatal(e) = &end {
        let mut buf = BytesMut::new();
        backend::error_response(&mut buf, e);
        let _ = session.out.try_send(Out::Msg(buf.freeze()));
    }
    let Session { out, .. } = session;
    drop(out);
    // Let the writer flush what is queued, but never wait on a client that stopped reading.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    shared.slots.session_ended(id);
    shared.feedback.remove(id);
    shared.status.remove(id);
    metrics::gauge!(status::SESSIONS).decrement(1.0);
}

async fn writer_task(mut w: tokio::io::WriteHalf<BoxIo>, mut rx: mpsc::Receiver<Out>) {
    async fn put(w: &mut tokio::io::WriteHalf<BoxIo>, o: Out) -> std::io::Result<()> {
        match o {
            Out::Msg(b) => w.write_all(&b).await,
            Out::Wal(h, d) => {
                w.write_all(&h).await?;
                w.write_all(&d).await
            }
        }
    }
    while let Some(o) = rx.recv().await {
        if put(&mut w, o).await.is_err() {
            return;
        }
        while let Ok(o) = rx.try_recv() {
            if put(&mut w, o).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

struct Established {
    io: BoxIo,
    rbuf: BytesMut,
    user: String,
    application_name: String,
    pid: i32,
}

struct StartupFail {
    /// The stream to send the error on (None: just close).
    io: Option<BoxIo>,
    error: Option<ErrorFields>,
}

fn refuse(io: BoxIo, e: ErrorFields, reason: &'static str) -> StartupFail {
    metrics::counter!(status::REFUSED, "reason" => reason).increment(1);
    StartupFail {
        io: Some(io),
        error: Some(e),
    }
}

async fn read_more(io: &mut BoxIo, buf: &mut BytesMut) -> bool {
    matches!(io.read_buf(buf).await, Ok(n) if n > 0)
}

/// The server side of a TLS handshake (after SSLRequest, or direct TLS): the encrypted
/// stream and the client's certificate (DER), or `None` after logging a failed handshake.
async fn accept_tls(
    tls: &super::tls::TlsSetup,
    io: BoxIo,
    peer: SocketAddr,
) -> Option<(BoxIo, Option<Vec<u8>>)> {
    match tokio_rustls::TlsAcceptor::from(tls.config.clone())
        .accept(io)
        .await
    {
        Ok(s) => {
            let cert = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            Some((Box::new(s), cert))
        }
        Err(e) => {
            tracing::info!("connection from {peer}: TLS handshake failed: {e}");
            metrics::counter!(status::REFUSED, "reason" => "tls").increment(1);
            None
        }
    }
}

/// `Ok(None)`: the connection ended quietly (cancel request, client closed).
async fn startup(
    shared: &Shared,
    mut io: BoxIo,
    peer: SocketAddr,
    over_limit: bool,
) -> Result<Option<Established>, StartupFail> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls_peer_cert: Option<Vec<u8>> = None;
    let mut on_tls = false;
    let packet = loop {
        while buf.is_empty() {
            if !read_more(&mut io, &mut buf).await {
                return Ok(None);
            }
        }
        // Direct TLS (PG 17+ sslnegotiation=direct): a TLS ClientHello instead of a packet.
        if !on_tls && buf.first() == Some(&0x16) {
            let access = shared.access();
            let Some(tls) = &access.tls else {
                return Err(refuse(
                    io,
                    fatal(
                        codes::PROTOCOL_VIOLATION,
                        "direct SSL connection was received but SSL is not enabled",
                    ),
                    "protocol",
                ));
            };
            let pre = buf.split().freeze();
            let prefixed: BoxIo = Box::new(Prefixed { pre, inner: io });
            let Some((tls_io, cert)) = accept_tls(tls, prefixed, peer).await else {
                return Ok(None);
            };
            io = tls_io;
            tls_peer_cert = cert;
            on_tls = true;
            continue;
        }
        match parse_startup(&mut buf) {
            Ok(Some(StartupPacket::SslRequest)) => {
                if !buf.is_empty() {
                    return Err(refuse(
                        io,
                        fatal(
                            codes::PROTOCOL_VIOLATION,
                            "received unencrypted data after SSL request",
                        ),
                        "protocol",
                    ));
                }
                let access = shared.access();
                match (&access.tls, on_tls) {
                    (Some(tls), false) => {
                        if io.write_all(b"S").await.is_err() {
                            return Ok(None);
                        }
                        let _ = io.flush().await;
                        let Some((tls_io, cert)) = accept_tls(tls, io, peer).await else {
                            return Ok(None);
                        };
                        io = tls_io;
                        tls_peer_cert = cert;
                        on_tls = true;
                    }
                    (_, true) => return Err(refuse(
                        io,
                        fatal(
                            codes::PROTOCOL_VIOLATION,
                            "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
                        ),
                        "protocol",
                    )),
                    (None, false) => {
                        if io.write_all(b"N").await.is_err() {
                            return Ok(None);
                        }
                    }
                }
            }
            Ok(Some(StartupPacket::GssEncRequest)) => {
                if on_tls {
                    return Err(refuse(
                        io,
                        fatal(
                            codes::PROTOCOL_VIOLATION,
                            "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0",
                        ),
                        "protocol",
                    ));
                }
                if io.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            Ok(Some(StartupPacket::Cancel { .. })) => {
                // Nothing runs that a cancel could interrupt: accept it and close, like a
                // server whose target backend already finished.
                return Ok(None);
            }
            Ok(Some(StartupPacket::Startup {
                major,
                minor,
                params,
            })) => break (major, minor, params),
            Ok(None) => {
                if !read_more(&mut io, &mut buf).await {
                    return Ok(None);
                }
            }
            Err(e) => {
                tracing::info!("connection from {peer}: {e}");
                return Err(refuse(io, fatal(e.sqlstate(), e.to_string()), "protocol"));
            }
        }
    };
    let (major, minor, params) = packet;
    if major != 3 {
        return Err(refuse(
            io,
            fatal(
                codes::FEATURE_NOT_SUPPORTED,
                format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                ),
            ),
            "protocol",
        ));
    }
    let mut out = BytesMut::new();
    let unsupported: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        backend::negotiate_protocol_version(&mut out, 0, &unsupported);
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(user) = get("user").filter(|u| !u.is_empty()).map(str::to_string) else {
        return Err(refuse(
            io,
            fatal(
                codes::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            ),
            "protocol",
        ));
    };
    let application_name = get("application_name").unwrap_or("").to_string();
    match get("replication").map(|v| v.to_ascii_lowercase()) {
        Some(v) if matches!(v.as_str(), "true" | "on" | "yes" | "1" | "t" | "y") => {}
        Some(v) if v == "database" => {
            return Err(refuse(
                io,
                fatal(
                    codes::FEATURE_NOT_SUPPORTED,
                    "logical replication connections are not supported by walrelay",
                ),
                "protocol",
            ))
        }
        Some(v) if matches!(v.as_str(), "false" | "off" | "no" | "0" | "f" | "n") => {
            return Err(refuse(io, not_replication(), "protocol"))
        }
        None => return Err(refuse(io, not_replication(), "protocol")),
        Some(_) => {
            let mut e = fatal(
                codes::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"replication\": \"{}\"",
                    get("replication").unwrap_or("")
                ),
            );
            e.hint = Some("Valid values are: \"false\", 0, \"true\", 1, \"database\".".into());
            return Err(refuse(io, e, "protocol"));
        }
    }
    if over_limit {
        return Err(refuse(
            io,
            fatal(
                codes::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            ),
            "too_many",
        ));
    }
    let Some(view) = shared.view() else {
        return Err(refuse(
            io,
            fatal("57P03", "the database system is starting up"),
            "not_ready",
        ));
    };
    // Authentication.
    let ip = peer.ip();
    let enc = if on_tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let access = shared.access();
    let rule = if access.require_tls && !on_tls {
        None
    } else {
        auth::find_rule(&access.hba, on_tls, &user, ip)
    };
    let Some(rule) = rule else {
        tracing::info!("connection from {peer} refused: no hba entry for user \"{user}\", {enc}");
        return Err(refuse(
            io,
            fatal(
                codes::INVALID_AUTHORIZATION,
                format!("no pg_hba.conf entry for replication connection from host \"{ip}\", user \"{user}\", {enc}"),
            ),
            "auth",
        ));
    };
    if !out.is_empty() && io.write_all(&out.split()).await.is_err() {
        return Ok(None);
    }
    let result = match rule.method {
        Method::Trust => Ok(()),
        Method::Reject => {
            return Err(refuse(
                io,
                fatal(
                    codes::INVALID_AUTHORIZATION,
                    format!("pg_hba.conf rejects replication connection for host \"{ip}\", user \"{user}\", {enc}"),
                ),
                "auth",
            ))
        }
        Method::Cert => match &tls_peer_cert {
            None => Err(ExchangeError::Auth(AuthError::NoCertificate)),
            Some(der) => {
                if super::tls::subject_cn(der).as_deref() == Some(user.as_str()) {
                    Ok(())
                } else {
                    Err(ExchangeError::Auth(AuthError::CertFailed(user.clone())))
                }
            }
        },
        Method::Md5 | Method::ScramSha256 => {
            let cred = access.users.get(&user).cloned();
            let cbind = if on_tls {
                access.tls.as_ref().map(|t| t.endpoint_hash.clone())
            } else {
                None
            };
            match (rule.method, cred) {
                (Method::Md5, Some(Credential::Md5(hash))) => {
                    md5_exchange(&mut io, &mut buf, &user, &hash).await
                }
                (_, Some(Credential::Scram(v))) => {
                    scram_exchange(&mut io, &mut buf, ScramServer::new(&user, Some(v), cbind)).await
                }
                // Unknown user, or scram-sha-256 rule with an md5-only user: run a mock
                // exchange that fails like a wrong password.
                _ => scram_exchange(&mut io, &mut buf, ScramServer::new(&user, None, cbind)).await,
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(ExchangeError::Gone) => return Ok(None),
        Err(ExchangeError::Protocol(e)) => return Err(refuse(io, e, "protocol")),
        Err(ExchangeError::Auth(e)) => {
            tracing::info!("connection from {peer}: {e}");
            let mut f = fatal(e.sqlstate(), e.to_string());
            f.detail = e.detail();
            return Err(refuse(io, f, "auth"));
        }
    }
    let pid = shared.new_pid();
    let mut key = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut key);
    backend::auth_ok(&mut out);
    for (k, v) in parameters(&view, &user, &application_name, get("client_encoding")) {
        backend::parameter_status(&mut out, &k, &v);
    }
    backend::backend_key_data(&mut out, pid, &key);
    backend::ready_for_query(&mut out, b'I');
    if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
        return Ok(None);
    }
    tracing::info!(
        "replication connection authorized: user={user} application_name={application_name} from {peer} (pid {pid}{})",
        if on_tls { ", TLS" } else { "" }
    );
    Ok(Some(Established {
        io,
        rbuf: buf,
        user,
        application_name,
        pid,
    }))
}

fn not_replication() -> ErrorFields {
    let mut e = fatal(
        codes::FEATURE_NOT_SUPPORTED,
        "walrelay accepts only physical replication connections",
    );
    e.detail = Some(
        "This is a WAL relay, not a database server: connect with replication=true (as a standby's primary_conninfo or pg_receivewal do).".into(),
    );
    e
}

/// ParameterStatus values: the upstream's where known, PostgreSQL's defaults otherwise.
fn parameters(
    view: &ServeView,
    user: &str,
    application_name: &str,
    client_encoding: Option<&str>,
) -> Vec<(String, String)> {
    let up = |name: &str, default: &str| {
        view.parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let mut v = vec![
        ("application_name".to_string(), application_name.to_string()),
        (
            "client_encoding".into(),
            client_encoding
                .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("auto"))
                .map(str::to_string)
                .unwrap_or_else(|| up("client_encoding", "UTF8")),
        ),
        ("DateStyle".into(), up("DateStyle", "ISO, MDY")),
        (
            "default_transaction_read_only".into(),
            up("default_transaction_read_only", "off"),
        ),
        ("in_hot_standby".into(), up("in_hot_standby", "off")),
        ("integer_datetimes".into(), up("integer_datetimes", "on")),
        ("IntervalStyle".into(), up("IntervalStyle", "postgres")),
        ("is_superuser".into(), "on".into()),
        ("server_encoding".into(), up("server_encoding", "UTF8")),
        ("server_version".into(), view.server_version.clone()),
        ("session_authorization".into(), user.to_string()),
        (
            "standard_conforming_strings".into(),
            up("standard_conforming_strings", "on"),
        ),
        ("TimeZone".into(), up("TimeZone", "UTC")),
    ];
    if super::version_major(&view.server_version) >= 18 {
        v.push(("search_path".into(), up("search_path", "\"$user\", public")));
        v.push(("scram_iterations".into(), up("scram_iterations", "4096")));
    }
    v
}

enum ExchangeError {
    Gone,
    Protocol(ErrorFields),
    Auth(AuthError),
}

async fn read_auth_message(io: &mut BoxIo, buf: &mut BytesMut) -> Result<Bytes, ExchangeError> {
    loop {
        match split_frame(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(Frame { tag: b'p', body })) => return Ok(body),
            Ok(Some(Frame { tag, .. })) => {
                return Err(ExchangeError::Auth(AuthError::UnexpectedMessage(tag)))
            }
            Ok(None) => {
                if !read_more(io, buf).await {
                    return Err(ExchangeError::Gone);
                }
            }
            Err(e) => return Err(ExchangeError::Protocol(fatal(e.sqlstate(), e.to_string()))),
        }
    }
}

async fn send_now(io: &mut BoxIo, buf: &mut BytesMut) -> Result<(), ExchangeError> {
    let b = buf.split();
    io.write_all(&b).await.map_err(|_| ExchangeError::Gone)?;
    io.flush().await.map_err(|_| ExchangeError::Gone)
}

async fn md5_exchange(
    io: &mut BoxIo,
    buf: &mut BytesMut,
    user: &str,
    hash: &str,
) -> Result<(), ExchangeError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = BytesMut::new();
    backend::auth_md5(&mut out, salt);
    send_now(io, &mut out).await?;
    let body = read_auth_message(io, buf).await?;
    let resp = parse_password(&body)
        .map_err(|e| ExchangeError::Protocol(fatal(e.sqlstate(), e.to_string())))?;
    auth::check_md5(user, hash, salt, &resp).map_err(ExchangeError::Auth)
}

async fn scram_exchange(
    io: &mut BoxIo,
    buf: &mut BytesMut,
    mut scram: ScramServer,
) -> Result<(), ExchangeError> {
    let mut out = BytesMut::new();
    backend::auth_sasl(&mut out, &scram.mechanisms());
    send_now(io, &mut out).await?;
    let body = read_auth_message(io, buf).await?;
    let (mech, data) = parse_sasl_initial(&body)
        .map_err(|e| ExchangeError::Protocol(fatal(e.sqlstate(), e.to_string())))?;
    let first = scram
        .client_first(&mech, &data)
        .map_err(ExchangeError::Auth)?;
    backend::auth_sasl_continue(&mut out, &first);
    send_now(io, &mut out).await?;
    let body = read_auth_message(io, buf).await?;
    let fin = scram.client_final(&body).map_err(ExchangeError::Auth)?;
    backend::auth_sasl_final(&mut out, &fin);
    send_now(io, &mut out).await
}

/// Bytes read before a TLS handshake, replayed in front of the stream (direct TLS).
struct Prefixed {
    pre: Bytes,
    inner: BoxIo,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An authenticated replication session.
pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub pid: i32,
    pub user: String,
    pub application_name: String,
    pub conn: MessageReader,
    pub out: mpsc::Sender<Out>,
    pub shutdown: watch::Receiver<bool>,
    skip_until_sync: bool,
}

/// The read side of a session's connection.
pub(crate) struct MessageReader {
    rd: ReadHalf<BoxIo>,
    rbuf: BytesMut,
}

impl MessageReader {
    /// Next complete message; `Err(End::Gone)` on EOF. Cancel-safe (state lives in `rbuf`).
    pub async fn read_message(&mut self) -> Result<FrontendMessage, End> {
        loop {
            match split_frame(&mut self.rbuf, MAX_MESSAGE) {
                Ok(Some(frame)) => {
                    return FrontendMessage::decode(frame)
                        .map_err(|e| End::Fatal(fatal(e.sqlstate(), e.to_string())))
                }
                Ok(None) => {}
                Err(e) => return Err(End::Fatal(fatal(e.sqlstate(), e.to_string()))),
            }
            match self.rd.read_buf(&mut self.rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(End::Gone),
            }
        }
    }
}

impl Session {
    /// Queues a message, waiting while the client's queue is full.
    pub async fn send(&self, buf: BytesMut) -> Result<(), End> {
        self.out
            .send(Out::Msg(buf.freeze()))
            .await
            .map_err(|_| End::Gone)
    }

    /// ErrorResponse + ReadyForQuery: the command failed, the session goes on.
    pub async fn send_error(&self, e: ErrorFields) -> Result<(), End> {
        let mut buf = BytesMut::new();
        backend::error_response(&mut buf, &e);
        backend::ready_for_query(&mut buf, b'I');
        self.send(buf).await
    }

    async fn command_loop(&mut self) -> End {
        loop {
            let msg = tokio::select! {
                m = self.conn.read_message() => m,
                _ = self.shutdown.changed() => {
                    return End::Fatal(fatal(codes::ADMIN_SHUTDOWN, "terminating connection due to administrator command"));
                }
            };
            let r = match msg {
                Err(end) => return end,
                Ok(FrontendMessage::Query(q)) if !self.skip_until_sync => self.query(&q).await,
                Ok(FrontendMessage::Query(_)) => Ok(()),
                Ok(FrontendMessage::Terminate) => return End::Gone,
                Ok(FrontendMessage::Sync) => {
                    self.skip_until_sync = false;
                    let mut b = BytesMut::new();
                    backend::ready_for_query(&mut b, b'I');
                    self.send(b).await
                }
                Ok(FrontendMessage::Flush) => Ok(()),
                Ok(FrontendMessage::Extended(_)) => {
                    if self.skip_until_sync {
                        Ok(())
                    } else {
                        self.skip_until_sync = true;
                        let mut b = BytesMut::new();
                        backend::error_response(
                            &mut b,
                            &ErrorFields::error(
                                codes::PROTOCOL_VIOLATION,
                                "extended query protocol not supported in a replication connection",
                            ),
                        );
                        self.send(b).await
                    }
                }
                // Outside COPY these are ignored, as PostgreSQL does.
                Ok(
                    FrontendMessage::CopyData(_)
                    | FrontendMessage::CopyDone
                    | FrontendMessage::CopyFail(_),
                ) => Ok(()),
                Ok(FrontendMessage::Password(_)) => {
                    return End::Fatal(fatal(
                        codes::PROTOCOL_VIOLATION,
                        "invalid frontend message type 112",
                    ))
                }
                Ok(FrontendMessage::Unknown(t)) => {
                    return End::Fatal(fatal(
                        codes::PROTOCOL_VIOLATION,
                        format!("invalid frontend message type {t}"),
                    ))
                }
            };
            if let Err(end) = r {
                return end;
            }
        }
    }

    async fn query(&mut self, q: &str) -> Result<(), End> {
        if q.trim().trim_end_matches(';').trim().is_empty() {
            let mut b = BytesMut::new();
            backend::empty_query_response(&mut b);
            backend::ready_for_query(&mut b, b'I');
            return self.send(b).await;
        }
        tracing::debug!("pid {}: command: {q}", self.pid);
        let cmd = match parse_command(q) {
            Ok(c) => c,
            Err(e) => return self.send_error(err_of(&e)).await,
        };
        let Some(view) = self.shared.view() else {
            return self
                .send_error(ErrorFields::error(
                    "57P03",
                    "the database system is starting up",
                ))
                .await;
        };
        match cmd {
            ReplicationCommand::IdentifySystem => self.identify_system(&view).await,
            ReplicationCommand::Show(name) => self.show(&view, &name).await,
            ReplicationCommand::TimelineHistory(tli) => self.timeline_history(tli).await,
            ReplicationCommand::ReadReplicationSlot(name) => self.read_slot(&view, &name).await,
            ReplicationCommand::CreateReplicationSlot {
                name,
                temporary,
                kind,
                reserve_wal,
            } => {
                if let SlotKind::Logical { .. } = kind {
                    return self.send_error(logical_error()).await;
                }
                let restart = reserve_wal.then(|| view.flush.segment_start(view.seg_size));
                match self.shared.slots.create(&name, temporary, restart, self.id) {
                    Ok(()) => {
                        let mut b = BytesMut::new();
                        backend::row_description(
                            &mut b,
                            &[
                                Field::new("slot_name", TEXT_OID),
                                Field::new("consistent_point", TEXT_OID),
                                Field::new("snapshot_name", TEXT_OID),
                                Field::new("output_plugin", TEXT_OID),
                            ],
                        );
                        backend::data_row(
                            &mut b,
                            &[Some(name.as_bytes()), Some(b"0/0"), None, None],
                        );
                        backend::command_complete(&mut b, "CREATE_REPLICATION_SLOT");
                        backend::ready_for_query(&mut b, b'I');
                        tracing::info!("pid {}: created replication slot \"{name}\"", self.pid);
                        self.send(b).await
                    }
                    Err(e) => self.send_slot_error(&e).await,
                }
            }
            ReplicationCommand::DropReplicationSlot { name, wait } => {
                if wait {
                    let deadline = Instant::now() + Duration::from_secs(3600);
                    while self.shared.slots.is_active(&name)
                        && Instant::now() < deadline
                        && !*self.shutdown.borrow()
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                match self.shared.slots.drop_slot(&name, self.id) {
                    Ok(()) => {
                        let mut b = BytesMut::new();
                        backend::command_complete(&mut b, "DROP_REPLICATION_SLOT");
                        backend::ready_for_query(&mut b, b'I');
                        tracing::info!("pid {}: dropped replication slot \"{name}\"", self.pid);
                        self.send(b).await
                    }
                    Err(e) => self.send_slot_error(&e).await,
                }
            }
            ReplicationCommand::StartReplication {
                slot,
                logical,
                start,
                timeline,
            } => {
                if logical {
                    return self.send_error(logical_error()).await;
                }
                self.start_replication(view, slot, start, timeline).await
            }
            ReplicationCommand::BaseBackup => {
                self.send_error(ErrorFields::error(
                    codes::FEATURE_NOT_SUPPORTED,
                    "walrelay does not serve BASE_BACKUP: take base backups from the primary",
                ))
                .await
            }
            ReplicationCommand::AlterReplicationSlot | ReplicationCommand::UploadManifest => {
                self.send_error(ErrorFields::error(
                    codes::FEATURE_NOT_SUPPORTED,
                    "this replication command is not supported by walrelay",
                ))
                .await
            }
            ReplicationCommand::Sql(_) => {
                self.send_error(ErrorFields::error(
                    codes::FEATURE_NOT_SUPPORTED,
                    "cannot execute SQL commands in WAL sender for physical replication",
                ))
                .await
            }
        }
    }

    pub async fn send_slot_error(&self, e: &super::slots::SlotError) -> Result<(), End> {
        let mut f = err_of(e);
        f.detail = e.detail();
        f.hint = e.hint();
        self.send_error(f).await
    }

    async fn identify_system(&self, view: &ServeView) -> Result<(), End> {
        let tli_type = if super::version_major(&view.server_version) >= 16 {
            INT8_OID
        } else {
            INT4_OID
        };
        let mut b = BytesMut::new();
        backend::row_description(
            &mut b,
            &[
                Field::new("systemid", TEXT_OID),
                Field::new("timeline", tli_type),
                Field::new("xlogpos", TEXT_OID),
                Field::new("dbname", TEXT_OID),
            ],
        );
        let sysid = view.system_id.to_string();
        let tli = view.timeline.to_string();
        let pos = view.flush.to_string();
        backend::data_row(
            &mut b,
            &[
                Some(sysid.as_bytes()),
                Some(tli.as_bytes()),
                Some(pos.as_bytes()),
                None,
            ],
        );
        backend::command_complete(&mut b, "IDENTIFY_SYSTEM");
        backend::ready_for_query(&mut b, b'I');
        self.send(b).await
    }

    async fn show(&self, view: &ServeView, name: &str) -> Result<(), End> {
        let lower = name.to_ascii_lowercase();
        let up = |n: &str| {
            view.parameters
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let value: Option<String> = match lower.as_str() {
            "wal_segment_size" => Some(if view.seg_size % (1 << 30) == 0 {
                format!("{}GB", view.seg_size >> 30)
            } else {
                format!("{}MB", view.seg_size >> 20)
            }),
            "data_directory_mode" => Some("0700".into()),
            "server_version" => Some(view.server_version.clone()),
            "server_version_num" => Some(super::version_num(&view.server_version).to_string()),
            "wal_block_size" | "block_size" => Some("8192".into()),
            "max_identifier_length" => Some("63".into()),
            "integer_datetimes" => Some("on".into()),
            "application_name" => Some(self.application_name.clone()),
            "session_authorization" => Some(self.user.clone()),
            "is_superuser" => Some("on".into()),
            "transaction_read_only" => Some("off".into()),
            "server_encoding" => Some(up("server_encoding").unwrap_or_else(|| "UTF8".into())),
            "client_encoding" => Some(up("client_encoding").unwrap_or_else(|| "UTF8".into())),
            "timezone" => Some(up("TimeZone").unwrap_or_else(|| "UTC".into())),
            "datestyle" => Some(up("DateStyle").unwrap_or_else(|| "ISO, MDY".into())),
            "intervalstyle" => Some(up("IntervalStyle").unwrap_or_else(|| "postgres".into())),
            "standard_conforming_strings" => Some("on".into()),
            "default_transaction_read_only" => {
                Some(up("default_transaction_read_only").unwrap_or_else(|| "off".into()))
            }
            "in_hot_standby" => Some(up("in_hot_standby").unwrap_or_else(|| "off".into())),
            _ => up(&lower),
        };
        let Some(value) = value else {
            return self
                .send_error(ErrorFields::error(
                    codes::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                ))
                .await;
        };
        let mut b = BytesMut::new();
        backend::row_description(&mut b, &[Field::new(lower.as_str(), TEXT_OID)]);
        backend::data_row(&mut b, &[Some(value.as_bytes())]);
        backend::command_complete(&mut b, "SHOW");
        backend::ready_for_query(&mut b, b'I');
        self.send(b).await
    }

    async fn timeline_history(&self, tli: u32) -> Result<(), End> {
        let name = history_file_name(tli);
        let mut b = BytesMut::new();
        backend::row_description(
            &mut b,
            &[
                Field::new("filename", TEXT_OID),
                Field::new("content", TEXT_OID),
            ],
        );
        let path = self.shared.data_dir.join(&name);
        match tokio::fs::read(&path).await {
            Ok(content) => {
                backend::data_row(&mut b, &[Some(name.as_bytes()), Some(&content)]);
                backend::command_complete(&mut b, "TIMELINE_HISTORY");
                backend::ready_for_query(&mut b, b'I');
                self.send(b).await
            }
            Err(e) => {
                let msg = match e.kind() {
                    std::io::ErrorKind::NotFound => "No such file or directory".to_string(),
                    _ => e.to_string(),
                };
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    codes::UNDEFINED_FILE
                } else {
                    codes::IO_ERROR
                };
                backend::error_response(
                    &mut b,
                    &ErrorFields::error(
                        code,
                        format!("could not open file \"pg_wal/{name}\": {msg}"),
                    ),
                );
                backend::ready_for_query(&mut b, b'I');
                self.send(b).await
            }
        }
    }

    async fn read_slot(&self, view: &ServeView, name: &str) -> Result<(), End> {
        let mut b = BytesMut::new();
        backend::row_description(
            &mut b,
            &[
                Field::new("slot_type", TEXT_OID),
                Field::new("restart_lsn", TEXT_OID),
                Field::new("restart_tli", INT8_OID),
            ],
        );
        match self.shared.slots.get(name) {
            None => backend::data_row(&mut b, &[None, None, None]),
            Some(s) => {
                let lsn = s.restart_lsn.filter(|l| l.is_valid());
                let lsn_text = lsn.map(|l| l.to_string());
                let tli_text = lsn.map(|l| self.tli_of(view, l).to_string());
                backend::data_row(
                    &mut b,
                    &[
                        Some(b"physical"),
                        lsn_text.as_deref().map(str::as_bytes),
                        tli_text.as_deref().map(str::as_bytes),
                    ],
                );
            }
        }
        backend::command_complete(&mut b, "READ_REPLICATION_SLOT");
        backend::ready_for_query(&mut b, b'I');
        self.send(b).await
    }

    /// The timeline `lsn` belongs to in the current history.
    pub fn tli_of(&self, view: &ServeView, lsn: Lsn) -> u32 {
        let entries = self.history(view.timeline).unwrap_or_default();
        crate::wal::history::tli_of_lsn(&entries, view.timeline, lsn)
    }

    /// Parsed history of `tli` from the data directory (empty for timeline 1).
    pub fn history(&self, tli: u32) -> Option<Vec<crate::wal::history::HistoryEntry>> {
        if tli <= 1 {
            return Some(Vec::new());
        }
        let text =
            std::fs::read_to_string(self.shared.data_dir.join(history_file_name(tli))).ok()?;
        crate::wal::history::parse_history(&text).ok()
    }
}

fn logical_error() -> ErrorFields {
    ErrorFields::error(
        codes::OBJECT_NOT_IN_STATE,
        "logical decoding requires a database connection",
    )
}

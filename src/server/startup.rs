//! The pre-authentication exchange of one connection.
//!
//! Owns: SSLRequest → `S`/`N`, GSSENCRequest → `N`, CancelRequest accepted and ignored,
//! direct TLS (PG 17+ `sslnegotiation=direct`), protocol 3.0 with NegotiateProtocolVersion for
//! 3.x / `_pq_` options, the `replication` parameter, the hba decision and the password
//! exchange (md5, SCRAM; the verifiers are in `auth.rs`), and the first ParameterStatus /
//! BackendKeyData / ReadyForQuery. The caller (`session.rs`) bounds it with the pre-auth
//! timeout and holds the pre-auth permit while it runs. Must not: run replication commands.

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::auth::{self, AuthError, Credential, Method, ScramServer};
use super::listener::Peer;
use super::reply;
use super::session::{fatal, BoxIo};
use super::{status, ServeView, Shared};
use crate::error::{codes, SqlState};
use crate::protocol::backend::{self, ErrorFields};
use crate::protocol::frame::{split_frame, Frame};
use crate::protocol::frontend::{parse_password, parse_sasl_initial, parse_startup, StartupPacket};

/// Longest password / SASL message (PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH).
const MAX_AUTH_MESSAGE: usize = 65535;

pub(crate) struct Established {
    /// The cluster's server the session runs in (the listener's own, or where the shared
    /// listener routed it: `route.rs`).
    pub shared: std::sync::Arc<Shared>,
    pub io: BoxIo,
    pub rbuf: BytesMut,
    pub user: String,
    pub application_name: String,
    pub pid: i32,
}

pub(crate) struct StartupFail {
    /// The stream to send the error on (None: just close).
    pub io: Option<BoxIo>,
    pub error: Option<ErrorFields>,
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
    peer: &Peer,
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
pub(crate) async fn startup(
    front: &std::sync::Arc<Shared>,
    mut io: BoxIo,
    peer: &Peer,
) -> Result<Option<Established>, StartupFail> {
    let shared: &Shared = front;
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls_peer_cert: Option<Vec<u8>> = None;
    let mut on_tls = false;
    // tls-server-end-point of the certificate this connection's handshake used (a reload
    // may replace the certificate afterwards; channel binding must match the one sent).
    let mut tls_cbind: Option<Vec<u8>> = None;
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
            tls_cbind = Some(tls.endpoint_hash.clone());
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
                        tls_cbind = Some(tls.endpoint_hash.clone());
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
    // A shared listener of several clusters: the rest (identity, hba, users) is the
    // target cluster's.
    let target = match &shared.router {
        Some(r) => match r.pick(&|k| get(k).map(str::to_string)) {
            Ok((_, s)) => s,
            Err(e) => {
                tracing::info!("connection from {peer} refused: {}", e.message);
                return Err(refuse(io, e, "route"));
            }
        },
        None => front.clone(),
    };
    let shared: &Shared = &target;
    let Some(view) = shared.view() else {
        return Err(refuse(
            io,
            fatal("57P03", "the database system is starting up"),
            "not_ready",
        ));
    };
    // Authentication.
    let ip = peer.ip();
    let host = ip.map_or_else(|| "[local]".to_string(), |i| i.to_string());
    let enc = if on_tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    // require_tls guards the network: Unix-domain sockets never carry TLS (libpq does not try
    // it there) and are governed by `local` rules and the socket's permissions.
    // One snapshot for the hba decision and the password exchange (a reload in between
    // never mixes old rules with new users).
    let access = shared.access();
    let rule = if access.require_tls && !on_tls && ip.is_some() {
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
                format!("no pg_hba.conf entry for replication connection from host \"{host}\", user \"{user}\", {enc}"),
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
                    format!("pg_hba.conf rejects replication connection for host \"{host}\", user \"{user}\", {enc}"),
                ),
                "auth",
            ))
        }
        Method::Peer => match peer {
            Peer::Unix { uid } => auth::check_peer(*uid, &user).map_err(ExchangeError::Auth),
            Peer::Tcp(_) => Err(ExchangeError::Auth(AuthError::PeerFailed(user.clone()))),
        },
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
            let cbind = tls_cbind.clone();
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
    reply::ready_for_query(&mut out);
    if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
        return Ok(None);
    }
    tracing::info!(
        "replication connection authorized: user={user} application_name={application_name} from {peer} (pid {pid}{})",
        if on_tls { ", TLS" } else { "" }
    );
    Ok(Some(Established {
        shared: target.clone(),
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

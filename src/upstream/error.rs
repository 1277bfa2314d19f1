//! Errors of the upstream replication client.
//!
//! Owns: [`UpstreamError`]. Messages are worded like libpq's so that operators recognise
//! them. A server `ErrorResponse` is the codec's [`ErrorFields`] (re-exported here), whose
//! `Display` is libpq's: `FATAL:  message` then `DETAIL:  …` / `HINT:  …` lines.

use std::fmt;

pub use crate::protocol::backend::ErrorFields;

use crate::error::{codes, SqlState};
use crate::upstream::conninfo::ConnInfoError;

/// Why connecting to one host failed (one line of [`UpstreamError::AllHostsFailed`]).
#[derive(Debug)]
pub struct HostFailure {
    pub host: String,
    pub port: u16,
    /// The socket path when this host was a Unix-domain socket directory.
    pub socket: Option<String>,
    pub error: UpstreamError,
}

impl HostFailure {
    /// The server as libpq names it: `server on socket "/dir/.s.PGSQL.5432"` or
    /// `server at "host", port 5432`.
    pub fn server(&self) -> String {
        server_label(&self.host, self.port, self.socket.as_deref())
    }
}

/// `server on socket "/dir/.s.PGSQL.5432"` or `server at "host", port 5432` (libpq's words).
pub fn server_label(host: &str, port: u16, socket: Option<&str>) -> String {
    match socket {
        Some(path) => format!("server on socket \"{path}\""),
        None => format!("server at \"{host}\", port {port}"),
    }
}

impl fmt::Display for HostFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection to {} failed: {}", self.server(), self.error)
    }
}

/// Everything that can go wrong talking to the upstream server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection string is invalid.
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// A socket error, connection refused, timeout, unexpected EOF...
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS setup or handshake failed (includes certificate verification).
    #[error("{0}")]
    Tls(String),
    /// Authentication failed: the server rejected us (SQLSTATE class 28 or 42501 during
    /// startup), or the client could not satisfy the server's request (no password,
    /// channel binding required...). Not worth retrying quickly.
    #[error("{0}")]
    Auth(AuthFailure),
    /// The server answered with an `ErrorResponse`.
    #[error("{0}")]
    Server(ErrorFields),
    /// The server sent something we did not expect or could not decode.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused a session that does not match `target_session_attrs`.
    #[error("{0}")]
    SessionAttrs(String),
    /// The server went silent: nothing received within the receive timeout (or the
    /// connect timeout). The connection is dropped.
    #[error("{0}")]
    Timeout(String),
    /// Every host failed; one line per attempt, like libpq.
    #[error("{}", join_lines(.0))]
    AllHostsFailed(Vec<HostFailure>),
}

/// An authentication failure: either the server's error or a client-side reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Server(ErrorFields),
    Client(String),
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::Server(e) => e.fmt(f),
            AuthFailure::Client(s) => f.write_str(s),
        }
    }
}

fn join_lines(v: &[HostFailure]) -> String {
    v.iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl UpstreamError {
    /// True when the failure is about credentials or permissions (for any host tried):
    /// retrying at once will not help.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            UpstreamError::Auth(_) => true,
            UpstreamError::AllHostsFailed(v) => v.iter().any(|h| h.error.is_auth_failure()),
            _ => false,
        }
    }

    /// The server's error fields, if this is a server error.
    pub fn server_error(&self) -> Option<&ErrorFields> {
        match self {
            UpstreamError::Server(e) | UpstreamError::Auth(AuthFailure::Server(e)) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        UpstreamError::Protocol(msg.into())
    }

    pub(crate) fn auth_client(msg: impl Into<String>) -> Self {
        UpstreamError::Auth(AuthFailure::Client(msg.into()))
    }
}

impl SqlState for UpstreamError {
    fn sqlstate(&self) -> &'static str {
        match self {
            UpstreamError::Auth(_) => codes::INVALID_AUTHORIZATION,
            UpstreamError::Protocol(_) => codes::PROTOCOL_VIOLATION,
            UpstreamError::ConnInfo(_) => codes::INVALID_PARAMETER_VALUE,
            _ => codes::CONNECTION_FAILURE,
        }
    }
}

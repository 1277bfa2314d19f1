//! An ordinary SQL session (no `replication` startup parameter) over the same connection
//! code as the replication client: the same conninfo, service file, `.pgpass`, TLS
//! (`sslmode`), SCRAM / `require_auth` and `target_session_attrs` rules.
//!
//! Owns: [`SqlSession`] (connect, simple queries, one-value queries), literal quoting, and
//! the default database of a SQL session (`postgres` when the connection string names
//! none, where a replication session says `replication`).
//! Must not: run replication commands or know what the queries mean (restore points and
//! fences are [`crate::fleet`]'s).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::time::Duration;

use super::conn::{QueryResult, ReplConnection};
use super::conninfo::ConnInfo;
use super::error::UpstreamError;

/// One SQL session.
pub struct SqlSession {
    conn: ReplConnection,
}

/// Quotes a string as an SQL literal like PostgreSQL's `quote_literal`: `'` doubled, and
/// with backslashes doubled under an `E` prefix when there are any (correct whatever
/// `standard_conforming_strings` says).
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// The connection settings of a SQL session from a connection string: the environment
/// (`PG*`, service file) applied, `dbname` defaulting to `postgres`, `application_name`
/// to `app`.
pub fn sql_conninfo(conninfo: &str, app: &str) -> Result<ConnInfo, UpstreamError> {
    let mut ci = ConnInfo::parse(conninfo)?;
    ci.apply_env(&|k| std::env::var(k).ok());
    if ci.dbname.as_deref().is_none_or(str::is_empty) {
        ci.dbname = Some("postgres".into());
    }
    if ci.application_name.is_none() {
        ci.application_name = Some(app.into());
    }
    Ok(ci)
}

impl SqlSession {
    /// Connects (first host that accepts and matches `target_session_attrs`). `timeout`
    /// bounds the whole attempt (on top of `connect_timeout`).
    pub async fn connect(ci: &ConnInfo, timeout: Duration) -> Result<SqlSession, UpstreamError> {
        match tokio::time::timeout(timeout, ReplConnection::connect_mode(ci, false)).await {
            Ok(r) => Ok(SqlSession { conn: r? }),
            Err(_) => Err(UpstreamError::Timeout("timeout expired".into())),
        }
    }

    /// Longest wait for each message of an answer (`None`: forever).
    pub fn set_reply_timeout(&mut self, t: Option<Duration>) {
        self.conn.set_reply_timeout(t);
    }

    /// Runs `q` with the simple query protocol. A server error is
    /// [`UpstreamError::Server`]; the session stays usable.
    pub async fn query(&mut self, q: &str) -> Result<QueryResult, UpstreamError> {
        self.conn.simple_query(q).await
    }

    /// The first column of the first row of `q` (`None`: no row, or NULL).
    pub async fn query_value(&mut self, q: &str) -> Result<Option<String>, UpstreamError> {
        let r = self.query(q).await?;
        Ok(r.rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten()))
    }

    /// A server parameter reported at startup (`server_version`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.conn.parameter(name)
    }

    /// `host:port` (or the socket) this session is connected to, for messages.
    pub fn server(&self) -> String {
        let (h, p) = self.conn.host_port();
        format!("{h}:{p}")
    }

    /// Ends the session (Terminate): the server releases its session-level locks.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(quote_literal("rp-1"), "'rp-1'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn default_database_is_postgres() {
        let ci = sql_conninfo("host=h user=u", "x").unwrap();
        assert_eq!(ci.dbname.as_deref(), Some("postgres"));
        let ci = sql_conninfo("host=h dbname=app", "x").unwrap();
        assert_eq!(ci.dbname.as_deref(), Some("app"));
    }
}

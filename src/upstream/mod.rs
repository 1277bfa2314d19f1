//! The replication client: everything walrelay needs to talk to the upstream PostgreSQL
//! primary (or standby) as a physical-replication client.
//!
//! Owns: connection strings ([`conninfo`]), the service file ([`service`]), the password file
//! ([`pgpass`]), `require_auth` ([`require_auth`]), TLS with libpq's `sslmode` semantics, CRLs
//! and channel binding ([`tls`]), the connection itself ([`conn`]: connection, `auth`,
//! `commands`, `copy`), plain SQL sessions over the same code ([`sql`]), the receive loop with its liveness timeout ([`receiver`]), and the
//! error type ([`error`]). See `docs/upstream.md`.
//!
//! Must not: write files or decide what to do with the WAL it receives; that is the
//! receive loop's and the store's business.

pub mod conn;
pub mod conninfo;
pub mod error;
pub mod pgpass;
pub mod receiver;
pub mod require_auth;
pub mod service;
pub mod sql;
mod timeline;
pub mod tls;

pub use conn::{CopyEvent, IdentifySystem, QueryResult, ReplConnection, SlotInfo};
pub use conninfo::{ConnInfo, ConnInfoError};
pub use error::{ErrorFields, HostFailure, UpstreamError};

//! The replication client: everything walrelay needs to talk to the upstream PostgreSQL
//! primary (or standby) as a physical-replication client.
//!
//! Owns: connection strings ([`conninfo`]), the password file ([`pgpass`]), TLS with libpq's
//! `sslmode` semantics and channel binding ([`tls`]), the connection itself with
//! authentication, replication commands and the CopyBoth streaming phase ([`conn`]), and the
//! error type ([`error`]).
//!
//! Must not: write files or decide what to do with the WAL it receives; that is the
//! receive loop's and the store's business.

pub mod conn;
pub mod conninfo;
pub mod error;
pub mod pgpass;
pub mod receiver;
pub mod require_auth;
pub mod tls;

pub use conn::{CopyEvent, IdentifySystem, QueryResult, ReplConnection, SlotInfo};
pub use conninfo::{ConnInfo, ConnInfoError};
pub use error::{ErrorFields, HostFailure, UpstreamError};

//! walrelay's HTTP endpoints: observation (metrics, health, status) and control (feeds,
//! transactions).
//!
//! Two kinds of listener, wired in `main.rs`:
//! - the **metrics listener** (`metrics.listen`, TCP, no authentication): `GET /metrics`,
//!   `GET /health`, `GET /status` only — nothing that changes state or shows transactions;
//! - the **control endpoint**: a Unix socket `<data_dir>/walrelay.control.sock` (mode 0600;
//!   the data directory's permissions are the access control), and over TCP only when
//!   `control.listen` is set, then with a bearer token from `control.token_file` (and TLS
//!   from `control.tls_cert`/`tls_key`, required unless the address is loopback). It serves
//!   the feed routes (`/feeds…`), `/xacts` and `/status`.
//!
//! Every TCP request has its Host checked (DNS rebinding), any request with a foreign
//! Origin is refused, and state-changing methods need `Content-Type: application/json`.
//! See `docs/security.md`.
//!
//! | file | owns |
//! |---|---|
//! | [`routes`] | `Request`, `Response`, the route table, target decoding |
//! | [`guard`] | the access checks: token, Host, Origin, content type |
//! | [`server`] | hyper serving on TCP/TLS/Unix with connection limits and timeouts |
//! | [`client`] | one request to an endpoint (CLI, tests) |
//!
//! Must not: hold business logic — routes call into the modules that own state.

pub mod client;
pub mod guard;
pub mod routes;
pub mod server;

pub use client::{call, call_blocking, request, Target};
pub use guard::{Policy, Token, Transport};
pub use routes::{Handler, Request, Response, Routes};
pub use server::{serve_tcp, serve_unix, Endpoint, Limits, Serving};

/// File name of the control socket in the data directory.
pub const CONTROL_SOCKET: &str = "walrelay.control.sock";

//! walrelay: receives PostgreSQL WAL over streaming replication, stores it as real WAL
//! segments, archives it to object storage and re-serves it to standbys.
//!
//! Data flows one way: primary → [`upstream`] → [`store`] → ([`archive`], [`server`]).
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`lsn`] | `Lsn`, timelines, segment names | do IO |
//! | [`protocol`] | wire codec for both directions, replication messages, command grammar | do IO |
//! | [`wal`] | WAL page headers, records, history files | do IO |
//! | [`upstream`] | the replication client: conninfo, TLS, auth, commands, streaming loop | write files |
//! | [`store`] | segment files, `.partial`, fsync, durable rename, control file | touch sockets |
//! | [`archive`] | uploads to object storage, `archived_lsn` | change local segments |
//! | [`server`] | the walsender: listener, auth, sessions | write WAL |
//! | [`metrics`] | metric names and the Prometheus recorder | hold business logic |
//! | [`admin`] | HTTP machinery: hyper serving with limits, access checks, routes, client | hold business logic |
//! | [`endpoints`] | which routes go on the metrics listener and the control endpoint | hold state |
//! | [`config`] | TOML config and defaults, the cluster model (`[[cluster]]` → `ClusterConfig`) | hold business logic |
//! | [`cluster`] | one cluster's wiring: store, receiver, walsender context, archiver, feeds; ordered shutdown | share state with another cluster |
//! | [`fleet`] | groups of clusters: restore points, group feed control | write WAL |
//! | [`pgreceivewal`] | the pg_receivewal command line (options, messages, exit codes) | write files itself |
//! | [`ops`] | last errors, upstream liveness, last archived segment, segment log lines | decide anything |
//! | [`check`] | `walrelay check`: one health verdict (Nagios codes) | change anything but a throwaway archive object |
//! | [`statusview`] | `walrelay status` text, the HTML status page, the lag history ring | serve data the metrics listener must not show |
//! | [`logging`] | log formats (text, JSON) and level control | hold business logic |
//! | [`delay`] | commit index, delayed/controlled feeds, tripwire | write WAL or touch sockets |
//! | [`statefile`] | durable atomic state files, the coalescing state writer | know what the files mean |
//! | [`generate`] | man pages and shell completions from the CLI | know options itself |
//! | [`reload`] | SIGHUP: re-read the config, apply TLS/hba/users/feeds live, report the rest | restart anything |
//! | [`sdnotify`] | systemd notifications (READY, RELOADING, STOPPING, WATCHDOG) | decide readiness |
//!
//! See `docs/architecture.md` for the data flow as built.

pub mod admin;
pub mod archive;
pub mod check;
pub mod cluster;
pub mod config;
pub mod delay;
pub mod endpoints;
pub mod error;
pub mod fleet;
pub mod generate;
pub mod logging;
pub mod lsn;
pub mod metrics;
pub mod ops;
pub mod pgreceivewal;
pub mod protocol;
pub mod reload;
pub mod sdnotify;
pub mod server;
pub mod statefile;
pub mod statusview;
pub mod store;
pub mod upstream;
pub mod wal;

pub use lsn::{Lsn, TimelineId};

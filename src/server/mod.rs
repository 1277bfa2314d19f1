//! The walsender: the server that standbys (`primary_conninfo` pointing at walrelay) and
//! `pg_receivewal -h walrelay` stream from.
//!
//! Owns: the TCP and Unix-socket listeners and connection limits, one tokio task per client session (startup,
//! TLS, authentication, replication commands, streaming), proxy-side slots, hot-standby
//! feedback aggregation and the downstream status view. Reads WAL from the store's shared
//! in-memory tail and, for older positions, from the segment files
//! ([`crate::store::reader`]); never sends past the store's flush position.
//!
//! Must not: write WAL or history files, or talk to the primary (the upstream receiver
//! forwards [`ServerHandle::hs_feedback`]; retention reads [`ServerHandle::slots_min_restart`]).
//!
//! | file | owns |
//! |---|---|
//! | `listener.rs` | TCP / Unix-socket listeners, lock file, admission limits, fd reserve |
//! | `startup.rs` | startup packets, SSLRequest/GSSENC/cancel, TLS, hba decision, password exchange |
//! | `session.rs` | the connection task, writer task, message framing, command loop |
//! | `reply.rs` | typed command answers (`ResultSet` …) and ReadyForQuery |
//! | `cmd/*.rs` | one file per replication command (dispatch in `cmd/mod.rs`) |
//! | `walsender.rs` | the CopyBoth streaming loop of START_REPLICATION |
//! | `auth.rs` | hba rules, SCRAM/md5 server side |
//! | `access.rs` | the live (SIGHUP-reloadable) TLS, hba rules and users |
//! | `tls.rs` | rustls setup, channel binding hash, client certificate CN |
//! | `slots.rs` | proxy-side slots (`slots.json`) |
//! | `feedback.rs` | hot-standby feedback minimum |
//! | `status.rs` | `pg_stat_replication`-like rows and metrics |
//!
//! See `docs/walsender.md`.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]
pub mod access;
pub mod auth;
mod cmd;
pub mod feedback;
pub mod listener;
mod reply;
pub mod route;
mod session;
// slots.rs belongs to the state work (slots.json via serde, no wire parsing): outside this
// module's no-panic lints for now.
#[allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)]
pub mod slots;
mod startup;
pub mod status;
pub mod tls;
mod walsender;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::ServerConfig;
use crate::lsn::{Lsn, TimelineId};
use crate::store::Store;
pub use feedback::HsFeedback;
pub use slots::SlotView;
pub use status::WalSenderStatus;

pub use crate::upstream::receiver::UpstreamInfo;

/// Validated server settings (see [`ServerSettings::from_config`]).
#[derive(Clone)]
pub struct ServerSettings {
    pub listen: Vec<listener::ListenAddr>,
    pub max_connections: usize,
    pub max_startup_connections: usize,
    pub max_startup_connections_per_address: usize,
    pub reserved_file_descriptors: usize,
    /// Mode of Unix-domain sockets.
    pub unix_socket_mode: u32,
    pub startup_timeout: Duration,
    pub tls: Option<tls::TlsSetup>,
    pub require_tls: bool,
    pub hba: Vec<auth::HbaRule>,
    pub users: HashMap<String, auth::Credential>,
    pub wal_sender_timeout: Duration,
    pub keepalive_interval: Duration,
    pub shutdown_timeout: Duration,
    pub max_slots: usize,
    pub max_slot_wal_keep_size: Option<u64>,
    /// `[server] read_cache_size` (read at start; a reload does not resize the cache).
    pub read_cache_size: usize,
    /// `[server] slots`: declared permanent slots (docs/ha.md).
    pub declared_slots: Vec<String>,
}

impl ServerSettings {
    /// Checks the `[server]` section: listen address, TLS files, hba rules and verifiers.
    pub fn from_config(c: &ServerConfig) -> Result<ServerSettings, ServerError> {
        let listen = c
            .listen
            .as_deref()
            .ok_or_else(|| ServerError::Config("server.listen is not set".into()))?;
        let listen = listener::parse_listen(listen).map_err(ServerError::Config)?;
        Self::checked(c, listen)
    }

    /// The settings of a cluster served only through a shared listener: `c` without its
    /// listen addresses.
    pub fn unlistened(c: &ServerConfig) -> Result<ServerSettings, ServerError> {
        Self::checked(c, Vec::new())
    }

    fn checked(
        c: &ServerConfig,
        listen: Vec<listener::ListenAddr>,
    ) -> Result<ServerSettings, ServerError> {
        let unix_socket_mode =
            listener::parse_mode(&c.unix_socket_permissions).map_err(ServerError::Config)?;
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls::load(cert, key, c.tls_ca.as_deref()).map_err(ServerError::Config)?)
            }
            (None, None) => None,
            _ => {
                return Err(ServerError::Config(
                    "server.tls_cert and server.tls_key must be set together".into(),
                ))
            }
        };
        if c.require_tls && tls.is_none() {
            return Err(ServerError::Config(
                "server.require_tls needs server.tls_cert and server.tls_key".into(),
            ));
        }
        let hba = if c.hba.is_empty() {
            default_hba()
        } else {
            auth::parse_rules(&c.hba).map_err(ServerError::Config)?
        };
        let mut users = HashMap::new();
        for (name, secret) in &c.users {
            let cred = auth::parse_credential(secret)
                .map_err(|e| ServerError::Config(format!("server.users.{name}: {e}")))?;
            users.insert(name.clone(), cred);
        }
        Ok(ServerSettings {
            listen,
            max_connections: c.max_connections.max(1),
            max_startup_connections: c.max_startup_connections.max(1),
            max_startup_connections_per_address: c.max_startup_connections_per_address.max(1),
            reserved_file_descriptors: c.reserved_file_descriptors,
            unix_socket_mode,
            startup_timeout: c.startup_timeout,
            tls,
            require_tls: c.require_tls,
            hba,
            users,
            wal_sender_timeout: c.wal_sender_timeout,
            keepalive_interval: c.keepalive_interval,
            shutdown_timeout: c.shutdown_timeout,
            max_slots: c.max_slots,
            max_slot_wal_keep_size: c.max_slot_wal_keep_size,
            read_cache_size: usize::try_from(c.read_cache_size).unwrap_or(usize::MAX),
            declared_slots: c.slots.clone(),
        })
    }
}

/// With no `[[server.hba]]` rules: trust from loopback addresses, `peer` on Unix-domain
/// sockets, nothing else.
fn default_hba() -> Vec<auth::HbaRule> {
    let rule = |conn_type: &str, address: &str, method: &str| crate::config::HbaRuleConfig {
        conn_type: conn_type.into(),
        database: "replication".into(),
        user: "all".into(),
        address: address.into(),
        method: method.into(),
    };
    auth::parse_rules(&[
        rule("local", "all", "peer"),
        rule("host", "127.0.0.0/8", "trust"),
        rule("host", "::1/128", "trust"),
    ])
    .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("could not listen on \"{addr}\": {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Slots(#[from] slots::SlotError),
}

/// What the server reads: the store (positions, tail, files) and the upstream's identity.
pub struct ServerContext {
    pub store: Store,
    pub upstream: watch::Receiver<UpstreamInfo>,
    pub data_dir: PathBuf,
    /// delay: feed rules; a session under a feed sends no further than the feed allows
    /// (`crate::delay`). `None`: no feeds configured.
    pub feeds: Option<Arc<crate::delay::FeedController>>,
    /// Where sessions read segments that are no longer in the data directory (removed by
    /// retention) before answering "has already been removed". `None`: archiving disabled.
    pub archive: Option<Arc<crate::archive::LazyArchiveReader>>,
    /// The cluster it serves (metrics label, errors); [`crate::ops::current`] by default.
    pub cluster: Arc<crate::ops::ClusterOps>,
}

/// A snapshot of what walrelay can serve.
#[derive(Debug, Clone)]
pub(crate) struct ServeView {
    pub system_id: u64,
    pub seg_size: u64,
    pub timeline: TimelineId,
    pub flush: Lsn,
    pub server_version: String,
    pub parameters: Vec<(String, String)>,
}

pub(crate) struct Shared {
    pub settings: ServerSettings,
    /// TLS, hba and users in force (replaced by a reload; `settings` keeps the start-up ones).
    pub access: access::LiveAccess,
    pub store: Store,
    pub upstream: watch::Receiver<UpstreamInfo>,
    pub data_dir: PathBuf,
    pub slots: slots::Slots,
    pub feedback: feedback::FeedbackAggregator,
    pub status: status::StatusRegistry,
    /// delay: see [`ServerContext::feeds`].
    pub feeds: Option<Arc<crate::delay::FeedController>>,
    /// See [`ServerContext::archive`].
    pub archive: Option<Arc<crate::archive::LazyArchiveReader>>,
    /// Chunks of segment files read by this cluster's sessions, shared between them.
    pub read_cache: crate::store::readcache::ReadCache,
    next_pid: AtomicI32,
    next_session: AtomicU64,
    pub limits: listener::Limits,
    /// See [`ServerContext::cluster`].
    pub cluster: Arc<crate::ops::ClusterOps>,
    /// A shared listener: connections go to the cluster they name (`route.rs`).
    pub(crate) router: Option<Arc<route::Router>>,
}

impl Shared {
    pub fn new_pid(&self) -> i32 {
        self.next_pid.fetch_add(1, Ordering::Relaxed)
    }
    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Identity and positions: the store's when it is writing a timeline, else the control
    /// file's (walrelay restarted and the primary is not reachable yet).
    pub fn view(&self) -> Option<ServeView> {
        let pos = self.store.positions().borrow().clone();
        let up = self.upstream.borrow().clone();
        let control = crate::store::control::read(&self.data_dir).ok().flatten();
        let system_id = if pos.system_id != 0 {
            pos.system_id
        } else if up.system_id != 0 {
            up.system_id
        } else {
            control.as_ref().and_then(|c| c.system_id())?
        };
        let seg_size = if pos.wal_segment_size != 0 {
            pos.wal_segment_size
        } else {
            control.as_ref().map(|c| c.wal_segment_size)?
        };
        let (timeline, flush) = if pos.timeline != 0 {
            (pos.timeline, pos.flush_lsn)
        } else {
            let c = control.as_ref()?;
            (c.timeline, c.flush_lsn())
        };
        if timeline == 0 || !crate::lsn::valid_segment_size(seg_size) {
            return None;
        }
        let server_version = if !up.server_version.is_empty() {
            up.server_version.clone()
        } else {
            control
                .as_ref()
                .map(|c| c.server_version.clone())
                .filter(|v| !v.is_empty())?
        };
        Some(ServeView {
            system_id,
            seg_size,
            timeline,
            flush,
            server_version,
            parameters: up.parameters,
        })
    }
}

/// The running server.
pub struct ServerHandle {
    /// Minimum hot-standby feedback of the connected standbys (zeros when none needs it).
    pub hs_feedback: watch::Receiver<HsFeedback>,
    /// Oldest `restart_lsn` of the proxy-side slots, for WAL retention.
    pub slots_min_restart: watch::Receiver<Option<Lsn>>,
    /// The same for local WAL retention: declared slots count only while active (docs/ha.md).
    pub slots_local_floor: watch::Receiver<Option<Lsn>>,
    /// The first TCP listening address (`None`: only Unix sockets).
    pub local_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// A cloneable view of the server's status (for HTTP handlers).
#[derive(Clone)]
pub struct StatusSource(Arc<Shared>);

impl StatusSource {
    pub fn status(&self) -> Vec<WalSenderStatus> {
        self.0.status.snapshot()
    }
    pub fn slots(&self) -> Vec<SlotView> {
        self.0.slots.list()
    }
}

impl ServerHandle {
    pub fn status_source(&self) -> StatusSource {
        StatusSource(self.shared.clone())
    }
    /// This server as a target of a shared listener ([`Server::start_shared`]).
    pub fn route_target(&self) -> RouteTarget {
        RouteTarget(self.shared.clone())
    }
    /// One row per replication session, like `pg_stat_replication`.
    pub fn status(&self) -> Vec<WalSenderStatus> {
        self.shared.status.snapshot()
    }
    /// The proxy-side slots.
    pub fn slots(&self) -> Vec<SlotView> {
        self.shared.slots.list()
    }
    /// Waits until the server has shut down (after `shutdown` turned true) and every
    /// session ended.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

pub struct Server;

/// A cluster's server as the shared listener sees it.
#[derive(Clone)]
pub struct RouteTarget(Arc<Shared>);

impl Server {
    /// Binds the listener and starts accepting. Shutdown (`shutdown` turning true) stops
    /// accepting, lets streaming sessions finish in order, and persists the slots. With
    /// no listen address the server only serves what a shared listener routes to it.
    pub async fn start(
        settings: ServerSettings,
        ctx: ServerContext,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ServerHandle, ServerError> {
        Self::start_inner(settings, ctx, None, shutdown).await
    }

    /// The shared listener of several clusters: TLS, admission limits and the startup
    /// timeout are its own (`settings`); each connection goes to the cluster it names
    /// (`route.rs`), whose hba, users, slots and feeds then apply. `state_dir` holds its
    /// socket lock files and an (unused) slot file.
    pub async fn start_shared(
        mut settings: ServerSettings,
        targets: Vec<(String, RouteTarget)>,
        route_users: std::collections::BTreeMap<String, String>,
        state_dir: PathBuf,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ServerHandle, ServerError> {
        let Some((_, first)) = targets.first() else {
            return Err(ServerError::Config(
                "a shared listener needs at least one cluster".into(),
            ));
        };
        let ctx = ServerContext {
            store: first.0.store.clone(),
            upstream: first.0.upstream.clone(),
            data_dir: state_dir,
            feeds: None,
            archive: None,
            cluster: crate::ops::cluster(route::SHARED_LABEL),
        };
        // declared slots belong to each cluster's server, not to the listener's unused file
        settings.declared_slots.clear();
        let router = route::Router {
            clusters: targets.into_iter().map(|(n, t)| (n, t.0)).collect(),
            users: route_users,
        };
        Self::start_inner(settings, ctx, Some(Arc::new(router)), shutdown).await
    }

    async fn start_inner(
        settings: ServerSettings,
        ctx: ServerContext,
        router: Option<Arc<route::Router>>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ServerHandle, ServerError> {
        let fds = listener::FdBudget::start(settings.reserved_file_descriptors);
        let mut bound = Vec::with_capacity(settings.listen.len());
        for addr in &settings.listen {
            bound
                .push(listener::Bound::bind(addr, settings.unix_socket_mode, &ctx.data_dir).await?);
        }
        let local_addr = bound.iter().find_map(|b| b.local_addr());
        let limits = listener::Limits::new(
            settings.max_connections,
            settings.max_startup_connections,
            settings.max_startup_connections_per_address,
            fds,
        );
        let (slots, slots_min_restart) = slots::Slots::load(
            &ctx.data_dir,
            settings.max_slots,
            settings.max_slot_wal_keep_size,
        )?;
        let declared = slots.declare(&settings.declared_slots).await;
        let declared = declared.map_err(|e| match e {
            slots::SlotError::Io { .. } => ServerError::Slots(e),
            slots::SlotError::TooMany => ServerError::Config(format!(
                "server.slots: more slots than max_slots ({}) with those in slots.json",
                settings.max_slots
            )),
            e => ServerError::Config(format!("server.slots: {e}")),
        })?;
        for name in declared {
            tracing::info!("created replication slot \"{name}\" declared in [server] slots");
        }
        let slots_local_floor = slots.local_floor();
        let (feedback, hs_feedback) = feedback::FeedbackAggregator::new();
        let read_cache_size = settings.read_cache_size;
        let shared = Arc::new(Shared {
            access: access::LiveAccess::new(&settings),
            settings,
            store: ctx.store,
            upstream: ctx.upstream,
            data_dir: ctx.data_dir,
            slots,
            feedback,
            status: status::StatusRegistry::default(),
            feeds: ctx.feeds,
            archive: ctx.archive,
            read_cache: crate::store::readcache::ReadCache::new(read_cache_size),
            next_pid: AtomicI32::new(first_pid()),
            next_session: AtomicU64::new(1),
            limits,
            cluster: ctx.cluster,
            router,
        });
        for b in &bound {
            tracing::info!("walsender listening on {}", b.describe());
        }
        let task = tokio::spawn(crate::ops::scope(
            shared.cluster.clone(),
            accept_loop(bound, shared.clone(), shutdown),
        ));
        Ok(ServerHandle {
            hs_feedback,
            slots_min_restart,
            slots_local_floor,
            local_addr,
            shared,
            task,
        })
    }
}

/// One accepted connection, handed from a listener task to the session set.
struct Incoming {
    conn: listener::Conn,
    peer: listener::Peer,
    admission: Result<listener::Admission, (listener::Refusal, tokio::sync::OwnedSemaphorePermit)>,
}

/// Accepts on one listener: a place under the cap and fd headroom first, then `accept`.
async fn listen_task(
    bound: listener::Bound,
    shared: Arc<Shared>,
    tx: tokio::sync::mpsc::Sender<Incoming>,
) {
    let what = bound.describe();
    let mut backoff = listener::AcceptBackoff::new();
    loop {
        let permit = shared.limits.ready_to_accept().await;
        match bound.accept().await {
            Ok((conn, peer)) => {
                backoff.ok();
                shared.limits.fds_accepted();
                let admission = shared.limits.admit(permit, &peer);
                if tx
                    .send(Incoming {
                        conn,
                        peer,
                        admission,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                drop(permit);
                let wait = backoff.failed(&what, &e);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

async fn accept_loop(
    bound: Vec<listener::Bound>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let mut listeners = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Incoming>(1);
    for b in bound {
        listeners.spawn(crate::ops::inherit(listen_task(
            b,
            shared.clone(),
            tx.clone(),
        )));
    }
    drop(tx);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    let mut positions = shared.store.positions();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            Some(inc) = rx.recv() => {
                let Incoming { conn, peer, admission } = inc;
                match admission {
                    Ok(adm) => {
                        sessions.spawn(crate::ops::inherit(session::run(shared.clone(), conn, peer, adm, shutdown.clone())));
                    }
                    Err((why, permit)) => {
                        sessions.spawn(crate::ops::inherit(session::refuse_at_accept(conn, peer, why, permit)));
                    }
                }
            }
            _ = shutdown.changed() => {}
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = housekeeping.tick() => {
                let flush = positions.borrow_and_update().flush_lsn;
                for name in shared.slots.enforce_cap(flush) {
                    tracing::warn!(
                        "replication slot \"{name}\" invalidated: its restart_lsn is more than max_slot_wal_keep_size behind {flush}"
                    );
                }
                persist_slots(&shared).await;
            }
        }
    }
    // Stop accepting; the listening sockets (and Unix socket files and lock files) go away.
    listeners.abort_all();
    while listeners.join_next().await.is_some() {}
    drop(rx);
    tracing::info!(
        "walsender: shutting down, waiting for {} session(s)",
        sessions.len()
    );
    let grace = shared
        .settings
        .shutdown_timeout
        .saturating_add(Duration::from_secs(2));
    if tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        sessions.abort_all();
    }
    persist_slots(&shared).await;
}

/// Session "pids" start at 100000 + 1000 × (walrelay's pid mod 1000), so that two walrelay
/// processes on a host rarely show the same ones.
fn first_pid() -> i32 {
    let base = i32::try_from(std::process::id().checked_rem(1000).unwrap_or(0)).unwrap_or(0);
    base.saturating_mul(1000).saturating_add(100_000)
}

async fn persist_slots(shared: &Arc<Shared>) {
    let s = shared.clone();
    let r = tokio::task::spawn_blocking(move || s.slots.persist_if_dirty()).await;
    if let Ok(Err(e)) = r {
        tracing::error!("{e}");
    }
}

/// `server_version` → major (`15.18 (Debian …)` → 15, `18beta1` → 18).
pub(crate) fn version_major(v: &str) -> u32 {
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

/// `server_version` → `server_version_num` (`15.18` → 150018).
pub(crate) fn version_num(v: &str) -> u32 {
    let major = version_major(v);
    let rest = v.get(major.to_string().len()..).unwrap_or("");
    let minor: u32 = rest
        .strip_prefix('.')
        .map(|r| {
            r.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    major.saturating_mul(10000).saturating_add(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_major("15.18 (Debian 15.18-1.pgdg120+1)"), 15);
        assert_eq!(version_num("15.18 (Debian 15.18-1.pgdg120+1)"), 150018);
        assert_eq!(version_num("18beta1"), 180000);
        assert_eq!(version_major("junk"), 0);
    }
}

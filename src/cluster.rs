//! One cluster of `walrelay run`: its store thread, upstream receiver, walsender server
//! context, archiver and expiry, commit index and feeds — and its ordered shutdown.
//!
//! Owns: the wiring of one [`ClusterConfig`] ([`ClusterHandle::start`]), running its
//! receiver ([`ClusterHandle::spawn_receiver`]) and stopping it in order
//! ([`ClusterHandle::stop`]: receiver, then walsender, then archiver and expiry, then the
//! store). Everything a cluster starts runs in its cluster scope ([`crate::ops::scope`]),
//! so its metrics carry `cluster="<name>"` and its errors are its own. Must not: share
//! anything with another cluster but the process-wide pools documented in `docs/fleet.md`
//! (the runtime's two workers, the metrics recorder, the shared listener's admission
//! limits); `main.rs` owns the process (CLI, endpoints, signals).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::archive::archiver::ArchiverHandle;
use crate::config::ClusterConfig;
use crate::delay::indexer::IndexerOptions;
use crate::delay::{CommitIndex, FeedController};
use crate::lsn::Lsn;
use crate::ops::ClusterOps;
use crate::server::{Server, ServerContext, ServerHandle, ServerSettings};
use crate::store::{Store, StoreOptions};
use crate::upstream::conninfo::ConnInfo;
use crate::upstream::receiver::{self, ReceiverOptions, UpstreamInfo};

/// A started cluster (its receiver not yet running: see [`ClusterHandle::spawn_receiver`]).
pub struct ClusterHandle {
    pub name: String,
    pub ops: Arc<ClusterOps>,
    /// What the status and metrics endpoints show of it.
    pub sources: crate::endpoints::Sources,
    /// Its walsender: with its own listener, or only reachable through the shared one.
    pub server: Option<ServerHandle>,
    pub feeds: Option<Arc<FeedController>>,
    /// Its own listen address(es), if any.
    pub listen: Option<String>,
    store: Store,
    data_dir: std::path::PathBuf,
    server_stop: watch::Sender<bool>,
    archiver: Option<ArchiverHandle>,
    expiry: Option<JoinHandle<()>>,
    backups: Option<JoinHandle<()>>,
    receiver_opts: Option<ReceiverOptions>,
    receiver: Option<JoinHandle<Result<(), String>>>,
}

impl ClusterHandle {
    /// Opens the cluster's data directory (recovering the store), checks its archive and
    /// starts its walsender, feeds, archiver and expiry. `routed`: a shared listener will
    /// route connections to it (so it gets a server even without a listener of its own).
    pub async fn start(
        c: &ClusterConfig,
        routed: bool,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ClusterHandle, String> {
        let ops = crate::ops::cluster(&c.name);
        crate::ops::scope(ops.clone(), Self::start_scoped(c, ops, routed, shutdown)).await
    }

    async fn start_scoped(
        c: &ClusterConfig,
        ops: Arc<ClusterOps>,
        routed: bool,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ClusterHandle, String> {
        let Some(conninfo) = c.upstream.conninfo.as_deref() else {
            return Err("no upstream server configured: use --upstream CONNINFO or upstream.conninfo in the configuration file".into());
        };
        let mut conninfo = ConnInfo::parse(conninfo).map_err(|e| e.to_string())?;
        conninfo.apply_env(&|k| std::env::var(k).ok());
        if conninfo.application_name.is_none() {
            conninfo.application_name = Some("walrelay".into());
        }
        // fail fast: a missing bucket, missing credentials or a refused write stop start-up
        crate::archive::probe::open_checked(
            &crate::archive::ArchiveSettings::new(c.archive.clone(), &c.data_dir),
            crate::archive::probe::Access::ReadWrite,
        )
        .await
        .map_err(|e| e.to_string())?;
        let store = Store::start(
            &c.data_dir,
            StoreOptions {
                control_file: true,
                // 32 MB of recent WAL for walsenders and the archiver (2 segments): run's memory
                // budget with an archive and 10 standbys is 128 MB (docs/benchmarks.md, issue 14)
                tail_bytes: 32 << 20,
                ..StoreOptions::default()
            },
        )
        .map_err(|e| {
            format!(
                "could not open data directory \"{}\": {e}",
                c.data_dir.display()
            )
        })?;
        // Serve what the files hold from the start, with or without the upstream.
        store.recovered().await;
        let (server_stop, server_stop_rx) = watch::channel(false);
        let (info_tx, info_rx) = watch::channel(UpstreamInfo::default());
        let feeds = start_feeds(c, &store, &shutdown)?;
        let mut archive_settings =
            crate::archive::ArchiveSettings::new(c.archive.clone(), &c.data_dir);
        let listen = c.server.as_ref().and_then(|s| s.listen.clone());
        let settings = match (&listen, routed) {
            (Some(_), _) => c.server.as_ref().map(ServerSettings::from_config),
            (None, true) => Some(ServerSettings::unlistened(&c.served)),
            (None, false) => None,
        };
        let server = match settings {
            Some(settings) => {
                let settings = settings.map_err(|e| e.to_string())?;
                let ctx = ServerContext {
                    store: store.clone(),
                    upstream: info_rx.clone(),
                    data_dir: c.data_dir.clone(),
                    feeds: feeds.clone(),
                    archive: crate::archive::LazyArchiveReader::new(&archive_settings)
                        .map(Arc::new),
                    cluster: ops.clone(),
                };
                Some(
                    Server::start(settings, ctx, server_stop_rx)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        archive_settings.slot_floor = retention_floor(
            server.as_ref().map(|s| s.slots_min_restart.clone()),
            feeds.as_ref().map(|f| f.min_needed_lsn()),
        );
        let expire_settings = archive_settings.clone();
        let backups = crate::backup::schedule::spawn(
            &c.backup,
            conninfo.clone(),
            archive_settings.clone(),
            shutdown.clone(),
        );
        // local retention: declared slots only while active (docs/ha.md)
        archive_settings.slot_floor = retention_floor(
            server.as_ref().map(|s| s.slots_local_floor.clone()),
            feeds.as_ref().map(|f| f.min_needed_lsn()),
        );
        let archive_url = archive_settings.url();
        let archiver = crate::archive::Archiver::start(archive_settings, &store, shutdown.clone())
            .map_err(|e| e.to_string())?;
        let expiry = archiver.as_ref().and_then(|h| {
            crate::archive::expire::spawn_timer(
                expire_settings,
                h.archived_lsn.clone(),
                shutdown.clone(),
            )
        });
        let sources = crate::endpoints::Sources {
            cluster: c.name.clone(),
            ops: ops.clone(),
            archive: archive_url.map(|u| (u, c.archive.clone())),
            positions: store.positions(),
            upstream: info_rx.clone(),
            walsenders: server.as_ref().map(|s| s.status_source()),
            archived: archiver.as_ref().map(|h| h.archived_lsn.clone()),
            feeds: feeds.clone(),
            archiver: archiver.as_ref().map(|h| h.status.clone()),
        };
        let receiver_opts = ReceiverOptions {
            conninfo,
            slot: c.upstream.slot.clone(),
            create_slot_if_missing: c.upstream.create_slot,
            synchronous: c.upstream.synchronous,
            status_interval: c.upstream.status_interval,
            receive_timeout: c.upstream.receive_timeout,
            endpos: None,
            no_loop: false,
            reconnect_min: c.upstream.reconnect_min,
            reconnect_max: c.upstream.reconnect_max,
            flush_cap: archiver.as_ref().and_then(|h| h.flush_cap(c.archive.ack)),
            info: Some(info_tx),
            hs_feedback: server.as_ref().map(|s| s.hs_feedback.clone()),
        };
        Ok(ClusterHandle {
            name: c.name.clone(),
            ops,
            sources,
            server,
            feeds,
            listen,
            store,
            data_dir: c.data_dir.clone(),
            server_stop,
            archiver,
            expiry,
            backups,
            receiver_opts: Some(receiver_opts),
            receiver: None,
        })
    }

    /// The cluster's data directory.
    pub fn data_dir_path(&self) -> std::path::PathBuf {
        self.data_dir.clone()
    }

    /// Starts streaming from the upstream (a task of its own, in the cluster's scope).
    pub fn spawn_receiver(&mut self, shutdown: watch::Receiver<bool>) {
        let Some(opts) = self.receiver_opts.take() else {
            return;
        };
        let store = self.store.clone();
        self.receiver = Some(tokio::spawn(crate::ops::scope(
            self.ops.clone(),
            async move {
                receiver::run(store, opts, shutdown)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )));
    }

    /// Waits for the receiver to end (at shutdown, or on an error it does not retry).
    pub async fn wait_receiver(&mut self) -> Result<(), String> {
        match self.receiver.take() {
            Some(t) => t
                .await
                .unwrap_or_else(|e| Err(format!("internal error: {e}"))),
            None => Ok(()),
        }
    }

    /// Ordered shutdown after the receiver ended: the walsender (standbys get what is
    /// flushed), then the archiver and expiry, then the store.
    pub async fn stop(mut self) -> Result<(), String> {
        let _ = self.server_stop.send(true);
        if let Some(server) = self.server.take() {
            server.wait().await;
        }
        if let Some(h) = &self.archiver {
            h.abort();
        }
        if let Some(t) = self.expiry.take() {
            t.abort();
            let _ = t.await;
        }
        if let Some(t) = self.backups.take() {
            t.abort();
            let _ = t.await;
        }
        self.store.close().await.map_err(|e| e.to_string())
    }
}

/// Delayed feeds: the commit index follows the store; sessions ask the controller.
fn start_feeds(
    c: &ClusterConfig,
    store: &Store,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<Arc<FeedController>>, String> {
    if c.feed.is_empty() {
        return Ok(None);
    }
    let index = CommitIndex::new();
    let ctl = FeedController::new(
        &c.feed,
        &c.feeds,
        &c.data_dir,
        index.clone(),
        store.positions(),
    )
    .map_err(|e| e.to_string())?;
    tokio::spawn(crate::ops::inherit(crate::delay::indexer::run(
        index,
        Some(ctl.clone()),
        store.clone(),
        IndexerOptions {
            data_dir: c.data_dir.clone(),
            max_entries: c.feeds.index_max_entries,
        },
        shutdown.clone(),
    )));
    let ctl2 = ctl.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(crate::ops::inherit(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => ctl2.persist_if_dirty(),
                _ = stop.changed() => { ctl2.persist_if_dirty(); break; }
            }
        }
    }));
    Ok(Some(ctl))
}

/// Local WAL that proxy-side slots or delayed feeds still need is kept whatever the other
/// retention rules say: the archive's retention gets the minimum of both floors.
fn retention_floor(
    slots: Option<watch::Receiver<Option<Lsn>>>,
    feeds: Option<watch::Receiver<Option<Lsn>>>,
) -> Option<watch::Receiver<Option<Lsn>>> {
    match (slots, feeds) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a),
        (Some(mut a), Some(mut b)) => {
            let min = |a: Option<Lsn>, b: Option<Lsn>| match (a, b) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            let (tx, rx) = watch::channel(min(*a.borrow(), *b.borrow()));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = a.changed() => if r.is_err() { break },
                        r = b.changed() => if r.is_err() { break },
                    }
                    let v = min(*a.borrow_and_update(), *b.borrow_and_update());
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            });
            Some(rx)
        }
    }
}

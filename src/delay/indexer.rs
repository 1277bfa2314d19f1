//! The indexer task: follows the store's flush position and records every transaction end
//! and restore point in the [`CommitIndex`].
//!
//! Owns: where indexing resumes after a restart (the segment holding the last saved entry,
//! or the oldest local segment), reading newly flushed WAL (the store's shared tail, else the
//! segment files), the [`RecordDecoder`] run, appending to the index file, the index's
//! coverage watch (feeds never send past what is indexed), pruning, and timeline switches
//! (entries past the switch point are dropped). Wakes on `positions.changed()`; no polling.
//!
//! Fails closed: WAL it cannot index (a decoding error, a segment gone before it was read)
//! is a gap; every delayed feed is held before it ([`FeedController::on_index_gap`]) and the
//! hold is durable before the indexer moves past it. Its position is part of the retention
//! floor ([`FeedController::min_needed_lsn`]), so retention does not remove WAL before it is
//! indexed.
//!
//! Must not: write WAL or decide what feeds send.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::lsn::{history_file_name, Lsn, TimelineId};
use crate::store::Store;
use crate::wal::{history, RecordDecoder};

use super::feeds::FeedController;
use super::index::{self, CommitIndex, IndexEntry, IndexFile};
use super::segments;

/// Most bytes read per step.
const CHUNK: usize = 1 << 20;
/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Settings of the indexer.
#[derive(Debug, Clone)]
pub struct IndexerOptions {
    pub data_dir: PathBuf,
    pub max_entries: usize,
}

struct Run {
    index: CommitIndex,
    feeds: Option<Arc<FeedController>>,
    store: Store,
    opts: IndexerOptions,
    file: Option<IndexFile>,
    seg_size: u64,
    tli: TimelineId,
    dec: RecordDecoder,
    /// End of the last record decoded: every record starting before it is indexed.
    last_end: Lsn,
    from: Lsn,
    firsts: segments::FirstSeen,
    shutdown: watch::Receiver<bool>,
}

/// Loads the saved index and then follows the store until `shutdown` turns true.
pub async fn run(
    index: CommitIndex,
    feeds: Option<Arc<FeedController>>,
    store: Store,
    opts: IndexerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = index::index_path(&opts.data_dir);
    let p2 = path.clone();
    let loaded = tokio::task::spawn_blocking(move || index::load(&p2)).await;
    // A saved index that cannot be loaded is rebuilt from the WAL still here; what it held
    // before that is lost, so delayed feeds are held there as an index gap (fail closed).
    let (entries, valid_len, lost) = match loaded {
        Ok(Ok((e, l))) => (e, l, false),
        Ok(Err(e)) => {
            tracing::error!(
                "could not read the commit index {}: {e}; rebuilding it",
                path.display()
            );
            (Vec::new(), 0, true)
        }
        Err(_) => (Vec::new(), 0, true),
    };
    let n = entries.len();
    index.push(entries);
    let file = match IndexFile::open(&path, valid_len, n) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(
                "could not open the commit index {}: {e}; it is kept in memory only",
                path.display()
            );
            None
        }
    };
    // Wait until the store knows the segment size and timeline.
    let mut positions = store.positions();
    let (seg_size, tli, flush) = loop {
        let p = positions.borrow_and_update().clone();
        if p.timeline != 0 && p.wal_segment_size != 0 {
            break (p.wal_segment_size, p.timeline, p.flush_lsn);
        }
        tokio::select! {
            r = positions.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    };
    let oldest = segments::oldest_segment(&opts.data_dir, seg_size)
        .ok()
        .flatten();
    let mut start = match index.last() {
        Some(e) => e.lsn.segment_start(seg_size),
        None => oldest.unwrap_or(flush.segment_start(seg_size)),
    };
    if let Some(o) = oldest {
        start = start.max(o);
    }
    if start > flush {
        start = flush.segment_start(seg_size);
    }
    // WAL between the last saved entry and the oldest local segment is gone unindexed; with
    // the saved index lost, everything before the rebuild's start is.
    let missed = index
        .last()
        .map(|e| e.end)
        .filter(|&end| {
            end < start
                && index
                    .last()
                    .is_some_and(|e| e.lsn.segment_start(seg_size) < start)
        })
        .or((lost && start > Lsn(0)).then_some(Lsn(0)));
    tracing::info!(
        "commit index: {} entries loaded; indexing WAL from {start} on timeline {tli}",
        index.len()
    );
    let from = index.first_lsn().unwrap_or(start).min(start);
    let mut r = Run {
        index,
        feeds,
        store,
        opts,
        file,
        seg_size,
        tli,
        dec: RecordDecoder::new(start, seg_size),
        last_end: start,
        from,
        firsts: segments::FirstSeen::default(),
        shutdown: shutdown.clone(),
    };
    r.index.set_coverage(r.from, r.last_end);
    if let (Some(from), Some(feeds)) = (missed, &r.feeds) {
        if lost {
            tracing::error!(
                "commit index: the saved index was lost; the WAL before {start} is not indexed"
            );
        } else {
            tracing::error!(
                "commit index: the WAL from {from} to {start} was removed before it was indexed"
            );
        }
        while let Err(e) = feeds.on_index_gap(from, start).wait().await {
            tracing::error!("commit index: could not save the index-gap hold: {e}; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
    // Due at once (`Instant` cannot go before the clock's origin, e.g. just after boot).
    let mut last_prune = Instant::now()
        .checked_sub(PRUNE_EVERY)
        .unwrap_or_else(Instant::now);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let p = positions.borrow_and_update().clone();
        if p.timeline != 0 && p.timeline != r.tli {
            r.switch_timeline(p.timeline).await;
        }
        let target = p.flush_lsn;
        let mut progressed = false;
        while r.dec.fed_end() < target && !*shutdown.borrow() {
            match r.step(target).await {
                Ok(()) => progressed = true,
                Err(e) => {
                    tracing::warn!("commit index: {e}");
                    // Retry after new WAL arrives or a short pause.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    break;
                }
            }
        }
        if progressed {
            if let Some(f) = &r.file {
                let res = match f.clone_handle() {
                    Ok(f) => tokio::task::spawn_blocking(move || f.sync_data())
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    tracing::error!("could not fsync the commit index: {e}");
                }
            }
            if let Some(feeds) = &r.feeds {
                feeds.update_min_needed();
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            r.prune().await;
        }
        if r.dec.fed_end() < positions.borrow().flush_lsn {
            continue;
        }
        tokio::select! {
            res = positions.changed() => if res.is_err() { break },
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
    if let Some(f) = &r.file {
        let _ = f.sync();
    }
}

impl Run {
    /// Reads, decodes and indexes up to [`CHUNK`] bytes below `target`.
    async fn step(&mut self, target: Lsn) -> Result<(), String> {
        let at = self.dec.fed_end();
        let want = (target.saturating_sub(at) as usize).min(CHUNK);
        let data: Vec<u8> = match self.store.tail().get(self.tli, at, target, want) {
            Some(b) => b.to_vec(),
            None => {
                let (dir, seg, tli) = (self.opts.data_dir.clone(), self.seg_size, self.tli);
                let r = tokio::task::spawn_blocking(move || {
                    segments::read_at(&dir, seg, tli, at, want)
                })
                .await
                .map_err(|e| e.to_string())?;
                match r {
                    Ok(b) if !b.is_empty() => b,
                    Ok(_) => return Err(format!("no WAL at {at} in the segment files")),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Gone before it was indexed: a gap up to the next segment.
                        let next = Lsn(at
                            .segment_start(self.seg_size)
                            .0
                            .saturating_add(self.seg_size));
                        tracing::error!("commit index: {e}");
                        return self.gap(self.last_end.min(at), next).await;
                    }
                    Err(e) => return Err(format!("reading WAL at {at}: {e}")),
                }
            }
        };
        if let Err(e) = self.dec.feed(at, &data) {
            return Err(e.to_string());
        }
        let mut new: Vec<IndexEntry> = Vec::new();
        let mut gap = None;
        while let Some(rec) = self.dec.next() {
            match rec {
                Ok(rec) => {
                    if let Some(e) = self.firsts.entry(&rec) {
                        new.push(e);
                    }
                    self.last_end = rec.end;
                }
                Err(e) => {
                    let next = Lsn(self
                        .dec
                        .position()
                        .segment_start(self.seg_size)
                        .0
                        .saturating_add(self.seg_size));
                    tracing::error!(
                        "commit index: {e}; the WAL from {} to {next} cannot be indexed",
                        self.last_end
                    );
                    metrics::counter!(crate::metrics::ERRORS, "kind" => "commit_index")
                        .increment(1);
                    gap = Some((self.last_end, next));
                    break;
                }
            }
        }
        self.record(new);
        self.index.set_coverage(self.from, self.last_end);
        match gap {
            Some((from, to)) => self.gap(from, to).await,
            None => Ok(()),
        }
    }

    /// `[from, to)` cannot be indexed: hold the delayed feeds before it (durably), then go on
    /// at `to`. Until the hold is durable the indexer waits here (coverage stays at `from`).
    async fn gap(&mut self, from: Lsn, to: Lsn) -> Result<(), String> {
        if let Some(feeds) = &self.feeds {
            while let Err(e) = feeds.on_index_gap(from, to).wait().await {
                tracing::error!("commit index: could not save the index-gap hold: {e}; retrying");
                if *self.shutdown.borrow() {
                    return Err("shutting down".into());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.restart_at(to);
        self.index.set_coverage(self.from, self.last_end);
        Ok(())
    }

    fn restart_at(&mut self, at: Lsn) {
        self.dec = RecordDecoder::new(at, self.seg_size);
        self.last_end = self.last_end.max(at);
    }

    fn record(&mut self, new: Vec<IndexEntry>) {
        if new.is_empty() {
            return;
        }
        let last = self.index.last().map(|e| e.lsn);
        let new: Vec<IndexEntry> = new
            .into_iter()
            .filter(|e| last.is_none_or(|l| e.lsn > l))
            .collect();
        if new.is_empty() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.append(&new) {
                tracing::error!("could not append to the commit index: {e}");
            }
        }
        if let Some(feeds) = &self.feeds {
            feeds.on_indexed(&new);
        }
        self.index.push(new);
        metrics::gauge!(super::INDEX_ENTRIES).set(self.index.len() as f64);
    }

    async fn switch_timeline(&mut self, new_tli: TimelineId) {
        let path = self.opts.data_dir.join(history_file_name(new_tli));
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let sw = text
            .ok()
            .and_then(|t| history::parse_history(&t).ok())
            .and_then(|h| history::switch_point_of(&h, self.tli));
        let mut restart = self.dec.position().segment_start(self.seg_size);
        if let Some(sw) = sw {
            let n = self.index.truncate_from(sw);
            if n > 0 {
                tracing::info!(
                    "commit index: dropped {n} entries past the switch point {sw} of timeline {}",
                    self.tli
                );
                self.rewrite().await;
            }
            restart = restart.min(sw.segment_start(self.seg_size));
            self.last_end = self.last_end.min(sw);
        }
        tracing::info!("commit index: following timeline {new_tli} from {restart}");
        self.tli = new_tli;
        self.dec = RecordDecoder::new(restart, self.seg_size);
        self.last_end = self.last_end.min(restart.max(self.from));
        self.index.set_coverage(self.from, self.last_end);
    }

    /// Rewrites the index file on a blocking thread (it fsyncs).
    async fn rewrite(&mut self) {
        let all = self.index.snapshot();
        let Some(mut f) = self.file.take() else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || {
            let r = f.rewrite(&all);
            (f, r)
        })
        .await;
        match r {
            Ok((f, res)) => {
                if let Err(e) = res {
                    tracing::error!("could not rewrite the commit index: {e}");
                }
                self.file = Some(f);
            }
            Err(e) => tracing::error!("could not rewrite the commit index: {e}"),
        }
    }

    async fn prune(&mut self) {
        let (dir, seg) = (self.opts.data_dir.clone(), self.seg_size);
        let oldest = tokio::task::spawn_blocking(move || segments::oldest_segment(&dir, seg))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or(Lsn(0));
        let n = self.index.prune(oldest, self.opts.max_entries);
        if n > 0 {
            self.from = self.from.max(self.index.first_lsn().unwrap_or(oldest));
            self.index.set_coverage(self.from, self.last_end);
        }
        let in_file = self.file.as_ref().map_or(0, |f| f.entries_in_file);
        if in_file > self.index.len().saturating_mul(2).saturating_add(10_000) {
            self.rewrite().await;
        }
        metrics::gauge!(super::INDEX_ENTRIES).set(self.index.len() as f64);
    }
}

//! One read cache of WAL segment files, shared by every walsender session of a cluster.
//!
//! Owns: aligned chunks of [`CHUNK`] bytes of segment files, keyed by (timeline, chunk start
//! LSN), each held as [`Bytes`] (a chunk is shorter when only that much was readable when it
//! was read); the bound on their total size (LRU eviction by bytes); single-flight reads (when
//! several sessions miss the same chunk at once, one of them reads it and the others wait for
//! its result); the pool of chunk buffers they are read into.
//!
//! Must not: do any I/O itself (the caller's read function does it, on a blocking thread) or
//! decide how far a client may read; hold its lock across an `.await`.
//!
//! Invariants:
//! - A chunk holds only bytes that were durable when read: the caller reads no further than
//!   its send limit (≤ the store's `flush_lsn`), counted from the chunk start.
//! - Durable WAL of a timeline changes only when the store steps its published `flush_lsn`
//!   back (`Positions::rewinds`: WAL past it set aside, or to be rewritten by the upstream).
//!   Every lookup carries the rewind count of the positions its caller's limits come from;
//!   a higher count than the cache's drops every entry first, a lower one (a caller with
//!   older positions) is served no cached bytes and caches nothing. So an entry holds bytes
//!   read at the current count and never goes stale; a longer read of the same chunk only
//!   extends it (an entry is replaced by a longer one, never a shorter).
//! - A historic timeline's chunk may hold bytes past the timeline's switch point (read while
//!   the timeline was current, then set aside as divergent). They are never served: callers
//!   bound every [`ReadCache::get`] by their send limit, which for a historic timeline is its
//!   switch point.
//!
//! Memory: the entries (at most the cap) plus the chunks that evicted entries still share
//! with the slices queued to clients. A session's out queue (8 messages of ≤ 128 kB) spans at
//! most about two chunks, so the worst case is cap + sessions × ~2 chunks. The cap follows
//! the sessions reading ([`ReadCache::reader`]): [`PER_READER`] each, at least [`MIN_CAP`],
//! at most the configured maximum (`[server] read_cache_size`) — sequential readers spread
//! over more WAL than an LRU holds would each read every chunk themselves (50 standbys
//! draining one backlog at slightly different speeds spread over ~100 MB in a minute).

// Keys and offsets come from clients' positions: no panics from indexing or overflow.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::archive::buffers::BufferPool;
use crate::lsn::{Lsn, TimelineId};

/// Size and alignment of a cached chunk (a segment is a whole number of chunks: segment
/// sizes are powers of two from 1 MB).
pub const CHUNK: u64 = 1 << 20;
/// Default most cached bytes (`[server] read_cache_size`).
pub const DEFAULT_MAX: usize = 64 << 20;
/// The cap while few sessions read (at most the maximum).
pub const MIN_CAP: usize = 8 << 20;
/// Cached bytes allowed per session reading.
pub const PER_READER: usize = 2 << 20;
/// Idle chunk buffers kept for reuse after their last slice is dropped.
const KEEP_IDLE: usize = 8;

type Key = (TimelineId, Lsn);

struct Entry {
    data: Bytes,
    /// Position in [`Inner::lru`].
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Least recently used first: use stamp → key.
    lru: BTreeMap<u64, Key>,
    next_use: u64,
    bytes: usize,
    /// Chunks being read now, with the waiters for each.
    inflight: HashMap<Key, Arc<Notify>>,
    /// The store's rewind count the entries were read at.
    epoch: u64,
}

impl Inner {
    /// Whether a caller whose positions carry rewind count `epoch` may use the entries (and
    /// add to them): a newer count drops every entry first.
    fn at_epoch(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.entries.clear();
            self.lru.clear();
            self.bytes = 0;
            self.epoch = epoch;
        }
        epoch == self.epoch
    }

    fn stamp(&mut self) -> u64 {
        self.next_use = self.next_use.wrapping_add(1);
        self.next_use
    }

    fn get(&mut self, key: Key, off: u64, max: usize) -> Option<Bytes> {
        let stamp = self.stamp();
        let e = self.entries.get_mut(&key)?;
        let off = usize::try_from(off).ok()?;
        if max == 0 || off >= e.data.len() {
            return None;
        }
        let end = off.saturating_add(max).min(e.data.len());
        let out = e.data.slice(off..end);
        let old = std::mem::replace(&mut e.used, stamp);
        self.lru.remove(&old);
        self.lru.insert(stamp, key);
        Some(out)
    }

    /// Evicts the least recently used entries until at most `cap` bytes are cached; returns
    /// them, for the caller to drop unlocked.
    fn trim(&mut self, cap: usize) -> Vec<Bytes> {
        let mut gone = Vec::new();
        while self.bytes > cap {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some(v) = self.entries.remove(&victim) {
                self.bytes = self.bytes.saturating_sub(v.data.len());
                gone.push(v.data);
            }
        }
        gone
    }

    /// Adds the entry; returns what it replaced or evicted, for the caller to drop unlocked.
    fn insert(&mut self, key: Key, data: Bytes, cap: usize) -> Vec<Bytes> {
        let mut gone = Vec::new();
        if data.is_empty() || data.len() > cap {
            return gone;
        }
        if let Some(e) = self.entries.get(&key) {
            if e.data.len() >= data.len() {
                return gone;
            }
        }
        if let Some(old) = self.entries.remove(&key) {
            self.lru.remove(&old.used);
            self.bytes = self.bytes.saturating_sub(old.data.len());
            gone.push(old.data);
        }
        // room for it (`data.len() <= cap`, checked above)
        gone.extend(self.trim(cap.saturating_sub(data.len())));
        let used = self.stamp();
        self.bytes = self.bytes.saturating_add(data.len());
        self.lru.insert(used, key);
        self.entries.insert(key, Entry { data, used });
        gone
    }
}

/// A session counted as reading through the cache ([`ReadCache::reader`]).
pub struct Reader<'a>(&'a ReadCache);

impl Drop for Reader<'_> {
    /// One reader fewer: the cap shrinks, and what it no longer allows is evicted now (not
    /// at the next insert, which may never come once every session is gone).
    fn drop(&mut self) {
        let cache = self.0;
        cache.readers.fetch_sub(1, Ordering::Relaxed);
        let cap = cache.cap();
        let evicted = cache.lock().trim(cap);
        drop(evicted);
    }
}

/// What [`ReadCache::get_or_read`] returned.
#[derive(Debug)]
pub struct Served {
    /// At most `max` bytes from `from` (empty only if the read function returned fewer bytes
    /// than reach `from`, against its contract).
    pub data: Bytes,
    /// Whether this caller read the chunk (a miss) rather than finding it cached, possibly
    /// after waiting for another caller's read (a hit).
    pub read: bool,
}

/// See the module documentation.
pub struct ReadCache {
    max: usize,
    /// Sessions holding a [`Reader`].
    readers: AtomicUsize,
    chunk: u64,
    pool: BufferPool,
    inner: Mutex<Inner>,
}

/// Removes a read's in-flight marker and wakes its waiters, also when the reading future is
/// dropped half-way (the session ended): they then look again and read themselves.
struct Flight<'a> {
    cache: &'a ReadCache,
    key: Key,
    notify: Arc<Notify>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        {
            let mut g = self.cache.lock();
            if g.inflight
                .get(&self.key)
                .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
            {
                g.inflight.remove(&self.key);
            }
        }
        self.notify.notify_waiters();
    }
}

enum Step {
    Hit(Bytes),
    Wait(tokio::sync::futures::OwnedNotified),
    Read(Arc<Notify>),
    /// The caller's positions are older than the cache's entries (module doc).
    Bypass,
}

impl ReadCache {
    /// A cache of [`CHUNK`]-sized chunks, at most `max` bytes (module doc: the cap follows
    /// the readers up to it).
    pub fn new(max: usize) -> ReadCache {
        ReadCache::with_chunk(CHUNK, max)
    }

    /// As [`ReadCache::new`] with another chunk size (a power of two, ≤ the segment size).
    pub fn with_chunk(chunk: u64, max: usize) -> ReadCache {
        let chunk = if chunk.is_power_of_two() {
            chunk
        } else {
            CHUNK
        };
        ReadCache {
            max,
            readers: AtomicUsize::new(0),
            chunk,
            pool: BufferPool::new(usize::try_from(chunk).unwrap_or(usize::MAX), KEEP_IDLE),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk size.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Start of the chunk holding `lsn`.
    pub fn chunk_start(&self, lsn: Lsn) -> Lsn {
        Lsn(lsn.0 & !(self.chunk.wrapping_sub(1)))
    }

    /// Counts a session reading through the cache while the guard lives (the cap grows by
    /// [`PER_READER`] per reader).
    pub fn reader(&self) -> Reader<'_> {
        self.readers.fetch_add(1, Ordering::Relaxed);
        Reader(self)
    }

    /// The bound of the cached bytes now: [`PER_READER`] per reader, at least [`MIN_CAP`],
    /// never more than the maximum.
    pub fn cap(&self) -> usize {
        let want = self
            .readers
            .load(Ordering::Relaxed)
            .saturating_mul(PER_READER);
        want.max(MIN_CAP).min(self.max)
    }

    /// Bytes cached now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// At most `max` bytes at `from` on `tli` (a slice of the cached chunk, no copy), for a
    /// caller at rewind count `epoch` (module doc); `None` unless a cached chunk covers `from`.
    pub fn get(&self, epoch: u64, tli: TimelineId, from: Lsn, max: usize) -> Option<Bytes> {
        let start = self.chunk_start(from);
        let mut g = self.lock();
        if !g.at_epoch(epoch) {
            return None;
        }
        g.get((tli, start), from.saturating_sub(start), max)
    }

    /// Caches `data`, the bytes of `tli` from the chunk-aligned `start` (at most one chunk:
    /// longer data is cut), unless the entry for that chunk is already at least as long.
    /// Evicts the least recently used chunks to stay within the cap; data larger than the cap
    /// is not cached, nor data read at another rewind count than the cache's (`epoch`).
    pub fn insert(&self, epoch: u64, tli: TimelineId, start: Lsn, data: Bytes) {
        if self.chunk_start(start) != start {
            return;
        }
        let max = usize::try_from(self.chunk).unwrap_or(usize::MAX);
        let data = if data.len() > max {
            data.slice(..max)
        } else {
            data
        };
        let evicted = {
            let mut g = self.lock();
            if !g.at_epoch(epoch) {
                return;
            }
            g.insert((tli, start), data, self.cap())
        };
        // the last slices of evicted chunks are let go (buffers freed or pooled) unlocked
        drop(evicted);
    }

    /// At most `max` bytes at `from` on `tli` for a caller at rewind count `epoch` (module
    /// doc): from the cache, else after another caller's
    /// read of the same chunk (waiting for it), else by `read(chunk start, buffer)`, which
    /// fills the (empty, pooled) buffer with the chunk's bytes from its start (at least up to
    /// `from`, none past what is durable) and whose result is cached. When another caller's
    /// read fails (or is dropped), its waiters look again and one of them reads: each gets
    /// its own result or error.
    pub async fn get_or_read<F, Fut, E>(
        &self,
        epoch: u64,
        tli: TimelineId,
        from: Lsn,
        max: usize,
        read: F,
    ) -> Result<Served, E>
    where
        F: FnOnce(Lsn, Vec<u8>) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        let start = self.chunk_start(from);
        let key = (tli, start);
        let off = from.saturating_sub(start);
        let notify = loop {
            let step = {
                let mut g = self.lock();
                if !g.at_epoch(epoch) {
                    Step::Bypass
                } else if let Some(b) = g.get(key, off, max) {
                    Step::Hit(b)
                } else if let Some(n) = g.inflight.get(&key) {
                    // registered now, under the lock: the reader's wake-up cannot be missed
                    Step::Wait(n.clone().notified_owned())
                } else {
                    let n = Arc::new(Notify::new());
                    g.inflight.insert(key, n.clone());
                    Step::Read(n)
                }
            };
            match step {
                Step::Hit(data) => return Ok(Served { data, read: false }),
                Step::Wait(w) => w.await,
                Step::Read(n) => break Some(n),
                Step::Bypass => break None,
            }
        };
        let Some(notify) = notify else {
            // older positions than the cache's: read and serve, cache nothing
            let chunk = self.pool.freeze(read(start, self.pool.get()).await?);
            return Ok(Served {
                data: slice_from(&chunk, off, max),
                read: true,
            });
        };
        let _flight = Flight {
            cache: self,
            key,
            notify,
        };
        let buf = read(start, self.pool.get()).await?;
        let chunk = self.pool.freeze(buf);
        let data = slice_from(&chunk, off, max);
        self.insert(epoch, tli, start, chunk);
        Ok(Served { data, read: true })
    }
}

/// At most `max` bytes of `chunk` from `off` (empty when it does not reach `off`).
fn slice_from(chunk: &Bytes, off: u64, max: usize) -> Bytes {
    let off = usize::try_from(off).unwrap_or(usize::MAX);
    if off < chunk.len() && max > 0 {
        chunk.slice(off..off.saturating_add(max).min(chunk.len()))
    } else {
        Bytes::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn slices_without_copy_and_only_what_is_covered() {
        let c = ReadCache::with_chunk(1024, 8192);
        let data = bytes(1000, 1);
        let b = Bytes::from(data.clone());
        c.insert(0, 2, Lsn(4096), b.clone());
        let s = c.get(0, 2, Lsn(4096 + 10), 5).unwrap();
        assert_eq!(&s[..], &data[10..15]);
        // a slice of the cached buffer, not a copy
        assert_eq!(s.as_ptr(), b[10..].as_ptr());
        // capped by what the chunk holds
        assert_eq!(
            &c.get(0, 2, Lsn(4096 + 990), 100).unwrap()[..],
            &data[990..]
        );
        // not covered: past the entry's end, another chunk, another timeline, nothing wanted
        assert!(c.get(0, 2, Lsn(4096 + 1000), 1).is_none());
        assert!(c.get(0, 2, Lsn(4096 + 1024), 1).is_none());
        assert!(c.get(0, 2, Lsn(4095), 1).is_none());
        assert!(c.get(0, 1, Lsn(4096), 1).is_none());
        assert!(c.get(0, 2, Lsn(4096), 0).is_none());
        // unaligned inserts are ignored; longer data is cut to the chunk
        c.insert(0, 3, Lsn(10), Bytes::from(bytes(10, 0)));
        assert!(c.get(0, 3, Lsn(10), 1).is_none());
        c.insert(0, 3, Lsn(0), Bytes::from(bytes(3000, 0)));
        assert_eq!(c.get(0, 3, Lsn(0), 5000).unwrap().len(), 1024);
    }

    #[test]
    fn a_longer_read_replaces_a_shorter_entry_never_the_reverse() {
        let c = ReadCache::with_chunk(1024, 8192);
        let data = bytes(1024, 3);
        c.insert(0, 1, Lsn(0), Bytes::copy_from_slice(&data[..100]));
        assert!(c.get(0, 1, Lsn(100), 1).is_none());
        c.insert(0, 1, Lsn(0), Bytes::copy_from_slice(&data[..600]));
        assert_eq!(&c.get(0, 1, Lsn(100), 1000).unwrap()[..], &data[100..600]);
        assert_eq!(c.bytes(), 600);
        // a shorter one later (a session with a lower limit) does not shrink it
        c.insert(0, 1, Lsn(0), Bytes::copy_from_slice(&data[..50]));
        assert_eq!(c.get(0, 1, Lsn(0), 1000).unwrap().len(), 600);
        assert_eq!(c.bytes(), 600);
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let c = ReadCache::with_chunk(1024, 3000);
        for i in 0..3u64 {
            c.insert(0, 1, Lsn(i * 1024), Bytes::from(bytes(1000, i as u8)));
        }
        assert_eq!(c.bytes(), 3000);
        // chunk 0 used again: chunk 1 is now the least recently used
        assert!(c.get(0, 1, Lsn(0), 1).is_some());
        c.insert(0, 1, Lsn(3 * 1024), Bytes::from(bytes(1000, 9)));
        assert_eq!(c.bytes(), 3000);
        assert!(c.get(0, 1, Lsn(1024), 1).is_none());
        for i in [0u64, 2, 3] {
            assert!(c.get(0, 1, Lsn(i * 1024), 1).is_some(), "chunk {i}");
        }
        // 1024 more bytes evict two entries: 0 and 2, used before 3 above
        c.insert(0, 2, Lsn(0), Bytes::from(bytes(1024, 1)));
        assert_eq!(c.bytes(), 2024);
        assert!(c.get(0, 2, Lsn(0), 1).is_some());
        assert!(c.get(0, 1, Lsn(0), 1).is_none());
        assert!(c.get(0, 1, Lsn(2 * 1024), 1).is_none());
        assert!(c.get(0, 1, Lsn(3 * 1024), 1).is_some());
        // larger than the whole cap: not cached, nothing evicted
        let small = ReadCache::with_chunk(1024, 500);
        small.insert(0, 1, Lsn(0), Bytes::from(bytes(400, 0)));
        small.insert(0, 1, Lsn(1024), Bytes::from(bytes(600, 0)));
        assert!(small.get(0, 1, Lsn(0), 1).is_some());
        assert!(small.get(0, 1, Lsn(1024), 1).is_none());
    }

    #[test]
    fn the_cap_follows_the_readers_between_the_minimum_and_the_maximum() {
        let c = ReadCache::new(20 << 20);
        assert_eq!(c.cap(), MIN_CAP);
        let readers: Vec<_> = (0..7).map(|_| c.reader()).collect();
        assert_eq!(c.cap(), 14 << 20);
        let more: Vec<_> = (0..10).map(|_| c.reader()).collect();
        assert_eq!(c.cap(), 20 << 20);
        // filled to the cap of 17 readers; when they go, the excess goes with them
        for i in 0..20u64 {
            c.insert(0, 1, Lsn(i * CHUNK), Bytes::from(vec![0u8; CHUNK as usize]));
        }
        assert_eq!(c.bytes(), 20 << 20);
        drop(more);
        assert_eq!(c.bytes(), 14 << 20);
        drop(readers);
        assert_eq!(c.cap(), MIN_CAP);
        assert_eq!(c.bytes(), MIN_CAP);
        // a maximum below the minimum wins
        assert_eq!(ReadCache::new(1 << 20).cap(), 1 << 20);
    }

    #[tokio::test]
    async fn a_rewind_drops_entries_and_older_callers_cache_nothing() {
        let c = ReadCache::with_chunk(1024, 8192);
        let old = bytes(1024, 1);
        c.insert(0, 1, Lsn(0), Bytes::from(old.clone()));
        assert_eq!(&c.get(0, 1, Lsn(10), 5).unwrap()[..], &old[10..15]);
        // the store stepped flush_lsn back: what was cached at count 0 is gone for everyone
        assert!(c.get(1, 1, Lsn(10), 5).is_none());
        assert_eq!(c.bytes(), 0);
        assert!(c.get(0, 1, Lsn(10), 5).is_none());
        // a caller still at count 0 reads for itself and caches nothing
        let stale = c
            .get_or_read(0, 1, Lsn(10), 5, |_, mut b| async move {
                b.extend_from_slice(&old);
                Ok::<_, ()>(b)
            })
            .await
            .unwrap();
        assert!(stale.read);
        assert_eq!(c.bytes(), 0);
        c.insert(0, 1, Lsn(0), Bytes::from(bytes(1024, 1)));
        assert_eq!(c.bytes(), 0);
        // the current count caches the rewritten bytes
        let new = bytes(1024, 2);
        let n2 = new.clone();
        let r = c
            .get_or_read(1, 1, Lsn(10), 5, |_, mut b| async move {
                b.extend_from_slice(&n2);
                Ok::<_, ()>(b)
            })
            .await
            .unwrap();
        assert_eq!(&r.data[..], &new[10..15]);
        assert_eq!(&c.get(1, 1, Lsn(20), 2).unwrap()[..], &new[20..22]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_of_one_chunk_read_it_once() {
        let c = Arc::new(ReadCache::with_chunk(1024, 8192));
        let reads = Arc::new(AtomicUsize::new(0));
        let data = bytes(1024, 5);
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let (c, reads, data, start) = (c.clone(), reads.clone(), data.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let from = Lsn(8192 + i * 100);
                let r = c
                    .get_or_read(0, 1, from, 50, |at, mut buf| async move {
                        assert_eq!(at, Lsn(8192));
                        reads.fetch_add(1, Ordering::SeqCst);
                        // long enough for every other task to arrive and wait
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        buf.extend_from_slice(&data);
                        Ok::<_, String>(buf)
                    })
                    .await
                    .unwrap();
                (i, r)
            }));
        }
        let mut read_by = 0;
        for t in tasks {
            let (i, r) = t.await.unwrap();
            let off = (i * 100) as usize;
            assert_eq!(&r.data[..], &data[off..off + 50], "task {i}");
            read_by += usize::from(r.read);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(read_by, 1);
        assert_eq!(c.bytes(), 1024);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_read_makes_each_waiter_read_itself() {
        let c = Arc::new(ReadCache::with_chunk(1024, 8192));
        let reads = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(4));
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let (c, reads, start) = (c.clone(), reads.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                c.get_or_read(0, 7, Lsn(i), 10, |_, _buf| async move {
                    let n = reads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<Vec<u8>, _>(format!("read {n} failed"))
                })
                .await
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            errors.push(t.await.unwrap().unwrap_err());
        }
        // every caller read (one after another) and got its own error; nothing cached
        assert_eq!(reads.load(Ordering::SeqCst), 4);
        errors.sort();
        assert_eq!(
            errors,
            [
                "read 0 failed",
                "read 1 failed",
                "read 2 failed",
                "read 3 failed"
            ]
        );
        assert_eq!(c.bytes(), 0);
        assert!(c.lock().inflight.is_empty());
        // and a later read succeeds and is cached
        let r = c
            .get_or_read(0, 7, Lsn(3), 10, |_, mut buf| async move {
                buf.extend_from_slice(&bytes(1024, 0));
                Ok::<_, String>(buf)
            })
            .await
            .unwrap();
        assert!(r.read);
        assert_eq!(&r.data[..], &bytes(1024, 0)[3..13]);
        assert!(c.get(0, 7, Lsn(500), 1).is_some());
    }

    #[tokio::test]
    async fn a_dropped_read_releases_its_waiters() {
        let c = Arc::new(ReadCache::with_chunk(1024, 8192));
        let c2 = c.clone();
        let stuck = tokio::spawn(async move {
            c2.get_or_read(0, 1, Lsn(0), 10, |_, _b| {
                std::future::pending::<Result<Vec<u8>, ()>>()
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!c.lock().inflight.is_empty());
        let c3 = c.clone();
        let waiter = tokio::spawn(async move {
            c3.get_or_read(0, 1, Lsn(5), 10, |_, mut b| async move {
                b.extend_from_slice(&[9; 100]);
                Ok::<_, ()>(b)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        stuck.abort();
        let r = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was released")
            .unwrap()
            .unwrap();
        assert!(r.read);
        assert_eq!(&r.data[..], &[9; 10]);
    }
}

//! Reading WAL back from the archive, with read-ahead.
//!
//! Owns: locating the archive of a system (`<prefix>/<system id>/`, detected when the
//! prefix holds exactly one), fetching segments (either compression), history files and the
//! newest snapshot of a segment, and a small read-ahead cache: fetching segment N starts
//! fetching N+1..N+`prefetch` of the same timeline in the background, so that a standby
//! reading sequentially waits for one round trip only at the start. A read-ahead download
//! is a task of its own that is aborted when its cache entry goes (evicted, passed by its
//! reader, or taken by a reader that then gives up): churn cannot pile up downloads.
//!
//! For the walsender: [`ArchiveReader::fetch_segment`] returns the whole segment
//! (decompressed, exactly `wal_segment_size` bytes) or `None` if the archive does not have it.
//! [`LazyArchiveReader`] opens the reader on first use, because a fresh walrelay starts
//! before anything (even the archive's identity) is archived.
//! Must not: write anything.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

use super::backend::{self, Backend};
use super::layout::{self, Identity, Layout};
use super::{ArchiveError, ArchiveSettings};
use crate::config::Compression;
use crate::lsn::{segment_file_name, TimelineId};

type Prefetch = Shared<BoxFuture<'static, Result<Option<Bytes>, ()>>>;

/// A read-ahead download; dropping it aborts the download task.
struct Ahead {
    fut: Prefetch,
    task: tokio::task::AbortHandle,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A handle for reading one system's archive. Cheap to clone.
#[derive(Clone)]
pub struct ArchiveReader {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    system_id: u64,
    seg_size: u64,
    prefetch: usize,
    prefer: Compression,
    cache: Mutex<BTreeMap<(TimelineId, u64), Ahead>>,
    /// `archive.encryption_key_file`'s key: encrypted objects are opened with it.
    key: Option<crate::archive::crypt::Key>,
}

impl ArchiveReader {
    /// Opens the archive of `settings` (`archive.url`, `archive.system_id`,
    /// `archive.prefetch`) and reads its identity.
    pub async fn open(settings: &ArchiveSettings) -> Result<ArchiveReader, ArchiveError> {
        let url = settings.url().ok_or_else(|| {
            ArchiveError::Config("archiving is disabled (archive.url = \"none\")".into())
        })?;
        let backend = backend::open(&url, &settings.config)?;
        let mut r = ArchiveReader::open_backend(
            backend,
            settings.config.system_id,
            settings.config.prefetch,
            settings.config.compression,
        )
        .await?;
        if let Some(inner) = Arc::get_mut(&mut r.inner) {
            inner.key = settings.config.encryption_key.clone();
        }
        Ok(r)
    }

    /// The encryption key the reader opens objects with.
    pub fn key(&self) -> Option<&crate::archive::crypt::Key> {
        self.inner.key.as_ref()
    }

    /// Opens the archive of `system_id` (or the only system under the prefix) in `backend`.
    pub async fn open_backend(
        backend: Backend,
        system_id: Option<u64>,
        prefetch: usize,
        prefer: Compression,
    ) -> Result<ArchiveReader, ArchiveError> {
        let system_id = match system_id {
            Some(id) => id,
            None => detect_system(&backend).await?,
        };
        let layout = Layout::new(&backend.prefix, system_id);
        let path = layout.identity();
        let ident = match backend.store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(ArchiveError::store("read", &path))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArchiveError::NoSystem(format!(
                    "the archive {} holds no WAL of system {system_id}",
                    backend.url
                )))
            }
            Err(e) => return Err(ArchiveError::store("read", &path)(e)),
        };
        let ident = Identity::decode(&ident).ok_or_else(|| ArchiveError::Corrupt {
            path: path.to_string(),
            reason: "not an archive identity".into(),
        })?;
        if !crate::lsn::valid_segment_size(ident.wal_segment_size) {
            return Err(ArchiveError::Corrupt {
                path: path.to_string(),
                reason: format!("invalid segment size {}", ident.wal_segment_size),
            });
        }
        Ok(ArchiveReader {
            inner: Arc::new(Inner {
                store: backend.store,
                layout,
                system_id,
                seg_size: ident.wal_segment_size,
                prefetch,
                prefer,
                cache: Mutex::new(BTreeMap::new()),
                key: None,
            }),
        })
    }

    pub fn system_id(&self) -> u64 {
        self.inner.system_id
    }
    pub fn wal_segment_size(&self) -> u64 {
        self.inner.seg_size
    }
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// Segment `segno` of timeline `tli`, decompressed; `None` if the archive does not have
    /// it. Starts reading ahead the next `prefetch` segments.
    pub async fn fetch_segment(
        &self,
        tli: TimelineId,
        segno: u64,
    ) -> Result<Option<Bytes>, ArchiveError> {
        metrics::counter!(super::READER_FETCHES).increment(1);
        let cached = {
            let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            // what lies behind the reader will not be asked for again
            cache.retain(|&(t, s), _| t != tli || s > segno);
            cache.remove(&(tli, segno))
        };
        self.read_ahead(tli, segno);
        if let Some(a) = cached {
            if let Ok(Some(b)) = a.fut.clone().await {
                return Ok(Some(b));
            }
            // not there yet when prefetched, or failed: ask again for a fresh answer
        }
        self.inner.fetch_segment_now(tli, segno).await
    }

    /// [`ArchiveReader::fetch_segment`] without read-ahead or cache.
    pub async fn fetch_segment_direct(
        &self,
        tli: TimelineId,
        segno: u64,
    ) -> Result<Option<Bytes>, ArchiveError> {
        self.inner.fetch_segment_now(tli, segno).await
    }

    fn read_ahead(&self, tli: TimelineId, segno: u64) {
        if self.inner.prefetch == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        for k in 1..=self.inner.prefetch as u64 {
            let Some(n) = segno.checked_add(k) else {
                break;
            };
            if cache.contains_key(&(tli, n)) {
                continue;
            }
            let inner = self.inner.clone();
            let task = tokio::spawn(crate::ops::inherit(async move {
                inner.fetch_segment_now(tli, n).await
            }));
            let abort = task.abort_handle();
            let fut: BoxFuture<'static, Result<Option<Bytes>, ()>> = Box::pin(async move {
                match task.await {
                    Ok(Ok(v)) => Ok(v),
                    _ => Err(()),
                }
            });
            cache.insert(
                (tli, n),
                Ahead {
                    fut: fut.shared(),
                    task: abort,
                },
            );
        }
        // bound memory: drop the farthest entries of other readers first
        while cache.len() > self.inner.prefetch.saturating_mul(4).max(8) {
            cache.pop_last();
        }
    }

    /// Timeline history file `tli`, or `None`.
    pub async fn fetch_history(&self, tli: TimelineId) -> Result<Option<Bytes>, ArchiveError> {
        let path = self.inner.layout.history(tli);
        match get_opt(&self.inner.store, &path).await? {
            Some(b) => crate::archive::crypt::open_stored(self.key(), b, path.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    /// The newest snapshot of open segment `segno`: (bytes covered, the bytes).
    pub async fn latest_snapshot(
        &self,
        tli: TimelineId,
        segno: u64,
    ) -> Result<Option<(u64, Bytes)>, ArchiveError> {
        let name = segment_file_name(tli, segno, self.inner.seg_size);
        let dir = self.inner.layout.partial_dir();
        let mut stream = self.inner.store.list(Some(&dir));
        let mut best: Option<(u64, ObjPath, Compression)> = None;
        while let Some(item) = stream.next().await {
            let meta = item.map_err(ArchiveError::store("list", &dir))?;
            let Some(file) = meta.location.filename() else {
                continue;
            };
            if let Some((n, off, c)) = layout::parse_partial(file) {
                if n == name && best.as_ref().is_none_or(|b| off > b.0) {
                    best = Some((off, meta.location.clone(), c));
                }
            }
        }
        drop(stream);
        let Some((off, path, c)) = best else {
            return Ok(None);
        };
        let Some(stored) = get_opt(&self.inner.store, &path).await? else {
            return Ok(None);
        };
        let stored = crate::archive::crypt::open_stored(self.key(), stored, path.as_ref())?;
        let raw = layout::decompress(stored, c, self.inner.seg_size as usize, &path)?;
        if raw.len() as u64 != off {
            return Err(ArchiveError::Corrupt {
                path: path.to_string(),
                reason: format!("holds {} bytes, its name says {off}", raw.len()),
            });
        }
        Ok(Some((off, raw)))
    }
}

/// An [`ArchiveReader`] opened when first needed (and retried on later calls while it
/// cannot be opened). Walsenders hold one for the whole process: the archive reader and
/// its read-ahead cache are shared by all sessions.
pub struct LazyArchiveReader {
    settings: ArchiveSettings,
    reader: tokio::sync::Mutex<Option<ArchiveReader>>,
}

impl LazyArchiveReader {
    /// `None` when archiving is disabled (`archive.url = "none"`).
    pub fn new(settings: &ArchiveSettings) -> Option<LazyArchiveReader> {
        settings.url()?;
        let mut settings = settings.clone();
        settings.slot_floor = None;
        Some(LazyArchiveReader {
            settings,
            reader: tokio::sync::Mutex::new(None),
        })
    }

    /// The reader for WAL of `system_id` with segments of `seg_size` bytes. `Ok(None)` when
    /// the archive holds nothing of that system yet, or holds it with another segment size,
    /// or `archive.system_id` names another system.
    pub async fn get(
        &self,
        system_id: u64,
        seg_size: u64,
    ) -> Result<Option<ArchiveReader>, ArchiveError> {
        if self
            .settings
            .config
            .system_id
            .is_some_and(|id| id != system_id)
        {
            return Ok(None);
        }
        let mut slot = self.reader.lock().await;
        if slot.as_ref().is_none_or(|r| r.system_id() != system_id) {
            let url = self.settings.url().ok_or_else(|| {
                ArchiveError::Config("archiving is disabled (archive.url = \"none\")".into())
            })?;
            let backend = backend::open(&url, &self.settings.config)?;
            match ArchiveReader::open_backend(
                backend,
                Some(system_id),
                self.settings.config.prefetch,
                self.settings.config.compression,
            )
            .await
            {
                Ok(mut r) => {
                    // As `open` does: encrypted objects are opened with the configured key.
                    if let Some(inner) = Arc::get_mut(&mut r.inner) {
                        inner.key = self.settings.config.encryption_key.clone();
                    }
                    *slot = Some(r)
                }
                Err(ArchiveError::NoSystem(m)) => {
                    tracing::debug!("archive reader: {m}");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(slot.clone().filter(|r| r.wal_segment_size() == seg_size))
    }
}

impl Inner {
    async fn fetch_segment_now(
        &self,
        tli: TimelineId,
        segno: u64,
    ) -> Result<Option<Bytes>, ArchiveError> {
        let order = match self.prefer {
            Compression::Zstd => [Compression::Zstd, Compression::None],
            Compression::None => [Compression::None, Compression::Zstd],
        };
        for c in order {
            let path = self.layout.segment(tli, segno, self.seg_size, c);
            if let Some(stored) = get_opt(&self.store, &path).await? {
                let stored =
                    crate::archive::crypt::open_stored(self.key.as_ref(), stored, path.as_ref())?;
                let raw = layout::decompress(stored, c, self.seg_size as usize, &path)?;
                if raw.len() as u64 != self.seg_size {
                    return Err(ArchiveError::Corrupt {
                        path: path.to_string(),
                        reason: format!("{} bytes, expected {}", raw.len(), self.seg_size),
                    });
                }
                return Ok(Some(raw));
            }
        }
        Ok(None)
    }
}

/// GET an object; `None` if it does not exist.
pub async fn get_opt(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
) -> Result<Option<Bytes>, ArchiveError> {
    match store.get(path).await {
        Ok(r) => Ok(Some(
            r.bytes().await.map_err(ArchiveError::store("read", path))?,
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(ArchiveError::store("read", path)(e)),
    }
}

/// The one system id under the backend's prefix.
pub async fn detect_system(backend: &Backend) -> Result<u64, ArchiveError> {
    let prefix = (!backend.prefix.as_ref().is_empty()).then_some(&backend.prefix);
    let listing = backend
        .store
        .list_with_delimiter(prefix)
        .await
        .map_err(ArchiveError::store("list", &backend.prefix))?;
    let ids: Vec<u64> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.parse().ok())
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(ArchiveError::NoSystem(format!(
            "the archive {} holds no WAL yet",
            backend.url
        ))),
        many => {
            Err(ArchiveError::NoSystem(format!(
            "the archive {} holds WAL of several systems ({}); choose one with archive.system_id",
            backend.url,
            many.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions,
        PutOptions, PutPayload, PutResult, Result as OsResult,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An archive whose WAL downloads never finish, counting those in progress (a download
    /// stops counting when its future is dropped, as when its task is aborted).
    #[derive(Debug)]
    struct Stuck {
        inner: InMemory,
        live: Arc<AtomicUsize>,
    }

    impl std::fmt::Display for Stuck {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Stuck")
        }
    }

    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl ObjectStore for Stuck {
        async fn put_opts(&self, l: &ObjPath, p: PutPayload, o: PutOptions) -> OsResult<PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &ObjPath,
            o: PutMultipartOptions,
        ) -> OsResult<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &ObjPath, o: GetOptions) -> OsResult<GetResult> {
            if l.as_ref().contains("/wal/") {
                self.live.fetch_add(1, Ordering::SeqCst);
                let _g = Live(self.live.clone());
                std::future::pending::<()>().await;
            }
            self.inner.get_opts(l, o).await
        }
        async fn delete(&self, l: &ObjPath) -> OsResult<()> {
            self.inner.delete(l).await
        }
        fn list(&self, p: Option<&ObjPath>) -> BoxStream<'static, OsResult<ObjectMeta>> {
            self.inner.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&ObjPath>) -> OsResult<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy(&self, a: &ObjPath, b: &ObjPath) -> OsResult<()> {
            self.inner.copy(a, b).await
        }
        async fn copy_if_not_exists(&self, a: &ObjPath, b: &ObjPath) -> OsResult<()> {
            self.inner.copy_if_not_exists(a, b).await
        }
    }

    /// Readers that come and go on many timelines: the read-ahead downloads of evicted cache
    /// entries are aborted, so downloads in progress stay bounded by the cache size (they
    /// piled up, one 16 MB download per eviction).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicted_read_ahead_is_cancelled() {
        const SYSID: u64 = 7_000_000_000_000_000_042;
        let live = Arc::new(AtomicUsize::new(0));
        let store = Arc::new(Stuck {
            inner: InMemory::new(),
            live: live.clone(),
        });
        let layout = Layout::new(&ObjPath::default(), SYSID);
        store
            .put(
                &layout.identity(),
                PutPayload::from(Identity::new(SYSID, 1 << 24).encode()),
            )
            .await
            .unwrap();
        let backend = Backend {
            store: store.clone(),
            prefix: ObjPath::default(),
            url: "memory:///".into(),
            scheme: "memory",
            credentials_note: None,
            local: None,
        };
        let reader = ArchiveReader::open_backend(backend, Some(SYSID), 2, Compression::Zstd)
            .await
            .unwrap();
        for tli in 1..=20u32 {
            let r = reader.clone();
            let t = tokio::spawn(async move { r.fetch_segment(tli, 1).await });
            // the reader gives up (its standby went away)
            tokio::time::sleep(Duration::from_millis(20)).await;
            t.abort();
            let _ = t.await;
        }
        let cached = reader.inner.cache.lock().unwrap().len();
        assert!(cached <= 8, "{cached} entries cached");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while live.load(Ordering::SeqCst) > cached && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            live.load(Ordering::SeqCst) <= cached,
            "{} downloads still running for {cached} cache entries",
            live.load(Ordering::SeqCst)
        );
    }
}

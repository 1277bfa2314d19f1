//! The `file://` archive, made durable: object_store 0.12's `LocalFileSystem` never fsyncs,
//! so an object it reports as written can vanish (or come back empty) after a power loss —
//! yet an archived segment counts for `ack = "archive"` and lets local retention delete the
//! segment.
//!
//! Owns: [`DurableFs`], an [`ObjectStore`] over `LocalFileSystem` whose writes (put, the
//! completion of a multipart upload, copy, rename) succeed only after the written file and
//! every directory from its parent up to the archive root are fsynced, on a blocking
//! thread. An object found already there (`AlreadyExists` of a create-if-absent put) is
//! fsynced too before the error is returned: a previous run may have crashed before it was
//! durable, and the caller is about to count it as archived. Reads, lists and deletes are
//! passed through (a delete's directory is fsynced best-effort).
//!
//! Must not: change what objects contain or how they are named.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// A `LocalFileSystem` rooted at `root` whose writes are durable before they succeed.
#[derive(Debug, Clone)]
pub struct DurableFs {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
    /// Every path fsynced, in order (tests only).
    log: Option<Arc<Mutex<Vec<PathBuf>>>>,
}

impl fmt::Display for DurableFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableFs({})", self.root.display())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("could not fsync \"{}\": {e}", path.display()).into(),
    }
}

impl DurableFs {
    /// The archive rooted at `root` (created, and made durable, if missing).
    pub fn new(root: &Path) -> std::io::Result<DurableFs> {
        crate::store::fsutil::ensure_dir(root)?;
        let root = std::fs::canonicalize(root)?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .with_automatic_cleanup(true);
        Ok(DurableFs {
            inner: Arc::new(inner),
            root,
            log: None,
        })
    }

    #[cfg(test)]
    pub(crate) fn with_log(mut self) -> (DurableFs, Arc<Mutex<Vec<PathBuf>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        self.log = Some(log.clone());
        (self, log)
    }

    /// The file that holds the object at `location`.
    pub(crate) fn object_file(&self, location: &ObjPath) -> Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }

    /// fsyncs `file` (an object's file) and the directories from its parent up to the root,
    /// then lets the kernel drop its cached pages. Blocking: call it off the async threads.
    pub(crate) fn sync_file_blocking(&self, file: &Path) -> Result<()> {
        let note = |p: &Path| {
            if let Some(l) = &self.log {
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p.to_path_buf());
            }
        };
        let f = std::fs::File::open(file).map_err(|e| io_error(file, e))?;
        f.sync_all().map_err(|e| io_error(file, e))?;
        drop_cached(&f);
        note(file);
        let mut dir = file.parent();
        while let Some(d) = dir {
            crate::statefile::fsync_dir(d).map_err(|e| io_error(d, e))?;
            note(d);
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// fsyncs the file of `location` and the directories from its parent up to the root.
    async fn sync(&self, location: &ObjPath) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        let fs = self.clone();
        let r = tokio::task::spawn_blocking(move || fs.sync_file_blocking(&file)).await;
        r.map_err(|e| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        })?
    }

    /// fsyncs the directory that held `location` (after a delete; best effort).
    async fn sync_parent(&self, location: &ObjPath) {
        let Ok(file) = self.inner.path_to_filesystem(location) else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let mut dir = file.parent();
            // automatic cleanup may have removed empty parents: fsync the first that exists
            while let Some(d) = dir {
                if crate::statefile::fsync_dir(d).is_ok() {
                    break;
                }
                dir = d.parent();
            }
        })
        .await;
    }
}

/// Lets the kernel drop the page cache of `f`, whose pages are clean after its fsync: an
/// archive copy is not read back in normal operation, so keeping it cached would only push
/// out pages that are (the store's recent WAL). Advice only: a refusal changes nothing.
pub(crate) fn drop_cached(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; `f` is an open descriptor.
    let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// A multipart upload that fsyncs the object when it completes.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    fs: DurableFs,
    location: ObjPath,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await?;
        self.fs.sync(&self.location).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for DurableFs {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.inner.put_opts(location, payload, opts).await {
            Ok(r) => {
                self.sync(location).await?;
                Ok(r)
            }
            Err(e @ object_store::Error::AlreadyExists { .. }) => {
                self.sync(location).await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            fs: self.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &ObjPath, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(&self, location: &ObjPath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &ObjPath) -> Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &ObjPath) -> Result<()> {
        self.inner.delete(location).await?;
        self.sync_parent(location).await;
        Ok(())
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjPath>,
        offset: &ObjPath,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> Result<()> {
        self.inner.copy(from, to).await?;
        self.sync(to).await
    }

    async fn rename(&self, from: &ObjPath, to: &ObjPath) -> Result<()> {
        self.inner.rename(from, to).await?;
        self.sync(to).await?;
        self.sync_parent(from).await;
        Ok(())
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await?;
        self.sync(to).await
    }

    async fn rename_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> Result<()> {
        self.inner.rename_if_not_exists(from, to).await?;
        self.sync(to).await?;
        self.sync_parent(from).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{PutMode, WriteMultipart};

    /// A put succeeds only after the object's file and each directory up to the root were
    /// fsynced (file first, then parents bottom-up); an existing object is fsynced before
    /// `AlreadyExists` is returned; a multipart upload is fsynced at completion.
    #[tokio::test]
    async fn writes_are_fsynced_before_they_succeed() {
        let d = tempfile::tempdir().unwrap();
        let (fs, log) = DurableFs::new(&d.path().join("arch")).unwrap().with_log();
        let root = std::fs::canonicalize(d.path().join("arch")).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(fs);
        let p = ObjPath::from("7/wal/000000010000000000000001");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store
            .put_opts(&p, PutPayload::from_static(b"wal"), create.clone())
            .await
            .unwrap();
        let file = root.join("7/wal/000000010000000000000001");
        assert_eq!(std::fs::read(&file).unwrap(), b"wal");
        let expected = vec![
            file.clone(),
            root.join("7/wal"),
            root.join("7"),
            root.clone(),
        ];
        assert_eq!(*log.lock().unwrap(), expected);
        log.lock().unwrap().clear();
        let e = store
            .put_opts(&p, PutPayload::from_static(b"other"), create)
            .await
            .unwrap_err();
        assert!(
            matches!(e, object_store::Error::AlreadyExists { .. }),
            "{e}"
        );
        assert_eq!(*log.lock().unwrap(), expected);
        log.lock().unwrap().clear();
        // multipart: durable at completion, not before
        let big = ObjPath::from("7/wal/big");
        let up = store.put_multipart(&big).await.unwrap();
        let mut w = WriteMultipart::new_with_chunk_size(up, 5 << 20);
        w.put(Bytes::from(vec![1u8; 6 << 20]));
        assert!(log.lock().unwrap().is_empty());
        w.finish().await.unwrap();
        assert_eq!(log.lock().unwrap().first(), Some(&root.join("7/wal/big")));
        assert_eq!(log.lock().unwrap().last(), Some(&root));
        assert_eq!(
            store.get(&big).await.unwrap().bytes().await.unwrap().len(),
            6 << 20
        );
        // reads and lists pass through
        let n = futures::StreamExt::count(store.list(None)).await;
        assert_eq!(n, 2);
    }
}

//! Create-if-absent uploads with comparison, multipart for large objects, and retries with
//! exponential backoff and jitter.
//!
//! Owns: the rule that an archive object is never overwritten. An upload either creates the
//! object, or finds it already there: with the same content (same bytes, or the same WAL
//! compressed differently) that is success — a retry after a crash; with different content it
//! is a [`ArchiveError::Conflict`]: logged as an error, counted in
//! `walrelay_archive_conflicts_total`, and the object is left alone.
//! Must not: touch local files.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use rand::Rng;
use tokio::sync::watch;

use super::layout::{decompress, sha256_hex, strip_compression};
use super::ArchiveError;

/// How uploads behave.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Encryption key of the archive (existing objects are opened with it when compared).
    pub key: Option<super::crypt::Key>,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        UploadPolicy {
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            key: None,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Result of a successful [`put_create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The object was there already with the same content.
    AlreadyPresent,
}

/// The delay before retry number `attempt` (0-based): `min * 2^attempt` capped at `max`,
/// then scaled by a random factor in [0.5, 1.0] so that parallel uploads do not retry in step.
pub fn backoff(policy: &UploadPolicy, attempt: u32) -> Duration {
    let base = policy
        .retry_min
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(policy.retry_max);
    let f: f64 = rand::thread_rng().gen_range(0.5..=1.0);
    base.mul_f64(f)
}

/// Runs `op` until it succeeds or fails with a non-transient error, sleeping [`backoff`]
/// between attempts. Returns [`ArchiveError::Shutdown`] when `shutdown` becomes true.
pub async fn retry<T, F, Fut>(
    policy: &UploadPolicy,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    mut op: F,
) -> Result<T, ArchiveError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ArchiveError>>,
{
    let mut attempt = 0u32;
    loop {
        if *shutdown.borrow() {
            return Err(ArchiveError::Shutdown);
        }
        match op().await {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!("archive: {what} succeeded after {attempt} retries");
                }
                return Ok(v);
            }
            Err(e) if e.is_transient() => {
                metrics::counter!(super::UPLOAD_ERRORS).increment(1);
                let d = backoff(policy, attempt);
                tracing::warn!("archive: {what} failed: {e}; retrying in {d:.1?}");
                crate::ops::record_error("archive", format!("{what} failed: {e}"));
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.wait_for(|s| *s) => return Err(ArchiveError::Shutdown),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Uploads `stored` to `path` unless the object exists. An existing object is compared:
/// identical bytes, or (for a `.zst` object or a plain one) the same decompressed content
/// as `raw_sha256`, is [`PutOutcome::AlreadyPresent`]; anything else is a conflict.
/// `max_raw` bounds decompression of the existing object.
pub async fn put_create(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    stored: Bytes,
    raw_sha256: &str,
    max_raw: usize,
    policy: &UploadPolicy,
) -> Result<PutOutcome, ArchiveError> {
    put_create_payload(
        store,
        path,
        PutPayload::from_bytes(stored),
        raw_sha256,
        max_raw,
        policy,
    )
    .await
}

/// [`put_create`] of an object held in one or more buffers (e.g. the store's shared tail):
/// they are sent as they are, never joined into one.
pub async fn put_create_payload(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    stored: PutPayload,
    raw_sha256: &str,
    max_raw: usize,
    policy: &UploadPolicy,
) -> Result<PutOutcome, ArchiveError> {
    let size = stored.content_length() as u64;
    let created = if size > policy.multipart_threshold {
        put_multipart_if_absent(store, path, &stored, policy).await?
    } else {
        create_payload_if_absent(store, path, stored.clone(), "upload").await?
    };
    if created {
        metrics::counter!(super::UPLOADED_BYTES).increment(size);
        return Ok(PutOutcome::Created);
    }
    if same_content(
        store,
        path,
        &stored,
        raw_sha256,
        max_raw,
        policy.key.as_ref(),
    )
    .await?
    {
        Ok(PutOutcome::AlreadyPresent)
    } else {
        Err(conflict(path))
    }
}

/// An object found with other content than the local file: counted, logged, never
/// overwritten.
pub(crate) fn conflict(path: &ObjPath) -> ArchiveError {
    metrics::counter!(super::CONFLICTS).increment(1);
    tracing::error!(
        "archive conflict: \"{path}\" already exists with different content than the local \
         file; it is NOT overwritten. Check which cluster writes to this archive."
    );
    ArchiveError::Conflict {
        path: path.to_string(),
    }
}

/// One conditional PUT (`PutMode::Create`): `true` if this call created the object, `false`
/// if an object already exists at `path` (never overwritten). `op` names the operation in
/// errors.
pub async fn create_if_absent(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    body: Bytes,
    op: &'static str,
) -> Result<bool, ArchiveError> {
    create_payload_if_absent(store, path, PutPayload::from_bytes(body), op).await
}

async fn create_payload_if_absent(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    body: PutPayload,
    op: &'static str,
) -> Result<bool, ArchiveError> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(path, body, opts).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(ArchiveError::store(op, path)(e)),
    }
}

/// The whole object at `path`.
async fn read_object(store: &Arc<dyn ObjectStore>, path: &ObjPath) -> Result<Bytes, ArchiveError> {
    store
        .get(path)
        .await
        .map_err(ArchiveError::store("read", path))?
        .bytes()
        .await
        .map_err(ArchiveError::store("read", path))
}

/// Writes a small object create-if-absent; when one already exists, returns its bytes so that
/// the caller can decide whether it is equivalent (`None`: created).
pub async fn create_or_existing(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    body: Bytes,
) -> Result<Option<Bytes>, ArchiveError> {
    if create_if_absent(store, path, body, "write").await? {
        return Ok(None);
    }
    let existing = read_object(store, path).await?;
    Ok(Some(existing))
}

/// `existing` holds exactly the bytes of `payload`'s buffers, in order.
fn same_bytes(existing: &[u8], payload: &PutPayload) -> bool {
    if existing.len() != payload.content_length() {
        return false;
    }
    let mut rest = existing;
    for b in payload {
        match rest.split_at_checked(b.len()) {
            Some((head, tail)) if head == &b[..] => rest = tail,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Does the object at `path` hold the same WAL as `stored` / `raw_sha256`?
pub async fn same_content(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    stored: &PutPayload,
    raw_sha256: &str,
    max_raw: usize,
    key: Option<&super::crypt::Key>,
) -> Result<bool, ArchiveError> {
    let existing = read_object(store, path).await?;
    if same_bytes(&existing, stored) {
        return Ok(true);
    }
    // an encrypted object is compared by its content (each sealing uses a fresh nonce)
    let existing = match super::crypt::open_stored(key, existing, path.as_ref()) {
        Ok(b) => b,
        Err(_) => return Ok(false),
    };
    let (_, c) = strip_compression(path.filename().unwrap_or(""));
    match decompress(existing, c, max_raw, path) {
        Ok(raw) => Ok(sha256_hex(&raw) == raw_sha256),
        Err(_) => Ok(false),
    }
}

/// Multipart upload of a large object. object_store cannot make a multipart upload
/// conditional, so this checks for the object first: safe against crashes and retries of
/// this walrelay (the single writer of its archive prefix), not against a second writer
/// racing on the same key. Returns false if the object already existed.
async fn put_multipart_if_absent(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    stored: &PutPayload,
    policy: &UploadPolicy,
) -> Result<bool, ArchiveError> {
    match store.head(path).await {
        Ok(_) => return Ok(false),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(ArchiveError::store("check", path)(e)),
    }
    let upload = store
        .put_multipart(path)
        .await
        .map_err(ArchiveError::store("start multipart upload of", path))?;
    let part = policy.part_size.max(5 << 20) as usize;
    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, part);
    for b in stored {
        let mut off = 0usize;
        while off < b.len() {
            let end = off.saturating_add(part).min(b.len());
            w.wait_for_capacity(4)
                .await
                .map_err(ArchiveError::store("upload part of", path))?;
            w.put(b.slice(off..end));
            off = end;
        }
    }
    w.finish()
        .await
        .map_err(ArchiveError::store("complete multipart upload of", path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::layout::compress;
    use crate::config::Compression;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn create_if_absent_compare_and_conflict() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let policy = UploadPolicy::default();
        let raw = Bytes::from(vec![5u8; 100_000]);
        let sha = sha256_hex(&raw);
        let p = ObjPath::from("a/wal/x");
        assert_eq!(
            put_create(&store, &p, raw.clone(), &sha, 1 << 20, &policy)
                .await
                .unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            put_create(&store, &p, raw.clone(), &sha, 1 << 20, &policy)
                .await
                .unwrap(),
            PutOutcome::AlreadyPresent
        );
        // same WAL compressed at another level: still the same content
        let pz = ObjPath::from("a/wal/x.zst");
        let z1 = Bytes::from(compress(&raw, Compression::Zstd, 1).unwrap());
        let z19 = Bytes::from(compress(&raw, Compression::Zstd, 19).unwrap());
        put_create(&store, &pz, z1, &sha, 1 << 20, &policy)
            .await
            .unwrap();
        assert_eq!(
            put_create(&store, &pz, z19, &sha, 1 << 20, &policy)
                .await
                .unwrap(),
            PutOutcome::AlreadyPresent
        );
        // different bytes: conflict, and the object keeps its content
        let other = Bytes::from(vec![6u8; 100_000]);
        let e = put_create(
            &store,
            &p,
            other.clone(),
            &sha256_hex(&other),
            1 << 20,
            &policy,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ArchiveError::Conflict { .. }), "{e}");
        let kept = store.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(kept, raw);
    }

    #[tokio::test]
    async fn multipart_large_objects() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let policy = UploadPolicy {
            multipart_threshold: 1 << 20,
            part_size: 5 << 20,
            ..Default::default()
        };
        let raw: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
        let raw = Bytes::from(raw);
        let sha = sha256_hex(&raw);
        let p = ObjPath::from("big");
        assert_eq!(
            put_create(&store, &p, raw.clone(), &sha, 16 << 20, &policy)
                .await
                .unwrap(),
            PutOutcome::Created
        );
        assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), raw);
        assert_eq!(
            put_create(&store, &p, raw.clone(), &sha, 16 << 20, &policy)
                .await
                .unwrap(),
            PutOutcome::AlreadyPresent
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = UploadPolicy {
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            ..Default::default()
        };
        for a in 0..40 {
            let d = backoff(&p, a);
            assert!(d <= Duration::from_secs(2));
            assert!(d >= Duration::from_millis(50));
        }
        assert!(backoff(&p, 10) >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn retry_stops_on_shutdown_and_on_conflict() {
        let p = UploadPolicy {
            retry_min: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            ..Default::default()
        };
        let (tx, mut rx) = watch::channel(false);
        let mut n = 0;
        let r: Result<(), _> = retry(&p, &mut rx, "t", || {
            n += 1;
            let fail = n < 3;
            async move {
                if fail {
                    Err(ArchiveError::Io {
                        op: "x",
                        path: "p".into(),
                        source: std::io::Error::other("down"),
                    })
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(n, 3);
        let r: Result<(), _> = retry(&p, &mut rx, "t", || async {
            Err(ArchiveError::Conflict { path: "p".into() })
        })
        .await;
        assert!(matches!(r, Err(ArchiveError::Conflict { .. })));
        tx.send(true).unwrap();
        let r: Result<(), _> = retry(&p, &mut rx, "t", || async { Ok(()) }).await;
        assert!(matches!(r, Err(ArchiveError::Shutdown)));
    }
}

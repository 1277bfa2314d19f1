//! `walrelay bench-archive`: how fast this walrelay uploads WAL to an archive, by upload
//! concurrency.
//!
//! Per concurrency level, uploads `segments` segment-sized objects of pseudo-random
//! (incompressible) data, `concurrency` at a time (after an untimed warm-up round of
//! `concurrency` more), through the archiver's own path: hashing, compression as configured,
//! the create-if-absent PUT with its retries (multipart above `archive.multipart_threshold`),
//! then the manifest ([`super::archiver::store_segment`]). Only the source differs: the data
//! is in memory instead of in a local file — except for a `file://` archive storing objects
//! as they are, which `walrelay run` fills by a streamed copy from the segment file
//! ([`super::archiver::copy_segment`]): there the data is written once to a temporary file
//! (page-cached) and copied from it, outside the object prefix. Everything goes under
//! a prefix of its own, `<archive prefix>/walrelay-bench-<time>-<pid>/`, and is deleted after
//! each level (outside the timed part).
//!
//! Owns: nothing that outlives the run. Must not: read, write or delete anything outside its
//! own prefix (and its temporary source file).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use rand::RngCore;
use tokio::sync::watch;

use super::archiver::{copy_segment, prepare_bytes, store_segment, Ctx};
use super::backend::Backend;
use super::upload;
use super::ArchiveError;
use crate::config::ArchiveConfig;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Concurrency levels, measured in this order.
    pub concurrency: Vec<usize>,
    /// Objects uploaded per level.
    pub segments: usize,
    /// Size of each object (a valid WAL segment size).
    pub segment_size: u64,
}

/// The figures of one level.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelResult {
    pub concurrency: usize,
    pub segments: usize,
    /// WAL bytes uploaded (before compression).
    pub bytes: u64,
    /// Bytes stored (after compression).
    pub stored_bytes: u64,
    pub seconds: f64,
}

impl LevelResult {
    /// WAL MB (2^20 bytes) per second.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1_048_576.0 / self.seconds.max(1e-9)
    }
}

/// Runs the benchmark against `backend` with the `[archive]` settings of `cfg` (compression,
/// multipart, retries; `concurrency` is set per level), calling `report` after each level.
/// Before the first level one small object is written without retries, so that wrong
/// credentials or an unreachable store fail at once. `shutdown` set to true stops it; what was
/// uploaded is deleted in every case.
pub async fn run(
    backend: &Backend,
    cfg: &ArchiveConfig,
    opts: &BenchOptions,
    shutdown: watch::Receiver<bool>,
    mut report: impl FnMut(&LevelResult),
) -> Result<Vec<LevelResult>, ArchiveError> {
    if !crate::lsn::valid_segment_size(opts.segment_size) {
        return Err(ArchiveError::Config(format!(
            "segment size {} is not a power of two from 1 MB to 1 GB",
            opts.segment_size
        )));
    }
    if opts.segments == 0 || opts.concurrency.is_empty() || opts.concurrency.contains(&0) {
        return Err(ArchiveError::Config(
            "need at least one segment and concurrency levels of at least 1".into(),
        ));
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let root = backend
        .prefix
        .child(format!("walrelay-bench-{stamp}-{}", std::process::id()));
    let probe = root.child("probe");
    let probed = upload::create_if_absent(
        &backend.store,
        &probe,
        Bytes::from_static(b"walrelay bench-archive\n"),
        "write",
    )
    .await;
    let result = match probed {
        Ok(_) => levels(backend, cfg, opts, &root, shutdown, &mut report).await,
        Err(e) => Err(e),
    };
    delete_prefix(&backend.store, &root).await;
    result
}

async fn levels(
    backend: &Backend,
    cfg: &ArchiveConfig,
    opts: &BenchOptions,
    root: &ObjPath,
    shutdown: watch::Receiver<bool>,
    report: &mut impl FnMut(&LevelResult),
) -> Result<Vec<LevelResult>, ArchiveError> {
    let data = random_bytes(opts.segment_size as usize);
    // A `file://` archive storing objects as they are copies from a file, as `walrelay run`
    // does for a segment no longer in its tail (a page-cached file here: the worst case is
    // that plus a disk read; segments still in the tail are copied from memory).
    let src = match &backend.local {
        Some(_) => {
            let d = std::env::temp_dir().join(format!(
                "walrelay-bench-archive-{}-{}.seg",
                std::process::id(),
                opts.segment_size
            ));
            std::fs::write(&d, &data).map_err(ArchiveError::io("write", &d))?;
            Some(TempFile(d))
        }
        None => None,
    };
    let mut out = Vec::new();
    for &concurrency in &opts.concurrency {
        let mut level_cfg = cfg.clone();
        level_cfg.concurrency = concurrency;
        let prefix = root.child(format!("c{concurrency}"));
        let ctx = Arc::new(Ctx::new(
            backend,
            &prefix,
            0,
            opts.segment_size,
            &level_cfg,
            PathBuf::new(),
        ));
        // warm-up, not timed: connections opened, first-write costs of the store paid
        let n = opts.segments as u64;
        let warm = n + 1..=n + concurrency as u64;
        let src = src.as_ref().filter(|_| ctx.local.is_some()).map(|f| &f.0);
        upload_all(&ctx, &data, src, warm, concurrency, &shutdown).await?;
        let start = Instant::now();
        let stored_bytes = upload_all(&ctx, &data, src, 1..=n, concurrency, &shutdown).await?;
        let r = LevelResult {
            concurrency,
            segments: opts.segments,
            bytes: opts.segment_size * opts.segments as u64,
            stored_bytes,
            seconds: start.elapsed().as_secs_f64(),
        };
        report(&r);
        out.push(r);
        delete_prefix(&backend.store, &prefix).await;
    }
    Ok(out)
}

/// Uploads `data` as segments `segnos` of timeline 1, `concurrency` at a time; the bytes
/// stored.
async fn upload_all(
    ctx: &Arc<Ctx>,
    data: &Bytes,
    src: Option<&PathBuf>,
    segnos: std::ops::RangeInclusive<u64>,
    concurrency: usize,
    shutdown: &watch::Receiver<bool>,
) -> Result<u64, ArchiveError> {
    stream::iter(segnos)
        .map(|segno| {
            let data = data.clone();
            let mut shutdown = shutdown.clone();
            let src = src.cloned();
            async move {
                if let Some(src) = src {
                    copy_segment(ctx, 1, segno, src, None, &mut shutdown).await?;
                    return Ok::<u64, ArchiveError>(data.len() as u64);
                }
                let prepared = prepare_bytes(ctx, data, 1, segno).await?;
                let stored = prepared.stored.content_length() as u64;
                store_segment(ctx, 1, segno, prepared, &mut shutdown).await?;
                Ok::<u64, ArchiveError>(stored)
            }
        })
        .buffer_unordered(concurrency)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `len` bytes from a CSPRNG: incompressible, so that compression does not flatter the figures.
fn random_bytes(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// Deletes every object under `prefix` (best effort: failures are logged).
async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &ObjPath) {
    let listed: Result<Vec<ObjPath>, _> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await;
    let paths = match listed {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("bench-archive: could not list {prefix} to delete it: {e}");
            return;
        }
    };
    let failed = stream::iter(paths)
        .map(|p| async move { store.delete(&p).await.err().map(|e| (p, e)) })
        .buffer_unordered(16)
        .filter_map(|r| async move { r })
        .collect::<Vec<_>>()
        .await;
    for (p, e) in failed {
        tracing::warn!("bench-archive: could not delete {p}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;

    fn count_files(dir: &std::path::Path) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                n += count_files(&e.path());
            } else {
                n += 1;
            }
        }
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measures_each_level_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        for compression in [Compression::None, Compression::Zstd] {
            let cfg = ArchiveConfig {
                compression,
                ..Default::default()
            };
            let backend = super::super::backend::open(&url, &cfg).unwrap();
            let opts = BenchOptions {
                concurrency: vec![1, 3],
                segments: 4,
                segment_size: 1 << 20,
            };
            let (_tx, stop) = watch::channel(false);
            let mut seen = Vec::new();
            let r = run(&backend, &cfg, &opts, stop, |l| {
                seen.push(l.concurrency);
                // every object and manifest of the level is there while it is reported
            })
            .await
            .unwrap();
            assert_eq!(seen, vec![1, 3]);
            assert_eq!(r.len(), 2);
            for l in &r {
                assert_eq!(l.bytes, 4 << 20);
                assert!(l.seconds > 0.0 && l.mbps() > 0.0, "{l:?}");
                // random data does not compress (zstd adds a few bytes of framing)
                assert!(l.stored_bytes >= l.bytes, "{l:?}");
            }
            assert_eq!(count_files(dir.path()), 0, "bench objects left behind");
        }
    }

    #[tokio::test]
    async fn rejects_bad_options_and_unreachable_stores() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig::default();
        let backend =
            super::super::backend::open(&format!("file://{}", dir.path().display()), &cfg).unwrap();
        let (_tx, stop) = watch::channel(false);
        let bad = BenchOptions {
            concurrency: vec![1],
            segments: 1,
            segment_size: 3 << 20,
        };
        assert!(run(&backend, &cfg, &bad, stop.clone(), |_| {})
            .await
            .is_err());
        // nothing listens on port 9: the probe fails at once instead of retrying
        let mut s3 = cfg.clone();
        s3.s3.endpoint = Some("http://127.0.0.1:9".into());
        s3.s3.region = Some("us-east-1".into());
        s3.s3.access_key_id = Some("k".into());
        s3.s3.secret_access_key = Some("s".into());
        let b = super::super::backend::open("s3://bucket/p", &s3).unwrap();
        let ok = BenchOptions {
            concurrency: vec![1],
            segments: 1,
            segment_size: 1 << 20,
        };
        let e = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            run(&b, &s3, &ok, stop, |_| {}),
        )
        .await
        .expect("probe did not fail fast")
        .unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}

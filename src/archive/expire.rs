//! Expiry of archived WAL: `walrelay archive expire [--dry-run]` and the timer in `run`.
//!
//! Owns: choosing and deleting expired segment objects under `<prefix>/<system>/wal/`, their
//! manifests and any partial snapshots of them. A segment is expired when all hold: it ends
//! at or before the floor (the lowest of: proxy slots' `restart_lsn`, delayed feeds' needed
//! position, `archived_lsn`, the oldest local WAL segment); it is older than `keep_age` (when
//! set); it is not among the newest `keep_size` bytes of archived WAL (when set). Only the
//! oldest run of expired segments is deleted (the first segment that must stay ends the
//! run), so the archive stays contiguous. History files and the identity are never deleted.
//! Must not: touch local WAL, or delete anything when neither rule is set.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use object_store::path::Path as ObjPath;

use super::{layout, ArchiveError, ArchiveReader, ArchiveSettings};
use crate::config::ArchiveRetention;
use crate::lsn::{parse_wal_file_name, Lsn, WalFileName};

/// Segments deleted by archive expiry.
pub const EXPIRED_SEGMENTS: &str = "walrelay_archive_expired_segments_total";

/// What an expiry did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// WAL file names deleted, oldest first.
    pub deleted: Vec<String>,
    /// Stored bytes of the deleted segment objects.
    pub deleted_bytes: u64,
    /// Segments left in the archive.
    pub kept: usize,
    pub dry_run: bool,
}

struct Seg {
    segno: u64,
    name: String,
    location: ObjPath,
    size: u64,
    modified: SystemTime,
}

/// Whether `policy` deletes anything at all.
pub fn enabled(policy: &ArchiveRetention) -> bool {
    !policy.keep_age.is_zero() || policy.keep_size > 0
}

/// Expires the archive of `reader` under `policy`, never at or past `floor`.
pub async fn expire(
    reader: &ArchiveReader,
    policy: &ArchiveRetention,
    floor: Lsn,
    now: SystemTime,
    dry_run: bool,
) -> Result<ExpireReport, ArchiveError> {
    let mut report = ExpireReport {
        dry_run,
        ..Default::default()
    };
    // WAL from the oldest stored base backup's start stays (docs/backups.md)
    let floor = match crate::backup::retention::wal_floor(reader).await {
        Ok(Some(b)) => floor.min(b),
        Ok(None) => floor,
        Err(e) => {
            return Err(ArchiveError::Config(format!(
                "not expiring: the backups in the archive could not be read: {e}"
            )))
        }
    };
    let store = reader.object_store();
    let seg_size = reader.wal_segment_size();
    let dir = reader.layout().wal_dir();
    let mut segs = Vec::new();
    let mut stream = store.list(Some(&dir));
    while let Some(item) = stream.next().await {
        let meta = item.map_err(ArchiveError::store("list", &dir))?;
        let Some(file) = meta.location.filename() else {
            continue;
        };
        let (name, _) = layout::strip_compression(file);
        if let Some(WalFileName::Segment {
            segno,
            partial: false,
            ..
        }) = parse_wal_file_name(name, seg_size)
        {
            segs.push(Seg {
                segno,
                name: name.to_string(),
                location: meta.location.clone(),
                size: meta.size,
                modified: meta.last_modified.into(),
            });
        }
    }
    drop(stream);
    segs.sort_by(|a, b| (a.segno, &a.name).cmp(&(b.segno, &b.name)));
    if !enabled(policy) {
        report.kept = segs.len();
        return Ok(report);
    }
    // the newest keep_size bytes stay
    let mut kept_by_size = vec![false; segs.len()];
    if policy.keep_size > 0 {
        let mut newer = 0u64;
        for (i, s) in segs.iter().enumerate().rev() {
            if newer < policy.keep_size {
                if let Some(k) = kept_by_size.get_mut(i) {
                    *k = true;
                }
            }
            newer = newer.saturating_add(s.size);
        }
    }
    let mut expired = Vec::new();
    for (s, by_size) in segs.iter().zip(&kept_by_size) {
        let end = s.segno.saturating_add(1).saturating_mul(seg_size);
        let old_enough = policy.keep_age.is_zero()
            || now
                .duration_since(s.modified)
                .is_ok_and(|age| age > policy.keep_age);
        if *by_size || !old_enough || end > floor.0 {
            break;
        }
        expired.push(s);
    }
    report.kept = segs.len().saturating_sub(expired.len());
    for s in &expired {
        report.deleted.push(s.name.clone());
        report.deleted_bytes = report.deleted_bytes.saturating_add(s.size);
    }
    if dry_run || expired.is_empty() {
        return Ok(report);
    }
    // partial snapshots of expired segments (normally gone once the segment was archived)
    let pdir = reader.layout().partial_dir();
    let mut snapshots = Vec::new();
    let mut stream = store.list(Some(&pdir));
    while let Some(item) = stream.next().await {
        let meta = item.map_err(ArchiveError::store("list", &pdir))?;
        if let Some((n, _, _)) = meta.location.filename().and_then(layout::parse_partial) {
            if report.deleted.contains(&n) {
                snapshots.push(meta.location.clone());
            }
        }
    }
    drop(stream);
    for s in &expired {
        // the segment first: a manifest without its segment is reported MISSING by verify,
        // a segment without a manifest would look CORRUPT
        delete_if_present(reader, &s.location).await?;
        delete_if_present(reader, &reader.layout().manifest(&s.name)).await?;
        metrics::counter!(EXPIRED_SEGMENTS).increment(1);
    }
    for p in &snapshots {
        delete_if_present(reader, p).await?;
    }
    Ok(report)
}

async fn delete_if_present(reader: &ArchiveReader, path: &ObjPath) -> Result<(), ArchiveError> {
    match reader.object_store().delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(ArchiveError::store("delete", path)(e)),
    }
}

/// The start of the oldest local WAL segment in `dir` (`None`: no local WAL).
pub fn oldest_local(dir: &std::path::Path, seg_size: u64) -> Option<Lsn> {
    let (files, _) = crate::store::scan::list(dir, seg_size).ok()?;
    files
        .iter()
        .map(|f| f.segno)
        .min()
        .map(|s| Lsn(s.saturating_mul(seg_size)))
}

fn min_lsn(a: Option<Lsn>, b: Option<Lsn>) -> Option<Lsn> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// The floor in `run`: slots and feeds (`settings.slot_floor`), `archived_lsn`, local WAL.
fn run_floor(
    settings: &ArchiveSettings,
    archived: &tokio::sync::watch::Receiver<Lsn>,
    oldest_local: Option<Lsn>,
) -> Lsn {
    let slots = settings.slot_floor.as_ref().and_then(|f| *f.borrow());
    let a = *archived.borrow();
    min_lsn(min_lsn(slots, Some(a)), oldest_local).unwrap_or(a)
}

/// Runs expiry every `archive.retention.interval` until `shutdown` (nothing when no rule is
/// set). Failures are logged and retried at the next tick.
pub fn spawn_timer(
    settings: ArchiveSettings,
    archived: tokio::sync::watch::Receiver<Lsn>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let policy = settings.config.retention.clone();
    if !enabled(&policy) || settings.url().is_none() {
        return None;
    }
    metrics::describe_counter!(EXPIRED_SEGMENTS, "archived segments deleted by expiry");
    let interval = policy.interval.max(Duration::from_secs(1));
    Some(tokio::spawn(crate::ops::inherit(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let reader = match ArchiveReader::open(&settings).await {
                Ok(r) => r,
                Err(ArchiveError::NoSystem(_)) => continue,
                Err(e) => {
                    tracing::warn!("archive expiry: {e}");
                    continue;
                }
            };
            let dir = settings.data_dir.clone();
            let seg = reader.wal_segment_size();
            let local = tokio::task::spawn_blocking(move || oldest_local(&dir, seg))
                .await
                .ok()
                .flatten();
            let floor = run_floor(&settings, &archived, local);
            match expire(&reader, &policy, floor, SystemTime::now(), false).await {
                Ok(r) if !r.deleted.is_empty() => tracing::info!(
                    "archive expiry: deleted {} segments ({} bytes) from {} to {}, {} kept (floor {floor})",
                    r.deleted.len(),
                    r.deleted_bytes,
                    r.deleted.first().map_or("", String::as_str),
                    r.deleted.last().map_or("", String::as_str),
                    r.kept
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("archive expiry: {e}"),
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::layout::{Identity, Layout};
    use object_store::{memory::InMemory, ObjectStore, PutPayload};
    use std::sync::Arc;

    const SEG: u64 = 1 << 24;
    const SYSID: u64 = 7;

    async fn archive(n: u64) -> (ArchiveReader, Arc<dyn ObjectStore>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let l = Layout::new(&ObjPath::default(), SYSID);
        store
            .put(
                &l.identity(),
                PutPayload::from(Identity::new(SYSID, SEG).encode()),
            )
            .await
            .unwrap();
        for segno in 1..=n {
            let name = crate::lsn::segment_file_name(1, segno, SEG);
            store
                .put(
                    &l.wal_object(&name, crate::config::Compression::None),
                    PutPayload::from(vec![0u8; 100]),
                )
                .await
                .unwrap();
            store
                .put(&l.manifest(&name), PutPayload::from_static(b"{}"))
                .await
                .unwrap();
        }
        store
            .put(&l.history(2), PutPayload::from_static(b"1\t0/5000000\tx\n"))
            .await
            .unwrap();
        let backend = super::super::Backend {
            store: store.clone(),
            prefix: ObjPath::default(),
            url: "memory:///".into(),
            scheme: "memory",
            credentials_note: None,
            local: None,
        };
        let r = ArchiveReader::open_backend(backend, Some(SYSID), 0, Default::default())
            .await
            .unwrap();
        (r, store)
    }

    async fn names(store: &Arc<dyn ObjectStore>, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = store
            .list(Some(&ObjPath::from(dir)))
            .map(|m| m.unwrap().location.filename().unwrap().to_string())
            .collect()
            .await;
        v.sort();
        v
    }

    #[tokio::test]
    async fn expiry_keeps_the_floor_and_the_newest_bytes() {
        let (r, store) = archive(8).await;
        let seg = |n| crate::lsn::segment_file_name(1, n, SEG);
        let later = SystemTime::now() + Duration::from_secs(7200);
        let policy = ArchiveRetention {
            keep_age: Duration::from_secs(3600),
            keep_size: 0,
            interval: Duration::from_secs(60),
        };
        // nothing old enough yet
        let rep = expire(&r, &policy, Lsn(100 * SEG), SystemTime::now(), false)
            .await
            .unwrap();
        assert!(rep.deleted.is_empty());
        assert_eq!(rep.kept, 8);

        // a slot or feed needs WAL from inside segment 4: 1..=3 may go, not 4
        let floor = Lsn(4 * SEG + 100);
        let dry = expire(&r, &policy, floor, later, true).await.unwrap();
        assert_eq!(dry.deleted, vec![seg(1), seg(2), seg(3)]);
        assert_eq!(
            names(&store, "7/wal").await.len(),
            9,
            "dry run deletes nothing"
        );
        let rep = expire(&r, &policy, floor, later, false).await.unwrap();
        assert_eq!(rep.deleted, vec![seg(1), seg(2), seg(3)]);
        assert_eq!(rep.deleted_bytes, 300);
        assert_eq!(rep.kept, 5);
        let wal = names(&store, "7/wal").await;
        assert_eq!(
            wal,
            vec![
                seg(4),
                seg(5),
                seg(6),
                seg(7),
                seg(8),
                "00000002.history".to_string()
            ]
        );
        let manifests = names(&store, "7/manifest").await;
        assert_eq!(manifests.len(), 5);
        assert!(!manifests.contains(&format!("{}.json", seg(3))));

        // keep_size: the newest 250 bytes (3 segments of 100) stay whatever their age
        let policy = ArchiveRetention {
            keep_age: Duration::ZERO,
            keep_size: 250,
            interval: Duration::from_secs(60),
        };
        let rep = expire(&r, &policy, Lsn(100 * SEG), later, false)
            .await
            .unwrap();
        assert_eq!(rep.deleted, vec![seg(4), seg(5)]);
        assert_eq!(rep.kept, 3);

        // no rule: nothing, ever
        let rep = expire(
            &r,
            &ArchiveRetention::default(),
            Lsn(100 * SEG),
            later,
            false,
        )
        .await
        .unwrap();
        assert!(rep.deleted.is_empty());
        assert_eq!(rep.kept, 3);
    }
}

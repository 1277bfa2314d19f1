//! Backup retention (`backup.keep`, `backup.keep_for`) and the floor it sets for archive
//! expiry.
//!
//! A backup is kept when any rule set keeps it: `keep = N` keeps the newest N complete
//! backups; `keep_for = D` keeps every backup that started within D and the newest complete
//! one that started before (it is what restores to the start of the window). Backups newer
//! than the newest kept complete one (still waiting for WAL) are always kept, and so is the
//! newest complete backup. With no rule, nothing is deleted. Deleting removes `backup.json`
//! first (the backup is no longer listed), then its other objects.
//!
//! Owns: choosing and deleting expired backups, [`wal_floor`]. Must not: delete WAL (archive
//! expiry does, never below [`wal_floor`]).

use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::catalog::{self, BackupMeta, BackupStatus, Catalog, META_FILE};
use super::Result;
use crate::archive::{ArchiveError, ArchiveReader};
use crate::lsn::Lsn;

/// The rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep: usize,
    pub keep_for: Duration,
}

impl Policy {
    pub fn from_config(c: &crate::config::BackupConfig) -> Policy {
        Policy {
            keep: c.keep,
            keep_for: c.keep_for,
        }
    }
    pub fn enabled(&self) -> bool {
        self.keep > 0 || !self.keep_for.is_zero()
    }
}

/// The start time a backup's ID names.
pub fn id_time(id: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Which of `backups` (oldest first) the policy deletes, as indexes.
pub fn expired(
    backups: &[(BackupMeta, BackupStatus)],
    policy: &Policy,
    now: SystemTime,
) -> Vec<usize> {
    if !policy.enabled() {
        return Vec::new();
    }
    let n = backups.len();
    let mut keep = vec![false; n];
    let complete: Vec<usize> = (0..n)
        .filter(|&i| backups.get(i).is_some_and(|(_, s)| s.is_complete()))
        .collect();
    // newer than the newest complete backup: still completing
    let newest_complete = complete.last().copied();
    for (i, k) in keep.iter_mut().enumerate() {
        if newest_complete.is_none_or(|c| i >= c) {
            *k = true;
        }
    }
    if policy.keep > 0 {
        for &i in complete.iter().rev().take(policy.keep) {
            if let Some(k) = keep.get_mut(i) {
                *k = true;
            }
        }
    }
    if !policy.keep_for.is_zero() {
        let window_start = now
            .checked_sub(policy.keep_for)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut newest_before: Option<usize> = None;
        for (i, (m, s)) in backups.iter().enumerate() {
            match id_time(&m.id) {
                Some(t) if t >= window_start => {
                    if let Some(k) = keep.get_mut(i) {
                        *k = true;
                    }
                }
                // an ID that is no time: never deleted by age
                None => {
                    if let Some(k) = keep.get_mut(i) {
                        *k = true;
                    }
                }
                Some(_) if s.is_complete() => newest_before = Some(i),
                Some(_) => {}
            }
        }
        if let Some(k) = newest_before.and_then(|i| keep.get_mut(i)) {
            *k = true;
        }
    }
    keep.iter()
        .enumerate()
        .filter(|(_, k)| !**k)
        .map(|(i, _)| i)
        .collect()
}

/// Deletes the expired backups; their IDs, oldest first (`dry_run`: only says which). Also
/// deletes backup directories without `backup.json` older than a day (a backup killed
/// during its upload, e.g. by a shutdown of `run`).
pub async fn apply(
    cat: &Catalog,
    policy: &Policy,
    now: SystemTime,
    dry_run: bool,
) -> Result<Vec<String>> {
    let all = catalog::list(cat).await?;
    let ids: Vec<String> = expired(&all, policy, now)
        .into_iter()
        .filter_map(|i| all.get(i).map(|(m, _)| m.id.clone()))
        .collect();
    // directories without backup.json a day old: abandoned (a backup killed mid-upload)
    let listed: Vec<&str> = all.iter().map(|(m, _)| m.id.as_str()).collect();
    let cutoff = now.checked_sub(ABANDONED).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut abandoned = Vec::new();
    for id in catalog::list_ids(cat).await? {
        // old by its ID *and* untouched for a day: a long backup still uploading (a large
        // database, a spread checkpoint, a slow store) writes parts all the time
        if !listed.contains(&id.as_str())
            && id_time(&id).is_some_and(|t| t < cutoff)
            && newest_write(cat, &id).await?.is_none_or(|t| t < cutoff)
        {
            abandoned.push(id);
        }
    }
    if dry_run {
        return Ok(ids);
    }
    for id in &ids {
        delete(cat, id).await?;
        metrics::counter!(super::DELETED).increment(1);
        tracing::info!("backup retention: deleted backup {id}");
    }
    for id in &abandoned {
        // backup.json may have appeared since the listing: never delete a listed backup
        if catalog::read_meta(cat, id).await?.is_none() {
            delete(cat, id).await?;
            tracing::info!(
                "backup retention: deleted the abandoned, unlisted backup directory {id}"
            );
        }
    }
    Ok(ids)
}

/// When anything under backup `id`'s directory was last written (`None`: nothing there).
async fn newest_write(cat: &Catalog, id: &str) -> Result<Option<SystemTime>> {
    let store = cat.reader().object_store();
    let dir = cat.backups_dir().child(id);
    let mut newest: Option<SystemTime> = None;
    let mut s = store.list(Some(&dir));
    while let Some(item) = s.next().await {
        let t: SystemTime = item
            .map_err(ArchiveError::store("list", &dir))?
            .last_modified
            .into();
        newest = Some(newest.map_or(t, |n| n.max(t)));
    }
    Ok(newest)
}

/// A backup directory without `backup.json` this old, and unwritten this long, is abandoned.
const ABANDONED: Duration = Duration::from_secs(24 * 3600);

/// Deletes backup `id`: `backup.json` first, then the rest.
pub async fn delete(cat: &Catalog, id: &str) -> Result<()> {
    let store = cat.reader().object_store();
    let meta_path = cat.object_path(id, META_FILE);
    match store.delete(&meta_path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(ArchiveError::store("delete", &meta_path)(e).into()),
    }
    let dir = cat.backups_dir().child(id);
    let mut objects = Vec::new();
    let mut s = store.list(Some(&dir));
    while let Some(item) = s.next().await {
        objects.push(item.map_err(ArchiveError::store("list", &dir))?.location);
    }
    drop(s);
    for o in objects {
        match store.delete(&o).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ArchiveError::store("delete", &o)(e).into()),
        }
    }
    Ok(())
}

/// The lowest position archive expiry must keep for the backups in the archive: the start of
/// the oldest listed backup's first segment (`None`: no backups). A backup directory whose
/// `backup.json` cannot be read makes this fail, so that expiry stops rather than deletes
/// WAL a backup may need.
pub async fn wal_floor(reader: &ArchiveReader) -> Result<Option<Lsn>> {
    let cat = Catalog::from_reader(reader.clone());
    let mut floor: Option<Lsn> = None;
    for id in catalog::list_ids(&cat).await? {
        if let Some(m) = catalog::read_meta(&cat, &id).await? {
            let s = m.start().segment_start(reader.wal_segment_size());
            floor = Some(floor.map_or(s, |f| f.min(s)));
        }
    }
    Ok(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: &str, complete: bool) -> (BackupMeta, BackupStatus) {
        let m: BackupMeta = serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "label": "l", "system_id": "7", "timeline": 1,
            "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "stop_timeline": 1,
            "start_time": "x", "stop_time": "y", "server_version": 150000,
            "wal_segment_size": 16777216, "compression": "none", "encrypted": false,
            "backup_label": "", "tablespace_map": null, "manifest": null,
            "archives": [{"name": "base.tar", "object": "base.tar", "tablespace_oid": null,
                "location": null, "size": 1, "stored_size": 1, "sha256": "x"}]
        }))
        .unwrap();
        let s = if complete {
            BackupStatus::Complete
        } else {
            BackupStatus::Incomplete {
                missing: vec!["x".into()],
            }
        };
        (m, s)
    }

    #[tokio::test]
    async fn apply_deletes_expired_and_abandoned() {
        use crate::archive::layout::{Identity, Layout};
        use object_store::{path::Path as ObjPath, ObjectStore, PutPayload};
        let d = tempfile::tempdir().unwrap();
        let cfg = crate::config::ArchiveConfig {
            url: Some(format!("file://{}", d.path().display())),
            ..Default::default()
        };
        let settings = crate::archive::ArchiveSettings::new(cfg.clone(), d.path());
        let be = crate::archive::backend::open(cfg.url.as_deref().unwrap(), &cfg).unwrap();
        let l = Layout::new(&ObjPath::default(), 7);
        let put = |p: ObjPath, v: Vec<u8>| {
            let store = be.store.clone();
            async move { store.put(&p, PutPayload::from(v)).await.unwrap() }
        };
        put(l.identity(), Identity::new(7, 16 << 20).encode()).await;
        for segno in 2..=5u64 {
            put(
                l.segment(1, segno, 16 << 20, crate::config::Compression::None),
                vec![0u8; 10],
            )
            .await;
        }
        let cat = Catalog::open(&settings).await.unwrap();
        for id in ["20260101T000000Z", "20260102T000000Z"] {
            let (m, _) = b(id, true);
            put(cat.object_path(id, "base.tar"), vec![1]).await;
            put(cat.object_path(id, META_FILE), m.encode()).await;
        }
        // abandoned two days ago, and one from an hour ago (maybe still uploading)
        put(cat.object_path("20260108T000000Z", "base.tar"), vec![1]).await;
        put(cat.object_path("20260109T230000Z", "base.tar"), vec![1]).await;
        let now = id_time("20260110T000000Z").unwrap();
        let keep1 = Policy {
            keep: 1,
            keep_for: Duration::ZERO,
        };
        assert_eq!(
            apply(&cat, &keep1, now, true).await.unwrap(),
            vec!["20260101T000000Z"]
        );
        assert_eq!(catalog::list_ids(&cat).await.unwrap().len(), 4, "dry run");
        assert_eq!(
            apply(&cat, &keep1, now, false).await.unwrap(),
            vec!["20260101T000000Z"]
        );
        // old IDs, but their objects were written moments ago: still uploading, kept
        assert_eq!(
            catalog::list_ids(&cat).await.unwrap(),
            vec!["20260102T000000Z", "20260108T000000Z", "20260109T230000Z"]
        );
        // two days later nothing was written there: abandoned, deleted
        let later = SystemTime::now() + Duration::from_secs(2 * 24 * 3600);
        assert!(apply(&cat, &keep1, later, false).await.unwrap().is_empty());
        assert_eq!(
            catalog::list_ids(&cat).await.unwrap(),
            vec!["20260102T000000Z"]
        );
        // the floor for archive expiry is the kept backup's start segment
        assert_eq!(wal_floor(cat.reader()).await.unwrap(), Some(Lsn(0x2000000)));
    }

    #[test]
    fn which_backups_expire() {
        let now = id_time("20260110T000000Z").unwrap();
        let all = vec![
            b("20260101T000000Z", true),
            b("20260102T000000Z", true),
            b("20260103T000000Z", false),
            b("20260108T000000Z", true),
            b("20260109T000000Z", false),
        ];
        assert!(expired(&all, &Policy::default(), now).is_empty());
        let keep1 = Policy {
            keep: 1,
            keep_for: Duration::ZERO,
        };
        assert_eq!(expired(&all, &keep1, now), vec![0, 1, 2]);
        let keep2 = Policy { keep: 2, ..keep1 };
        assert_eq!(expired(&all, &keep2, now), vec![0, 2]);
        // a 3-day window keeps 01-08 and the newest complete one before it (01-02)
        let window = Policy {
            keep: 0,
            keep_for: Duration::from_secs(3 * 86400),
        };
        assert_eq!(expired(&all, &window, now), vec![0, 2]);
        // no complete backup at all: nothing goes
        let none = vec![b("20260101T000000Z", false), b("20260102T000000Z", false)];
        assert!(expired(&none, &keep1, now).is_empty());
    }
}

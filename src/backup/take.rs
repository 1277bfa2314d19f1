//! Taking a base backup: `BASE_BACKUP` on a replication connection, streamed into the archive.
//!
//! Each archive the server sends (and its manifest) becomes one object, written with a
//! multipart upload as the data arrives: hashed (SHA-256 of the tar bytes), compressed as the
//! archive's WAL is (`archive.compression`), sealed when archive encryption is on
//! ([`crypt::StreamSealer`], the name bound is the object's), then uploaded in parts of
//! `archive.part_size` with at most 4 parts in flight. Memory stays bounded by that; nothing
//! goes to local disk. `backup.json` is written last, create-if-absent: a backup without it is
//! not listed, and a failed backup deletes what it uploaded.
//!
//! Owns: the backup's ID (its UTC start time), refusing an existing ID, the metadata, the
//! wait for its WAL. Must not: write WAL objects (the archiver of `walrelay run` does) or
//! keep the tar data.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};

use super::catalog::{
    self, object_file, ArchiveEntry, BackupMeta, BackupStatus, Catalog, ManifestEntry,
    MANIFEST_FILE, META_FILE,
};
use super::tar::TarWatch;
use super::{BackupError, Result};
use crate::archive::layout::{self, hex, Identity, Layout};
use crate::archive::{backend, crypt, upload, ArchiveError, ArchiveReader, ArchiveSettings};
use crate::config::Compression;
use crate::upstream::conn::basebackup::{BaseBackupEvent, BaseBackupOptions};
use crate::upstream::conn::ReplConnection;
use crate::upstream::conninfo::ConnInfo;

/// What `take` needs.
#[derive(Debug, Clone)]
pub struct TakeOptions {
    pub conninfo: ConnInfo,
    pub settings: ArchiveSettings,
    pub label: String,
    pub fast_checkpoint: bool,
}

/// Uploads in flight per object.
const PARTS_IN_FLIGHT: usize = 4;
/// Each tar archive ends with two zero blocks; PostgreSQL 14 and older leave them out.
const TAR_END: [u8; 1024] = [0u8; 1024];

/// One object being written.
struct ObjectWriter {
    path: ObjPath,
    upload: Option<WriteMultipart>,
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    sealer: Option<crypt::StreamSealer>,
    sha: Sha256,
    size: u64,
    stored: u64,
    watch: Option<TarWatch>,
    out: Vec<u8>,
}

impl ObjectWriter {
    async fn create(
        store: &Arc<dyn ObjectStore>,
        path: ObjPath,
        settings: &ArchiveSettings,
        watch: bool,
    ) -> Result<ObjectWriter> {
        let cfg = &settings.config;
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(ArchiveError::store("start multipart upload of", &path))?;
        let part = usize::try_from(cfg.part_size.max(5 << 20)).unwrap_or(5 << 20);
        let zstd = match cfg.compression {
            Compression::None => None,
            Compression::Zstd => Some(
                zstd::stream::write::Encoder::new(Vec::new(), cfg.compression_level.clamp(1, 19))
                    .map_err(|e| BackupError::Config(format!("zstd: {e}")))?,
            ),
        };
        let sealer = cfg
            .encryption_key
            .as_ref()
            .map(|k| crypt::StreamSealer::new(k, path.as_ref()));
        Ok(ObjectWriter {
            path,
            upload: Some(WriteMultipart::new_with_chunk_size(upload, part)),
            zstd,
            sealer,
            sha: Sha256::new(),
            size: 0,
            stored: 0,
            watch: watch.then(TarWatch::new),
            out: Vec::new(),
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.sha.update(data);
        self.size = self.size.saturating_add(data.len() as u64);
        if let Some(w) = self.watch.as_mut() {
            w.feed(data);
        }
        let compressed = match self.zstd.as_mut() {
            Some(z) => {
                z.write_all(data)
                    .map_err(|e| BackupError::Config(format!("zstd: {e}")))?;
                std::mem::take(z.get_mut())
            }
            None => data.to_vec(),
        };
        self.put(compressed).await
    }

    async fn put(&mut self, compressed: Vec<u8>) -> Result<()> {
        let sealed = match self.sealer.as_mut() {
            Some(s) => {
                self.out.clear();
                s.push(&compressed, &mut self.out)?;
                std::mem::take(&mut self.out)
            }
            None => compressed,
        };
        self.send(sealed).await
    }

    async fn send(&mut self, bytes: Vec<u8>) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(up) = self.upload.as_mut() else {
            return Ok(());
        };
        up.wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(ArchiveError::store("upload part of", &self.path))?;
        self.stored = self.stored.saturating_add(bytes.len() as u64);
        up.write(&bytes);
        Ok(())
    }

    /// Completes the object: (tar bytes, stored bytes, sha256 hex, captured files).
    async fn finish(mut self) -> Result<(u64, u64, String, Option<TarWatch>)> {
        if let Some(z) = self.zstd.take() {
            let rest = z
                .finish()
                .map_err(|e| BackupError::Config(format!("zstd: {e}")))?;
            self.put(rest).await?;
        }
        if let Some(s) = self.sealer.take() {
            let mut last = Vec::new();
            s.finish(&mut last)?;
            self.send(last).await?;
        }
        if let Some(up) = self.upload.take() {
            up.finish().await.map_err(ArchiveError::store(
                "complete multipart upload of",
                &self.path,
            ))?;
        }
        let sha = hex(&self.sha.finalize());
        Ok((self.size, self.stored, sha, self.watch))
    }

    async fn abort(mut self) {
        if let Some(up) = self.upload.take() {
            let _ = up.abort().await;
        }
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes (or checks) the archive's identity, so that a backup can go into an archive
/// that holds no WAL yet; returns the catalog of `system_id`.
async fn open_catalog(
    settings: &ArchiveSettings,
    system_id: u64,
    seg_size: u64,
) -> Result<Catalog> {
    let url = settings.url().ok_or_else(|| {
        BackupError::Config("archiving is disabled (archive.url = \"none\")".into())
    })?;
    let b = backend::open(&url, &settings.config)?;
    let path = Layout::new(&b.prefix, system_id).identity();
    let body = Bytes::from(Identity::new(system_id, seg_size).encode());
    if let Some(existing) = upload::create_or_existing(&b.store, &path, body).await? {
        match Identity::decode(&existing) {
            Some(i) if i.system_id() == Some(system_id) && i.wal_segment_size == seg_size => {}
            Some(i) => {
                return Err(ArchiveError::IdentityMismatch {
                    found: i.system_id().unwrap_or(0),
                    found_seg_size: i.wal_segment_size,
                    expected: system_id,
                    expected_seg_size: seg_size,
                }
                .into())
            }
            None => {
                return Err(ArchiveError::Corrupt {
                    path: path.to_string(),
                    reason: "not an archive identity".into(),
                }
                .into())
            }
        }
    }
    let mut s = settings.clone();
    s.config.system_id = Some(system_id);
    Ok(Catalog::from_reader(ArchiveReader::open(&s).await?))
}

/// Deletes everything under a backup's directory (a failed backup: it has no backup.json).
async fn remove_dir(store: &Arc<dyn ObjectStore>, dir: &ObjPath) {
    let mut objects = Vec::new();
    let mut s = store.list(Some(dir));
    while let Some(Ok(m)) = s.next().await {
        objects.push(m.location);
    }
    drop(s);
    for o in objects {
        if let Err(e) = store.delete(&o).await {
            tracing::warn!("backup: could not delete \"{o}\" of the failed backup: {e}");
        }
    }
}

/// Takes a base backup into the archive and records it. Does not wait for its WAL.
pub async fn take(opts: &TakeOptions) -> Result<BackupMeta> {
    let mut conn = ReplConnection::connect(&opts.conninfo).await?;
    // a spread checkpoint may take as long as checkpoint_timeout allows: no reply timeout
    // then (TCP keepalives still notice a dead server), as pg_basebackup
    conn.set_reply_timeout(opts.fast_checkpoint.then_some(Duration::from_secs(600)));
    let ident = conn.identify_system().await?;
    let seg_size = conn.wal_segment_size().await?;
    let version = conn.server_version_num();
    let cat = open_catalog(&opts.settings, ident.systemid, seg_size).await?;
    let store = cat.reader().object_store().clone();
    let started = chrono::Utc::now();
    let id = catalog::id_for(started);
    let dir = cat.backups_dir().child(id.as_str());
    {
        let mut s = store.list(Some(&dir));
        if let Some(item) = s.next().await {
            item.map_err(ArchiveError::store("list", &dir))?;
            return Err(BackupError::Exists { id });
        }
    }
    let r = stream_backup(&mut conn, opts, &cat, &id, version, seg_size, started).await;
    match r {
        Ok(meta) => {
            conn.close().await;
            Ok(meta)
        }
        Err(e) => {
            remove_dir(&store, &dir).await;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_backup(
    conn: &mut ReplConnection,
    opts: &TakeOptions,
    cat: &Catalog,
    id: &str,
    version: u32,
    seg_size: u64,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<BackupMeta> {
    let store = cat.reader().object_store().clone();
    let compression = opts.settings.config.compression;
    let bb_opts = BaseBackupOptions {
        label: opts.label.clone(),
        fast_checkpoint: opts.fast_checkpoint,
        manifest: true,
    };
    let (start, mut bb) = conn.base_backup(&bb_opts).await?;
    let unterminated = bb.unterminated_tar();
    tracing::info!(
        "backup {id}: started at {} on timeline {}, {} tablespace(s)",
        start.start_lsn,
        start.timeline,
        start.tablespaces.len()
    );
    // (name, location, writer) of the archive being received; None for the manifest
    enum Current {
        Nothing,
        Archive(String, Option<String>, ObjectWriter),
        Manifest(ObjectWriter),
    }
    let mut current = Current::Nothing;
    let mut archives: Vec<ArchiveEntry> = Vec::new();
    let mut manifest: Option<ManifestEntry> = None;
    let mut label_file: Option<Vec<u8>> = None;
    let mut map_file: Option<Vec<u8>> = None;
    let result: Result<(crate::Lsn, crate::TimelineId)> = async {
        loop {
            let ev = bb.next().await?;
            let next = match &ev {
                BaseBackupEvent::Archive { name, location } => {
                    if !valid_archive_name(name) {
                        return Err(BackupError::Protocol(format!("archive name \"{name}\"")));
                    }
                    let again = archives.iter().any(|a| &a.name == name)
                        || matches!(&current, Current::Archive(n, _, _) if n == name);
                    if again {
                        return Err(BackupError::Protocol(format!(
                            "archive \"{name}\" sent twice"
                        )));
                    }
                    let object = object_file(name, compression);
                    let w = ObjectWriter::create(
                        &store,
                        cat.object_path(id, &object),
                        &opts.settings,
                        name == "base.tar",
                    )
                    .await?;
                    Some(Current::Archive(name.clone(), location.clone(), w))
                }
                BaseBackupEvent::Manifest => {
                    if manifest.is_some() || matches!(current, Current::Manifest(_)) {
                        return Err(BackupError::Protocol("the manifest sent twice".into()));
                    }
                    let object = object_file(MANIFEST_FILE, compression);
                    let w = ObjectWriter::create(
                        &store,
                        cat.object_path(id, &object),
                        &opts.settings,
                        false,
                    )
                    .await?;
                    Some(Current::Manifest(w))
                }
                BaseBackupEvent::End { .. } => Some(Current::Nothing),
                _ => None,
            };
            if let Some(next) = next {
                // the previous archive is complete
                match std::mem::replace(&mut current, next) {
                    Current::Nothing => {}
                    Current::Archive(name, location, mut w) => {
                        if unterminated {
                            w.write(&TAR_END).await?;
                        }
                        let object = object_file(&name, compression);
                        let (size, stored_size, sha256, watch) = w.finish().await?;
                        if let Some(watch) = watch {
                            if let Some(e) = &watch.error {
                                return Err(BackupError::Protocol(format!("base.tar: {e}")));
                            }
                            label_file = watch.file("backup_label").map(<[u8]>::to_vec);
                            map_file = watch.file("tablespace_map").map(<[u8]>::to_vec);
                        }
                        let tablespace_oid = name.strip_suffix(".tar").and_then(|o| o.parse().ok());
                        tracing::info!(
                            "backup {id}: {name} stored, {size} bytes ({stored_size} stored)"
                        );
                        archives.push(ArchiveEntry {
                            name,
                            object,
                            tablespace_oid,
                            location,
                            size,
                            stored_size,
                            sha256,
                        });
                    }
                    Current::Manifest(w) => {
                        let (size, _, sha256, _) = w.finish().await?;
                        manifest = Some(ManifestEntry {
                            object: object_file(MANIFEST_FILE, compression),
                            size,
                            sha256,
                        });
                    }
                }
            }
            match ev {
                BaseBackupEvent::Data(d) => match &mut current {
                    Current::Archive(_, _, w) | Current::Manifest(w) => w.write(&d).await?,
                    Current::Nothing => {
                        return Err(BackupError::Protocol("data before any archive".into()))
                    }
                },
                BaseBackupEvent::Progress(n) => tracing::debug!("backup {id}: {n} bytes sent"),
                BaseBackupEvent::End { stop_lsn, timeline } => return Ok((stop_lsn, timeline)),
                _ => {}
            }
        }
    }
    .await;
    let (stop_lsn, stop_timeline) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Current::Archive(_, _, w) | Current::Manifest(w) = current {
                w.abort().await;
            }
            return Err(e);
        }
    };
    let stopped = chrono::Utc::now();
    let backup_label =
        label_file.ok_or_else(|| BackupError::Protocol("base.tar holds no backup_label".into()))?;
    let backup_label = String::from_utf8_lossy(&backup_label).into_owned();
    let meta = BackupMeta {
        format: catalog::FORMAT,
        id: id.to_string(),
        label: opts.label.clone(),
        system_id: cat.system_id().to_string(),
        timeline: start.timeline,
        start_lsn: start.start_lsn.to_string(),
        stop_lsn: stop_lsn.to_string(),
        stop_timeline,
        start_time: rfc3339(started),
        stop_time: rfc3339(stopped),
        server_version: version,
        wal_segment_size: seg_size,
        compression: layout::compression_name(compression).to_string(),
        encrypted: opts.settings.config.encryption_key.is_some(),
        backup_label,
        tablespace_map: map_file.map(|m| String::from_utf8_lossy(&m).into_owned()),
        archives,
        manifest,
    };
    // the checks a reader makes
    BackupMeta::decode(&meta.encode(), id, cat.system_id())?;
    let path = cat.object_path(id, META_FILE);
    let plain = meta.encode();
    let body = match opts.settings.config.encryption_key.as_ref() {
        Some(k) => crypt::encrypt(k, &plain, path.as_ref())?,
        None => plain,
    };
    if !upload::create_if_absent(&store, &path, Bytes::from(body), "write").await? {
        return Err(BackupError::Exists { id: id.to_string() });
    }
    tracing::info!(
        "backup {id}: complete on the server, {} to {} (timeline {}), {} bytes",
        meta.start_lsn,
        meta.stop_lsn,
        meta.stop_timeline,
        meta.size()
    );
    Ok(meta)
}

fn valid_archive_name(name: &str) -> bool {
    name == "base.tar"
        || name
            .strip_suffix(".tar")
            .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
}

/// Waits up to `wait` for the archive to hold the backup's WAL; the last status seen.
pub async fn wait_for_wal(
    cat: &Catalog,
    meta: &BackupMeta,
    wait: Duration,
) -> Result<BackupStatus> {
    let deadline = Instant::now() + wait;
    // one listing for what is missing, then a HEAD per missing file (oldest first)
    let mut missing = match catalog::status(cat, meta).await? {
        BackupStatus::Complete => return Ok(BackupStatus::Complete),
        BackupStatus::Incomplete { missing } => missing,
    };
    let mut pause = Duration::from_millis(500);
    loop {
        let mut still = Vec::with_capacity(missing.len());
        for name in missing {
            if !still.is_empty() || !catalog::wal_present(cat, &name).await? {
                still.push(name);
            }
        }
        missing = still;
        if missing.is_empty() {
            // confirm with the full rule (history files, timeline switch)
            return catalog::status(cat, meta).await;
        }
        if Instant::now() >= deadline {
            return Ok(BackupStatus::Incomplete { missing });
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Takes a backup and records the metrics of `run`'s schedule and the CLI.
pub async fn take_recorded(opts: &TakeOptions) -> Result<BackupMeta> {
    let t0 = Instant::now();
    match take(opts).await {
        Ok(m) => {
            metrics::counter!(super::TAKEN).increment(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!(super::LAST_SUCCESS).set(now.as_secs_f64());
            metrics::gauge!(super::LAST_DURATION).set(t0.elapsed().as_secs_f64());
            metrics::gauge!(super::LAST_SIZE).set(m.size() as f64);
            Ok(m)
        }
        Err(e) => {
            metrics::counter!(super::FAILED).increment(1);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        assert!(valid_archive_name("base.tar"));
        assert!(valid_archive_name("16384.tar"));
        assert!(!valid_archive_name("../x.tar"));
        assert!(!valid_archive_name(".tar"));
        assert!(!valid_archive_name("base.tar.gz"));
    }

    /// The object pipeline (compression, encryption, multipart) reads back through the
    /// catalog reader with the same bytes, and a wrong hash is refused at the end.
    #[tokio::test]
    async fn objects_round_trip_through_the_catalog() {
        use object_store::memory::InMemory;
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = crypt::Key::from_bytes([4u8; 32], std::path::Path::new("/k"));
        for (c, k) in [
            (Compression::Zstd, Some(key.clone())),
            (Compression::None, None),
            (Compression::Zstd, None),
        ] {
            let mut settings =
                ArchiveSettings::new(crate::config::ArchiveConfig::default(), d.path());
            settings.config.compression = c;
            settings.config.encryption_key = k.clone();
            settings.config.url = Some("memory:///".into());
            let data: Vec<u8> = (0..3_000_000u32)
                .map(|i| (i % 7 + i / 100_000) as u8)
                .collect();
            let path = ObjPath::from(format!(
                "p/1/backups/20260101T000000Z/{}",
                object_file("base.tar", c)
            ));
            let mut w = ObjectWriter::create(&store, path.clone(), &settings, false)
                .await
                .unwrap();
            for p in data.chunks(32 * 1024 + 1) {
                w.write(p).await.unwrap();
            }
            let (size, stored, sha, _) = w.finish().await.unwrap();
            assert_eq!(size, data.len() as u64);
            let raw = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(raw.len() as u64, stored);
            assert_eq!(crypt::is_encrypted(&raw), k.is_some());
            if k.is_some() || c == Compression::Zstd {
                assert_ne!(raw.get(..1000), data.get(..1000));
            }
            let stored_plain = crypt::open_stored(k.as_ref(), raw, path.as_ref()).unwrap();
            let tar = layout::decompress(stored_plain, c, data.len() * 2, &path).unwrap();
            assert_eq!(tar.as_ref(), data.as_slice());
            assert_eq!(sha, layout::sha256_hex(&data));
        }
    }
}

//! The backup catalog: what `backup.json` says, which backups the archive holds, whether
//! each is complete, and reading a backup's archives back.
//!
//! ```text
//! <prefix>/<system id>/backups/<ID>/base.tar[.zst]        the server's archives, verbatim tar
//! <prefix>/<system id>/backups/<ID>/<tsoid>.tar[.zst]     (compressed as the archive's WAL is)
//! <prefix>/<system id>/backups/<ID>/backup_manifest[.zst] the server's manifest verbatim
//! <prefix>/<system id>/backups/<ID>/backup.json           written last, create-if-absent
//! ```
//!
//! A backup without `backup.json` is not listed (being taken, or abandoned). A listed backup
//! is complete once the archive holds every WAL segment from its start LSN's segment to its
//! stop LSN's on its timeline(s), and the history files of its timelines above 1.
//!
//! Owns: the metadata type and its strict decoding, listing, completeness, and the readers
//! ([`open_archive`], [`open_manifest`]) that decrypt, decompress and check size and SHA-256
//! at the end. Must not: write or delete anything.

// Parses outside input (backup.json and objects from the archive).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BackupError, Result};
use crate::archive::layout::{self, hex};
use crate::archive::{crypt, ArchiveReader, ArchiveSettings};
use crate::config::Compression;
use crate::lsn::{history_file_name, segment_file_name, Lsn, TimelineId};
use crate::wal::history::{self, HistoryEntry};

/// Version of `backup.json`.
pub const FORMAT: u32 = 1;
/// The metadata object, written last.
pub const META_FILE: &str = "backup.json";
/// The manifest object's base name.
pub const MANIFEST_FILE: &str = "backup_manifest";

/// One archive (tablespace) of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveEntry {
    /// `base.tar` or `<oid>.tar`.
    pub name: String,
    /// Object name relative to the backup's directory (`base.tar.zst`).
    pub object: String,
    pub tablespace_oid: Option<u32>,
    /// The tablespace's directory on the server.
    pub location: Option<String>,
    /// Tar bytes.
    pub size: u64,
    /// Bytes of the object as stored (compressed, encrypted).
    pub stored_size: u64,
    /// SHA-256 (hex) of the tar bytes.
    pub sha256: String,
}

/// The stored backup manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub object: String,
    pub size: u64,
    pub sha256: String,
}

/// `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupMeta {
    pub format: u32,
    /// UTC start time `YYYYMMDDTHHMMSSZ`, also the directory name.
    pub id: String,
    pub label: String,
    /// Decimal, as in `archive.json`.
    pub system_id: String,
    pub timeline: TimelineId,
    /// `X/X`.
    pub start_lsn: String,
    pub stop_lsn: String,
    pub stop_timeline: TimelineId,
    /// RFC 3339.
    pub start_time: String,
    pub stop_time: String,
    /// `server_version_num`, e.g. 150018.
    pub server_version: u32,
    pub wal_segment_size: u64,
    /// `zstd` or `none`.
    pub compression: String,
    pub encrypted: bool,
    /// The `backup_label` file of the base archive.
    pub backup_label: String,
    /// The `tablespace_map` file, when the backup has one.
    pub tablespace_map: Option<String>,
    pub archives: Vec<ArchiveEntry>,
    pub manifest: Option<ManifestEntry>,
}

impl BackupMeta {
    pub fn start(&self) -> Lsn {
        self.start_lsn.parse().unwrap_or_default()
    }
    pub fn stop(&self) -> Lsn {
        self.stop_lsn.parse().unwrap_or_default()
    }
    /// Tar bytes of all archives.
    pub fn size(&self) -> u64 {
        self.archives
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.size))
    }
    pub fn stored_size(&self) -> u64 {
        self.archives
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.stored_size))
    }
    pub fn compression(&self) -> Compression {
        if self.compression == "zstd" {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Strict decoding, checked against the directory it was found in.
    pub fn decode(bytes: &[u8], dir_id: &str, system_id: u64) -> Result<BackupMeta> {
        let bad = |reason: String| BackupError::BadMeta {
            id: dir_id.to_string(),
            reason,
        };
        let m: BackupMeta = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != FORMAT {
            return Err(bad(format!(
                "format {} (this walrelay reads {FORMAT})",
                m.format
            )));
        }
        if m.id != dir_id {
            return Err(bad(format!("it names backup {}", m.id)));
        }
        if m.system_id != system_id.to_string() {
            return Err(bad(format!("it names system {}", m.system_id)));
        }
        if !valid_id(&m.id) {
            return Err(bad(format!("invalid id \"{}\"", m.id)));
        }
        for (what, v) in [("start_lsn", &m.start_lsn), ("stop_lsn", &m.stop_lsn)] {
            v.parse::<Lsn>()
                .map_err(|_| bad(format!("invalid {what} \"{v}\"")))?;
        }
        if m.stop() < m.start() {
            return Err(bad("stop_lsn is before start_lsn".into()));
        }
        if !crate::lsn::valid_segment_size(m.wal_segment_size) {
            return Err(bad(format!("invalid segment size {}", m.wal_segment_size)));
        }
        if m.timeline == 0 || m.stop_timeline < m.timeline {
            return Err(bad("invalid timelines".into()));
        }
        if !matches!(m.compression.as_str(), "zstd" | "none") {
            return Err(bad(format!("unknown compression \"{}\"", m.compression)));
        }
        if !m.archives.iter().any(|a| a.name == "base.tar") {
            return Err(bad("no base.tar archive".into()));
        }
        let objects = m
            .archives
            .iter()
            .map(|a| &a.object)
            .chain(m.manifest.as_ref().map(|x| &x.object));
        for o in objects {
            if o.is_empty() || o.contains('/') || o == META_FILE || o.starts_with('.') {
                return Err(bad(format!("invalid object name \"{o}\"")));
            }
        }
        Ok(m)
    }
}

/// Whether `id` has the shape `YYYYMMDDTHHMMSSZ`.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 16
        && b.iter().enumerate().all(|(i, c)| match i {
            8 => *c == b'T',
            15 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// A backup's ID for a start time.
pub fn id_for(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Whether the archive holds all WAL a backup needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum BackupStatus {
    Complete,
    /// `missing`: WAL file names (segments, then history files), oldest first.
    Incomplete {
        missing: Vec<String>,
    },
}

impl BackupStatus {
    pub fn is_complete(&self) -> bool {
        matches!(self, BackupStatus::Complete)
    }
}

/// The archive of one system, opened for its backups.
#[derive(Clone)]
pub struct Catalog {
    reader: ArchiveReader,
}

impl Catalog {
    /// Opens the archive of `settings` (it must hold the system's identity).
    pub async fn open(settings: &ArchiveSettings) -> Result<Catalog> {
        Ok(Catalog {
            reader: ArchiveReader::open(settings).await?,
        })
    }
    pub fn from_reader(reader: ArchiveReader) -> Catalog {
        Catalog { reader }
    }
    pub fn reader(&self) -> &ArchiveReader {
        &self.reader
    }
    pub fn system_id(&self) -> u64 {
        self.reader.system_id()
    }
    /// `<prefix>/<system id>/backups`.
    pub fn backups_dir(&self) -> ObjPath {
        backups_dir(self.reader.layout().root())
    }
    /// `<prefix>/<system id>/backups/<id>/<file>`.
    pub fn object_path(&self, id: &str, file: &str) -> ObjPath {
        self.backups_dir().child(id).child(file)
    }
    fn key(&self) -> Option<&crypt::Key> {
        self.reader.key()
    }
}

/// `<root>/backups` for a system's root `<prefix>/<system id>`.
pub fn backups_dir(root: &ObjPath) -> ObjPath {
    root.child("backups")
}

/// The object file name of an archive or manifest `name` under `c`.
pub fn object_file(name: &str, c: Compression) -> String {
    match c {
        Compression::None => name.to_string(),
        Compression::Zstd => format!("{name}.zst"),
    }
}

/// The IDs of backup directories (with or without `backup.json`), oldest first.
pub async fn list_ids(cat: &Catalog) -> Result<Vec<String>> {
    let dir = cat.backups_dir();
    let listing = cat
        .reader
        .object_store()
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(crate::archive::ArchiveError::store("list", &dir))?;
    let mut ids: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|id| valid_id(id))
        .collect();
    ids.sort();
    Ok(ids)
}

/// `backup.json` of backup `id`; `None` when it has none (being taken, or abandoned).
pub async fn read_meta(cat: &Catalog, id: &str) -> Result<Option<BackupMeta>> {
    let path = cat.object_path(id, META_FILE);
    let Some(stored) = crate::archive::reader::get_opt(cat.reader.object_store(), &path).await?
    else {
        return Ok(None);
    };
    let plain = crypt::open_stored(cat.key(), stored, path.as_ref())?;
    BackupMeta::decode(&plain, id, cat.system_id()).map(Some)
}

/// The listing with the alarm: backups missing WAL that the archive should hold by now.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Oldest first.
    pub backups: Vec<(BackupMeta, BackupStatus)>,
    /// IDs of incomplete backups with a missing segment older than the newest archived
    /// segment of its timeline or a later one: a hole, not WAL still to come.
    pub alarms: Vec<String>,
}

/// Every backup with `backup.json`, oldest first, with its status.
pub async fn list(cat: &Catalog) -> Result<Vec<(BackupMeta, BackupStatus)>> {
    Ok(list_with_alarms(cat).await?.backups)
}

/// [`list`], and which backups are an alarm.
pub async fn list_with_alarms(cat: &Catalog) -> Result<Listing> {
    let ids = list_ids(cat).await?;
    let mut metas = Vec::new();
    for id in &ids {
        match read_meta(cat, id).await? {
            Some(m) => metas.push(m),
            None => tracing::debug!("backup {id} has no {META_FILE} (being taken, or abandoned)"),
        }
    }
    let wal = WalIndex::load(cat).await?;
    let mut out = Listing::default();
    for m in metas {
        let status = status_with(cat, &m, &wal).await?;
        if let BackupStatus::Incomplete { missing } = &status {
            if wal.is_hole(missing, cat.reader.wal_segment_size()) {
                out.alarms.push(m.id.clone());
            }
        }
        out.backups.push((m, status));
    }
    metrics::gauge!(super::MISSING_WAL).set(out.alarms.len() as f64);
    Ok(out)
}

/// Backup `which` (`latest`: the newest complete one; else an ID) with its status.
pub async fn find(cat: &Catalog, which: &str) -> Result<(BackupMeta, BackupStatus)> {
    if which == "latest" {
        let all = list(cat).await?;
        let incomplete = all.iter().filter(|(_, s)| !s.is_complete()).count();
        return all
            .into_iter()
            .rev()
            .find(|(_, s)| s.is_complete())
            .ok_or_else(|| {
                BackupError::NoComplete(format!(
                    "the archive holds no complete backup ({incomplete} incomplete)"
                ))
            });
    }
    let meta = read_meta(cat, which)
        .await?
        .ok_or_else(|| BackupError::NotFound(which.to_string()))?;
    let wal = WalIndex::load(cat).await?;
    let status = status_with(cat, &meta, &wal).await?;
    Ok((meta, status))
}

/// The status of one backup.
pub async fn status(cat: &Catalog, meta: &BackupMeta) -> Result<BackupStatus> {
    let wal = WalIndex::load(cat).await?;
    status_with(cat, meta, &wal).await
}

/// Whether the archive's `wal/` holds WAL file `name` (either compression): one HEAD each,
/// for checking a few names without listing the archive.
pub async fn wal_present(cat: &Catalog, name: &str) -> Result<bool> {
    for c in [Compression::None, Compression::Zstd] {
        let path = cat.reader.layout().wal_object(name, c);
        match cat.reader.object_store().head(&path).await {
            Ok(_) => return Ok(true),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(crate::archive::ArchiveError::store("check", &path)(e).into()),
        }
    }
    Ok(false)
}

/// The WAL file names in the archive's `wal/`.
struct WalIndex {
    names: BTreeSet<String>,
}

impl WalIndex {
    async fn load(cat: &Catalog) -> Result<WalIndex> {
        let dir = cat.reader.layout().wal_dir();
        let mut names = BTreeSet::new();
        let mut stream = cat.reader.object_store().list(Some(&dir));
        while let Some(item) = stream.next().await {
            let meta = item.map_err(crate::archive::ArchiveError::store("list", &dir))?;
            if let Some(file) = meta.location.filename() {
                names.insert(layout::strip_compression(file).0.to_string());
            }
        }
        Ok(WalIndex { names })
    }

    /// A missing segment below an archived segment of the same or a later timeline.
    fn is_hole(&self, missing: &[String], seg_size: u64) -> bool {
        use crate::lsn::{parse_wal_file_name, WalFileName};
        let newest = self
            .names
            .iter()
            .filter_map(|n| match parse_wal_file_name(n, seg_size) {
                Some(WalFileName::Segment {
                    tli,
                    segno,
                    partial: false,
                }) => Some((tli, segno)),
                _ => None,
            })
            .max_by_key(|&(_, s)| s);
        let Some((ntli, nseg)) = newest else {
            return false;
        };
        missing
            .iter()
            .any(|m| match parse_wal_file_name(m, seg_size) {
                Some(WalFileName::Segment { tli, segno, .. }) => segno < nseg && tli <= ntli,
                Some(WalFileName::History { tli }) => tli <= ntli,
                None => false,
            })
    }
}

async fn status_with(cat: &Catalog, meta: &BackupMeta, wal: &WalIndex) -> Result<BackupStatus> {
    let mut histories: HashMap<TimelineId, Vec<HistoryEntry>> = HashMap::new();
    if meta.stop_timeline != meta.timeline {
        if let Some(b) = cat.reader.fetch_history(meta.stop_timeline).await? {
            let name = history_file_name(meta.stop_timeline);
            if let Ok(entries) = history::validate_history(meta.stop_timeline, &name, &b) {
                histories.insert(meta.stop_timeline, entries);
            }
        }
    }
    let needed = required_wal(
        meta,
        cat.reader.wal_segment_size(),
        histories.get(&meta.stop_timeline).map(Vec::as_slice),
    );
    let missing: Vec<String> = needed
        .into_iter()
        .filter(|n| !wal.names.contains(n))
        .collect();
    Ok(if missing.is_empty() {
        BackupStatus::Complete
    } else {
        BackupStatus::Incomplete { missing }
    })
}

/// The WAL files a backup needs: segments from its start LSN's to its stop LSN's (the
/// segment holding the last byte before stop), each on the timeline PostgreSQL reads it from
/// (after a switch inside the backup, the segment of the switch point and later come from the
/// new timeline, per the stop timeline's `history`), then the history files of its timelines
/// above 1. Without the history a switch needs, its history file is the first thing missing
/// and the segments are counted on the start timeline up to the stop timeline's.
pub fn required_wal(
    meta: &BackupMeta,
    seg_size: u64,
    history: Option<&[HistoryEntry]>,
) -> Vec<String> {
    let start = meta.start();
    let stop = meta.stop();
    let first = start.segno(seg_size);
    let last = if stop > start {
        Lsn(stop.0.saturating_sub(1)).segno(seg_size)
    } else {
        first
    };
    let mut out = Vec::new();
    let mut tlis = BTreeSet::new();
    let mut segno = first;
    loop {
        let seg_last_byte = Lsn(segno
            .saturating_add(1)
            .saturating_mul(seg_size)
            .saturating_sub(1));
        let tli = if meta.stop_timeline == meta.timeline {
            meta.timeline
        } else {
            match history {
                Some(h) => {
                    history::tli_of_lsn(h, meta.stop_timeline, seg_last_byte).max(meta.timeline)
                }
                None => {
                    if segno == last {
                        meta.stop_timeline
                    } else {
                        meta.timeline
                    }
                }
            }
        };
        tlis.insert(tli);
        out.push(segment_file_name(tli, segno, seg_size));
        if segno >= last {
            break;
        }
        segno = segno.saturating_add(1);
    }
    tlis.insert(meta.timeline);
    tlis.insert(meta.stop_timeline);
    for t in tlis.into_iter().filter(|&t| t > 1) {
        out.push(history_file_name(t));
    }
    out
}

/// A backup archive or manifest, as plaintext bytes in order. Ends with an error instead of
/// the last bytes when the size or SHA-256 differ from `backup.json` (or the object fails to
/// decrypt or decompress): a consumer must treat everything read as unverified until the
/// stream ends with `None`.
pub struct BackupStream {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BackupStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for BackupStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl BackupStream {
    /// Collects the whole stream (for the manifest: small).
    pub async fn read_to_end(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = self.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }
}

/// A [`BackupStream`] as a [`tokio::io::AsyncRead`]; its errors come out as
/// `std::io::Error` (kind `InvalidData`) wrapping the [`BackupError`].
pub struct BackupReader {
    stream: BackupStream,
    chunk: Bytes,
}

impl BackupStream {
    pub fn into_async_read(self) -> BackupReader {
        BackupReader {
            stream: self,
            chunk: Bytes::new(),
        }
    }
}

impl tokio::io::AsyncRead for BackupReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.chunk.is_empty() {
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e,
                    )))
                }
                Poll::Ready(Some(Ok(b))) => self.chunk = b,
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        let part = self.chunk.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

/// Archive `name` (`base.tar`, `<oid>.tar`) of backup `meta`, decrypted and decompressed.
pub async fn open_archive(cat: &Catalog, meta: &BackupMeta, name: &str) -> Result<BackupStream> {
    let entry = meta
        .archives
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| BackupError::NoSuchArchive {
            id: meta.id.clone(),
            name: name.to_string(),
        })?;
    open_object(
        cat,
        meta,
        &entry.object,
        entry.size,
        &entry.sha256,
        Some(entry.stored_size),
    )
    .await
}

/// The backup manifest of `meta` (`None`: the backup has none, PG 12 and older).
pub async fn open_manifest(cat: &Catalog, meta: &BackupMeta) -> Result<Option<BackupStream>> {
    let Some(m) = &meta.manifest else {
        return Ok(None);
    };
    open_object(cat, meta, &m.object, m.size, &m.sha256, None)
        .await
        .map(Some)
}

/// Bytes of plaintext emitted at most per stream item while decompressing.
const OUT_CHUNK: usize = 256 * 1024;

async fn open_object(
    cat: &Catalog,
    meta: &BackupMeta,
    object: &str,
    size: u64,
    sha256: &str,
    stored_size: Option<u64>,
) -> Result<BackupStream> {
    let path = cat.object_path(&meta.id, object);
    let store = cat.reader.object_store().clone();
    let got = match store.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(BackupError::Mismatch {
                path: path.to_string(),
                reason: "the object is missing".into(),
            })
        }
        Err(e) => return Err(crate::archive::ArchiveError::store("read", &path)(e).into()),
    };
    let compressed = layout::strip_compression(object).1 == Compression::Zstd;
    let mut opener = crypt::StreamOpener::new(cat.key(), path.as_ref());
    let want_sha = sha256.to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
    let task = tokio::spawn(async move {
        let mut input = got.into_stream();
        let mut plain = Plain::new(compressed, &path, size, want_sha);
        let mut stored = 0u64;
        let mut buf = Vec::new();
        let r: Result<()> = async {
            while let Some(chunk) = input.next().await {
                let chunk = chunk.map_err(crate::archive::ArchiveError::store("read", &path))?;
                stored = stored.saturating_add(chunk.len() as u64);
                buf.clear();
                opener.push(&chunk, &mut buf)?;
                plain.feed(&buf, &tx).await?;
            }
            buf.clear();
            opener.finish(&mut buf)?;
            plain.feed(&buf, &tx).await?;
            if let Some(want) = stored_size.filter(|&w| w != stored) {
                return Err(
                    plain.mismatch(format!("{stored} bytes stored, backup.json says {want}"))
                );
            }
            plain.finish().await
        }
        .await;
        if let Err(e) = r {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(BackupStream { rx, task })
}

/// Decompression, size and hash of the plaintext.
struct Plain {
    dec: Option<zstd::stream::raw::Decoder<'static>>,
    /// The decoder's last hint: 0 once a frame ended.
    hint: usize,
    path: String,
    size: u64,
    seen: u64,
    sha: Sha256,
    want_sha: String,
}

impl Plain {
    fn new(compressed: bool, path: &ObjPath, size: u64, want_sha: String) -> Plain {
        Plain {
            dec: compressed
                .then(|| zstd::stream::raw::Decoder::new().ok())
                .flatten(),
            hint: 0,
            path: path.to_string(),
            size,
            seen: 0,
            sha: Sha256::new(),
            want_sha,
        }
    }

    fn mismatch(&self, reason: String) -> BackupError {
        BackupError::Mismatch {
            path: self.path.clone(),
            reason,
        }
    }

    async fn emit(
        &mut self,
        out: Vec<u8>,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes>>,
    ) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.seen = self.seen.saturating_add(out.len() as u64);
        if self.seen > self.size {
            return Err(self.mismatch(format!(
                "more than the {} bytes backup.json records",
                self.size
            )));
        }
        self.sha.update(&out);
        // the reader went away: stop quietly
        let _ = tx.send(Ok(Bytes::from(out))).await;
        Ok(())
    }

    async fn feed(
        &mut self,
        data: &[u8],
        tx: &tokio::sync::mpsc::Sender<Result<Bytes>>,
    ) -> Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if self.dec.is_none() {
            for piece in data.chunks(OUT_CHUNK) {
                self.emit(piece.to_vec(), tx).await?;
            }
            return Ok(());
        }
        if data.is_empty() {
            // a call without input after a frame's end would start a new frame's hint
            return Ok(());
        }
        let mut inb = InBuffer::around(data);
        loop {
            let before = inb.pos();
            let mut out = vec![0u8; OUT_CHUNK];
            let (n, hint) = {
                let Some(dec) = self.dec.as_mut() else {
                    return Ok(());
                };
                let mut outb = OutBuffer::around(&mut out[..]);
                let hint = dec
                    .run(&mut inb, &mut outb)
                    .map_err(|e| self.mismatch(format!("zstd: {e}")))?;
                (outb.pos(), hint)
            };
            if n > 0 || inb.pos() > before {
                self.hint = hint;
            }
            out.truncate(n);
            let full = n == OUT_CHUNK;
            self.emit(out, tx).await?;
            if inb.pos() >= data.len() && !full {
                return Ok(());
            }
        }
    }

    async fn finish(mut self) -> Result<()> {
        if self.dec.is_some() && self.hint != 0 {
            return Err(self.mismatch("the compressed object is truncated".into()));
        }
        if self.seen != self.size {
            return Err(self.mismatch(format!(
                "{} bytes, backup.json records {}",
                self.seen, self.size
            )));
        }
        let got = hex(&std::mem::take(&mut self.sha).finalize());
        if got != self.want_sha {
            return Err(self.mismatch(format!(
                "SHA-256 {got}, backup.json records {}",
                self.want_sha
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(start: &str, stop: &str, tli: u32, stop_tli: u32) -> BackupMeta {
        BackupMeta {
            format: FORMAT,
            id: "20260101T000000Z".into(),
            label: "l".into(),
            system_id: "7".into(),
            timeline: tli,
            start_lsn: start.into(),
            stop_lsn: stop.into(),
            stop_timeline: stop_tli,
            start_time: "2026-01-01T00:00:00Z".into(),
            stop_time: "2026-01-01T00:00:01Z".into(),
            server_version: 150018,
            wal_segment_size: 16 << 20,
            compression: "zstd".into(),
            encrypted: false,
            backup_label: "START WAL LOCATION: 0/2000028".into(),
            tablespace_map: None,
            archives: vec![ArchiveEntry {
                name: "base.tar".into(),
                object: "base.tar.zst".into(),
                tablespace_oid: None,
                location: None,
                size: 10,
                stored_size: 5,
                sha256: "x".into(),
            }],
            manifest: None,
        }
    }

    #[test]
    fn required_segments_and_histories() {
        let seg = 16u64 << 20;
        let m = meta("0/2000028", "0/4000100", 1, 1);
        assert_eq!(
            required_wal(&m, seg, None),
            vec![
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004"
            ]
        );
        // stop exactly at a segment boundary: the segment before it is the last
        let m = meta("0/2000028", "0/4000000", 2, 2);
        assert_eq!(
            required_wal(&m, seg, None),
            vec![
                "000000020000000000000002",
                "000000020000000000000003",
                "00000002.history"
            ]
        );
        // a switch to timeline 3 at 0/3800000: the switch segment comes from timeline 3
        let m = meta("0/2000028", "0/4000100", 2, 3);
        let h = history::parse_history("1\t0/1000000\tx\n2\t0/3800000\ty\n").unwrap();
        assert_eq!(
            required_wal(&m, seg, Some(&h)),
            vec![
                "000000020000000000000002",
                "000000030000000000000003",
                "000000030000000000000004",
                "00000002.history",
                "00000003.history"
            ]
        );
    }

    #[test]
    fn meta_decoding_is_strict() {
        let m = meta("0/2000028", "0/4000100", 1, 1);
        let b = m.encode();
        assert_eq!(BackupMeta::decode(&b, &m.id, 7).unwrap(), m);
        let e = BackupMeta::decode(&b, "20260101T000001Z", 7).unwrap_err();
        assert!(e.to_string().contains("it names backup"), "{e}");
        assert!(BackupMeta::decode(&b, &m.id, 8).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["extra"] = serde_json::json!(1);
        let e = BackupMeta::decode(&serde_json::to_vec(&v).unwrap(), &m.id, 7).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let mut bad = m.clone();
        bad.archives[0].object = "../x".into();
        assert!(BackupMeta::decode(&bad.encode(), &m.id, 7).is_err());
        let mut bad = m.clone();
        bad.stop_lsn = "0/1".into();
        assert!(BackupMeta::decode(&bad.encode(), &m.id, 7).is_err());
        assert!(BackupMeta::decode(b"\xff{", &m.id, 7).is_err());
        assert!(valid_id("20261202T010203Z"));
        assert!(!valid_id("20261202T010203"));
        assert!(!valid_id("2026120xT010203Z"));
    }
}

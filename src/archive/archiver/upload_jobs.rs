//! The archiver's upload jobs: one completed segment, history file or snapshot of the open
//! segment each, from the store's tail or the local file to the object store, create-if-absent
//! and retried, then its manifest. A `file://` archive storing objects as they are takes the
//! streamed copy (`super::super::local_copy`); every other archive a prepared payload
//! (hashed once, compressed and sealed as configured, from pooled buffers).
//!
//! Owns: preparing payloads (`prepare_file`, `prepare_bytes`), storing them and their
//! manifests, and cleaning up superseded snapshots. Must not: decide which jobs run or
//! publish `archived_lsn` (the archiver's run loop does), or write local WAL files.

use super::*;

/// A WAL file ready for upload: its size and SHA-256, and the bytes to store (the file's own
/// bytes — in one pooled buffer, or in the store tail's buffers — or their compressed form).
pub(crate) struct Prepared {
    pub raw_len: u64,
    pub sha256: String,
    pub stored: PutPayload,
}

/// The `len` bytes of timeline `tli` from `start` as the tail's own buffers (no copy), if the
/// tail holds all of them.
pub(super) fn from_tail(tail: &Tail, tli: TimelineId, start: Lsn, len: u64) -> Option<Vec<Bytes>> {
    let end = Lsn(start.0.checked_add(len)?);
    let mut at = start;
    let mut out = Vec::new();
    while at < end {
        let want = usize::try_from(end.0.saturating_sub(at.0)).unwrap_or(usize::MAX);
        let b = tail.get(tli, at, end, want)?;
        at = Lsn(at.0.saturating_add(b.len() as u64));
        out.push(b);
    }
    Some(out)
}

/// Piece size for reading a segment: each piece is hashed while it is still in the CPU cache.
pub(super) const READ_PIECE: u64 = 1 << 20;

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArchiveError::Config(format!("hashing task failed: {e}")))?
}

/// Reads the first `len` bytes of the local file `path` (a segment: `exact`, the file must
/// hold exactly `len` bytes; a snapshot: at least `len`) into one of the context's buffers,
/// hashing as it reads, then compresses (and seals as `object`) them; off the async threads.
/// With compression the read buffer goes back to the pool once compressed: an upload holds
/// one buffer.
pub(super) async fn prepare_file(
    ctx: &Arc<Ctx>,
    path: PathBuf,
    len: u64,
    exact: bool,
    object: ObjPath,
    in_tail: Option<(TimelineId, Lsn)>,
) -> Result<Prepared, ArchiveError> {
    let pool = ctx.buffers.clone();
    let (compression, level) = (ctx.compression, ctx.level);
    let key = ctx.policy.key.clone();
    let tail = ctx.tail.clone();
    blocking(move || {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        // A segment the store wrote recently: the tail holds exactly the bytes it wrote to
        // the file (walsenders serve them from there too).
        if let Some(chunks) = tail
            .as_deref()
            .zip(in_tail)
            .and_then(|(t, (tli, start))| from_tail(t, tli, start, len))
        {
            let mut hasher = Sha256::new();
            for c in &chunks {
                hasher.update(c);
            }
            let sha256 = layout::hex(&hasher.finalize());
            metrics::counter!(crate::archive::FROM_TAIL_BYTES).increment(len);
            let stored = match (compression, key.as_ref()) {
                (Compression::None, None) => chunks.into_iter().collect(),
                _ => {
                    let mut raw = pool.get();
                    for c in &chunks {
                        raw.extend_from_slice(c);
                    }
                    drop(chunks);
                    finish_prepared(&pool, raw, compression, level, key.as_ref(), &object)?
                }
            };
            return Ok(Prepared {
                raw_len: len,
                sha256,
                stored,
            });
        }
        let short = crate::archive::local_copy::short;
        let mut file = std::fs::File::open(&path).map_err(ArchiveError::io("read", &path))?;
        crate::archive::local_copy::check_size(&file, &path, len, exact)?;
        let mut raw = pool.get();
        raw.reserve_exact(usize::try_from(len).unwrap_or(usize::MAX));
        let mut hasher = Sha256::new();
        let mut rest = (&mut file).take(len);
        loop {
            let start = raw.len();
            let n = (&mut rest)
                .take(READ_PIECE)
                .read_to_end(&mut raw)
                .map_err(ArchiveError::io("read", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&raw[start..]);
        }
        if raw.len() as u64 != len {
            pool.put(raw);
            return Err(short(&path));
        }
        let sha256 = layout::hex(&hasher.finalize());
        let stored = finish_prepared(&pool, raw, compression, level, key.as_ref(), &object)?;
        Ok(Prepared {
            raw_len: len,
            sha256,
            stored,
        })
    })
    .await
}

/// The object to store for the WAL in `raw` (a pooled buffer): `raw` itself, or compressed
/// into another pooled buffer (`raw` goes back to the pool), then sealed with `key`.
pub(super) fn finish_prepared(
    pool: &BufferPool,
    raw: Vec<u8>,
    compression: Compression,
    level: i32,
    key: Option<&crate::archive::crypt::Key>,
    object: &ObjPath,
) -> Result<PutPayload, ArchiveError> {
    let stored = match compression {
        Compression::None => pool.freeze(raw),
        c => {
            let r = compress_pooled(pool, &raw, c, level);
            pool.put(raw);
            r?
        }
    };
    Ok(PutPayload::from_bytes(seal(key, stored, object)?))
}

/// `stored` encrypted with `key`, if any, as the object `object`.
pub(super) fn seal(
    key: Option<&crate::archive::crypt::Key>,
    stored: Bytes,
    object: &ObjPath,
) -> Result<Bytes, ArchiveError> {
    match key {
        Some(k) => crate::archive::crypt::encrypt(k, &stored, object.as_ref()).map(Bytes::from),
        None => Ok(stored),
    }
}

/// The manifest's `encryption` for objects written with `key`.
pub(super) fn encryption_of(key: Option<&crate::archive::crypt::Key>) -> Option<String> {
    key.map(|k| format!("{}:{}", crate::archive::crypt::ALGORITHM, k.id_hex()))
}

/// `data` compressed into one of `pool`'s buffers.
pub(super) fn compress_pooled(
    pool: &BufferPool,
    data: &[u8],
    c: Compression,
    level: i32,
) -> Result<Bytes, ArchiveError> {
    let mut out = pool.get();
    match layout::compress_into(data, c, level, &mut out) {
        Ok(()) => Ok(pool.freeze(out)),
        Err(e) => {
            pool.put(out);
            Err(e)
        }
    }
}

/// In-memory WAL (`walrelay bench-archive`) prepared as [`prepare_file`] prepares a file:
/// hashed, and compressed into one of the context's buffers (sealed as segment `segno`).
pub(crate) async fn prepare_bytes(
    ctx: &Arc<Ctx>,
    raw: Bytes,
    tli: TimelineId,
    segno: u64,
) -> Result<Prepared, ArchiveError> {
    let object = ctx
        .layout
        .segment(tli, segno, ctx.seg_size, ctx.compression);
    let pool = ctx.buffers.clone();
    let (compression, level) = (ctx.compression, ctx.level);
    let key = ctx.policy.key.clone();
    blocking(move || {
        let sha256 = sha256_hex(&raw);
        let stored = match compression {
            Compression::None => raw.clone(),
            c => compress_pooled(&pool, &raw, c, level)?,
        };
        let stored = PutPayload::from_bytes(seal(key.as_ref(), stored, &object)?);
        Ok(Prepared {
            raw_len: raw.len() as u64,
            sha256,
            stored,
        })
    })
    .await
}

pub(super) async fn upload_segment(
    ctx: &Arc<Ctx>,
    tli: TimelineId,
    segno: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<PutOutcome, ArchiveError> {
    let name = segment_file_name(tli, segno, ctx.seg_size);
    let object = ctx.layout.wal_object(&name, ctx.compression);
    let start = Lsn(segno.saturating_mul(ctx.seg_size));
    if ctx.local.is_some() {
        let in_tail = ctx.in_tail(tli, start);
        let outcome = copy_segment(ctx, tli, segno, ctx.dir.join(&name), in_tail, shutdown).await?;
        if outcome == PutOutcome::AlreadyPresent {
            tracing::info!("archive: {name} was already archived with the same content");
        }
        cleanup_snapshots(ctx, &name, None).await;
        return Ok(outcome);
    }
    let prepared = prepare_file(
        ctx,
        ctx.dir.join(&name),
        ctx.seg_size,
        true,
        object,
        Some((tli, start)),
    )
    .await?;
    let outcome = store_segment(ctx, tli, segno, prepared, shutdown).await?;
    if outcome == PutOutcome::AlreadyPresent {
        tracing::info!("archive: {name} was already archived with the same content");
    }
    cleanup_snapshots(ctx, &name, None).await;
    Ok(outcome)
}

/// One streamed copy into a `file://` archive ([`crate::archive::local_copy::copy_create`]).
pub(super) struct StreamedCopy {
    fs: crate::archive::durable_fs::DurableFs,
    len: u64,
    exact: bool,
    object: ObjPath,
    in_tail: Option<crate::archive::local_copy::InTail>,
}

/// Opens the first of `paths` once, outside the retries (see `local_copy::Source`), then
/// runs `copy` on it, retried as an upload is (`what` names it in messages).
async fn copy_retried(
    ctx: &Arc<Ctx>,
    paths: Vec<PathBuf>,
    copy: StreamedCopy,
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<crate::archive::local_copy::Copied, ArchiveError> {
    use crate::archive::local_copy::{copy_create, Source};
    let src = Arc::new(blocking(move || Source::open_first(&paths)).await?);
    let copy = Arc::new(copy);
    upload::retry(&ctx.policy, shutdown, what, || {
        let (src, c) = (src.clone(), copy.clone());
        blocking(move || copy_create(&c.fs, &src, c.len, c.exact, &c.object, c.in_tail.as_ref()))
    })
    .await
}

/// Stores segment `segno` of a `file://` archive storing objects as they are
/// ([`Ctx::local`]) by a streamed copy of `src` (pieces the tail still holds taken from it),
/// retried as an upload is, then its manifest.
pub(crate) async fn copy_segment(
    ctx: &Arc<Ctx>,
    tli: TimelineId,
    segno: u64,
    src: PathBuf,
    in_tail: Option<crate::archive::local_copy::InTail>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<PutOutcome, ArchiveError> {
    let Some(fs) = ctx.local.clone() else {
        return Err(ArchiveError::Config(
            "a streamed copy needs an uncompressed, unencrypted file:// archive".into(),
        ));
    };
    let name = segment_file_name(tli, segno, ctx.seg_size);
    let object = ctx.layout.wal_object(&name, ctx.compression);
    let len = ctx.seg_size;
    let what = format!("upload of {name}");
    let copy = StreamedCopy {
        fs,
        len,
        exact: true,
        object,
        in_tail,
    };
    let copied = copy_retried(ctx, vec![src], copy, &what, shutdown).await?;
    put_segment_manifest(ctx, tli, segno, (len, len), copied.sha256, shutdown).await?;
    Ok(copied.outcome)
}

/// Stores a prepared segment: the object (create-if-absent, retried until it succeeds, a
/// conflict, or shutdown), then its manifest.
pub(crate) async fn store_segment(
    ctx: &Arc<Ctx>,
    tli: TimelineId,
    segno: u64,
    prepared: Prepared,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<PutOutcome, ArchiveError> {
    let name = segment_file_name(tli, segno, ctx.seg_size);
    let path = ctx.layout.wal_object(&name, ctx.compression);
    let max = ctx.seg_size as usize;
    let Prepared {
        raw_len,
        sha256,
        stored,
    } = prepared;
    let stored_size = stored.content_length() as u64;
    let outcome = upload::retry(&ctx.policy, shutdown, &format!("upload of {name}"), || {
        upload::put_create_payload(&ctx.store, &path, stored.clone(), &sha256, max, &ctx.policy)
    })
    .await?;
    // the buffer goes back to the pool before the manifest round trip
    drop(stored);
    put_segment_manifest(ctx, tli, segno, (raw_len, stored_size), sha256, shutdown).await?;
    Ok(outcome)
}

/// Records the manifest of segment `segno` once its object is stored: `sizes` are the WAL's
/// and the stored object's, `sha256` the WAL's.
pub(super) async fn put_segment_manifest(
    ctx: &Arc<Ctx>,
    tli: TimelineId,
    segno: u64,
    (raw_len, stored_size): (u64, u64),
    sha256: String,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ArchiveError> {
    let name = segment_file_name(tli, segno, ctx.seg_size);
    let start = Lsn(segno.saturating_mul(ctx.seg_size));
    let manifest = Manifest {
        name,
        timeline: tli,
        start_lsn: start.to_string(),
        end_lsn: Lsn(start.0.saturating_add(ctx.seg_size)).to_string(),
        size: raw_len,
        sha256,
        compression: compression_name(ctx.compression).into(),
        stored_size,
        encryption: encryption_of(ctx.policy.key.as_ref()),
    };
    put_manifest(ctx, &manifest, shutdown).await?;
    Ok(())
}

pub(super) async fn upload_history(
    ctx: &Arc<Ctx>,
    tli: TimelineId,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<PutOutcome, ArchiveError> {
    let name = history_file_name(tli);
    let file = ctx.dir.join(&name);
    let key = ctx.policy.key.clone();
    let path = ctx.layout.history(tli);
    let object = path.clone();
    let (stored, sha, raw_len) = blocking(move || {
        let raw = std::fs::read(&file).map_err(ArchiveError::io("read", &file))?;
        let sha = sha256_hex(&raw);
        let len = raw.len() as u64;
        Ok((seal(key.as_ref(), Bytes::from(raw), &object)?, sha, len))
    })
    .await?;
    let outcome = upload::retry(&ctx.policy, shutdown, &format!("upload of {name}"), || {
        upload::put_create(
            &ctx.store,
            &path,
            stored.clone(),
            &sha,
            1 << 20,
            &ctx.policy,
        )
    })
    .await?;
    let manifest = Manifest {
        name,
        timeline: tli,
        start_lsn: Lsn::INVALID.to_string(),
        end_lsn: Lsn::INVALID.to_string(),
        size: raw_len,
        sha256: sha,
        compression: "none".into(),
        stored_size: stored.len() as u64,
        encryption: encryption_of(ctx.policy.key.as_ref()),
    };
    put_manifest(ctx, &manifest, shutdown).await?;
    Ok(outcome)
}

/// Writes a manifest create-if-absent; an existing one describing the same WAL content is
/// accepted (it may name another compression of the same bytes).
pub(super) async fn put_manifest(
    ctx: &Arc<Ctx>,
    m: &Manifest,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ArchiveError> {
    let path = ctx.layout.manifest(&m.name);
    let body = Bytes::from(m.encode());
    upload::retry(
        &ctx.policy,
        shutdown,
        &format!("manifest of {}", m.name),
        || {
            let path = path.clone();
            let body = body.clone();
            async move {
                let Some(b) = upload::create_or_existing(&ctx.store, &path, body).await? else {
                    return Ok(());
                };
                match Manifest::decode(&b) {
                    Some(old) if old.sha256 == m.sha256 && old.size == m.size => Ok(()),
                    _ => {
                        metrics::counter!(crate::archive::CONFLICTS).increment(1);
                        Err(ArchiveError::Conflict {
                            path: path.to_string(),
                        })
                    }
                }
            }
        },
    )
    .await
}

pub(super) async fn upload_snapshot(
    ctx: &Arc<Ctx>,
    tli: TimelineId,
    segno: u64,
    end: Lsn,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<PutOutcome, ArchiveError> {
    let name = segment_file_name(tli, segno, ctx.seg_size);
    let offset = end.segment_offset(ctx.seg_size);
    let partial = ctx.dir.join(format!("{name}.partial"));
    let path = ctx.layout.partial(&name, offset, ctx.compression);
    if let Some(fs) = ctx.local.clone() {
        let in_tail = ctx.in_tail(tli, Lsn(segno.saturating_mul(ctx.seg_size)));
        let copy = StreamedCopy {
            fs,
            len: offset,
            exact: false,
            object: path.clone(),
            in_tail,
        };
        // the `.partial`, or the complete file if the store renamed it meanwhile
        let paths = vec![partial, ctx.dir.join(&name)];
        let what = format!("snapshot of {name}");
        let copied = copy_retried(ctx, paths, copy, &what, shutdown).await?;
        cleanup_snapshots(ctx, &name, Some(offset)).await;
        return Ok(copied.outcome);
    }
    let file = if partial.exists() {
        partial
    } else {
        ctx.dir.join(&name)
    };
    let Prepared {
        sha256: sha,
        stored,
        ..
    } = prepare_file(ctx, file, offset, false, path.clone(), None).await?;
    let outcome = upload::retry(
        &ctx.policy,
        shutdown,
        &format!("snapshot of {name}"),
        || {
            upload::put_create_payload(
                &ctx.store,
                &path,
                stored.clone(),
                &sha,
                ctx.seg_size as usize,
                &ctx.policy,
            )
        },
    )
    .await?;
    drop(stored);
    cleanup_snapshots(ctx, &name, Some(offset)).await;
    Ok(outcome)
}

/// Deletes snapshots of segment `name` (those below `keep_from` only, if given). Best
/// effort: a snapshot left behind is harmless and removed the next time.
pub(super) async fn cleanup_snapshots(ctx: &Arc<Ctx>, name: &str, keep_from: Option<u64>) {
    let prefix = ctx.layout.partial_dir();
    let offset = ctx.layout.partial_prefix(name);
    let mut stream = ctx.store.list_with_offset(Some(&prefix), &offset);
    let mut doomed = Vec::new();
    while let Some(item) = stream.next().await {
        let Ok(meta) = item else {
            return;
        };
        let Some(file) = meta.location.filename() else {
            continue;
        };
        match layout::parse_partial(file) {
            Some((n, off, _)) if n == name => {
                if keep_from.is_none_or(|k| off < k) {
                    doomed.push(meta.location.clone());
                }
            }
            _ => {
                if ctx_lists_sorted(ctx) && file > name && !file.starts_with(name) {
                    break;
                }
            }
        }
    }
    drop(stream);
    for p in doomed {
        if let Err(e) = ctx.store.delete(&p).await {
            tracing::debug!("archive: could not delete superseded snapshot {p}: {e}");
        }
    }
}

//! `walrelay wal-fetch %f %p`: PostgreSQL's `restore_command`.
//!
//! Owns: delivering one WAL file from the archive to the path PostgreSQL asked for, and the
//! local spool of prefetched segments (`<dir of %p>/walrelay-spool` unless configured): after
//! delivering segment N, segments N+1..N+`prefetch` of the same timeline are fetched in
//! parallel into the spool (temp file + rename, so a spool file is always whole), and the
//! next calls take them from there. Spooled segments behind the requested one are removed.
//!
//! With `partial`, a segment the archive has no complete copy of is delivered from its
//! newest partial snapshot, zero-padded to the segment size (PostgreSQL replays to the end
//! of the valid WAL in it and ends recovery there, as with Barman's `get-wal --partial`).
//!
//! The exit-status contract is applied by the CLI ([`super::cli`]): 0 restored; 1 only
//! when the archive answered that the file is absent; retries and then a status above 125
//! (PostgreSQL: fatal) for every other failure.
//! Must not: write anywhere but `%p` and the spool.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ArchiveError, ArchiveReader};
use crate::lsn::{parse_wal_file_name, segment_file_name, WalFileName};

/// Options of `wal-fetch`.
#[derive(Debug, Clone)]
pub struct WalFetchOptions {
    /// Spool directory; default `<dir of %p>/walrelay-spool`.
    pub spool: Option<PathBuf>,
    /// Segments to prefetch after the requested one.
    pub prefetch: usize,
    /// Deliver the newest partial snapshot when there is no complete segment.
    pub partial: bool,
}

/// What `wal-fetch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Restored; `from_spool` when a previous call had prefetched it.
    Restored { from_spool: bool },
    /// Restored from a partial snapshot holding this many bytes of WAL (the rest zeros).
    RestoredPartial { bytes: u64 },
    /// The archive does not have this file.
    NotFound,
}

fn spool_dir(dest: &Path, opts: &WalFetchOptions) -> PathBuf {
    opts.spool.clone().unwrap_or_else(|| {
        dest.parent()
            .unwrap_or(Path::new("."))
            .join("walrelay-spool")
    })
}

async fn write_file(path: PathBuf, data: Bytes) -> Result<(), ArchiveError> {
    tokio::task::spawn_blocking(move || {
        let tmp = path.with_extension("walrelay-tmp");
        std::fs::write(&tmp, &data).map_err(ArchiveError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(ArchiveError::io("rename", &tmp))
    })
    .await
    .map_err(|e| ArchiveError::Config(format!("write task failed: {e}")))?
}

/// Restores `file` (a segment or history file name, as `%f`) to `dest` (`%p`).
pub async fn wal_fetch(
    reader: &ArchiveReader,
    file: &str,
    dest: &Path,
    opts: &WalFetchOptions,
) -> Result<FetchOutcome, ArchiveError> {
    let seg_size = reader.wal_segment_size();
    match parse_wal_file_name(file, seg_size) {
        Some(WalFileName::History { tli }) => match reader.fetch_history(tli).await? {
            Some(b) => {
                write_file(dest.to_path_buf(), b).await?;
                Ok(FetchOutcome::Restored { from_spool: false })
            }
            None => Ok(FetchOutcome::NotFound),
        },
        Some(WalFileName::Segment {
            tli,
            segno,
            partial: false,
        }) => {
            let spool = spool_dir(dest, opts);
            let spooled = spool.join(file);
            let mut outcome = FetchOutcome::NotFound;
            if spooled.is_file() {
                let ok = std::fs::metadata(&spooled)
                    .map(|m| m.len() == seg_size)
                    .unwrap_or(false);
                if ok && std::fs::rename(&spooled, dest).is_ok() {
                    outcome = FetchOutcome::Restored { from_spool: true };
                } else if ok {
                    // another file system: copy
                    if let Ok(b) = std::fs::read(&spooled) {
                        write_file(dest.to_path_buf(), Bytes::from(b)).await?;
                        let _ = std::fs::remove_file(&spooled);
                        outcome = FetchOutcome::Restored { from_spool: true };
                    }
                }
            }
            if outcome == FetchOutcome::NotFound {
                match reader.fetch_segment_direct(tli, segno).await? {
                    Some(b) => {
                        write_file(dest.to_path_buf(), b).await?;
                        outcome = FetchOutcome::Restored { from_spool: false };
                    }
                    None if opts.partial => {
                        return match reader.latest_snapshot(tli, segno).await? {
                            Some((bytes, raw)) => {
                                let mut full = Vec::with_capacity(seg_size as usize);
                                full.extend_from_slice(&raw);
                                full.resize(seg_size as usize, 0);
                                write_file(dest.to_path_buf(), Bytes::from(full)).await?;
                                Ok(FetchOutcome::RestoredPartial { bytes })
                            }
                            None => Ok(FetchOutcome::NotFound),
                        };
                    }
                    None => return Ok(FetchOutcome::NotFound),
                }
            }
            clean_spool(&spool, seg_size, segno);
            if opts.prefetch > 0 {
                prefetch(reader, &spool, tli, segno, opts.prefetch).await;
            }
            Ok(outcome)
        }
        _ => Ok(FetchOutcome::NotFound),
    }
}

/// Removes spooled segments at or behind `segno` (any timeline) and stray temp files.
fn clean_spool(spool: &Path, seg_size: u64, segno: u64) {
    let Ok(rd) = std::fs::read_dir(spool) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match parse_wal_file_name(name, seg_size) {
            Some(WalFileName::Segment { segno: s, .. }) => s <= segno,
            _ => name.ends_with(".walrelay-tmp"),
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Fetches the next `n` segments after `segno` into the spool, in parallel; stops at the
/// first one the archive does not have. Errors only mean less was prefetched.
async fn prefetch(reader: &ArchiveReader, spool: &Path, tli: u32, segno: u64, n: usize) {
    if std::fs::create_dir_all(spool).is_err() {
        return;
    }
    let seg_size = reader.wal_segment_size();
    let wanted: Vec<u64> = (1..=n as u64)
        .filter_map(|k| segno.checked_add(k))
        .filter(|s| !spool.join(segment_file_name(tli, *s, seg_size)).is_file())
        .collect();
    let fetches = wanted.iter().map(|&s| {
        let reader = reader.clone();
        async move { (s, reader.fetch_segment_direct(tli, s).await) }
    });
    let results = futures::future::join_all(fetches).await;
    for (s, r) in results {
        match r {
            Ok(Some(b)) => {
                let path = spool.join(segment_file_name(tli, s, seg_size));
                if let Err(e) = write_file(path, b).await {
                    tracing::debug!("wal-fetch: could not spool: {e}");
                    break;
                }
            }
            _ => break,
        }
    }
}

//! `walrelay verify`: walks an archive and reports every segment as FOUND, MISSING or
//! CORRUPT, plus timeline-history consistency.
//!
//! Owns: the checks. For each segment number from `--from` (default: the first archived
//! one) to the last archived one, the timeline that should hold it is derived from the
//! history of the target timeline (`--timeline`, default the highest), as recovery would
//! choose it. A found segment is downloaded, decompressed and checked: size, SHA-256 against
//! its manifest, and every page header (magic, address, timeline, system id, segment size).
//! Must not: modify the archive.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};

use futures::{StreamExt, TryStreamExt};

use super::layout::{self, sha256_hex, Manifest};
use super::reader::get_opt;
use super::{ArchiveError, ArchiveReader};
use crate::lsn::{parse_wal_file_name, segment_file_name, Lsn, TimelineId, WalFileName};
use crate::wal::history::{parse_history, HistoryEntry};
use crate::wal::page::PageValidator;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub from: Option<Lsn>,
    pub timeline: Option<TimelineId>,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Parallel downloads.
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentStatus {
    Found,
    Missing,
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub tli: TimelineId,
    pub segno: u64,
    pub name: String,
    pub status: SegmentStatus,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub system_id: u64,
    pub wal_segment_size: u64,
    pub timeline: TimelineId,
    pub segments: Vec<SegmentReport>,
    /// Problems that are not about one segment (history files).
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn missing(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.status == SegmentStatus::Missing)
            .count()
    }
    pub fn corrupt(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s.status, SegmentStatus::Corrupt(_)))
            .count()
    }
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.missing() == 0 && self.corrupt() == 0
    }
    /// One line per segment, then the problems and a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "system {} segment size {} timeline {}\n",
            self.system_id, self.wal_segment_size, self.timeline
        ));
        for s in &self.segments {
            match &s.status {
                SegmentStatus::Found => out.push_str(&format!("FOUND    {}\n", s.name)),
                SegmentStatus::Missing => out.push_str(&format!("MISSING  {}\n", s.name)),
                SegmentStatus::Corrupt(r) => out.push_str(&format!("CORRUPT  {}: {r}\n", s.name)),
            }
        }
        for p in &self.problems {
            out.push_str(&format!("PROBLEM  {p}\n"));
        }
        out.push_str(&format!(
            "{} segments: {} found, {} missing, {} corrupt; {} other problems\n",
            self.segments.len(),
            self.segments
                .len()
                .saturating_sub(self.missing())
                .saturating_sub(self.corrupt()),
            self.missing(),
            self.corrupt(),
            self.problems.len()
        ));
        out
    }
}

/// Timeline `tli`'s ancestry as (timeline, first LSN) pairs, oldest first.
fn lineage(entries: &[HistoryEntry], tli: TimelineId) -> Vec<(TimelineId, Lsn)> {
    let mut out = Vec::new();
    let mut begin = Lsn::INVALID;
    for e in entries {
        out.push((e.parent_tli, begin));
        begin = e.switchpoint;
    }
    out.push((tli, begin));
    out
}

/// Verifies the archive behind `reader`.
pub async fn verify(
    reader: &ArchiveReader,
    opts: &VerifyOptions,
) -> Result<VerifyReport, ArchiveError> {
    let store = reader.object_store().clone();
    let layout = reader.layout().clone();
    let seg_size = reader.wal_segment_size();
    let sysid = reader.system_id();
    let key = reader.key().cloned();
    let wal_dir = layout.wal_dir();
    let objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&wal_dir))
        .try_collect()
        .await
        .map_err(ArchiveError::store("list", &wal_dir))?;
    let mut segs: BTreeMap<
        (u64, TimelineId),
        (object_store::path::Path, crate::config::Compression),
    > = BTreeMap::new();
    let mut histories = BTreeSet::new();
    for o in &objects {
        let Some(file) = o.location.filename() else {
            continue;
        };
        let (base, c) = layout::strip_compression(file);
        match parse_wal_file_name(base, seg_size) {
            Some(WalFileName::Segment {
                tli,
                segno,
                partial: false,
            }) => {
                segs.insert((segno, tli), (o.location.clone(), c));
            }
            Some(WalFileName::History { tli }) => {
                histories.insert(tli);
            }
            _ => {}
        }
    }
    let mut report = VerifyReport {
        system_id: sysid,
        wal_segment_size: seg_size,
        ..Default::default()
    };
    let top = segs
        .keys()
        .map(|k| k.1)
        .chain(histories.iter().copied())
        .max()
        .unwrap_or(1);
    let target = opts.timeline.unwrap_or(top);
    report.timeline = target;

    // timeline histories: each parses, and each extends its parent's
    let mut parsed: BTreeMap<TimelineId, Vec<HistoryEntry>> = BTreeMap::new();
    for &t in &histories {
        let Some(b) = reader.fetch_history(t).await? else {
            continue;
        };
        match std::str::from_utf8(&b)
            .map_err(|e| e.to_string())
            .and_then(|s| parse_history(s).map_err(|e| e.to_string()))
        {
            Ok(entries) => {
                if entries.last().is_some_and(|e| e.parent_tli >= t) || entries.is_empty() {
                    report.problems.push(format!("history file of timeline {t} does not end with a parent timeline below {t}"));
                }
                parsed.insert(t, entries);
            }
            Err(e) => report
                .problems
                .push(format!("history file of timeline {t} is corrupt: {e}")),
        }
    }
    for (&t, entries) in &parsed {
        if let Some((last, head)) = entries.split_last() {
            if let Some(parent) = parsed.get(&last.parent_tli) {
                if parent.as_slice() != head {
                    report.problems.push(format!(
                        "history of timeline {t} does not extend the history of its parent timeline {}",
                        last.parent_tli
                    ));
                }
            }
        }
    }
    let entries = if target > 1 {
        match parsed.get(&target) {
            Some(e) => e.clone(),
            None => {
                report
                    .problems
                    .push(format!("history file of timeline {target} is missing"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let line = lineage(&entries, target);
    let owner = |segno: u64| -> TimelineId {
        let mut t = line.first().map(|l| l.0).unwrap_or(target);
        for &(tli, begin) in &line {
            if begin.segno(seg_size) <= segno {
                t = tli;
            }
        }
        t
    };
    let in_line: BTreeSet<TimelineId> = line.iter().map(|l| l.0).collect();
    let present: Vec<u64> = segs
        .keys()
        .filter(|k| in_line.contains(&k.1))
        .map(|k| k.0)
        .collect();
    let (Some(&first), Some(&last)) = (present.iter().min(), present.iter().max()) else {
        return Ok(report);
    };
    let from = opts.from.map(|l| l.segno(seg_size)).unwrap_or(first);
    let todo: Vec<(u64, TimelineId)> = (from..=last).map(|s| (s, owner(s))).collect();
    let total = todo.len();
    let show = opts.progress && std::io::stderr().is_terminal();
    let checks = futures::stream::iter(todo.into_iter().map(|(segno, tli)| {
        let entry = segs.get(&(segno, tli)).cloned();
        let store = store.clone();
        let layout = layout.clone();
        let key = key.clone();
        async move {
            let name = segment_file_name(tli, segno, seg_size);
            let status = match entry {
                None => SegmentStatus::Missing,
                Some((path, c)) => {
                    check_segment(
                        &store,
                        &layout,
                        &path,
                        c,
                        &name,
                        sysid,
                        seg_size,
                        tli,
                        segno,
                        key.as_ref(),
                    )
                    .await
                }
            };
            SegmentReport {
                tli,
                segno,
                name,
                status,
            }
        }
    }))
    .buffered(opts.concurrency.max(1));
    futures::pin_mut!(checks);
    let mut done = 0usize;
    while let Some(r) = checks.next().await {
        done = done.saturating_add(1);
        if show {
            let width = 40usize;
            let filled = done
                .saturating_mul(width)
                .checked_div(total.max(1))
                .unwrap_or(0);
            let _ = write!(
                std::io::stderr(),
                "\rverify [{}{}] {done}/{total}",
                "#".repeat(filled),
                ".".repeat(width.saturating_sub(filled))
            );
        }
        report.segments.push(r);
    }
    if show {
        let _ = writeln!(std::io::stderr());
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn check_segment(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    layout: &layout::Layout,
    path: &object_store::path::Path,
    c: crate::config::Compression,
    name: &str,
    sysid: u64,
    seg_size: u64,
    tli: TimelineId,
    segno: u64,
    key: Option<&crate::archive::crypt::Key>,
) -> SegmentStatus {
    let stored = match get_opt(store, path).await {
        Ok(Some(b)) => b,
        Ok(None) => return SegmentStatus::Missing,
        Err(e) => return SegmentStatus::Corrupt(format!("could not read: {e}")),
    };
    let stored_len = stored.len() as u64;
    let stored = match crate::archive::crypt::open_stored(key, stored, path.as_ref()) {
        Ok(b) => b,
        Err(e) => return SegmentStatus::Corrupt(e.to_string()),
    };
    let raw = match layout::decompress(stored, c, seg_size as usize, path) {
        Ok(r) => r,
        Err(e) => return SegmentStatus::Corrupt(e.to_string()),
    };
    if raw.len() as u64 != seg_size {
        return SegmentStatus::Corrupt(format!("{} bytes, expected {seg_size}", raw.len()));
    }
    match get_opt(store, &layout.manifest(name)).await {
        Ok(Some(m)) => match Manifest::decode(&m) {
            Some(m) => {
                if m.sha256 != sha256_hex(&raw) && m.stored_size == stored_len {
                    return SegmentStatus::Corrupt("SHA-256 does not match the manifest".into());
                }
                if m.sha256 != sha256_hex(&raw) {
                    return SegmentStatus::Corrupt(format!(
                        "SHA-256 does not match the manifest (stored size {stored_len}, manifest says {})",
                        m.stored_size
                    ));
                }
            }
            None => return SegmentStatus::Corrupt("its manifest is unreadable".into()),
        },
        Ok(None) => return SegmentStatus::Corrupt("no manifest".into()),
        Err(e) => return SegmentStatus::Corrupt(format!("could not read the manifest: {e}")),
    }
    let start = Lsn(segno.saturating_mul(seg_size));
    let mut v = PageValidator::new(sysid, seg_size, tli);
    v.reset(start);
    if let Err(e) = v.check(start, &raw) {
        return SegmentStatus::Corrupt(e.to_string());
    }
    SegmentStatus::Found
}

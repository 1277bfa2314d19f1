//! Timelines between walrelay's files and the server it connected to: where streaming may
//! resume, and the history files it stores.
//!
//! Owns: the checks made after `IDENTIFY_SYSTEM` when walrelay already holds WAL — the
//! server's timeline must not be older than walrelay's (PostgreSQL's walreceiver: "highest
//! timeline %u of the primary is behind recovery timeline %u"); its history must be valid and
//! agree with the history walrelay stored; when the server's history says walrelay's timeline
//! ended at a fork point *before* the end of walrelay's WAL (a failover to a standby that was
//! behind walrelay), the WAL past the fork is set aside ([`crate::store::diverge`]) and
//! streaming continues on the next timeline from the fork point. Also: fetching, validating
//! and storing the history file of every timeline followed.
//!
//! Must not: write files itself (the store does), or stream.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use crate::lsn::{history_file_name, Lsn, TimelineId};
use crate::store::Store;
use crate::wal::history::{self, HistoryEntry};

use super::conn::ReplConnection;
use super::receiver::ReceiverError;

/// Reads the history walrelay stored for `tli` (empty for timeline 1 or when absent).
async fn stored_history(
    store: &Store,
    tli: TimelineId,
) -> Result<Option<Vec<HistoryEntry>>, ReceiverError> {
    if tli <= 1 {
        return Ok(Some(Vec::new()));
    }
    let path = store.dir().join(history_file_name(tli));
    match tokio::fs::read(&path).await {
        Ok(bytes) => history::validate_history(tli, &history_file_name(tli), &bytes)
            .map(Some)
            .map_err(|e| ReceiverError::History(format!("walrelay's own {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReceiverError::History(format!(
            "could not read \"{}\": {e}",
            path.display()
        ))),
    }
}

/// The history of `tli`: walrelay's stored copy, else fetched with `TIMELINE_HISTORY`,
/// validated ([`history::validate_history`]) and stored. With `from = (old, end)`, walrelay
/// is moving from timeline `old`, which ended at `end`: the history must say so, and must
/// continue walrelay's own history of `old`.
pub(super) async fn ensure_history(
    conn: &mut ReplConnection,
    store: &Store,
    tli: TimelineId,
    from: Option<(TimelineId, Lsn)>,
) -> Result<Vec<HistoryEntry>, ReceiverError> {
    let entries = match stored_history(store, tli).await? {
        Some(e) => e,
        None => {
            let (name, content) = conn.timeline_history(tli).await?;
            let e = history::validate_history(tli, &name, &content)
                .map_err(|e| ReceiverError::History(format!("the server sent {e}")))?;
            if let Some((old, _)) = from {
                check_descends(store, old, &e, tli).await?;
            }
            store.write_history(tli, content).await?;
            e
        }
    };
    if let Some((old, end)) = from {
        let sw = history::switch_point_of(&entries, old);
        if sw != Some(end) {
            return Err(ReceiverError::History(format!(
                "the history of timeline {tli} says timeline {old} ended at {}, but the server switched at {end}",
                sw.map_or_else(|| "no point".to_string(), |l| l.to_string())
            )));
        }
    }
    Ok(entries)
}

/// walrelay's history of `ours` must be the start of `theirs` (the server's history of
/// `their_tli`).
async fn check_descends(
    store: &Store,
    ours: TimelineId,
    theirs: &[HistoryEntry],
    their_tli: TimelineId,
) -> Result<(), ReceiverError> {
    let Some(mine) = stored_history(store, ours).await? else {
        return Ok(()); // nothing stored to compare with
    };
    history::check_prefix(&mine, theirs).map_err(|e| {
        ReceiverError::History(format!(
            "the server's timeline {their_tli} does not descend from walrelay's timeline {ours}: {e}"
        ))
    })
}

/// Where streaming resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Resume {
    pub start: Lsn,
    pub tli: TimelineId,
    /// Set when walrelay moves on from timeline `.0`, which the server's history ends at `.1`.
    pub from: Option<(TimelineId, Lsn)>,
}

/// Where to resume, given walrelay's resume point `(start, tli)` and the server's current
/// timeline `server_tli`. Sets divergent WAL aside when the server's history forked off
/// `tli` before walrelay's end of WAL on it.
pub(super) async fn reconcile(
    conn: &mut ReplConnection,
    store: &Store,
    server_tli: TimelineId,
    start: Lsn,
    tli: TimelineId,
    seg_size: u64,
) -> Result<Resume, ReceiverError> {
    let same = Resume {
        start,
        tli,
        from: None,
    };
    if server_tli < tli {
        return Err(ReceiverError::ServerTimelineBehind {
            server: server_tli,
            ours: tli,
        });
    }
    if server_tli <= 1 {
        return Ok(same);
    }
    // The server's current history, validated; stored only if walrelay follows it.
    let (name, content) = conn.timeline_history(server_tli).await?;
    let theirs = history::validate_history(server_tli, &name, &content)
        .map_err(|e| ReceiverError::History(format!("the server sent {e}")))?;
    check_descends(store, tli, &theirs, server_tli).await?;
    if server_tli == tli {
        if let Some(mine) = stored_history(store, tli).await? {
            if mine.len() != theirs.len() {
                return Err(ReceiverError::History(format!(
                    "the server's timeline {tli} is not the timeline {tli} walrelay holds WAL of: their histories differ"
                )));
            }
        } else {
            store.write_history(tli, content).await?;
        }
        return Ok(same);
    }
    let Some(fork) = history::switch_point_of(&theirs, tli) else {
        return Err(ReceiverError::History(format!(
            "walrelay's timeline {tli} is not in the history of the server's timeline {server_tli}"
        )));
    };
    let next = history::next_tli(&theirs, tli, server_tli);
    let set_aside = store.set_aside_diverged(tli, fork).await?;
    if set_aside.files.is_empty() && start <= fork {
        // walrelay's WAL ends at or before the fork: stream `tli` up to it, then follow.
        return Ok(same);
    }
    if !set_aside.files.is_empty() {
        tracing::warn!(
            "walrelay's WAL on timeline {tli} continues past the point where the server's history forked off it: timeline {tli} ended at {fork} (then timeline {next}); set aside {} bytes of timeline {tli} past {fork} in {} ({}); continuing on timeline {next} at {fork}",
            set_aside.bytes,
            set_aside.dir.display(),
            set_aside.files.join(", ")
        );
        metrics::counter!(crate::metrics::ERRORS, "kind" => "diverged").increment(1);
    }
    if next == server_tli && !store.has_history(server_tli) {
        store.write_history(server_tli, content).await?;
    }
    Ok(Resume {
        start: fork.segment_start(seg_size),
        tli: next,
        from: Some((tli, fork)),
    })
}

//! START_REPLICATION [SLOT name] PHYSICAL lsn [TIMELINE tli]: the checks, then the
//! CopyBoth stream (`crate::server::walsender`), then the answer after the COPY.
//!
//! Owns: acquiring/releasing the slot, the timeline checks (timeline in this server's
//! history, start not past the fork; a start exactly at a switch point answered without
//! COPY), CopyBothResponse, the start-ahead-of-flush refusal after it, the initial status
//! row, and [`end_of_streaming`] (the `next_tli` row of a historic timeline, then both
//! CommandCompletes). Must not: send WAL (that is `walsender.rs`).

use bytes::BytesMut;

use crate::error::codes;
use crate::lsn::{Lsn, TimelineId};
use crate::protocol::backend::{self, ErrorFields, INT8_OID, TEXT_OID};
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::session::{End, Session};
use crate::server::walsender::{next_tli, StreamState};
use crate::server::ServeView;
use crate::wal::history;

pub(crate) async fn run(
    s: &mut Session,
    view: ServeView,
    slot: Option<String>,
    start: Lsn,
    timeline: Option<u32>,
) -> Result<(), End> {
    if let Some(name) = &slot {
        if let Err(e) = s.shared.slots.acquire(name, s.id, s.pid) {
            return s.reply(super::slot_error(&e)).await;
        }
    }
    let r = start_inner(s, view, slot.as_deref(), start, timeline).await;
    if let Some(name) = &slot {
        s.shared.slots.release(name, s.id);
    }
    s.shared.feedback.remove(s.id);
    s.shared.status.update(s.id, |r| {
        r.state = "startup".into();
    });
    r
}

async fn start_inner(
    s: &mut Session,
    view: ServeView,
    slot: Option<&str>,
    start: Lsn,
    timeline: Option<u32>,
) -> Result<(), End> {
    let cur = view.timeline;
    let tli = timeline.unwrap_or(cur);
    let mut end = None;
    if tli != cur {
        let entries = if tli < cur { s.history(cur) } else { None };
        let sw = entries
            .as_ref()
            .and_then(|e| history::switch_point_of(e, tli));
        let Some(sw) = sw else {
            return s
                .send_error(ErrorFields::error(
                    codes::INTERNAL_ERROR,
                    format!("requested timeline {tli} is not in this server's history"),
                ))
                .await;
        };
        let next = next_tli(entries.as_deref().unwrap_or(&[]), tli, cur);
        if start > sw {
            let mut e = ErrorFields::error(
                codes::INTERNAL_ERROR,
                format!(
                    "requested starting point {start} on timeline {tli} is not in this server's history"
                ),
            );
            e.detail = Some(format!(
                "This server's history forked from timeline {tli} at {sw}."
            ));
            return s.send_error(e).await;
        }
        end = Some((sw, next));
        if start == sw {
            // Nothing to stream: the next timeline starts right here.
            return s.reply(end_of_streaming(end, true)).await;
        }
    }
    let mut b = BytesMut::new();
    backend::copy_both_response(&mut b);
    s.send(b).await?;
    if end.is_none() && start > view.flush {
        return s
            .send_error(ErrorFields::error(
                codes::INTERNAL_ERROR,
                format!(
                    "requested starting point {start} is ahead of the WAL flush position of this server {}",
                    view.flush
                ),
            ))
            .await;
    }
    tracing::info!(
        "pid {} ({}): start streaming at {start} on timeline {tli}{}",
        s.pid,
        s.application_name,
        slot.map(|s| format!(" with slot \"{s}\""))
            .unwrap_or_default()
    );
    let mut st = StreamState {
        tli,
        seg_size: view.seg_size,
        system_id: view.system_id,
        sent: start,
        end,
        fallback: (view.timeline, view.flush),
    };
    s.shared.status.update(s.id, |r| {
        r.state = "catchup".into();
        r.timeline = tli;
        r.sent_lsn = Some(start);
        r.slot_name = slot.map(str::to_string);
    });
    s.stream(&mut st, slot).await
}

/// After the COPY: the `next_tli` row (historic timelines), both CommandCompletes.
pub(crate) fn end_of_streaming(end: Option<(Lsn, TimelineId)>, historic: bool) -> Reply {
    let mut parts = Vec::with_capacity(2);
    if let (true, Some((sw, next))) = (historic, end) {
        // The result set and START_STREAMING: PostgreSQL ends the tuple output with the
        // START_STREAMING CommandComplete.
        parts.push(
            ResultSet::new(
                "START_STREAMING",
                vec![
                    Column::new("next_tli", INT8_OID),
                    Column::new("next_tli_startpos", TEXT_OID),
                ],
            )
            .row([Some(next.to_string()), Some(sw.to_string())])
            .into(),
        );
    } else {
        parts.push(Reply::complete("START_STREAMING"));
    }
    parts.push(Reply::complete("START_REPLICATION"));
    Reply::Many(parts)
}

//! The CopyBoth streaming loop of START_REPLICATION … PHYSICAL (the command's checks and its
//! final answer are in `cmd/start_replication.rs`).
//!
//! Owns: the loop that sends WAL from exactly the
//! requested position, contiguous, never past [`StreamState::send_limit`]: recent WAL from the
//! store's shared tail (no copy), older WAL from the segment files through the cluster's
//! shared read cache (`store::readcache`: 1 MB aligned chunks read once, on a blocking thread,
//! for all sessions that want them, then sent as ≤ 128 kB slices), and segments that retention
//! removed from the data directory from the archive (one whole segment held per session, plus
//! the archive reader's shared read-ahead). A session holds no read buffer of its own: only
//! its out queue (8 messages) of slices, about two chunks at most, so serving N sessions from
//! files takes at most the cache's cap (8 MB) + N × ~2 MB. It
//! wakes on the store's position watch (no polling), sends keepalives, answers reply
//! requests, reads status updates and hot-standby feedback, ends a historic timeline with
//! CopyDone + the `next_tli` row + both CommandCompletes (the session stays usable), moves a
//! standby along when the upstream switches timeline, and at shutdown waits (bounded) for the
//! client to confirm what it was sent before `COPY 0`. Must not: write WAL.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::cmd::start_replication::end_of_streaming;
use super::session::{err_of, fatal, End, Out, Session};
use super::{status, HsFeedback};
use crate::archive::ArchiveError;
use crate::error::{codes, SqlState};
use crate::lsn::{pg_now, Lsn, TimelineId};
use crate::protocol::backend;
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::replication::{self, ClientCopyMessage};
use crate::store::reader::{ReadError, WalReader};
use crate::store::Positions;
use crate::wal::history;

/// Most WAL bytes per XLogData message (16 × XLOG_BLCKSZ, like the walsender).
const MAX_SEND: usize = 128 * 1024;
/// Why the next chunk of WAL could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("could not read WAL segment {segment} from the archive: {source}")]
    Archive {
        segment: String,
        source: ArchiveError,
    },
}

impl SqlState for ChunkError {
    fn sqlstate(&self) -> &'static str {
        match self {
            ChunkError::Read(e) => e.sqlstate(),
            ChunkError::Archive { .. } => codes::IO_ERROR,
        }
    }
}

/// A whole segment read back from the archive, kept while the session streams from it.
struct ArchivedSegment {
    tli: TimelineId,
    segno: u64,
    data: Bytes,
}

impl ArchivedSegment {
    /// Up to `want` bytes at `start` (a copy, so that queued messages do not keep the
    /// segment alive after the session moved on); `None` if `start` is not in it.
    fn chunk(&self, tlis: &[TimelineId], start: Lsn, seg_size: u64, want: usize) -> Option<Bytes> {
        if start.segno(seg_size) != self.segno || !tlis.contains(&self.tli) {
            return None;
        }
        let off = usize::try_from(start.segment_offset(seg_size)).ok()?;
        let end = off.checked_add(want)?.min(self.data.len());
        self.data
            .get(off..end)
            .filter(|b| !b.is_empty())
            .map(Bytes::copy_from_slice)
    }
}

pub(crate) struct StreamState {
    pub tli: TimelineId,
    pub seg_size: u64,
    pub system_id: u64,
    pub sent: Lsn,
    /// Where `tli` ends and the timeline that follows, once it is historic.
    pub end: Option<(Lsn, TimelineId)>,
    /// Fallback positions when the store is not writing (from the control file).
    pub fallback: (TimelineId, Lsn),
}

impl StreamState {
    /// How far WAL may be sent now. Later also the delay horizon of delayed standbys.
    fn send_limit(&self, p: &Positions) -> Lsn {
        if let Some((sw, _)) = self.end {
            return sw;
        }
        let (tli, flush) = if p.timeline != 0 {
            (p.timeline, p.flush_lsn)
        } else {
            self.fallback
        };
        if tli == self.tli {
            flush
        } else {
            self.sent
        }
    }
}

impl Session {
    /// Streams WAL from `st.sent` until the client or the server ends the COPY.
    pub(crate) async fn stream(
        &mut self,
        st: &mut StreamState,
        slot: Option<&str>,
    ) -> Result<(), End> {
        let settings = self.shared.settings.clone();
        // counted while streaming: the shared read cache's cap grows with its readers
        let shared = self.shared.clone();
        let _cache_reader = shared.read_cache.reader();
        let mut positions = self.shared.store.positions();
        let mut store_alive = true;
        let mut reader = WalReader::new(&self.shared.data_dir, st.seg_size);
        let mut archived: Option<ArchivedSegment> = None;
        let mut lag = status::LagTracker::default();
        let mut pending: Option<(Out, Lsn)> = None;
        let mut server_done = false;
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let mut ping_sent = false;
        let mut caught_up_once = false;
        let mut stopping: Option<Instant> = None;
        let mut stop_ping = false;
        let mut confirmed = Lsn(0);
        let half_timeout = settings
            .wal_sender_timeout
            .checked_div(2)
            .unwrap_or_default();
        let keepalive_every = settings
            .keepalive_interval
            .max(std::time::Duration::from_millis(100));
        // delay: a session under a `[[feed]]` sends no further than the feed's cap (delay,
        // pause, advance, tripwire) and wakes when it may move (crate::delay::FeedSession).
        let mut feed = self
            .shared
            .feeds
            .as_ref()
            .and_then(|f| f.attach(&self.application_name, slot, &self.user));

        loop {
            // What can be sent now.
            let p = positions.borrow_and_update().clone();
            if let Some(end_now) = self.check_timeline_switch(st, &p) {
                st.end = Some(end_now);
            }
            // How far WAL is durable and may be read (into the shared cache, too).
            let durable = st.send_limit(&p);
            // delay: cap by the feed; a position ahead of the cap just waits (no error).
            let (limit, feed_wake) = match &feed {
                Some(f) => {
                    let (cap, wake) = f.limit(st.sent, durable);
                    (cap.min(durable), wake)
                }
                None => (durable, None),
            };
            if pending.is_none() && !server_done {
                if let Some((sw, _)) = st.end {
                    if st.sent >= sw {
                        let mut b = BytesMut::new();
                        backend::copy_done(&mut b);
                        self.send(b).await?;
                        server_done = true;
                        tracing::info!("pid {}: end of timeline {} at {sw}", self.pid, st.tli);
                    }
                }
                if !server_done && st.sent < limit {
                    match self
                        .next_chunk(st, &p, (limit, durable), &mut reader, &mut archived)
                        .await
                    {
                        Ok(data) => {
                            let upto = Lsn(st.sent.0.saturating_add(data.len() as u64));
                            let mut h = BytesMut::with_capacity(32);
                            replication::encode_xlogdata_header(
                                &mut h,
                                st.sent,
                                limit,
                                pg_now(),
                                data.len(),
                            );
                            pending = Some((Out::Wal(h.freeze(), data), upto));
                        }
                        Err(e) => {
                            tracing::warn!("pid {} ({}): {e}", self.pid, self.application_name);
                            return self.send_error(err_of(&e)).await;
                        }
                    }
                }
            }
            let caught_up = pending.is_none() && st.sent >= limit;
            if caught_up && !caught_up_once {
                caught_up_once = true;
                self.shared
                    .status
                    .update(self.id, |r| r.state = "streaming".into());
            }
            // Ordered shutdown: everything sent, ask for confirmation, then COPY 0.
            if let Some(deadline) = stopping {
                let done = caught_up && confirmed >= st.sent;
                if done || Instant::now() >= deadline {
                    let mut b = BytesMut::new();
                    backend::command_complete(&mut b, "COPY 0");
                    let _ = self.send(b).await;
                    return Err(End::Gone);
                }
                if caught_up && !stop_ping {
                    stop_ping = true;
                    self.keepalive(st.sent, true);
                }
            }

            // Next timer: keepalive or timeout.
            let now = Instant::now();
            let mut wake = after(last_send, keepalive_every);
            if !settings.wal_sender_timeout.is_zero() {
                let t = if ping_sent {
                    after(last_recv, settings.wal_sender_timeout)
                } else {
                    after(last_recv, half_timeout)
                };
                wake = wake.min(t);
            }
            if let Some(d) = stopping {
                wake = wake.min(d);
            }
            if let Some(w) = feed_wake {
                wake = wake.min(w); // delay: the next commit becomes due
            }
            let wake = wake.max(now);

            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if stopping.is_none() => {
                    stopping = Some(after(Instant::now(), settings.shutdown_timeout));
                    self.shared.status.update(self.id, |r| r.state = "stopping".into());
                }
                m = self.conn.read_message() => {
                    let m = m?;
                    last_recv = Instant::now();
                    ping_sent = false;
                    match m {
                        FrontendMessage::CopyData(payload) => {
                            match ClientCopyMessage::decode(&payload) {
                                Ok(ClientCopyMessage::StatusUpdate { write, flush, apply, reply_requested, .. }) => {
                                    confirmed = if flush.is_valid() { flush } else { write };
                                    let lags = lag.reported([write, flush, apply], Instant::now());
                                    if let Some(s) = slot {
                                        self.shared.slots.confirm_flush(s, flush);
                                    }
                                    let unix = std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .map(|d| d.as_secs())
                                        .unwrap_or(0);
                                    self.shared.status.update(self.id, |r| {
                                        r.write_lsn = Some(write);
                                        r.flush_lsn = Some(flush);
                                        r.replay_lsn = Some(apply);
                                        r.write_lag = lags[0];
                                        r.flush_lag = lags[1];
                                        r.replay_lag = lags[2];
                                        r.reply_time = Some(unix);
                                    });
                                    // per-standby series: rendered from the status rows (crate::metrics::render_standbys)
                                    if reply_requested && !server_done {
                                        self.keepalive(st.sent, false);
                                        last_send = Instant::now();
                                    }
                                }
                                Ok(ClientCopyMessage::HotStandbyFeedback { xmin, xmin_epoch, catalog_xmin, catalog_xmin_epoch, .. }) => {
                                    self.shared.feedback.update(self.id, HsFeedback { xmin, xmin_epoch, catalog_xmin, catalog_xmin_epoch });
                                }
                                Err(e) => return Err(End::Fatal(fatal(codes::PROTOCOL_VIOLATION, e.to_string()))),
                            }
                        }
                        FrontendMessage::CopyDone => {
                            if !server_done {
                                let mut b = BytesMut::new();
                                backend::copy_done(&mut b);
                                self.send(b).await?;
                            }
                            let historic = st.end.is_some();
                            tracing::info!("pid {}: client ended streaming at {}", self.pid, st.sent);
                            return self.reply(end_of_streaming(st.end, historic)).await;
                        }
                        FrontendMessage::Terminate => return Err(End::Gone),
                        FrontendMessage::CopyFail(m) => {
                            return Err(End::Fatal(fatal(codes::QUERY_CANCELED, format!("COPY from stdin failed: {m}"))))
                        }
                        other => {
                            let t = match other {
                                FrontendMessage::Query(_) => 'Q',
                                FrontendMessage::Password(_) => 'p',
                                FrontendMessage::Sync => 'S',
                                FrontendMessage::Flush => 'H',
                                FrontendMessage::Extended(t) | FrontendMessage::Unknown(t) => char::from(t),
                                _ => '?',
                            };
                            return Err(End::Fatal(fatal(codes::PROTOCOL_VIOLATION, format!("unexpected message type \"{t}\""))));
                        }
                    }
                }
                permit = self.out.reserve(), if pending.is_some() => {
                    let permit = permit.map_err(|_| End::Gone)?;
                    if let Some((out, upto)) = pending.take() {
                        let n = upto.saturating_sub(st.sent);
                        permit.send(out);
                        st.sent = upto;
                        last_send = Instant::now();
                        lag.sent(upto, last_send);
                        metrics::counter!(status::SENT_BYTES).increment(n);
                        self.shared.status.update(self.id, |r| r.sent_lsn = Some(upto));
                    }
                }
                // delay: an operator acted on the feed or the commit index moved.
                _ = async { if let Some(f) = feed.as_mut() { f.changed().await } }, if feed.is_some() && pending.is_none() && !server_done => {}
                r = positions.changed(), if store_alive && pending.is_none() && !server_done => {
                    if r.is_err() {
                        store_alive = false;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if !settings.wal_sender_timeout.is_zero() && stopping.is_none() {
                        if now >= after(last_recv, settings.wal_sender_timeout) {
                            tracing::info!("pid {} ({}): terminating walsender process due to replication timeout", self.pid, self.application_name);
                            return Err(End::Gone);
                        }
                        if !ping_sent && now >= after(last_recv, half_timeout) {
                            ping_sent = true;
                            self.keepalive(st.sent, true);
                            last_send = now;
                        }
                    }
                    if now >= after(last_send, keepalive_every) {
                        self.keepalive(st.sent, false);
                        last_send = now;
                    }
                }
            }
        }
    }

    /// Sends a keepalive unless the client's queue is full (then data is flowing anyway).
    fn keepalive(&self, sent: Lsn, reply: bool) {
        let mut b = BytesMut::with_capacity(24);
        replication::encode_keepalive(&mut b, sent, pg_now(), reply);
        let _ = self.out.try_send(Out::Msg(b.freeze()));
    }

    /// The upstream moved to a newer timeline: ours ends at its switch point.
    fn check_timeline_switch(&self, st: &StreamState, p: &Positions) -> Option<(Lsn, TimelineId)> {
        if st.end.is_some() || p.timeline == 0 || p.timeline <= st.tli {
            return None;
        }
        let entries = self.history(p.timeline)?;
        let sw = history::switch_point_of(&entries, st.tli)?;
        Some((sw, next_tli(&entries, st.tli, p.timeline)))
    }

    /// Up to [`MAX_SEND`] bytes at `st.sent`, never past `limit`: from the tail when it holds
    /// them, else from the shared read cache or the files, else (removed by retention) from the
    /// archive. `durable` (≥ `limit`: the send limit before a feed's delay cap) bounds what is
    /// read from a file into the cache: a delayed session's cap moves by small steps, the
    /// chunk it reads need not.
    async fn next_chunk(
        &self,
        st: &StreamState,
        p: &Positions,
        (limit, durable): (Lsn, Lsn),
        reader: &mut WalReader,
        archived: &mut Option<ArchivedSegment>,
    ) -> Result<Bytes, ChunkError> {
        let room = |upto: Lsn| {
            usize::try_from(upto.saturating_sub(st.sent))
                .unwrap_or(usize::MAX)
                .min(MAX_SEND)
        };
        let want = room(limit);
        if p.timeline == st.tli {
            if let Some(b) = self.shared.store.tail().get(st.tli, st.sent, limit, want) {
                return Ok(b);
            }
        }
        // For a historic timeline, the switch segment may exist only in the next timeline's
        // file (WalSndSegmentOpen reads it from there). walrelay's own copy of the old
        // timeline's segment is preferred: it holds [segment start, switch point) durably. The
        // next timeline's file is zero-padded ahead of what the store wrote, so while the store
        // is still writing that timeline it is read no further than the store's flush_lsn.
        // Per timeline: (most bytes to send now, end of what a file read may bring in).
        let mut tlis = Vec::with_capacity(2);
        let mut wants = Vec::with_capacity(2);
        tlis.push(st.tli);
        wants.push((want, durable));
        if let Some((sw, next)) = st.end {
            if sw.segno(st.seg_size) == st.sent.segno(st.seg_size) {
                let (send_end, read_end) = if p.timeline == next {
                    (limit.min(p.flush_lsn), durable.min(p.flush_lsn))
                } else {
                    (limit, durable)
                };
                let w = room(send_end);
                if w > 0 {
                    tlis.push(next);
                    wants.push((w, read_end));
                }
            }
        }
        // Read before by any session of this cluster: no blocking call.
        let cache = &self.shared.read_cache;
        for (t, (w, _)) in tlis.iter().zip(&wants) {
            if let Some(b) = cache.get(p.rewinds, *t, st.sent, *w) {
                metrics::counter!(status::READ_CACHE_HITS).increment(1);
                return Ok(b);
            }
        }
        // A segment already fetched from the archive: retention removed it locally, and a
        // removed segment never comes back.
        if let Some(b) = archived
            .as_ref()
            .and_then(|a| a.chunk(&tlis, st.sent, st.seg_size, want))
        {
            return Ok(b);
        }
        // From the file: the whole aligned chunk holding `st.sent`, from its start up to what
        // is readable, once for every session that misses it at the same time.
        let start = st.sent;
        let mut last = None;
        for (t, (w, end)) in tlis.iter().copied().zip(wants) {
            let served = cache
                .get_or_read(p.rewinds, t, start, w, |chunk_start, buf| {
                    let off = usize::try_from(start.saturating_sub(chunk_start)).unwrap_or(0);
                    let len = usize::try_from(end.saturating_sub(chunk_start))
                        .unwrap_or(usize::MAX)
                        .min(usize::try_from(cache.chunk()).unwrap_or(usize::MAX));
                    let at_least = off.saturating_add(w).min(len);
                    let rd = std::mem::replace(
                        &mut *reader,
                        WalReader::new(&self.shared.data_dir, st.seg_size),
                    );
                    let slot = &mut *reader;
                    async move {
                        let (r, rd) = tokio::task::spawn_blocking(move || {
                            let mut rd = rd;
                            let r = rd.read_into(t, chunk_start, len, at_least, buf);
                            (r, rd)
                        })
                        .await
                        .map_err(|e| ReadError::Io {
                            path: self.shared.data_dir.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                        *slot = rd;
                        r
                    }
                })
                .await;
            match served {
                Ok(s) if s.data.is_empty() => {
                    last = Some(ReadError::Short {
                        path: self.shared.data_dir.clone(),
                        got: 0,
                        wanted: w,
                    });
                }
                Ok(s) => {
                    let m = if s.read {
                        status::READ_CACHE_MISSES
                    } else {
                        status::READ_CACHE_HITS
                    };
                    metrics::counter!(m).increment(1);
                    return Ok(s.data);
                }
                Err(e) => last = Some(e),
            }
        }
        let removed = match last {
            Some(ReadError::Removed(name)) => name,
            Some(e) => return Err(e.into()),
            None => return Err(ReadError::Removed(String::new()).into()),
        };
        let Some(lazy) = self.shared.archive.as_ref() else {
            return Err(ReadError::Removed(removed).into());
        };
        // At most one archived segment per session: let go of the previous one first.
        *archived = None;
        let archive_err = |source| ChunkError::Archive {
            segment: removed.clone(),
            source,
        };
        let Some(ar) = lazy
            .get(st.system_id, st.seg_size)
            .await
            .map_err(archive_err)?
        else {
            return Err(ReadError::Removed(removed).into());
        };
        let segno = start.segno(st.seg_size);
        for t in tlis.iter().copied() {
            if let Some(data) = ar.fetch_segment(t, segno).await.map_err(archive_err)? {
                tracing::info!(
                    "pid {} ({}): WAL segment {} read from the archive",
                    self.pid,
                    self.application_name,
                    crate::lsn::segment_file_name(t, segno, st.seg_size)
                );
                let seg = ArchivedSegment {
                    tli: t,
                    segno,
                    data,
                };
                let chunk = seg.chunk(&tlis, start, st.seg_size, want);
                *archived = Some(seg);
                if let Some(b) = chunk {
                    return Ok(b);
                }
            }
        }
        Err(ReadError::Removed(removed).into())
    }
}

/// `t + d`, or a point ~30 years on when a configured duration is too large to add (no
/// overflow panic from a huge `wal_sender_timeout`).
fn after(t: Instant, d: std::time::Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(std::time::Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(t)
}

/// The timeline that follows `tli` in the history of `cur`.
pub(crate) fn next_tli(
    entries: &[history::HistoryEntry],
    tli: TimelineId,
    cur: TimelineId,
) -> TimelineId {
    entries
        .iter()
        .position(|e| e.parent_tli == tli)
        .and_then(|i| entries.get(i.checked_add(1)?))
        .map_or(cur, |e| e.parent_tli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_timeline() {
        let e = history::parse_history("1\t0/3000000\tx\n2\t0/5000000\ty\n").unwrap();
        assert_eq!(next_tli(&e, 1, 3), 2);
        assert_eq!(next_tli(&e, 2, 3), 3);
    }

    #[test]
    fn archived_segment_chunks() {
        let seg_size = 1u64 << 20;
        let data: Vec<u8> = (0..seg_size).map(|i| (i % 253) as u8).collect();
        let a = ArchivedSegment {
            tli: 2,
            segno: 3,
            data: Bytes::from(data.clone()),
        };
        let at = |off: u64| Lsn(3 * seg_size + off);
        assert_eq!(
            &a.chunk(&[2], at(10), seg_size, 5).unwrap()[..],
            &data[10..15]
        );
        // stops at the segment end
        let b = a.chunk(&[3, 2], at(seg_size - 4), seg_size, 100).unwrap();
        assert_eq!(&b[..], &data[data.len() - 4..]);
        // other segment or timeline
        assert!(a.chunk(&[2], at(seg_size), seg_size, 5).is_none());
        assert!(a.chunk(&[1], at(0), seg_size, 5).is_none());
        assert!(a.chunk(&[2], at(0), seg_size, 0).is_none());
    }
}

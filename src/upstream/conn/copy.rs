//! `START_REPLICATION` and the CopyBoth streaming phase.
//!
//! Owns: entering COPY, [`CopyEvent`]s decoded from the server's CopyData, standby status
//! updates and hot-standby feedback, ending a timeline (CopyDone, the next-timeline row)
//! and the server's shutdown inside COPY. Must not: decide what to do with the WAL.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use bytes::Bytes;
use postgres_protocol::message::frontend;

use super::commands::{quote_ident, text};
use super::{ReplConnection, Result, State};
use crate::lsn::{pg_now, Lsn, TimelineId};
use crate::protocol::backend::BackendMessage as Msg;
use crate::protocol::replication::{encode_hs_feedback, encode_status_update, ServerCopyMessage};
use crate::upstream::error::UpstreamError;

/// A message received during streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// WAL bytes starting at `data_start`; `wal_end` is the sender's flush position.
    XLogData {
        data_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// Primary keepalive; answer at once when `reply_requested`.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
    /// The server ended the timeline (CopyDone); call [`ReplConnection::finish_timeline`].
    EndOfTimeline,
    /// The server is shutting down (`COPY 0` inside COPY); the connection is over.
    ServerShutdown,
}

impl From<ServerCopyMessage> for CopyEvent {
    fn from(m: ServerCopyMessage) -> CopyEvent {
        match m {
            ServerCopyMessage::XLogData {
                data_start,
                wal_end,
                send_time,
                data,
            } => CopyEvent::XLogData {
                data_start,
                wal_end,
                send_time,
                data,
            },
            ServerCopyMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            } => CopyEvent::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            },
        }
    }
}

impl ReplConnection {
    /// `START_REPLICATION [SLOT "s"] PHYSICAL X/X TIMELINE n`. Returns once the server
    /// has entered COPY mode; an ErrorResponse before that is `Server`. If the server answers
    /// without COPY (start exactly at the end of a historic timeline), the first
    /// [`recv_copy`](Self::recv_copy) returns `EndOfTimeline` and
    /// [`finish_timeline`](Self::finish_timeline) returns the next timeline.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<()> {
        self.ensure_idle().await?;
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        let q = format!("START_REPLICATION {slot}PHYSICAL {start} TIMELINE {tli}");
        tracing::debug!(query = %q, "upstream command");
        frontend::query(&q, &mut self.wbuf)?;
        self.flush().await?;
        let mut next = None;
        let mut err = None;
        loop {
            match self.read_reply().await? {
                Msg::CopyBothResponse if err.is_none() => {
                    self.state = State::Copy;
                    return Ok(());
                }
                Msg::ErrorResponse(e) => err = Some(e),
                Msg::RowDescription(_) | Msg::CommandComplete(_) => {}
                Msg::DataRow(r) => next = Self::next_tli_row(&r)?,
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                Msg::ReadyForQuery(_) => {
                    if let Some(e) = err {
                        self.state = State::Idle;
                        return Err(UpstreamError::Server(e));
                    }
                    self.state = State::EndedWithoutCopy(next);
                    return Ok(());
                }
                other => {
                    self.state = State::Broken;
                    return Err(UpstreamError::protocol(format!(
                        "unexpected response to START_REPLICATION: {other:?}"
                    )));
                }
            }
        }
    }

    fn next_tli_row(r: &[Option<Bytes>]) -> Result<Option<(TimelineId, Lsn)>> {
        let tli = text(r.first(), "next_tli")?;
        let pos = text(r.get(1), "next_tli_startpos")?;
        match (tli, pos) {
            (Some(t), Some(p)) => {
                let t = t.parse::<u32>().map_err(|_| {
                    UpstreamError::protocol(format!("invalid next timeline \"{t}\""))
                })?;
                let p = p.parse::<Lsn>().map_err(|_| {
                    UpstreamError::protocol(format!(
                        "could not parse next timeline's starting point \"{p}\""
                    ))
                })?;
                Ok(Some((t, p)))
            }
            _ => Ok(None),
        }
    }

    /// The next streaming event. Cancel-safe (use it in `tokio::select!`): partial input is
    /// kept in the connection's buffer. NoticeResponse is logged, ParameterStatus recorded.
    /// An ErrorResponse inside COPY is returned as `Server` (COPY is over; the session
    /// can take commands again if the error was not FATAL).
    pub async fn recv_copy(&mut self) -> Result<CopyEvent> {
        match self.state {
            State::Copy => {}
            State::EndedWithoutCopy(_) | State::ServerCopyDone => {
                return Ok(CopyEvent::EndOfTimeline)
            }
            ref s => {
                return Err(UpstreamError::protocol(format!(
                    "not in COPY mode (state {s:?})"
                )))
            }
        }
        loop {
            match self.read_msg().await? {
                Msg::CopyData(p) => {
                    return ServerCopyMessage::decode(&p)
                        .map(CopyEvent::from)
                        .map_err(|e| UpstreamError::protocol(e.to_string()))
                }
                Msg::CopyDone => {
                    self.state = State::ServerCopyDone;
                    return Ok(CopyEvent::EndOfTimeline);
                }
                Msg::CommandComplete(t) if t == "COPY 0" => {
                    self.state = State::Broken;
                    return Ok(CopyEvent::ServerShutdown);
                }
                Msg::ErrorResponse(e) => {
                    self.state = if e.severity == "ERROR" {
                        State::StaleReadyForQuery
                    } else {
                        State::Broken
                    };
                    return Err(UpstreamError::Server(e));
                }
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                other => {
                    self.state = State::Broken;
                    return Err(UpstreamError::protocol(format!(
                        "unexpected message during streaming: {other:?}"
                    )));
                }
            }
        }
    }

    /// Sends a standby status update (`r`) with the current time.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        encode_status_update(
            &mut self.wbuf,
            write,
            flush,
            apply,
            pg_now(),
            reply_requested,
        );
        self.flush().await
    }

    /// Sends hot standby feedback (`h`) with the current time.
    pub async fn send_hs_feedback(
        &mut self,
        xmin: u32,
        xmin_epoch: u32,
        catalog_xmin: u32,
        catalog_xmin_epoch: u32,
    ) -> Result<()> {
        encode_hs_feedback(
            &mut self.wbuf,
            pg_now(),
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch,
        );
        self.flush().await
    }

    /// Ends COPY: after `EndOfTimeline` (server CopyDone) or to stop streaming ourselves.
    /// Sends CopyDone, discards WAL still in flight (client stop), reads the optional
    /// `next_tli, next_tli_startpos` row, the CommandCompletes and ReadyForQuery.
    /// Returns the next timeline and its start when the server reported one.
    pub async fn finish_timeline(&mut self) -> Result<Option<(TimelineId, Lsn)>> {
        match std::mem::replace(&mut self.state, State::Broken) {
            State::EndedWithoutCopy(next) => {
                self.state = State::Idle;
                return Ok(next);
            }
            State::ServerCopyDone => {
                frontend::copy_done(&mut self.wbuf);
                self.flush().await?;
            }
            State::Copy => {
                frontend::copy_done(&mut self.wbuf);
                self.flush().await?;
                loop {
                    match self.read_reply().await? {
                        Msg::CopyData(_) => {}
                        Msg::CopyDone => break,
                        Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                        Msg::ParameterStatus { name: k, value: v } => {
                            self.params.insert(k, v);
                        }
                        Msg::ErrorResponse(e) => {
                            self.state = State::StaleReadyForQuery;
                            return Err(UpstreamError::Server(e));
                        }
                        Msg::CommandComplete(t) if t == "COPY 0" => {
                            return Err(UpstreamError::protocol("server shut down"))
                        }
                        other => {
                            return Err(UpstreamError::protocol(format!(
                                "unexpected message while ending COPY: {other:?}"
                            )))
                        }
                    }
                }
            }
            s => {
                self.state = s.clone();
                return Err(UpstreamError::protocol(format!(
                    "finish_timeline called while not streaming (state {s:?})"
                )));
            }
        }
        let mut next = None;
        let mut err = None;
        loop {
            match self.read_reply().await? {
                Msg::RowDescription(_) | Msg::CommandComplete(_) => {}
                Msg::DataRow(r) => next = Self::next_tli_row(&r)?,
                Msg::ErrorResponse(e) => err = Some(e),
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                // Late CopyData after the server's CopyDone cannot happen; tolerate none.
                Msg::ReadyForQuery(_) => break,
                other => {
                    return Err(UpstreamError::protocol(format!(
                        "unexpected message after COPY: {other:?}"
                    )))
                }
            }
        }
        self.state = State::Idle;
        match err {
            Some(e) => Err(UpstreamError::Server(e)),
            None => Ok(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{split_frame, Frame};
    use crate::protocol::replication::{encode_keepalive, encode_xlogdata_header};
    use crate::upstream::conn::MAX_MESSAGE;
    use bytes::BytesMut;

    #[test]
    fn copy_payloads() {
        let mut buf = BytesMut::new();
        encode_status_update(&mut buf, Lsn(1), Lsn(2), Lsn(3), 4, true);
        encode_hs_feedback(&mut buf, 5, 1, 2, 3, 4);
        encode_keepalive(&mut buf, Lsn(0x1_0000_0010), 77, true);
        let mut w = BytesMut::new();
        encode_xlogdata_header(&mut w, Lsn(0x300_0000), Lsn(0x300_0100), 5, 3);
        w.extend_from_slice(b"wal");
        buf.extend_from_slice(&w);
        let mut frames = Vec::new();
        while let Some(f) = split_frame(&mut buf, MAX_MESSAGE).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].body.len(), 34);
        assert_eq!(frames[1].body.len(), 25);
        let ev = |f: &Frame| ServerCopyMessage::decode(&f.body).map(CopyEvent::from);
        assert_eq!(
            ev(&frames[2]).unwrap(),
            CopyEvent::Keepalive {
                wal_end: Lsn(0x1_0000_0010),
                send_time: 77,
                reply_requested: true
            }
        );
        match ev(&frames[3]).unwrap() {
            CopyEvent::XLogData {
                data_start, data, ..
            } => {
                assert_eq!(data_start, Lsn(0x300_0000));
                assert_eq!(&data[..], b"wal");
                // Sliced from the frame, not copied.
                assert_eq!(data.as_ptr(), frames[3].body[25..].as_ptr());
            }
            e => panic!("{e:?}"),
        }
    }
}

//! One client connection after accept: the session task, its writer task, and the
//! simple-query command loop.
//!
//! Owns: the connection's lifetime (pre-auth timeout around `startup.rs`, the FATAL sent on
//! a refused startup, status rows and metrics of a session), the per-session writer task fed
//! by a bounded channel (a client that stops reading blocks only its own session), framing
//! of incoming messages, and the command loop (Query → `cmd::execute`, Sync, extended
//! protocol refused, Terminate). Answers go out as a [`Reply`] (`reply.rs`), which owns
//! ReadyForQuery. Must not: write WAL, build protocol rows by hand.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::listener::{Admission, Conn, Peer, Refusal};
use super::reply::Reply;
use super::startup::{startup, Established, StartupFail};
use super::{status, ServeView, Shared};
use crate::error::{codes, SqlState};
use crate::lsn::{history_file_name, Lsn};
use crate::protocol::backend::{self, ErrorFields};
use crate::protocol::frame::split_frame;
use crate::protocol::frontend::FrontendMessage;

/// Any byte stream a session can run on (TCP or TLS over TCP).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;

/// Longest message accepted after startup (queries and standby messages are small).
const MAX_MESSAGE: usize = 1 << 20;
/// Messages queued towards one client before its session waits: 8 × 128 kB is one 1 MB
/// read-ahead buffer's worth (the socket's send buffer holds more), so a session keeps at most
/// about two such buffers alive.
const OUT_QUEUE: usize = 8;

/// One item for the writer task: a message, or an XLogData header followed by WAL bytes
/// shared with the store's tail (no copy).
pub(crate) enum Out {
    Msg(Bytes),
    Wal(Bytes, Bytes),
}

/// Why a session ends early; FATAL errors are sent to the client first.
#[derive(Debug)]
pub(crate) enum End {
    /// The client went away or the connection failed.
    Gone,
    /// Send this FATAL and close.
    Fatal(ErrorFields),
}

pub(crate) fn fatal(code: &str, message: impl Into<String>) -> ErrorFields {
    ErrorFields {
        severity: "FATAL".into(),
        ..ErrorFields::error(code, message)
    }
}

pub(crate) fn err_of<E: SqlState + std::fmt::Display>(e: &E) -> ErrorFields {
    ErrorFields::error(e.sqlstate(), e.to_string())
}

/// How long a refused client is given to take its FATAL before the socket is closed.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

fn boxed(conn: Conn) -> BoxIo {
    match conn {
        Conn::Tcp(s) => Box::new(s),
        Conn::Unix(s) => Box::new(s),
    }
}

/// Sends `e` (if any) and closes, giving the client at most [`REFUSAL_WRITE`].
async fn send_fatal_and_close(mut io: BoxIo, e: Option<&ErrorFields>) {
    let mut buf = BytesMut::new();
    if let Some(e) = e {
        backend::error_response(&mut buf, e);
    }
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        let _ = io.write_all(&buf).await;
        let _ = io.flush().await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// A connection refused by the admission limits (`listener.rs`): `sorry, too many clients
/// already` at once, before anything is read (PostgreSQL checks `max_connections` before the
/// backend reads the startup packet too, and reports it in the protocol-3 format).
pub(crate) async fn refuse_at_accept(
    conn: Conn,
    peer: Peer,
    why: Refusal,
    permit: OwnedSemaphorePermit,
) {
    metrics::counter!(status::REFUSED, "reason" => why.reason()).increment(1);
    tracing::debug!("connection from {peer} refused: {}", why.reason());
    let e = fatal(
        codes::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    );
    send_fatal_and_close(boxed(conn), Some(&e)).await;
    drop(permit);
}

/// Entry point of a connection task; `admission` is its place under the limits, held until
/// the session ends (its pre-auth part until authentication).
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: Conn,
    peer: Peer,
    mut admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    let timeout = shared.settings.startup_timeout;
    let started = tokio::time::timeout(timeout, startup(&shared, boxed(conn), &peer)).await;
    let est = match started {
        Ok(Ok(Some(est))) => est,
        Ok(Ok(None)) => return,
        Ok(Err(StartupFail { io: fail_io, error })) => {
            if let Some(io) = fail_io {
                if error.is_some() {
                    send_fatal_and_close(io, error.as_ref()).await;
                }
            }
            return;
        }
        Err(_) => {
            // PostgreSQL: "canceling authentication due to timeout", then close.
            tracing::info!("connection from {peer}: startup timed out");
            metrics::counter!(status::REFUSED, "reason" => "timeout").increment(1);
            return;
        }
    };
    admission.authenticated();
    // the session's metrics and errors are its cluster's (a shared listener routed it)
    let cluster = est.shared.cluster.clone();
    crate::ops::scope(cluster, established(est, peer, admission, shutdown)).await;
}

/// The session after authentication, in its cluster's scope.
async fn established(
    est: Established,
    peer: Peer,
    admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    let _admission = admission;
    let Established {
        shared,
        io,
        rbuf,
        user,
        application_name,
        pid,
    } = est;
    let (rd, wr) = tokio::io::split(io);
    let (out, rx) = mpsc::channel(OUT_QUEUE);
    let writer = tokio::spawn(writer_task(wr, rx));
    let id = shared.new_session_id();
    let (client_addr, client_port) = peer.addr_port();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    shared.status.set(
        id,
        status::WalSenderStatus {
            pid,
            usename: user.clone(),
            application_name: application_name.clone(),
            client_addr,
            client_port,
            backend_start: now_unix,
            state: "startup".into(),
            timeline: 0,
            sent_lsn: None,
            write_lsn: None,
            flush_lsn: None,
            replay_lsn: None,
            write_lag: None,
            flush_lag: None,
            replay_lag: None,
            sync_state: "async".into(),
            slot_name: None,
            reply_time: None,
        },
    );
    metrics::gauge!(status::SESSIONS).increment(1.0);
    let mut session = Session {
        shared: shared.clone(),
        id,
        pid,
        user,
        application_name,
        conn: MessageReader { rd, rbuf },
        out,
        shutdown,
        skip_until_sync: false,
    };
    let end = session.command_loop().await;
    if let End::Fatal(e) = &end {
        let mut buf = BytesMut::new();
        backend::error_response(&mut buf, e);
        let _ = session.out.try_send(Out::Msg(buf.freeze()));
    }
    let Session { out, .. } = session;
    drop(out);
    // Let the writer flush what is queued, but never wait on a client that stopped reading.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    shared.slots.session_ended(id);
    shared.feedback.remove(id);
    shared.status.remove(id);
    metrics::gauge!(status::SESSIONS).decrement(1.0);
}

/// Most bytes the writer gathers from its queue into one vectored write.
const WRITE_BATCH: usize = 1 << 20;
/// Most buffers in one vectored write (Linux accepts 1024; each message is one or two).
const WRITE_SLICES: usize = 64;

/// Writes what the session queues, gathering everything already queued (up to
/// [`WRITE_BATCH`] bytes) into one vectored write: one syscall per batch instead of two per
/// XLogData message, and the WAL bytes go to the socket straight from the store's shared
/// buffers. Flushes (a TLS stream's records) whenever the queue is empty.
async fn writer_task(mut w: tokio::io::WriteHalf<BoxIo>, mut rx: mpsc::Receiver<Out>) {
    let mut batch = Batch::default();
    while let Some(o) = rx.recv().await {
        batch.push(o);
        while batch.bytes < WRITE_BATCH && batch.bufs.len() < WRITE_SLICES {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        if batch.write_to(&mut w).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Buffers queued for one vectored write.
#[derive(Default)]
struct Batch {
    bufs: std::collections::VecDeque<Bytes>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, o: Out) {
        let mut add = |b: Bytes| {
            if !b.is_empty() {
                self.bytes = self.bytes.saturating_add(b.len());
                self.bufs.push_back(b);
            }
        };
        match o {
            Out::Msg(b) => add(b),
            Out::Wal(h, d) => {
                add(h);
                add(d);
            }
        }
    }

    /// Writes every buffer, in order, and empties the batch.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        use bytes::Buf;
        while !self.bufs.is_empty() {
            let mut n = {
                let slices: Vec<std::io::IoSlice<'_>> = self
                    .bufs
                    .iter()
                    .take(WRITE_SLICES)
                    .map(|b| std::io::IoSlice::new(b))
                    .collect();
                w.write_vectored(&slices).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.bytes = self.bytes.saturating_sub(n);
            while n > 0 {
                let Some(front) = self.bufs.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n = n.saturating_sub(front.len());
                    self.bufs.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        self.bytes = 0;
        Ok(())
    }
}

/// An authenticated replication session.
pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub pid: i32,
    pub user: String,
    pub application_name: String,
    pub conn: MessageReader,
    pub out: mpsc::Sender<Out>,
    pub shutdown: watch::Receiver<bool>,
    pub(super) skip_until_sync: bool,
}

/// The read side of a session's connection.
pub(crate) struct MessageReader {
    pub(super) rd: ReadHalf<BoxIo>,
    pub(super) rbuf: BytesMut,
}

impl MessageReader {
    /// Next complete message; `Err(End::Gone)` on EOF. Cancel-safe (state lives in `rbuf`).
    pub async fn read_message(&mut self) -> Result<FrontendMessage, End> {
        loop {
            match split_frame(&mut self.rbuf, MAX_MESSAGE) {
                Ok(Some(frame)) => {
                    return FrontendMessage::decode(frame)
                        .map_err(|e| End::Fatal(fatal(e.sqlstate(), e.to_string())))
                }
                Ok(None) => {}
                Err(e) => return Err(End::Fatal(fatal(e.sqlstate(), e.to_string()))),
            }
            match self.rd.read_buf(&mut self.rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(End::Gone),
            }
        }
    }
}

impl Session {
    /// Queues a message, waiting while the client's queue is full.
    pub async fn send(&self, buf: BytesMut) -> Result<(), End> {
        self.out
            .send(Out::Msg(buf.freeze()))
            .await
            .map_err(|_| End::Gone)
    }

    /// A command's answer, ended by ReadyForQuery.
    pub async fn reply(&self, r: impl Into<Reply>) -> Result<(), End> {
        let mut buf = BytesMut::new();
        r.into().encode(&mut buf);
        self.send(buf).await
    }

    /// ErrorResponse + ReadyForQuery: the command failed, the session goes on.
    pub async fn send_error(&self, e: ErrorFields) -> Result<(), End> {
        self.reply(Reply::Error(e)).await
    }

    async fn command_loop(&mut self) -> End {
        loop {
            let msg = tokio::select! {
                m = self.conn.read_message() => m,
                _ = self.shutdown.changed() => {
                    return End::Fatal(fatal(codes::ADMIN_SHUTDOWN, "terminating connection due to administrator command"));
                }
            };
            let r = match msg {
                Err(end) => return end,
                Ok(FrontendMessage::Query(q)) if !self.skip_until_sync => {
                    super::cmd::execute(self, &q).await
                }
                Ok(FrontendMessage::Query(_)) => Ok(()),
                Ok(FrontendMessage::Terminate) => return End::Gone,
                Ok(FrontendMessage::Sync) => {
                    self.skip_until_sync = false;
                    self.reply(Reply::Ready).await
                }
                Ok(FrontendMessage::Flush) => Ok(()),
                Ok(FrontendMessage::Extended(_)) => {
                    if self.skip_until_sync {
                        Ok(())
                    } else {
                        self.skip_until_sync = true;
                        let mut b = BytesMut::new();
                        backend::error_response(
                            &mut b,
                            &ErrorFields::error(
                                codes::PROTOCOL_VIOLATION,
                                "extended query protocol not supported in a replication connection",
                            ),
                        );
                        self.send(b).await
                    }
                }
                // Outside COPY these are ignored, as PostgreSQL does.
                Ok(
                    FrontendMessage::CopyData(_)
                    | FrontendMessage::CopyDone
                    | FrontendMessage::CopyFail(_),
                ) => Ok(()),
                Ok(FrontendMessage::Password(_)) => {
                    return End::Fatal(fatal(
                        codes::PROTOCOL_VIOLATION,
                        "invalid frontend message type 112",
                    ))
                }
                Ok(FrontendMessage::Unknown(t)) => {
                    return End::Fatal(fatal(
                        codes::PROTOCOL_VIOLATION,
                        format!("invalid frontend message type {t}"),
                    ))
                }
            };
            if let Err(end) = r {
                return end;
            }
        }
    }

    /// The timeline `lsn` belongs to in the current history.
    pub fn tli_of(&self, view: &ServeView, lsn: Lsn) -> u32 {
        let entries = self.history(view.timeline).unwrap_or_default();
        crate::wal::history::tli_of_lsn(&entries, view.timeline, lsn)
    }

    /// Parsed history of `tli` from the data directory (empty for timeline 1).
    pub fn history(&self, tli: u32) -> Option<Vec<crate::wal::history::HistoryEntry>> {
        if tli <= 1 {
            return Some(Vec::new());
        }
        let text =
            std::fs::read_to_string(self.shared.data_dir.join(history_file_name(tli))).ok()?;
        crate::wal::history::parse_history(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most `max` bytes per write, like a socket with little room.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.max;
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(left);
                self.got.extend_from_slice(&b[..k]);
                left -= k;
                n += k;
                if left == 0 {
                    break;
                }
            }
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn batches_are_written_whole_and_in_order_across_partial_writes() {
        let msgs: Vec<Out> = (0u8..100)
            .map(|i| {
                if i % 3 == 0 {
                    Out::Msg(Bytes::from(vec![i; usize::from(i) % 5 + 1]))
                } else {
                    Out::Wal(
                        Bytes::from(vec![i; 25]),
                        Bytes::from(vec![i.wrapping_add(1); usize::from(i) * 7]),
                    )
                }
            })
            .collect();
        let mut want = Vec::new();
        for o in &msgs {
            match o {
                Out::Msg(b) => want.extend_from_slice(b),
                Out::Wal(h, d) => {
                    want.extend_from_slice(h);
                    want.extend_from_slice(d);
                }
            }
        }
        for max in [1, 13, 4096, usize::MAX] {
            let mut w = Trickle {
                got: Vec::new(),
                max,
                writes: 0,
            };
            let mut batch = Batch::default();
            for o in msgs.iter().map(|o| match o {
                Out::Msg(b) => Out::Msg(b.clone()),
                Out::Wal(h, d) => Out::Wal(h.clone(), d.clone()),
            }) {
                batch.push(o);
            }
            batch.write_to(&mut w).await.unwrap();
            assert_eq!(w.got, want, "max {max}");
            assert!(batch.bufs.is_empty() && batch.bytes == 0);
            if max == usize::MAX {
                // 166 buffers in writes of at most 64 slices
                assert_eq!(w.writes, 3);
            }
        }
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error() {
        let mut w = Trickle {
            got: Vec::new(),
            max: 0,
            writes: 0,
        };
        let mut batch = Batch::default();
        batch.push(Out::Msg(Bytes::from_static(b"x")));
        let e = batch.write_to(&mut w).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }
}

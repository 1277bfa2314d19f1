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
/// Messages queued towards one client before its session waits.
const OUT_QUEUE: usize = 16;

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

async fn writer_task(mut w: tokio::io::WriteHalf<BoxIo>, mut rx: mpsc::Receiver<Out>) {
    async fn put(w: &mut tokio::io::WriteHalf<BoxIo>, o: Out) -> std::io::Result<()> {
        match o {
            Out::Msg(b) => w.write_all(&b).await,
            Out::Wal(h, d) => {
                w.write_all(&h).await?;
                w.write_all(&d).await
            }
        }
    }
    while let Some(o) = rx.recv().await {
        if put(&mut w, o).await.is_err() {
            return;
        }
        while let Ok(o) = rx.try_recv() {
            if put(&mut w, o).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
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

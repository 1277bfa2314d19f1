//! BASE_BACKUP: walrelay serves the newest complete base backup stored in its archive, so
//! `pg_basebackup -h walrelay -X stream [-R]` makes a fork or a standby without touching the
//! primary (see docs/walsender.md, "BASE_BACKUP").
//!
//! Owns: which BASE_BACKUP options walrelay refuses (INCREMENTAL, a TARGET other than
//! 'client', server-side COMPRESSION, WAL i.e. `-X fetch`) and with which texts; choosing the
//! backup (same system, start and stop on this server's timeline history, stop not past
//! what walrelay can serve, complete in the archive); the message sequence of both protocol
//! shapes — PostgreSQL 15+ (`basebackup_copy.c`: start row, tablespace rows, one COPY with
//! `n`/`d`/`p`/`m` messages, end row) and 13/14 (start row, tablespace rows, one COPY per tar,
//! one for the manifest, end row), picked by the server version walrelay reports; MAX_RATE
//! throttling and progress messages.
//!
//! The stored bytes are sent verbatim (the tars and the manifest the primary produced), so
//! `pg_verifybackup` checks the result; the start/end positions are the stored backup's, so
//! `-X stream` asks walrelay for exactly the WAL the backup needs (served from the store,
//! else the archive, as any START_REPLICATION).
//!
//! Must not: read the archive's layout itself (that is [`crate::backup::catalog`], behind
//! [`BackupSource`]), write anything, or talk to the primary.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::error::codes;
use crate::lsn::Lsn;
use crate::protocol::backend::{ErrorFields, INT8_OID, OID_OID, TEXT_OID};
use crate::protocol::basebackup as wire;
use crate::protocol::command::{BaseBackupOptions, ManifestOption};
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::session::{fatal, End, Out, Session};
use crate::server::ServeView;

/// Largest CopyData payload sent (PostgreSQL's default `bbs_buffer_length` is 32 kB).
const CHUNK: usize = 128 * 1024;
/// At most one progress message per this interval while an archive is sent.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One tar of a stored backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServedArchive {
    /// `base.tar` or `<oid>.tar`.
    pub name: String,
    /// `None` for the main data directory.
    pub tablespace_oid: Option<u32>,
    pub location: Option<String>,
    /// Tar bytes.
    pub size: u64,
}

/// What walrelay needs to know of a stored backup to serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServedBackup {
    pub id: String,
    pub system_id: u64,
    pub start_lsn: Lsn,
    pub timeline: u32,
    pub stop_lsn: Lsn,
    pub stop_timeline: u32,
    /// In the order the primary sent them (tablespaces first, `base.tar` last).
    pub archives: Vec<ServedArchive>,
    pub has_manifest: bool,
}

/// A stream of stored bytes, decrypted and decompressed, that fails at its end if the
/// bytes differ from what was recorded.
pub(crate) type ByteStream = BoxStream<'static, Result<Bytes, String>>;

/// Where backups come from: the archive's backup catalog.
#[async_trait::async_trait]
pub(crate) trait BackupSource: Send + Sync {
    /// Every backup of `system_id` with whether it is complete, newest first. `Err`: the
    /// archive could not be read.
    async fn list(&self, system_id: u64) -> Result<Vec<(ServedBackup, bool)>, String>;
    /// The bytes of archive `name` of `backup`, or of its manifest (`name = None`).
    async fn open(&self, backup: &ServedBackup, name: Option<&str>) -> Result<ByteStream, String>;
}

fn not_supported(msg: &str, hint: &str) -> Reply {
    let mut e = ErrorFields::error(codes::FEATURE_NOT_SUPPORTED, msg);
    e.hint = Some(hint.into());
    Reply::Error(e)
}

/// The refusals of options walrelay cannot honour, in PostgreSQL's checking order.
pub(crate) fn refusal(opts: &BaseBackupOptions, major: u32) -> Option<Reply> {
    if major <= 14 && !opts.legacy_syntax {
        // The ( … ) syntax arrived with 15; a 13/14 server's grammar rejects it.
        return Some(Reply::Error(ErrorFields::error(
            codes::SYNTAX_ERROR,
            "syntax error",
        )));
    }
    if opts.incremental {
        return Some(not_supported(
            "walrelay does not serve incremental base backups",
            "Take a full backup (without --incremental).",
        ));
    }
    if let Some(t) = opts.target.as_deref().filter(|t| *t != "client") {
        return Some(not_supported(
            &format!("walrelay sends base backups only to the client, not to target \"{t}\""),
            "Use pg_basebackup without --target (or --target=client).",
        ));
    }
    if let Some(c) = opts.compression.as_deref().filter(|c| *c != "none") {
        return Some(not_supported(
            &format!("walrelay does not compress base backups on the server (compression \"{c}\")"),
            "Compress on the client, e.g. pg_basebackup --compress=client-gzip.",
        ));
    }
    if opts.wal {
        return Some(not_supported(
            "walrelay does not include WAL in the base backups it serves",
            "Use pg_basebackup -X stream (the default): the WAL is streamed from walrelay.",
        ));
    }
    None
}

/// The newest complete backup that walrelay can serve with the WAL it has: same system,
/// start and stop on the timelines this server's history gives those positions, and stop
/// not past walrelay's flush position.
pub(crate) fn choose(
    list: Vec<(ServedBackup, bool)>,
    view: &ServeView,
    tli_of: impl Fn(Lsn) -> u32,
) -> Result<ServedBackup, Reply> {
    let mut why_not = Vec::new();
    let mut best: Option<ServedBackup> = None;
    for (b, complete) in list {
        if b.system_id != view.system_id {
            continue;
        }
        let reason = if !complete {
            Some("its WAL is not all in the archive")
        } else if tli_of(b.start_lsn) != b.timeline || tli_of(b.stop_lsn) != b.stop_timeline {
            Some("it is not on this server's timeline history")
        } else if b.stop_lsn > view.flush {
            Some("walrelay has not received the WAL up to its end")
        } else {
            None
        };
        if let Some(r) = reason {
            why_not.push(format!("{}: {r}", b.id));
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|cur| (b.start_lsn, &b.id) > (cur.start_lsn, &cur.id))
        {
            best = Some(b);
        }
    }
    best.ok_or_else(|| {
        let mut e = ErrorFields::error(
            codes::OBJECT_NOT_IN_STATE,
            format!(
                "walrelay has no complete base backup of system {} to serve",
                view.system_id
            ),
        );
        if !why_not.is_empty() {
            why_not.sort();
            e.detail = Some(format!("Not usable: {}.", why_not.join("; ")));
        }
        e.hint = Some("Take one with walrelay backup.".into());
        Reply::Error(e)
    })
}

/// MANIFEST_CHECKSUMS other than the CRC32C `walrelay backup` takes: the stored manifest is
/// sent as it is, so say so (pg_basebackup prints notices on stderr).
fn checksums_notice(opts: &BaseBackupOptions, want_manifest: bool) -> Option<ErrorFields> {
    if !want_manifest || opts.manifest_checksums == "CRC32C" {
        return None;
    }
    let mut n = ErrorFields::error(
        "00000",
        format!(
            "walrelay serves the stored backup manifest with the checksums it was taken with; MANIFEST_CHECKSUMS '{}' is not applied",
            opts.manifest_checksums
        ),
    );
    n.severity = "NOTICE".into();
    Some(n)
}

fn position_rows(lsn: Lsn, tli: u32) -> ResultSet {
    ResultSet::new(
        "SELECT",
        vec![
            Column::new("recptr", TEXT_OID),
            Column::new("tli", INT8_OID),
        ],
    )
    .row([Some(lsn.to_string()), Some(tli.to_string())])
}

fn tablespace_rows(b: &ServedBackup, progress: bool) -> ResultSet {
    let mut rs = ResultSet::new(
        "SELECT",
        vec![
            Column::new("spcoid", OID_OID),
            Column::new("spclocation", TEXT_OID),
            Column::new("size", INT8_OID),
        ],
    );
    for a in &b.archives {
        let size = progress.then(|| (a.size / 1024).to_string());
        rs = rs.row([
            a.tablespace_oid.map(|o| o.to_string()),
            a.location.clone(),
            size,
        ]);
    }
    rs
}

/// Runs BASE_BACKUP; the session goes on afterwards.
pub(crate) async fn run(
    s: &mut Session,
    view: ServeView,
    opts: BaseBackupOptions,
) -> Result<(), End> {
    let major = crate::server::version_major(&view.server_version);
    if let Some(r) = refusal(&opts, major) {
        return s.reply(r).await;
    }
    let Some(source) = source(s, &view).await else {
        return s.reply(no_archive(&view)).await;
    };
    let list = match source.list(view.system_id).await {
        Ok(l) => l,
        Err(e) => {
            return s
                .send_error(ErrorFields::error(
                    codes::IO_ERROR,
                    format!("could not list the base backups in the archive: {e}"),
                ))
                .await
        }
    };
    let backup = match choose(list, &view, |lsn| s.tli_of(&view, lsn)) {
        Ok(b) => b,
        Err(r) => return s.reply(r).await,
    };
    tracing::info!(
        "pid {}: serving base backup {} ({} .. {}, timeline {}) to {}",
        s.pid,
        backup.id,
        backup.start_lsn,
        backup.stop_lsn,
        backup.timeline,
        s.application_name
    );
    s.shared.status.update(s.id, |r| r.state = "backup".into());
    let r = send(s, source.as_ref(), &backup, &opts, major).await;
    s.shared.status.update(s.id, |r| r.state = "startup".into());
    match r {
        Ok(()) => {
            tracing::info!("pid {}: base backup {} sent", s.pid, backup.id);
            Ok(())
        }
        Err(Failed::End(e)) => Err(e),
        Err(Failed::Source(e)) => {
            tracing::error!("pid {}: base backup {}: {e}", s.pid, backup.id);
            s.send_error(ErrorFields::error(
                codes::IO_ERROR,
                format!(
                    "could not read base backup {} from the archive: {e}",
                    backup.id
                ),
            ))
            .await
        }
    }
}

fn no_archive(view: &ServeView) -> Reply {
    let mut e = ErrorFields::error(
        codes::OBJECT_NOT_IN_STATE,
        format!(
            "walrelay has no complete base backup of system {} to serve",
            view.system_id
        ),
    );
    e.detail = Some("Archiving is disabled (archive.url = \"none\").".into());
    e.hint = Some("Configure an archive and take one with walrelay backup.".into());
    Reply::Error(e)
}

enum Failed {
    End(End),
    Source(String),
}

impl From<End> for Failed {
    fn from(e: End) -> Failed {
        Failed::End(e)
    }
}

/// Paces sending to MAX_RATE (kB/s) and decides when a progress message is due.
struct Pace {
    started: Instant,
    rate: u64,
    sent: u64,
    last_progress: Instant,
}

impl Pace {
    fn new(max_rate_kb: u32) -> Pace {
        let now = Instant::now();
        Pace {
            started: now,
            rate: u64::from(max_rate_kb).saturating_mul(1024),
            sent: 0,
            last_progress: now,
        }
    }
    /// How long to wait after `n` more bytes so the average stays at the rate.
    fn after(&mut self, n: usize) -> Option<Duration> {
        self.sent = self.sent.saturating_add(n as u64);
        if self.rate == 0 {
            return None;
        }
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        due.checked_sub(self.started.elapsed())
            .filter(|d| !d.is_zero())
    }
    fn progress_due(&mut self) -> bool {
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            true
        } else {
            false
        }
    }
}

async fn msg(s: &Session, f: impl FnOnce(&mut BytesMut)) -> Result<(), End> {
    let mut b = BytesMut::new();
    f(&mut b);
    s.send(b).await
}

/// Sends one stored object as CopyData messages (`typed`: 15+ `d` messages; `tar`: cut as
/// a ≤ 14 server sends a tar, see [`wire::TarChunker`]).
async fn copy_object(
    s: &Session,
    mut stream: ByteStream,
    typed: bool,
    pace: &mut Pace,
    progress: bool,
    mut tar: Option<wire::TarChunker>,
) -> Result<(), Failed> {
    while let Some(item) = stream.next().await {
        let data = item.map_err(Failed::Source)?;
        let pieces = match tar.as_mut() {
            Some(c) => c.feed(data).map_err(|e| Failed::Source(e.to_string()))?,
            None => vec![data],
        };
        for data in pieces {
            send_piece(s, data, typed, pace, progress).await?;
        }
    }
    if let Some(c) = &tar {
        c.finish().map_err(|e| Failed::Source(e.to_string()))?;
    }
    Ok(())
}

/// One piece of stored bytes, in messages of at most [`CHUNK`] bytes.
async fn send_piece(
    s: &Session,
    data: Bytes,
    typed: bool,
    pace: &mut Pace,
    progress: bool,
) -> Result<(), Failed> {
    let mut at = 0;
    while at < data.len() {
        if *s.shutdown.borrow() {
            return Err(Failed::End(End::Fatal(fatal(
                codes::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ))));
        }
        let n = CHUNK.min(data.len().saturating_sub(at));
        let piece = data.slice(at..at.saturating_add(n));
        at = at.saturating_add(n);
        let header =
            wire::data_header(n, typed).ok_or_else(|| Failed::Source("chunk too large".into()))?;
        s.out
            .send(Out::Wal(header.freeze(), piece))
            .await
            .map_err(|_| End::Gone)?;
        if let Some(wait) = pace.after(n) {
            tokio::time::sleep(wait).await;
        }
        if progress && pace.progress_due() {
            let done = pace.sent;
            msg(s, |b| wire::progress(b, done)).await?;
        }
    }
    Ok(())
}

async fn send(
    s: &Session,
    source: &dyn BackupSource,
    b: &ServedBackup,
    opts: &BaseBackupOptions,
    major: u32,
) -> Result<(), Failed> {
    let modern = major >= 15;
    let want_manifest = opts.manifest != ManifestOption::No && b.has_manifest;
    // Open the first object before anything is sent, so that an unreadable archive is a
    // plain ERROR rather than a broken COPY.
    let mut first = match b.archives.first() {
        Some(a) => Some(
            source
                .open(b, Some(&a.name))
                .await
                .map_err(Failed::Source)?,
        ),
        None => None,
    };
    let mut buf = BytesMut::new();
    if let Some(n) = checksums_notice(opts, want_manifest) {
        crate::protocol::backend::notice_response(&mut buf, &n);
    }
    Reply::from(position_rows(b.start_lsn, b.timeline)).encode_body(&mut buf);
    Reply::from(tablespace_rows(b, opts.progress)).encode_body(&mut buf);
    if modern {
        wire::copy_out_response(&mut buf);
    }
    s.send(buf).await?;
    let mut pace = Pace::new(opts.max_rate);
    for a in &b.archives {
        let stream = match first.take() {
            Some(st) => st,
            None => source
                .open(b, Some(&a.name))
                .await
                .map_err(Failed::Source)?,
        };
        if modern {
            let loc = a.location.clone().unwrap_or_default();
            msg(s, |m| wire::new_archive(m, &a.name, &loc)).await?;
        } else {
            msg(s, wire::copy_out_response).await?;
        }
        let tar = (!modern).then(wire::TarChunker::default);
        copy_object(s, stream, modern, &mut pace, modern, tar).await?;
        if modern {
            let done = pace.sent;
            pace.last_progress = Instant::now();
            msg(s, |m| wire::progress(m, done)).await?;
        } else {
            msg(s, crate::protocol::backend::copy_done).await?;
        }
    }
    if want_manifest {
        let stream = source.open(b, None).await.map_err(Failed::Source)?;
        if modern {
            msg(s, wire::manifest_start).await?;
        } else {
            msg(s, wire::copy_out_response).await?;
        }
        // The manifest is not throttled by PostgreSQL either.
        let mut free = Pace::new(0);
        copy_object(s, stream, modern, &mut free, false, None).await?;
        if !modern {
            msg(s, crate::protocol::backend::copy_done).await?;
        }
    }
    let mut buf = BytesMut::new();
    if modern {
        crate::protocol::backend::copy_done(&mut buf);
    }
    let end_tag = if major >= 14 { "BASE_BACKUP" } else { "SELECT" };
    Reply::Many(vec![
        position_rows(b.stop_lsn, b.stop_timeline).into(),
        Reply::complete(end_tag),
    ])
    .encode(&mut buf);
    s.send(buf).await?;
    Ok(())
}

/// The backup catalog of walrelay's archive for this system, if archiving is on.
async fn source(s: &Session, view: &ServeView) -> Option<Box<dyn BackupSource>> {
    let lazy = s.shared.archive.as_ref()?;
    match lazy.get(view.system_id, view.seg_size).await {
        Ok(Some(reader)) => Some(Box::new(catalog_source::CatalogSource::new(reader))),
        Ok(None) => Some(Box::new(catalog_source::Empty)),
        Err(e) => {
            tracing::warn!("base backup: archive: {e}");
            Some(Box::new(catalog_source::Failing(e.to_string())))
        }
    }
}

mod catalog_source;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::{parse_command, ReplicationCommand};

    fn opts(q: &str) -> BaseBackupOptions {
        match parse_command(q).unwrap() {
            ReplicationCommand::BaseBackup(o) => o,
            c => panic!("{c:?}"),
        }
    }

    fn err_text(r: Option<Reply>) -> (String, String, Option<String>) {
        match r {
            Some(Reply::Error(e)) => (e.code, e.message, e.hint),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals() {
        assert!(refusal(&opts("BASE_BACKUP (LABEL 'x', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', TARGET 'client', COMPRESSION 'none', MAX_RATE 100)"), 18).is_none());
        assert!(refusal(
            &opts("BASE_BACKUP LABEL 'x' PROGRESS FAST NOWAIT MANIFEST 'yes'"),
            14
        )
        .is_none());
        assert!(refusal(&opts("BASE_BACKUP LABEL 'x'"), 15).is_none());
        assert_eq!(
            err_text(refusal(&opts("BASE_BACKUP (LABEL 'x')"), 14)),
            ("42601".into(), "syntax error".into(), None)
        );
        assert_eq!(
            err_text(refusal(&opts("BASE_BACKUP (INCREMENTAL)"), 17)).1,
            "walrelay does not serve incremental base backups"
        );
        assert_eq!(
            err_text(refusal(
                &opts("BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/x')"),
                15
            ))
            .1,
            "walrelay sends base backups only to the client, not to target \"server\""
        );
        assert_eq!(
            err_text(refusal(&opts("BASE_BACKUP (COMPRESSION 'gzip')"), 15)).1,
            "walrelay does not compress base backups on the server (compression \"gzip\")"
        );
        let (code, msg, hint) = err_text(refusal(&opts("BASE_BACKUP (WAL)"), 15));
        assert_eq!(code, "0A000");
        assert_eq!(
            msg,
            "walrelay does not include WAL in the base backups it serves"
        );
        assert_eq!(
            hint.as_deref(),
            Some("Use pg_basebackup -X stream (the default): the WAL is streamed from walrelay.")
        );
        assert!(refusal(&opts("BASE_BACKUP WAL"), 14).is_some());
    }

    fn backup(id: &str, start: u64, stop: u64, tli: u32) -> ServedBackup {
        ServedBackup {
            id: id.into(),
            system_id: 7,
            start_lsn: Lsn(start),
            timeline: tli,
            stop_lsn: Lsn(stop),
            stop_timeline: tli,
            archives: vec![ServedArchive {
                name: "base.tar".into(),
                tablespace_oid: None,
                location: None,
                size: 4096,
            }],
            has_manifest: true,
        }
    }

    fn view(flush: u64, tli: u32) -> ServeView {
        ServeView {
            system_id: 7,
            seg_size: 16 << 20,
            timeline: tli,
            flush: Lsn(flush),
            server_version: "15.18".into(),
            parameters: Vec::new(),
        }
    }

    #[test]
    fn choose_newest_usable() {
        let list = vec![
            (backup("20260101T000000Z", 0x100, 0x200, 1), true),
            (backup("20260102T000000Z", 0x300, 0x400, 1), true),
            (backup("20260103T000000Z", 0x500, 0x600, 1), false),
            (backup("20260104T000000Z", 0x700, 0x9000, 1), true),
            (
                ServedBackup {
                    system_id: 8,
                    ..backup("20260105T000000Z", 0x700, 0x800, 1)
                },
                true,
            ),
        ];
        let got = choose(list, &view(0x1000, 1), |_| 1).unwrap();
        assert_eq!(got.id, "20260102T000000Z");
        // Timeline 2 forked at 0x350: a backup spanning the fork on timeline 1 is not usable.
        let list = vec![
            (backup("a", 0x100, 0x200, 1), true),
            (backup("b", 0x300, 0x400, 1), true),
        ];
        let got = choose(
            list,
            &view(0x1000, 2),
            |l| if l < Lsn(0x350) { 1 } else { 2 },
        )
        .unwrap();
        assert_eq!(got.id, "a");
    }

    #[test]
    fn none_usable_is_an_error_with_a_hint() {
        let list = vec![(backup("20260103T000000Z", 0x500, 0x600, 1), false)];
        let Err(Reply::Error(e)) = choose(list, &view(0x1000, 1), |_| 1) else {
            panic!()
        };
        assert_eq!(e.code, "55000");
        assert_eq!(
            e.message,
            "walrelay has no complete base backup of system 7 to serve"
        );
        assert_eq!(
            e.detail.as_deref(),
            Some("Not usable: 20260103T000000Z: its WAL is not all in the archive.")
        );
        assert_eq!(e.hint.as_deref(), Some("Take one with walrelay backup."));
        let Err(Reply::Error(e)) = choose(Vec::new(), &view(0x1000, 1), |_| 1) else {
            panic!()
        };
        assert_eq!(e.detail, None);
    }

    #[test]
    fn tablespace_rows_sizes_only_with_progress() {
        let mut b = backup("x", 1, 2, 1);
        b.archives.insert(
            0,
            ServedArchive {
                name: "16385.tar".into(),
                tablespace_oid: Some(16385),
                location: Some("/srv/ts".into()),
                size: 10 * 1024 + 5,
            },
        );
        let rs = tablespace_rows(&b, true);
        assert_eq!(
            rs.rows,
            vec![
                vec![
                    Some(b"16385".to_vec()),
                    Some(b"/srv/ts".to_vec()),
                    Some(b"10".to_vec())
                ],
                vec![None, None, Some(b"4".to_vec())],
            ]
        );
        let rs = tablespace_rows(&b, false);
        assert_eq!(rs.rows[1], vec![None, None, None]);
        assert_eq!(rs.columns[0].type_oid, OID_OID);
    }

    #[test]
    fn pace_holds_the_rate() {
        let mut p = Pace::new(32);
        // 64 kB at 32 kB/s: about two seconds ahead of the clock.
        let w = p.after(64 * 1024).unwrap();
        assert!(w > Duration::from_millis(1500) && w <= Duration::from_secs(2));
        let mut free = Pace::new(0);
        assert!(free.after(1 << 30).is_none());
    }
}

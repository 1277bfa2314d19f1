//! The client side of `BASE_BACKUP` on a replication connection.
//!
//! PostgreSQL 15 and later (`basebackup_copy.c`, "copystream"): a result set with the start
//! position (`recptr`, `tli`), one with the tablespaces (`spcoid`, `spclocation`, `size`),
//! then one COPY OUT whose CopyData messages start with a type byte: `n` a new archive
//! (archive name, tablespace path), `d` data of the current archive or of the manifest, `p`
//! progress (int64), `m` the manifest begins; then CopyDone and a result set with the stop
//! position. PostgreSQL 14 and older: the same two result sets, then one COPY OUT per
//! tablespace in the order of the tablespace list (raw tar data, no end-of-archive blocks),
//! then one for the manifest when it was asked for, then the stop position.
//!
//! Owns: the command text for each server version and decoding the answer into
//! [`BaseBackupEvent`]s, the same for both protocols. Must not: store anything.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use bytes::{Buf, Bytes};
use postgres_protocol::message::frontend;

use super::commands::text;
use super::{ReplConnection, Result, State};
use crate::lsn::{Lsn, TimelineId};
use crate::protocol::backend::BackendMessage as Msg;
use crate::upstream::error::UpstreamError;

/// What to ask for.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub label: String,
    /// `CHECKPOINT 'fast'` / `FAST`.
    pub fast_checkpoint: bool,
    /// Ask for the backup manifest (PostgreSQL 13 and later).
    pub manifest: bool,
}

/// A tablespace of the backup, as the server listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// `None` for the main data directory.
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size in kB (only with PROGRESS; else `None`).
    pub size_kb: Option<i64>,
}

impl Tablespace {
    /// `base.tar` or `<oid>.tar`.
    pub fn archive_name(&self) -> String {
        match self.oid {
            None => "base.tar".to_string(),
            Some(o) => format!("{o}.tar"),
        }
    }
}

/// The backup's start, as the server reported it before sending data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupStart {
    pub start_lsn: Lsn,
    pub timeline: TimelineId,
    pub tablespaces: Vec<Tablespace>,
}

/// One step of the backup stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseBackupEvent {
    /// An archive begins (`base.tar`, `<oid>.tar`); `location` is the tablespace's path.
    Archive {
        name: String,
        location: Option<String>,
    },
    /// Bytes of the current archive, or of the manifest after [`BaseBackupEvent::Manifest`].
    Data(Bytes),
    /// The manifest begins.
    Manifest,
    /// Bytes done so far (PostgreSQL 15 and later).
    Progress(u64),
    /// The backup ended at `stop_lsn` on `timeline`; the connection is idle again.
    End { stop_lsn: Lsn, timeline: TimelineId },
}

/// Quotes a string literal for a replication command.
fn quote_literal(s: &str) -> Result<String> {
    if s.contains('\0') {
        return Err(UpstreamError::protocol("a backup label cannot contain NUL"));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// The command for a server of `version` (`server_version_num`).
pub fn command(opts: &BaseBackupOptions, version: u32) -> Result<String> {
    let label = quote_literal(&opts.label)?;
    if version >= 150000 {
        let mut o = vec![format!("LABEL {label}")];
        if opts.fast_checkpoint {
            o.push("CHECKPOINT 'fast'".into());
        }
        if opts.manifest {
            o.push("MANIFEST 'yes'".into());
        }
        o.push("TABLESPACE_MAP".into());
        o.push("WAIT false".into());
        Ok(format!("BASE_BACKUP ({})", o.join(", ")))
    } else {
        let mut c = format!("BASE_BACKUP LABEL {label}");
        if opts.fast_checkpoint {
            c.push_str(" FAST");
        }
        if opts.manifest && version >= 130000 {
            c.push_str(" MANIFEST 'yes'");
        }
        c.push_str(" TABLESPACE_MAP NOWAIT");
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between COPY operations (old protocol), or before the first.
    Between,
    Copy,
    /// After the last COPY: the stop position's result set.
    Tail,
    Done,
}

/// A base backup in progress on a connection.
pub struct BaseBackup<'a> {
    conn: &'a mut ReplConnection,
    /// PostgreSQL 15 and later.
    copystream: bool,
    tablespaces: Vec<Tablespace>,
    /// COPY operations begun (old protocol).
    copies: usize,
    manifest: bool,
    phase: Phase,
    row: Option<Vec<Option<Bytes>>>,
}

fn position(row: Option<&Vec<Option<Bytes>>>, what: &str) -> Result<(Lsn, TimelineId)> {
    let row = row.ok_or_else(|| UpstreamError::protocol(format!("no {what} position")))?;
    let lsn = text(row.first(), "recptr")?
        .ok_or_else(|| UpstreamError::protocol(format!("{what} position is NULL")))?;
    let lsn: Lsn = lsn
        .parse()
        .map_err(|_| UpstreamError::protocol(format!("invalid {what} position \"{lsn}\"")))?;
    let tli = text(row.get(1), "tli")?
        .ok_or_else(|| UpstreamError::protocol(format!("{what} timeline is NULL")))?;
    let tli: TimelineId = tli
        .parse()
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| UpstreamError::protocol(format!("invalid {what} timeline \"{tli}\"")))?;
    Ok((lsn, tli))
}

fn tablespace(row: &[Option<Bytes>]) -> Result<Tablespace> {
    let oid = match text(row.first(), "spcoid")? {
        None => None,
        Some(s) => Some(
            s.parse::<u32>()
                .map_err(|_| UpstreamError::protocol(format!("invalid tablespace oid \"{s}\"")))?,
        ),
    };
    let location = text(row.get(1), "spclocation")?;
    let size_kb = text(row.get(2), "size")?.and_then(|s| s.parse().ok());
    Ok(Tablespace {
        oid,
        location,
        size_kb,
    })
}

/// Reads a NUL-terminated string from `b`.
fn cstring(b: &mut Bytes) -> Result<String> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| UpstreamError::protocol("unterminated string in CopyData"))?;
    let s = b.split_to(end);
    b.advance(1);
    Ok(String::from_utf8_lossy(&s).into_owned())
}

impl ReplConnection {
    /// Sends `BASE_BACKUP` and reads the answer up to the first data. An ErrorResponse
    /// before that is [`UpstreamError::Server`].
    pub async fn base_backup(
        &mut self,
        opts: &BaseBackupOptions,
    ) -> Result<(BaseBackupStart, BaseBackup<'_>)> {
        let version = self.server_version_num();
        let cmd = command(opts, version)?;
        self.ensure_idle().await?;
        tracing::debug!(query = cmd.as_str(), "upstream command");
        frontend::query(&cmd, &mut self.wbuf)?;
        self.flush().await?;
        // two result sets: the start position, then the tablespaces
        let mut sets: Vec<Vec<Vec<Option<Bytes>>>> = Vec::new();
        loop {
            match self.read_reply().await? {
                Msg::RowDescription(_) => sets.push(Vec::new()),
                Msg::DataRow(r) => match sets.last_mut() {
                    Some(s) => s.push(r),
                    None => return Err(self.broken("a data row before its description")),
                },
                Msg::CommandComplete(_) => {}
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name, value } => {
                    self.params.insert(name, value);
                }
                Msg::ErrorResponse(e) => {
                    self.state = State::StaleReadyForQuery;
                    return Err(UpstreamError::Server(e));
                }
                Msg::CopyOutResponse if sets.len() >= 2 => break,
                other => {
                    return Err(self.broken(&format!("unexpected message {other:?}")));
                }
            }
        }
        let (start_lsn, timeline) = position(sets.first().and_then(|s| s.first()), "start")?;
        let tablespaces = sets
            .get(1)
            .map(|rows| {
                rows.iter()
                    .map(|r| tablespace(r))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        if !tablespaces.iter().any(|t| t.oid.is_none()) {
            return Err(self.broken("the tablespace list has no main data directory"));
        }
        self.state = State::Copy;
        let start = BaseBackupStart {
            start_lsn,
            timeline,
            tablespaces: tablespaces.clone(),
        };
        Ok((
            start,
            BaseBackup {
                conn: self,
                copystream: version >= 150000,
                tablespaces,
                copies: 0,
                manifest: opts.manifest && version >= 130000,
                phase: if version >= 150000 {
                    Phase::Copy
                } else {
                    Phase::Between
                },
                row: None,
            },
        ))
    }

    fn broken(&mut self, what: &str) -> UpstreamError {
        self.state = State::Broken;
        UpstreamError::protocol(format!("BASE_BACKUP: {what}"))
    }
}

impl BaseBackup<'_> {
    /// The next step; after [`BaseBackupEvent::End`] the connection is idle.
    pub async fn next(&mut self) -> Result<BaseBackupEvent> {
        loop {
            if self.phase == Phase::Done {
                return Err(UpstreamError::protocol("BASE_BACKUP already ended"));
            }
            // the old protocol's first COPY was entered by `base_backup`
            if !self.copystream && self.phase == Phase::Between && self.copies == 0 {
                return Ok(self.begin_copy());
            }
            let msg = self.conn.read_reply().await?;
            match (self.phase, msg) {
                (_, Msg::NoticeResponse(n)) => tracing::info!("upstream: {n}"),
                (_, Msg::ParameterStatus { name, value }) => {
                    self.conn.params.insert(name, value);
                }
                (_, Msg::ErrorResponse(e)) => {
                    self.conn.state = State::StaleReadyForQuery;
                    self.phase = Phase::Done;
                    return Err(UpstreamError::Server(e));
                }
                (Phase::Copy, Msg::CopyData(d)) => {
                    if !self.copystream {
                        return Ok(BaseBackupEvent::Data(d));
                    }
                    if let Some(ev) = self.copy_message(d)? {
                        return Ok(ev);
                    }
                }
                (Phase::Copy, Msg::CopyDone) => {
                    if self.copystream || self.copies >= self.expected_copies() {
                        self.phase = Phase::Tail;
                    } else {
                        self.phase = Phase::Between;
                    }
                }
                (Phase::Between, Msg::CopyOutResponse) if !self.copystream => {
                    return Ok(self.begin_copy());
                }
                (Phase::Tail, Msg::RowDescription(_)) => {}
                (Phase::Tail, Msg::DataRow(r)) => self.row = Some(r),
                (Phase::Tail, Msg::CommandComplete(_)) => {}
                (Phase::Tail, Msg::ReadyForQuery(_)) => {
                    self.phase = Phase::Done;
                    self.conn.state = State::Idle;
                    let (stop_lsn, timeline) = position(self.row.as_ref(), "stop")?;
                    return Ok(BaseBackupEvent::End { stop_lsn, timeline });
                }
                (_, other) => {
                    self.phase = Phase::Done;
                    return Err(self.conn.broken(&format!("unexpected message {other:?}")));
                }
            }
        }
    }

    fn expected_copies(&self) -> usize {
        self.tablespaces
            .len()
            .saturating_add(usize::from(self.manifest))
    }

    /// The old protocol: which archive (or the manifest) the COPY just entered carries.
    fn begin_copy(&mut self) -> BaseBackupEvent {
        let k = self.copies;
        self.copies = self.copies.saturating_add(1);
        self.phase = Phase::Copy;
        match self.tablespaces.get(k) {
            Some(t) => BaseBackupEvent::Archive {
                name: t.archive_name(),
                location: t.location.clone(),
            },
            None => BaseBackupEvent::Manifest,
        }
    }

    fn copy_message(&mut self, mut d: Bytes) -> Result<Option<BaseBackupEvent>> {
        if d.is_empty() {
            return Err(self.conn.broken("empty CopyData"));
        }
        let kind = d.get_u8();
        Ok(Some(match kind {
            b'n' => {
                let name = cstring(&mut d)?;
                let path = cstring(&mut d)?;
                BaseBackupEvent::Archive {
                    name,
                    location: (!path.is_empty()).then_some(path),
                }
            }
            b'd' => BaseBackupEvent::Data(d),
            b'm' => BaseBackupEvent::Manifest,
            b'p' => {
                if d.len() < 8 {
                    return Err(self.conn.broken("short progress message"));
                }
                BaseBackupEvent::Progress(d.get_u64())
            }
            other => {
                // a newer server's message this client does not know: fail closed
                return Err(self
                    .conn
                    .broken(&format!("unknown CopyData type {:?}", char::from(other))));
            }
        }))
    }

    /// Whether the server sends its tar archives without the end-of-archive blocks
    /// (PostgreSQL 14 and older).
    pub fn unterminated_tar(&self) -> bool {
        !self.copystream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_by_version() {
        let o = BaseBackupOptions {
            label: "it's walrelay".into(),
            fast_checkpoint: true,
            manifest: true,
        };
        assert_eq!(
            command(&o, 150018).unwrap(),
            "BASE_BACKUP (LABEL 'it''s walrelay', CHECKPOINT 'fast', MANIFEST 'yes', TABLESPACE_MAP, WAIT false)"
        );
        assert_eq!(
            command(&o, 140020).unwrap(),
            "BASE_BACKUP LABEL 'it''s walrelay' FAST MANIFEST 'yes' TABLESPACE_MAP NOWAIT"
        );
        assert_eq!(
            command(&o, 120000).unwrap(),
            "BASE_BACKUP LABEL 'it''s walrelay' FAST TABLESPACE_MAP NOWAIT"
        );
        let bad = BaseBackupOptions {
            label: "a\0b".into(),
            ..o
        };
        assert!(command(&bad, 150000).is_err());
    }

    #[test]
    fn strings_and_rows() {
        let mut b = Bytes::from_static(b"base.tar\0/tmp/x\0");
        assert_eq!(cstring(&mut b).unwrap(), "base.tar");
        assert_eq!(cstring(&mut b).unwrap(), "/tmp/x");
        assert!(cstring(&mut b).is_err());
        let row = vec![
            Some(Bytes::from_static(b"0/2000028")),
            Some(Bytes::from_static(b"1")),
        ];
        assert_eq!(position(Some(&row), "start").unwrap(), (Lsn(0x2000028), 1));
        let row = vec![
            Some(Bytes::from_static(b"x")),
            Some(Bytes::from_static(b"1")),
        ];
        assert!(position(Some(&row), "start").is_err());
        let t = tablespace(&[
            Some(Bytes::from_static(b"16384")),
            Some(Bytes::from_static(b"/ts")),
            None,
        ])
        .unwrap();
        assert_eq!(t.archive_name(), "16384.tar");
        assert_eq!(
            tablespace(&[None, None, None]).unwrap().archive_name(),
            "base.tar"
        );
    }
}

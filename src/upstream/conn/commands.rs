//! Simple queries and the replication commands walrelay sends, with typed results.
//!
//! Owns: `simple_query`, `IDENTIFY_SYSTEM`, `SHOW`, `READ_REPLICATION_SLOT`,
//! `CREATE_REPLICATION_SLOT` / `DROP_REPLICATION_SLOT`, `TIMELINE_HISTORY`, identifier
//! quoting and the `wal_segment_size` parser. Must not: enter COPY (see `copy`).

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

use super::{ReplConnection, Result, State};
use crate::lsn::{valid_segment_size, Lsn, TimelineId};
use crate::protocol::backend::BackendMessage as Msg;
use crate::upstream::error::UpstreamError;

/// The result of a simple query: the first result set's column names, all rows (text, or
/// `None` for NULL), and the last CommandComplete tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

#[derive(Debug, Default)]
struct RawResult {
    columns: Vec<String>,
    rows: Vec<Vec<Option<Bytes>>>,
    tag: String,
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifySystem {
    pub systemid: u64,
    pub timeline: TimelineId,
    pub xlogpos: Lsn,
}

/// `READ_REPLICATION_SLOT`'s answer for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_type: String,
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
}

/// Quotes an identifier for a replication command: `"` doubled, always quoted.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Parses `SHOW wal_segment_size` output (`16MB`, `1GB`, also `kB` and bare bytes) and
/// checks it is a power of two from 1 MB to 1 GB.
pub fn parse_wal_segment_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("WAL segment size could not be parsed: \"{s}\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(format!("WAL segment size could not be parsed: \"{s}\"")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("WAL segment size could not be parsed: \"{s}\""))?;
    if !valid_segment_size(bytes) {
        return Err(format!(
            "WAL segment size must be a power of two between 1 MB and 1 GB, but the remote server reported a value of {bytes} bytes"
        ));
    }
    Ok(bytes)
}

pub(super) fn text(b: Option<&Option<Bytes>>, what: &str) -> Result<Option<String>> {
    match b {
        None => Err(UpstreamError::protocol(format!("missing column {what}"))),
        Some(None) => Ok(None),
        Some(Some(v)) => std::str::from_utf8(v)
            .map(|s| Some(s.to_string()))
            .map_err(|_| UpstreamError::protocol(format!("invalid UTF-8 in column {what}"))),
    }
}

impl ReplConnection {
    async fn query_raw(&mut self, q: &str) -> Result<RawResult> {
        self.ensure_idle().await?;
        tracing::debug!(query = q, "upstream command");
        frontend::query(q, &mut self.wbuf)?;
        self.flush().await?;
        let mut res = RawResult::default();
        let mut seen_desc = false;
        let mut err = None;
        loop {
            match self.read_reply().await? {
                Msg::RowDescription(c) => {
                    if !seen_desc {
                        res.columns = c.into_iter().map(|f| f.name).collect();
                        seen_desc = true;
                    }
                }
                Msg::DataRow(r) => res.rows.push(r),
                Msg::CommandComplete(t) => res.tag = t,
                Msg::EmptyQueryResponse => {}
                Msg::ErrorResponse(e) => err = Some(e),
                Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
                Msg::ParameterStatus { name: k, value: v } => {
                    self.params.insert(k, v);
                }
                Msg::ReadyForQuery(_) => break,
                other => {
                    self.state = State::Broken;
                    return Err(UpstreamError::protocol(format!(
                        "unexpected response to \"{q}\": {other:?}"
                    )));
                }
            }
        }
        match err {
            Some(e) => Err(UpstreamError::Server(e)),
            None => Ok(res),
        }
    }

    /// Runs a command with the simple query protocol. An ErrorResponse becomes
    /// [`UpstreamError::Server`] (the session stays usable).
    pub async fn simple_query(&mut self, q: &str) -> Result<QueryResult> {
        let raw = self.query_raw(q).await?;
        let mut rows = Vec::with_capacity(raw.rows.len());
        for r in &raw.rows {
            let mut out = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                out.push(text(r.get(i), &i.to_string())?);
            }
            rows.push(out);
        }
        Ok(QueryResult {
            columns: raw.columns,
            rows,
            tag: raw.tag,
        })
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = match (r.rows.as_slice(), r.columns.len()) {
            ([row], n) if n >= 3 && row.len() >= 3 => row,
            (rows, n) => {
                return Err(UpstreamError::protocol(format!(
                    "could not identify system: got {} rows and {n} fields, expected 1 rows and 3 or more fields",
                    rows.len()
                )))
            }
        };
        let bad = |what: &str| UpstreamError::protocol(format!("IDENTIFY_SYSTEM: invalid {what}"));
        // Three fields were checked above; the `else` cannot be taken.
        let [c0, c1, c2, ..] = row.as_slice() else {
            return Err(bad("row"));
        };
        let systemid = c0
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("systemid"))?;
        let timeline = c1
            .as_deref()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|t| *t != 0)
            .ok_or_else(|| bad("timeline"))?;
        let xlogpos = c2
            .as_deref()
            .and_then(|s| s.parse::<Lsn>().ok())
            .ok_or_else(|| bad("xlogpos"))?;
        Ok(IdentifySystem {
            systemid,
            timeline,
            xlogpos,
        })
    }

    /// `SHOW name`: the setting's text.
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let simple = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        let q = if simple {
            format!("SHOW {name}")
        } else {
            format!("SHOW {}", quote_ident(name))
        };
        let r = self.simple_query(&q).await?;
        match r.rows.first().and_then(|row| row.first()) {
            Some(Some(v)) => Ok(v.clone()),
            _ => Err(UpstreamError::protocol(format!(
                "could not fetch setting \"{name}\": unexpected result"
            ))),
        }
    }

    /// `SHOW wal_segment_size` in bytes (a power of two from 1 MB to 1 GB).
    pub async fn wal_segment_size(&mut self) -> Result<u64> {
        let v = self.show("wal_segment_size").await?;
        parse_wal_segment_size(&v).map_err(UpstreamError::Protocol)
    }

    /// `READ_REPLICATION_SLOT` (PG 15+): `None` for a slot that does not exist.
    pub async fn read_replication_slot(&mut self, slot: &str) -> Result<Option<SlotInfo>> {
        let r = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(slot)))
            .await?;
        let row = match r.rows.as_slice() {
            [row] if row.len() >= 3 => row,
            rows => {
                return Err(UpstreamError::protocol(format!(
                    "could not read replication slot \"{slot}\": got {} rows and {} fields, expected 1 rows and 3 fields",
                    rows.len(),
                    r.columns.len()
                )))
            }
        };
        // Three fields were checked above; the `else` cannot be taken.
        let [c0, c1, c2, ..] = row.as_slice() else {
            return Err(UpstreamError::protocol(format!(
                "could not read replication slot \"{slot}\": too few fields"
            )));
        };
        let Some(slot_type) = c0.clone() else {
            return Ok(None);
        };
        let restart_lsn = match c1.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<Lsn>().map_err(|_| {
                UpstreamError::protocol(format!(
                    "could not parse restart_lsn \"{s}\" for replication slot \"{slot}\""
                ))
            })?),
        };
        let restart_tli = match c2.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<u32>().map_err(|_| {
                UpstreamError::protocol(format!(
                    "invalid restart_tli \"{s}\" for replication slot \"{slot}\""
                ))
            })?),
        };
        Ok(Some(SlotInfo {
            slot_type,
            restart_lsn,
            restart_tli,
        }))
    }

    /// `CREATE_REPLICATION_SLOT "name" PHYSICAL [RESERVE_WAL]` (legacy syntax, 13–18).
    /// An existing slot gives `Server` with SQLSTATE 42710.
    pub async fn create_physical_slot(&mut self, slot: &str, reserve_wal: bool) -> Result<()> {
        let q = format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL{}",
            quote_ident(slot),
            if reserve_wal { " RESERVE_WAL" } else { "" }
        );
        self.simple_query(&q).await.map(|_| ())
    }

    /// `DROP_REPLICATION_SLOT "name"`.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<()> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(slot)))
            .await
            .map(|_| ())
    }

    /// `TIMELINE_HISTORY n`: the file name and its exact contents.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes)> {
        let r = self.query_raw(&format!("TIMELINE_HISTORY {tli}")).await?;
        match r.rows.as_slice() {
            [row] if row.len() >= 2 => {
                let name = text(row.first(), "filename")?
                    .ok_or_else(|| UpstreamError::protocol("TIMELINE_HISTORY: NULL filename"))?;
                let content = row
                    .get(1)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| UpstreamError::protocol("TIMELINE_HISTORY: NULL content"))?;
                Ok((name, content))
            }
            rows => Err(UpstreamError::protocol(format!(
                "unexpected response to TIMELINE_HISTORY command: got {} rows and {} fields, expected 1 rows and 2 fields",
                rows.len(),
                r.columns.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_size() {
        assert_eq!(parse_wal_segment_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_wal_segment_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_wal_segment_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_wal_segment_size("64MB"), Ok(64 << 20));
        assert!(parse_wal_segment_size("2GB").is_err());
        assert!(parse_wal_segment_size("512kB").is_err());
        assert!(parse_wal_segment_size("24MB").is_err());
        assert!(parse_wal_segment_size("MB").is_err());
        assert!(parse_wal_segment_size("16XB").is_err());
        assert!(parse_wal_segment_size("").is_err());
        assert!(parse_wal_segment_size("99999999999999999999GB").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

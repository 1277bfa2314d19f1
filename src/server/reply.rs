//! The typed answer of a replication command, and the only place that ends one with
//! ReadyForQuery.
//!
//! Owns: [`Reply`] (a result set, a bare CommandComplete, an error, an empty query) and its
//! encoding as RowDescription / DataRow / CommandComplete / ErrorResponse followed by one
//! ReadyForQuery. Command handlers in `cmd/` build a [`Reply`] and never hand-build protocol
//! rows. Must not: do I/O (the session sends the bytes).

use bytes::BytesMut;

use crate::protocol::backend::{self, ErrorFields, Field};

/// Transaction status in ReadyForQuery: walsender sessions are always idle.
const IDLE: u8 = b'I';

/// A column of a result set: its name and the `pg_type` oid of its (text) values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub type_oid: u32,
}

impl Column {
    pub fn new(name: impl Into<String>, type_oid: u32) -> Column {
        Column {
            name: name.into(),
            type_oid,
        }
    }
}

/// Rows in text format (`None`: SQL NULL), ended by CommandComplete `tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    pub tag: String,
}

impl ResultSet {
    pub fn new(tag: impl Into<String>, columns: Vec<Column>) -> ResultSet {
        ResultSet {
            columns,
            rows: Vec::new(),
            tag: tag.into(),
        }
    }

    /// Adds a row; values are rendered with `Display` (`None`: NULL).
    pub fn row<I, V>(mut self, values: I) -> ResultSet
    where
        I: IntoIterator<Item = Option<V>>,
        V: AsRef<[u8]>,
    {
        self.rows.push(
            values
                .into_iter()
                .map(|v| v.map(|v| v.as_ref().to_vec()))
                .collect(),
        );
        self
    }
}

/// What a command answers; [`Reply::encode`] appends exactly one ReadyForQuery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Rows(ResultSet),
    /// CommandComplete without rows (`DROP_REPLICATION_SLOT`).
    Complete(String),
    /// The command failed; the session goes on.
    Error(ErrorFields),
    /// The query string held no command.
    EmptyQuery,
    /// Nothing but ReadyForQuery (the answer to Sync).
    Ready,
    /// Several answers under one ReadyForQuery (START_REPLICATION after its COPY).
    Many(Vec<Reply>),
}

impl Reply {
    pub fn complete(tag: impl Into<String>) -> Reply {
        Reply::Complete(tag.into())
    }

    /// The protocol messages, ended by ReadyForQuery.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_body(buf);
        ready_for_query(buf);
    }

    /// The messages without the closing ReadyForQuery (BASE_BACKUP sends result sets
    /// before its COPY).
    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        match self {
            Reply::Rows(rs) => {
                let fields: Vec<Field> = rs
                    .columns
                    .iter()
                    .map(|c| Field::new(c.name.as_str(), c.type_oid))
                    .collect();
                backend::row_description(buf, &fields);
                for row in &rs.rows {
                    let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
                    backend::data_row(buf, &values);
                }
                backend::command_complete(buf, &rs.tag);
            }
            Reply::Complete(tag) => backend::command_complete(buf, tag),
            Reply::Error(e) => backend::error_response(buf, e),
            Reply::EmptyQuery => backend::empty_query_response(buf),
            Reply::Ready => {}
            Reply::Many(parts) => {
                for p in parts {
                    p.encode_body(buf);
                }
            }
        }
    }
}

impl From<ErrorFields> for Reply {
    fn from(e: ErrorFields) -> Reply {
        Reply::Error(e)
    }
}

impl From<ResultSet> for Reply {
    fn from(rs: ResultSet) -> Reply {
        Reply::Rows(rs)
    }
}

/// ReadyForQuery (idle); also ends the startup exchange.
pub(crate) fn ready_for_query(buf: &mut BytesMut) {
    backend::ready_for_query(buf, IDLE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::{INT8_OID, TEXT_OID};

    #[test]
    fn result_set_encodes_rows_then_one_ready_for_query() {
        let rs = ResultSet::new(
            "READ_REPLICATION_SLOT",
            vec![
                Column::new("slot_type", TEXT_OID),
                Column::new("restart_tli", INT8_OID),
            ],
        )
        .row([Some("physical"), None]);
        let mut got = BytesMut::new();
        Reply::Rows(rs).encode(&mut got);
        let mut want = BytesMut::new();
        backend::row_description(
            &mut want,
            &[
                Field::new("slot_type", TEXT_OID),
                Field::new("restart_tli", INT8_OID),
            ],
        );
        backend::data_row(&mut want, &[Some(b"physical"), None]);
        backend::command_complete(&mut want, "READ_REPLICATION_SLOT");
        backend::ready_for_query(&mut want, b'I');
        assert_eq!(got, want);
    }

    #[test]
    fn many_has_a_single_ready_for_query() {
        let mut got = BytesMut::new();
        Reply::Many(vec![
            Reply::complete("START_STREAMING"),
            Reply::complete("START_REPLICATION"),
        ])
        .encode(&mut got);
        let mut want = BytesMut::new();
        backend::command_complete(&mut want, "START_STREAMING");
        backend::command_complete(&mut want, "START_REPLICATION");
        backend::ready_for_query(&mut want, b'I');
        assert_eq!(got, want);
    }
}

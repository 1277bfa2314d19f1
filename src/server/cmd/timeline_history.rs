//! TIMELINE_HISTORY: the `.history` file of a timeline from the data directory, with
//! PostgreSQL's error text when it is missing.

use crate::error::codes;
use crate::lsn::history_file_name;
use crate::protocol::backend::{ErrorFields, TEXT_OID};
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::session::Session;

pub(super) async fn run(s: &Session, tli: u32) -> Reply {
    let name = history_file_name(tli);
    let path = s.shared.data_dir.join(&name);
    match tokio::fs::read(&path).await {
        Ok(content) => ResultSet::new(
            "TIMELINE_HISTORY",
            vec![
                Column::new("filename", TEXT_OID),
                Column::new("content", TEXT_OID),
            ],
        )
        .row([Some(name.into_bytes()), Some(content)])
        .into(),
        Err(e) => {
            let (code, msg) = match e.kind() {
                std::io::ErrorKind::NotFound => (
                    codes::UNDEFINED_FILE,
                    "No such file or directory".to_string(),
                ),
                _ => (codes::IO_ERROR, e.to_string()),
            };
            Reply::Error(ErrorFields::error(
                code,
                format!("could not open file \"pg_wal/{name}\": {msg}"),
            ))
        }
    }
}

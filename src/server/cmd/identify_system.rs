//! IDENTIFY_SYSTEM: system identifier, current timeline, flush position, no database.
//! `timeline` is int8 from PostgreSQL 16 on (int4 before), as the imitated server sends it.

use crate::protocol::backend::{INT4_OID, INT8_OID, TEXT_OID};
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::ServeView;

pub(super) fn run(view: &ServeView) -> Reply {
    let tli_type = if crate::server::version_major(&view.server_version) >= 16 {
        INT8_OID
    } else {
        INT4_OID
    };
    ResultSet::new(
        "IDENTIFY_SYSTEM",
        vec![
            Column::new("systemid", TEXT_OID),
            Column::new("timeline", tli_type),
            Column::new("xlogpos", TEXT_OID),
            Column::new("dbname", TEXT_OID),
        ],
    )
    .row([
        Some(view.system_id.to_string()),
        Some(view.timeline.to_string()),
        Some(view.flush.to_string()),
        None,
    ])
    .into()
}

//! READ_REPLICATION_SLOT: type, restart_lsn and its timeline of a proxy-side slot; a row of
//! NULLs for a slot that does not exist (as PostgreSQL 15+).

use crate::protocol::backend::{INT8_OID, TEXT_OID};
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::session::Session;
use crate::server::ServeView;

pub(super) fn run(s: &Session, view: &ServeView, name: &str) -> Reply {
    let rs = ResultSet::new(
        "READ_REPLICATION_SLOT",
        vec![
            Column::new("slot_type", TEXT_OID),
            Column::new("restart_lsn", TEXT_OID),
            Column::new("restart_tli", INT8_OID),
        ],
    );
    match s.shared.slots.get(name) {
        None => rs.row([None::<String>, None, None]),
        Some(slot) => {
            let lsn = slot.restart_lsn.filter(|l| l.is_valid());
            rs.row([
                Some("physical".to_string()),
                lsn.map(|l| l.to_string()),
                lsn.map(|l| s.tli_of(view, l).to_string()),
            ])
        }
    }
    .into()
}

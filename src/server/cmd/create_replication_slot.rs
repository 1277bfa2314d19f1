//! CREATE_REPLICATION_SLOT … PHYSICAL [RESERVE_WAL] [TEMPORARY]: a proxy-side slot
//! (`super::super::slots`); logical slots are refused.

use crate::protocol::backend::TEXT_OID;
use crate::protocol::command::SlotKind;
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::session::Session;
use crate::server::ServeView;

pub(super) async fn run(
    s: &Session,
    view: &ServeView,
    name: &str,
    temporary: bool,
    kind: SlotKind,
    reserve_wal: bool,
) -> Reply {
    if let SlotKind::Logical { .. } = kind {
        return super::unsupported::logical();
    }
    let restart = reserve_wal.then(|| view.flush.segment_start(view.seg_size));
    match s.shared.slots.create(name, temporary, restart, s.id).await {
        Ok(()) => {
            tracing::info!("pid {}: created replication slot \"{name}\"", s.pid);
            ResultSet::new(
                "CREATE_REPLICATION_SLOT",
                vec![
                    Column::new("slot_name", TEXT_OID),
                    Column::new("consistent_point", TEXT_OID),
                    Column::new("snapshot_name", TEXT_OID),
                    Column::new("output_plugin", TEXT_OID),
                ],
            )
            .row([Some(name), Some("0/0"), None, None])
            .into()
        }
        Err(e) => super::slot_error(&e),
    }
}

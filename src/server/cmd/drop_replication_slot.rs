//! DROP_REPLICATION_SLOT name [WAIT]: WAIT polls (bounded, ends at shutdown) until no session
//! holds the slot.

use std::time::{Duration, Instant};

use crate::server::reply::Reply;
use crate::server::session::Session;

/// How long WAIT waits for the slot to become inactive at most.
const WAIT_LIMIT: Duration = Duration::from_secs(3600);

pub(super) async fn run(s: &Session, name: &str, wait: bool) -> Reply {
    if wait {
        let deadline = Instant::now().checked_add(WAIT_LIMIT);
        while s.shared.slots.is_active(name)
            && deadline.is_some_and(|d| Instant::now() < d)
            && !*s.shutdown.borrow()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match s.shared.slots.drop_slot(name, s.id).await {
        Ok(()) => {
            tracing::info!("pid {}: dropped replication slot \"{name}\"", s.pid);
            Reply::complete("DROP_REPLICATION_SLOT")
        }
        Err(e) => super::slot_error(&e),
    }
}

//! Replication commands: one file per command, each turning a parsed
//! [`ReplicationCommand`] into a [`Reply`] (`super::reply`), mini-redis style.
//!
//! Owns: dispatch of a simple Query to its handler, the "starting up" answer while walrelay
//! has nothing to serve, and the refusals of commands walrelay does not serve. Parsing is in
//! [`crate::protocol::command`]; START_REPLICATION's streaming loop is `super::walsender`.
//! Must not: write WAL, encode protocol rows by hand (handlers return a [`Reply`]).
//!
//! | file | command |
//! |---|---|
//! | `identify_system.rs` | IDENTIFY_SYSTEM |
//! | `show.rs` | SHOW |
//! | `timeline_history.rs` | TIMELINE_HISTORY |
//! | `read_replication_slot.rs` | READ_REPLICATION_SLOT |
//! | `create_replication_slot.rs` | CREATE_REPLICATION_SLOT |
//! | `drop_replication_slot.rs` | DROP_REPLICATION_SLOT |
//! | `start_replication.rs` | START_REPLICATION checks, then `walsender::stream`, then the end-of-timeline answer |
//! | `base_backup.rs` | BASE_BACKUP: the newest complete stored backup, from the archive |
//! | `unsupported.rs` | ALTER_REPLICATION_SLOT, UPLOAD_MANIFEST, SQL, logical replication |

mod base_backup;
mod create_replication_slot;
mod drop_replication_slot;
mod identify_system;
mod read_replication_slot;
mod show;
pub(crate) mod start_replication;
mod timeline_history;
mod unsupported;

use super::reply::Reply;
use super::session::{err_of, End, Session};
use crate::protocol::backend::ErrorFields;
use crate::protocol::command::{parse_command, ReplicationCommand};

/// Runs one simple Query: answers it (ending with ReadyForQuery) or ends the session.
pub(crate) async fn execute(s: &mut Session, q: &str) -> Result<(), End> {
    if q.trim().trim_end_matches(';').trim().is_empty() {
        return s.reply(Reply::EmptyQuery).await;
    }
    tracing::debug!("pid {}: command: {q}", s.pid);
    let cmd = match parse_command(q) {
        Ok(c) => c,
        Err(e) => return s.send_error(err_of(&e)).await,
    };
    let Some(view) = s.shared.view() else {
        return s
            .send_error(ErrorFields::error(
                "57P03",
                "the database system is starting up",
            ))
            .await;
    };
    let reply = match cmd {
        ReplicationCommand::IdentifySystem => identify_system::run(&view),
        ReplicationCommand::Show(name) => show::run(s, &view, &name),
        ReplicationCommand::TimelineHistory(tli) => timeline_history::run(s, tli).await,
        ReplicationCommand::ReadReplicationSlot(name) => {
            read_replication_slot::run(s, &view, &name)
        }
        ReplicationCommand::CreateReplicationSlot {
            name,
            temporary,
            kind,
            reserve_wal,
        } => create_replication_slot::run(s, &view, &name, temporary, kind, reserve_wal).await,
        ReplicationCommand::DropReplicationSlot { name, wait } => {
            drop_replication_slot::run(s, &name, wait).await
        }
        ReplicationCommand::StartReplication {
            slot,
            logical,
            start,
            timeline,
        } => {
            if logical {
                unsupported::logical()
            } else {
                return start_replication::run(s, view, slot, start, timeline).await;
            }
        }
        ReplicationCommand::BaseBackup(opts) => return base_backup::run(s, view, opts).await,
        ReplicationCommand::AlterReplicationSlot | ReplicationCommand::UploadManifest => {
            unsupported::command()
        }
        ReplicationCommand::Sql(_) => unsupported::sql(),
    };
    s.reply(reply).await
}

/// A slot error as the walsender reports it (message, detail, hint).
pub(crate) fn slot_error(e: &super::slots::SlotError) -> Reply {
    let mut f = err_of(e);
    f.detail = e.detail();
    f.hint = e.hint();
    Reply::Error(f)
}

//! The answers to what walrelay does not serve: ALTER_REPLICATION_SLOT,
//! UPLOAD_MANIFEST, SQL, logical replication. Must not: anything but refuse.

use crate::error::codes;
use crate::protocol::backend::ErrorFields;
use crate::server::reply::Reply;

pub(super) fn command() -> Reply {
    Reply::Error(ErrorFields::error(
        codes::FEATURE_NOT_SUPPORTED,
        "this replication command is not supported by walrelay",
    ))
}

pub(super) fn sql() -> Reply {
    Reply::Error(ErrorFields::error(
        codes::FEATURE_NOT_SUPPORTED,
        "cannot execute SQL commands in WAL sender for physical replication",
    ))
}

/// Logical slots and START_REPLICATION … LOGICAL, as PostgreSQL answers them on a physical
/// replication connection.
pub(super) fn logical() -> Reply {
    Reply::Error(ErrorFields::error(
        codes::OBJECT_NOT_IN_STATE,
        "logical decoding requires a database connection",
    ))
}

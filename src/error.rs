//! Errors that reach a PostgreSQL client carry a SQLSTATE.
//!
//! Owns: the [`SqlState`] trait that typed errors implement so that the walsender can
//! answer with the code a real server would use.

/// A typed error that can be reported to a PostgreSQL client.
pub trait SqlState {
    /// Five-character SQLSTATE, e.g. `58P01`.
    fn sqlstate(&self) -> &'static str;
}

/// SQLSTATE codes used by walrelay (see PostgreSQL's `errcodes.txt`).
pub mod codes {
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INVALID_NAME: &str = "42602";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const OBJECT_NOT_IN_STATE: &str = "55000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const DISK_FULL: &str = "53100";
    pub const IO_ERROR: &str = "58030";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
}

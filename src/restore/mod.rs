//! `walrelay restore`: a base backup from the archive into a data directory, ready to
//! recover to a target (or to run as a standby of walrelay).
//!
//! Owns: the command line, choosing the backup (given, or the newest complete one that
//! ends before the target), refusing an incomplete one (unless `--force`), and handing the
//! chosen backup to [`core::restore`]: tar extraction ([`unpack`]), the manifest check
//! ([`manifest`]) and the recovery settings ([`recovery`]).
//! Must not: write to the archive, or start PostgreSQL (`walrelay drill` does).

pub mod cli;
pub mod core;
pub mod manifest;
pub mod recovery;
pub mod source;
pub mod unpack;

use std::path::PathBuf;

pub use cli::{main, RestoreArgs};

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{what} \"{path}\" exists and is not empty")]
    NotEmpty { what: String, path: PathBuf },
    #[error("could not {op} \"{path}\": {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error(transparent)]
    Manifest(manifest::ManifestError),
    #[error("the backup does not match its manifest: {}", .0.join("; "))]
    Verify(Vec<String>),
    #[error("the backup has no base.tar")]
    NoBase,
    #[error("{0}")]
    Backup(String),
    #[error("{0}")]
    Archive(String),
    #[error("backup {id} is incomplete: the archive is missing WAL segment {missing} (use --force to restore it anyway)")]
    Incomplete { id: String, missing: String },
    #[error("{0}")]
    NoBackup(String),
    #[error("{0}")]
    Usage(String),
}

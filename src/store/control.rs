//! The control file: a small JSON document that tells `walrelay run` where it stands.
//!
//! Owns: `walrelay.control` in the data directory, written atomically (temp file, fsync,
//! rename, fsync directory) and protected by a CRC-32C. The WAL files remain the truth for
//! positions; the control file pins the identity (system id, segment size) so that a data
//! directory is never mixed with WAL of another cluster, and records the last durable
//! position and timeline for status and restarts. Must not: hold WAL.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil;
use crate::lsn::{Lsn, TimelineId};

pub const CONTROL_FILE: &str = "walrelay.control";
const VERSION: u32 = 1;

/// Persistent state of a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlData {
    pub version: u32,
    /// The primary's system identifier (decimal, as IDENTIFY_SYSTEM prints it).
    pub system_id: String,
    pub wal_segment_size: u64,
    pub timeline: TimelineId,
    /// Last fsynced position on `timeline`, printed `X/X`.
    pub flush_lsn: String,
    /// The primary's `server_version` string the last time walrelay connected.
    #[serde(default)]
    pub server_version: String,
    /// Last upstream slot used.
    #[serde(default)]
    pub upstream_slot: Option<String>,
}

impl ControlData {
    pub fn new(system_id: u64, wal_segment_size: u64) -> ControlData {
        ControlData {
            version: VERSION,
            system_id: system_id.to_string(),
            wal_segment_size,
            timeline: 0,
            flush_lsn: Lsn::INVALID.to_string(),
            server_version: String::new(),
            upstream_slot: None,
        }
    }
    pub fn system_id(&self) -> Option<u64> {
        self.system_id.parse().ok()
    }
    pub fn flush_lsn(&self) -> Lsn {
        self.flush_lsn.parse().unwrap_or(Lsn::INVALID)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("could not read control file \"{path}\": {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control file \"{0}\" is corrupt (bad checksum or format)")]
    Corrupt(PathBuf),
}

fn encode(data: &ControlData) -> Vec<u8> {
    let body = serde_json::to_string_pretty(data).unwrap_or_default();
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body}\n# crc32c {crc:08x}\n").into_bytes()
}

fn decode(bytes: &[u8]) -> Option<ControlData> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (body, trailer) = text.rsplit_once("\n# crc32c ")?;
    let crc = u32::from_str_radix(trailer.trim(), 16).ok()?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Reads the control file; `Ok(None)` if the directory has none yet.
pub fn read(dir: &Path) -> Result<Option<ControlData>, ControlError> {
    let path = dir.join(CONTROL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes).map(Some).ok_or(ControlError::Corrupt(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ControlError::Io { path, source }),
    }
}

/// Writes the control file atomically.
pub fn write(dir: &Path, data: &ControlData) -> std::io::Result<()> {
    fsutil::write_atomic(&dir.join(CONTROL_FILE), &encode(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut c = ControlData::new(7_391_234_567_890_123_456, 16 << 20);
        c.timeline = 3;
        c.flush_lsn = Lsn(0x3_0000_1234).to_string();
        write(dir.path(), &c).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(c.clone()));
        assert_eq!(c.system_id(), Some(7_391_234_567_890_123_456));
        let path = dir.path().join(CONTROL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(ControlError::Corrupt(_))));
    }
}

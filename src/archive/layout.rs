//! The object layout of an archive, its manifests and compression.
//!
//! ```text
//! <prefix>/<system id>/archive.json                      identity: system id, segment size
//! <prefix>/<system id>/wal/<segment>[.zst]               completed segments
//! <prefix>/<system id>/wal/<TLI>.history                 timeline history files
//! <prefix>/<system id>/manifest/<file name>.json         size, sha256, timeline, LSN range,
//!                                                        compression of each wal/ object
//! <prefix>/<system id>/partial/<segment>.<OFFSET>.partial[.zst]
//!                                                        snapshot of an open segment, its
//!                                                        first OFFSET (hex) bytes
//! ```
//!
//! Owns: object names and the (de)serialisation of identity and manifests, compression and
//! decompression. Pure: no IO. Decoders never panic on bad input.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ArchiveError;
use crate::config::Compression;
use crate::lsn::{history_file_name, segment_file_name, Lsn, TimelineId};

/// Version of the layout written to `archive.json`.
pub const FORMAT: u32 = 1;
const ZST: &str = ".zst";

/// Object names under `<prefix>/<system id>/`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: ObjPath,
}

impl Layout {
    pub fn new(prefix: &ObjPath, system_id: u64) -> Layout {
        Layout {
            root: prefix.child(system_id.to_string()),
        }
    }
    pub fn root(&self) -> &ObjPath {
        &self.root
    }
    pub fn identity(&self) -> ObjPath {
        self.root.child("archive.json")
    }
    pub fn wal_dir(&self) -> ObjPath {
        self.root.child("wal")
    }
    pub fn manifest_dir(&self) -> ObjPath {
        self.root.child("manifest")
    }
    pub fn partial_dir(&self) -> ObjPath {
        self.root.child("partial")
    }
    /// `wal/<name>` or `wal/<name>.zst`.
    pub fn wal_object(&self, name: &str, compression: Compression) -> ObjPath {
        match compression {
            Compression::None => self.wal_dir().child(name),
            Compression::Zstd => self.wal_dir().child(format!("{name}{ZST}")),
        }
    }
    pub fn segment(&self, tli: TimelineId, segno: u64, seg_size: u64, c: Compression) -> ObjPath {
        self.wal_object(&segment_file_name(tli, segno, seg_size), c)
    }
    pub fn history(&self, tli: TimelineId) -> ObjPath {
        self.wal_dir().child(history_file_name(tli))
    }
    pub fn manifest(&self, name: &str) -> ObjPath {
        self.manifest_dir().child(format!("{name}.json"))
    }
    /// Prefix shared by every snapshot of segment `name` (for listing).
    pub fn partial_prefix(&self, name: &str) -> ObjPath {
        self.partial_dir().child(name)
    }
    pub fn partial(&self, name: &str, offset: u64, c: Compression) -> ObjPath {
        let base = format!("{name}.{offset:08X}.partial");
        match c {
            Compression::None => self.partial_dir().child(base),
            Compression::Zstd => self.partial_dir().child(format!("{base}{ZST}")),
        }
    }
}

/// Splits a `wal/` or `partial/` object's file name into the WAL file name and its
/// compression.
pub fn strip_compression(file: &str) -> (&str, Compression) {
    match file.strip_suffix(ZST) {
        Some(base) => (base, Compression::Zstd),
        None => (file, Compression::None),
    }
}

/// Parses a snapshot's file name `<segment>.<OFFSET>.partial[.zst]`.
pub fn parse_partial(file: &str) -> Option<(String, u64, Compression)> {
    let (base, c) = strip_compression(file);
    let base = base.strip_suffix(".partial")?;
    let (name, off) = base.rsplit_once('.')?;
    let off = u64::from_str_radix(off, 16).ok()?;
    Some((name.to_string(), off, c))
}

/// `archive.json`: which cluster the archive belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub system_id: String,
    pub wal_segment_size: u64,
}

impl Identity {
    pub fn new(system_id: u64, wal_segment_size: u64) -> Identity {
        Identity {
            format: FORMAT,
            system_id: system_id.to_string(),
            wal_segment_size,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Option<Identity> {
        serde_json::from_slice(b).ok()
    }
    pub fn system_id(&self) -> Option<u64> {
        self.system_id.parse().ok()
    }
}

/// What a `wal/` object holds, so that the archive can be checked without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// WAL file name (`000000010000000000000003`, `00000002.history`).
    pub name: String,
    pub timeline: TimelineId,
    /// LSN range covered (segments only; `0/0` for history files).
    pub start_lsn: String,
    pub end_lsn: String,
    /// Uncompressed size and SHA-256 (hex) of the WAL file.
    pub size: u64,
    pub sha256: String,
    /// `none` or `zstd`.
    pub compression: String,
    /// Size of the object as stored.
    pub stored_size: u64,
    /// `chacha20poly1305-stream-64k:<key id>` when the object is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Option<Manifest> {
        serde_json::from_slice(b).ok()
    }
    pub fn start(&self) -> Lsn {
        self.start_lsn.parse().unwrap_or_default()
    }
    pub fn end(&self) -> Lsn {
        self.end_lsn.parse().unwrap_or_default()
    }
    pub fn compression(&self) -> Compression {
        if self.compression == "zstd" {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Zstd => "zstd",
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lower-case hex of `bytes` (a digest).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Compresses `data` for storage.
pub fn compress(data: &[u8], c: Compression, level: i32) -> Result<Vec<u8>, ArchiveError> {
    match c {
        Compression::None => Ok(data.to_vec()),
        Compression::Zstd => zstd::bulk::compress(data, level.clamp(1, 19))
            .map_err(|e| ArchiveError::Config(format!("zstd compression failed: {e}"))),
    }
}

/// Compresses `data` for storage into `out` (cleared first; grown to the compression bound
/// if its capacity is smaller), so that a caller can reuse its buffers.
pub fn compress_into(
    data: &[u8],
    c: Compression,
    level: i32,
    out: &mut Vec<u8>,
) -> Result<(), ArchiveError> {
    out.clear();
    match c {
        Compression::None => out.extend_from_slice(data),
        Compression::Zstd => {
            out.reserve(zstd::zstd_safe::compress_bound(data.len()));
            zstd::bulk::Compressor::new(level.clamp(1, 19))
                .and_then(|mut z| z.compress_to_buffer(data, out))
                .map_err(|e| ArchiveError::Config(format!("zstd compression failed: {e}")))?;
        }
    }
    Ok(())
}

/// Decompresses a stored object; `max` bounds the result (a corrupt or hostile object can
/// not make it allocate more).
pub fn decompress(
    stored: bytes::Bytes,
    c: Compression,
    max: usize,
    path: &ObjPath,
) -> Result<bytes::Bytes, ArchiveError> {
    match c {
        Compression::None => Ok(stored),
        Compression::Zstd => {
            let bound = match zstd::zstd_safe::get_frame_content_size(&stored) {
                Ok(Some(n)) if n <= max as u64 => n as usize,
                Ok(Some(n)) => {
                    return Err(ArchiveError::Corrupt {
                        path: path.to_string(),
                        reason: format!("decompresses to {n} bytes, more than {max}"),
                    })
                }
                _ => max,
            };
            zstd::bulk::decompress(&stored, bound)
                .map(bytes::Bytes::from)
                .map_err(|e| ArchiveError::Corrupt {
                    path: path.to_string(),
                    reason: format!("zstd: {e}"),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let l = Layout::new(&ObjPath::from("pre/fix"), 42);
        assert_eq!(l.identity().as_ref(), "pre/fix/42/archive.json");
        assert_eq!(
            l.segment(1, 3, 16 << 20, Compression::Zstd).as_ref(),
            "pre/fix/42/wal/000000010000000000000003.zst"
        );
        assert_eq!(l.history(2).as_ref(), "pre/fix/42/wal/00000002.history");
        assert_eq!(
            l.manifest("000000010000000000000003").as_ref(),
            "pre/fix/42/manifest/000000010000000000000003.json"
        );
        let p = l.partial("000000010000000000000003", 0x2000, Compression::None);
        assert_eq!(
            p.as_ref(),
            "pre/fix/42/partial/000000010000000000000003.00002000.partial"
        );
        assert_eq!(
            parse_partial("000000010000000000000003.00002000.partial.zst"),
            Some((
                "000000010000000000000003".to_string(),
                0x2000,
                Compression::Zstd
            ))
        );
        assert_eq!(parse_partial("junk"), None);
        assert_eq!(parse_partial("a.zz.partial"), None);
        let root = Layout::new(&ObjPath::default(), 7);
        assert_eq!(root.identity().as_ref(), "7/archive.json");
    }

    #[test]
    fn compression_round_trip_and_bounds() {
        let data = vec![7u8; 1 << 20];
        let p = ObjPath::from("x");
        let z = compress(&data, Compression::Zstd, 3).unwrap();
        assert!(z.len() < 1000);
        let back = decompress(
            bytes::Bytes::from(z.clone()),
            Compression::Zstd,
            1 << 20,
            &p,
        )
        .unwrap();
        assert_eq!(&back[..], &data[..]);
        assert!(decompress(bytes::Bytes::from(z), Compression::Zstd, 1000, &p).is_err());
        for junk in [&b"\x28\xb5\x2f\xfd"[..], b"garbage bytes"] {
            assert!(decompress(
                bytes::Bytes::copy_from_slice(junk),
                Compression::Zstd,
                100,
                &p
            )
            .is_err());
        }
        assert_eq!(Manifest::decode(b"{"), None);
        assert_eq!(Identity::decode(b"[]"), None);
    }
}

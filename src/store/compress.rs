//! Compressed segment files, as pg_receivewal `--compress` writes them.
//!
//! Owns: the `.gz` / `.lz4` file formats of local segments (a gzip member, an LZ4 frame),
//! their names (`<segment>.gz.partial` while open, `<segment>.gz` once complete), and reading
//! back how much WAL a complete compressed file holds (pg_receivewal's `FindStreamingStart`:
//! gzip's ISIZE trailer, a full LZ4 decode). The store thread is the only caller that
//! writes.
//!
//! A compressed segment is written sequentially from its start (the store always begins at
//! a segment start), is not padded, and is a complete stream whenever it is closed: a
//! `.partial` left behind decompresses to the WAL received, like pg_receivewal's (which
//! closes its gzip/LZ4 stream on exit). Restarting from a compressed `.partial` restreams
//! that segment from its start and rewrites the file; when the old file holds published
//! WAL, the store writes the new stream to `<name>.partial.rewrite` and renames it over the
//! old file only once it is durable past what was published (docs/durability.md).
//!
//! Must not: touch sockets, or decide what is durable (the store fsyncs the file after
//! [`Segment::flush`]).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::lsn::{parse_wal_file_name, WalFileName};
use crate::store::scan::SegmentFile;

/// A compression method pg_receivewal writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Gzip,
    Lz4,
}

impl Method {
    /// The file name suffix before `.partial`.
    pub fn suffix(self) -> &'static str {
        match self {
            Method::Gzip => ".gz",
            Method::Lz4 => ".lz4",
        }
    }
}

/// How local segments are compressed. `level` is PostgreSQL's: for gzip -1 (zlib's default)
/// or 1..9; for LZ4 0 (fast) or 1..12 (the LZ4 encoder used always writes fast mode, a
/// valid frame at any level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub method: Option<Method>,
    pub level: i64,
}

impl Compression {
    pub const fn none() -> Compression {
        Compression {
            method: None,
            level: 0,
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Compression::none()
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<File>),
    Lz4(Box<lz4_flex::frame::FrameEncoder<File>>),
}

/// An open compressed segment.
pub struct Segment {
    enc: Encoder,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Segment {
    /// Starts a new compressed stream in `file` (truncated first).
    pub fn create(file: File, method: Method, level: i64) -> io::Result<Segment> {
        file.set_len(0)?;
        let mut file = file;
        file.seek(SeekFrom::Start(0))?;
        let enc = match method {
            Method::Gzip => {
                let level = if (1..=9).contains(&level) {
                    flate2::Compression::new(level as u32)
                } else {
                    flate2::Compression::default()
                };
                Encoder::Gzip(flate2::write::GzEncoder::new(file, level))
            }
            Method::Lz4 => Encoder::Lz4(Box::new(lz4_flex::frame::FrameEncoder::new(file))),
        };
        Ok(Segment { enc })
    }

    /// Compresses `data` (the next bytes of the segment).
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.enc {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Lz4(e) => e.write_all(data),
        }
    }

    /// Writes out everything compressed so far (a gzip sync flush, an LZ4 block), so that an
    /// fsync of the file makes it durable.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.enc {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
        }
    }

    /// Ends the stream (gzip trailer, LZ4 end mark). The caller fsyncs.
    pub fn finish(self) -> io::Result<()> {
        match self.enc {
            Encoder::Gzip(e) => e.finish().map(drop),
            Encoder::Lz4(e) => e.finish().map(drop).map_err(other),
        }
    }
}

/// Splits `X.gz`, `X.gz.partial`, `X.lz4`, `X.lz4.partial` into the plain name (`X`,
/// `X.partial`) and the method.
pub fn split_name(name: &str) -> Option<(String, Method)> {
    for m in [Method::Gzip, Method::Lz4] {
        if let Some(base) = name.strip_suffix(m.suffix()) {
            return Some((base.to_string(), m));
        }
        if let Some(base) = name.strip_suffix(&format!("{}.partial", m.suffix())) {
            return Some((format!("{base}.partial"), m));
        }
    }
    None
}

/// How many bytes a complete compressed file decompresses to: gzip's ISIZE (the last four
/// bytes), or the length of a full LZ4 decode (stopping once past `limit`).
pub fn uncompressed_size(path: &Path, method: Method, limit: u64) -> io::Result<u64> {
    let mut f = File::open(path)?;
    match method {
        Method::Gzip => {
            f.seek(SeekFrom::End(-4))?;
            let mut b = [0u8; 4];
            f.read_exact(&mut b)?;
            Ok(u64::from(u32::from_le_bytes(b)))
        }
        Method::Lz4 => {
            let mut dec = lz4_flex::frame::FrameDecoder::new(io::BufReader::new(f));
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = dec.read(&mut buf).map_err(other)?;
                if n == 0 || total > limit {
                    return Ok(total);
                }
                total = total.saturating_add(n as u64);
            }
        }
    }
}

/// The compressed segment files in `dir`, as [`scan::list`](super::scan::list) lists plain
/// ones; `size` is the uncompressed size for complete files (`.partial` ones: 0, their size
/// does not matter for resuming). Files whose size cannot be read are skipped with a
/// warning, as pg_receivewal skips a segment of the wrong size.
pub fn list(dir: &Path, seg_size: u64) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some((plain, method)) = split_name(&name) else {
            continue;
        };
        let Some(WalFileName::Segment {
            tli,
            segno,
            partial,
        }) = parse_wal_file_name(&plain, seg_size)
        else {
            continue;
        };
        let size = if partial {
            0
        } else {
            match uncompressed_size(&entry.path(), method, seg_size) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("could not read compressed file \"{name}\": {e}");
                    continue;
                }
            }
        };
        if !partial && size != seg_size {
            tracing::warn!(
                "compressed segment file \"{name}\" has incorrect uncompressed size {size}, skipping"
            );
        }
        out.push(SegmentFile {
            tli,
            segno,
            partial,
            size,
            name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(method: Method) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("000000010000000000000001.partial");
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        // stale longer content is replaced
        f.set_len(5_000_000).unwrap();
        let mut s = Segment::create(f, method, -1).unwrap();
        s.append(&data[..1000]).unwrap();
        s.flush().unwrap();
        s.append(&data[1000..]).unwrap();
        s.finish().unwrap();
        let raw = std::fs::read(&path).unwrap();
        let mut out = Vec::new();
        match method {
            Method::Gzip => {
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Method::Lz4 => {
                lz4_flex::frame::FrameDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        assert_eq!(out, data);
        assert_eq!(
            uncompressed_size(&path, method, u64::MAX).unwrap(),
            data.len() as u64
        );
    }

    #[test]
    fn gzip_and_lz4_round_trip() {
        roundtrip(Method::Gzip);
        roundtrip(Method::Lz4);
    }

    /// After `flush`, the file holds everything appended (what an fsync then makes durable),
    /// readable before the stream is finished.
    #[test]
    fn flush_writes_out_everything_appended() {
        for method in [Method::Gzip, Method::Lz4] {
            let d = tempfile::tempdir().unwrap();
            let path = d.path().join("seg");
            let f = File::create(&path).unwrap();
            let mut s = Segment::create(f, method, 1).unwrap();
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
            s.append(&data).unwrap();
            s.flush().unwrap();
            let raw = std::fs::read(&path).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut r: Box<dyn Read> = match method {
                Method::Gzip => Box::new(flate2::read::GzDecoder::new(&raw[..])),
                Method::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(&raw[..])),
            };
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, data, "{method:?}");
            drop(s);
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            split_name("000000010000000000000001.gz.partial"),
            Some(("000000010000000000000001.partial".into(), Method::Gzip))
        );
        assert_eq!(
            split_name("000000010000000000000001.lz4"),
            Some(("000000010000000000000001".into(), Method::Lz4))
        );
        assert_eq!(split_name("000000010000000000000001.partial"), None);
    }
}

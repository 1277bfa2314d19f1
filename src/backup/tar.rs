//! Watching a tar stream go by, to pick out `backup_label` and `tablespace_map`.
//!
//! Owns: parsing ustar headers (name, prefix, size in octal or base-256, as PostgreSQL's
//! `tarCreateHeader` writes them) incrementally, over data arriving in pieces of any size.
//! Must not: change or hold the stream (only the captured files, capped in size).

// Parses outside input (the server's tar stream).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

const BLOCK: usize = 512;
/// Larger captured files are an error: backup_label and tablespace_map are small.
const MAX_CAPTURE: usize = 1 << 20;

/// Files captured from the top level of a tar archive.
#[derive(Debug, Default)]
pub struct TarWatch {
    header: Vec<u8>,
    /// Bytes of the current entry's data (and padding) still to come.
    data_left: u64,
    pad_left: u64,
    capture: Option<(String, Vec<u8>)>,
    ended: bool,
    pub error: Option<String>,
    pub files: Vec<(String, Vec<u8>)>,
}

const WANTED: [&str; 2] = ["backup_label", "tablespace_map"];

fn parse_size(field: &[u8]) -> Option<u64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        // base-256: the rest of the field is a big-endian number
        let mut v: u64 = 0;
        for (i, b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { *b };
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&c| c != 0 && c != b' ')
        .skip_while(|&c| c == b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
}

impl TarWatch {
    pub fn new() -> TarWatch {
        TarWatch::default()
    }

    /// The file `name` if it was in the archive.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended && self.error.is_none() {
            if self.data_left > 0 {
                let n = usize::try_from(self.data_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let (head, rest) = data.split_at(n);
                if let Some((_, buf)) = self.capture.as_mut() {
                    if buf.len().saturating_add(head.len()) > MAX_CAPTURE {
                        self.error = Some("backup_label or tablespace_map is too large".into());
                        return;
                    }
                    buf.extend_from_slice(head);
                }
                self.data_left = self.data_left.saturating_sub(n as u64);
                if self.data_left == 0 {
                    if let Some(c) = self.capture.take() {
                        self.files.push(c);
                    }
                }
                data = rest;
                continue;
            }
            if self.pad_left > 0 {
                let n = usize::try_from(self.pad_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.pad_left = self.pad_left.saturating_sub(n as u64);
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            let need = BLOCK.saturating_sub(self.header.len());
            let n = need.min(data.len());
            let (head, rest) = data.split_at(n);
            self.header.extend_from_slice(head);
            data = rest;
            if self.header.len() == BLOCK {
                let h = std::mem::take(&mut self.header);
                self.header_block(&h);
            }
        }
    }

    fn header_block(&mut self, h: &[u8]) {
        if h.iter().all(|&b| b == 0) {
            self.ended = true;
            return;
        }
        let Some(size) = h.get(124..136).and_then(parse_size) else {
            self.error = Some("a tar header with an invalid size".into());
            return;
        };
        let mut name = cstr(h.get(0..100).unwrap_or_default());
        if h.get(257..262) == Some(b"ustar") {
            let prefix = cstr(h.get(345..500).unwrap_or_default());
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let typeflag = h.get(156).copied().unwrap_or(0);
        let regular = typeflag == b'0' || typeflag == 0;
        self.data_left = size;
        let rem = size.checked_rem(BLOCK as u64).unwrap_or(0);
        self.pad_left = if rem == 0 {
            0
        } else {
            (BLOCK as u64).saturating_sub(rem)
        };
        if regular && WANTED.contains(&name.as_str()) {
            self.capture = Some((name, Vec::new()));
            if size == 0 {
                if let Some(c) = self.capture.take() {
                    self.files.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: usize, flag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{size:011o} ");
        h[124..136].copy_from_slice(s.as_bytes());
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = header(name, data.len(), b'0');
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    #[test]
    fn captures_label_and_map_in_any_pieces() {
        let mut tar = entry(
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
        );
        tar.extend(header("base", 0, b'5'));
        tar.extend(entry("base/1/1259", &vec![7u8; 3000]));
        tar.extend(entry("tablespace_map", b"16384 /tmp/ts\n"));
        tar.extend(entry("pg_wal/backup_label", b"nope"));
        tar.extend(vec![0u8; 1024]);
        for piece in [1usize, 100, 511, 512, 513, 100_000] {
            let mut w = TarWatch::new();
            for p in tar.chunks(piece) {
                w.feed(p);
            }
            assert!(w.error.is_none());
            assert!(w
                .file("backup_label")
                .unwrap()
                .starts_with(b"START WAL LOCATION: 0/2000028"));
            assert_eq!(w.file("tablespace_map").unwrap(), b"16384 /tmp/ts\n");
            assert_eq!(w.files.len(), 2, "piece {piece}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(b"00000001000 "), Some(512));
        assert_eq!(parse_size(b"\x80\0\0\0\0\0\0\0\0\0\x02\0"), Some(512));
        assert_eq!(parse_size(b"zz"), None);
        let mut w = TarWatch::new();
        let mut h = header("backup_label", 0, b'0');
        h[124..136].copy_from_slice(b"9999999999z ");
        w.feed(&h);
        assert!(w.error.is_some());
    }
}

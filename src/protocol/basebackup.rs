//! The CopyOut stream of BASE_BACKUP, as a walsender sends it.
//!
//! Owns: the messages of both shapes (`basebackup_copy.c` for PostgreSQL 15+, `basebackup.c`
//! of 13/14 before it):
//! - 15+: one CopyOutResponse, then CopyData messages whose first byte says what they carry:
//!   `n` a new archive (archive name, tablespace location or ""), `d` archive or manifest
//!   bytes, `p` progress (int64 bytes done), `m` the manifest follows; then CopyDone.
//! - ≤ 14: one CopyOutResponse … CopyDone per tar (bare CopyData bytes), then one more for
//!   the manifest.
//!
//! The result sets around the COPY (start/end position, tablespaces) are ordinary rows built
//! by the handler (`server/cmd/base_backup.rs`). Must not: do I/O.
//!
//! Data messages are split into a header and the payload, so the payload (a `Bytes` read
//! from the archive) goes to the socket without a copy.
//!
//! [`TarChunker`]: a 13/14 pg_basebackup unpacking a plain-format backup expects each tar
//! member header in a CopyData of its own (exactly 512 bytes), then the file's bytes, then
//! its padding in one message, as those servers sent them; and no end-of-archive blocks
//! (the client writes its own). The chunker cuts a stored tar stream that way.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{begin, end};
use super::put_cstr;

/// CopyOutResponse: overall format 0 (text), zero columns, as `SendCopyOutResponse`.
pub fn copy_out_response(buf: &mut BytesMut) {
    let at = begin(buf, b'H');
    buf.put_u8(0);
    buf.put_i16(0);
    end(buf, at);
}

/// 15+: CopyData `n`: a new archive begins.
pub fn new_archive(buf: &mut BytesMut, archive_name: &str, location: &str) {
    let at = begin(buf, b'd');
    buf.put_u8(b'n');
    put_cstr(buf, archive_name);
    put_cstr(buf, location);
    end(buf, at);
}

/// 15+: CopyData `p`: bytes of archive content sent so far.
pub fn progress(buf: &mut BytesMut, bytes_done: u64) {
    let at = begin(buf, b'd');
    buf.put_u8(b'p');
    buf.put_i64(i64::try_from(bytes_done).unwrap_or(i64::MAX));
    end(buf, at);
}

/// 15+: CopyData `m`: the manifest follows (as `d` messages).
pub fn manifest_start(buf: &mut BytesMut) {
    let at = begin(buf, b'd');
    buf.put_u8(b'm');
    end(buf, at);
}

/// The header of a CopyData carrying `len` payload bytes: with `typed` (15+) the payload is
/// preceded by the `d` type byte. `None` if the message would not fit PostgreSQL's length
/// word (callers send chunks far smaller).
pub fn data_header(len: usize, typed: bool) -> Option<BytesMut> {
    let extra = if typed { 5 } else { 4 };
    let total = i32::try_from(len.checked_add(extra)?).ok()?;
    let mut buf = BytesMut::with_capacity(6);
    buf.put_u8(b'd');
    buf.put_i32(total);
    if typed {
        buf.put_u8(b'd');
    }
    Some(buf)
}

const BLOCK: usize = 512;

/// A stored tar that is not a ustar stream the chunker can follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("invalid tar header: bad size field")]
    BadSize,
    #[error("tar archive ends inside a member")]
    Truncated,
}

#[derive(Debug)]
enum TarState {
    /// Collecting a 512-byte header.
    Header(BytesMut),
    /// `left` content bytes of the member, then `padding`.
    Content { left: u64, padding: usize },
    /// Collecting the member's padding.
    Padding { need: usize, have: usize },
    /// After the end-of-archive block: the rest is dropped.
    Done,
}

/// Cuts a tar stream into the messages a ≤ 14 server sends (see the module docs).
#[derive(Debug)]
pub struct TarChunker {
    state: TarState,
}

impl Default for TarChunker {
    fn default() -> Self {
        TarChunker {
            state: TarState::Header(BytesMut::with_capacity(BLOCK)),
        }
    }
}

/// A tar number field: octal digits (NUL/space terminated), or base-256 when the high bit of
/// the first byte is set (`print_tar_number` for sizes of 8 GB and more).
fn tar_number(field: &[u8]) -> Option<u64> {
    match field.split_first() {
        Some((&first, rest)) if first & 0x80 != 0 => {
            rest.iter().try_fold(u64::from(first & 0x7f), |acc, &b| {
                acc.checked_mul(256)?.checked_add(u64::from(b))
            })
        }
        _ => {
            let digits = field.iter().skip_while(|&&b| b == b' ');
            let mut v: u64 = 0;
            for &b in digits {
                match b {
                    b'0'..=b'7' => {
                        v = v
                            .checked_mul(8)?
                            .checked_add(u64::from(b.wrapping_sub(b'0')))?
                    }
                    0 | b' ' => break,
                    _ => return None,
                }
            }
            Some(v)
        }
    }
}

impl TarChunker {
    /// The messages `data` completes, in order (slices of `data` where possible).
    pub fn feed(&mut self, mut data: Bytes) -> Result<Vec<Bytes>, TarError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                TarState::Done => return Ok(out),
                TarState::Header(buf) => {
                    let take = BLOCK.saturating_sub(buf.len()).min(data.len());
                    buf.extend_from_slice(&data.split_to(take));
                    if buf.len() < BLOCK {
                        continue;
                    }
                    let header = std::mem::take(buf).freeze();
                    if header.iter().all(|&b| b == 0) {
                        self.state = TarState::Done;
                        continue;
                    }
                    let size = header
                        .get(124..136)
                        .and_then(tar_number)
                        .ok_or(TarError::BadSize)?;
                    // Links, devices, directories and FIFOs carry no content.
                    let size = match header.get(156) {
                        Some(b'1'..=b'6') => 0,
                        _ => size,
                    };
                    let rem =
                        usize::try_from(size.checked_rem(BLOCK as u64).unwrap_or(0)).unwrap_or(0);
                    let padding = if rem == 0 {
                        0
                    } else {
                        BLOCK.saturating_sub(rem)
                    };
                    out.push(header);
                    self.state = if size > 0 {
                        TarState::Content {
                            left: size,
                            padding,
                        }
                    } else {
                        TarState::Header(BytesMut::with_capacity(BLOCK))
                    };
                }
                TarState::Content { left, padding } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    out.push(data.split_to(take));
                    *left = left.saturating_sub(take as u64);
                    if *left == 0 {
                        self.state = if *padding > 0 {
                            TarState::Padding {
                                need: *padding,
                                have: 0,
                            }
                        } else {
                            TarState::Header(BytesMut::with_capacity(BLOCK))
                        };
                    }
                }
                TarState::Padding { need, have } => {
                    let take = need.saturating_sub(*have).min(data.len());
                    data.advance_by(take);
                    *have = have.saturating_add(take);
                    if *have == *need {
                        out.push(Bytes::from(vec![0u8; *need]));
                        self.state = TarState::Header(BytesMut::with_capacity(BLOCK));
                    }
                }
            }
        }
        Ok(out)
    }

    /// At the end of the stream: only between members (or after the end marker) is fine.
    pub fn finish(&self) -> Result<(), TarError> {
        match &self.state {
            TarState::Done => Ok(()),
            TarState::Header(b) if b.is_empty() => Ok(()),
            _ => Err(TarError::Truncated),
        }
    }
}

trait AdvanceBy {
    fn advance_by(&mut self, n: usize);
}

impl AdvanceBy for Bytes {
    fn advance_by(&mut self, n: usize) {
        let _ = self.split_to(n.min(self.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_as_postgres_sends_them() {
        let mut b = BytesMut::new();
        copy_out_response(&mut b);
        assert_eq!(&b[..], b"H\0\0\0\x07\0\0\0");
        let mut b = BytesMut::new();
        new_archive(&mut b, "16384.tar", "/srv/ts");
        assert_eq!(&b[..], b"d\0\0\0\x17n16384.tar\0/srv/ts\0");
        let mut b = BytesMut::new();
        new_archive(&mut b, "base.tar", "");
        assert_eq!(&b[..], b"d\0\0\0\x0fnbase.tar\0\0");
        let mut b = BytesMut::new();
        progress(&mut b, 0x0102_0304_0506);
        assert_eq!(&b[..], b"d\0\0\0\x0dp\0\0\x01\x02\x03\x04\x05\x06");
        let mut b = BytesMut::new();
        manifest_start(&mut b);
        assert_eq!(&b[..], b"d\0\0\0\x05m");
        assert_eq!(&data_header(3, true).unwrap()[..], b"d\0\0\0\x08d");
        assert_eq!(&data_header(3, false).unwrap()[..], b"d\0\0\0\x07");
        assert!(data_header(usize::MAX, true).is_none());
        assert!(data_header(i32::MAX as usize, false).is_none());
    }

    fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let sz = format!("{size:011o}\0");
        h[124..136].copy_from_slice(sz.as_bytes());
        h[156] = kind;
        h
    }

    #[test]
    fn tar_chunker_cuts_like_a_14_server() {
        let mut tar = header("PG_VERSION", 3, b'0');
        tar.extend_from_slice(b"14\n");
        tar.extend_from_slice(&[0u8; 509]);
        tar.extend(header("base", 0, b'5'));
        tar.extend(header("global/x", 1024, b'0'));
        tar.extend((0..1024).map(|i| (i % 251) as u8));
        tar.extend_from_slice(&[0u8; 1024]); // end of archive
        for step in [1usize, 7, 511, 512, 513, 4096, tar.len()] {
            let mut c = TarChunker::default();
            let mut msgs: Vec<Bytes> = Vec::new();
            for piece in tar.chunks(step) {
                msgs.extend(c.feed(Bytes::copy_from_slice(piece)).unwrap());
            }
            c.finish().unwrap();
            // What pg_basebackup 14 (ReceiveTarAndUnpackCopyChunk) accepts: a header is one
            // 512-byte message, contents any cuts, the padding one message of its size.
            let mut names = Vec::new();
            let mut left: Option<(u64, usize)> = None;
            for m in &msgs {
                match left {
                    None => {
                        assert_eq!(m.len(), 512, "step {step}");
                        let size = tar_number(&m[124..136]).unwrap();
                        let name: Vec<u8> =
                            m[..100].iter().take_while(|&&b| b != 0).copied().collect();
                        names.push(String::from_utf8(name).unwrap());
                        let pad = ((size + 511) & !511) - size;
                        if m[156] != b'5' && size > 0 {
                            left = Some((size, pad as usize));
                        }
                    }
                    Some((0, pad)) => {
                        assert_eq!(m.len(), pad, "step {step}");
                        left = None;
                    }
                    Some((n, pad)) => {
                        assert!(m.len() as u64 <= n, "step {step}");
                        let n = n - m.len() as u64;
                        left = if n == 0 && pad == 0 {
                            None
                        } else {
                            Some((n, pad))
                        };
                    }
                }
            }
            assert_eq!(left, None);
            assert_eq!(names, ["PG_VERSION", "base", "global/x"], "step {step}");
            let joined: Vec<u8> = msgs.iter().flat_map(|m| m.to_vec()).collect();
            assert_eq!(joined, tar[..tar.len() - 1024], "step {step}");
        }
        let mut c = TarChunker::default();
        c.feed(Bytes::from(header("f", 10, b'0'))).unwrap();
        assert_eq!(c.finish(), Err(TarError::Truncated));
        let mut bad = header("f", 0, b'0');
        bad[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
        assert_eq!(
            TarChunker::default().feed(Bytes::from(bad)),
            Err(TarError::BadSize)
        );
        assert_eq!(
            tar_number(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]),
            Some(2 << 32)
        );
        assert_eq!(tar_number(b" 17\0"), Some(15));
    }
}

//! PostgreSQL wire protocol (v3) codec, both directions, with no IO.
//!
//! Owns: framing ([`frame`]), the startup packet and frontend messages a server receives
//! ([`frontend`]), backend messages in both directions ([`backend`]: decoded by the upstream
//! client, encoded by the walsender), the CopyBoth payloads of streaming replication
//! ([`replication`]) and the replication command grammar ([`command`]).
//!
//! Must not: touch sockets, files or clocks, or panic on any input. Every read from network
//! data is bounds-checked through [`Reader`]; malformed input is a [`ProtocolError`]
//! (SQLSTATE 08P01) or, for replication commands, a [`command::CommandError`].

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]
pub mod backend;
pub mod basebackup;
pub mod command;
pub mod frame;
pub mod frontend;
pub mod replication;

use crate::error::{codes, SqlState};
use bytes::{BufMut, Bytes, BytesMut};

/// Malformed protocol input. The texts follow PostgreSQL's `pqformat.c` / `postmaster.c`
/// where such a text exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame length below 4 or above the caller's limit. The type byte is shown escaped
    /// (`\xe9`), as garbage on the wire is the usual cause.
    #[error("invalid message length {len} for message type \"{}\"", tag.escape_ascii())]
    InvalidLength { tag: u8, len: i64 },
    /// A startup packet length below 8 or above 10000.
    #[error("invalid length of startup packet")]
    InvalidStartupLength(i64),
    /// A field runs past the end of the message.
    #[error("insufficient data left in message")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("invalid message format")]
    TrailingData,
    /// A string without its NUL terminator, or not valid UTF-8.
    #[error("invalid string in message")]
    InvalidString,
    /// Any other malformation, with a specific text.
    #[error("{0}")]
    Malformed(String),
}

impl SqlState for ProtocolError {
    fn sqlstate(&self) -> &'static str {
        codes::PROTOCOL_VIOLATION
    }
}

/// A bounds-checked big-endian cursor over one message body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Offset of the next unread byte.
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self.pos.checked_add(n).ok_or(ProtocolError::Truncated)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(ProtocolError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::InvalidString)?;
        let s = std::str::from_utf8(rest.get(..nul).unwrap_or_default())
            .map_err(|_| ProtocolError::InvalidString)?;
        // nul < rest.len() <= buf.len() - pos: no overflow.
        self.pos = self.pos.saturating_add(nul).saturating_add(1);
        Ok(s)
    }
    /// A NUL-terminated string whose invalid UTF-8 is replaced (U+FFFD) rather than refused:
    /// for server texts (messages, parameter values) that a client shows but must not choke
    /// on, since a server sends them in its own encoding. Only a missing NUL is an error.
    pub fn cstr_lossy(&mut self) -> Result<String, ProtocolError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::InvalidString)?;
        let s = String::from_utf8_lossy(rest.get(..nul).unwrap_or_default()).into_owned();
        self.pos = self.pos.saturating_add(nul).saturating_add(1);
        Ok(s)
    }
    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
    }
    /// Errors unless the whole body was consumed (`pq_getmsgend`).
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(ProtocolError::TrailingData)
        }
    }
}

/// Appends `s` as a C string: bytes up to its first NUL (as C would see it), then a NUL.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    buf.put_slice(b.get(..end).unwrap_or_default());
    buf.put_u8(0);
}

/// Slices `n` bytes of `body` at the reader's position without copying.
pub(crate) fn take_bytes(
    r: &mut Reader<'_>,
    body: &Bytes,
    n: usize,
) -> Result<Bytes, ProtocolError> {
    let start = r.pos();
    let taken = r.take(n)?;
    // take() checked that `n` bytes follow `start`.
    Ok(body.slice(start..start.saturating_add(taken.len())))
}

#[cfg(test)]
pub(crate) mod testutil {
    /// xorshift64* PRNG for reproducible randomized tests.
    pub struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// Random bytes of random length below `max`, biased towards small values and
        /// protocol-ish bytes so that decoders get past their first checks.
        pub fn bytes(&mut self, max: u64) -> Vec<u8> {
            let len = self.below(max) as usize;
            (0..len)
                .map(|_| match self.below(4) {
                    0 => 0,
                    1 => self.below(8) as u8,
                    _ => self.next() as u8,
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.i16().unwrap(), 1);
        assert_eq!(r.i16(), Err(ProtocolError::Truncated));
        assert_eq!(r.u8().unwrap(), 2);
        assert!(r.finish().is_ok());
        assert_eq!(r.take(usize::MAX), Err(ProtocolError::Truncated));
        let mut r = Reader::new(b"ab\0c");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.cstr(), Err(ProtocolError::InvalidString));
        assert_eq!(r.finish(), Err(ProtocolError::TrailingData));
        assert_eq!(
            Reader::new(b"\xff\0").cstr(),
            Err(ProtocolError::InvalidString)
        );
        let mut r = Reader::new(b"a\xffb\0c");
        assert_eq!(r.cstr_lossy().unwrap(), "a\u{fffd}b");
        assert_eq!(r.cstr_lossy(), Err(ProtocolError::InvalidString));
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn cstr_stops_at_nul() {
        let mut b = BytesMut::new();
        put_cstr(&mut b, "a\0b");
        assert_eq!(&b[..], b"a\0");
        assert_eq!(
            ProtocolError::InvalidLength { tag: b'Q', len: 2 }.to_string(),
            "invalid message length 2 for message type \"Q\""
        );
        assert_eq!(
            ProtocolError::InvalidLength { tag: 0xe9, len: -1 }.to_string(),
            "invalid message length -1 for message type \"\\xe9\""
        );
        assert_eq!(ProtocolError::Truncated.sqlstate(), "08P01");
    }
}

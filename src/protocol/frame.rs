//! Message framing: `tag u8, length i32 (including itself), body`.
//!
//! Owns: splitting complete frames off a receive buffer and the length patching used by every
//! encoder in this module. Must not: interpret bodies (see [`super::backend`],
//! [`super::frontend`]) or do IO.

use super::ProtocolError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One complete message: its type byte and its body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Frame {
        Frame {
            tag,
            body: body.into(),
        }
    }
    /// Appends this frame in wire form.
    pub fn encode(&self, buf: &mut BytesMut) {
        let at = begin(buf, self.tag);
        buf.put_slice(&self.body);
        end(buf, at);
    }
}

/// Splits the next complete frame off `buf`. `Ok(None)` means more bytes are needed (nothing
/// is consumed; once the header is there, room for the rest of the frame is reserved so that
/// it arrives without reallocation). The length word (which counts itself) must be at least
/// 4 and at most `max_len`; otherwise the stream is unusable and an error is returned. The
/// body is split off `buf` without a copy.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(&[tag, l0, l1, l2, l3]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([l0, l1, l2, l3]);
    // The length counts itself (4 bytes) but not the tag.
    let body_len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= max_len)
        .and_then(|l| l.checked_sub(4));
    let Some(body_len) = body_len else {
        return Err(ProtocolError::InvalidLength {
            tag,
            len: len.into(),
        });
    };
    let rest = buf.len().saturating_sub(5);
    if rest < body_len {
        buf.reserve(body_len.saturating_sub(rest));
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Frame { tag, body }))
}

/// Starts a frame: writes the tag and a placeholder length; returns where the length is.
pub(crate) fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Patches the length word written by [`begin`] at `at`. Bodies are far below PostgreSQL's
/// 1 GB message limit in walrelay; a larger one would wrap, never panic.
pub(crate) fn end(buf: &mut BytesMut, at: usize) {
    let len = (buf.len().saturating_sub(at) as u32).to_be_bytes();
    if let Some(dst) = buf.get_mut(at..at.saturating_add(4)) {
        dst.copy_from_slice(&len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testutil::XorShift;

    #[test]
    fn split_complete_and_partial() {
        let mut wire = BytesMut::new();
        Frame::new(b'Q', &b"SELECT 1\0"[..]).encode(&mut wire);
        Frame::new(b'X', Bytes::new()).encode(&mut wire);
        assert_eq!(&wire[..5], b"Q\0\0\0\x0d");
        let all = wire.clone();
        // Byte by byte: None until complete, then exactly one frame.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(f) = split_frame(&mut buf, 1000).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::new(b'Q', &b"SELECT 1\0"[..]),
                Frame::new(b'X', Bytes::new())
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths() {
        for (bytes, max) in [
            (&b"Q\0\0\0\x03"[..], 100),
            (b"Q\xff\xff\xff\xff", 100),
            (b"Q\0\0\0\x65", 100),
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(matches!(
                split_frame(&mut buf, max),
                Err(ProtocolError::InvalidLength { tag: b'Q', .. })
            ));
        }
        let mut buf = BytesMut::from(&b"Q\0\0\0\x64"[..]);
        assert_eq!(split_frame(&mut buf, 100).unwrap(), None);
        assert_eq!(buf.len(), 5);
    }

    #[test]
    fn random_never_panics() {
        let mut rng = XorShift(0x5eed_f4a3);
        for _ in 0..5000 {
            let mut buf = BytesMut::from(&rng.bytes(64)[..]);
            while let Ok(Some(_)) = split_frame(&mut buf, 40) {}
        }
    }
}

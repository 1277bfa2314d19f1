//! Messages a server receives from a client: the untagged startup packet and tagged
//! frontend messages.
//!
//! Owns: decoding of StartupMessage / SSLRequest / GSSENCRequest / CancelRequest, of the
//! frontend messages a walsender handles, and of SASL initial responses. Must not: decide
//! policy (protocol version support, which messages are allowed when); the server does that.
//! A TLS ClientHello (`sslnegotiation=direct`, first byte 0x16) must be detected by the caller
//! before [`parse_startup`], which would reject it as an invalid length.

use super::frame::Frame;
use super::{take_bytes, ProtocolError, Reader};
use bytes::{Buf, Bytes, BytesMut};

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10000;
/// Request codes carried in the protocol-version field.
pub const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;
pub const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
pub const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;
/// Longest cancel key accepted (protocol 3.2 allows up to 256 bytes).
pub const MAX_CANCEL_KEY_LENGTH: usize = 256;

/// The first packet on a connection (or after an `N` answer to SSL/GSS requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: Bytes,
    },
    /// Any other version code; the caller checks `major`/`minor`.
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Splits and decodes a startup-phase packet (`length i32, code i32, body`).
/// `Ok(None)` means more bytes are needed.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    let Some(&[l0, l1, l2, l3]) = buf.get(..4) else {
        return Ok(None);
    };
    let raw = i32::from_be_bytes([l0, l1, l2, l3]);
    // The length counts itself; at least the 4-byte code follows.
    let body_len = usize::try_from(raw)
        .ok()
        .filter(|l| (8..=MAX_STARTUP_PACKET_LENGTH).contains(l))
        .and_then(|l| l.checked_sub(4));
    let Some(body_len) = body_len else {
        return Err(ProtocolError::InvalidStartupLength(raw.into()));
    };
    if buf.len().saturating_sub(4) < body_len {
        return Ok(None);
    }
    buf.advance(4);
    let packet = buf.split_to(body_len).freeze();
    decode_startup(&packet).map(Some)
}

fn decode_startup(packet: &Bytes) -> Result<StartupPacket, ProtocolError> {
    let mut r = Reader::new(packet);
    let code = r.u32()?;
    match code {
        // PostgreSQL reads and ignores any extra bytes of these two requests.
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            if r.remaining() > MAX_CANCEL_KEY_LENGTH {
                return Err(ProtocolError::Malformed(
                    "invalid length of cancel request packet".into(),
                ));
            }
            let n = r.remaining();
            let key = take_bytes(&mut r, packet, n)?;
            Ok(StartupPacket::Cancel { pid, key })
        }
        _ => {
            let mut params = Vec::new();
            loop {
                let name = r.cstr().map_err(|_| layout_error())?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr().map_err(|_| layout_error())?;
                params.push((name.to_string(), value.to_string()));
            }
            r.finish().map_err(|_| layout_error())?;
            Ok(StartupPacket::Startup {
                major: (code >> 16) as u16,
                minor: code as u16,
                params,
            })
        }
    }
}

fn layout_error() -> ProtocolError {
    ProtocolError::Malformed(
        "invalid startup packet layout: expected terminator as last byte".into(),
    )
}

/// A tagged message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; the meaning depends on the
    /// authentication exchange in progress (see [`parse_password`], [`parse_sasl_initial`]).
    Password(Bytes),
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    Terminate,
    Sync,
    Flush,
    /// Parse, Bind, Execute, Describe or Close (`P B E D C`), refused by a walsender.
    Extended(u8),
    Unknown(u8),
}

impl FrontendMessage {
    pub fn decode(frame: Frame) -> Result<FrontendMessage, ProtocolError> {
        let mut r = Reader::new(&frame.body);
        let msg = match frame.tag {
            b'Q' => FrontendMessage::Query(r.cstr()?.to_string()),
            b'f' => FrontendMessage::CopyFail(r.cstr()?.to_string()),
            b'p' => return Ok(FrontendMessage::Password(frame.body)),
            b'd' => return Ok(FrontendMessage::CopyData(frame.body)),
            b'c' => FrontendMessage::CopyDone,
            b'X' => FrontendMessage::Terminate,
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            t @ (b'P' | b'B' | b'E' | b'D' | b'C') => return Ok(FrontendMessage::Extended(t)),
            t => return Ok(FrontendMessage::Unknown(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// The body of a cleartext or MD5 PasswordMessage: one C string filling the message.
pub fn parse_password(body: &[u8]) -> Result<String, ProtocolError> {
    let mut r = Reader::new(body);
    let s = r.cstr()?.to_string();
    r.finish()?;
    Ok(s)
}

/// SASLInitialResponse: mechanism name, then `i32` length (-1: no data) and the data.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(String, Bytes), ProtocolError> {
    let mut r = Reader::new(body);
    let mechanism = r.cstr()?.to_string();
    let len = r.i32()?;
    let data = match len {
        -1 => Bytes::new(),
        n if n >= 0 => Bytes::copy_from_slice(r.take(n as usize)?),
        _ => {
            return Err(ProtocolError::Malformed(
                "invalid SASL response length".into(),
            ))
        }
    };
    r.finish()?;
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testutil::XorShift;
    use bytes::BufMut;

    fn packet(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8 + body.len() as i32);
        b.put_u32(code);
        b.put_slice(body);
        b
    }

    #[test]
    fn startup_message() {
        let mut b = packet(196608, b"user\0bob\0replication\0true\0\0");
        let whole = b.clone();
        assert_eq!(
            parse_startup(&mut b).unwrap(),
            Some(StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "bob".into()),
                    ("replication".into(), "true".into())
                ]
            })
        );
        assert!(b.is_empty());
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(parse_startup(&mut part).unwrap(), None);
            assert_eq!(part.len(), cut);
        }
        // Version 3.2 with no parameters is still well formed.
        let mut b = packet((3 << 16) | 2, b"\0");
        assert!(matches!(
            parse_startup(&mut b).unwrap(),
            Some(StartupPacket::Startup {
                major: 3,
                minor: 2,
                ..
            })
        ));
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            parse_startup(&mut packet(SSL_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse_startup(&mut packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            parse_startup(&mut packet(
                CANCEL_REQUEST_CODE,
                b"\0\0\0\x07\x01\x02\x03\x04"
            ))
            .unwrap(),
            Some(StartupPacket::Cancel {
                pid: 7,
                key: Bytes::from_static(&[1, 2, 3, 4])
            })
        );
        let long = vec![0u8; 4 + 257];
        assert!(parse_startup(&mut packet(CANCEL_REQUEST_CODE, &long)).is_err());
        assert!(parse_startup(&mut packet(CANCEL_REQUEST_CODE, b"\0\0")).is_err());
    }

    #[test]
    fn bad_startup() {
        for body in [
            &b"user\0bob\0"[..], // no terminator
            b"user\0bob",        // unterminated value
            b"user\0bob\0\0x",   // bytes after terminator
            b"",                 // nothing at all
            b"us\xffer\0bob\0\0",
        ] {
            assert!(
                parse_startup(&mut packet(196608, body)).is_err(),
                "{body:?}"
            );
        }
        let mut b = BytesMut::from(&b"\0\0\0\x07\0\0\0\0"[..]);
        assert_eq!(
            parse_startup(&mut b),
            Err(ProtocolError::InvalidStartupLength(7))
        );
        let mut b = BytesMut::from(&b"\0\0\x27\x11"[..]);
        assert!(parse_startup(&mut b).is_err());
        let mut b = BytesMut::from(&b"\x16\x03\x01\x02\x00"[..]);
        assert!(parse_startup(&mut b).is_err());
    }

    #[test]
    fn frontend_messages() {
        let d = |tag: u8, body: &'static [u8]| FrontendMessage::decode(Frame::new(tag, body));
        assert_eq!(
            d(b'Q', b"IDENTIFY_SYSTEM\0").unwrap(),
            FrontendMessage::Query("IDENTIFY_SYSTEM".into())
        );
        assert_eq!(
            d(b'f', b"oops\0").unwrap(),
            FrontendMessage::CopyFail("oops".into())
        );
        assert_eq!(
            d(b'd', b"r123").unwrap(),
            FrontendMessage::CopyData(Bytes::from_static(b"r123"))
        );
        assert_eq!(
            d(b'p', b"pw\0").unwrap(),
            FrontendMessage::Password(Bytes::from_static(b"pw\0"))
        );
        assert_eq!(d(b'c', b"").unwrap(), FrontendMessage::CopyDone);
        assert_eq!(d(b'X', b"").unwrap(), FrontendMessage::Terminate);
        assert_eq!(d(b'S', b"").unwrap(), FrontendMessage::Sync);
        assert_eq!(d(b'H', b"").unwrap(), FrontendMessage::Flush);
        for t in *b"PBEDC" {
            assert_eq!(d(t, b"x").unwrap(), FrontendMessage::Extended(t));
        }
        assert_eq!(d(b'F', b"").unwrap(), FrontendMessage::Unknown(b'F'));
        assert_eq!(d(b'Q', b"SELECT"), Err(ProtocolError::InvalidString));
        assert_eq!(d(b'Q', b"a\0b\0"), Err(ProtocolError::TrailingData));
        assert_eq!(d(b'Q', b"\xc3\x28\0"), Err(ProtocolError::InvalidString));
        assert_eq!(d(b'X', b"x"), Err(ProtocolError::TrailingData));
    }

    #[test]
    fn passwords_and_sasl() {
        assert_eq!(parse_password(b"secret\0").unwrap(), "secret");
        assert!(parse_password(b"secret").is_err());
        let (m, data) = parse_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x03n,,").unwrap();
        assert_eq!((m.as_str(), &data[..]), ("SCRAM-SHA-256", &b"n,,"[..]));
        let (_, data) = parse_sasl_initial(b"X\0\xff\xff\xff\xff").unwrap();
        assert!(data.is_empty());
        assert!(parse_sasl_initial(b"X\0\0\0\0\x04n,,").is_err());
        assert!(parse_sasl_initial(b"X\0\xff\xff\xff\xfe").is_err());
        assert!(parse_sasl_initial(b"X\0\0\0\0\x01ab").is_err());
    }

    #[test]
    fn random_never_panics() {
        let mut rng = XorShift(0xf00d);
        for i in 0..20000u32 {
            let body = rng.bytes(48);
            let tag = b"QfpdcXSHPBEDCFz"[i as usize % 15];
            let _ = FrontendMessage::decode(Frame::new(tag, body.clone()));
            let _ = parse_password(&body);
            let _ = parse_sasl_initial(&body);
            let mut b = BytesMut::new();
            b.put_i32(4 + body.len() as i32);
            b.put_slice(&body);
            let _ = parse_startup(&mut b);
            let _ = parse_startup(&mut BytesMut::from(&body[..]));
        }
    }
}

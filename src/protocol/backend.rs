//! Messages a server sends: decoded by the upstream client, encoded by the walsender.
//!
//! Owns: [`BackendMessage`] decoding, [`ErrorFields`] (with libpq-style `Display`) and the
//! encoders that append whole frames to a `BytesMut`. Must not: decide what to send when
//! (that is the server's and the client's logic) or do IO. postgres-protocol's decoder lacks
//! CopyBothResponse and NegotiateProtocolVersion, hence this module.

use super::frame::{begin, end, Frame};
use super::{put_cstr, take_bytes, ProtocolError, Reader};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

pub const BOOL_OID: u32 = 16;
pub const INT8_OID: u32 = 20;
pub const INT2_OID: u32 = 21;
pub const INT4_OID: u32 = 23;
pub const TEXT_OID: u32 = 25;
pub const OID_OID: u32 = 26;

/// Authentication request codes (`R` messages).
pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSS, SSPI and anything newer.
    Other(u32),
}

/// A column of a RowDescription (walrelay only needs name and type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub type_oid: u32,
}

impl Field {
    pub fn new(name: impl Into<String>, type_oid: u32) -> Field {
        Field {
            name: name.into(),
            type_oid,
        }
    }
}

/// The fields of an ErrorResponse / NoticeResponse that walrelay uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// When decoded: the non-localised severity (`V`, PG 9.6+) when present, else the
    /// localised one (`S`), so that `ERROR` / `FATAL` can be compared whatever `lc_messages`.
    pub severity: String,
    /// SQLSTATE (`C`).
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    /// An `ERROR` with this SQLSTATE and message.
    pub fn error(code: &str, message: impl Into<String>) -> ErrorFields {
        ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
}

impl fmt::Display for ErrorFields {
    /// Like libpq's default verbosity: `ERROR:  message`, then `DETAIL:  ` / `HINT:  ` lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:  {}", self.severity, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL:  {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT:  {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(AuthRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        pid: i32,
        key: Bytes,
    },
    ReadyForQuery(u8),
    RowDescription(Vec<Field>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete(String),
    ErrorResponse(ErrorFields),
    NoticeResponse(ErrorFields),
    CopyBothResponse,
    CopyOutResponse,
    CopyInResponse,
    CopyData(Bytes),
    CopyDone,
    EmptyQueryResponse,
    NegotiateProtocolVersion {
        newest_minor: u32,
        unsupported: Vec<String>,
    },
    Unknown(u8),
}

impl BackendMessage {
    /// Decodes one frame. Variable-length bodies are sliced from the frame, not copied.
    /// Texts are taken lossily (invalid UTF-8 replaced): a server writes them in its own
    /// encoding, and a client must not drop a session over a message text.
    pub fn decode(frame: Frame) -> Result<BackendMessage, ProtocolError> {
        let body = &frame.body;
        let mut r = Reader::new(body);
        let msg = match frame.tag {
            b'R' => BackendMessage::Authentication(decode_auth(&mut r, body)?),
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr_lossy()?,
                value: r.cstr_lossy()?,
            },
            b'K' => {
                let pid = r.i32()?;
                let n = r.remaining();
                BackendMessage::BackendKeyData {
                    pid,
                    key: take_bytes(&mut r, body, n)?,
                }
            }
            b'Z' => BackendMessage::ReadyForQuery(r.u8()?),
            b'T' => {
                let n = count(&mut r)?;
                // Each field needs at least 19 bytes: never pre-allocate beyond the body.
                let mut fields = Vec::with_capacity(n.min(r.remaining() / 19));
                for _ in 0..n {
                    let name = r.cstr_lossy()?;
                    r.take(6)?; // table oid, column number
                    let type_oid = r.u32()?;
                    r.take(8)?; // type length, type modifier, format
                    fields.push(Field { name, type_oid });
                }
                BackendMessage::RowDescription(fields)
            }
            b'D' => {
                let n = count(&mut r)?;
                let mut cols = Vec::with_capacity(n.min(r.remaining() / 4));
                for _ in 0..n {
                    cols.push(match r.i32()? {
                        -1 => None,
                        len if len >= 0 => Some(take_bytes(&mut r, body, len as usize)?),
                        _ => return Err(ProtocolError::Malformed("invalid column length".into())),
                    });
                }
                BackendMessage::DataRow(cols)
            }
            b'C' => BackendMessage::CommandComplete(r.cstr_lossy()?),
            b'E' => BackendMessage::ErrorResponse(decode_fields(&mut r)?),
            b'N' => BackendMessage::NoticeResponse(decode_fields(&mut r)?),
            b'W' | b'H' | b'G' => {
                r.u8()?; // overall format
                let n = count(&mut r)?;
                r.take(n.checked_mul(2).ok_or(ProtocolError::Truncated)?)?;
                match frame.tag {
                    b'W' => BackendMessage::CopyBothResponse,
                    b'H' => BackendMessage::CopyOutResponse,
                    _ => BackendMessage::CopyInResponse,
                }
            }
            b'd' => return Ok(BackendMessage::CopyData(frame.body)),
            b'c' => BackendMessage::CopyDone,
            b'I' => BackendMessage::EmptyQueryResponse,
            b'v' => {
                let newest_minor = r.u32()?;
                let n = r.u32()?;
                let mut unsupported = Vec::new();
                for _ in 0..n {
                    unsupported.push(r.cstr_lossy()?);
                }
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unsupported,
                }
            }
            t => return Ok(BackendMessage::Unknown(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// An `i16` element count, which must not be negative.
fn count(r: &mut Reader<'_>) -> Result<usize, ProtocolError> {
    usize::try_from(r.i16()?).map_err(|_| ProtocolError::Malformed("negative field count".into()))
}

fn decode_auth(r: &mut Reader<'_>, body: &Bytes) -> Result<AuthRequest, ProtocolError> {
    Ok(match r.i32()? {
        AUTH_OK => AuthRequest::Ok,
        AUTH_CLEARTEXT => AuthRequest::Cleartext,
        AUTH_MD5 => AuthRequest::Md5 { salt: r.array()? },
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr_lossy()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        code @ (AUTH_SASL_CONTINUE | AUTH_SASL_FINAL) => {
            let n = r.remaining();
            let data = take_bytes(r, body, n)?;
            if code == AUTH_SASL_CONTINUE {
                AuthRequest::SaslContinue(data)
            } else {
                AuthRequest::SaslFinal(data)
            }
        }
        other => {
            r.rest(); // GSS/SSPI continuation data is not interpreted
            AuthRequest::Other(other as u32)
        }
    })
}

fn decode_fields(r: &mut Reader<'_>) -> Result<ErrorFields, ProtocolError> {
    let mut f = ErrorFields::default();
    let mut localized = String::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        let value = r.cstr_lossy()?;
        match code {
            b'S' => localized = value,
            b'V' => f.severity = value,
            b'C' => f.code = value,
            b'M' => f.message = value,
            b'D' => f.detail = Some(value),
            b'H' => f.hint = Some(value),
            _ => {}
        }
    }
    if f.severity.is_empty() {
        f.severity = localized;
    }
    Ok(f)
}

fn auth(buf: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(code);
    buf.put_slice(data);
    end(buf, at);
}

pub fn auth_ok(buf: &mut BytesMut) {
    auth(buf, AUTH_OK, &[]);
}
pub fn auth_cleartext(buf: &mut BytesMut) {
    auth(buf, AUTH_CLEARTEXT, &[]);
}
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, AUTH_MD5, &salt);
}
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, b'R');
    buf.put_i32(AUTH_SASL);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
    end(buf, at);
}
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, AUTH_SASL_CONTINUE, data);
}
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, AUTH_SASL_FINAL, data);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    end(buf, at);
}

/// `key` is 4 bytes in protocol 3.0, up to 256 in 3.2.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: &[u8]) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_slice(key);
    end(buf, at);
}

/// `status` is `b'I'` (idle), `b'T'` (in transaction) or `b'E'` (failed transaction).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    end(buf, at);
}

/// `pg_type.typlen` of the types walrelay sends (-1: variable length).
fn type_len(oid: u32) -> i16 {
    match oid {
        BOOL_OID => 1,
        INT2_OID => 2,
        INT4_OID | OID_OID => 4,
        INT8_OID => 8,
        _ => -1,
    }
}

/// Text-format columns without a source table, like the walsender's result sets.
pub fn row_description(buf: &mut BytesMut, fields: &[Field]) {
    let at = begin(buf, b'T');
    buf.put_i16(fields.len() as i16);
    for f in fields {
        put_cstr(buf, &f.name);
        buf.put_u32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_u32(f.type_oid);
        buf.put_i16(type_len(f.type_oid));
        buf.put_i32(-1); // type modifier
        buf.put_i16(0); // text format
    }
    end(buf, at);
}

pub fn data_row(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    let at = begin(buf, b'D');
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v);
            }
            None => buf.put_i32(-1),
        }
    }
    end(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag);
    end(buf, at);
}

fn fields(buf: &mut BytesMut, tag: u8, e: &ErrorFields) {
    let at = begin(buf, tag);
    for (code, value) in [
        (b'S', Some(&e.severity)),
        (b'V', Some(&e.severity)),
        (b'C', Some(&e.code)),
        (b'M', Some(&e.message)),
        (b'D', e.detail.as_ref()),
        (b'H', e.hint.as_ref()),
    ] {
        if let Some(v) = value {
            buf.put_u8(code);
            put_cstr(buf, v);
        }
    }
    buf.put_u8(0);
    end(buf, at);
}

pub fn error_response(buf: &mut BytesMut, e: &ErrorFields) {
    fields(buf, b'E', e);
}
pub fn notice_response(buf: &mut BytesMut, e: &ErrorFields) {
    fields(buf, b'N', e);
}

/// CopyBothResponse as the walsender sends it: overall format 0 (text), zero columns.
pub fn copy_both_response(buf: &mut BytesMut) {
    let at = begin(buf, b'W');
    buf.put_u8(0);
    buf.put_i16(0);
    end(buf, at);
}

pub fn copy_data(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, b'd');
    buf.put_slice(data);
    end(buf, at);
}

pub fn copy_done(buf: &mut BytesMut) {
    let at = begin(buf, b'c');
    end(buf, at);
}

pub fn empty_query_response(buf: &mut BytesMut) {
    let at = begin(buf, b'I');
    end(buf, at);
}

pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: u32, unsupported: &[String]) {
    let at = begin(buf, b'v');
    buf.put_u32(newest_minor);
    buf.put_u32(unsupported.len() as u32);
    for o in unsupported {
        put_cstr(buf, o);
    }
    end(buf, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_frame;
    use crate::protocol::testutil::XorShift;

    /// Encodes with `f`, splits exactly one frame and decodes it.
    fn rt(f: impl FnOnce(&mut BytesMut)) -> BackendMessage {
        let mut buf = BytesMut::new();
        f(&mut buf);
        let frame = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty());
        BackendMessage::decode(frame).unwrap()
    }

    #[test]
    fn exact_bytes() {
        let mut b = BytesMut::new();
        auth_md5(&mut b, *b"salt");
        assert_eq!(&b[..], b"R\0\0\0\x0c\0\0\0\x05salt");
        b.clear();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
        b.clear();
        copy_both_response(&mut b);
        assert_eq!(&b[..], b"W\0\0\0\x07\0\0\0");
        b.clear();
        auth_sasl(&mut b, &["SCRAM-SHA-256"]);
        assert_eq!(&b[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        b.clear();
        data_row(&mut b, &[Some(b"ab"), None]);
        assert_eq!(&b[..], b"D\0\0\0\x10\0\x02\0\0\0\x02ab\xff\xff\xff\xff");
        b.clear();
        row_description(&mut b, &[Field::new("timeline", INT4_OID)]);
        assert_eq!(
            &b[..],
            b"T\0\0\0\x21\0\x01timeline\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"
        );
    }

    #[test]
    fn round_trips() {
        use BackendMessage as M;
        assert_eq!(rt(auth_ok), M::Authentication(AuthRequest::Ok));
        assert_eq!(
            rt(auth_cleartext),
            M::Authentication(AuthRequest::Cleartext)
        );
        assert_eq!(
            rt(|b| auth_md5(b, [1, 2, 3, 4])),
            M::Authentication(AuthRequest::Md5 { salt: [1, 2, 3, 4] })
        );
        assert_eq!(
            rt(|b| auth_sasl(b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])),
            M::Authentication(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            })
        );
        assert_eq!(
            rt(|b| auth_sasl_continue(b, b"r=x,s=y,i=4096")),
            M::Authentication(AuthRequest::SaslContinue(Bytes::from_static(
                b"r=x,s=y,i=4096"
            )))
        );
        assert_eq!(
            rt(|b| auth_sasl_final(b, b"v=z")),
            M::Authentication(AuthRequest::SaslFinal(Bytes::from_static(b"v=z")))
        );
        assert_eq!(
            rt(|b| auth(b, 7, b"")),
            M::Authentication(AuthRequest::Other(7))
        );
        assert_eq!(
            rt(|b| parameter_status(b, "server_version", "15.18")),
            M::ParameterStatus {
                name: "server_version".into(),
                value: "15.18".into()
            }
        );
        assert_eq!(
            rt(|b| backend_key_data(b, 42, &[9; 32])),
            M::BackendKeyData {
                pid: 42,
                key: Bytes::from(vec![9; 32])
            }
        );
        assert_eq!(rt(|b| ready_for_query(b, b'T')), M::ReadyForQuery(b'T'));
        let fields = vec![
            Field::new("systemid", TEXT_OID),
            Field::new("timeline", INT8_OID),
        ];
        assert_eq!(
            rt(|b| row_description(b, &fields)),
            M::RowDescription(fields.clone())
        );
        assert_eq!(
            rt(|b| data_row(b, &[Some(b"1"), None, Some(b"")])),
            M::DataRow(vec![
                Some(Bytes::from_static(b"1")),
                None,
                Some(Bytes::new())
            ])
        );
        assert_eq!(
            rt(|b| command_complete(b, "START_REPLICATION")),
            M::CommandComplete("START_REPLICATION".into())
        );
        let e = ErrorFields {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"bob\"".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        };
        assert_eq!(rt(|b| error_response(b, &e)), M::ErrorResponse(e.clone()));
        let n = ErrorFields::error("00000", "note");
        assert_eq!(rt(|b| notice_response(b, &n)), M::NoticeResponse(n));
        assert_eq!(rt(copy_both_response), M::CopyBothResponse);
        assert_eq!(
            rt(|b| copy_data(b, b"wxyz")),
            M::CopyData(Bytes::from_static(b"wxyz"))
        );
        assert_eq!(rt(copy_done), M::CopyDone);
        assert_eq!(rt(empty_query_response), M::EmptyQueryResponse);
        let opts = vec!["_pq_.foo".to_string()];
        assert_eq!(
            rt(|b| negotiate_protocol_version(b, 0, &opts)),
            M::NegotiateProtocolVersion {
                newest_minor: 0,
                unsupported: opts.clone()
            }
        );
        assert_eq!(
            BackendMessage::decode(Frame::new(b'H', &b"\0\0\x01\0\0"[..])).unwrap(),
            M::CopyOutResponse
        );
        assert_eq!(
            BackendMessage::decode(Frame::new(b'G', &b"\0\0\0"[..])).unwrap(),
            M::CopyInResponse
        );
        assert_eq!(
            BackendMessage::decode(Frame::new(b'A', &b"x"[..])).unwrap(),
            M::Unknown(b'A')
        );
    }

    #[test]
    fn error_display() {
        let mut e = ErrorFields::error(
            "XX000",
            "requested timeline 5 is not in this server's history",
        );
        assert_eq!(
            e.to_string(),
            "ERROR:  requested timeline 5 is not in this server's history"
        );
        e.detail = Some("This server's history forked from timeline 1 at 0/333D960.".into());
        assert_eq!(
            e.to_string(),
            "ERROR:  requested timeline 5 is not in this server's history\nDETAIL:  This server's history forked from timeline 1 at 0/333D960."
        );
        // Only the non-localized severity present.
        let m = BackendMessage::decode(Frame::new(b'E', &b"VFATAL\0Mx\0\0"[..])).unwrap();
        assert_eq!(
            m,
            BackendMessage::ErrorResponse(ErrorFields {
                severity: "FATAL".into(),
                message: "x".into(),
                ..Default::default()
            })
        );
        // Both present (lc_messages=fr): the non-localized one wins, in either order; only
        // the localized one: that one. Invalid UTF-8 in a text is replaced, not refused.
        for body in [
            &b"SERREUR\0VERROR\0C42704\0Mn\xe9\0DD\0Hh\0\0"[..],
            b"VERROR\0SERREUR\0C42704\0Mn\xe9\0DD\0Hh\0\0",
        ] {
            let BackendMessage::NoticeResponse(e) =
                BackendMessage::decode(Frame::new(b'N', body)).unwrap()
            else {
                panic!()
            };
            assert_eq!(e.to_string(), "ERROR:  n\u{fffd}\nDETAIL:  D\nHINT:  h");
            assert_eq!(e.code, "42704");
        }
        let m = BackendMessage::decode(Frame::new(b'E', &b"SERREUR\0Mx\0\0"[..])).unwrap();
        assert!(matches!(m, BackendMessage::ErrorResponse(e) if e.severity == "ERREUR"));
        assert_eq!(
            BackendMessage::decode(Frame::new(b'S', &b"a\0\xff\0"[..])).unwrap(),
            BackendMessage::ParameterStatus {
                name: "a".into(),
                value: "\u{fffd}".into()
            }
        );
    }

    #[test]
    fn malformed() {
        let d = |tag: u8, body: &'static [u8]| BackendMessage::decode(Frame::new(tag, body));
        for (tag, body) in [
            (b'R', &b"\0\0"[..]),
            (b'R', b"\0\0\0\0x"),
            (b'R', b"\0\0\0\x05sal"),
            (b'R', b"\0\0\0\x0aSCRAM"),
            (b'R', b"\0\0\0\x0aSCRAM\0"),
            (b'S', b"a\0b"),
            (b'K', b"\0\0\0"),
            (b'Z', b""),
            (b'Z', b"II"),
            (b'T', b"\xff\xff"),
            (b'T', b"\0\x01a\0\0\0"),
            (b'T', b"\x7f\xff"),
            (b'D', b"\0\x01\0\0\0\x05ab"),
            (b'D', b"\0\x01\xff\xff\xff\xfe"),
            (b'D', b"\0\x02\xff\xff\xff\xff"),
            (b'C', b"COPY 0"),
            (b'E', b"SERROR\0"),
            (b'E', b"SERR"),
            (b'W', b"\0\0\x01"),
            (b'W', b"\0\xff\xff"),
            (b'c', b"x"),
            (b'v', b"\0\0\0\0\0\0\0\x02a\0"),
            (b'v', b"\0\0\0\0\xff\xff\xff\xff"),
        ] {
            assert!(d(tag, body).is_err(), "{} {body:?}", tag as char);
        }
    }

    #[test]
    fn random_never_panics() {
        let mut rng = XorShift(0xbacc_e4d0);
        let tags = b"RSKZTDCENWHGdcIvA";
        for i in 0..30000usize {
            let tag = tags[i % tags.len()];
            let mut body = rng.bytes(40);
            // Give the type-specific paths a plausible prefix half the time.
            if tag == b'R' && rng.below(2) == 0 {
                let code = [0u8, 3, 5, 10, 11, 12, 7][rng.below(7) as usize];
                body.splice(0..0, [0, 0, 0, code]);
            }
            let _ = BackendMessage::decode(Frame::new(tag, body));
        }
    }
}

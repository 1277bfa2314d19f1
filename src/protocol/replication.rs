//! CopyData payloads of physical streaming replication (the CopyBoth phase).
//!
//! Owns: server → client `w` XLogData and `k` keepalive, client → server `r` status update and
//! `h` hot standby feedback; decoders for both directions and encoders that write whole `d`
//! frames. All integers are big-endian; times are microseconds since 2000-01-01 UTC.
//! Must not: interpret WAL bytes (see `crate::wal`) or keep any state.

use super::frame::{begin, end};
use super::{ProtocolError, Reader};
use crate::lsn::Lsn;
use bytes::{BufMut, Bytes, BytesMut};

/// `w` + dataStart + walEnd + sendTime.
pub const XLOGDATA_HEADER_LEN: usize = 25;
/// `k` + walEnd + sendTime + replyRequested.
pub const KEEPALIVE_LEN: usize = 18;
/// `r` + write + flush + apply + sendTime + replyRequested.
pub const STATUS_UPDATE_LEN: usize = 34;
/// `h` + sendTime + xmin + xmin epoch + catalog_xmin + catalog_xmin epoch.
pub const HS_FEEDBACK_LEN: usize = 25;

/// A CopyData payload sent by the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCopyMessage {
    XLogData {
        data_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

impl ServerCopyMessage {
    /// Decodes a CopyData body; `data` of XLogData is a slice of `payload` (no copy).
    /// A keepalive must be exactly 18 bytes, like the walreceiver demands. Error texts follow
    /// pg_receivewal's (`receivelog.c`).
    pub fn decode(payload: &Bytes) -> Result<ServerCopyMessage, ProtocolError> {
        let mut r = Reader::new(payload);
        let Ok(kind) = r.u8() else {
            return Err(ProtocolError::Malformed("empty CopyData message".into()));
        };
        match kind {
            b'w' => {
                if payload.len() < XLOGDATA_HEADER_LEN {
                    return Err(ProtocolError::Malformed(format!(
                        "streaming header too small: {}",
                        payload.len()
                    )));
                }
                let data_start = Lsn(r.u64()?);
                let wal_end = Lsn(r.u64()?);
                let send_time = r.i64()?;
                Ok(ServerCopyMessage::XLogData {
                    data_start,
                    wal_end,
                    send_time,
                    data: payload.slice(XLOGDATA_HEADER_LEN..),
                })
            }
            b'k' => {
                if payload.len() != KEEPALIVE_LEN {
                    return Err(ProtocolError::Malformed(format!(
                        "invalid keepalive message length {}",
                        payload.len()
                    )));
                }
                Ok(ServerCopyMessage::Keepalive {
                    wal_end: Lsn(r.u64()?),
                    send_time: r.i64()?,
                    reply_requested: r.u8()? != 0,
                })
            }
            t => Err(ProtocolError::Malformed(format!(
                "unrecognized streaming header: \"{}\"",
                t.escape_ascii()
            ))),
        }
    }
}

/// A CopyData payload sent by a standby or pg_receivewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCopyMessage {
    StatusUpdate {
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
    HotStandbyFeedback {
        send_time: i64,
        xmin: u32,
        xmin_epoch: u32,
        catalog_xmin: u32,
        catalog_xmin_epoch: u32,
    },
}

impl ClientCopyMessage {
    /// Decodes a CopyData body; lengths must be exactly 34 (`r`) and 25 (`h`).
    pub fn decode(payload: &[u8]) -> Result<ClientCopyMessage, ProtocolError> {
        let mut r = Reader::new(payload);
        let tag = r.u8()?;
        let want = match tag {
            b'r' => STATUS_UPDATE_LEN,
            b'h' => HS_FEEDBACK_LEN,
            t => {
                return Err(ProtocolError::Malformed(format!(
                    "unexpected message type \"{}\"",
                    char::from(t).escape_default()
                )))
            }
        };
        if payload.len() != want {
            return Err(ProtocolError::Malformed(format!(
                "invalid standby message length {} for type \"{}\"",
                payload.len(),
                char::from(tag)
            )));
        }
        Ok(if tag == b'r' {
            ClientCopyMessage::StatusUpdate {
                write: Lsn(r.u64()?),
                flush: Lsn(r.u64()?),
                apply: Lsn(r.u64()?),
                send_time: r.i64()?,
                reply_requested: r.u8()? != 0,
            }
        } else {
            ClientCopyMessage::HotStandbyFeedback {
                send_time: r.i64()?,
                xmin: r.u32()?,
                xmin_epoch: r.u32()?,
                catalog_xmin: r.u32()?,
                catalog_xmin_epoch: r.u32()?,
            }
        })
    }
}

/// Writes a whole `d` frame holding a keepalive.
pub fn encode_keepalive(buf: &mut BytesMut, wal_end: Lsn, send_time: i64, reply_requested: bool) {
    let at = begin(buf, b'd');
    buf.put_u8(b'k');
    buf.put_u64(wal_end.0);
    buf.put_i64(send_time);
    buf.put_u8(reply_requested.into());
    end(buf, at);
}

/// Writes the `d` frame header and the `w` header for `data_len` WAL bytes, which the caller
/// sends right after (so the WAL `Bytes` need not be copied into `buf`).
pub fn encode_xlogdata_header(
    buf: &mut BytesMut,
    data_start: Lsn,
    wal_end: Lsn,
    send_time: i64,
    data_len: usize,
) {
    buf.put_u8(b'd');
    // data_len is at most a MAX_SEND chunk; saturate rather than wrap if a caller erred.
    let len = data_len
        .saturating_add(4 + XLOGDATA_HEADER_LEN)
        .try_into()
        .unwrap_or(u32::MAX);
    buf.put_u32(len);
    buf.put_u8(b'w');
    buf.put_u64(data_start.0);
    buf.put_u64(wal_end.0);
    buf.put_i64(send_time);
}

/// Writes a whole `d` frame holding a standby status update.
pub fn encode_status_update(
    buf: &mut BytesMut,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    send_time: i64,
    reply_requested: bool,
) {
    let at = begin(buf, b'd');
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(send_time);
    buf.put_u8(reply_requested.into());
    end(buf, at);
}

/// Writes a whole `d` frame holding hot standby feedback.
pub fn encode_hs_feedback(
    buf: &mut BytesMut,
    send_time: i64,
    xmin: u32,
    xmin_epoch: u32,
    catalog_xmin: u32,
    catalog_xmin_epoch: u32,
) {
    let at = begin(buf, b'd');
    buf.put_u8(b'h');
    buf.put_i64(send_time);
    buf.put_u32(xmin);
    buf.put_u32(xmin_epoch);
    buf.put_u32(catalog_xmin);
    buf.put_u32(catalog_xmin_epoch);
    end(buf, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_frame;
    use crate::protocol::testutil::XorShift;

    /// Splits the single `d` frame in `buf` and returns its payload.
    fn payload(mut buf: BytesMut) -> Bytes {
        let f = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(f.tag, b'd');
        f.body
    }

    #[test]
    fn keepalive_layout() {
        let mut buf = BytesMut::new();
        encode_keepalive(&mut buf, Lsn(0x1_0300_0000), 0x0102_0304_0506_0708, true);
        assert_eq!(
            &buf[..],
            b"d\0\0\0\x16k\0\0\0\x01\x03\0\0\0\x01\x02\x03\x04\x05\x06\x07\x08\x01"
        );
        let p = payload(buf);
        assert_eq!(p.len(), KEEPALIVE_LEN);
        assert_eq!(
            ServerCopyMessage::decode(&p).unwrap(),
            ServerCopyMessage::Keepalive {
                wal_end: Lsn(0x1_0300_0000),
                send_time: 0x0102_0304_0506_0708,
                reply_requested: true
            }
        );
        // One byte more or less is refused.
        let mut long = p.to_vec();
        long.push(0);
        assert_eq!(
            ServerCopyMessage::decode(&Bytes::from(long))
                .unwrap_err()
                .to_string(),
            "invalid keepalive message length 19"
        );
        assert!(ServerCopyMessage::decode(&p.slice(..17)).is_err());
    }

    #[test]
    fn xlogdata_layout_and_zero_copy() {
        let wal = Bytes::from_static(b"WALBYTES");
        let mut buf = BytesMut::new();
        encode_xlogdata_header(&mut buf, Lsn(0x301_E570), Lsn(0x400_0000), -5, wal.len());
        assert_eq!(buf.len(), 5 + XLOGDATA_HEADER_LEN);
        assert_eq!(
            &buf[..],
            b"d\0\0\0\x25w\0\0\0\0\x03\x01\xe5\x70\0\0\0\0\x04\0\0\0\xff\xff\xff\xff\xff\xff\xff\xfb"
        );
        buf.extend_from_slice(&wal);
        let p = payload(buf);
        let m = ServerCopyMessage::decode(&p).unwrap();
        let ServerCopyMessage::XLogData { data, .. } = &m else {
            panic!("{m:?}")
        };
        assert_eq!(data, &wal);
        // The data is a view into the payload, not a copy.
        assert_eq!(data.as_ptr(), p[XLOGDATA_HEADER_LEN..].as_ptr());
        assert_eq!(
            m,
            ServerCopyMessage::XLogData {
                data_start: Lsn(0x301_E570),
                wal_end: Lsn(0x400_0000),
                send_time: -5,
                data: wal
            }
        );
        // Empty data is legal; a short header is not.
        let mut buf = BytesMut::new();
        encode_xlogdata_header(&mut buf, Lsn(1), Lsn(2), 3, 0);
        assert!(
            matches!(ServerCopyMessage::decode(&payload(buf.clone())), Ok(ServerCopyMessage::XLogData { data, .. }) if data.is_empty())
        );
        let err = |p: &Bytes| ServerCopyMessage::decode(p).unwrap_err().to_string();
        assert_eq!(
            err(&payload(buf).slice(..24)),
            "streaming header too small: 24"
        );
        assert_eq!(
            err(&Bytes::from_static(b"s")),
            "unrecognized streaming header: \"s\""
        );
        assert_eq!(
            err(&Bytes::from_static(b"\xe9")),
            "unrecognized streaming header: \"\\xe9\""
        );
        assert_eq!(err(&Bytes::new()), "empty CopyData message");
    }

    #[test]
    fn status_update_layout() {
        let mut buf = BytesMut::new();
        encode_status_update(&mut buf, Lsn(0x30A_0000), Lsn(0x332_DE78), Lsn(0), 7, false);
        let p = payload(buf);
        assert_eq!(p.len(), STATUS_UPDATE_LEN);
        assert_eq!(
            &p[..],
            b"r\0\0\0\0\x03\x0a\0\0\0\0\0\0\x03\x32\xde\x78\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x07\0"
        );
        assert_eq!(
            ClientCopyMessage::decode(&p).unwrap(),
            ClientCopyMessage::StatusUpdate {
                write: Lsn(0x30A_0000),
                flush: Lsn(0x332_DE78),
                apply: Lsn(0),
                send_time: 7,
                reply_requested: false
            }
        );
        assert!(ClientCopyMessage::decode(&p[..33]).is_err());
        assert!(ClientCopyMessage::decode(&[&p[..], b"x"].concat()).is_err());
    }

    #[test]
    fn hs_feedback_layout() {
        let mut buf = BytesMut::new();
        encode_hs_feedback(&mut buf, 1, 727, 0, 0, 2);
        let p = payload(buf);
        assert_eq!(p.len(), HS_FEEDBACK_LEN);
        assert_eq!(
            &p[..],
            b"h\0\0\0\0\0\0\0\x01\0\0\x02\xd7\0\0\0\0\0\0\0\0\0\0\0\x02"
        );
        assert_eq!(
            ClientCopyMessage::decode(&p).unwrap(),
            ClientCopyMessage::HotStandbyFeedback {
                send_time: 1,
                xmin: 727,
                xmin_epoch: 0,
                catalog_xmin: 0,
                catalog_xmin_epoch: 2
            }
        );
        assert!(ClientCopyMessage::decode(&p[..24]).is_err());
        assert!(ClientCopyMessage::decode(b"p").is_err());
        assert!(ClientCopyMessage::decode(b"").is_err());
    }

    #[test]
    fn random_never_panics() {
        let mut rng = XorShift(0x3a11);
        for _ in 0..30000 {
            let mut b = rng.bytes(40);
            if let Some(first) = b.first_mut() {
                *first = b"wkrhx"[rng.below(5) as usize];
            }
            let _ = ClientCopyMessage::decode(&b);
            let _ = ServerCopyMessage::decode(&Bytes::from(b));
        }
    }
}

//! Hostile input over raw TCP against the walsender: malformed and oversized startup
//! packets, random bytes, unknown and malformed commands, a start position ahead of the
//! flush position. Each gets a clear error (or a quiet close) and never disturbs a
//! pg_receivewal streaming alongside or crashes the server.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use walrelay::protocol::backend::BackendMessage;
use walrelay::protocol::frame::split_frame;

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::{ReceiveWal, Relay};

struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }
    fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }
    /// Next backend message, or None at EOF / error.
    fn recv(&mut self) -> Option<BackendMessage> {
        loop {
            if let Ok(Some(f)) = split_frame(&mut self.buf, 1 << 30) {
                return BackendMessage::decode(f).ok();
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }
    fn read_byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        self.s.read_exact(&mut b).ok().map(|_| b[0])
    }
    /// Messages up to ReadyForQuery (or the error that ends the connection).
    fn until_ready(&mut self) -> Vec<BackendMessage> {
        let mut v = Vec::new();
        while let Some(m) = self.recv() {
            let done = matches!(m, BackendMessage::ReadyForQuery(_));
            let fatal = matches!(&m, BackendMessage::ErrorResponse(e) if e.severity == "FATAL");
            v.push(m);
            if done || fatal {
                break;
            }
        }
        v
    }
    fn query(&mut self, q: &str) -> Vec<BackendMessage> {
        let mut b = BytesMut::new();
        b.put_u8(b'Q');
        b.put_i32(4 + q.len() as i32 + 1);
        b.put_slice(q.as_bytes());
        b.put_u8(0);
        self.send(&b);
        self.until_ready()
    }
}

fn startup(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(3);
    body.put_u16(minor);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut b = BytesMut::new();
    b.put_i32(4 + body.len() as i32);
    b.put_slice(&body);
    b.to_vec()
}

fn error_of(msgs: &[BackendMessage]) -> Option<(String, String, String)> {
    msgs.iter().find_map(|m| match m {
        BackendMessage::ErrorResponse(e) => {
            Some((e.severity.clone(), e.code.clone(), e.message.clone()))
        }
        _ => None,
    })
}

fn login(port: u16, minor: u16, extra: &[(&str, &str)]) -> (Raw, Vec<BackendMessage>) {
    let mut r = Raw::connect(port);
    let mut p = vec![("user", "postgres"), ("replication", "true")];
    p.extend_from_slice(extra);
    r.send(&startup(&p, minor));
    let msgs = r.until_ready();
    (r, msgs)
}

#[test]
fn server_fuzz_malformed_input() {
    let major = harness::majors()
        .first()
        .cloned()
        .unwrap_or_else(|| "15".into());
    let t = TestDir::new("srv-fuzz");
    let primary = Pg::primary(&major, &[]);
    let relay = Relay::start(&t, &primary, &[]);
    let port = relay.port;
    let recv = ReceiveWal::start(&primary, port, &t.subdir("recv"), &[]);

    // oversized startup length
    let mut r = Raw::connect(port);
    r.send(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    let e = error_of(&r.until_ready()).unwrap();
    assert_eq!(
        (e.1.as_str(), e.2.as_str()),
        ("08P01", "invalid length of startup packet")
    );
    // too short
    let mut r = Raw::connect(port);
    r.send(&[0, 0, 0, 2]);
    assert!(error_of(&r.until_ready()).is_some());
    // unsupported major version
    let mut r = Raw::connect(port);
    let mut p = startup(&[("user", "postgres")], 0);
    p[4] = 0;
    p[5] = 2;
    r.send(&p);
    let e = error_of(&r.until_ready()).unwrap();
    assert!(e.2.contains("unsupported frontend protocol 2.0"), "{e:?}");
    // SSLRequest without TLS → 'N', then GSSENCRequest → 'N', then a normal login
    let mut r = Raw::connect(port);
    r.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    assert_eq!(r.read_byte(), Some(b'N'));
    r.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    assert_eq!(r.read_byte(), Some(b'N'));
    r.send(&startup(
        &[("user", "postgres"), ("replication", "true")],
        0,
    ));
    assert!(matches!(
        r.until_ready().last(),
        Some(BackendMessage::ReadyForQuery(b'I'))
    ));
    // CancelRequest: accepted and closed
    let mut r = Raw::connect(port);
    r.send(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2]);
    assert!(r.recv().is_none());
    // protocol 3.2 + unknown _pq_ option → NegotiateProtocolVersion, then it works
    let (_r, msgs) = login(port, 2, &[("_pq_.frobnicate", "1")]);
    assert!(msgs.iter().any(|m| matches!(m,
        BackendMessage::NegotiateProtocolVersion { newest_minor: 0, unsupported } if unsupported == &["_pq_.frobnicate".to_string()])));
    assert!(matches!(
        msgs.last(),
        Some(BackendMessage::ReadyForQuery(_))
    ));
    // bad replication value, non-replication connection
    let mut r = Raw::connect(port);
    r.send(&startup(
        &[("user", "postgres"), ("replication", "maybe")],
        0,
    ));
    assert_eq!(error_of(&r.until_ready()).unwrap().1, "22023");
    let mut r = Raw::connect(port);
    r.send(&startup(&[("user", "postgres")], 0));
    let e = error_of(&r.until_ready()).unwrap();
    assert!(
        e.2.contains("only physical replication connections"),
        "{e:?}"
    );

    // commands on one session: each error leaves it usable
    let (mut s, msgs) = login(port, 0, &[("application_name", "fuzzer")]);
    assert!(msgs
        .iter()
        .any(|m| matches!(m, BackendMessage::BackendKeyData { .. })));
    let e = error_of(&s.query("FROBNICATE NOW")).unwrap();
    assert_eq!(e.1, "0A000", "{e:?}");
    let e = error_of(&s.query("start_replication physical 0/0")).unwrap();
    assert_eq!(e.1, "0A000");
    let e = error_of(&s.query("START_REPLICATION PHYSICAL 0/XYZ")).unwrap();
    assert_eq!(e.1, "42601", "{e:?}");
    let e = error_of(&s.query("TIMELINE_HISTORY 0")).unwrap();
    assert_eq!(e.1, "42601");
    let e = error_of(&s.query("TIMELINE_HISTORY 7")).unwrap();
    assert_eq!(e.1, "58P01");
    assert!(e.2.contains("00000007.history"), "{e:?}");
    let e = error_of(&s.query("SHOW no_such_thing")).unwrap();
    assert_eq!(e.1, "42704");
    let e = error_of(&s.query("DROP_REPLICATION_SLOT nope")).unwrap();
    assert_eq!(e.1, "42704");
    let e = error_of(&s.query("CREATE_REPLICATION_SLOT \"Bad-Name\" PHYSICAL")).unwrap();
    assert_eq!(e.1, "42602");
    let e = error_of(&s.query("START_REPLICATION PHYSICAL 0/0 TIMELINE 9")).unwrap();
    assert_eq!(e.2, "requested timeline 9 is not in this server's history");
    // ahead of the flush position: after CopyBothResponse, then the session goes on
    let msgs = s.query("START_REPLICATION PHYSICAL FF/0");
    assert!(
        matches!(msgs.first(), Some(BackendMessage::CopyBothResponse)),
        "{msgs:?}"
    );
    let e = error_of(&msgs).unwrap();
    assert!(
        e.2.starts_with(
            "requested starting point FF/0 is ahead of the WAL flush position of this server"
        ),
        "{e:?}"
    );
    let msgs = s.query("IDENTIFY_SYSTEM");
    assert!(
        msgs.iter().any(|m| matches!(m, BackendMessage::DataRow(_))),
        "{msgs:?}"
    );
    let msgs = s.query("SHOW wal_segment_size");
    assert!(msgs
        .iter()
        .any(|m| matches!(m, BackendMessage::DataRow(v) if v[0].as_deref() == Some(&b"16MB"[..]))));
    let msgs = s.query("READ_REPLICATION_SLOT nope");
    assert!(msgs
        .iter()
        .any(|m| matches!(m, BackendMessage::DataRow(v) if v.iter().all(|c| c.is_none()))));
    // extended protocol refused, then Sync gives ReadyForQuery
    s.send(&[b'P', 0, 0, 0, 8, 0, 0, 0, 0, b'S', 0, 0, 0, 4]);
    let msgs = s.until_ready();
    assert_eq!(error_of(&msgs).unwrap().1, "08P01");
    // an oversized message length ends the session with a FATAL
    s.send(&[b'Q', 0x7f, 0xff, 0xff, 0xff]);
    let e = error_of(&s.until_ready()).unwrap();
    assert_eq!((e.0.as_str(), e.1.as_str()), ("FATAL", "08P01"), "{e:?}");

    // random bytes, before and after login
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..60 {
        let mut data = Vec::new();
        for _ in 0..(64 + i * 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
        if i % 2 == 0 {
            let mut r = Raw::connect(port);
            r.send(&data);
            let _ = r.until_ready();
        } else {
            let (mut r, _) = login(port, 0, &[]);
            r.send(&data);
            let _ = r.until_ready();
        }
    }

    // the server is alive, and the streaming client was not disturbed
    let lsn = primary.current_lsn();
    relay.wait_flush(&primary, lsn);
    primary.psql("create table f as select generate_series(1, 1000) g");
    primary.switch_wal();
    harness::wait_for(
        Duration::from_secs(30),
        "pg_receivewal to get a segment",
        || {
            std::fs::read_dir(&recv.dir)
                .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().len() == 24))
                .unwrap_or(false)
        },
    );
    assert!(!recv.log().contains("error"), "{}", recv.log());
    assert!(!relay.log().contains("panicked"), "{}", relay.log());
}

//! Fan-out: ten pg_receivewal clients and one stalled client (starts replication, never
//! reads) on walrelay, which holds a single connection and slot on the primary. The stalled
//! client must not slow the others, which all receive every segment byte-identical.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use walrelay::lsn::segment_file_name;

use crate::harness::{self, compare, pg::Pg, TestDir};
use crate::server_common::{ReceiveWal, Relay};

const SEG: u64 = 16 << 20;

fn stalled_client(port: u16, start: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut body = BytesMut::new();
    body.put_u32(3 << 16);
    for (k, v) in [
        ("user", "postgres"),
        ("replication", "true"),
        ("application_name", "stalled"),
    ] {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut b = BytesMut::new();
    b.put_i32(4 + body.len() as i32);
    b.put_slice(&body);
    let q = format!("START_REPLICATION PHYSICAL {start}");
    b.put_u8(b'Q');
    b.put_i32(4 + q.len() as i32 + 1);
    b.put_slice(q.as_bytes());
    b.put_u8(0);
    s.write_all(&b).unwrap();
    // read just the login answer, then never read again
    let mut tmp = [0u8; 512];
    let _ = s.read(&mut tmp);
    s
}

#[test]
fn server_fanout_ten_clients_one_stalled() {
    let major = harness::majors()
        .last()
        .cloned()
        .unwrap_or_else(|| "18".into());
    let t = TestDir::new("srv-fanout");
    let primary = Pg::primary(&major, &[]);
    let relay = Relay::start(&t, &primary, &[]);
    let start = primary.current_lsn().segment_start(SEG);
    let _stalled = stalled_client(relay.port, &start.to_string());
    let recvs: Vec<ReceiveWal> = (0..10)
        .map(|i| ReceiveWal::start(&primary, relay.port, &t.subdir(&format!("r{i}")), &[]))
        .collect();
    // about 3 segments of WAL, far more than the stalled socket's buffers
    primary.psql("create table big (id int, pad text)");
    primary.psql("insert into big select g, md5(g::text) || md5((g+1)::text) from generate_series(1, 350000) g");
    let end = primary.switch_wal();
    let last = segment_file_name(1, (end.0 - 1) / SEG, SEG);
    for r in &recvs {
        harness::wait_for(
            Duration::from_secs(45),
            &format!("{} to receive {last}", r.dir.display()),
            || r.has_complete(&last),
        );
    }
    for r in &recvs {
        let n = compare::assert_segments_identical(&r.dir, &primary.pg_wal());
        assert!(n >= 2, "{n} segments compared in {}", r.dir.display());
    }
    // the primary serves exactly one walsender: walrelay's
    let n = primary.psql("select count(*) from pg_stat_replication");
    assert_eq!(n, "1");
    assert!(!relay.log().contains("panicked"));
}

//! Bad input from upstream. A real PostgreSQL never sends garbage, truncated messages or WAL
//! of another system, so these tests use a FAKE upstream (a scripted TCP server speaking just
//! enough of the protocol) purely for fault injection; it says so here. Everything else
//! (walrelay, its store) is the real thing. Plus: a data directory of another (real) cluster.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{self, pg::Pg, walrelay::Walrelay, TestDir};

const SYSID: u64 = 7_400_000_000_000_000_123;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).ok()?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).ok()?;
    Some((hdr[0], body))
}

fn row(cols: &[&str], vals: &[Option<&str>]) -> Vec<u8> {
    // name, table oid u32, attnum i16, type oid u32 (text), typlen i16, typmod i32, format i16
    let mut rd2 = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        rd2.extend(cstr(c));
        rd2.extend_from_slice(&0u32.to_be_bytes());
        rd2.extend_from_slice(&0i16.to_be_bytes());
        rd2.extend_from_slice(&25u32.to_be_bytes());
        rd2.extend_from_slice(&(-1i16).to_be_bytes());
        rd2.extend_from_slice(&(-1i32).to_be_bytes());
        rd2.extend_from_slice(&0i16.to_be_bytes());
    }
    let mut dr = (vals.len() as u16).to_be_bytes().to_vec();
    for v in vals {
        match v {
            Some(v) => {
                dr.extend_from_slice(&(v.len() as i32).to_be_bytes());
                dr.extend_from_slice(v.as_bytes());
            }
            None => dr.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut out = msg(b'T', &rd2);
    out.extend(msg(b'D', &dr));
    out
}

/// A page of WAL at `lsn` (a segment start) with a long header naming `sysid`.
fn wal_page(lsn: u64, sysid: u64) -> Vec<u8> {
    let mut p = vec![0u8; 8192];
    p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    p[2..4].copy_from_slice(&2u16.to_le_bytes()); // XLP_LONG_HEADER
    p[4..8].copy_from_slice(&1u32.to_le_bytes());
    p[8..16].copy_from_slice(&lsn.to_le_bytes());
    p[24..32].copy_from_slice(&sysid.to_le_bytes());
    p[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
    p[36..40].copy_from_slice(&8192u32.to_le_bytes());
    p
}

#[derive(Clone, Copy)]
enum Fault {
    Garbage,
    Truncated,
    WrongSysidInPage,
    BadKeepaliveLength,
}

/// Serves walrelay sessions: handshake, IDENTIFY_SYSTEM, SHOW, START_REPLICATION, then the
/// fault. Counts sessions that reached START_REPLICATION.
fn fake_upstream(fault: Fault) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let starts = Arc::new(AtomicUsize::new(0));
    let counter = starts.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                // startup (maybe after SSLRequest)
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    if body[..4] == 80877103u32.to_be_bytes() {
                        let _ = s.write_all(b"N");
                        continue;
                    }
                    break;
                }
                let mut out = msg(b'R', &0u32.to_be_bytes());
                for (k, v) in [
                    ("server_version", "15.18"),
                    ("integer_datetimes", "on"),
                    ("server_encoding", "UTF8"),
                    ("client_encoding", "UTF8"),
                ] {
                    let mut b = cstr(k);
                    b.extend(cstr(v));
                    out.extend(msg(b'S', &b));
                }
                out.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
                out.extend(msg(b'Z', b"I"));
                let _ = s.write_all(&out);
                while let Some((tag, body)) = read_msg(&mut s) {
                    if tag != b'Q' {
                        return;
                    }
                    let q = String::from_utf8_lossy(&body)
                        .trim_end_matches('\0')
                        .to_string();
                    let mut out = Vec::new();
                    if q.starts_with("IDENTIFY_SYSTEM") {
                        out.extend(row(
                            &["systemid", "timeline", "xlogpos", "dbname"],
                            &[Some(&SYSID.to_string()), Some("1"), Some("0/3000100"), None],
                        ));
                        out.extend(msg(b'C', &cstr("IDENTIFY_SYSTEM")));
                    } else if q.starts_with("SHOW") {
                        out.extend(row(&["wal_segment_size"], &[Some("16MB")]));
                        out.extend(msg(b'C', &cstr("SHOW")));
                    } else if q.starts_with("START_REPLICATION") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        out.extend(msg(b'W', &[0, 0, 0]));
                        match fault {
                            Fault::Garbage => out.extend(
                                (0..2000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8),
                            ),
                            Fault::Truncated => {
                                out.push(b'd');
                                out.extend_from_slice(&100_000u32.to_be_bytes());
                                out.extend_from_slice(b"w\0\0\0\0");
                            }
                            Fault::WrongSysidInPage => {
                                let mut d = vec![b'w'];
                                d.extend_from_slice(&0x300_0000u64.to_be_bytes());
                                d.extend_from_slice(&0x300_2000u64.to_be_bytes());
                                d.extend_from_slice(&0u64.to_be_bytes());
                                d.extend(wal_page(0x300_0000, SYSID + 1));
                                out.extend(msg(b'd', &d));
                            }
                            Fault::BadKeepaliveLength => {
                                out.extend(msg(b'd', &[b'k', 0, 0, 0, 0, 3, 0, 0, 0, 0]));
                            }
                        }
                        let _ = s.write_all(&out);
                        std::thread::sleep(Duration::from_millis(300));
                        return;
                    } else {
                        out.extend(msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0"));
                    }
                    out.extend(msg(b'Z', b"I"));
                    let _ = s.write_all(&out);
                }
            });
        }
    });
    (port, starts)
}

fn check_fault(fault: Fault, expect: &str) {
    let t = TestDir::new("fault");
    let dir = t.subdir("wal");
    std::fs::create_dir_all(&dir).unwrap();
    let (port, starts) = fake_upstream(fault);
    let conninfo = format!("host=127.0.0.1 port={port} user=x sslmode=disable");
    let mut w = Walrelay::spawn(&[
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conninfo,
        "-v",
    ]);
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay reconnected after the fault",
        || starts.load(Ordering::SeqCst) >= 2,
    );
    assert!(w.is_running(), "walrelay died: {}", w.log());
    w.stop();
    let log = w.log();
    assert!(log.contains(expect), "expected {expect:?} in log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Nothing of the bad stream was acknowledged as durable WAL: no complete segment, and the
    // partial holds no WAL (all zeros).
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.ends_with(".partial") {
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{name} holds data from a bad stream"
            );
        } else {
            assert!(!name.starts_with("0000"), "unexpected file {name}");
        }
    }
}

#[test]
fn upstream_garbage_is_an_error_and_a_reconnect() {
    check_fault(Fault::Garbage, "protocol error: invalid message length");
}

#[test]
fn upstream_truncated_message_is_an_error_and_a_reconnect() {
    check_fault(Fault::Truncated, "disconnected; waiting");
}

#[test]
fn upstream_wal_of_another_system_is_refused() {
    check_fault(Fault::WrongSysidInPage, "WAL file is from a different database system: WAL file database system identifier is 7400000000000000124, expected 7400000000000000123");
}

#[test]
fn upstream_bad_keepalive_is_an_error() {
    check_fault(
        Fault::BadKeepaliveLength,
        "protocol error: invalid keepalive message length 10",
    );
}

/// A data directory belongs to one cluster: pointing it at another real primary is refused
/// with a clear error and walrelay stops instead of mixing WAL.
#[test]
fn data_directory_of_another_cluster_is_refused() {
    let t = TestDir::new("other-cluster");
    let dir = t.subdir("wal");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Pg::primary("15", &[]);
    let b = Pg::primary("15", &[]);
    let d = dir.to_str().unwrap();
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-D",
        d,
        "-d",
        &a.conninfo(),
        "--endpos",
        "0/1",
        "-n",
    ]);
    assert!(st.success(), "{err}");
    let (st, _, err) =
        harness::walrelay::run_to_end(&["receive", "-D", d, "-d", &b.conninfo(), "-n"]);
    assert!(!st.success());
    assert!(
        err.contains(&format!("holds WAL of system {}", a.system_identifier())),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "but the server is system {}",
            b.system_identifier()
        )),
        "{err}"
    );
}

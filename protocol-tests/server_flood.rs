//! The walsender listener cannot be exhausted (issue 12).
//!
//! - `server_flood_fd_reserve`: 2,000 silent TCP connections plus garbage against a walrelay
//!   whose `RLIMIT_NOFILE` is 300 and whose connection limits are set out of the way, so that
//!   only the file-descriptor reserve protects it: the listener stops accepting before the
//!   reserve (its log says so), while WAL intake (the primary's view of walrelay's flush), a
//!   real hot standby streaming through walrelay (rows visible) and `/metrics` carry on, and
//!   the store never sees EMFILE; afterwards new connections are served again.
//! - `server_flood_preauth_limits`: with the default per-address limit, connections past it
//!   get `sorry, too many clients already` at once (before any startup packet), a real client
//!   is refused with that text while the silent ones hold their places, and the pre-auth
//!   timeout closes the silent ones so that the client gets in again.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::{write_rows, Relay};

/// Raises this test process's own soft `RLIMIT_NOFILE` (it opens thousands of sockets).
fn raise_own_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    rl.rlim_cur
}

/// Opens `n` connections at once (those the server's backlog cannot take time out); every
/// 10th sends garbage of one of a few kinds. Returns the open sockets.
fn flood(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(tokio::spawn(async move {
                let s = tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .ok()?
                .ok()?;
                let s = s.into_std().ok()?;
                if i % 10 == 0 {
                    let mut w = &s;
                    let garbage: &[u8] = match (i / 10) % 4 {
                        0 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                        // a startup packet announcing 10000 bytes, never completed
                        1 => &[0, 0, 0x27, 0x10, 0, 3, 0, 0, b'u'],
                        // SSLRequest, then plaintext junk instead of a ClientHello
                        2 => &[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f, 1, 2, 3],
                        _ => &[0xff; 64],
                    };
                    let _ = w.write_all(garbage);
                }
                Some(s)
            }));
        }
        let mut open = Vec::new();
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                open.push(s);
            }
        }
        open
    })
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let code = body.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body))
}

fn walrelay_flush_on_primary(primary: &Pg) -> Option<walrelay::lsn::Lsn> {
    primary
        .try_psql("select flush_lsn from pg_stat_replication where application_name = 'walrelay'")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn server_flood_fd_reserve() {
    let Some(major) = harness::majors().into_iter().next() else {
        return;
    };
    let own = raise_own_nofile();
    // 2,000 where the test process may open that many; at least twice walrelay's limit.
    let n = 2000usize.min(usize::try_from(own).unwrap_or(0).saturating_sub(300));
    assert!(n >= 600, "the test process may open only {own} files");
    let t = TestDir::new("srv-flood");
    let primary = Pg::primary(&major, &[]);
    let conf = t.join("walrelay.toml");
    // Connection limits out of the way: only the descriptor reserve stands between the flood
    // and EMFILE.
    std::fs::write(
        &conf,
        "[server]\nmax_connections = 5000\nmax_startup_connections = 5000\n\
         max_startup_connections_per_address = 5000\nstartup_timeout = \"120s\"\n\
         reserved_file_descriptors = 128\n",
    )
    .unwrap();
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let maddr = format!("127.0.0.1:{}", harness::free_port());
    let relay = Relay::start_limited(
        &t,
        &primary,
        &primary.conninfo(),
        &data,
        port,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--metrics-listen",
            &maddr,
        ],
        "",
        Some(300),
    );
    let standby = Pg::standby_of(&primary, &major, &relay.conninfo("sb1"), &[]);
    let lsn = write_rows(&primary, "t1", 1000);
    standby.wait_replayed(lsn, Duration::from_secs(40));

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let held = flood(addr, n);
    assert!(held.len() >= 300, "only {} connections opened", held.len());
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay to stop accepting at the descriptor reserve",
        || relay.log().contains("not accepting new connections"),
    );

    // While the flood holds: WAL intake (new segments need descriptors), the standby, /metrics.
    write_rows(&primary, "t2", 20000);
    for _ in 0..3 {
        write_rows(&primary, "t2", 2000);
        primary.switch_wal();
    }
    let lsn = write_rows(&primary, "t3", 500);
    harness::wait_for(
        Duration::from_secs(40),
        "walrelay's flush (as the primary sees it) to pass the last rows",
        || walrelay_flush_on_primary(&primary).is_some_and(|f| f >= lsn),
    );
    standby.wait_replayed(lsn, Duration::from_secs(40));
    assert_eq!(standby.psql("select count(*) from t3"), "500");
    let (code, body) = http_get(&maddr, "/metrics").expect("GET /metrics during the flood");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("walrelay_"), "{body}");
    let log = relay.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Flood over: new connections are served again.
    drop(held);
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay to serve new connections",
        || relay.identify(&primary).is_some_and(|(_, _, p)| p >= lsn),
    );
    let log = relay.log();
    assert!(!log.contains("Too many open files"), "{log}");
}

/// Reads what the server sends within `wait` (until EOF or timeout).
fn read_some(s: &mut std::net::TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(k) => got.extend_from_slice(buf.get(..k).unwrap_or_default()),
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn server_flood_preauth_limits() {
    let Some(major) = harness::majors().into_iter().next() else {
        return;
    };
    let t = TestDir::new("srv-preauth");
    let primary = Pg::primary(&major, &[]);
    let conf = t.join("walrelay.toml");
    std::fs::write(&conf, "[server]\nstartup_timeout = \"3s\"\n").unwrap();
    let relay = Relay::start(&t, &primary, &["--config", conf.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{}", relay.port);

    // 16 silent connections from 127.0.0.1 take the default per-address places.
    let mut silent: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The 17th is told at once, before it sent anything.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    let (got, eof) = read_some(&mut extra, Duration::from_secs(5));
    assert!(eof, "the refused connection was not closed");
    assert_eq!(got.first(), Some(&b'E'), "{got:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("sorry, too many clients already"), "{text}");
    assert!(text.contains("53300"), "{text}");
    // A real client is refused with the same text while the places are held.
    let err = primary
        .install()
        .psql_conninfo(
            &format!(
                "{} replication=true sslmode=disable",
                relay.conninfo("psql")
            ),
            "IDENTIFY_SYSTEM",
        )
        .unwrap_err();
    assert!(err.contains("sorry, too many clients already"), "{err}");
    // The pre-auth timeout closes the silent ones; then the client gets in.
    for s in &mut silent {
        let (_, eof) = read_some(s, Duration::from_secs(15));
        assert!(eof, "a silent connection was kept past startup_timeout");
    }
    assert!(relay.identify(&primary).is_some());
    assert!(relay.log().contains("startup timed out"), "{}", relay.log());
}

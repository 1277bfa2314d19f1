//! Upstream liveness against real PostgreSQL: the primary's processes are frozen with
//! SIGSTOP (a silent host: its kernel still holds the TCP connection open and answers
//! keepalives, so only walrelay's receive timeout can notice), its standby is promoted, and
//! walrelay (multi-host conninfo, `--receive-timeout 4s`) gives up on the frozen primary with
//! walreceiver's message, skips it on reconnect (connect timeout: the frozen postmaster
//! never answers the startup packet), follows the promoted standby onto timeline 2, and a
//! hot standby streaming from walrelay replays what the new primary writes.
use std::time::Duration;

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::{write_rows, Relay};

/// The postmaster (from `postmaster.pid`) and its children, SIGSTOPped; SIGCONT on Drop
/// (also during a panic, so that the server can be stopped afterwards).
struct Frozen {
    pids: Vec<u32>,
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

impl Frozen {
    fn freeze(pg: &Pg) -> Frozen {
        let pm: u32 = std::fs::read_to_string(pg.datadir().join("postmaster.pid"))
            .expect("postmaster.pid")
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster pid");
        // The postmaster first, so that it forks no new child meanwhile.
        harness::signal(pm, "STOP");
        let mut pids = vec![pm];
        for _ in 0..2 {
            for c in children_of(pm) {
                if !pids.contains(&c) {
                    harness::signal(c, "STOP");
                    pids.push(c);
                }
            }
        }
        assert!(pids.len() > 3, "postmaster and its children: {pids:?}");
        Frozen { pids }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.pids {
            harness::signal(*p, "CONT");
        }
    }
}

#[test]
fn failover_from_a_frozen_primary() {
    let major = harness::majors()
        .first()
        .cloned()
        .unwrap_or_else(|| "15".into());
    let t = TestDir::new("up-frozen");
    let primary = Pg::primary(&major, &[]);
    let s1 = Pg::standby_of(&primary, &major, &primary.conninfo(), &[]);
    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        s1.port()
    );
    let data = t.subdir("relay");
    let port = harness::free_port();
    let relay = Relay::start_full(
        &t,
        &primary,
        &upstream,
        &data,
        port,
        &["--receive-timeout", "4s"],
        "",
    );
    let s2 = Pg::standby_of(&primary, &major, &relay.conninfo("sb2"), &[]);

    let lsn = write_rows(&primary, "t1", 2000);
    s1.wait_replayed(lsn, Duration::from_secs(30));
    s2.wait_replayed(lsn, Duration::from_secs(30));
    relay.wait_flush(&primary, lsn);
    assert!(
        relay.log().contains(&format!(
            "connected to server at \"127.0.0.1\", port {}",
            primary.port()
        )),
        "{}",
        relay.log()
    );

    let frozen = Frozen::freeze(&primary);
    s1.promote();
    let lsn = write_rows(&s1, "t2", 1000);
    // Generous bound (the receive timeout is 4 s, the connect timeout 2 s).
    s2.wait_replayed(lsn, Duration::from_secs(120));
    assert_eq!(s2.psql("select count(*) from t2"), "1000");
    assert_eq!(s2.psql("select count(*) from t1"), "2000");

    let log = relay.log();
    assert!(
        log.contains("terminating walreceiver due to timeout"),
        "{log}"
    );
    // The frozen host was tried and skipped, the promoted one named.
    assert!(
        log.contains(&format!(
            "connection to server at \"127.0.0.1\", port {} failed: timeout expired",
            primary.port()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "connected to server at \"127.0.0.1\", port {} (target_session_attrs=read-write)",
            s1.port()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "upstream server changed from 127.0.0.1:{} to 127.0.0.1:{}",
            primary.port(),
            s1.port()
        )),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(frozen);
}

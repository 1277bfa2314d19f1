//! The walsender's shared read cache: three pg_receivewal clients start together on the same
//! backlog of six segments (96 MB, three times the 32 MB in-memory tail of `walrelay run`),
//! so most of it is served from walrelay's segment files. Every client's segments must be
//! byte-identical to walrelay's and to the primary's `pg_wal`, and the cache must have been
//! shared: fewer chunk reads from files than the clients would do each on their own.
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::{self, compare, pg::Pg, TestDir};
use crate::server_common::{ReceiveWal, Relay};

const SEG: u64 = 16 << 20;
const CLIENTS: u64 = 3;

/// One segment of WAL: some rows, then a segment switch.
fn one_segment(pg: &Pg) {
    pg.psql("insert into t select g, md5(g::text) from generate_series(1, 2000) g");
    pg.switch_wal();
}

/// The value of the (only) series of counter `name` in a Prometheus text page.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[test]
fn server_readcache_clients_share_file_reads() {
    let t = TestDir::new("srv-readcache");
    let primary = Pg::primary("15", &["wal_keep_size = '1GB'"]);
    primary.psql("create table t (id int, pad text)");
    let maddr = format!("127.0.0.1:{}", harness::free_port());
    let relay = Relay::start(&t, &primary, &["--metrics-listen", &maddr]);
    let first = primary.current_lsn().segno(SEG);
    for _ in 0..7 {
        one_segment(&primary);
    }
    let end = primary.current_lsn();
    relay.wait_flush(&primary, end);
    let last_complete = end.segno(SEG) - 1;
    let backlog = last_complete - first;
    assert!(backlog >= 6, "backlog of {backlog} segments");

    // each client's directory holds segment `first`: it streams from the next one on
    let dirs: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let dir = t.subdir(&format!("r{i}"));
            let seg = segment_file_name(1, first, SEG);
            std::fs::copy(primary.pg_wal().join(&seg), dir.join(&seg)).unwrap();
            dir
        })
        .collect();
    // started together (the directories are ready): they read the same chunks at once
    let recvs: Vec<ReceiveWal> = dirs
        .iter()
        .map(|dir| ReceiveWal::start(&primary, relay.port, dir, &[]))
        .collect();
    let last = segment_file_name(1, last_complete, SEG);
    for r in &recvs {
        harness::wait_for(
            Duration::from_secs(60),
            &format!("{} to complete {last}", r.dir.display()),
            || r.has_complete(&last),
        );
    }
    for r in &recvs {
        let n = compare::assert_segments_identical(&r.dir, &relay.data);
        assert!(
            n as u64 > backlog,
            "{n} segments compared in {}",
            r.dir.display()
        );
        compare::assert_segments_identical(&r.dir, &primary.pg_wal());
    }

    let (code, metrics) = walrelay::admin::request(&maddr, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    let hits = counter(&metrics, "walrelay_walsender_read_cache_hits_total");
    let misses = counter(&metrics, "walrelay_walsender_read_cache_misses_total");
    // the tail holds at most 32 MB: each client needed at least this many 1 MB chunks from
    // the files, and would have read each itself without a shared cache
    let from_files = backlog * 16 - 32;
    eprintln!(
        "read cache: {hits} hits, {misses} misses, {from_files} chunks per client from files"
    );
    assert!(misses > 0, "no chunk read from files: {metrics}");
    assert!(hits > 0, "no read cache hit: {metrics}");
    assert!(
        misses < CLIENTS * from_files,
        "{misses} chunk reads from files for {CLIENTS} clients × {from_files} chunks: not shared"
    );
    assert!(!relay.log().contains("panicked"), "{}", relay.log());
}

//! The walsender falls back to the archive: `walrelay run` archives to a `file://` directory
//! with aggressive local retention in front of a real PostgreSQL 15 primary; once early
//! segments are archived and removed locally, a pg_receivewal asking walrelay for them gets
//! them streamed from the archive (byte-identical to the primary's `pg_wal`), and WAL that is
//! neither local nor archived still gets "requested WAL segment … has already been removed".
use std::path::Path;
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::{self, compare, pg::Pg, TestDir};
use crate::server_common::{ReceiveWal, Relay};

const SEG: u64 = 16 << 20;

/// One segment of WAL: some rows, then a segment switch.
fn one_segment(pg: &Pg) {
    pg.psql("insert into t select g, md5(g::text) from generate_series(1, 2000) g");
    pg.switch_wal();
}

/// Seeds a pg_receivewal directory with the primary's segment `segno`, so that
/// pg_receivewal starts streaming at the segment after it.
fn seeded_dir(t: &TestDir, name: &str, primary: &Pg, segno: u64) -> std::path::PathBuf {
    let dir = t.subdir(name);
    let seg = segment_file_name(1, segno, SEG);
    std::fs::copy(primary.pg_wal().join(&seg), dir.join(&seg)).unwrap();
    dir
}

fn archived(archive: &Path, sysid: u64, name: &str) -> bool {
    let wal = archive.join(sysid.to_string()).join("wal");
    wal.join(name).is_file() || wal.join(format!("{name}.zst")).is_file()
}

#[test]
fn server_archive_fallback() {
    let t = TestDir::new("srv-archive-fb");
    let primary = Pg::primary("15", &["wal_keep_size = '1GB'"]);
    primary.psql("create table t (id int, pad text)");
    // walrelay's slot starts at the primary's oldest WAL: these are archived too
    for _ in 0..3 {
        one_segment(&primary);
    }
    let sysid = primary.system_identifier();
    let archive = t.subdir("archive");
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "[archive]\nurl = \"file://{}\"\ncompression = \"zstd\"\nscan_interval = \"200ms\"\n\
             partial_interval = \"0\"\nkeep_local_size = \"32MB\"\nkeep_local_age = \"0s\"\n",
            archive.display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let relay = Relay::start(&t, &primary, &["-c", &conf_s]);
    let first = primary.current_lsn().segno(SEG);
    for _ in 0..8 {
        one_segment(&primary);
    }
    let end = primary.current_lsn();
    relay.wait_flush(&primary, end);
    let last_complete = end.segno(SEG) - 1;

    // the early segments are archived and gone from walrelay's data directory
    let early: Vec<String> = (first - 1..=first + 3)
        .map(|n| segment_file_name(1, n, SEG))
        .collect();
    harness::wait_for(
        Duration::from_secs(30),
        "early segments archived and removed locally",
        || {
            early.iter().all(|n| {
                archived(&archive, sysid, n)
                    && !relay.data.join(n).exists()
                    && !relay.data.join(format!("{n}.partial")).exists()
            })
        },
    );
    let never = early[0].clone();
    let early = early[2..].to_vec();

    // pg_receivewal asks walrelay for the removed segments: streamed from the archive
    let recv_dir = seeded_dir(&t, "receivewal", &primary, first);
    let recv = ReceiveWal::start(&primary, relay.port, &recv_dir, &[]);
    let last = segment_file_name(1, last_complete, SEG);
    harness::wait_for(
        Duration::from_secs(40),
        &format!("pg_receivewal to complete {last}"),
        || recv.has_complete(&last),
    );
    let n = compare::assert_segments_identical(&recv_dir, &primary.pg_wal());
    assert!(n as u64 > last_complete - first, "compared {n} segments");
    for name in &early {
        assert!(recv.has_complete(name), "{name} missing; {}", recv.log());
    }
    assert!(
        relay
            .log()
            .contains(&format!("WAL segment {} read from the archive", early[0])),
        "{}",
        relay.log()
    );
    drop(recv);

    // neither local nor archived: PostgreSQL's error, as before
    let wal = archive.join(sysid.to_string()).join("wal");
    let _ = std::fs::remove_file(wal.join(&never));
    let _ = std::fs::remove_file(wal.join(format!("{never}.zst")));
    assert!(!archived(&archive, sysid, &never));
    let neg_dir = seeded_dir(&t, "receivewal-neg", &primary, first - 2);
    let neg = ReceiveWal::start(&primary, relay.port, &neg_dir, &[]);
    let expected = format!("requested WAL segment {never} has already been removed");
    harness::wait_for(Duration::from_secs(20), &expected, || {
        neg.log().contains(&expected)
    });
    assert!(!neg.has_complete(&never));
    assert!(!relay.log().contains("panicked"), "{}", relay.log());
}

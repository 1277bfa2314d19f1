//! Failover to a standby that is *behind* walrelay (issue 11): walrelay holds old-timeline WAL
//! past the promoted standby's switch point, within one segment or across several. walrelay
//! (multi-host conninfo: old primary, then the standby) must set that WAL aside under
//! `diverged/<TLI>-<fork>/`, log a WARNING, continue on timeline 2 from the fork point and
//! serve timeline 2 byte for byte as the new primary wrote it. Behind walrelay, a standby and a
//! pg_receivewal that stopped before the fork follow to timeline 2; a standby that streamed the
//! divergent WAL gets what a PostgreSQL server would tell it.
//!
//! walrelay reaches the new primary through a multi-host conninfo, or is restarted pointed at
//! it; both paths are run. Then it must refuse, without writing, a server promoted from the
//! standby past the fork (split brain: another timeline 1 history) and the old primary back
//! on timeline 1.
//!
//! (`server_timeline.rs` covers the plain promotion, where walrelay is not ahead.)
use std::path::Path;
use std::time::Duration;

use walrelay::lsn::{segment_file_name, Lsn};

use crate::harness::{self, compare, pg::Pg, TestDir};
use crate::server_common::{write_rows, ReceiveWal, Relay};

const SEG: u64 = 16 << 20;

/// Where timeline 1 ended, from the promoted server's `00000002.history`.
fn fork_point(pg: &Pg) -> Lsn {
    let text = std::fs::read_to_string(pg.pg_wal().join("00000002.history")).unwrap();
    let entries = walrelay::wal::history::parse_history(&text).unwrap();
    assert_eq!(entries.len(), 1, "{text}");
    entries[0].switchpoint
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `restart`: walrelay streams from the old primary only and is restarted pointed at the
/// promoted standby; else it has both in a multi-host conninfo (target_session_attrs).
fn diverge(major: &str, diverged_segments: u32, restart: bool) {
    let t = TestDir::new("diverge");
    let mut primary = Pg::primary(major, &[]);
    let mut s1 = Pg::standby_of(&primary, major, &primary.conninfo(), &[]);
    let upstream = if restart {
        format!("{} connect_timeout=2", primary.conninfo())
    } else {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write connect_timeout=2",
            primary.port(),
            s1.port()
        )
    };
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let mut relay = Relay::start_full(&t, &primary, &upstream, &data, port, &[], "");
    // Behind the fork: stopped before it, started again after the failover.
    let mut behind = Pg::standby_of(&primary, major, &relay.conninfo("behind"), &[]);
    // Past the fork: streams the WAL that the promoted standby never receives.
    let ahead = Pg::standby_of(&primary, major, &relay.conninfo("ahead"), &[]);
    let recv_dir = t.subdir("recv");
    let recv = ReceiveWal::start(&primary, port, &recv_dir, &[]);

    let lsn = write_rows(&primary, "t1", 2000);
    for sb in [&s1, &behind, &ahead] {
        sb.wait_replayed(lsn, Duration::from_secs(60));
    }
    relay.wait_flush(&primary, lsn);
    behind.stop();
    drop(recv);
    primary.switch_wal();
    let lsn = write_rows(&primary, "t0", 10);
    s1.wait_replayed(lsn, Duration::from_secs(60));
    relay.wait_flush(&primary, lsn);
    s1.stop();

    // WAL the promoted standby never sees: within the segment, or across several.
    write_rows(&primary, "tdiv", 200);
    for _ in 0..diverged_segments {
        write_rows(&primary, "tdiv", 20000);
        primary.switch_wal();
    }
    let old_end = primary.current_lsn();
    relay.wait_flush(&primary, old_end);
    ahead.wait_replayed(old_end, Duration::from_secs(60));
    primary.stop();

    s1.start();
    s1.promote();
    let fork = fork_point(&s1);
    if restart {
        relay.proc.stop();
        let upstream = format!("{} connect_timeout=2", s1.conninfo());
        relay = Relay::start_full(&t, &s1, &upstream, &data, port, &[], "");
    }
    assert!(old_end > fork, "walrelay is not ahead: {old_end} <= {fork}");
    assert_eq!(
        old_end.segno(SEG) - fork.segno(SEG),
        u64::from(diverged_segments),
        "fork {fork}, old end {old_end}"
    );
    harness::wait_for(
        Duration::from_secs(120),
        "walrelay to serve timeline 2",
        || relay.identify(&s1).is_some_and(|(_, tli, _)| tli == 2),
    );
    let lsn2 = write_rows(&s1, "t2", 1000);
    let end2 = s1.switch_wal();
    relay.wait_flush(&s1, end2);

    // The WARNING names the fork and the bytes set aside.
    let log = relay.log();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("set aside"))
        .unwrap_or_else(|| panic!("no WARNING about diverged WAL:\n{log}"));
    assert!(
        warning.contains(&format!(
            "timeline 1 ended at {fork} (then timeline 2); set aside "
        )),
        "{warning}"
    );
    assert!(
        warning.contains(&format!("continuing on timeline 2 at {fork}")),
        "{warning}"
    );
    let bytes: u64 = warning
        .split("set aside ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {warning}"));
    // At least what the old primary wrote after the fork (its current LSN at the start of
    // the last segment may be the segment start), at most up to the end of that segment.
    let upper = (old_end.segno(SEG) + 1) * SEG - fork.0;
    assert!(
        bytes > 0 && bytes <= upper,
        "{bytes} bytes set aside; between the fork and the old end's segment end: {upper}"
    );
    let fork_seg = fork.segno(SEG);
    let off = fork.segment_offset(SEG) as usize;
    assert!(
        log.contains(&format!(
            "starting log streaming at {} (timeline 2)",
            Lsn(fork_seg * SEG)
        )),
        "{log}"
    );

    // Set aside: exactly the old primary's WAL past the fork.
    let ddir = data.join("diverged").join(format!(
        "00000001-{:X}-{:X}",
        fork.0 >> 32,
        fork.0 & 0xFFFF_FFFF
    ));
    let complete = compare::segments_identical(&ddir, &primary.pg_wal()).unwrap();
    assert_eq!(
        complete, diverged_segments as usize,
        "complete segments set aside"
    );
    let last = format!("{}.partial", segment_file_name(1, old_end.segno(SEG), SEG));
    compare::partial_matches(
        &ddir.join(&last),
        &primary.pg_wal(),
        old_end.segment_offset(SEG),
    )
    .unwrap();
    assert!(!data.join(&last).exists() || diverged_segments == 0);
    // The old timeline's switch segment keeps what is on the new history, and nothing more.
    let cut = read(&data.join(format!("{}.partial", segment_file_name(1, fork_seg, SEG))));
    assert!(!data.join(segment_file_name(1, fork_seg, SEG)).exists());
    let new_seg = read(&s1.pg_wal().join(segment_file_name(2, fork_seg, SEG)));
    assert_eq!(cut[..off], new_seg[..off], "timeline 1 before the fork");
    assert!(
        cut[off..].iter().all(|&b| b == 0),
        "diverged bytes left in place"
    );
    for n in 1..=diverged_segments as u64 {
        let name = segment_file_name(1, fork_seg + n, SEG);
        assert!(!data.join(&name).exists(), "{name} still served");
        assert!(
            !data.join(format!("{name}.partial")).exists(),
            "{name} still served"
        );
    }

    // What walrelay serves as timeline 2 is the new primary's WAL, byte for byte.
    assert!(data.join(segment_file_name(2, fork_seg, SEG)).is_file());
    compare::segments_identical(&data, &s1.pg_wal()).unwrap();
    assert_eq!(
        std::fs::read(data.join("00000002.history")).unwrap(),
        std::fs::read(s1.pg_wal().join("00000002.history")).unwrap()
    );

    // pg_receivewal that stopped before the fork follows to timeline 2, and never gets a
    // diverged byte.
    let recv = ReceiveWal::start(&s1, port, &recv_dir, &[]);
    harness::wait_for(
        Duration::from_secs(60),
        "pg_receivewal through walrelay to get timeline 2's first segment",
        || recv.has_complete(&segment_file_name(2, fork_seg, SEG)),
    );
    assert!(
        recv.dir.join("00000002.history").is_file(),
        "{}",
        recv.log()
    );
    compare::segments_identical(&recv.dir, &s1.pg_wal()).unwrap();
    let theirs = read(
        &recv
            .dir
            .join(format!("{}.partial", segment_file_name(1, fork_seg, SEG))),
    );
    assert_eq!(theirs[..off], cut[..off]);
    assert!(
        theirs[off..].iter().all(|&b| b == 0),
        "diverged bytes served"
    );

    // The standby that stopped before the fork follows to timeline 2.
    behind.start();
    behind.wait_replayed(lsn2, Duration::from_secs(60));
    assert_eq!(behind.psql("select count(*) from t2"), "1000");
    let lsn3 = write_rows(&s1, "t3", 100);
    behind.wait_replayed(lsn3, Duration::from_secs(60));
    assert_eq!(behind.psql("select count(*) from t3"), "100");
    assert_eq!(
        behind.psql("select received_tli from pg_stat_wal_receiver"),
        "2"
    );

    // The standby past the fork cannot follow, as behind a PostgreSQL server: its recovery
    // refuses timeline 2, and (past the fork's segment) walrelay answers its request on
    // timeline 1 with PostgreSQL's error.
    harness::wait_for(
        Duration::from_secs(60),
        "the standby past the fork to refuse timeline 2",
        || {
            ahead.log().contains(
                "new timeline 2 forked off current database system timeline 1 before current recovery point",
            )
        },
    );
    if diverged_segments > 0 {
        harness::wait_for(
            Duration::from_secs(60),
            "walrelay to refuse the standby past the fork",
            || {
                let l = ahead.log();
                l.contains("on timeline 1 is not in this server's history")
                    && l.contains(&format!(
                        "This server's history forked from timeline 1 at {fork}."
                    ))
            },
        );
    }
    assert!(ahead.try_psql("select count(*) from t2").is_err());
    assert!(!relay.log().contains("panicked"));

    // Fail closed on servers whose history is not walrelay's.
    relay.proc.stop();
    let files = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with('0'))
            .collect();
        v.sort();
        v
    };
    let before = files(&data);
    // Split brain: the standby past the fork is promoted too (timeline 3, forked off timeline
    // 1 later than walrelay's timeline 2 did). walrelay refuses to follow it.
    ahead.promote();
    let refuse = |upstream: String, what: &str, expected: &str| {
        let log = t.join(format!("walrelay-{what}.log"));
        let mut w = harness::walrelay::Walrelay::spawn_with(
            &log,
            &[
                "run",
                "--upstream",
                &upstream,
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &[("WALRELAY_LOG", "info")],
        );
        harness::wait_for(Duration::from_secs(30), what, || {
            harness::read_lossy(&log).contains(expected)
        });
        w.stop();
        assert_eq!(files(&data), before, "{what}: walrelay wrote WAL");
    };
    refuse(
        format!("{} connect_timeout=2", ahead.conninfo()),
        "the split-brain server refused",
        &format!("does not descend from walrelay's timeline 2: walrelay's history has timeline 1 ending at {fork}, the server's has timeline 1 ending at"),
    );
    // The old primary comes back on timeline 1: refused, not followed.
    primary.start();
    refuse(
        format!("{} connect_timeout=2", primary.conninfo()),
        "the old primary refused",
        "highest timeline 1 of the primary is behind recovery timeline 2",
    );
}

#[test]
fn failover_walrelay_ahead_within_one_segment_pg15() {
    diverge("15", 0, true);
}

#[test]
fn failover_walrelay_ahead_across_segments_pg15() {
    diverge("15", 3, false);
}

#[test]
fn failover_walrelay_ahead_across_segments_pg18() {
    diverge("18", 3, true);
}

/// A history file is validated before it is stored: a promoted server whose
/// `pg_wal/00000002.history` was damaged on disk (the server serves TIMELINE_HISTORY verbatim)
/// is refused, nothing of timeline 2 is written; once the file is right again walrelay
/// follows.
#[test]
fn history_from_the_server_is_validated_pg15() {
    let t = TestDir::new("diverge-hist");
    let mut primary = Pg::primary("15", &[]);
    let s1 = Pg::standby_of(&primary, "15", &primary.conninfo(), &[]);
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let upstream = format!("{} connect_timeout=2", primary.conninfo());
    let mut relay = Relay::start_full(&t, &primary, &upstream, &data, port, &[], "");
    let lsn = write_rows(&primary, "t1", 1000);
    s1.wait_replayed(lsn, Duration::from_secs(60));
    relay.wait_flush(&primary, lsn);
    primary.stop();
    relay.proc.stop();
    s1.promote();
    let hist = s1.pg_wal().join("00000002.history");
    let good = read(&hist);
    std::fs::write(&hist, "1\t0/3000000\tx\n2\t0/3000000\ty\n").unwrap();

    let log = t.join("walrelay-hist.log");
    let upstream = format!("{} connect_timeout=2", s1.conninfo());
    let mut w = harness::walrelay::Walrelay::spawn_with(
        &log,
        &[
            "run",
            "--upstream",
            &upstream,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("WALRELAY_LOG", "info")],
    );
    harness::wait_for(Duration::from_secs(30), "the history to be refused", || {
        harness::read_lossy(&log).contains(
            "the server sent invalid data in history file: 2\t0/3000000\ty (Timeline IDs must be less than child timeline's ID 2.)",
        )
    });
    assert!(!data.join("00000002.history").exists());
    let tli2 = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|n| n.starts_with("00000002"))
    };
    assert!(!tli2(&data), "timeline 2 written from an invalid history");

    std::fs::write(&hist, &good).unwrap();
    write_rows(&s1, "t2", 100);
    let end = s1.switch_wal();
    let last = segment_file_name(2, Lsn(end.0 - 1).segno(SEG), SEG);
    harness::wait_for(
        Duration::from_secs(90),
        "walrelay to follow timeline 2",
        || data.join(&last).is_file(),
    );
    w.stop();
    assert_eq!(read(&data.join("00000002.history")), good);
    compare::segments_identical(&data, &s1.pg_wal()).unwrap();
}

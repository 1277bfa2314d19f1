//! `walrelay receive` against real PostgreSQL primaries: byte identity with `pg_wal`,
//! slots and start positions, synchronous mode, crashes, timeline switches, bad input.
use std::path::{Path, PathBuf};
use std::time::Duration;

use walrelay::lsn::{segment_file_name, Lsn};

use crate::harness::{self, compare, pg::Pg, walrelay::Walrelay, TestDir};

const SEG: u64 = 16 << 20;

fn wal_dir(t: &TestDir) -> PathBuf {
    let d = t.subdir("wal");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Complete segment files walrelay wrote, sorted.
fn complete_segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    v
}

fn has_file(dir: &Path, name: &str) -> bool {
    dir.join(name).is_file()
}

/// Writes about `mb` MB of WAL with incompressible rows.
fn generate_wal(pg: &Pg, mb: u32) {
    pg.psql("create table if not exists filler (id bigserial, pad text)");
    pg.psql(&format!(
        "insert into filler (pad) select string_agg(md5(random()::text), '') from generate_series(1, 30) g, generate_series(1, {}) r group by r",
        mb * 1100
    ));
}

fn waldump_ok(pg: &Pg, dir: &Path, first: &str, last: &str) {
    let out = pg
        .install()
        .command("pg_waldump")
        .arg("-p")
        .arg(dir)
        .arg("-q")
        .arg(first)
        .arg(last)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // pg_waldump -q reports nothing when every record is valid; at the end of the last
    // segment it may report where valid WAL ends, which is not an error of the files.
    assert!(
        out.status.success()
            || stderr.contains("invalid record length")
            || stderr.contains("contrecord"),
        "pg_waldump failed on walrelay's files: {stderr}"
    );
    assert!(
        !stderr.contains("invalid magic")
            && !stderr.contains("incorrect prev-link")
            && !stderr.contains("checksum"),
        "{stderr}"
    );
}

fn byte_identity(major: &str) {
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let t = TestDir::new("recv");
    let dir = wal_dir(&t);
    let primary = Pg::primary(major, &[]);
    let conninfo = primary.conninfo();
    let d = dir.to_str().unwrap();

    // --create-slot creates a slot that reserves WAL, then exits; --if-not-exists tolerates it.
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-d",
        &conninfo,
        "--slot",
        "wr",
        "--create-slot",
    ]);
    assert!(st.success(), "{err}");
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-d",
        &conninfo,
        "--slot",
        "wr",
        "--create-slot",
    ]);
    assert!(!st.success() && err.contains("already exists"), "{err}");
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-d",
        &conninfo,
        "--slot",
        "wr",
        "--create-slot",
        "--if-not-exists",
    ]);
    assert!(st.success(), "{err}");
    let restart =
        primary.psql("select restart_lsn from pg_replication_slots where slot_name = 'wr'");
    let restart: Lsn = restart.parse().expect("slot reserves WAL");

    let first_seg = segment_file_name(1, restart.segno(SEG), SEG);
    let mut w = Walrelay::spawn(&[
        "receive",
        "-D",
        d,
        "-d",
        &conninfo,
        "--slot",
        "wr",
        "-v",
        "--status-interval",
        "1",
    ]);
    // The first file is the slot's restart segment (READ_REPLICATION_SLOT on 15+, else the
    // server's position, which is the same segment here).
    harness::wait_for(Duration::from_secs(30), "first .partial", || {
        has_file(&dir, &format!("{first_seg}.partial"))
    });

    generate_wal(&primary, 40);
    // A record crossing a segment boundary is all but certain with 40 MB of 1 kB rows; a
    // pg_switch_wal() then completes the segment it is in.
    let switched = primary.switch_wal();
    let last_complete = segment_file_name(1, Lsn(switched.0 - 1).segno(SEG), SEG);
    harness::wait_for(
        Duration::from_secs(60),
        "switched segment completed",
        || has_file(&dir, &last_complete),
    );
    primary.psql("insert into filler (pad) values ('after switch')");
    let tail_lsn = primary.current_lsn();
    let partial_name = format!("{}.partial", segment_file_name(1, tail_lsn.segno(SEG), SEG));
    // wait until the primary's slot says walrelay flushed the tail
    harness::wait_for(
        Duration::from_secs(30),
        "flush reported for the tail",
        || {
            let s =
                primary.psql("select restart_lsn from pg_replication_slots where slot_name = 'wr'");
            s.parse::<Lsn>().map(|l| l >= tail_lsn).unwrap_or(false)
        },
    );
    let st = w.stop();
    assert!(st.success(), "walrelay exit: {st:?}\n{}", w.log());

    let n = compare::assert_segments_identical(&dir, &primary.pg_wal());
    assert!(n >= 3, "only {n} segments compared");
    let segs = complete_segments(&dir);
    assert_eq!(segs.first().unwrap(), &first_seg);
    // no gaps between the first and last complete segment
    for pair in segs.windows(2) {
        let a = u64::from_str_radix(&pair[0][16..], 16).unwrap();
        let b = u64::from_str_radix(&pair[1][16..], 16).unwrap();
        assert_eq!(a + 1, b, "gap between {} and {}", pair[0], pair[1]);
    }
    compare::partial_matches(
        &dir.join(&partial_name),
        &primary.pg_wal(),
        tail_lsn.segment_offset(SEG),
    )
    .unwrap();
    // At least one completed segment starts with a continuation record: the record crossed
    // a segment boundary (XLP_FIRST_IS_CONTRECORD in the long header's xlp_info).
    let crossing = segs.iter().skip(1).any(|s| {
        let b = std::fs::read(dir.join(s)).unwrap();
        u16::from_le_bytes([b[2], b[3]]) & 1 == 1
    });
    assert!(crossing, "no record crossed a segment boundary");
    waldump_ok(&primary, &dir, segs.first().unwrap(), segs.last().unwrap());

    // The slot never passes what walrelay fsynced: restart_lsn ≤ the end of its files.
    let restart: Lsn = primary
        .psql("select restart_lsn from pg_replication_slots where slot_name = 'wr'")
        .parse()
        .unwrap();
    let on_disk_end = Lsn(tail_lsn.segment_start(SEG).0 + tail_lsn.segment_offset(SEG));
    assert!(
        restart <= on_disk_end,
        "slot restart_lsn {restart} beyond walrelay's files {on_disk_end}"
    );

    // Restart resumes at the partial's segment start and completes it.
    let mut w = Walrelay::spawn(&["receive", "-D", d, "-d", &conninfo, "--slot", "wr", "-v"]);
    let switched = primary.switch_wal();
    let name = segment_file_name(1, Lsn(switched.0 - 1).segno(SEG), SEG);
    harness::wait_for(Duration::from_secs(30), "resumed segment completed", || {
        has_file(&dir, &name)
    });
    w.stop();
    compare::assert_segments_identical(&dir, &primary.pg_wal());
    assert!(
        w.log().contains(&format!(
            "starting log streaming at {}",
            tail_lsn.segment_start(SEG)
        )),
        "{}",
        w.log()
    );

    // --drop-slot
    let (st, _, err) =
        harness::walrelay::run_to_end(&["receive", "-d", &conninfo, "--slot", "wr", "--drop-slot"]);
    assert!(st.success(), "{err}");
    assert_eq!(
        primary.psql("select count(*) from pg_replication_slots"),
        "0"
    );
}

#[test]
fn receive_byte_identity_pg15() {
    byte_identity("15");
}

#[test]
fn receive_byte_identity_pg18() {
    byte_identity("18");
}

#[test]
fn receive_endpos_and_no_loop() {
    let t = TestDir::new("recv-endpos");
    let dir = wal_dir(&t);
    let primary = Pg::primary("15", &[]);
    let start = primary.current_lsn();
    generate_wal(&primary, 3);
    let endpos = Lsn(start.0 + (2 << 20));
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &primary.conninfo(),
        "--endpos",
        &endpos.to_string(),
        "-n",
        "-v",
    ]);
    assert!(st.success(), "{err}");
    assert!(err.contains("stopped log streaming at"), "{err}");
    let partial = dir.join(format!(
        "{}.partial",
        segment_file_name(1, start.segno(SEG), SEG)
    ));
    compare::partial_matches(&partial, &primary.pg_wal(), endpos.segment_offset(SEG)).unwrap();

    // --no-loop: a failing connection ends walrelay with an error instead of retrying.
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        "host=127.0.0.1 port=1 user=x",
        "-n",
    ]);
    assert!(!st.success());
    assert!(
        err.contains("connection to server at \"127.0.0.1\", port 1 failed"),
        "{err}"
    );
}

#[test]
fn receive_synchronous_standby() {
    let t = TestDir::new("recv-sync");
    let dir = wal_dir(&t);
    let primary = Pg::primary("15", &["synchronous_standby_names = 'walrelay'"]);
    let conninfo = format!("{} application_name=walrelay", primary.conninfo());
    let args = [
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conninfo,
        "--slot",
        "sync",
        "--synchronous",
        "-v",
    ];
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-d",
        &conninfo,
        "--slot",
        "sync",
        "--create-slot",
    ]);
    assert!(st.success(), "{err}");
    let mut w = Walrelay::spawn(&args);
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay is a sync standby",
        || {
            primary.psql(
                "select sync_state from pg_stat_replication where application_name = 'walrelay'",
            ) == "sync"
        },
    );
    primary.psql("create table s (x int); insert into s values (1)");
    w.stop();

    // walrelay stopped: a commit waits for it
    let conn = primary.conninfo();
    let install = primary.install().clone();
    let waiter =
        std::thread::spawn(move || install.psql_conninfo(&conn, "insert into s values (2)"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !waiter.is_finished(),
        "commit completed without the synchronous standby"
    );
    let mut w = Walrelay::spawn(&args);
    let r = waiter.join().unwrap();
    assert!(r.is_ok(), "{r:?}");
    w.stop();
    assert_eq!(primary.psql("select count(*) from s"), "2");
}

#[test]
fn receive_survives_kill9() {
    let t = TestDir::new("recv-kill");
    let dir = wal_dir(&t);
    let primary = Pg::primary("15", &[]);
    let conninfo = primary.conninfo();
    let d = dir.to_str().unwrap().to_string();
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-d",
        &conninfo,
        "--slot",
        "k",
        "--create-slot",
    ]);
    assert!(st.success(), "{err}");
    let load_conn = conninfo.clone();
    let install = primary.install().clone();
    let load = std::thread::spawn(move || {
        install
            .psql_conninfo(&load_conn, "create table filler (id bigserial, pad text)")
            .unwrap();
        for _ in 0..12 {
            install
                .psql_conninfo(&load_conn, "insert into filler (pad) select string_agg(md5(random()::text), '') from generate_series(1, 30) g, generate_series(1, 6000) r group by r")
                .unwrap();
        }
    });
    for i in 0..5 {
        let mut w = Walrelay::spawn(&["receive", "-D", &d, "-d", &conninfo, "--slot", "k"]);
        std::thread::sleep(Duration::from_millis(700 + 300 * i));
        w.kill9();
    }
    load.join().unwrap();
    let end = primary.switch_wal();
    let last = segment_file_name(1, Lsn(end.0 - 1).segno(SEG), SEG);
    let mut w = Walrelay::spawn(&["receive", "-D", &d, "-d", &conninfo, "--slot", "k"]);
    harness::wait_for(
        Duration::from_secs(60),
        "caught up after the crashes",
        || has_file(&dir, &last),
    );
    w.stop();
    let n = compare::assert_segments_identical(&dir, &primary.pg_wal());
    assert!(n >= 4, "{n}");
    let segs = complete_segments(&dir);
    for pair in segs.windows(2) {
        let a = u64::from_str_radix(&pair[0][16..], 16).unwrap();
        let b = u64::from_str_radix(&pair[1][16..], 16).unwrap();
        assert_eq!(a + 1, b, "gap between {} and {}", pair[0], pair[1]);
    }
}

#[test]
fn run_follows_promotion_through_multi_host_conninfo() {
    let t = TestDir::new("run-tli");
    let dir = t.subdir("data");
    let mut primary = Pg::primary("15", &[]);
    let standby = Pg::standby_of(&primary, "15", &primary.conninfo(), &[]);
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        standby.port()
    );
    let mut w = Walrelay::spawn(&[
        "run",
        "--upstream",
        &conninfo,
        "--data-dir",
        dir.to_str().unwrap(),
        "--status-interval",
        "1s",
    ]);
    primary.psql("create table t as select generate_series(1, 100000) x");
    let lsn = primary.current_lsn();
    standby.wait_replayed(lsn, Duration::from_secs(60));
    harness::wait_for(Duration::from_secs(30), "walrelay streaming", || {
        primary.psql("select count(*) from pg_stat_replication where application_name = 'walrelay' and flush_lsn >= '{lsn}'".replace("{lsn}", &lsn.to_string()).as_str()) == "1"
    });
    primary.stop();
    standby.promote();
    standby.psql("insert into t select generate_series(1, 50000)");
    let end = standby.switch_wal();
    let last = segment_file_name(2, Lsn(end.0 - 1).segno(SEG), SEG);
    harness::wait_for(
        Duration::from_secs(90),
        "walrelay follows timeline 2",
        || has_file(&dir, &last),
    );
    w.stop();
    assert!(has_file(&dir, "00000002.history"));
    assert_eq!(
        std::fs::read(dir.join("00000002.history")).unwrap(),
        std::fs::read(standby.pg_wal().join("00000002.history")).unwrap()
    );
    // the old timeline's last segment stays .partial
    let has_old_partial = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            let n = e.file_name().into_string().unwrap();
            n.starts_with("00000001") && n.ends_with(".partial")
        });
    assert!(has_old_partial);
    let n = compare::segments_identical(&dir, &standby.pg_wal()).unwrap();
    assert!(n >= 1);
    let log = w.log();
    assert!(log.contains("switched to timeline 2"), "{log}");
}

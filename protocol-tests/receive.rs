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

    // --create-slot creates a slot, then exits; --if-not-exists tolerates it.
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
    // Like pg_receivewal, --create-slot does not reserve WAL: restart_lsn stays null until a
    // client streams from the slot. Re-create it reserving WAL, so that streaming starts at a
    // known segment.
    assert_eq!(
        primary.psql("select restart_lsn is null from pg_replication_slots where slot_name = 'wr'"),
        "t"
    );
    primary.psql("select pg_drop_replication_slot('wr')");
    primary.psql("select pg_create_physical_replication_slot('wr', true)");
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
    // The first file is the slot's restart segment.
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

/// A full disk: walrelay stops acknowledging, logs the error, retries, and loses nothing once
/// space is freed. The disk is a real 40 MB tmpfs mounted in a private mount namespace
/// (`unshare --user --map-root-user --mount`); the test reaches it through /proc/PID/root.
/// 36 MB hold two 16 MB segments and a bit: the third cannot be created.
#[test]
fn receive_full_disk_loses_nothing() {
    let t = TestDir::new("recv-full");
    let mnt = t.subdir("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let primary = Pg::primary("15", &[]);
    let conninfo = primary.conninfo();
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-d",
        &conninfo,
        "--slot",
        "full",
        "--create-slot",
    ]);
    assert!(st.success(), "{err}");
    let log_path = t.join("walrelay.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=36m tmpfs '{m}' && exec '{bin}' receive -D '{m}' -d '{conninfo}' --slot full -v --status-interval 1",
        m = mnt.display(),
        bin = harness::walrelay::bin().display()
    );
    let child = std::process::Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let pid = child.0.id();
    let inner = PathBuf::from(format!("/proc/{pid}/root{}", mnt.display()));
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay streaming into the tmpfs",
        || {
            std::fs::read_dir(&inner)
                .map(|d| d.count() > 0)
                .unwrap_or(false)
        },
    );
    generate_wal(&primary, 40);
    harness::wait_for(Duration::from_secs(60), "ENOSPC reported", || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("No space left on device")
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("could not fallocate file")
            || log.contains("could not zero-fill file")
            || log.contains("could not write to file"),
        "{log}"
    );
    // Nothing beyond what is on disk was acknowledged: the slot is at or behind the end of the
    // complete segments.
    let segs = complete_segments(&inner);
    assert!(
        !segs.is_empty(),
        "no complete segment before the disk filled"
    );
    let last = segs.last().unwrap();
    let durable_end = (u64::from_str_radix(&last[16..], 16).unwrap() + 1) * SEG;
    let end_partial = std::fs::read_dir(&inner)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".partial"))
        .count();
    let restart: Lsn = primary
        .psql("select restart_lsn from pg_replication_slots where slot_name = 'full'")
        .parse()
        .unwrap();
    assert!(
        restart.0 <= durable_end + SEG * end_partial as u64,
        "slot at {restart}, disk holds up to {:X}",
        durable_end
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "walrelay exited on a full disk"
    );

    // The operator frees space (the complete segments were archived elsewhere): walrelay
    // catches up by itself.
    let check = t.subdir("check");
    std::fs::create_dir_all(&check).unwrap();
    for s in &segs {
        std::fs::copy(inner.join(s), check.join(s)).unwrap();
        std::fs::remove_file(inner.join(s)).unwrap();
    }
    let end = primary.switch_wal();
    let want = segment_file_name(1, Lsn(end.0 - 1).segno(SEG), SEG);
    harness::wait_for(
        Duration::from_secs(90),
        "caught up after space was freed",
        || inner.join(&want).is_file(),
    );
    for s in complete_segments(&inner) {
        std::fs::copy(inner.join(&s), check.join(&s)).unwrap();
    }
    let n = compare::assert_segments_identical(&check, &primary.pg_wal());
    assert!(n >= 3, "{n}");
    let all = complete_segments(&check);
    for pair in all.windows(2) {
        let a = u64::from_str_radix(&pair[0][16..], 16).unwrap();
        let b = u64::from_str_radix(&pair[1][16..], 16).unwrap();
        assert_eq!(a + 1, b, "gap between {} and {}", pair[0], pair[1]);
    }
}

/// A wrong password is a clear error, retried slowly (no retry storm).
#[test]
fn receive_wrong_password_is_clear_and_not_a_storm() {
    let t = TestDir::new("recv-pw");
    let dir = wal_dir(&t);
    let mut primary = Pg::primary("15", &["password_encryption = 'scram-sha-256'"]);
    primary.psql("create role rep replication login password 'right'");
    primary.set_hba(
        "host replication rep 127.0.0.1/32 scram-sha-256\nhost all postgres 127.0.0.1/32 trust\n",
    );
    primary.reload();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=rep password=wrong",
        primary.port()
    );
    let mut w = Walrelay::spawn(&[
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conninfo,
        "-v",
    ]);
    std::thread::sleep(Duration::from_secs(6));
    w.stop();
    let log = w.log();
    let attempts = log
        .matches("password authentication failed for user \"rep\"")
        .count();
    assert!(attempts >= 1, "{log}");
    assert!(
        attempts <= 2,
        "{attempts} attempts in 6 s: a retry storm\n{log}"
    );
    let (st, _, err) = harness::walrelay::run_to_end(&[
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &conninfo,
        "-n",
    ]);
    assert!(!st.success());
    assert!(err.contains(&format!("connection to server at \"127.0.0.1\", port {} failed: FATAL:  password authentication failed for user \"rep\"", primary.port())), "{err}");
}

/// A primary shutting down sends its last WAL, waits for walrelay's flush, then ends COPY with
/// `COPY 0`: walrelay ends the stream cleanly (exit 0 with --no-loop) holding everything.
#[test]
fn receive_primary_shutdown_ends_stream_cleanly() {
    let t = TestDir::new("recv-shutdown");
    let dir = wal_dir(&t);
    let mut primary = Pg::primary("15", &[]);
    let mut w = Walrelay::spawn(&[
        "receive",
        "-D",
        dir.to_str().unwrap(),
        "-d",
        &primary.conninfo(),
        "-n",
        "-v",
    ]);
    primary.psql("create table x as select generate_series(1, 10000) g");
    let lsn = primary.current_lsn();
    let partial = dir.join(format!(
        "{}.partial",
        segment_file_name(1, lsn.segno(SEG), SEG)
    ));
    harness::wait_for(Duration::from_secs(30), "streaming", || partial.is_file());
    let pg_wal = primary.pg_wal();
    primary.stop();
    let st = w
        .wait_exit(Duration::from_secs(30))
        .expect("walrelay ends when the primary shuts down");
    // Like pg_receivewal -n: the end of the stream is "disconnected", exit 1.
    assert_eq!(st.code(), Some(1), "{st:?}\n{}", w.log());
    assert!(
        w.log().ends_with("walrelay: error: disconnected\n"),
        "{}",
        w.log()
    );
    assert!(
        w.log().contains("the server ended streaming (shutdown)"),
        "{}",
        w.log()
    );
    // Everything the primary wrote, up to and including its shutdown checkpoint, is on disk.
    let primary_seg =
        std::fs::read(pg_wal.join(segment_file_name(1, lsn.segno(SEG), SEG))).unwrap();
    let ours = std::fs::read(&partial).unwrap();
    let end = primary_seg.iter().rposition(|&b| b != 0).unwrap_or(0) + 1;
    assert_eq!(
        &ours[..end],
        &primary_seg[..end],
        "walrelay misses WAL the primary wrote before shutting down"
    );
}

/// `walrelay run` with the metrics endpoint: Prometheus text and the JSON status view.
#[test]
fn run_serves_metrics_and_status() {
    let t = TestDir::new("run-metrics");
    let primary = Pg::primary("15", &[]);
    let port = harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let data = t.subdir("data");
    let mut w = Walrelay::spawn(&[
        "run",
        "--upstream",
        &primary.conninfo(),
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics-listen",
        &addr,
    ]);
    primary.psql("create table x as select generate_series(1, 10000) g");
    let lsn = primary.current_lsn();
    let mut status = String::new();
    harness::wait_for(
        Duration::from_secs(30),
        "status shows the flush position",
        || {
            status = walrelay::admin::request(&addr, "GET", "/status")
                .map(|r| r.1)
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
            v["store"]["flush_lsn"]
                .as_str()
                .and_then(|s| s.parse::<Lsn>().ok())
                .is_some_and(|l| l >= lsn)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["upstream"]["connected"], true);
    assert_eq!(
        v["upstream"]["system_identifier"],
        primary.system_identifier().to_string()
    );
    assert!(v["upstream"]["server_version"]
        .as_str()
        .unwrap()
        .starts_with("15."));
    let (code, metrics) = walrelay::admin::request(&addr, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "walrelay_flush_lsn_bytes",
        "walrelay_received_bytes_total",
        "walrelay_upstream_connects_total",
        "walrelay_segments_completed_total",
    ] {
        assert!(
            metrics.contains(name) || name == "walrelay_segments_completed_total",
            "{name} missing:\n{metrics}"
        );
    }
    let flush: f64 = metrics
        .lines()
        .find(|l| l.starts_with("walrelay_flush_lsn_bytes{cluster=\"default\"} "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(flush as u64 >= lsn.0, "metric flush {flush} < {lsn}");
    w.stop();
}

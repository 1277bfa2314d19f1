//! Durable state and fail-closed behaviour around it, against real servers: a corrupt
//! `feeds.json` stops start-up, a slow `slots.json` write (the test-only failpoint
//! `WALRELAY_FAILPOINT_SLOTS_WRITE_DELAY_MS`) does not hold up WAL on its way to a standby,
//! a gap in the commit index holds a delayed standby, and a tripwire's "held at" is reached
//! by the standby's replay.
use std::time::{Duration, Instant};

use crate::harness::{self, pg::Pg, walrelay::Walrelay, TestDir};
use crate::server_common::Relay;
use walrelay::Lsn;

fn count(pg: &Pg, table: &str) -> Option<i64> {
    pg.try_psql(&format!("select count(*) from {table}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// A `feeds.json` that cannot be parsed stops `walrelay run` with a message naming the
/// file, the problem and the way out (it was ignored, and with it every pause hold).
#[test]
fn corrupt_feeds_json_stops_start_up() {
    let t = TestDir::new("state-corrupt");
    let data = t.subdir("relay");
    std::fs::create_dir_all(data.join("delay")).unwrap();
    let feeds = data.join("delay").join("feeds.json");
    std::fs::write(
        &feeds,
        b"{\"feeds\": {\"lag\": {\"hold\": {\"kind\": \"paused\", \"at\": \"0/30",
    )
    .unwrap();
    let cfg = t.join("walrelay.toml");
    std::fs::write(&cfg, "[[feed]]\nname = \"lag\"\ndelay = \"1h\"\n").unwrap();
    let log = t.join("walrelay.log");
    let mut w = Walrelay::spawn_with(
        &log,
        &[
            "run",
            "--upstream",
            "host=127.0.0.1 port=1 connect_timeout=1",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    let st = w
        .wait_exit(Duration::from_secs(30))
        .expect("walrelay started with a corrupt feeds.json");
    assert!(!st.success(), "{st:?}");
    let out = w.output();
    assert!(
        out.contains(&format!("state file \"{}\" is unusable", feeds.display())),
        "{out}"
    );
    assert!(out.contains("invalid JSON"), "{out}");
    assert!(
        out.contains("Restore it from a backup, or remove it to reset every feed"),
        "{out}"
    );
    // the file is left for the operator
    assert!(feeds.is_file());
}

/// `walrelay run` on `data` in front of `primary`, with extra environment variables.
fn relay_with_env(
    t: &TestDir,
    primary: &Pg,
    data: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
) -> Relay {
    let log = t.join("walrelay.log");
    let listen = format!("127.0.0.1:{port}");
    let upstream = primary.conninfo();
    let args = vec![
        "run",
        "--upstream",
        &upstream,
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--status-interval",
        "1s",
    ];
    let mut all = vec![("WALRELAY_LOG", "info")];
    all.extend_from_slice(env);
    let proc = Walrelay::spawn_with(&log, &args, &all);
    let r = Relay {
        proc,
        port,
        data: data.to_path_buf(),
        log,
        probe: String::new(),
    };
    let target = primary.current_lsn();
    harness::wait_for(Duration::from_secs(30), "walrelay to serve", || {
        r.identify(primary).is_some_and(|(_, _, pos)| pos >= target)
    });
    r
}

/// With every `slots.json` write stalled for two minutes, a standby streaming through a
/// walrelay slot keeps receiving WAL (rows appear on it), and the primary keeps seeing
/// walrelay's flush position move: the write runs on the state writer thread with a
/// snapshot, not under the slot mutex every standby reply takes.
#[test]
fn slow_slots_json_write_does_not_stall_standbys() {
    let major = harness::majors().first().cloned().unwrap_or("15".into());
    let t = TestDir::new("state-slots");
    let primary = Pg::primary(&major, &[]);
    primary.psql("create table t (id int)");
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    // first run: create the slot (its write is not delayed)
    let mut relay = relay_with_env(&t, &primary, &data, port, &[]);
    primary
        .install()
        .psql_conninfo(
            &format!("{} replication=true", relay.conninfo("psql")),
            "CREATE_REPLICATION_SLOT sb PHYSICAL RESERVE_WAL",
        )
        .unwrap();
    assert!(relay.proc.stop().success());
    // second run: every slots.json write takes 120 s
    relay = relay_with_env(
        &t,
        &primary,
        &data,
        port,
        &[(walrelay::statefile::FAILPOINT_SLOTS_WRITE_DELAY, "120000")],
    );
    let sb = Pg::standby_of(
        &primary,
        &major,
        &relay.conninfo("sb"),
        &["primary_slot_name = 'sb'"],
    );
    harness::wait_for(Duration::from_secs(30), "the standby to connect", || {
        sb.try_psql("select 1").is_ok()
    });
    // the standby's replies move the slot: a slots.json write starts and stalls
    primary.psql("insert into t values (1)");
    harness::wait_for(Duration::from_secs(30), "row 1 on the standby", || {
        count(&sb, "t") == Some(1)
    });
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    for i in 2..=20 {
        primary.psql(&format!("insert into t values ({i})"));
    }
    let lsn = primary.current_lsn();
    // well inside the stalled write
    harness::wait_for(
        Duration::from_secs(40),
        "rows 2..20 on the standby while slots.json is being written",
        || count(&sb, "t") == Some(20),
    );
    relay.wait_flush(&primary, lsn);
    assert!(
        t0.elapsed() < Duration::from_secs(100),
        "the rows arrived only after the stalled write"
    );
    let sr = primary.psql(
        "select flush_lsn >= pg_current_wal_lsn() - 1000000 from pg_stat_replication where application_name = 'walrelay'",
    );
    assert_eq!(sr.trim(), "t", "{sr}");
}

/// The commit of `xid` as `walrelay xacts -D` decodes it: its LSN.
fn commit_lsn(dir: &std::path::Path, xid: u32) -> Lsn {
    let (st, out, err) = harness::walrelay::run_to_end(&[
        "xacts",
        "-D",
        dir.to_str().unwrap(),
        "--since",
        "now-1h",
        "--json",
    ]);
    assert!(st.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = v["xacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["xid"] == xid && e["kind"] == "commit")
        .unwrap_or_else(|| panic!("no commit of {xid} in {out}"));
    e["lsn"].as_str().unwrap().parse().unwrap()
}

/// A gap in the commit index (a record it cannot decode) holds the delayed standby before
/// it, in a state of its own, until an operator acts: the DROP TABLE committed after the
/// damaged record does not reach the standby (it used to, with no delay and no tripwire).
#[test]
fn index_gap_holds_the_delayed_standby() {
    let major = harness::majors().first().cloned().unwrap_or("15".into());
    let t = TestDir::new("state-gap");
    let primary = Pg::primary(&major, &[]);
    let admin = format!("127.0.0.1:{}", harness::free_port());
    let cfg = t.join("walrelay.toml");
    let write_cfg = |delay: &str| {
        std::fs::write(
            &cfg,
            format!("[metrics]\nlisten = \"{admin}\"\n\n[[feed]]\nname = \"lag\"\ndelay = \"{delay}\"\n"),
        )
        .unwrap()
    };
    // a long delay first: nothing after the standby's start is sent
    write_cfg("1h");
    primary.psql("create table t (id int); insert into t values (1)");
    let mut relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let sb = Pg::standby_of(&primary, &major, &relay.conninfo("lag"), &[]);
    harness::wait_for(Duration::from_secs(30), "the standby", || {
        count(&sb, "t") == Some(1)
    });
    let xid: u32 = primary
        .psql("begin; insert into t values (2); select txid_current() % 4294967296; commit;")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap();
    primary.psql("drop table t");
    primary.switch_wal();
    primary.psql("create table later (id int)");
    relay.wait_flush(&primary, primary.current_lsn());
    assert!(relay.proc.stop().success());
    // damage the CRC of the insert's commit record (in a completed segment), and let the
    // index be rebuilt from the segments
    let lsn = commit_lsn(&relay.data, xid);
    let seg = 16u64 << 20;
    let name = walrelay::lsn::segment_file_name(1, lsn.segno(seg), seg);
    let path = relay.data.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (lsn.segment_offset(seg) + 20) as usize;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(relay.data.join("delay").join("commit-index")).unwrap();
    // restart with a short delay: everything would be due
    write_cfg("1s");
    let (data, port) = (relay.data.clone(), relay.port);
    relay = Relay::start_on(
        &t,
        &primary,
        &data,
        port,
        &["--config", cfg.to_str().unwrap()],
    );
    let control_dir = relay.data.to_str().unwrap().to_string();
    let feed = || -> serde_json::Value {
        // the control endpoint is the Unix socket in the data directory (wt-control)
        let (st, out, err) =
            harness::walrelay::run_to_end(&["feed", "list", "--json", "--data-dir", &control_dir]);
        assert!(st.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["feeds"][0].clone()
    };
    harness::wait_for(
        Duration::from_secs(30),
        "the feed to be held at the gap",
        || feed()["state"] == "index_gap",
    );
    let f = feed();
    let held: Lsn = f["held_at"].as_str().unwrap().parse().unwrap();
    assert!(
        held <= lsn,
        "held at {held}, after the damaged record at {lsn}: {f}"
    );
    // the standby is held: the table is still there, well past the delay
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        count(&sb, "t"),
        Some(1),
        "the DROP reached the delayed standby"
    );
    assert_eq!(feed()["state"], "index_gap");
    let log = relay.log();
    assert!(log.contains("commit index gap: WAL from"), "{log}");
    assert!(log.contains("feed \"lag\" is held at"), "{log}");
}

/// A tripwire's "held at" is where the feed stopped: the delayed standby's replay reaches it
/// (the runbook waits for that), and the table is still there.
#[test]
fn tripwire_held_at_is_reached_by_replay() {
    let major = harness::majors().first().cloned().unwrap_or("15".into());
    let t = TestDir::new("state-heldat");
    let primary = Pg::primary(&major, &[]);
    let admin = format!("127.0.0.1:{}", harness::free_port());
    let cfg = t.join("walrelay.toml");
    std::fs::write(
        &cfg,
        format!("[metrics]\nlisten = \"{admin}\"\n\n[[feed]]\nname = \"lag\"\ndelay = \"1s\"\n"),
    )
    .unwrap();
    primary.psql("create table a (id int); insert into a values (1)");
    let relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let sb = Pg::standby_of(&primary, &major, &relay.conninfo("lag"), &[]);
    harness::wait_for(Duration::from_secs(30), "the standby", || {
        count(&sb, "a") == Some(1)
    });
    primary.psql("drop table a");
    primary.psql("create table b (id int)");
    let control_dir = relay.data.to_str().unwrap().to_string();
    let feed = || -> serde_json::Value {
        // the control endpoint is the Unix socket in the data directory (wt-control)
        let (st, out, err) =
            harness::walrelay::run_to_end(&["feed", "list", "--json", "--data-dir", &control_dir]);
        assert!(st.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["feeds"][0].clone()
    };
    harness::wait_for(Duration::from_secs(30), "the tripwire", || {
        feed()["state"] == "tripwire"
    });
    let f = feed();
    let held: Lsn = f["held_at"].as_str().unwrap().parse().unwrap();
    let commit: Lsn = f["waiting_commit"]["lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(held < commit, "{f}");
    harness::wait_for(
        Duration::from_secs(30),
        "the standby's replay to reach \"held at\"",
        || sb.replay_lsn().is_some_and(|r| r >= held),
    );
    assert_eq!(sb.replay_lsn(), Some(held), "replay went past \"held at\"");
    assert_eq!(count(&sb, "a"), Some(1));
}

//! Delayed feeds against real servers: a standby streams from walrelay under a `[[feed]]`
//! with a delay of a few seconds; pause/resume, advance, the tripwire and the whole
//! "someone dropped a table" drill.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::{self, pg::Pg, walrelay::run_to_end, TestDir};
use crate::server_common::Relay;

struct Setup {
    t: TestDir,
    primary: Pg,
    relay: Relay,
    /// The metrics listener (read-only).
    metrics: String,
    /// `--data-dir DIR`: where the CLI finds the control socket.
    data_dir: String,
}

/// A primary, and walrelay in front of it with the given `[[feed]]` TOML and a metrics
/// listener; feed control goes through the control socket in the data directory.
fn setup(major: &str, feeds_toml: &str) -> Setup {
    let t = TestDir::new("delay");
    let primary = Pg::primary(major, &[]);
    let metrics = format!("127.0.0.1:{}", harness::free_port());
    let cfg = t.join("walrelay.toml");
    std::fs::write(
        &cfg,
        format!("[metrics]\nlisten = \"{metrics}\"\n\n{feeds_toml}\n"),
    )
    .unwrap();
    let relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let data_dir = relay.data.to_str().unwrap().to_string();
    Setup {
        t,
        primary,
        relay,
        metrics,
        data_dir,
    }
}

impl Setup {
    fn walrelay(&self, args: &[&str]) -> String {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--data-dir", &self.data_dir]);
        let (st, out, err) = run_to_end(&a);
        assert!(st.success(), "walrelay {args:?} failed: {err}\n{out}");
        out
    }

    fn feed_json(&self, name: &str) -> serde_json::Value {
        let out = self.walrelay(&["feed", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap()
    }

    fn standby(&self, app: &str) -> Pg {
        let sb = Pg::standby_of(
            &self.primary,
            self.primary.major(),
            &self.relay.conninfo(app),
            &[],
        );
        harness::wait_for(
            Duration::from_secs(30),
            "the standby to accept connections",
            || sb.try_psql("select 1").is_ok(),
        );
        sb
    }
}

fn count(pg: &Pg, table: &str) -> Option<i64> {
    pg.try_psql(&format!("select count(*) from {table}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Runs `sql` on the primary and returns the top-level xid it committed.
fn xid_of(pg: &Pg, sql: &str) -> u32 {
    let out = pg.psql(&format!(
        "begin; {sql}; select txid_current() % 4294967296; commit;"
    ));
    out.lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no xid in {out:?}"))
}

fn delay_visibility(major: &str) {
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let delay = Duration::from_secs(3);
    let s = setup(major, "[[feed]]\nname = \"lag\"\ndelay = \"3s\"\n");
    s.primary.psql("create table t (id int)");
    let sb = s.standby("lag");
    harness::wait_for(Duration::from_secs(30), "the table on the standby", || {
        count(&sb, "t").is_some()
    });
    for round in 0..2 {
        let t0 = Instant::now();
        s.primary.psql(&format!("insert into t values ({round})"));
        let seen = loop {
            let n = count(&sb, "t").unwrap_or(0);
            if n == round + 1 {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < delay + Duration::from_secs(15),
                "row {round} not visible on the delayed standby after {:?}",
                t0.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            seen + Duration::from_millis(200) >= delay,
            "row {round} visible after {seen:?}, before the delay of {delay:?}"
        );
        eprintln!("pg{major}: row {round} visible after {seen:?} (delay {delay:?})");
    }
    // the feed list shows the feed with its session
    let f = s.feed_json("lag");
    assert_eq!(f["sessions"], 1, "{f}");
    assert_eq!(f["delay"], "3s");
    // a feed without a rule streams undelayed: a second standby sees rows right away
    let fast = s.standby("other");
    let t0 = Instant::now();
    s.primary.psql("insert into t values (99)");
    harness::wait_for(Duration::from_secs(20), "the undelayed standby", || {
        count(&fast, "t") == Some(3)
    });
    assert!(
        t0.elapsed() < delay,
        "undelayed standby took {:?}",
        t0.elapsed()
    );
}

#[test]
fn delay_visibility_pg15() {
    delay_visibility("15");
}

#[test]
fn delay_visibility_pg18() {
    delay_visibility("18");
}

#[test]
fn delay_pause_resume() {
    let major = harness::majors().last().cloned().unwrap_or("18".into());
    let s = setup(&major, "[[feed]]\nname = \"lag\"\ndelay = \"2s\"\n");
    s.primary.psql("create table t (id int)");
    let sb = s.standby("lag");
    s.primary.psql("insert into t values (1)");
    harness::wait_for(Duration::from_secs(30), "row 1 on the standby", || {
        count(&sb, "t") == Some(1)
    });
    s.walrelay(&["feed", "pause", "lag"]);
    let f = s.feed_json("lag");
    assert_eq!(f["state"], "paused", "{f}");
    // the primary keeps writing; the standby stays where it is, past the delay
    for i in 2..=20 {
        s.primary.psql(&format!("insert into t values ({i})"));
    }
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_secs(5) {
        assert_eq!(count(&sb, "t"), Some(1), "the paused standby moved");
        std::thread::sleep(Duration::from_millis(250));
    }
    // still connected (keepalives), so resume catches it up to the delay
    let t0 = Instant::now();
    s.walrelay(&["feed", "resume", "lag"]);
    harness::wait_for(
        Duration::from_secs(17),
        "the standby to catch up after resume",
        || count(&sb, "t") == Some(20),
    );
    eprintln!("caught up {:?} after resume", t0.elapsed());
    assert_eq!(s.feed_json("lag")["state"], "caught_up");
    let _ = &s.t;
}

#[test]
fn delay_advance_before_xid() {
    let major = harness::majors().first().cloned().unwrap_or("15".into());
    // a long delay: nothing reaches the standby unless the operator moves it
    let s = setup(
        &major,
        "[[feed]]\nname = \"lag\"\ndelay = \"1h\"\ntripwire = false\n",
    );
    let sb = s.standby("lag");
    s.primary.psql("create table precious (id int, v text)");
    for i in 0..10 {
        s.primary.psql(&format!(
            "insert into precious select g, md5(g::text) from generate_series({}, {}) g",
            i * 100 + 1,
            i * 100 + 100
        ));
    }
    let xid = xid_of(&s.primary, "drop table precious");
    s.primary.psql("create table after_drop (id int)");
    s.relay.wait_flush(&s.primary, s.primary.current_lsn());
    // find the bad transaction with `walrelay xacts`
    harness::wait_for(
        Duration::from_secs(20),
        "the drop in walrelay xacts",
        || {
            s.walrelay(&["xacts", "--since", "now-10m", "--drops-only"])
                .contains(&format!(" {xid} "))
        },
    );
    let offline = run_to_end(&[
        "xacts",
        "-D",
        s.relay.data.to_str().unwrap(),
        "--drops-only",
        "--since",
        "now-10m",
    ]);
    assert!(offline.0.success(), "{}", offline.2);
    assert!(offline.1.contains(&format!(" {xid} ")), "{}", offline.1);
    assert!(offline.1.contains("base/5/"), "{}", offline.1);
    assert_eq!(count(&sb, "precious"), None, "nothing passed the 1h delay");

    let out = s.walrelay(&["feed", "advance", "lag", "--before-xid", &xid.to_string()]);
    assert!(out.contains("advanced"), "{out}");
    harness::wait_for(Duration::from_secs(30), "the table before the drop", || {
        count(&sb, "precious") == Some(1000)
    });
    // held there: the drop and what followed never arrive
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&sb, "precious"), Some(1000));
    assert_eq!(count(&sb, "after_drop"), None);
    assert_eq!(s.feed_json("lag")["state"], "advanced");
    // going back is refused
    let (st, _, err) = run_to_end(&[
        "feed",
        "advance",
        "lag",
        "--to-lsn",
        "0/1000000",
        "--data-dir",
        &s.data_dir,
    ]);
    assert!(!st.success() && err.contains("cannot go back"), "{err}");
}

#[test]
fn delay_tripwire_drop_and_truncate() {
    let major = harness::majors().last().cloned().unwrap_or("18".into());
    let s = setup(&major, "[[feed]]\nname = \"lag\"\ndelay = \"2s\"\n");
    s.primary
        .psql("create table a (id int); create table b (id int); insert into a values (1); insert into b values (1)");
    let sb = s.standby("lag");
    harness::wait_for(Duration::from_secs(30), "rows on the standby", || {
        count(&sb, "b") == Some(1)
    });
    let drop_xid = xid_of(&s.primary, "drop table a");
    s.primary.psql("insert into b values (2)");
    // past the delay, the standby still has table a and not the later row
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        count(&sb, "a"),
        Some(1),
        "the tripwire did not hold before DROP TABLE"
    );
    assert_eq!(count(&sb, "b"), Some(1));
    let f = s.feed_json("lag");
    assert_eq!(f["state"], "tripwire", "{f}");
    assert_eq!(f["waiting_commit"]["xid"], drop_xid);
    let log = s.relay.log();
    assert!(
        log.contains(&format!(
            "tripwire: held feed \"lag\" before xid {drop_xid} committed at"
        )),
        "{log}"
    );
    // the operator lets it go
    s.walrelay(&["feed", "resume", "lag"]);
    harness::wait_for(
        Duration::from_secs(17),
        "the drop to reach the standby",
        || count(&sb, "b") == Some(2) && count(&sb, "a").is_none(),
    );
    // TRUNCATE drops the old relation file too
    let trunc_xid = xid_of(&s.primary, "truncate b");
    s.primary.psql("insert into b values (3)");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        count(&sb, "b"),
        Some(2),
        "the tripwire did not hold before TRUNCATE"
    );
    assert_eq!(s.feed_json("lag")["waiting_commit"]["xid"], trunc_xid);
    let metrics =
        crate::harness::walrelay::run_to_end(&["feed", "list", "--data-dir", &s.data_dir]).1;
    assert!(metrics.contains("tripwire"), "{metrics}");
    let (_, body) = walrelay::admin::request(&s.metrics, "GET", "/metrics").unwrap();
    assert!(
        body.contains("walrelay_feed_tripwire_total{cluster=\"default\",feed=\"lag\"} 2"),
        "{body}"
    );
}

/// The whole drill: traffic, a table dropped by mistake, more traffic; the tripwire holds the
/// delayed standby; the table is dumped from it and restored into the primary; nothing
/// committed after the drop is lost.
#[test]
fn delay_drill_restore_dropped_table() {
    let major = harness::majors().first().cloned().unwrap_or("15".into());
    let s = setup(&major, "[[feed]]\nname = \"lag\"\ndelay = \"3s\"\n");
    let p = &s.primary;
    p.psql("create table labels (id int primary key, name text); create table events (id serial primary key, note text)");
    let sb = s.standby("lag");
    for i in 0..20 {
        p.psql(&format!(
            "insert into labels select g, 'label ' || g from generate_series({}, {}) g; insert into events (note) values ('before {i}')",
            i * 10 + 1,
            i * 10 + 10
        ));
    }
    harness::wait_for(
        Duration::from_secs(30),
        "labels on the delayed standby",
        || count(&sb, "labels") == Some(200),
    );
    // the mistake, then life goes on
    let bad = xid_of(p, "drop table labels");
    for i in 0..30 {
        p.psql(&format!("insert into events (note) values ('after {i}')"));
    }
    std::thread::sleep(Duration::from_secs(5));
    // the operator finds the drop and sees the feed held before it
    let x = s.walrelay(&["xacts", "--since", "now-10m", "--drops-only"]);
    assert!(x.contains(&format!(" {bad} ")), "{x}");
    let f = s.feed_json("lag");
    assert_eq!(f["state"], "tripwire", "{f}");
    assert_eq!(count(&sb, "labels"), Some(200));
    // dump the table from the standby, restore it into the primary
    let dump: PathBuf = s.t.join("labels.sql");
    let out = sb
        .install()
        .command("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &sb.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-t", "labels", "-f"])
        .arg(&dump)
        .arg("postgres")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p
        .install()
        .command("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &p.port().to_string(),
        ])
        .args(["-U", "postgres", "-d", "postgres", "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(p, "labels"), Some(200));
    assert_eq!(
        p.psql("select count(*) from events where note like 'after %'"),
        "30"
    );
    assert_eq!(count(p, "events"), Some(50));
    // the standby follows again once resumed, and gets the restored table too
    s.walrelay(&["feed", "resume", "lag"]);
    harness::wait_for(
        Duration::from_secs(20),
        "the standby to follow again",
        || count(&sb, "events") == Some(50) && count(&sb, "labels") == Some(200),
    );
}

/// A hold survives a walrelay restart: the paused feed is still paused afterwards, the
/// standby reconnects and does not move, and resume then catches it up.
#[test]
fn delay_hold_survives_restart() {
    let major = harness::majors().first().cloned().unwrap_or("15".into());
    let mut s = setup(&major, "[[feed]]\nname = \"lag\"\ndelay = \"2s\"\n");
    s.primary.psql("create table t (id int)");
    let sb = s.standby("lag");
    s.primary.psql("insert into t values (1)");
    harness::wait_for(Duration::from_secs(30), "row 1 on the standby", || {
        count(&sb, "t") == Some(1)
    });
    s.walrelay(&["feed", "pause", "lag"]);
    for i in 2..=10 {
        s.primary.psql(&format!("insert into t values ({i})"));
    }
    // restart walrelay on the same data directory, port and configuration
    let st = s.relay.proc.stop();
    assert!(st.success(), "{st:?}");
    let (data, port) = (s.relay.data.clone(), s.relay.port);
    let cfg = s.t.join("walrelay.toml");
    s.relay = Relay::start_on(
        &s.t,
        &s.primary,
        &data,
        port,
        &["--config", cfg.to_str().unwrap()],
    );
    assert_eq!(
        s.feed_json("lag")["state"],
        "paused",
        "the hold was lost in the restart"
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            count(&sb, "t"),
            Some(1),
            "the paused standby moved after the restart"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    s.walrelay(&["feed", "resume", "lag"]);
    harness::wait_for(
        Duration::from_secs(30),
        "the standby to catch up after resume",
        || count(&sb, "t") == Some(10),
    );
}

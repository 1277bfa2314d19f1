//! An HA pair of walrelay instances in front of one real primary (PostgreSQL 15 and 18):
//! walrelay A and B, each with its own upstream slot, archiving to the same `file://` prefix,
//! both declaring the proxy slot `standby1` in `[server] slots`. A real hot standby lists
//! both in `primary_conninfo` (libpq multi-host) with `primary_slot_name = 'standby1'`.
//!
//! `ha_pair_pg15` / `ha_pair_pg18`: under an insert load, `kill -9` A → the standby streams
//! from B; A restarted, `kill -9` B → back on A; after the load the standby has exactly the
//! primary's rows. A client's DROP_REPLICATION_SLOT of the declared slot fails with 55000 and
//! the slot survives restarts. Then B is restarted and both catch up: no archive conflict on
//! either (logs and `walrelay_archive_conflicts_total` = 0), both found segments the other had
//! uploaded ("already archived with the same content"), `walrelay verify` exits 0 with no gap,
//! every archived segment still in the primary's `pg_wal` is byte-identical to it. Holds:
//! `walrelay feed advance --control A --control B` holds the feed of both at the same LSN;
//! `feed pause|resume --group` with both `--control`s pauses/resumes both; with B down,
//! `feed pause` reports A ok, B failed, and exits non-zero. Local retention on B removes
//! archived segments behind its inactive declared slot; a standby stopped meanwhile comes back
//! on B (A down) and gets those segments from the shared archive, with every row.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walrelay::lsn::Lsn;

use crate::harness::pg::{Pg, PgInstall};
use crate::harness::walrelay::{run_to_end, Walrelay};
use crate::harness::{self, compare, wait_for, TestDir};

/// One instance of the pair: its config, data directory, ports and log.
struct Instance {
    name: &'static str,
    conf: PathBuf,
    data: PathBuf,
    port: u16,
    metrics: u16,
    log: PathBuf,
    proc: Option<Walrelay>,
    /// Logs of earlier incarnations (killed), for the conflict check.
    old_logs: Vec<String>,
}

impl Instance {
    fn new(t: &TestDir, name: &'static str, primary: &Pg, archive: &Path) -> Instance {
        let data = t.subdir(&format!("relay-{name}"));
        let port = harness::free_port();
        let metrics = harness::free_port();
        let conf = t.join(format!("walrelay-{name}.toml"));
        std::fs::write(
            &conf,
            format!(
                "data_dir = \"{data}\"\n\
                 [upstream]\nconninfo = \"{up}\"\nslot = \"walrelay_{name}\"\ncreate_slot = true\n\
                 status_interval = \"1s\"\n\
                 [server]\nlisten = \"127.0.0.1:{port}\"\nslots = [\"standby1\"]\n\
                 [archive]\nurl = \"file://{archive}\"\nscan_interval = \"200ms\"\n\
                 partial_interval = \"1s\"\nkeep_local_size = \"32MB\"\nkeep_local_age = \"0s\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
                 [[feed]]\nname = \"lag\"\ndelay = \"1h\"\ntripwire = false\n",
                data = data.display(),
                up = primary.conninfo(),
                archive = archive.display(),
            ),
        )
        .unwrap();
        Instance {
            name,
            conf,
            log: t.join(format!("walrelay-{name}.log")),
            data,
            port,
            metrics,
            proc: None,
            old_logs: Vec::new(),
        }
    }

    fn start(&mut self, primary: &Pg) {
        let conf = self.conf.display().to_string();
        let _ = std::fs::remove_file(&self.log);
        self.proc = Some(Walrelay::spawn_with(
            &self.log,
            &["run", "-c", &conf],
            &[("WALRELAY_LOG", "info")],
        ));
        let target = primary.current_lsn();
        wait_for(
            Duration::from_secs(60),
            &format!("walrelay {} to serve", self.name),
            || self.identify(primary).is_some_and(|p| p >= target),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        self.old_logs.push(self.log());
    }

    fn control(&self) -> String {
        self.data
            .join("walrelay.control.sock")
            .display()
            .to_string()
    }

    fn repl(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres replication=true",
            self.port
        )
    }

    fn identify(&self, pg: &Pg) -> Option<Lsn> {
        let out = pg
            .install()
            .psql_conninfo(&self.repl(), "IDENTIFY_SYSTEM")
            .ok()?;
        out.split('|').nth(2)?.parse().ok()
    }

    fn log(&self) -> String {
        harness::read_lossy(&self.log)
    }

    /// `restart_lsn` of the declared slot (None: NULL).
    fn standby1_restart(&self, pg: &Pg) -> Option<Lsn> {
        let row = pg
            .install()
            .psql_conninfo(&self.repl(), "READ_REPLICATION_SLOT standby1")
            .ok()?;
        row.split('|').nth(1)?.parse().ok()
    }

    fn all_logs(&self) -> Vec<String> {
        let mut v = self.old_logs.clone();
        v.push(self.log());
        v
    }
}

/// The value of `name` on `/metrics` (0 when absent; None when the endpoint does not answer).
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name || k.starts_with(&format!("{name}{{"))).then(|| v.parse().ok())?
            })
            .unwrap_or(0.0),
    )
}

/// The port of the walsender the standby streams from (None: not streaming).
fn sender_port(standby: &Pg) -> Option<u16> {
    standby
        .try_psql("select sender_port from pg_stat_wal_receiver where status = 'streaming'")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Inserts batches of 200 rows into `t` until stopped, with a segment switch every 20
/// batches (so segments complete and get archived by both instances).
fn load(
    major: &str,
    conninfo: String,
    stop: Arc<AtomicBool>,
    batches: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let install = PgInstall::get(major);
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            install
                .psql_conninfo(
                    &conninfo,
                    "insert into t (pad) select md5(g::text) from generate_series(1, 200) g",
                )
                .expect("insert on the primary");
            n += 1;
            batches.store(n, Ordering::SeqCst);
            if n % 20 == 0 {
                install
                    .psql_conninfo(&conninfo, "select pg_switch_wal()")
                    .expect("switch wal");
            }
        }
    })
}

/// Waits until the load made `more` further batches.
fn wait_batches(batches: &AtomicU64, more: u64) {
    let target = batches.load(Ordering::SeqCst) + more;
    wait_for(
        Duration::from_secs(60),
        &format!("{more} more batches of load"),
        || batches.load(Ordering::SeqCst) >= target,
    );
}

fn wait_streaming_from(standby: &Pg, port: u16, what: &str) {
    wait_for(Duration::from_secs(60), what, || {
        sender_port(standby) == Some(port)
    });
}

fn ha_pair(major: &str) {
    let t = TestDir::new(&format!("ha-pair-{major}"));
    let primary = Pg::primary(major, &[]);
    primary.psql("create table t (id bigserial primary key, pad text)");
    let archive = t.subdir("archive");
    let mut a = Instance::new(&t, "a", &primary, &archive);
    let mut b = Instance::new(&t, "b", &primary, &archive);
    a.start(&primary);
    b.start(&primary);
    // declared: present at start on both, before any standby created it
    for i in [&a, &b] {
        let row = primary
            .install()
            .psql_conninfo(&i.repl(), "READ_REPLICATION_SLOT standby1")
            .unwrap();
        assert!(row.starts_with("physical|"), "{}: {row}", i.name);
    }

    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres application_name=standby1 \
         connect_timeout=2",
        a.port, b.port
    );
    let mut standby = Pg::standby_of(
        &primary,
        major,
        &conninfo,
        &[
            "primary_slot_name = 'standby1'",
            "wal_retrieve_retry_interval = '500ms'",
        ],
    );
    wait_streaming_from(&standby, a.port, "the standby to stream from A");

    // a client cannot drop a declared slot (not even an inactive one)
    let verbose = |i: &Instance, sql: &str| {
        let out = primary
            .install()
            .command("psql")
            .env("PGCONNECT_TIMEOUT", "10")
            .args([
                "-X",
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-d",
                &i.repl(),
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for i in [&a, &b] {
        let (ok, err) = verbose(i, "DROP_REPLICATION_SLOT standby1");
        assert!(!ok, "{}: dropped a declared slot", i.name);
        assert!(
            err.contains(
                "ERROR:  55000: replication slot \"standby1\" is declared in the configuration"
            ),
            "{}: {err}",
            i.name
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let loader = load(major, primary.conninfo(), stop.clone(), batches.clone());
    wait_batches(&batches, 30);
    // A's declared slot follows the standby (and is persisted at least every second)
    let a_before = primary.current_lsn();
    wait_for(Duration::from_secs(30), "standby1 to move on A", || {
        a.standby1_restart(&primary).is_some_and(|r| r >= a_before)
    });
    wait_for(
        Duration::from_secs(30),
        "standby1 in A's slots.json",
        || {
            std::fs::read(a.data.join("slots.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| {
                    v["slots"].as_array()?.iter().find_map(|s| {
                        (s["name"] == "standby1")
                            .then(|| s["restart_lsn"].as_str()?.parse().ok())?
                    })
                })
                .is_some_and(|r: Lsn| r >= a_before)
        },
    );

    // kill -9 A: the standby goes on from B
    a.kill9();
    wait_streaming_from(&standby, b.port, "the standby to fail over to B");
    // B's declared slot follows the standby's replies
    let now = primary.current_lsn();
    wait_for(Duration::from_secs(30), "standby1 to move on B", || {
        b.standby1_restart(&primary).is_some_and(|r| r >= now)
    });
    wait_batches(&batches, 30);

    // A back (its slot from slots.json), kill -9 B: the standby goes back to A
    a.start(&primary);
    let row = primary
        .install()
        .psql_conninfo(&a.repl(), "READ_REPLICATION_SLOT standby1")
        .unwrap();
    assert!(row.starts_with("physical|"), "after restart: {row}");
    // the position the standby reported to A before the kill, from slots.json (a slot
    // created afresh at start would have none)
    let kept = a.standby1_restart(&primary);
    assert!(
        kept.is_some_and(|r| r >= a_before),
        "standby1 on A after restart: {kept:?}, before the kill at least {a_before}"
    );
    wait_batches(&batches, 20);
    b.kill9();
    wait_streaming_from(&standby, a.port, "the standby to fail over back to A");
    wait_batches(&batches, 30);
    for _ in 0..4 {
        primary.psql("insert into t (pad) select md5(g::text) from generate_series(1, 200) g");
        primary.switch_wal();
    }

    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();
    let end = primary.current_lsn();
    let rows = primary.psql("select count(*), coalesce(max(id), 0) from t");
    standby.wait_replayed(end, Duration::from_secs(60));
    assert_eq!(
        standby.psql("select count(*), coalesce(max(id), 0) from t"),
        rows,
        "the standby has every row"
    );
    let total = (batches.load(Ordering::SeqCst) + 4) * 200;
    assert_eq!(rows, format!("{total}|{total}"));

    // B back: both instances archive everything to the shared prefix
    b.start(&primary);
    let point = primary.psql("select pg_create_restore_point('ha_point')");
    let last = primary.switch_wal();
    for i in [&a, &b] {
        wait_for(
            Duration::from_secs(90),
            &format!("walrelay {} to archive up to {last}", i.name),
            || metric(i.metrics, "walrelay_archived_lsn_bytes").is_some_and(|v| v >= last.0 as f64),
        );
        assert_eq!(
            metric(i.metrics, "walrelay_archive_conflicts_total"),
            Some(0.0),
            "{} counted an archive conflict",
            i.name
        );
    }
    // B's declared slot is inactive (the standby is on A): it does not hold B's local WAL.
    // Every archived segment after its restart_lsn and outside keep_local_size (32 MB: the
    // newest two) goes; an ordinary slot would have kept them all.
    let r = b
        .standby1_restart(&primary)
        .expect("standby1 has a restart_lsn on B");
    let seg = 16u64 << 20;
    let removable: Vec<String> = (r.0 / seg + 1..(last.0 / seg).saturating_sub(2))
        .map(|n| walrelay::lsn::segment_file_name(1, n, seg))
        .collect();
    assert!(
        removable.len() >= 2,
        "too little WAL after {r}: {removable:?}"
    );
    wait_for(
        Duration::from_secs(30),
        "B to remove archived segments behind its inactive declared slot",
        || removable.iter().all(|n| !b.data.join(n).exists()),
    );
    assert!(
        removable.iter().all(|n| archive
            .join(primary.system_identifier().to_string())
            .join("wal")
            .join(n)
            .is_file()),
        "removed locally but not archived"
    );
    let mut already = 0;
    for i in [&a, &b] {
        for (n, log) in i.all_logs().iter().enumerate() {
            assert!(!log.contains("archive conflict"), "{} #{n}:\n{log}", i.name);
            assert!(!log.contains("panicked"), "{} #{n}:\n{log}", i.name);
            already += log
                .matches("was already archived with the same content")
                .count();
        }
    }
    eprintln!("segments found already archived by the other instance: {already}");
    assert!(
        already > 0,
        "no upload ever met the other instance's object"
    );

    let (status, out, err) = run_to_end(&["verify", "-c", &a.conf.display().to_string()]);
    assert!(status.success(), "verify failed:\n{out}\n{err}");
    assert!(out.contains(" 0 missing, 0 corrupt"), "{out}");
    let sysid = primary.system_identifier();
    let wal = archive.join(sysid.to_string()).join("wal");
    let n = compare::assert_segments_identical(&wal, &primary.pg_wal());
    assert!(n >= 3, "only {n} archived segments compared with pg_wal");

    // holds on both instances: the same restore point on each, reported per instance
    let (ca, cb) = (a.control(), b.control());
    let controls = ["--control", ca.as_str(), "--control", cb.as_str()];
    let mut args = vec!["feed", "advance", "lag", "--to-restore-point", "ha_point"];
    args.extend_from_slice(&controls);
    let mut last_out = String::new();
    wait_for(
        Duration::from_secs(30),
        "feed advance to ha_point on both instances",
        || {
            let (status, out, err) = run_to_end(&args);
            last_out = format!("{out}\n{err}");
            status.success()
        },
    );
    assert!(
        last_out.contains(&format!("walrelay at {ca}: ok")),
        "{last_out}"
    );
    assert!(
        last_out.contains(&format!("walrelay at {cb}: ok")),
        "{last_out}"
    );
    let mut args = vec!["feed", "list", "--json"];
    args.extend_from_slice(&controls);
    let (status, out, err) = run_to_end(&args);
    assert!(status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let inst = v["instances"].as_array().unwrap();
    assert_eq!(inst.len(), 2);
    assert_eq!(inst[0]["control"], ca.as_str());
    assert_eq!(inst[1]["control"], cb.as_str());
    let held: Vec<Lsn> = inst
        .iter()
        .map(|x| {
            assert_eq!(x["ok"], true, "{x}");
            let f = &x["result"]["feeds"][0];
            assert_eq!(f["name"], "lag");
            assert_eq!(f["state"], "advanced", "{x}");
            f["held_at"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        held[0], held[1],
        "both instances hold the feed at the same point"
    );
    // just after the restore point's record: pg_create_restore_point returns its end
    // MAXALIGNed, the feed holds at the exact end
    let point: Lsn = point.parse().unwrap();
    assert_eq!(Lsn((held[0].0 + 7) & !7), point, "held at {}", held[0]);

    // a group hold (restore points' `[[group]]`, here of the pair's one cluster) on both
    let gfile = t.join("group.toml");
    std::fs::write(
        &gfile,
        format!(
            "[[cluster]]\nname = \"default\"\ndata_dir = \"{}\"\n\
             sql_conninfo = \"host=127.0.0.1 port={} user=postgres\"\n\
             [[cluster.feed]]\nname = \"lag\"\ndelay = \"1h\"\n\
             [[group]]\nname = \"pair\"\nclusters = [\"default\"]\nfence_key = 4242\n",
            a.data.display(),
            primary.port()
        ),
    )
    .unwrap();
    let gconf = gfile.display().to_string();
    let states = || -> Vec<String> {
        let mut args = vec!["feed", "list", "--json"];
        args.extend_from_slice(&controls);
        let (_, out, _) = run_to_end(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                x["result"]["feeds"][0]["state"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let mut args = vec!["feed", "pause", "--group", "pair", "-c", &gconf];
    args.extend_from_slice(&controls);
    let (status, out, err) = run_to_end(&args);
    assert!(
        status.success(),
        "feed pause --group on both:\n{out}\n{err}"
    );
    assert!(err.contains(&format!("walrelay at {ca}: ok")), "{err}");
    assert!(err.contains(&format!("walrelay at {cb}: ok")), "{err}");
    assert_eq!(
        states(),
        ["paused", "paused"],
        "the group pause reached both"
    );
    let mut args = vec!["feed", "resume", "--group", "pair", "-c", &gconf];
    args.extend_from_slice(&controls);
    let (status, out, err) = run_to_end(&args);
    assert!(
        status.success(),
        "feed resume --group on both:\n{out}\n{err}"
    );
    let after = states();
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|s| s != "paused" && s != "advanced"),
        "resumed on both: {after:?}"
    );

    // one instance down: the other still gets the command, the exit status says it failed
    b.kill9();
    let mut args = vec!["feed", "pause", "lag"];
    args.extend_from_slice(&controls);
    let (status, out, err) = run_to_end(&args);
    assert!(
        !status.success(),
        "feed pause with B down succeeded:\n{out}\n{err}"
    );
    assert!(out.contains(&format!("walrelay at {ca}: ok")), "{out}");
    assert!(
        out.contains(&format!("walrelay at {cb}: failed: could not reach")),
        "{out}"
    );
    assert!(err.contains("failed on 1 instance(s)"), "{err}");
    // a single --control still behaves as before; more than one is only for `feed`
    let (status, _, err) = run_to_end(&["status", "--control", &ca, "--control", "x"]);
    assert!(!status.success());
    assert!(
        err.contains("--control may be given more than once only for walrelay feed"),
        "{err}"
    );

    // The standby, stopped, falls behind; B's declared slot is inactive, so B keeps only the
    // newest 32 MB locally. With A down the standby comes back on B, which streams what it
    // removed from the shared archive: no new base backup, every row.
    b.start(&primary);
    standby.stop();
    let stopped_at = primary.current_lsn();
    for _ in 0..5 {
        primary.psql("insert into t (pad) select md5(g::text) from generate_series(1, 200) g");
        primary.switch_wal();
    }
    let last2 = primary.current_lsn();
    a.kill9();
    let gone = walrelay::lsn::segment_file_name(1, stopped_at.0 / seg, seg);
    wait_for(
        Duration::from_secs(60),
        &format!("B to archive up to {last2} and remove {gone} locally"),
        || {
            metric(b.metrics, "walrelay_archived_lsn_bytes").is_some_and(|v| v >= last2.0 as f64)
                && !b.data.join(&gone).exists()
        },
    );
    standby.start();
    wait_streaming_from(&standby, b.port, "the restarted standby to stream from B");
    let end = primary.current_lsn();
    standby.wait_replayed(end, Duration::from_secs(60));
    assert_eq!(
        standby.psql("select count(*), coalesce(max(id), 0) from t"),
        primary.psql("select count(*), coalesce(max(id), 0) from t"),
        "the standby has every row after coming back on B"
    );
    assert!(
        b.log()
            .contains(&format!("WAL segment {gone} read from the archive")),
        "{}",
        b.log()
    );
    assert!(!b.log().contains("panicked"), "{}", b.log());
    drop(standby);
}

#[test]
fn ha_pair_pg15() {
    ha_pair("15");
}

#[test]
fn ha_pair_pg18() {
    ha_pair("18");
}

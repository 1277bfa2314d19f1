//! Cluster-wide restore points against real servers: two plain primaries form one
//! application-sharded database; a workload of distributed transactions with two-phase
//! commit takes the group's advisory fence in shared mode; `walrelay restore-point create`
//! runs under that load. Then (a) each cluster's delayed standby (1 h delay), advanced to the
//! restore point, and (b) each cluster recovered from a base backup taken before the
//! workload with `recovery_target_name` and `restore_command = walrelay wal-fetch`, show the
//! same set of distributed transactions on both clusters: not empty, not all.
//! Also: a duplicate name is refused; a fence the application holds times out with nothing
//! created on any cluster; group feed control is all or nothing.
//!
//! Two single-cluster `walrelay run` processes serve the two clusters (the multi-cluster
//! process is the fleet work); the group configuration names both clusters.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::pg::{conf_quote, Pg};
use crate::harness::walrelay::{bin, run_to_end};
use crate::harness::{self, TestDir};
use crate::server_common::Relay;

const KEY: i64 = 7401;

struct Cluster {
    name: &'static str,
    primary: Pg,
    relay: Relay,
    /// The base backup taken before the workload (not started).
    backup: Pg,
    /// walrelay's configuration of this cluster (for wal-fetch).
    conf: String,
    feed: String,
}

fn primary(major: &str) -> Pg {
    let p = Pg::primary(major, &["max_prepared_transactions = 20"]);
    p.psql("create table dt (id int primary key)");
    p
}

fn cluster(t: &TestDir, name: &'static str, major: &str) -> Cluster {
    let primary = primary(major);
    let backup = Pg::standby_prepared_x(&primary, major, "host=127.0.0.1 port=1", &[], "stream");
    let dir = t.subdir(name);
    let data = dir.join("relay");
    std::fs::create_dir_all(&data).unwrap();
    let feed = format!("lag_{name}");
    let conf = dir.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[archive]\npartial_interval = \"1s\"\n[[feed]]\nname = \"{feed}\"\ndelay = \"1h\"\ntripwire = false\n",
            data.display()
        ),
    )
    .unwrap();
    let port = harness::free_port();
    let relay = Relay::start_on(
        &TestDir::new(&format!("rp-{name}")),
        &primary,
        &data,
        port,
        &["--config", conf.to_str().unwrap()],
    );
    Cluster {
        name,
        primary,
        relay,
        backup,
        conf: conf.to_str().unwrap().to_string(),
        feed,
    }
}

/// The configuration `walrelay restore-point` reads: both clusters and the group.
fn group_conf(t: &TestDir, cs: &[&Cluster], fence_timeout: &str) -> String {
    group_conf_fence(t, cs, fence_timeout, "fence = \"advisory\"\n")
}

/// The SQL form of the same fence (`fence = "sql"`).
const SQL_FENCE: &str = "fence = \"sql\"\nfence_sql = \"SELECT pg_advisory_lock(7401)\"\nunfence_sql = \"SELECT pg_advisory_unlock(7401)\"\n";

fn group_conf_fence(t: &TestDir, cs: &[&Cluster], fence_timeout: &str, fence: &str) -> String {
    let mut s = String::new();
    for c in cs {
        s.push_str(&format!(
            "[[cluster]]\nname = \"{}\"\ndata_dir = \"{}\"\nsql_conninfo = \"host=127.0.0.1 port={} user=postgres\"\n[[cluster.feed]]\nname = \"{}\"\ndelay = \"1h\"\n",
            c.name,
            c.relay.data.display(),
            c.primary.port(),
            c.feed
        ));
    }
    let names: Vec<String> = cs.iter().map(|c| format!("\"{}\"", c.name)).collect();
    s.push_str(&format!(
        "[[group]]\nname = \"app\"\nclusters = [{}]\nkind = \"fence\"\n{fence}fence_key = {KEY}\nfence_timeout = \"{fence_timeout}\"\n",
        names.join(", ")
    ));
    s.push_str(&format!(
        "[[group]]\nname = \"one\"\nclusters = [\"{}\"]\nfence_key = {KEY}\n",
        cs[0].name
    ));
    let p = t.join(format!("group-{fence_timeout}.toml"));
    std::fs::write(&p, s).unwrap();
    p.to_str().unwrap().to_string()
}

fn ids(pg: &Pg) -> Vec<u32> {
    pg.psql("select coalesce(string_agg(id::text, ',' order by id), '') from dt")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn walrelay_ok(args: &[&str]) -> String {
    let (st, out, err) = run_to_end(args);
    assert!(st.success(), "walrelay {args:?} failed: {err}\n{out}");
    out
}

/// `walrelay xacts -D DIR` on a live data directory (a segment renamed during the scan
/// fails it: try again).
fn xacts_dir(dir: &Path) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        let (st, out, err) = run_to_end(&["xacts", "-D", dir.to_str().unwrap()]);
        if st.success() {
            return out;
        }
        last = err;
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("walrelay xacts -D {}: {last}", dir.display());
}

fn restore_points(conf: &str) -> serde_json::Value {
    let out = walrelay_ok(&["restore-points", "-c", conf, "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// Recovers `c`'s pre-workload base backup to restore point `name` from walrelay's archive.
fn recover(c: &mut Cluster, name: &str) -> Vec<u32> {
    let dd = c.backup.datadir().to_path_buf();
    std::fs::remove_file(dd.join("standby.signal")).unwrap();
    std::fs::write(dd.join("recovery.signal"), "").unwrap();
    harness::pg::give_to_server(&dd.join("recovery.signal"));
    c.backup.append_conf(&format!(
        "restore_command = {}\nrecovery_target_name = '{name}'\nrecovery_target_action = 'promote'\n",
        conf_quote(&format!("{} wal-fetch -c {} %f %p", bin().display(), c.conf))
    ));
    c.backup.start();
    harness::wait_for(
        Duration::from_secs(120),
        "recovery to the restore point",
        || {
            c.backup
                .try_psql("select pg_is_in_recovery()")
                .is_ok_and(|v| v == "f")
        },
    );
    assert!(
        c.backup
            .log()
            .contains(&format!("recovery stopping at restore point \"{name}\"")),
        "{}",
        c.backup.log()
    );
    ids(&c.backup)
}

/// Waits until the segment holding `lsn`'s WAL (after a switch) is fetchable from the archive.
fn wait_archived(c: &Cluster) {
    let seg = c.primary.psql("select pg_walfile_name(pg_switch_wal())");
    let dest = c.relay.data.join("probe-fetch");
    harness::wait_for(
        Duration::from_secs(60),
        "the segment to be archived",
        || {
            let (st, _, _) =
                run_to_end(&["wal-fetch", "-c", &c.conf, &seg, dest.to_str().unwrap()]);
            st.success()
        },
    );
}

fn restore_points_consistent(major: &str, fence: &str) {
    let t = TestDir::new("fleet-rp");
    let mut a = cluster(&t, "shard1", major);
    let mut b = cluster(&t, "shard2", major);
    let conf = group_conf_fence(&t, &[&a, &b], "20s", fence);

    // the delayed standbys (1 h) of each cluster, through walrelay's feed
    let sa = Pg::standby_of(&a.primary, major, &a.relay.conninfo(&a.feed), &[]);
    let sb = Pg::standby_of(&b.primary, major, &b.relay.conninfo(&b.feed), &[]);
    for s in [&sa, &sb] {
        harness::wait_for(Duration::from_secs(30), "standby up", || {
            s.try_psql("select 1").is_ok()
        });
    }

    // the workload
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let worker = {
        let stop = stop.clone();
        let done = done.clone();
        let (ia, ib) = (a.primary.port(), b.primary.port());
        let major = major.to_string();
        std::thread::spawn(move || {
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                let (ca, cb) = (
                    format!("host=127.0.0.1 port={ia} user=postgres dbname=postgres"),
                    format!("host=127.0.0.1 port={ib} user=postgres dbname=postgres"),
                );
                if distributed_xact_ci(&major, &ca, &cb, id) {
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    harness::wait_for(
        Duration::from_secs(60),
        "some distributed transactions",
        || done.load(Ordering::SeqCst) >= 10,
    );
    let mut names = Vec::new();
    for i in 1..=3 {
        let name = format!("rp{i}");
        let out = walrelay_ok(&[
            "restore-point",
            "create",
            &name,
            "--group",
            "app",
            "-c",
            &conf,
        ]);
        assert!(out.contains(&name), "{out}");
        names.push(name);
        let before = done.load(Ordering::SeqCst);
        harness::wait_for(Duration::from_secs(60), "more transactions", || {
            done.load(Ordering::SeqCst) >= before + 5
        });
    }
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    let all = ids(&a.primary);
    assert_eq!(all, ids(&b.primary));

    // a duplicate name is refused, and nothing is created for it
    let (st, _, err) = run_to_end(&[
        "restore-point",
        "create",
        "rp2",
        "--group",
        "app",
        "-c",
        &conf,
    ]);
    assert!(!st.success());
    let first = a.relay.data.join("archive");
    assert!(
        err.contains(&format!(
            "walrelay: error: restore point \"rp2\" already exists in group \"app\" (recorded in file://{}); choose another name",
            first.display()
        )),
        "{err}"
    );

    // the records: three, each with both clusters, their system identifiers and LSNs
    let list = restore_points(&conf);
    let rps = list["restore_points"].as_array().unwrap();
    assert_eq!(rps.len(), 3, "{list}");
    for (r, n) in rps.iter().zip(&names) {
        assert_eq!(r["name"], n.as_str());
        assert_eq!(r["group"], "app");
        let cl = r["clusters"].as_array().unwrap();
        assert_eq!(cl.len(), 2);
        assert_eq!(cl[0]["name"], "shard1");
        assert_eq!(
            cl[0]["system_id"].as_u64(),
            Some(a.primary.system_identifier())
        );
        assert_eq!(
            cl[1]["system_id"].as_u64(),
            Some(b.primary.system_identifier())
        );
        assert_eq!(cl[0]["timeline"], 1);
        assert!(cl[1]["lsn"].as_str().unwrap().contains('/'));
    }
    let text = walrelay_ok(&["restore-points", "--group", "app", "-c", &conf]);
    assert!(text.contains("rp1") && text.contains("rp3"), "{text}");

    // (a) the delayed standbys advanced to rp2 show the same distributed transactions
    let target = "rp2";
    for c in [&a, &b] {
        walrelay_ok(&[
            "feed",
            "advance",
            &c.feed,
            "--to-restore-point",
            target,
            "--data-dir",
            c.relay.data.to_str().unwrap(),
        ]);
    }
    let rec = &rps[1]["clusters"];
    for (s, i) in [(&sa, 0), (&sb, 1)] {
        let lsn: walrelay::lsn::Lsn = rec[i]["lsn"].as_str().unwrap().parse().unwrap();
        s.wait_replayed(lsn, Duration::from_secs(60));
    }
    // nothing past the hold arrives
    std::thread::sleep(Duration::from_secs(2));
    let va = ids(&sa);
    assert_eq!(va, ids(&sb), "delayed standbys disagree");
    assert!(!va.is_empty(), "no distributed transaction before rp2");
    assert!(va.len() < all.len(), "every transaction before rp2");

    // group feed control: all or nothing (shard2's feed is not on shard1's walrelay)
    let ctl = a.relay.data.to_str().unwrap().to_string();
    let (st, _, err) = run_to_end(&[
        "feed",
        "advance",
        "--group",
        "app",
        "--to-restore-point",
        "rp3",
        "-c",
        &conf,
        "--data-dir",
        &ctl,
    ]);
    assert!(!st.success());
    assert!(
        err.contains(&format!(
            "walrelay: error: refused for the whole group, no feed changed: cluster \"shard2\": no feed named \"{}\"",
            b.feed
        )),
        "{err}"
    );
    let (st, _, err) = run_to_end(&[
        "feed",
        "advance",
        "--group",
        "one",
        "--to-restore-point",
        "nosuch",
        "-c",
        &conf,
        "--data-dir",
        &ctl,
    ]);
    assert!(!st.success());
    assert!(
        err.contains("walrelay: error: refused for the whole group, no feed changed: restore point \"nosuch\" is not yet in the commit index of cluster(s) shard1"),
        "{err}"
    );
    assert_eq!(ids(&sa), va, "a refused group advance moved the feed");
    let out = walrelay_ok(&[
        "feed",
        "advance",
        "--group",
        "one",
        "--to-restore-point",
        "rp3",
        "-c",
        &conf,
        "--data-dir",
        &ctl,
    ]);
    assert!(
        out.contains("cluster shard1") && out.contains(&a.feed),
        "{out}"
    );
    let lsn: walrelay::lsn::Lsn = rps[2]["clusters"][0]["lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    sa.wait_replayed(lsn, Duration::from_secs(60));
    walrelay_ok(&[
        "feed",
        "pause",
        "--group",
        "one",
        "-c",
        &conf,
        "--data-dir",
        &ctl,
    ]);

    // (b) both clusters recovered to rp2 from base backups taken before the workload
    wait_archived(&a);
    wait_archived(&b);
    let ra = recover(&mut a, target);
    let rb = recover(&mut b, target);
    assert_eq!(ra, rb, "recovered clusters disagree");
    assert_eq!(ra, va, "recovery and the delayed standbys disagree");
    assert!(!ra.is_empty() && ra.len() < all.len());
}

/// One distributed transaction: the fence's shared lock, a row and PREPARE on each cluster
/// in order, then COMMIT PREPARED on each. `false` if a PREPARE failed (rolled back where
/// it was prepared).
fn distributed_xact_ci(major: &str, a: &str, b: &str, id: u32) -> bool {
    let install = harness::pg::PgInstall::get(major);
    let gid = format!("dt_{id}");
    let prep = format!(
        "begin; select pg_advisory_xact_lock_shared({KEY}); insert into dt values ({id}); prepare transaction '{gid}';"
    );
    if install.psql_conninfo(a, &prep).is_err() {
        return false;
    }
    if install.psql_conninfo(b, &prep).is_err() {
        let _ = install.psql_conninfo(a, &format!("rollback prepared '{gid}'"));
        return false;
    }
    install
        .psql_conninfo(a, &format!("commit prepared '{gid}'"))
        .unwrap();
    install
        .psql_conninfo(b, &format!("commit prepared '{gid}'"))
        .unwrap();
    true
}

#[test]
fn restore_points_consistent_pg15() {
    restore_points_consistent("15", "fence = \"advisory\"\n");
}

#[test]
fn restore_points_consistent_pg18() {
    // the same fence through fence_sql/unfence_sql
    restore_points_consistent("18", SQL_FENCE);
}

/// The application holds the fence (a prepared transaction holding the shared lock on
/// shard2): `restore-point create` fails after fence_timeout naming the cluster, and no
/// restore point exists on either cluster nor in the archive.
#[test]
fn restore_point_fence_timeout() {
    let major = harness::majors()
        .last()
        .cloned()
        .unwrap_or_else(|| "15".into());
    let t = TestDir::new("fleet-fence");
    let a = cluster(&t, "shard1", &major);
    let b = cluster(&t, "shard2", &major);
    let conf = group_conf(&t, &[&a, &b], "2s");
    b.primary.psql(&format!(
        "begin; select pg_advisory_xact_lock_shared({KEY}); insert into dt values (1); prepare transaction 'held';"
    ));
    let (st, out, err) = run_to_end(&[
        "restore-point",
        "create",
        "blocked",
        "--group",
        "app",
        "-c",
        &conf,
    ]);
    assert!(!st.success(), "{out}");
    assert!(
        err.contains(&format!("walrelay: error: cluster \"shard2\": could not take the fence (pg_advisory_lock({KEY})) within fence_timeout (2s); no restore point was created")),
        "{err}"
    );
    assert!(
        err.contains("canceling statement due to lock timeout"),
        "{err}"
    );
    // no record
    let list = restore_points(&conf);
    assert_eq!(
        list["restore_points"].as_array().unwrap().len(),
        0,
        "{list}"
    );
    // no restore point record in either cluster's WAL (walrelay's decoder: xacts -D)
    for c in [&a, &b] {
        let lsn = c.primary.switch_wal();
        c.relay.wait_flush(&c.primary, lsn);
        let out = xacts_dir(&c.relay.data);
        assert!(!out.contains("restore_point"), "{}: {out}", c.name);
    }
    // the fence was released: shard1 is free, and after the application commits, it works
    assert_eq!(
        a.primary
            .psql(&format!("select pg_try_advisory_lock({KEY})")),
        "t"
    );
    b.primary.psql("commit prepared 'held'");
    let out = walrelay_ok(&[
        "restore-point",
        "create",
        "after",
        "--group",
        "app",
        "-c",
        &conf,
    ]);
    assert!(out.contains("after"), "{out}");
    assert!(Path::new(
        &a.relay
            .data
            .join("archive/groups/app/restore_points/after.json")
    )
    .exists());
    assert!(Path::new(
        &b.relay
            .data
            .join("archive/groups/app/restore_points/after.json")
    )
    .exists());
    // the timed-out name was not kept reserved: nothing was created for it
    walrelay_ok(&[
        "restore-point",
        "create",
        "blocked",
        "--group",
        "app",
        "-c",
        &conf,
    ]);
    // a run that fails after creating a restore point on shard1 (shard2's role may not call
    // pg_create_restore_point) keeps the name reserved: a retry cannot make a second, later
    // "partial" on shard1
    b.primary.psql("create role rp_user login");
    let weak = std::fs::read_to_string(&conf).unwrap().replace(
        &format!("port={} user=postgres", b.primary.port()),
        &format!("port={} user=rp_user", b.primary.port()),
    );
    let weak_conf = t.join("weak.toml");
    std::fs::write(&weak_conf, weak).unwrap();
    let (st, _, err) = run_to_end(&[
        "restore-point",
        "create",
        "partial",
        "--group",
        "app",
        "-c",
        weak_conf.to_str().unwrap(),
    ]);
    assert!(!st.success());
    assert!(
        err.contains("walrelay: error: cluster \"shard2\": ERROR:  permission denied for function pg_create_restore_point; the name \"partial\" stays reserved (some clusters may hold a restore point of that name)"),
        "{err}"
    );
    let (st, _, err) = run_to_end(&[
        "restore-point",
        "create",
        "partial",
        "--group",
        "app",
        "-c",
        &conf,
    ]);
    assert!(!st.success());
    assert!(
        err.contains("walrelay: error: restore point \"partial\" of group \"app\" was attempted before and not completed"),
        "{err}"
    );
    assert_eq!(
        restore_points(&conf)["restore_points"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // and now the decoder sees them (the checks above can fail)
    for c in [&a, &b] {
        let lsn = c.primary.switch_wal();
        c.relay.wait_flush(&c.primary, lsn);
        let out = xacts_dir(&c.relay.data);
        assert!(
            out.contains("restore_point") && out.contains("after"),
            "{}: {out}",
            c.name
        );
    }
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Both clusters (PostgreSQL 15 and 18) in ONE walrelay with `[[cluster]]` sections and a
/// `[[group]]` with `every`: periodic restore points are recorded with their metrics, and
/// `feed advance --group` holds both clusters' delayed standbys at one restore point, where
/// both show the same distributed transactions; `feed pause/resume --group` act on both.
#[test]
fn restore_points_one_process_group_feeds() {
    use crate::harness::walrelay::Walrelay;
    let majors = harness::majors();
    let (ma, mb) = (
        majors.first().cloned().unwrap_or_else(|| "15".into()),
        majors.last().cloned().unwrap_or_else(|| "18".into()),
    );
    let t = TestDir::new("fleet-rp-one");
    let a = primary(&ma);
    let b = primary(&mb);
    let metrics = format!("127.0.0.1:{}", harness::free_port());
    let (la, lb) = (harness::free_port(), harness::free_port());
    let (da, db) = (t.subdir("shard1"), t.subdir("shard2"));
    let one = |name: &str, dir: &Path, pg: &Pg, listen: u16| {
        format!(
            "[[cluster]]\nname = \"{name}\"\ndata_dir = \"{}\"\n[cluster.upstream]\nconninfo = \"host=127.0.0.1 port={} user=postgres\"\n[cluster.server]\nlisten = \"127.0.0.1:{listen}\"\n[[cluster.feed]]\nname = \"lag_{name}\"\ndelay = \"1h\"\ntripwire = false\n",
            dir.display(),
            pg.port()
        )
    };
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n{}{}[[group]]\nname = \"app\"\nclusters = [\"shard1\", \"shard2\"]\nfence_key = {KEY}\nfence_timeout = \"2s\"\nevery = \"10s\"\nname_format = \"auto-%Y%m%dT%H%M%SZ\"\n",
            one("shard1", &da, &a, la),
            one("shard2", &db, &b, lb)
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let mut relay = Walrelay::spawn_with(
        &t.join("walrelay.log"),
        &["run", "-c", &conf],
        &[("WALRELAY_LOG", "info")],
    );

    // periodic restore points, recorded, with their metric
    harness::wait_for(Duration::from_secs(90), "a periodic restore point", || {
        let (st, out, _) = run_to_end(&["restore-points", "-c", &conf, "--json"]);
        st.success() && out.contains("\"auto-")
    });
    let m = http_get(&metrics, "/metrics").unwrap_or_default();
    assert!(
        m.lines().any(
            |l| l.starts_with("walrelay_restore_point_last_success_timestamp_seconds{")
                && l.contains("group=\"app\"")
        ),
        "{m}"
    );
    assert!(
        relay.log().contains("of group \"app\" recorded"),
        "{}",
        relay.log()
    );

    let sa = Pg::standby_of(
        &a,
        &ma,
        &format!("host=127.0.0.1 port={la} user=postgres application_name=lag_shard1"),
        &[],
    );
    let sb = Pg::standby_of(
        &b,
        &mb,
        &format!("host=127.0.0.1 port={lb} user=postgres application_name=lag_shard2"),
        &[],
    );
    for s in [&sa, &sb] {
        harness::wait_for(Duration::from_secs(60), "standby up", || {
            s.try_psql("select 1").is_ok()
        });
    }
    let (ca, cb) = (a.conninfo(), b.conninfo());
    for id in 1..=5 {
        assert!(distributed_xact_ci(&ma, &ca, &cb, id));
    }
    walrelay_ok(&[
        "restore-point",
        "create",
        "g1",
        "--group",
        "app",
        "-c",
        &conf,
    ]);
    for id in 6..=10 {
        assert!(distributed_xact_ci(&ma, &ca, &cb, id));
    }
    let list = restore_points(&conf);
    let rec = list["restore_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "g1")
        .cloned()
        .unwrap();
    let ctl = da.to_str().unwrap().to_string();
    // the index of each cluster may need a moment to see g1: the command refuses until then
    let mut out = String::new();
    harness::wait_for(Duration::from_secs(30), "feed advance --group", || {
        let (st, o, e) = run_to_end(&[
            "feed",
            "advance",
            "--group",
            "app",
            "--to-restore-point",
            "g1",
            "-c",
            &conf,
            "--data-dir",
            &ctl,
        ]);
        if !st.success() {
            assert!(e.contains("is not yet in the commit index"), "{e}");
        }
        out = o;
        st.success()
    });
    assert!(
        out.contains("cluster shard1") && out.contains("cluster shard2"),
        "{out}"
    );
    for (s, i) in [(&sa, 0), (&sb, 1)] {
        let lsn: walrelay::lsn::Lsn = rec["clusters"][i]["lsn"].as_str().unwrap().parse().unwrap();
        s.wait_replayed(lsn, Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(2));
    let expect: Vec<u32> = (1..=5).collect();
    assert_eq!(ids(&sa), expect);
    assert_eq!(ids(&sb), expect);

    let states = || -> Vec<String> {
        let out = walrelay_ok(&["feed", "list", "--json", "--data-dir", &ctl]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["state"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(states(), vec!["advanced", "advanced"]);
    walrelay_ok(&[
        "feed",
        "pause",
        "--group",
        "app",
        "-c",
        &conf,
        "--data-dir",
        &ctl,
    ]);
    assert_eq!(states(), vec!["paused", "paused"]);
    walrelay_ok(&[
        "feed",
        "resume",
        "--group",
        "app",
        "-c",
        &conf,
        "--data-dir",
        &ctl,
    ]);
    let s = states();
    assert!(s.iter().all(|x| x != "paused" && x != "advanced"), "{s:?}");

    // the application holds the fence on shard2: periodic restore points fail, logged with
    // the cluster and the cause and counted, while WAL keeps flowing through walrelay
    b.psql(&format!(
        "begin; select pg_advisory_xact_lock_shared({KEY}); insert into dt values (1000); prepare transaction 'hold';"
    ));
    harness::wait_for(
        Duration::from_secs(60),
        "a failed periodic restore point",
        || {
            relay
                .log()
                .contains("of group \"app\" failed: cluster \"shard2\": could not take the fence")
        },
    );
    let m = http_get(&metrics, "/metrics").unwrap_or_default();
    assert!(
        m.lines()
            .any(|l| l.starts_with("walrelay_restore_point_failures_total{")
                && l.contains("group=\"app\"")
                && !l.ends_with(" 0")),
        "{m}"
    );
    b.psql("create table after_hold (x int)");
    let target = b.current_lsn();
    harness::wait_for(
        Duration::from_secs(30),
        "shard2's WAL through walrelay",
        || {
            b.install()
                .psql_conninfo(
                    &format!("host=127.0.0.1 port={lb} user=postgres replication=true"),
                    "IDENTIFY_SYSTEM",
                )
                .ok()
                .and_then(|o| {
                    o.split('|')
                        .nth(2)
                        .and_then(|p| p.parse::<walrelay::lsn::Lsn>().ok())
                })
                .is_some_and(|p| p >= target)
        },
    );
    b.psql("commit prepared 'hold'");
    assert!(relay.stop().success(), "{}", relay.log());
}

//! Several clusters in one walrelay (`[[cluster]]`), against real PostgreSQL 15 and 18
//! primaries and real hot standbys: a standby of each cluster streams from walrelay (one on
//! its cluster's own port, both on the shared port routed by `options=-c
//! walrelay.cluster=NAME`) and gets its own cluster's rows; one cluster's primary killed and
//! its archive failing while the other's standby keeps receiving; `/metrics` with the
//! `cluster` label, `/status` per cluster, `walrelay check` per cluster; routing errors and
//! configuration errors with their exact texts.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use walrelay::protocol::backend::{BackendMessage, ErrorFields};
use walrelay::protocol::frame::split_frame;

use crate::harness::{self, pg::Pg, walrelay::run_to_end, walrelay::Walrelay, TestDir};

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn status(metrics: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(metrics, "/status")?).ok()
}

fn cluster_doc(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["clusters"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cluster"] == name).cloned())
        .unwrap_or_else(|| panic!("no cluster {name} in {doc}"))
}

/// The FATAL a replication startup with `params` gets from `port` (None: it was accepted:
/// ReadyForQuery).
fn startup_error(port: u16, params: &[(&str, &str)]) -> Option<ErrorFields> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = BytesMut::new();
    body.put_u16(3);
    body.put_u16(0);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut b = BytesMut::new();
    b.put_i32(4 + body.len() as i32);
    b.put_slice(&body);
    s.write_all(&b).unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(f)) = split_frame(&mut buf, 1 << 20) {
            match BackendMessage::decode(f).expect("a backend message") {
                BackendMessage::ErrorResponse(e) => return Some(e),
                BackendMessage::ReadyForQuery(_) => return None,
                _ => continue,
            }
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => panic!("connection closed without an error or ReadyForQuery"),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn count(pg: &Pg, table: &str) -> Option<i64> {
    pg.try_psql(&format!("select count(*) from {table}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn exists(pg: &Pg, table: &str) -> bool {
    pg.psql(&format!("select to_regclass('{table}') is not null"))
        .trim()
        == "t"
}

fn standby(primary: &Pg, conninfo: &str) -> Pg {
    let sb = Pg::standby_of(primary, primary.major(), conninfo, &[]);
    harness::wait_for(
        Duration::from_secs(30),
        "the standby to accept connections",
        || sb.try_psql("select 1").is_ok(),
    );
    sb
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn fleet_two_clusters_pg15_pg18() {
    let majors = harness::majors();
    if !["15", "18"].iter().all(|m| majors.iter().any(|x| x == m)) {
        eprintln!("skipped: needs PostgreSQL 15 and 18 (have {majors:?})");
        return;
    }
    let t = TestDir::new("fleet");
    let a = Pg::primary("15", &[]);
    let b = Pg::primary("18", &[]);
    a.psql("create table only_a (id int)");
    b.psql("create table only_b (id int)");
    let (shared, own_a, metrics) = (
        harness::free_port(),
        harness::free_port(),
        format!("127.0.0.1:{}", harness::free_port()),
    );
    let arch_a = t.subdir("archive-a");
    let arch_b = t.subdir("archive-b");
    std::fs::create_dir_all(&arch_a).unwrap();
    std::fs::create_dir_all(&arch_b).unwrap();
    let cfg = t.join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n\
             [server]\nlisten = \"127.0.0.1:{shared}\"\n\
             [server.route_users]\nmapped_b = \"b18\"\n\
             [[cluster]]\nname = \"a15\"\ndata_dir = {}\n\
             [cluster.upstream]\nconninfo = {}\nstatus_interval = \"1s\"\nreconnect_max = \"2s\"\n\
             [cluster.server]\nlisten = \"127.0.0.1:{own_a}\"\n\
             [cluster.archive]\nurl = {}\nretry_max = \"1s\"\n\
             [[cluster.feed]]\nname = \"feed_a\"\n\
             [[cluster]]\nname = \"b18\"\ndata_dir = {}\n\
             [cluster.upstream]\nconninfo = {}\nstatus_interval = \"1s\"\n\
             [cluster.archive]\nurl = {}\n\
             [[cluster.feed]]\nname = \"feed_b\"\n",
            toml_str(t.subdir("a").to_str().unwrap()),
            toml_str(&a.conninfo()),
            toml_str(&format!("file://{}", arch_a.display())),
            toml_str(t.subdir("b").to_str().unwrap()),
            toml_str(&b.conninfo()),
            toml_str(&format!("file://{}", arch_b.display())),
        ),
    )
    .unwrap();
    let log = t.join("walrelay.log");
    let mut relay = Walrelay::spawn_with(
        &log,
        &["run", "--config", cfg.to_str().unwrap()],
        &[("WALRELAY_LOG", "info")],
    );
    let (a_lsn, b_lsn) = (a.current_lsn(), b.current_lsn());
    harness::wait_for(Duration::from_secs(40), "both clusters streaming", || {
        status(&metrics).is_some_and(|d| {
            let flushed = |n: &str, l: walrelay::lsn::Lsn| {
                let c = cluster_doc(&d, n);
                c["upstream"]["connected"] == true
                    && c["store"]["flush_lsn"]
                        .as_str()
                        .and_then(|s| s.parse::<walrelay::lsn::Lsn>().ok())
                        .is_some_and(|f| f >= l)
            };
            flushed("a15", a_lsn) && flushed("b18", b_lsn)
        })
    });

    // routing errors on the shared port: exact texts and SQLSTATEs
    let base = [("user", "postgres"), ("replication", "true")];
    let e = startup_error(shared, &base).expect("refused without a cluster");
    assert_eq!(
        (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
        (
            "FATAL",
            "08004",
            "no cluster named in the startup packet: this walrelay serves several clusters"
        )
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("Add options='-c walrelay.cluster=NAME' to primary_conninfo, or map the user in [server.route_users]; clusters: a15, b18.")
    );
    let mut p = base.to_vec();
    p.push(("options", "-c walrelay.cluster=nope"));
    let e = startup_error(shared, &p).expect("refused for an unknown cluster");
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("3D000", "cluster \"nope\" does not exist")
    );
    assert_eq!(e.hint.as_deref(), Some("This walrelay serves: a15, b18."));
    // dbname names a cluster too (pg_receivewal-like clients; a walreceiver sends
    // "replication")
    let mut p = base.to_vec();
    p.push(("database", "b18"));
    assert!(startup_error(shared, &p).is_none(), "dbname=b18 routes");
    // a mapped user needs no cluster name; options win over the mapping
    let mapped = [("user", "mapped_b"), ("replication", "true")];
    assert!(startup_error(shared, &mapped).is_none(), "mapped_b routes");
    let mut p = mapped.to_vec();
    p.push(("options", "-c walrelay.cluster=nope"));
    assert_eq!(
        startup_error(shared, &p).map(|e| e.code),
        Some("3D000".to_string())
    );

    // standbys: A on its own port and on the shared port, B on the shared port
    let sa = standby(
        &a,
        &format!("host=127.0.0.1 port={own_a} user=postgres application_name=sa_own"),
    );
    let sa2 = standby(
        &a,
        &format!("host=127.0.0.1 port={shared} user=postgres application_name=sa_shared options='-c walrelay.cluster=a15'"),
    );
    let sb = standby(
        &b,
        &format!("host=127.0.0.1 port={shared} user=postgres application_name=sb_shared options='-c walrelay.cluster=b18'"),
    );
    a.psql("insert into only_a select generate_series(1, 10)");
    b.psql("insert into only_b select generate_series(1, 20)");
    harness::wait_for(Duration::from_secs(30), "rows on every standby", || {
        count(&sa, "only_a") == Some(10)
            && count(&sa2, "only_a") == Some(10)
            && count(&sb, "only_b") == Some(20)
    });
    // each standby has its own cluster's rows only
    assert!(!exists(&sa, "only_b") && !exists(&sa2, "only_b"));
    assert!(!exists(&sb, "only_a"));
    // walrelay's sessions are listed under their clusters
    let d = status(&metrics).unwrap();
    let names = |c: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = c["walsenders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["application_name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&cluster_doc(&d, "a15")), ["sa_own", "sa_shared"]);
    assert_eq!(names(&cluster_doc(&d, "b18")), ["sb_shared"]);

    // feeds of both clusters on one control endpoint, addressed by name
    let cfg_s = cfg.to_str().unwrap();
    let feeds = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["feed"];
        a.extend_from_slice(args);
        a.extend(["--json", "--config", cfg_s]);
        let (st, out, err) = run_to_end(&a);
        assert!(st.success(), "feed {args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let state = |name: &str| -> (String, String) {
        let l = feeds(&["list"]);
        let f = l["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {l}"));
        (
            f["cluster"].as_str().unwrap().to_string(),
            f["state"].as_str().unwrap().to_string(),
        )
    };
    feeds(&["pause", "feed_b"]);
    assert_eq!(state("feed_b"), ("b18".to_string(), "paused".to_string()));
    assert_ne!(
        state("feed_a").1,
        "paused",
        "pausing feed_b left feed_a alone"
    );
    assert_eq!(state("feed_a").0, "a15");
    feeds(&["resume", "feed_b"]);
    assert_ne!(state("feed_b").1, "paused");
    let (st, _, err) = run_to_end(&["xacts", "--config", cfg_s]);
    assert!(!st.success());
    assert!(
        err.contains(
            "several clusters have feeds: add cluster=NAME, `walrelay xacts --cluster NAME` (a15, b18)"
        ),
        "{err}"
    );
    b.psql("insert into only_b values (30)");
    harness::wait_for(Duration::from_secs(20), "B's commit in B's index", || {
        let (st, out, _) = run_to_end(&["xacts", "--json", "--cluster", "b18", "--config", cfg_s]);
        st.success()
            && serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|v| v["xacts"].as_array().is_some_and(|a| !a.is_empty()))
    });
    let (st, _, err) = run_to_end(&["xacts", "--cluster", "zz", "--config", cfg_s]);
    assert!(!st.success());
    assert!(
        err.contains("no cluster \"zz\" with feeds (a15, b18)"),
        "{err}"
    );

    // isolation: A's archive fails (its directory becomes a file) and A's primary dies
    std::fs::remove_dir_all(&arch_a).unwrap();
    std::fs::write(&arch_a, "not a directory").unwrap();
    a.psql("insert into only_a values (11)");
    a.switch_wal();
    harness::wait_for(Duration::from_secs(30), "A's archive error", || {
        status(&metrics)
            .is_some_and(|d| cluster_doc(&d, "a15")["archive"]["last_error"]["message"].is_string())
    });
    let mut a = a;
    a.stop_immediate();
    for i in 0..5 {
        let t0 = Instant::now();
        b.psql(&format!("insert into only_b values (100 + {i})"));
        harness::wait_for(Duration::from_secs(10), "B's row on B's standby", || {
            count(&sb, "only_b") == Some(22 + i)
        });
        eprintln!("fleet: B row {i} on the standby after {:?}", t0.elapsed());
    }
    let d = status(&metrics).unwrap();
    let (da, db) = (cluster_doc(&d, "a15"), cluster_doc(&d, "b18"));
    assert_eq!(da["upstream"]["connected"], false, "{da}");
    assert!(da["archive"]["last_error"]["message"].is_string(), "{da}");
    assert_eq!(db["upstream"]["connected"], true, "{db}");
    assert!(db["archive"]["last_error"].is_null(), "{db}");
    assert!(db["upstream"]["last_error"].is_null(), "{db}");
    assert!(
        db["errors"].as_array().unwrap().is_empty(),
        "B has no errors: {db}"
    );
    // metrics: both clusters' series, each with its label
    let m = http_get(&metrics, "/metrics").unwrap();
    for c in ["a15", "b18"] {
        let line = format!("walrelay_flush_lsn_bytes{{cluster=\"{c}\"}} ");
        assert!(m.lines().any(|l| l.starts_with(&line)), "{line} in\n{m}");
    }
    assert!(
        m.lines().any(|l| l.starts_with(
            "walrelay_walsender_flush_lsn_bytes{cluster=\"b18\",application_name=\"sb_shared\",session=\"1\"}"
        )),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("walrelay_upstream_streaming{cluster=\"b18\"} 1")),
        "{m}"
    );
    // walrelay status and check: every cluster
    let (st, out, err) = run_to_end(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        out.starts_with("cluster a15\n") && out.contains("\ncluster b18\n"),
        "{out}"
    );
    let (st, out, _) = run_to_end(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(2), "A's dead primary is critical:\n{out}");
    assert!(out.contains("\ta15 upstream: CRITICAL"), "{out}");
    assert!(out.contains("\tb18 upstream: OK"), "{out}");
    let status = relay.stop();
    assert!(
        status.success(),
        "walrelay exit {status:?}\n{}",
        relay.log()
    );
    drop(sb);
}

fn run_config(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let (st, _, err) = run_to_end(&["run", "--config", p.to_str().unwrap()]);
    (st.code(), err)
}

#[test]
fn fleet_config_errors() {
    let t = TestDir::new("fleet-cfg");
    let one = |n: &str, d: &str| {
        format!("[[cluster]]\nname = \"{n}\"\ndata_dir = \"{d}\"\n[cluster.upstream]\nconninfo = \"host=127.0.0.1\"\n")
    };
    let cases = [
        (
            "dup-name.toml",
            format!("{}{}", one("s1", "/tmp/x1"), one("s1", "/tmp/x2")),
            "cluster \"s1\" is defined twice",
        ),
        (
            "dup-dir.toml",
            format!("{}{}", one("s1", "/tmp/x1"), one("s2", "/tmp/x1/")),
            "clusters \"s1\" and \"s2\" have the same data_dir \"/tmp/x1/\"",
        ),
        (
            "mixed.toml",
            format!("[upstream]\nconninfo = \"host=a\"\n{}", one("s1", "/tmp/x1")),
            "top-level [upstream] cannot be combined with [[cluster]] sections: use [cluster.upstream]",
        ),
    ];
    for (file, text, msg) in cases {
        let (code, err) = run_config(t.path(), file, &text);
        let path = t.join(file);
        assert_eq!(code, Some(1), "{file}: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "walrelay: error: invalid configuration file \"{}\": {msg}",
                path.display()
            ),
            "{file}"
        );
    }
    // single-cluster flags with [[cluster]] sections
    let p = t.join("ok.toml");
    std::fs::write(&p, one("s1", t.join("d1").to_str().unwrap())).unwrap();
    let (st, _, err) = run_to_end(&[
        "run",
        "--config",
        p.to_str().unwrap(),
        "--upstream",
        "host=x",
    ]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        "walrelay: error: --upstream, --data-dir, --slot and --listen apply to a single cluster: with [[cluster]] sections set them in each [[cluster]]"
    );
}

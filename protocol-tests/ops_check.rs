//! Operation against a real PostgreSQL 15: `walrelay check` green on a healthy setup and
//! red with the right Nagios code for each broken item (slot missing, archive unwritable,
//! lag over a threshold, a tripwire hold, upstream down), `walrelay status`, the `/status`
//! figures, JSON logs (every line parses) and the status page in headless Chromium.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use walrelay::lsn::Lsn;

use crate::harness::{self, pg::Pg, walrelay::run_to_end, TestDir};
use crate::server_common::Relay;

/// `walrelay check ... --nagios`: (exit code, the line).
fn check(cfg: &Path, primary: &Pg, data: &Path, extra: &[&str]) -> (i32, String) {
    let conninfo = primary.conninfo();
    let mut a = vec![
        "check",
        "-c",
        cfg.to_str().unwrap(),
        "--upstream",
        &conninfo,
        "-D",
        data.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    let (st, out, err) = run_to_end(&a);
    (st.code().unwrap_or(-1), format!("{out}{err}"))
}

fn status(maddr: &str) -> serde_json::Value {
    let (code, body) = walrelay::admin::request(maddr, "GET", "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn ops_check_status_and_logs_pg15() {
    let t = TestDir::new("ops-check");
    let primary = Pg::primary("15", &[]);
    let maddr = format!("127.0.0.1:{}", harness::free_port());
    let cfg = t.join("walrelay.toml");
    let base_cfg = format!(
        "[metrics]\nlisten = \"{maddr}\"\n\n[log]\nformat = \"json\"\n\n[[feed]]\nname = \"lag\"\ndelay = \"2s\"\n\n[check]\nwarn_free_percent = 0.1\ncrit_free_percent = 0.01\n"
    );
    std::fs::write(&cfg, &base_cfg).unwrap();
    let mut relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let data = relay.data.clone();
    primary.psql("create table a (id int); create table b (id int); insert into a values (1); insert into b values (1)");
    let sb = Pg::standby_of(&primary, "15", &relay.conninfo("lag"), &[]);
    harness::wait_for(Duration::from_secs(60), "rows on the standby", || {
        sb.try_psql("select count(*) from b").ok().as_deref() == Some("1")
    });
    // a completed and archived segment
    let switched = primary.switch_wal();
    primary.psql("insert into b values (2)");
    relay.wait_flush(&primary, switched);
    harness::wait_for(Duration::from_secs(60), "a segment in the archive", || {
        let d = status(&maddr);
        d["archive"]["last_archived_segment"].is_string()
            && d["upstream"]["last_message_at"].is_string()
            && d["archive"]["listing"]["newest_segment"] == d["archive"]["last_archived_segment"]
    });

    // /status: the figures an operator needs, and no bogus lag from 0/0
    let d = status(&maddr);
    let flush: Lsn = d["store"]["flush_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(d["upstream"]["state"], "streaming", "{d}");
    assert_eq!(d["upstream"]["host"], "127.0.0.1", "{d}");
    let arch_lag = d["archive"]["lag_bytes"].as_u64().unwrap();
    assert!(
        arch_lag < flush.0,
        "archive lag {arch_lag} is the whole LSN: {d}"
    );
    let w = d["walsenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["application_name"] == "lag")
        .unwrap_or_else(|| panic!("no standby 'lag' in {d}"));
    assert!(w["lag_bytes"].is_u64(), "{w}");
    let f = &d["feeds"][0];
    assert_eq!(f["name"], "lag", "{d}");
    assert!(
        f.get("waiting_commit").is_none(),
        "feeds on the metrics listener show no xacts: {f}"
    );
    let (code, metrics) = walrelay::admin::request(&maddr, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("walrelay_upstream_lag_seconds"),
        "{metrics}"
    );

    // healthy: OK, exit 0
    let (code, line) = check(&cfg, &primary, &data, &["--nagios"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("WALRELAY OK - "), "{line}");
    assert!(line.contains("|") && line.contains("lag_bytes="), "{line}");
    let (code, json) = check(&cfg, &primary, &data, &["--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"], "OK");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "upstream",
        "slot",
        "walrelay",
        "system_id",
        "archive_writable",
        "archive",
        "disk",
        "lag_bytes",
        "feeds",
        "errors",
    ] {
        assert!(names.contains(&n), "{n} not checked: {json}");
    }

    // walrelay status (control socket)
    let (st, out, err) = run_to_end(&["status", "--data-dir", data.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        out.contains(&format!(
            "upstream:   streaming 127.0.0.1:{}",
            primary.port()
        )),
        "{out}"
    );
    assert!(out.contains("standby:    lag"), "{out}");
    assert!(out.contains("feed:       lag"), "{out}");
    assert!(out.contains("the archive holds "), "{out}");

    // the slot is missing: CRITICAL
    let (code, line) = check(&cfg, &primary, &data, &["--nagios", "--slot", "nope"]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("WALRELAY CRITICAL - ")
            && line.contains("slot: replication slot \"nope\" does not exist on the upstream"),
        "{line}"
    );

    // the archive refuses writes: CRITICAL
    let blocker = t.join("blocker");
    std::fs::write(&blocker, "a file, not a directory").unwrap();
    let url = format!("file://{}/sub", blocker.display());
    let (code, line) = check(&cfg, &primary, &data, &["--nagios", "--archive", &url]);
    assert_eq!(code, 2, "{line}");
    // (as root no mode bits stop a write: a file where a directory must be does)
    assert!(
        line.starts_with("WALRELAY CRITICAL - archive") && line.contains("Not a directory"),
        "{line}"
    );

    // lag over a threshold: WARNING (lag_bytes >= 0 with warn 0)
    let cfg_lag = t.join("lag.toml");
    std::fs::write(
        &cfg_lag,
        base_cfg.replace(
            "[check]\n",
            "[check]\nwarn_lag_bytes = 0\ncrit_lag_bytes = \"1TB\"\n",
        ),
    )
    .unwrap();
    let (code, line) = check(&cfg_lag, &primary, &data, &["--nagios"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("WALRELAY WARNING - lag_bytes: flushed "),
        "{line}"
    );

    // little free disk and an archive lag over their thresholds: WARNING, both named
    let cfg_warn = t.join("warn.toml");
    std::fs::write(
        &cfg_warn,
        base_cfg.replace(
            "warn_free_percent = 0.1\n",
            "warn_free_percent = 100\nwarn_archive_lag_bytes = 0\n",
        ),
    )
    .unwrap();
    let (code, line) = check(&cfg_warn, &primary, &data, &["--nagios"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("disk: ") && line.contains("% free") && line.contains("archive_lag: "),
        "{line}"
    );

    // another cluster as the upstream: its system identifier differs from the data
    // directory's: CRITICAL
    let other = Pg::primary("15", &[]);
    assert_ne!(other.system_identifier(), primary.system_identifier());
    let (code, line) = check(&cfg, &other, &data, &["--nagios"]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains(&format!(
            "system_id: the upstream is system {} but the data directory holds WAL of system {}",
            other.system_identifier(),
            primary.system_identifier()
        )),
        "{line}"
    );
    drop(other);

    // a tripwire hold: WARNING, in /status and on the page
    primary.psql("drop table a");
    primary.psql("insert into b values (3)");
    harness::wait_for(Duration::from_secs(60), "the tripwire to hold", || {
        status(&maddr)["feeds"][0]["tripwire_hold"] == true
    });
    // the feed's standby misses the DROP's commit: its lag in seconds is that commit's age
    let f = &status(&maddr)["feeds"][0];
    assert!(f["lag_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{f}");
    assert!(f["lag_bytes"].as_u64().is_some_and(|b| b > 0), "{f}");
    let (code, line) = check(&cfg, &primary, &data, &["--nagios"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("feeds: feed \"lag\" held by the tripwire at "),
        "{line}"
    );

    status_page(&t, &maddr, &primary);

    // upstream down: CRITICAL, and the error is remembered with its time
    drop(sb);
    let mut primary = primary;
    primary.stop();
    harness::wait_for(Duration::from_secs(60), "walrelay to notice", || {
        let d = status(&maddr);
        d["upstream"]["connected"] == false && d["upstream"]["last_error"]["message"].is_string()
    });
    let (code, line) = check(&cfg, &primary, &data, &["--nagios"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("upstream: "), "{line}");
    assert!(
        line.contains("walrelay: running but not streaming from the upstream"),
        "{line}"
    );
    assert!(line.contains("errors: upstream at "), "{line}");

    // JSON logs: every line parses, with level, message and timestamp
    relay.proc.stop();
    // and walrelay not running at all: CRITICAL
    let (code, line) = check(&cfg, &primary, &data, &["--nagios"]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("walrelay: walrelay is not running: no answer on control socket"),
        "{line}"
    );
    let log = relay.log();
    let mut messages = Vec::new();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for k in ["level", "message", "timestamp"] {
            assert!(v[k].is_string(), "no {k}: {l}");
        }
        let m = v["message"].as_str().unwrap().to_string();
        if v["level"] == "ERROR" {
            assert!(!m.starts_with("ERROR:"), "doubled prefix: {l}");
        }
        messages.push(m);
    }
    let has = |p: &str| messages.iter().any(|m| m.starts_with(p));
    assert!(
        has(&format!(
            "connected to upstream 127.0.0.1:{}",
            primary.port()
        )),
        "{log}"
    );
    assert!(has("completed segment ") || has("completed "), "{log}");
    assert!(has("archived segment ") || has("archived "), "{log}");
}

/// The page in a real browser: headless Chromium runs its JS; the DOM has the figures.
fn status_page(t: &TestDir, maddr: &str, primary: &Pg) {
    let (code, html) = walrelay::admin::request(maddr, "GET", "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        html.contains("<svg") && !html.contains("src=\"http"),
        "external assets?"
    );
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("SKIPPED the browser part: no chromium (scripts/test-infra.sh installs it)");
        return;
    };
    let profile = t.subdir("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let shot = t.join("status-page.png");
    let url = format!("http://{maddr}/");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=5000",
    ];
    let udd = format!("--user-data-dir={}", profile.display());
    let out = Command::new("timeout") // a hung headless browser fails the test, never the suite
        .args(["120", chromium])
        .args(common)
        .arg(&udd)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = status(maddr);
    let flush = d["store"]["flush_lsn"].as_str().unwrap();
    assert!(
        dom.contains(&format!("127.0.0.1:{}", primary.port())),
        "upstream not on the page: {dom}"
    );
    assert!(
        dom.contains(flush) || dom.contains("id=\"store-flush\">0/"),
        "flush {flush} not on the page: {dom}"
    );
    assert!(
        dom.contains("<td>lag</td>"),
        "the feed/standby 'lag' not on the page: {dom}"
    );
    assert!(
        dom.contains("class=\"banner on\" id=\"tripwire\"")
            || dom.contains("id=\"tripwire\" class=\"banner on\""),
        "no tripwire banner: {dom}"
    );
    assert!(dom.contains("Tripwire: feed"), "{dom}");
    assert!(
        dom.contains("<polyline") || dom.contains("<circle"),
        "no chart: {dom}"
    );
    let out = Command::new("timeout") // a hung headless browser fails the test, never the suite
        .args(["120", chromium])
        .args(common)
        .arg(&udd)
        .arg("--window-size=1280,1100")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "no screenshot at {}",
        shot.display()
    );
    // kept after the test directory is gone
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::copy(&shot, &kept).unwrap();
    eprintln!("status page screenshot: {}", kept.display());
}

/// pg_receivewal without a slot and without --synchronous reports flush 0/0: `/status`
/// shows no flush position for it (PostgreSQL shows NULL) and counts its lag from its
/// write position, and its flush series is its write position, not 0.
#[test]
fn ops_status_pg_receivewal_lag_pg15() {
    use crate::server_common::{write_rows, ReceiveWal};
    let t = TestDir::new("ops-rw");
    let primary = Pg::primary("15", &[]);
    let maddr = format!("127.0.0.1:{}", harness::free_port());
    let relay = Relay::start(&t, &primary, &["--metrics-listen", &maddr]);
    let rw = ReceiveWal::start(&primary, relay.port, &t.join("rw"), &[]);
    let lsn = write_rows(&primary, "r", 2000);
    relay.wait_flush(&primary, lsn);
    let mut row = serde_json::Value::Null;
    harness::wait_for(
        Duration::from_secs(60),
        "pg_receivewal's write position in /status",
        || {
            let d = status(&maddr);
            row = d["walsenders"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|w| w["application_name"] == "pg_receivewal")
                        .cloned()
                })
                .unwrap_or_default();
            row["write_lsn"]
                .as_str()
                .and_then(|s| s.parse::<Lsn>().ok())
                .is_some_and(|w| w >= lsn)
        },
    );
    assert!(
        row["flush_lsn"].is_null(),
        "flush 0/0 shown as a position: {row} ({})",
        rw.log()
    );
    let d = status(&maddr);
    let flush: Lsn = d["store"]["flush_lsn"].as_str().unwrap().parse().unwrap();
    let write: Lsn = row["write_lsn"].as_str().unwrap().parse().unwrap();
    let lag = row["lag_bytes"].as_u64().unwrap();
    assert!(
        lag <= flush.0.saturating_sub(write.0) + 1_000_000 && lag < flush.0 / 2,
        "lag {lag} counts from 0/0: {row}"
    );
    let (_, metrics) = walrelay::admin::request(&maddr, "GET", "/metrics").unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "walrelay_walsender_flush_lsn_bytes{cluster=\"default\",application_name=\"pg_receivewal\"",
            )
        })
        .unwrap_or_else(|| panic!("no flush series: {metrics}"));
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        v >= lsn.0 as f64,
        "flush series {v} below the write position {lsn}: {line}"
    );
    // caught up with an idle primary: the upstream lag is 0 when scraped, not the value
    // of the last WAL message before the flush
    let gauge = |m: &str, name: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{cluster=\"default\"}} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    harness::wait_for(Duration::from_secs(30), "upstream lag 0", || {
        let (_, m) = walrelay::admin::request(&maddr, "GET", "/metrics").unwrap();
        gauge(&m, "walrelay_upstream_lag_bytes") == Some(0.0)
            && gauge(&m, "walrelay_upstream_lag_seconds") == Some(0.0)
    });
}

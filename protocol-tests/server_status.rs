//! The downstream view: a real standby streaming through walrelay shows up in `/status`
//! (like `pg_stat_replication`) and in the per-standby metrics; hot-standby feedback from it
//! reaches the primary's slot, and goes back to zero when no standby needs it.
use std::time::Duration;

use walrelay::lsn::Lsn;

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::Relay;

#[test]
fn server_status_view_and_feedback() {
    let t = TestDir::new("srv-status");
    let primary = Pg::primary("15", &[]);
    let mport = harness::free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let relay = Relay::start(
        &t,
        &primary,
        &["--metrics-listen", &maddr, "--slot", "relay"],
    );
    let standby = Pg::standby_of(
        &primary,
        "15",
        &relay.conninfo("standby_one"),
        &[
            "hot_standby_feedback = on",
            "wal_receiver_status_interval = 1s",
        ],
    );
    primary.psql("create table s as select generate_series(1, 1000) x");
    let lsn = primary.current_lsn();
    standby.wait_replayed(lsn, Duration::from_secs(60));

    let mut doc = serde_json::Value::Null;
    harness::wait_for(
        Duration::from_secs(30),
        "the standby in /status with its flush position",
        || {
            let body = walrelay::admin::request(&maddr, "GET", "/status")
                .map(|r| r.1)
                .unwrap_or_default();
            doc = serde_json::from_str(&body).unwrap_or_default();
            doc["walsenders"].as_array().is_some_and(|ws| {
                ws.iter().any(|w| {
                    w["application_name"] == "standby_one"
                        && w["state"] == "streaming"
                        && w["flush_lsn"]
                            .as_str()
                            .and_then(|s| s.parse::<Lsn>().ok())
                            .is_some_and(|f| f >= lsn)
                })
            })
        },
    );
    let w = doc["walsenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["application_name"] == "standby_one")
        .unwrap()
        .clone();
    assert_eq!(w["client_addr"], "127.0.0.1");
    assert_eq!(w["usename"], "postgres");
    assert_eq!(w["sync_state"], "async");
    assert!(w["replay_lsn"].as_str().is_some(), "{w}");

    let (code, metrics) = walrelay::admin::request(&maddr, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "walrelay_walsender_flush_lsn_bytes{cluster=\"default\",application_name=\"standby_one\",session=\"1\"}"
        )),
        "{metrics}"
    );

    // Hot-standby feedback: the standby's xmin reaches walrelay's slot on the primary ...
    harness::wait_for(
        Duration::from_secs(30),
        "the standby's xmin on the primary's slot",
        || {
            primary
                .psql("select xmin is not null from pg_replication_slots where slot_name = 'relay'")
                == "t"
        },
    );
    // ... and is cleared (zeros forwarded) once no standby needs it.
    drop(standby);
    // the standby's series leave /metrics with its session
    harness::wait_for(
        Duration::from_secs(30),
        "the standby's series removed",
        || {
            walrelay::admin::request(&maddr, "GET", "/metrics")
                .is_ok_and(|(c, m)| c == 200 && !m.contains("application_name=\"standby_one\""))
        },
    );
    harness::wait_for(Duration::from_secs(30), "the slot's xmin cleared", || {
        primary.psql("select xmin is null from pg_replication_slots where slot_name = 'relay'")
            == "t"
    });
}

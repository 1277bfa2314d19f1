//! Crash safety of the store against a real PostgreSQL 15 primary, walrelay as its
//! synchronous standby (`synchronous_standby_names = 'walrelay'`) under a commit loop.
//!
//! - `kill9_then_serve_without_upstream` (issue 11's scenario): walrelay is killed with
//!   SIGKILL and restarted several times during the loop, and its walsender on the primary is
//!   terminated (an upstream reconnect) while a poller watches IDENTIFY_SYSTEM: the served
//!   position never goes back, across reconnects and restarts. After a last SIGKILL the
//!   primary is stopped and walrelay restarted with no upstream reachable: a standby built
//!   from a base backup *without WAL* (`pg_basebackup -X none`), whose only WAL source is
//!   walrelay, gets every acknowledged commit.
#![allow(clippy::type_complexity)]

use std::time::Duration;

use crate::harness::{self, pg::Pg, TestDir};
use crate::store_crash_common::{
    assert_fresh_standby_has, start_relay, wait_serving, CommitLoop, Poller,
};

#[test]
fn kill9_then_serve_without_upstream() {
    let mut primary = Pg::primary("15", &["synchronous_standby_names = 'walrelay'"]);
    let t = TestDir::new("store-kill9");
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let up = primary.conninfo();
    let mut relay = start_relay(&t, &up, &data, port, &[]);
    wait_serving(&primary, port, primary.current_lsn());
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay to be the sync standby",
        || {
            primary
            .try_psql("select sync_state from pg_stat_replication where application_name = 'walrelay'")
            .is_ok_and(|s| s == "sync")
        },
    );
    primary.psql("create table t (id bigint primary key)");
    // the fresh standby's backup: no WAL in it
    let mut standby = Pg::standby_prepared_x(
        &primary,
        "15",
        &format!("host=127.0.0.1 port={port} user=postgres application_name=fresh"),
        &[],
        "none",
    );
    let commits = CommitLoop::start(&primary, "t");
    let poller = Poller::start(&primary, port);
    let mut last = 0;
    for round in 0..4 {
        harness::wait_for(Duration::from_secs(60), "commits to go on", || {
            commits.acked() >= last + 300
        });
        last = commits.acked();
        if round % 2 == 1 {
            // an upstream reconnect: the primary ends walrelay's walsender
            primary.psql(
                "select pg_terminate_backend(pid) from pg_stat_replication where application_name = 'walrelay'",
            );
            continue;
        }
        relay.kill9();
        std::thread::sleep(Duration::from_millis(200));
        relay = start_relay(&t, &up, &data, port, &[]);
        wait_serving(&primary, port, primary.current_lsn());
    }
    harness::wait_for(Duration::from_secs(60), "commits to go on", || {
        commits.acked() >= last + 300
    });
    relay.kill9();
    std::thread::sleep(Duration::from_millis(300));
    primary.stop_immediate();
    let acked = commits.finish();
    assert!(acked >= 1500, "only {acked} commits");

    // walrelay again, with its upstream gone
    let relay = start_relay(&t, &up, &data, port, &[]);
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay to serve without upstream",
        || poller.identify().is_some(),
    );
    let history = poller.finish();
    for w in history.windows(2) {
        assert!(
            w[1] >= w[0],
            "the served position went back from {} to {}: {history:?}",
            w[0],
            w[1]
        );
    }
    assert!(
        relay.log().contains("recovered WAL from"),
        "{}",
        relay.log()
    );
    assert_fresh_standby_has(&mut standby, "t", acked);
    assert!(!standby.log().contains("ahead of the WAL flush position"));
}

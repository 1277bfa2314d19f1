//! Crash safety of the store against a real PostgreSQL 15 primary, walrelay as its
//! synchronous standby (`synchronous_standby_names = 'walrelay'`) under a commit loop.
//!
//! - `kill9_then_serve_without_upstream` (issue 11's scenario): walrelay is killed with
//!   SIGKILL and restarted several times during the loop, and its walsender on the primary is
//!   terminated (an upstream reconnect) while a poller watches IDENTIFY_SYSTEM: the served
//!   position never goes back, across reconnects and restarts, and a standby following
//!   walrelay throughout is never told "ahead of the WAL flush position". After a last SIGKILL the
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
    // a standby following walrelay through every restart and reconnect
    let follower = Pg::standby_of(
        &primary,
        "15",
        &format!("host=127.0.0.1 port={port} user=postgres application_name=follower"),
        &[],
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
    // the follower got everything too, and was never told walrelay went back
    let q = format!("select count(*) from t where id <= {acked}");
    harness::wait_for(
        Duration::from_secs(60),
        "the follower to have every commit",
        || follower.try_psql(&q).is_ok_and(|c| c == acked.to_string()),
    );
    assert!(
        !follower.log().contains("ahead of the WAL flush position"),
        "{}",
        follower.log()
    );
}

/// Modes of what `walrelay receive` and `walrelay run` create: 0600 in an owner-only
/// directory, 0640 in a group-accessible one (PostgreSQL's `file_perm.c` rule), and no
/// `walrelay.control` in a receive target directory (pg_receivewal writes only WAL files).
#[test]
fn file_modes_after_receive_and_run() {
    use std::os::unix::fs::PermissionsExt;
    let primary = Pg::primary("15", &[]);
    primary.psql("create table m (x int)");
    let t = TestDir::new("store-modes");
    let modes = |dir: &std::path::Path| -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                let m = e.metadata().unwrap().permissions().mode() & 0o777;
                (e.file_name().to_string_lossy().into_owned(), m)
            })
            .collect();
        v.sort();
        v
    };
    for (dir_mode, want) in [(0o700, 0o600), (0o750, 0o640)] {
        let dir = t.subdir(&format!("recv-{dir_mode:o}"));
        std::fs::create_dir_all(&dir).unwrap();
        harness::set_mode(&dir, dir_mode);
        primary.psql("insert into m select generate_series(1, 1000)");
        primary.switch_wal();
        let endpos = primary.current_lsn().to_string();
        let (st, _, err) = crate::harness::walrelay::run_to_end(&[
            "receive",
            "-D",
            dir.to_str().unwrap(),
            "-d",
            &primary.conninfo(),
            "--endpos",
            &endpos,
            "-n",
        ]);
        assert!(st.success(), "{err}");
        let files = modes(&dir);
        assert!(
            files.iter().any(|(n, _)| n.ends_with(".partial")),
            "{files:?}"
        );
        for (name, m) in &files {
            assert_eq!(*m, want, "{name} in a {dir_mode:o} directory: {files:?}");
        }
        assert!(
            !files.iter().any(|(n, _)| n == "walrelay.control"),
            "{files:?}"
        );
    }
    // `walrelay run` creating its data directory: 0700 and 0600 files
    let data = t.join("run-data");
    let port = harness::free_port();
    let mut relay = start_relay(&t, &primary.conninfo(), &data, port, &[]);
    wait_serving(&primary, port, primary.current_lsn());
    relay.stop();
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files = modes(&data);
    assert!(
        files.iter().any(|(n, _)| n.ends_with(".partial")),
        "{files:?}"
    );
    for (name, m) in &files {
        assert_eq!(
            *m, 0o600,
            "{name} in walrelay run's data directory: {files:?}"
        );
    }
}

//! Restarts and missing WAL: a standby asking walrelay for WAL it never had gets PostgreSQL's
//! "requested WAL segment … has already been removed" and recovers through its
//! `restore_command`; then walrelay restarts under the connected standby (which reconnects
//! and resumes), and the standby restarts and resumes.
use std::time::Duration;

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::{write_rows, Relay};

#[test]
fn server_restart_and_missing_wal() {
    let major = harness::majors()
        .first()
        .cloned()
        .unwrap_or_else(|| "15".into());
    let t = TestDir::new("srv-restart");
    let archive = t.subdir("archive");
    std::fs::create_dir_all(&archive).unwrap();
    harness::set_mode(&archive, 0o777);
    let archive_cmd = format!("archive_command = 'cp %p {}/%f'", archive.display());
    let primary = Pg::primary(&major, &["archive_mode = on", &archive_cmd]);
    let port = harness::free_port();
    let relay_conn = format!("host=127.0.0.1 port={port} user=postgres application_name=sb");
    // The standby's base backup is older than anything walrelay will hold.
    let mut standby = Pg::standby_prepared(&primary, &major, &relay_conn, &[]);
    write_rows(&primary, "before", 20000);
    primary.switch_wal();
    write_rows(&primary, "before2", 100);
    primary.switch_wal();
    primary.psql("checkpoint");
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let relay = Relay::start_on(&t, &primary, &data, port, &[]);
    standby.start();
    harness::wait_for(
        Duration::from_secs(30),
        "the standby to get \"has already been removed\" from walrelay",
        || standby.log().contains("has already been removed"),
    );
    // with a restore_command it recovers from the archive, then streams from walrelay
    harness::wait_for(Duration::from_secs(20), "archiving", || {
        primary
            .psql("select last_archived_wal is not null from pg_stat_archiver")
            .contains('t')
    });
    standby.append_conf(&format!(
        "restore_command = 'cp {}/%f %p'",
        archive.display()
    ));
    standby.reload();
    let lsn = write_rows(&primary, "after", 1000);
    standby.wait_replayed(lsn, Duration::from_secs(45));
    assert_eq!(standby.psql("select count(*) from before"), "20000");
    harness::wait_for(
        Duration::from_secs(20),
        "the standby to stream from walrelay",
        || {
            standby
                .try_psql("select status from pg_stat_wal_receiver")
                .is_ok_and(|s| s == "streaming")
        },
    );

    // walrelay restarts under the connected standby
    let mut relay = relay;
    relay.proc.stop();
    assert!(
        relay.log().contains("walsender: shutting down"),
        "{}",
        relay.log()
    );
    let lsn = write_rows(&primary, "during", 500);
    let relay = Relay::start_on(&t, &primary, &data, port, &[]);
    standby.wait_replayed(lsn, Duration::from_secs(45));
    let lsn = write_rows(&primary, "after_restart", 500);
    standby.wait_replayed(lsn, Duration::from_secs(30));

    // the standby restarts and resumes
    standby.restart();
    let lsn = write_rows(&primary, "after_standby_restart", 500);
    standby.wait_replayed(lsn, Duration::from_secs(45));
    assert_eq!(
        standby.psql("select count(*) from after_standby_restart"),
        "500"
    );
    assert!(!relay.log().contains("panicked"));
}

//! Timeline switch under walrelay: the primary stops, its direct standby is promoted,
//! walrelay (multi-host conninfo) follows timeline 2, and both a hot standby and
//! pg_receivewal streaming from walrelay are moved to the new timeline (end of timeline 1
//! with CopyDone + next_tli, TIMELINE_HISTORY 2, START_REPLICATION … TIMELINE 2 on the same
//! connection) and replay / receive what the new primary writes.
use std::time::Duration;

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::{write_rows, ReceiveWal, Relay};

#[test]
fn server_timeline_follows_promotion() {
    let major = std::env::var("WALRELAY_TLI_PG").unwrap_or_else(|_| {
        harness::majors()
            .first()
            .cloned()
            .unwrap_or_else(|| "15".into())
    });
    let t = TestDir::new("srv-tli");
    let mut primary = Pg::primary(&major, &[]);
    let s1 = Pg::standby_of(&primary, &major, &primary.conninfo(), &[]);
    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        s1.port()
    );
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let relay = Relay::start_full(&t, &primary, &upstream, &data, port, &[], "");
    let s2 = Pg::standby_of(&primary, &major, &relay.conninfo("sb2"), &[]);
    let recv = ReceiveWal::start(&primary, port, &t.subdir("recv"), &[]);

    let lsn = write_rows(&primary, "t1", 3000);
    s1.wait_replayed(lsn, Duration::from_secs(30));
    s2.wait_replayed(lsn, Duration::from_secs(30));
    relay.wait_flush(&primary, lsn);

    primary.stop();
    s1.promote();
    let lsn = write_rows(&s1, "t2", 2000);
    s2.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(s2.psql("select count(*) from t2"), "2000");
    let (_, tli, _) = relay.identify(&s1).unwrap();
    assert_eq!(tli, 2);
    harness::wait_for(
        Duration::from_secs(20),
        "the standby to stream timeline 2",
        || {
            s2.try_psql("select received_tli from pg_stat_wal_receiver")
                .is_ok_and(|s| s == "2")
        },
    );
    harness::wait_for(
        Duration::from_secs(20),
        "pg_receivewal to fetch 00000002.history",
        || recv.dir.join("00000002.history").is_file(),
    );
    let lsn = write_rows(&s1, "t3", 100);
    s2.wait_replayed(lsn, Duration::from_secs(30));
    assert!(relay.log().contains("end of timeline 1"), "{}", relay.log());
    assert!(!relay.log().contains("panicked"));
}

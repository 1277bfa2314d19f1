//! Streaming through walrelay's walsender, PG 15 and PG 18: a hot standby made with
//! pg_basebackup from the primary but fed by walrelay replays the primary's rows, and
//! pg_receivewal pointed at walrelay produces segments byte-identical to the primary's.
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::{self, compare, pg::Pg, TestDir};
use crate::server_common::{write_rows, ReceiveWal, Relay};

const SEG: u64 = 16 << 20;

fn standby_and_receivewal(major: &str) {
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let t = TestDir::new("srv-stream");
    let primary = Pg::primary(major, &[]);
    let relay = Relay::start(&t, &primary, &[]);
    let (sysid, tli, _) = relay.identify(&primary).unwrap();
    assert_eq!(sysid, primary.system_identifier().to_string());
    assert_eq!(tli, 1);

    let standby = Pg::standby_of(&primary, major, &relay.conninfo("sb1"), &[]);
    let recv_dir = t.subdir("receivewal");
    let recv = ReceiveWal::start(&primary, relay.port, &recv_dir, &[]);

    let lsn = write_rows(&primary, "t1", 5000);
    standby.wait_replayed(lsn, Duration::from_secs(40));
    assert_eq!(standby.psql("select count(*) from t1"), "5000");

    // the standby is visible in walrelay's status, not on the primary (only walrelay is)
    let apps = primary.psql("select application_name from pg_stat_replication");
    assert_eq!(apps.trim(), "walrelay", "{apps}");

    // complete a couple of segments and compare pg_receivewal's copies with pg_wal
    let start_seg = primary.current_lsn().segno(SEG);
    write_rows(&primary, "t2", 20000);
    let end = primary.switch_wal();
    // the segment holding the switch record is complete once the switch is streamed
    let last = segment_file_name(1, (end.0 - 1) / SEG, SEG);
    harness::wait_for(
        Duration::from_secs(40),
        &format!("pg_receivewal to complete {last}"),
        || recv.has_complete(&last),
    );
    let n = compare::assert_segments_identical(&recv_dir, &primary.pg_wal());
    assert!(
        n >= 1 && (end.0 - 1) / SEG >= start_seg,
        "compared {n} segments"
    );
    let lsn = write_rows(&primary, "t3", 100);
    standby.wait_replayed(lsn, Duration::from_secs(40));
    assert!(!recv.log().contains("error"), "{}", recv.log());
    assert!(!relay.log().contains("panicked"), "{}", relay.log());
}

#[test]
fn server_stream_pg15() {
    standby_and_receivewal("15");
}

#[test]
fn server_stream_pg18() {
    standby_and_receivewal("18");
}

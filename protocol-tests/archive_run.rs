//! `walrelay run` archiving a real primary's WAL to SeaweedFS, and a standby restored from
//! the archive alone.
//!
//! - `restore_from_archive_and_ack_archive`: with `ack = "archive"`, the S3 server is killed
//!   during WAL generation: the primary's slot does not move past what is archived (it keeps
//!   the WAL), and catches up when S3 returns. Then a standby made from a base backup, with
//!   `restore_command = 'walrelay wal-fetch …'` and no streaming, replays to the primary's
//!   state (rows compared).
use std::time::Duration;

use walrelay::Lsn;

use crate::harness::pg::{conf_quote, Pg};
use crate::harness::s3::S3Server;
use crate::harness::walrelay::{bin, Walrelay};
use crate::harness::{wait_for, TestDir};

fn slot_restart_lsn(pg: &Pg) -> Option<Lsn> {
    pg.try_psql("select restart_lsn from pg_replication_slots where slot_name = 'walrelay'")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn generate(pg: &Pg, rounds: usize) {
    for _ in 0..rounds {
        pg.psql("insert into t select g, repeat('y', 300) from generate_series(1, 3000) g");
        pg.switch_wal();
    }
}

#[test]
fn restore_from_archive_and_ack_archive() {
    let primary = Pg::primary("15", &[]);
    primary.psql("create table t(x int, pad text)");
    let standby = Pg::standby_prepared(&primary, "15", "", &[]);
    let mut s3 = S3Server::start();
    let dir = TestDir::new("archive-run");
    let conf = dir.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[upstream]\nstatus_interval = \"1s\"\n\
             [archive]\nurl = \"s3://{}/run\"\nack = \"archive\"\ncompression = \"zstd\"\n\
             scan_interval = \"500ms\"\npartial_interval = \"0\"\nretry_min = \"200ms\"\nretry_max = \"2s\"\n\
             [archive.s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            dir.join("data").display(),
            s3.bucket(),
            s3.endpoint(),
            s3.region(),
            s3.access_key(),
            s3.secret_key()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &dir.join("walrelay.log"),
        &["run", "-c", &conf_s, "--upstream", &conninfo],
        &[],
    );
    generate(&primary, 3);
    let target = primary.current_lsn();
    wait_for(
        Duration::from_secs(60),
        "slot to reach the archived WAL",
        || {
            slot_restart_lsn(&primary)
                .is_some_and(|l| l.segno(16 << 20) + 1 >= target.segno(16 << 20))
        },
    );

    // the object store goes down: WAL keeps coming, the slot stays where the archive is
    let held = slot_restart_lsn(&primary).unwrap();
    s3.kill();
    generate(&primary, 3);
    let during = primary.current_lsn();
    std::thread::sleep(Duration::from_secs(4));
    let still = slot_restart_lsn(&primary).unwrap();
    assert!(
        still.segno(16 << 20) <= held.segno(16 << 20) + 1,
        "slot advanced to {still} while S3 was down (was {held}, WAL at {during})"
    );
    s3.start_again();
    wait_for(
        Duration::from_secs(60),
        "slot to move once S3 is back",
        || {
            slot_restart_lsn(&primary)
                .is_some_and(|l| l.segno(16 << 20) + 1 >= during.segno(16 << 20))
        },
    );
    generate(&primary, 1);
    let end = primary.current_lsn();
    wait_for(Duration::from_secs(60), "the last segment archived", || {
        slot_restart_lsn(&primary).is_some_and(|l| l.segno(16 << 20) + 1 >= end.segno(16 << 20))
    });
    let expected = primary.psql("select count(*), sum(x) from t");

    // a standby that only has the archive
    let mut standby = standby;
    standby.append_conf(&format!(
        "restore_command = {}\n",
        conf_quote(&format!(
            "{} wal-fetch -c {} %f %p",
            bin().display(),
            conf_s
        ))
    ));
    standby.start();
    wait_for(
        Duration::from_secs(60),
        "standby to replay from the archive",
        || {
            standby
                .try_psql("select count(*), sum(x) from t")
                .ok()
                .as_deref()
                == Some(expected.as_str())
        },
    );
    assert!(
        !standby.log().contains("started streaming"),
        "the standby must not stream"
    );

    // verify over the same archive: all found
    let (status, out, err) = crate::harness::walrelay::run_to_end(&["verify", "-c", &conf_s]);
    assert!(status.success(), "verify failed:\n{out}\n{err}");
    assert!(out.contains(" 0 missing, 0 corrupt"), "{out}");
    w.stop();
}

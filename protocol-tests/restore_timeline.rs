//! A restore across a timeline switch: a backup taken on timeline 1, then the primary
//! stops, its standby is promoted, walrelay (multi-host conninfo) follows it to timeline 2
//! and archives `00000002.history` and the new timeline's WAL; `walrelay restore` to a time
//! after the promotion replays timeline 1, switches to timeline 2 as the history says, and
//! has the rows the promoted server wrote.

use std::time::Duration;

use crate::harness::majors;
use crate::harness::pg::Pg;
use crate::restore_common::{Env, RestoredPg, FINGERPRINT};

#[test]
fn restore_across_a_promotion_to_a_target_after_it() {
    let major = majors().into_iter().next().unwrap();
    let primary = Pg::primary(&major, &[]);
    let s1 = Pg::standby_of(&primary, &major, &primary.conninfo(), &[]);
    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        s1.port()
    );
    let env = Env::with(primary, &upstream, "");
    let p = &env.primary;
    p.psql("create table t (a int primary key, b text)");
    p.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
    let id = env.backup();
    p.psql("insert into t select g, md5(g::text) from generate_series(1001, 2000) g");
    let lsn = p.current_lsn();
    s1.wait_replayed(lsn, Duration::from_secs(30));
    env.relay.wait_flush(p, lsn);

    env.stop_primary();
    s1.promote();
    s1.psql("insert into t select g, 'after promotion' from generate_series(2001, 3000) g");
    let want = s1.psql(FINGERPRINT);
    let t_after = s1.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    s1.psql("delete from t where a > 10");
    crate::harness::wait_for(Duration::from_secs(60), "walrelay on timeline 2", || {
        env.relay.identify(&s1).is_some_and(|(_, tli, _)| tli == 2)
    });
    env.archive_current_of(&s1);
    assert!(env.wal_dir().join("00000002.history").is_file());

    let dir = env.t.join("restored-tli");
    let (code, out, err) = env.walrelay(&[
        "restore",
        "-c",
        env.cfg.to_str().unwrap(),
        "-D",
        dir.to_str().unwrap(),
        "--target-time",
        &t_after,
        "--target-action",
        "promote",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("restored backup {id} ")), "{out}");
    let mut srv = RestoredPg::new(&major, &dir, &env.t.join("restored-tli.log"));
    srv.start();
    srv.wait_target(Duration::from_secs(180));
    assert_eq!(
        srv.psql(FINGERPRINT).as_deref(),
        Ok(want.as_str()),
        "--- log ---\n{}",
        srv.log_text()
    );
    let log = srv.log_text();
    assert!(
        log.contains("restored log file \"00000002.history\" from archive"),
        "{log}"
    );
    // promoted at the target: a new timeline after 2
    crate::harness::wait_for(
        Duration::from_secs(30),
        "checkpoint on the new timeline",
        || {
            srv.psql("select timeline_id from pg_control_checkpoint()")
                .is_ok_and(|t| t.parse::<u32>().unwrap_or(0) >= 3)
                || {
                    let _ = srv.psql("checkpoint");
                    false
                }
        },
    );
}

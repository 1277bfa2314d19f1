//! Power loss, not only kill -9: walrelay as the synchronous standby of a real PostgreSQL 15
//! under a commit loop, run with the power-loss fault injection
//! (`WALRELAY_TEST_UNSYNCED_LOSS=1`, src/store/lossy.rs: writes not fsynced are held in memory
//! and die with the process), crashed with SIGKILL at random points.
//!
//! After every crash walrelay is first restarted with no upstream reachable: the position it
//! serves must be at least every flush position it had reported to the primary before the
//! crash (watched in `pg_stat_replication`) — nothing acknowledged may be missing from its
//! files. Then it is restarted against the primary and the loop goes on. At the end the
//! primary is stopped and a standby built from a base backup without WAL, with walrelay as
//! its only WAL source, must have every acknowledged commit.
//!
//! `powerloss_quick` runs 5 crashes (CI); `bench/powerloss.sh` runs the same test with
//! `WALRELAY_POWERLOSS_CRASHES=50` (or more) and prints the seed of the random crash points.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walrelay::lsn::Lsn;

use crate::harness::{self, pg::Pg, TestDir};
use crate::store_crash_common::{
    assert_fresh_standby_has, identify, start_relay, wait_serving, CommitLoop,
};

const LOSS: (&str, &str) = ("WALRELAY_TEST_UNSYNCED_LOSS", "1");

#[test]
fn powerloss_quick() {
    let crashes = std::env::var("WALRELAY_POWERLOSS_CRASHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    powerloss(crashes);
}

/// Highest `flush_lsn` the primary ever showed for walrelay (everything walrelay acknowledged).
struct AckWatch {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AckWatch {
    fn start(primary: &Pg) -> AckWatch {
        let install = primary.install().clone();
        let conn = primary.conninfo();
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(v) = install.psql_conninfo(
                    &conn,
                    "select flush_lsn from pg_stat_replication where application_name = 'walrelay'",
                ) {
                    for l in v.lines() {
                        if let Ok(lsn) = l.trim().parse::<Lsn>() {
                            m.fetch_max(lsn.0, Ordering::SeqCst);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        AckWatch {
            max,
            stop,
            thread: Some(thread),
        }
    }
    fn max(&self) -> Lsn {
        Lsn(self.max.load(Ordering::SeqCst))
    }
}

impl Drop for AckWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn powerloss(crashes: usize) {
    let seed = std::env::var("WALRELAY_POWERLOSS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("powerloss: {crashes} crashes, seed {seed}");
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut primary = Pg::primary("15", &["synchronous_standby_names = 'walrelay'"]);
    let t = TestDir::new("store-powerloss");
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let up = primary.conninfo();
    let dead = format!(
        "host=127.0.0.1 port={} user=postgres connect_timeout=1",
        harness::free_port()
    );
    let mut relay = start_relay(&t, &up, &data, port, &[LOSS]);
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
    primary.psql("create table t (id bigint primary key, pad text default repeat('x', 200))");
    let mut standby = Pg::standby_prepared_x(
        &primary,
        "15",
        &format!("host=127.0.0.1 port={port} user=postgres application_name=fresh"),
        &[],
        "none",
    );
    let commits = CommitLoop::start(&primary, "t");
    let acks = AckWatch::start(&primary);
    let mut last = 0;
    for crash in 0..crashes {
        harness::wait_for(Duration::from_secs(60), "commits to go on", || {
            commits.acked() >= last + 20
        });
        std::thread::sleep(Duration::from_millis(next(400)));
        relay.kill9();
        last = commits.acked();
        let acked = acks.max();
        // no upstream: what the files hold must cover everything acknowledged
        let probe = start_relay(&t, &dead, &data, port, &[LOSS]);
        let mut served = None;
        harness::wait_for(
            Duration::from_secs(30),
            "walrelay to serve without upstream",
            || {
                served = identify(primary.install(), port);
                served.is_some()
            },
        );
        let served = served.unwrap_or(Lsn::INVALID);
        if served < acked {
            // keep the evidence for pg_waldump
            let keep = std::env::temp_dir().join(format!("walrelay-powerloss-failed-{seed}"));
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(&data)
                .arg(&keep)
                .status();
            eprintln!("powerloss: data directory kept in {}", keep.display());
        }
        assert!(
            served >= acked,
            "crash {crash} (seed {seed}): walrelay acknowledged {acked} but serves only up to {served} after the crash"
        );
        drop(probe);
        relay = start_relay(&t, &up, &data, port, &[LOSS]);
        wait_serving(&primary, port, primary.current_lsn());
        eprintln!("powerloss: crash {crash}: acknowledged {acked}, served {served} after the crash, {last} commits");
    }
    harness::wait_for(Duration::from_secs(60), "commits to go on", || {
        commits.acked() >= last + 20
    });
    relay.kill9();
    std::thread::sleep(Duration::from_millis(200));
    primary.stop_immediate();
    let acked = commits.finish();
    drop(acks);
    let _relay = start_relay(&t, &dead, &data, port, &[LOSS]);
    harness::wait_for(
        Duration::from_secs(30),
        "walrelay to serve without upstream",
        || identify(primary.install(), port).is_some(),
    );
    assert_fresh_standby_has(&mut standby, "t", acked);
    eprintln!("powerloss: {crashes} crashes, {acked} acknowledged commits all on the fresh standby (seed {seed})");
}

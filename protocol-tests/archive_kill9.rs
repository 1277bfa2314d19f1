//! `kill -9` of `walrelay run` while uploads to SeaweedFS are in flight, then restart: the
//! archive ends up without a gap, with no object whose bytes differ from the primary's WAL,
//! and each restart redoes at most the uploads that were interrupted.
//!
//! - `kill9_during_uploads`: PostgreSQL 15 produces segments continuously; walrelay (the real
//!   binary, archive `s3://…` from a config file) is SIGKILLed several times while its
//!   metrics show completed and pending uploads, and restarted each time. After catching up:
//!   no conflict (log and `walrelay_archive_conflicts_total`), at most `concurrency` segments
//!   found "already archived with the same content" per restart, `walrelay verify` exits 0
//!   with everything FOUND, and every segment fetched with `walrelay wal-fetch` equals the
//!   primary's `pg_wal` file.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::pg::Pg;
use crate::harness::s3::S3Server;
use crate::harness::walrelay::{run_to_end, Walrelay};
use crate::harness::{self, compare, wait_for, TestDir};

const SEG: u64 = 16 << 20;
const CONCURRENCY: usize = 4;
const KILLS: usize = 4;

/// The value of metric `name` on walrelay's `/metrics` (0 when absent), or `None` when the
/// endpoint does not answer.
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let v = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name || k.starts_with(&format!("{name}{{"))).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0);
    Some(v)
}

#[test]
fn kill9_during_uploads() {
    let primary = Pg::primary("15", &["wal_keep_size = '1GB'"]);
    primary.psql("create table t (x int, pad text)");
    let s3 = S3Server::start();
    let dir = TestDir::new("archive-kill9");
    let metrics_port = harness::free_port();
    let conf = dir.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[upstream]\nstatus_interval = \"1s\"\nreconnect_min = \"100ms\"\n\
             reconnect_max = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [archive]\nurl = \"s3://{}/k9\"\ncompression = \"none\"\nconcurrency = {CONCURRENCY}\n\
             scan_interval = \"200ms\"\npartial_interval = \"0\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n\
             [archive.s3]\nendpoint = \"{}\"\nallow_http = true\nregion = \"{}\"\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
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
    let start = |i: usize| {
        Walrelay::spawn_with(
            &dir.join(format!("walrelay-{i}.log")),
            &["run", "-c", &conf_s, "--upstream", &conninfo],
            &[("WALRELAY_LOG", "info")],
        )
    };

    let stop = AtomicBool::new(false);
    let logs = std::thread::scope(|scope| {
        // WAL, segment after segment, for as long as walrelay is being killed
        let writer = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                primary.psql(
                    "insert into t select g, repeat('k', 200) from generate_series(1, 2000) g",
                );
                primary.switch_wal();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut logs = Vec::new();
        for i in 0..KILLS {
            let mut w = start(i);
            // kill while this incarnation has uploaded something and more is pending
            wait_for(Duration::from_secs(30), "uploads in flight", || {
                metric(metrics_port, walrelay::archive::UPLOADED_SEGMENTS).is_some_and(|v| v >= 1.0)
                    && metric(metrics_port, walrelay::archive::PENDING_SEGMENTS)
                        .is_some_and(|v| v >= 1.0)
            });
            w.kill9();
            logs.push(w.log());
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        logs
    });
    let end = primary.switch_wal();
    let last = (end.0 - 1) / SEG;
    let last_name = segment_file_name(1, last, SEG);

    // the last incarnation catches up
    let mut w = start(KILLS);
    let fetch_dir = dir.subdir("fetched");
    wait_for(
        Duration::from_secs(40),
        &format!("{last_name} archived"),
        || {
            let (st, _, _) = run_to_end(&[
                "wal-fetch",
                "-c",
                &conf_s,
                "--prefetch",
                "0",
                &last_name,
                fetch_dir.join("probe").to_str().unwrap(),
            ]);
            st.success()
        },
    );
    assert_eq!(
        metric(metrics_port, walrelay::archive::CONFLICTS),
        Some(0.0),
        "conflicts counted"
    );
    let final_log = w.log();
    w.stop();

    for (i, log) in logs.iter().chain(std::iter::once(&final_log)).enumerate() {
        assert!(!log.contains("archive conflict"), "incarnation {i}:\n{log}");
        assert!(!log.contains("panicked"), "incarnation {i}:\n{log}");
        if i > 0 {
            let redone = log
                .matches("was already archived with the same content")
                .count();
            eprintln!("incarnation {i}: {redone} interrupted uploads found complete and identical");
            assert!(
                redone <= CONCURRENCY,
                "incarnation {i} redid {redone} uploads (at most {CONCURRENCY} were in flight):\n{log}"
            );
        }
    }
    assert!(
        logs.iter()
            .skip(1)
            .chain(std::iter::once(&final_log))
            .all(|l| !l.is_empty()),
        "every incarnation logged"
    );

    let (status, out, err) = run_to_end(&["verify", "-c", &conf_s]);
    assert!(status.success(), "verify failed:\n{out}\n{err}");
    assert!(out.contains(" 0 missing, 0 corrupt"), "{out}");
    eprintln!("verify: {}", out.lines().last().unwrap_or_default());

    // every segment, fetched back, is the primary's
    std::fs::remove_file(fetch_dir.join("probe")).unwrap();
    for segno in 1..=last {
        let name = segment_file_name(1, segno, SEG);
        let (st, o, e) = run_to_end(&[
            "wal-fetch",
            "-c",
            &conf_s,
            &name,
            fetch_dir.join(&name).to_str().unwrap(),
        ]);
        assert!(st.success(), "wal-fetch {name}: {o}{e}");
    }
    let n = compare::assert_segments_identical(&fetch_dir, &primary.pg_wal());
    assert_eq!(n as u64, last, "segments compared");
    assert!(last >= 8, "only {last} segments were produced");
}

//! `scripts/quickstart.sh` (issue 13): runs twice in a row on the same directory against a
//! real PostgreSQL 15 it creates itself; both runs succeed, the second reuses the cluster and
//! walrelay's data, and each time the metrics endpoint answered before walrelay was stopped
//! (`WALRELAY_QUICKSTART_EXIT_AFTER_READY=1`). A walrelay that cannot start makes the
//! quickstart exit non-zero.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, pg::PgInstall, TestDir};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart.sh")
}

struct Ports {
    pg: u16,
    listen: u16,
    metrics: u16,
}

/// Runs the quickstart (at most 180 s); returns (exit code, stdout+stderr).
fn quickstart(dir: &Path, ports: &Ports, run: &str) -> (i32, String) {
    let pgbin = PgInstall::get("15")
        .bin("postgres")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let log = dir.join(format!("quickstart-{run}.log"));
    let out = std::fs::File::create(&log).expect("create log");
    let err = out.try_clone().expect("clone log");
    let mut child = Command::new("bash")
        .arg(script())
        .env("WALRELAY_BIN", harness::walrelay::bin())
        .env("WALRELAY_QUICKSTART_DIR", dir.join("qs"))
        .env("WALRELAY_QUICKSTART_PGBIN", &pgbin)
        .env("PGPORT_QUICKSTART", ports.pg.to_string())
        .env(
            "WALRELAY_QUICKSTART_LISTEN",
            format!("127.0.0.1:{}", ports.listen),
        )
        .env(
            "WALRELAY_QUICKSTART_METRICS",
            format!("127.0.0.1:{}", ports.metrics),
        )
        .env("WALRELAY_QUICKSTART_EXIT_AFTER_READY", "1")
        .env_remove("WALRELAY_UPSTREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn quickstart");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait quickstart") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "quickstart did not finish in 180 s:\n{}",
                harness::read_lossy(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code().unwrap_or(-1), harness::read_lossy(&log))
}

#[test]
fn quickstart_runs_twice_and_serves_metrics() {
    let dir = TestDir::new("quickstart");
    let ports = Ports {
        pg: harness::free_port(),
        listen: harness::free_port(),
        metrics: harness::free_port(),
    };
    let ready = format!(
        "walrelay is up and http://127.0.0.1:{}/metrics answers",
        ports.metrics
    );

    let (code, out) = quickstart(dir.path(), &ports, "1");
    assert_eq!(code, 0, "first run:\n{out}");
    assert!(
        out.contains("creating the throwaway primary"),
        "first run:\n{out}"
    );
    assert!(out.contains(&ready), "first run:\n{out}");
    assert!(out.contains("walrelay stopped"), "first run:\n{out}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{}/", ports.metrics))
            && out.contains("IDENTIFY_SYSTEM")
            && out.contains("pg_receivewal -h 127.0.0.1")
            && out.contains("check"),
        "first run prints what to try next:\n{out}"
    );
    let segments = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| r.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    assert!(
        segments(&dir.join("qs/data")) > 0,
        "walrelay wrote its data dir"
    );

    let (code, out) = quickstart(dir.path(), &ports, "2");
    assert_eq!(code, 0, "second run:\n{out}");
    assert!(
        out.contains("reusing the throwaway primary"),
        "second run:\n{out}"
    );
    assert!(out.contains(&ready), "second run:\n{out}");
    assert!(out.contains("walrelay stopped"), "second run:\n{out}");
    assert!(
        !out.contains("ERROR") && !out.contains("error:"),
        "second run:\n{out}"
    );

    // A walrelay that cannot start (its metrics address is taken) fails the quickstart.
    let busy = std::net::TcpListener::bind(("127.0.0.1", ports.metrics)).expect("bind");
    let (code, out) = quickstart(dir.path(), &ports, "3");
    drop(busy);
    assert_ne!(code, 0, "walrelay could not listen, yet:\n{out}");
    assert!(
        out.contains("quickstart: walrelay exited with status 1"),
        "third run:\n{out}"
    );
    let metrics = format!("127.0.0.1:{}", ports.metrics);
    assert!(
        out.lines()
            .any(|l| l.contains("walrelay: error:") && l.contains(&metrics)),
        "third run names the address it could not listen on:\n{out}"
    );
}

//! Helpers of the crash tests (`store_crash.rs`, `store_powerloss.rs`): walrelay `run`
//! processes on a fixed port, a commit loop that counts acknowledged commits, a poller of the
//! served position, and the final check on a fresh standby.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use walrelay::lsn::Lsn;

use crate::harness::pg::{Pg, PgInstall};
use crate::harness::walrelay::Walrelay;
use crate::harness::{self, TestDir};

/// `walrelay run` from `upstream` into `data`, listening on `port` (not waiting for anything).
pub fn start_relay(
    t: &TestDir,
    upstream: &str,
    data: &Path,
    port: u16,
    env: &[(&str, &str)],
) -> Walrelay {
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "run",
        "--upstream",
        upstream,
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--status-interval",
        "1s",
    ];
    let mut all_env = vec![("WALRELAY_LOG", "info")];
    all_env.extend_from_slice(env);
    Walrelay::spawn_with(&t.join("walrelay.log"), &args, &all_env)
}

/// IDENTIFY_SYSTEM's position on walrelay at `port`.
pub fn identify(install: &PgInstall, port: u16) -> Option<Lsn> {
    let out = install
        .psql_conninfo(
            &format!(
                "host=127.0.0.1 port={port} user=postgres application_name=probe replication=true"
            ),
            "IDENTIFY_SYSTEM",
        )
        .ok()?;
    out.split('|').nth(2)?.parse().ok()
}

/// Waits until walrelay at `port` serves up to `lsn`.
pub fn wait_serving(pg: &Pg, port: u16, lsn: Lsn) {
    harness::wait_for(
        Duration::from_secs(60),
        &format!("walrelay to serve up to {lsn}"),
        || identify(pg.install(), port).is_some_and(|p| p >= lsn),
    );
}

/// One psql session inserting ids 1, 2, 3, … into `table` in autocommit mode (each insert a
/// synchronous commit); an id is printed by psql only once its commit was acknowledged.
pub struct CommitLoop {
    child: Arc<Mutex<Child>>,
    acked: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl CommitLoop {
    pub fn start(pg: &Pg, table: &str) -> CommitLoop {
        let mut child = pg
            .install()
            .command("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let table = table.to_string();
        let s = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut i = 1u64;
            while !s.load(Ordering::Relaxed) {
                let line = format!("insert into {table} values ({i}) returning id;\n");
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
                i += 1;
            }
        });
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(id) = line.trim().parse::<u64>() {
                    a.fetch_max(id, Ordering::SeqCst);
                }
            }
        });
        CommitLoop {
            child: Arc::new(Mutex::new(child)),
            acked,
            reader: Some(reader),
            writer: Some(writer),
            stop,
        }
    }

    /// Highest id whose commit was acknowledged so far (ids are sequential).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Ends the loop (call after the primary stopped) and returns the acknowledged count.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        {
            let mut c = self.child.lock().unwrap();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.acked()
    }
}

impl Drop for CommitLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls walrelay's IDENTIFY_SYSTEM position every 50 ms and keeps every answer.
pub struct Poller {
    install: PgInstall,
    port: u16,
    seen: Arc<Mutex<Vec<Lsn>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn start(pg: &Pg, port: u16) -> Poller {
        let install = pg.install().clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (i, s, st) = (install.clone(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(p) = identify(&i, port) {
                    s.lock().unwrap().push(p);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Poller {
            install,
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn identify(&self) -> Option<Lsn> {
        identify(&self.install, self.port)
    }

    /// Stops polling; every position seen, in order.
    pub fn finish(mut self) -> Vec<Lsn> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let v = self.seen.lock().unwrap().clone();
        v
    }
}

/// Starts the fresh standby (primary_conninfo at walrelay) and waits until it has every id
/// 1..=acked in `table`.
pub fn assert_fresh_standby_has(standby: &mut Pg, table: &str, acked: u64) {
    standby.start();
    let q = format!("select count(*) from {table} where id <= {acked}");
    let mut got = String::new();
    let ok = (0..900).any(|_| {
        got = standby.try_psql(&q).unwrap_or_default();
        if got == acked.to_string() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(
        ok,
        "the fresh standby has {got:?} of the {acked} acknowledged commits; its log:\n{}",
        standby.log()
    );
}

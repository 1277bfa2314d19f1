//! Helpers shared by the walsender tests (`server_*.rs`): a walrelay `run` with a listener in
//! front of a real primary, replication-mode psql queries against it, pg_receivewal children.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use walrelay::lsn::Lsn;

use crate::harness::{self, pg::Pg, walrelay::Walrelay, TestDir};

pub struct Relay {
    pub proc: Walrelay,
    pub port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Appended to the probe conninfo (e.g. credentials, sslmode).
    pub probe: String,
}

impl Relay {
    /// `walrelay run` streaming from `primary`, listening on a free port, plus `extra` args.
    pub fn start(t: &TestDir, primary: &Pg, extra: &[&str]) -> Relay {
        let data = t.subdir("relay");
        std::fs::create_dir_all(&data).unwrap();
        let port = harness::free_port();
        Relay::start_on(t, primary, &data, port, extra)
    }

    pub fn start_on(t: &TestDir, primary: &Pg, data: &Path, port: u16, extra: &[&str]) -> Relay {
        Relay::start_probe(t, primary, data, port, extra, "")
    }

    pub fn start_probe(
        t: &TestDir,
        primary: &Pg,
        data: &Path,
        port: u16,
        extra: &[&str],
        probe: &str,
    ) -> Relay {
        Relay::start_full(t, primary, &primary.conninfo(), data, port, extra, probe)
    }

    /// `upstream`: walrelay's conninfo; `primary`: where the probe's target LSN comes from.
    pub fn start_full(
        t: &TestDir,
        primary: &Pg,
        upstream: &str,
        data: &Path,
        port: u16,
        extra: &[&str],
        probe: &str,
    ) -> Relay {
        Relay::start_limited(t, primary, upstream, data, port, extra, probe, None)
    }

    /// [`Relay::start_full`] with `RLIMIT_NOFILE` = `nofile` for the walrelay process.
    #[allow(clippy::too_many_arguments)]
    pub fn start_limited(
        t: &TestDir,
        primary: &Pg,
        upstream: &str,
        data: &Path,
        port: u16,
        extra: &[&str],
        probe: &str,
        nofile: Option<u64>,
    ) -> Relay {
        let log = t.join("walrelay.log");
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "run",
            "--upstream",
            upstream,
            "--data-dir",
            data.to_str().unwrap(),
            "--status-interval",
            "1s",
        ];
        // `extra` may name its own listen addresses (e.g. TCP plus a socket directory).
        if !extra.contains(&"--listen") {
            args.extend(["--listen", listen.as_str()]);
        }
        args.extend_from_slice(extra);
        let proc = Walrelay::spawn_limited(&log, &args, &[("WALRELAY_LOG", "info")], nofile);
        let r = Relay {
            proc,
            port,
            data: data.to_path_buf(),
            log,
            probe: probe.to_string(),
        };
        let target = primary.current_lsn();
        harness::wait_for(Duration::from_secs(30), "walrelay to serve", || {
            r.identify(primary).is_some_and(|(_, _, pos)| pos >= target)
        });
        r
    }

    pub fn conninfo(&self, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres application_name={app}",
            self.port
        )
    }

    /// IDENTIFY_SYSTEM through psql in replication mode.
    pub fn identify(&self, pg: &Pg) -> Option<(String, u32, Lsn)> {
        let out = pg
            .install()
            .psql_conninfo(
                &format!("{} replication=true {}", self.conninfo("psql"), self.probe),
                "IDENTIFY_SYSTEM",
            )
            .ok()?;
        let mut it = out.split('|');
        let sysid = it.next()?.to_string();
        let tli = it.next()?.parse().ok()?;
        let pos = it.next()?.parse().ok()?;
        Some((sysid, tli, pos))
    }

    pub fn wait_flush(&self, pg: &Pg, lsn: Lsn) {
        harness::wait_for(
            Duration::from_secs(30),
            &format!("walrelay flush to reach {lsn}"),
            || self.identify(pg).is_some_and(|(_, _, p)| p >= lsn),
        );
    }

    pub fn log(&self) -> String {
        harness::read_lossy(&self.log)
    }
}

/// A pg_receivewal child process (killed on drop).
pub struct ReceiveWal {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl ReceiveWal {
    pub fn start(pg: &Pg, port: u16, dir: &Path, extra: &[&str]) -> ReceiveWal {
        let conn = format!("host=127.0.0.1 port={port} user=postgres");
        ReceiveWal::start_conn(pg, &conn, dir, extra)
    }

    pub fn start_conn(pg: &Pg, conn: &str, dir: &Path, extra: &[&str]) -> ReceiveWal {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let f = std::fs::File::create(&log).unwrap();
        let child = pg
            .install()
            .command("pg_receivewal")
            .args(["-d", conn, "-D"])
            .arg(dir)
            .args(["-n", "-v", "-s", "1"])
            .args(extra)
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("spawn pg_receivewal");
        ReceiveWal {
            child,
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub fn log(&self) -> String {
        harness::read_lossy(&self.log)
    }

    pub fn has_complete(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }
}

impl Drop for ReceiveWal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes some rows and returns the primary's LSN after them.
pub fn write_rows(pg: &Pg, table: &str, n: u32) -> Lsn {
    pg.psql(&format!(
        "create table if not exists {table} (id int, pad text)"
    ));
    pg.psql(&format!(
        "insert into {table} select g, md5(g::text) from generate_series(1, {n}) g"
    ));
    pg.current_lsn()
}

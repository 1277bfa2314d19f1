//! Shared pieces of the restore and drill tests: a PostgreSQL server started on a
//! restored data directory, and the primary's data fingerprint.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::pg::{conf_quote, give_to_server, PgInstall};
use crate::harness::{free_port, read_lossy, wait_for};

/// A server on a restored directory; stopped (`-m immediate`) on Drop.
pub struct RestoredPg {
    pub install: PgInstall,
    pub datadir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    running: bool,
}

impl RestoredPg {
    /// Prepares `datadir` (restored) to run here: its own port, no archiving.
    pub fn new(major: &str, datadir: &Path, log: &Path) -> RestoredPg {
        let port = free_port();
        let conf = datadir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&format!(
            "\n# restored copy\nport = {port}\narchive_mode = off\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n"
        ));
        std::fs::write(&conf, text).expect("write postgresql.conf");
        give_to_server(datadir);
        if let Some(parent) = log.parent() {
            give_to_server(parent);
        }
        RestoredPg {
            install: PgInstall::get(major),
            datadir: datadir.to_path_buf(),
            log: log.to_path_buf(),
            port,
            running: false,
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut c = self.install.server_command("pg_ctl");
        c.arg("-D").arg(&self.datadir);
        c
    }

    /// `pg_ctl -W start` (recovery to a target may take a while or stop the server).
    pub fn start(&mut self) {
        let out = self
            .pg_ctl()
            .args(["-W", "-l"])
            .arg(&self.log)
            .arg("start")
            .output()
            .expect("pg_ctl start");
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        self.running = true;
    }

    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.install.psql_conninfo(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            sql,
        )
    }

    /// Waits until recovery paused at its target (`pg_get_wal_replay_pause_state()`) or
    /// ended, and the server answers.
    pub fn wait_target(&self, timeout: Duration) {
        wait_for(timeout, "restored server at its recovery target", || {
            matches!(
                self.psql(
                    "select case when not pg_is_in_recovery() then 'done' \
                     else pg_get_wal_replay_pause_state() end"
                )
                .as_deref(),
                Ok("done") | Ok("paused")
            )
        });
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for RestoredPg {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// The table the restore tests write, and its fingerprint: count and md5 of the rows.
pub const FINGERPRINT: &str =
    "select count(*) || ':' || coalesce(md5(string_agg(a::text || b, ',' order by a)), '') from t";

/// `pg_basebackup -Ft -X none` of the server on `port` into `dest`, with extra options.
pub fn basebackup_tar(install: &PgInstall, port: u16, dest: &Path, extra: &[&str]) {
    let out = install
        .command("pg_basebackup")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-Ft", "-X", "none", "-c", "fast", "--no-sync", "-D"])
        .arg(dest)
        .args(extra)
        .output()
        .expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `restore_command` argv copying from a directory of WAL (`sh -c 'cp DIR/$0 $1' %f %p`).
pub fn cp_restore_command(wal_dir: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("cp {}/\"$0\" \"$1\"", wal_dir.display()),
    ]
}

pub fn quote(s: &str) -> String {
    conf_quote(s)
}

/// A primary, `walrelay run` in front of it archiving to `file://<dir>/archive`
/// (uncompressed, so that a test can flip a byte of a stored backup), and its config file.
pub struct Env {
    pub t: crate::harness::TestDir,
    pub primary: crate::harness::pg::Pg,
    pub relay: crate::server_common::Relay,
    pub cfg: PathBuf,
    pub archive: PathBuf,
    pub sysid: u64,
}

impl Env {
    pub fn new(major: &str, extra_toml: &str) -> Env {
        let primary = crate::harness::pg::Pg::primary(major, &[]);
        let upstream = primary.conninfo();
        Env::with(primary, &upstream, extra_toml)
    }

    /// walrelay following `upstream` (e.g. a multi-host conninfo), `primary` its first server.
    pub fn with(primary: crate::harness::pg::Pg, upstream: &str, extra_toml: &str) -> Env {
        let t = crate::harness::TestDir::new("restore-env");
        let archive = t.subdir("archive");
        let data = t.subdir("relay");
        let port = free_port();
        let cfg = t.join("walrelay.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\n\n[upstream]\nconninfo = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n\n\
                 [archive]\nurl = \"file://{}\"\ncompression = \"none\"\npartial_interval = \"0s\"\n\n{extra_toml}\n",
                data.display(),
                upstream,
                archive.display()
            ),
        )
        .unwrap();
        let relay = crate::server_common::Relay::start_full(
            &t,
            &primary,
            upstream,
            &data,
            port,
            &["--config", cfg.to_str().unwrap()],
            "",
        );
        let sysid = primary.system_identifier();
        Env {
            sysid,
            t,
            primary,
            relay,
            cfg,
            archive,
        }
    }

    /// `walrelay ARGS` to its end: (exit code, stdout, stderr).
    pub fn walrelay(&self, args: &[&str]) -> (i32, String, String) {
        let (st, out, err) = crate::harness::walrelay::run_to_end(args);
        (st.code().unwrap_or(-1), out, err)
    }

    /// `walrelay backup`, waiting for its WAL; returns the backup ID.
    pub fn backup(&self) -> String {
        let (code, out, err) = self.walrelay(&["backup", "-c", self.cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "walrelay backup: {out}{err}");
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no backup id in {out}"))
            .to_string()
    }

    /// Switches WAL and waits until the archive holds the segment the switch closed.
    pub fn archive_current(&self) {
        self.archive_current_of(&self.primary)
    }

    /// [`Env::archive_current`] on another server walrelay follows (after a promotion).
    pub fn archive_current_of(&self, pg: &crate::harness::pg::Pg) {
        let seg = pg.psql("select pg_walfile_name(pg_current_wal_lsn())");
        pg.switch_wal();
        let wal = self.archive.join(self.sysid.to_string()).join("wal");
        wait_for(Duration::from_secs(60), &format!("{seg} archived"), || {
            wal.join(&seg).is_file() || wal.join(format!("{seg}.zst")).is_file()
        });
    }

    /// Stops the first server (a failover).
    pub fn stop_primary(&self) {
        let out = self
            .primary
            .install()
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.primary.datadir())
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .expect("pg_ctl stop");
        assert!(out.status.success(), "{out:?}");
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.archive.join(self.sysid.to_string()).join("wal")
    }

    pub fn backup_dir(&self, id: &str) -> PathBuf {
        self.archive
            .join(self.sysid.to_string())
            .join("backups")
            .join(id)
    }
}

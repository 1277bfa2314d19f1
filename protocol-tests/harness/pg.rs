//! Real PostgreSQL servers for the integration tests: installs (`PgInstall`), primaries and
//! standbys (`Pg`), and running server-side tools as a non-root user.
//!
//! Owns: the per-server temporary directory (data dir, log file), the server process
//! (stopped with `pg_ctl -m immediate` on Drop, also during a panic). Must not: modify the
//! installations under `$WALRELAY_INFRA`.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, server-side tools
//! (initdb, pg_ctl and so postgres) run inside a user namespace that maps root to uid 65534
//! (`unshare --user --map-user=65534 --map-group=65534`): files stay root-owned outside and
//! the server sees itself as their owner. If user namespaces are unavailable, a dedicated
//! user (`walrelaypg`, created with `useradd`) runs them via `runuser` and the directories
//! are chown'ed to it. Not root: tools run directly. `WALRELAY_PG_RUNAS` (`direct`,
//! `userns` or a user name) overrides the detection. Client tools (psql, pg_basebackup, ...)
//! always run as the current user.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use walrelay::Lsn;

use super::{read_lossy, set_mode, wait_for, TestDir};

/// How server-side PostgreSQL tools are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// Not root: run directly.
    Direct,
    /// Root: `unshare --user --map-user=65534 --map-group=65534 --`.
    Userns,
    /// Root without user namespaces: `runuser -u USER --`, directories chown'ed to USER.
    User(String),
}

const DEDICATED_USER: &str = "walrelaypg";

fn current_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .unwrap_or(0)
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ensure_user(name: &str) {
    if quiet_ok(Command::new("id").args(["-u", name])) {
        return;
    }
    let out = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/bin/sh", name])
        .output()
        .expect("run useradd");
    if !out.status.success() && !quiet_ok(Command::new("id").args(["-u", name])) {
        panic!(
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The process-wide way of running server tools (detected once).
pub fn run_as() -> &'static RunAs {
    static RUN_AS: OnceLock<RunAs> = OnceLock::new();
    RUN_AS.get_or_init(|| {
        let forced = std::env::var("WALRELAY_PG_RUNAS").unwrap_or_default();
        let r = match forced.as_str() {
            "direct" => RunAs::Direct,
            "userns" => RunAs::Userns,
            "" => {
                if current_uid() != 0 {
                    RunAs::Direct
                } else if quiet_ok(Command::new("unshare").args([
                    "--user",
                    "--map-user=65534",
                    "--map-group=65534",
                    "--",
                    "true",
                ])) {
                    RunAs::Userns
                } else {
                    RunAs::User(DEDICATED_USER.to_string())
                }
            }
            user => RunAs::User(user.to_string()),
        };
        if let RunAs::User(u) = &r {
            ensure_user(u);
        }
        r
    })
}

/// `argv` (program first) run the way server tools are run here (see [`run_as`]): directly,
/// in a user namespace, or as the dedicated user.
pub fn command_as_server<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> Command {
    let mut c = match run_as() {
        RunAs::Direct => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            return c;
        }
        RunAs::Userns => {
            let mut c = Command::new("unshare");
            c.args(["--user", "--map-user=65534", "--map-group=65534", "--"]);
            c
        }
        RunAs::User(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]);
            c
        }
    };
    c.args(argv);
    c
}

/// Makes `path` (recursively) owned by the server user when a dedicated user is in use;
/// a no-op otherwise (in userns mode root-owned files look owned by the server).
pub fn give_to_server(path: &Path) {
    if let RunAs::User(u) = run_as() {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{u}:"))
            .arg(path)
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "chown {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One PostgreSQL installation: "15" (Debian, via the `$WALRELAY_INFRA/pg/15` link), "14",
/// "18" (PyPI trees under `$WALRELAY_INFRA/pg/<major>`).
#[derive(Debug, Clone)]
pub struct PgInstall {
    pub major: String,
    pub root: PathBuf,
}

impl PgInstall {
    pub fn get(major: &str) -> PgInstall {
        let root = super::infra_dir().join("pg").join(major);
        let postgres = root.join("bin").join("postgres");
        assert!(
            postgres.exists(),
            "PostgreSQL {major} not installed at {} (run scripts/test-infra.sh)",
            root.display()
        );
        PgInstall {
            major: major.to_string(),
            root,
        }
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.root.join("bin").join(tool)
    }

    /// The library dir when this install ships its own libpq (the PyPI builds, whose
    /// RUNPATH points to /opt/postgresql/lib); None for Debian's.
    pub fn lib_dir(&self) -> Option<PathBuf> {
        let lib = self.root.join("lib");
        lib.join("libpq.so.5").exists().then_some(lib)
    }

    /// A client tool (psql, pg_basebackup, pg_receivewal, pg_waldump, ...) run as the
    /// current user, with LD_LIBRARY_PATH set for PyPI builds.
    pub fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin(tool));
        if let Some(lib) = self.lib_dir() {
            c.env("LD_LIBRARY_PATH", lib);
        }
        c.stdin(Stdio::null());
        c
    }

    /// A server-side tool (initdb, pg_ctl, postgres) run as non-root (see module docs).
    pub fn server_command(&self, tool: &str) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(lib) = self.lib_dir() {
            // explicit `env` so that no wrapper can drop the variable on the way
            argv.push("env".into());
            let mut kv = std::ffi::OsString::from("LD_LIBRARY_PATH=");
            kv.push(lib.as_os_str());
            argv.push(kv);
        }
        argv.push(self.bin(tool).into_os_string());
        let mut c = command_as_server(&argv);
        c.stdin(Stdio::null());
        c
    }

    /// `psql -X -At -v ON_ERROR_STOP=1 -d CONNINFO -c SQL` (any conninfo, e.g. with sslmode or
    /// `replication=true`). Ok(stdout without the final newline) or Err(stderr).
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        let out = self
            .command("psql")
            .env("PGCONNECT_TIMEOUT", "10")
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        psql_result(out)
    }
}

fn psql_result(out: Output) -> Result<String, String> {
    if out.status.success() {
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Quotes a postgresql.conf string value.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// One PostgreSQL server on 127.0.0.1 with its own temp dir (`<dir>/data`, `<dir>/postgres.log`).
pub struct Pg {
    install: PgInstall,
    dir: TestDir,
    datadir: PathBuf,
    logfile: PathBuf,
    port: u16,
    running: bool,
}

impl Pg {
    /// initdb (-A trust, user postgres) and start a primary on a free loopback port with
    /// replication enabled. `extra` lines are appended to postgresql.conf (later lines win).
    pub fn primary(major: &str, extra: &[&str]) -> Pg {
        let install = PgInstall::get(major);
        let dir = TestDir::new(&format!("pg{major}"));
        give_to_server(dir.path());
        let datadir = dir.join("data");
        let logfile = dir.join("postgres.log");
        run_checked(
            install
                .server_command("initdb")
                .arg("-D")
                .arg(&datadir)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync"),
            &format!("initdb (PostgreSQL {major})"),
        );
        let port = super::free_port();
        let mut pg = Pg {
            install,
            dir,
            datadir,
            logfile,
            port,
            running: false,
        };
        pg.append_conf(&format!(
            "\n# walrelay test harness\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = ''\n\
             wal_level = replica\n\
             max_wal_senders = 20\n\
             max_replication_slots = 20\n\
             wal_keep_size = '256MB'\n\
             fsync = on\n\
             shared_buffers = '32MB'\n\
             hot_standby = on\n\
             log_min_messages = info\n\
             log_connections = on\n\
             log_disconnections = on\n\
             log_replication_commands = on\n\
             log_line_prefix = '%m [%p] %q%a '\n"
        ));
        for line in extra {
            pg.append_conf(line);
        }
        pg.start();
        pg
    }

    /// A hot standby of `primary`: `pg_basebackup -X stream -c fast` from the primary itself,
    /// `standby.signal`, `primary_conninfo` (may point at walrelay), `port`, `hot_standby`,
    /// `wal_receiver_status_interval = 1s`, then `extra` lines (e.g. `primary_slot_name`,
    /// `restore_command`), then started.
    pub fn standby_of(primary: &Pg, major: &str, primary_conninfo: &str, extra: &[&str]) -> Pg {
        let mut pg = Pg::standby_prepared(primary, major, primary_conninfo, extra);
        pg.start();
        pg
    }

    /// Like [`Pg::standby_of`] but not started (call [`Pg::start`]).
    pub fn standby_prepared(
        primary: &Pg,
        major: &str,
        primary_conninfo: &str,
        extra: &[&str],
    ) -> Pg {
        Pg::standby_prepared_x(primary, major, primary_conninfo, extra, "stream")
    }

    /// Like [`Pg::standby_prepared`] with pg_basebackup's `-X` method (`none`: the backup
    /// has no WAL, so everything from its start comes from `primary_conninfo`).
    pub fn standby_prepared_x(
        primary: &Pg,
        major: &str,
        primary_conninfo: &str,
        extra: &[&str],
        wal_method: &str,
    ) -> Pg {
        let install = PgInstall::get(major);
        let dir = TestDir::new(&format!("pg{major}-standby"));
        let datadir = dir.join("data");
        let logfile = dir.join("postgres.log");
        run_checked(
            install
                .command("pg_basebackup")
                .env("PGCONNECT_TIMEOUT", "10")
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(&datadir)
                .args(["-X", wal_method, "-c", "fast", "--no-sync"]),
            &format!("pg_basebackup from port {}", primary.port),
        );
        give_to_server(dir.path());
        set_mode(&datadir, 0o700);
        std::fs::write(datadir.join("standby.signal"), "").expect("write standby.signal");
        let port = super::free_port();
        let mut pg = Pg {
            install,
            dir,
            datadir,
            logfile,
            port,
            running: false,
        };
        pg.append_conf(&format!(
            "\n# walrelay test harness: standby\n\
             port = {port}\n\
             hot_standby = on\n\
             wal_receiver_status_interval = '1s'\n\
             primary_conninfo = {}\n",
            conf_quote(primary_conninfo)
        ));
        for line in extra {
            pg.append_conf(line);
        }
        pg
    }

    /// A data directory some other way made (e.g. `pg_basebackup -h walrelay -R` into
    /// `dir/data`), handed to the server user, on a free port; `extra` lines appended to
    /// postgresql.conf. Not started (call [`Pg::start`]).
    pub fn adopt(major: &str, dir: TestDir, extra: &[&str]) -> Pg {
        let install = PgInstall::get(major);
        let datadir = dir.join("data");
        let logfile = dir.join("postgres.log");
        give_to_server(dir.path());
        set_mode(&datadir, 0o700);
        let port = super::free_port();
        let mut pg = Pg {
            install,
            dir,
            datadir,
            logfile,
            port,
            running: false,
        };
        pg.append_conf(&format!(
            "\n# walrelay test harness: adopted\nport = {port}\nhot_standby = on\n\
             wal_receiver_status_interval = '1s'\n"
        ));
        for line in extra {
            pg.append_conf(line);
        }
        pg
    }

    pub fn install(&self) -> &PgInstall {
        &self.install
    }
    pub fn major(&self) -> &str {
        &self.install.major
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }
    pub fn pg_wal(&self) -> PathBuf {
        self.datadir.join("pg_wal")
    }
    /// The server's temp dir (parent of the data dir); free for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Runs SQL through this major's psql; panics with stderr and the server log tail on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql on port {} failed for {sql:?}:\n{e}\n--- server log tail ---\n{}",
                self.port,
                tail(&self.log(), 30)
            )
        })
    }

    /// `psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p PORT -U postgres -d postgres -c SQL`.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .install
            .command("psql")
            .env("PGCONNECT_TIMEOUT", "10")
            // a query stuck behind a lock (say, a standby that replayed a DROP's lock record)
            // fails the test instead of hanging it
            .env("PGOPTIONS", "-c lock_timeout=120s")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        psql_result(out)
    }

    /// psql with any conninfo (e.g. TLS options, or walrelay's address).
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        self.install.psql_conninfo(conninfo, sql)
    }

    /// Appends a line (or lines) to postgresql.conf. Takes effect on reload/restart.
    pub fn append_conf(&mut self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.datadir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "{lines}").expect("append postgresql.conf");
    }

    /// Replaces pg_hba.conf (call [`Pg::reload`] afterwards if running).
    pub fn set_hba(&mut self, content: &str) {
        std::fs::write(self.datadir.join("pg_hba.conf"), content).expect("write pg_hba.conf");
        give_to_server(&self.datadir.join("pg_hba.conf"));
    }

    fn pg_ctl(&self) -> Command {
        let mut c = self.install.server_command("pg_ctl");
        c.arg("-D").arg(&self.datadir);
        c
    }

    /// `pg_ctl -w -t 60 -l LOG start`; panics with the log on failure.
    pub fn start(&mut self) {
        let out = self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(&self.logfile)
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start (PostgreSQL {}, port {}) failed: {}{}\n--- server log ---\n{}",
                self.install.major,
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log(), 60)
            );
        }
        self.running = true;
    }

    /// `pg_ctl -W start` (no wait), for a server that may stop by itself (a recovery that
    /// ends in FATAL); see [`Pg::postmaster_alive`].
    pub fn start_nowait(&mut self) {
        let out = self
            .pg_ctl()
            .args(["-W", "-l"])
            .arg(&self.logfile)
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl -W start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
    }

    /// Whether the postmaster is running (`pg_ctl status`); forgets a server that stopped
    /// by itself.
    pub fn postmaster_alive(&mut self) -> bool {
        let alive = self
            .pg_ctl()
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !alive {
            self.running = false;
        }
        alive
    }

    fn stop_mode(&mut self, mode: &str) -> Result<(), String> {
        let out = self
            .pg_ctl()
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            self.running = false;
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Clean shutdown (`-m fast`); panics on failure.
    pub fn stop(&mut self) {
        if let Err(e) = self.stop_mode("fast") {
            panic!("pg_ctl stop (port {}) failed: {e}", self.port);
        }
    }

    /// Crash-like shutdown (`-m immediate`); panics on failure.
    pub fn stop_immediate(&mut self) {
        if let Err(e) = self.stop_mode("immediate") {
            panic!("pg_ctl stop -m immediate (port {}) failed: {e}", self.port);
        }
    }

    /// Fast stop + start.
    pub fn restart(&mut self) {
        if self.running {
            self.stop();
        }
        self.start();
    }

    /// Re-reads the configuration (`pg_ctl reload`).
    pub fn reload(&self) {
        run_checked(self.pg_ctl().arg("reload"), "pg_ctl reload");
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        run_checked(
            self.pg_ctl().args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        );
        wait_for(
            Duration::from_secs(60),
            "promoted server out of recovery",
            || self.try_psql("select pg_is_in_recovery()").as_deref() == Ok("f"),
        );
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.logfile)
    }
    pub fn log_path(&self) -> &Path {
        &self.logfile
    }

    /// `pg_current_wal_lsn()` (primary only).
    pub fn current_lsn(&self) -> Lsn {
        parse_lsn(&self.psql("select pg_current_wal_lsn()"))
    }
    /// `pg_current_wal_insert_lsn()` (primary only).
    pub fn insert_lsn(&self) -> Lsn {
        parse_lsn(&self.psql("select pg_current_wal_insert_lsn()"))
    }
    /// `pg_switch_wal()`: returns the LSN just past the switch record's segment end.
    pub fn switch_wal(&self) -> Lsn {
        parse_lsn(&self.psql("select pg_switch_wal()"))
    }
    /// `pg_last_wal_replay_lsn()` on a standby (None if NULL).
    pub fn replay_lsn(&self) -> Option<Lsn> {
        let s = self.psql("select pg_last_wal_replay_lsn()");
        (!s.is_empty()).then(|| parse_lsn(&s))
    }
    /// Waits until this standby has replayed up to `lsn`.
    pub fn wait_replayed(&self, lsn: Lsn, timeout: Duration) {
        wait_for(
            timeout,
            &format!("standby on port {} to replay {lsn}", self.port),
            || {
                self.try_psql("select pg_last_wal_replay_lsn()")
                    .ok()
                    .and_then(|s| s.parse::<Lsn>().ok())
                    .is_some_and(|r| r >= lsn)
            },
        );
    }
    /// `system_identifier` from pg_control_system().
    pub fn system_identifier(&self) -> u64 {
        let s = self.psql("select system_identifier from pg_control_system()");
        s.parse()
            .unwrap_or_else(|_| panic!("bad system_identifier {s:?}"))
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(self.datadir.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }
}

fn parse_lsn(s: &str) -> Lsn {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an LSN: {s:?}"))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Pg {
    fn drop(&mut self) {
        if !self.running && !self.datadir.join("postmaster.pid").exists() {
            return;
        }
        let pid = self.postmaster_pid();
        if self.stop_mode("immediate").is_err() {
            if let Some(pid) = pid {
                super::signal(pid, "KILL");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL {} (port {}) log tail ---\n{}",
                self.install.major,
                self.port,
                tail(&self.log(), 40)
            );
        }
    }
}

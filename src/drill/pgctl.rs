//! Running PostgreSQL for a drill: finding binaries of the backup's major version,
//! starting `postgres` on a private socket directory and a free port (as another user
//! when walrelay runs as root), SQL through `psql`, and stopping it.
//!
//! Owns: the child `postgres` process (fast shutdown with SIGINT on stop, SIGQUIT if it
//! does not stop in time, killed on Drop), its log file, and the `-c` settings that keep a
//! drill copy harmless: no TCP (`listen_addresses = ''`), no archiving, its own hba file
//! (`local all all trust` on a 0700 socket directory only its user can reach).
//! Must not: touch anything outside the drill's working directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uid/gid a server runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up a user name (getpwnam_r).
pub fn lookup_user(name: &str) -> Result<RunAs, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("invalid user name \"{name}\""))?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned here.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(format!("no such user \"{name}\""));
    }
    Ok(RunAs {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes everything below `path` (not following links) owned by `who`.
pub fn chown_tree(path: &Path, who: RunAs) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(who.uid), Some(who.gid))?;
    let m = std::fs::symlink_metadata(path)?;
    if m.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), who)?;
        }
    }
    Ok(())
}

/// The major version of `server_version_num` (150018 → 15). Backups come from PostgreSQL 14
/// or later (BASE_BACKUP with a manifest), so the two-part majors before 10 do not occur.
pub fn major_of(server_version: u32) -> u32 {
    server_version / 10_000
}

fn version_of(postgres: &Path) -> Option<u32> {
    let out = Command::new(postgres).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)"
    let v = s.split(") ").nth(1)?.split_whitespace().next()?;
    v.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

/// The bin directory for `major`: `given`, else /usr/lib/postgresql/<major>/bin, else the
/// directory of `postgres` on PATH, each only if its `postgres --version` has that major.
pub fn find_bin(given: Option<&Path>, major: u32) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(g) = given {
        candidates.push(g.to_path_buf());
    } else {
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if d.join("postgres").is_file() {
                    candidates.push(d);
                }
            }
        }
    }
    for c in candidates {
        let pg = c.join("postgres");
        match version_of(&pg) {
            Some(v) if v == major => return Ok(c),
            Some(v) => tried.push(format!("{} is PostgreSQL {v}", pg.display())),
            None => tried.push(format!("{}: not found or not runnable", pg.display())),
        }
    }
    Err(format!(
        "no PostgreSQL {major} binaries (use --pg-bin): {}",
        tried.join("; ")
    ))
}

/// A free loopback port right now (names the socket file; the server has no TCP).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A running drill server.
pub struct Server {
    child: Option<Child>,
    pub bin: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    pub db_user: String,
}

/// Where and how to start it.
pub struct StartOptions<'a> {
    pub bin: &'a Path,
    pub data: &'a Path,
    pub work: &'a Path,
    pub run_as: Option<RunAs>,
    pub db_user: &'a str,
}

impl Server {
    /// Starts `postgres` (not waiting for it to accept connections).
    pub fn start(o: &StartOptions) -> Result<Server, String> {
        let socket_dir = o.work.join("socket");
        let hba = o.work.join("drill_hba.conf");
        let log = o.work.join("postgres.log");
        std::fs::create_dir_all(&socket_dir)
            .map_err(|e| format!("{}: {e}", socket_dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", socket_dir.display()))?;
        std::fs::write(&hba, "local all all trust\n")
            .map_err(|e| format!("{}: {e}", hba.display()))?;
        let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        if let Some(r) = o.run_as {
            for p in [&socket_dir, &hba, &log] {
                chown_tree(p, r).map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let port = free_port()?;
        let mut c = Command::new(o.bin.join("postgres"));
        c.arg("-D").arg(o.data);
        for (k, v) in [
            ("port", port.to_string()),
            ("listen_addresses", String::new()),
            ("unix_socket_directories", socket_dir.display().to_string()),
            ("hba_file", hba.display().to_string()),
            ("archive_mode", "off".into()),
            ("logging_collector", "off".into()),
            ("hot_standby", "on".into()),
            ("wal_receiver_status_interval", "1s".into()),
        ] {
            c.arg("-c").arg(format!("{k}={v}"));
        }
        c.current_dir(o.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf));
        if let Some(r) = o.run_as {
            // std drops root's supplementary groups (setgroups) before setgid/setuid
            c.uid(r.uid).gid(r.gid);
        }
        let child = c
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", o.bin.join("postgres").display()))?;
        Ok(Server {
            child: Some(child),
            bin: o.bin.to_path_buf(),
            socket_dir,
            port,
            log,
            db_user: o.db_user.to_string(),
        })
    }

    /// Runs `sql` with psql; Ok(output, trimmed) or Err(stderr).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.db_user,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
        }
    }

    /// Whether the postmaster has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = t.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL.
    pub fn stop(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        for sig in [libc::SIGINT, libc::SIGQUIT] {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, sig);
            }
            let t0 = Instant::now();
            while t0.elapsed() < timeout {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors() {
        assert_eq!(major_of(150018), 15);
        assert_eq!(major_of(180001), 18);
        assert_eq!(major_of(140013), 14);
    }
}

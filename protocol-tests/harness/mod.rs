//! Test harness for the `protocol` integration tests: starts REAL PostgreSQL servers
//! ([`pg`]), the walrelay binary ([`walrelay`]), a real S3 server ([`s3`]), a real Azure Blob
//! server ([`azurite`], when installed), makes TLS
//! certificates ([`certs`]) and compares WAL files ([`compare`]).
//!
//! Owns: temporary directories, loopback ports, child processes of the tests. Everything is
//! per-test isolated (tests run concurrently on cargo's test threads) and every server is
//! stopped on Drop, also while a test panics. Must not: touch anything outside the per-test
//! temporary directories and `$WALRELAY_INFRA` (read-only), or depend on `/work/shared`.
//!
//! The servers are installed by `scripts/test-infra.sh` under `$WALRELAY_INFRA`
//! (default `/opt/walrelay-infra`).
#![allow(dead_code)]

pub mod azurite;
pub mod certs;
pub mod compare;
pub mod pg;
pub mod s3;
pub mod walrelay;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where `scripts/test-infra.sh` installed the servers (`$WALRELAY_INFRA`, default
/// `/opt/walrelay-infra`).
pub fn infra_dir() -> PathBuf {
    std::env::var_os("WALRELAY_INFRA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/walrelay-infra"))
}

/// PostgreSQL majors the version-matrix tests run against: `$WALRELAY_TEST_PG`
/// (comma-separated), default "15,18".
pub fn majors() -> Vec<String> {
    let spec = std::env::var("WALRELAY_TEST_PG").unwrap_or_else(|_| "15,18".to_string());
    spec.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback TCP port that is free right now and was not handed out before in this test
/// process (so two concurrent tests never get the same one).
pub fn free_port() -> u16 {
    let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if set.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// A free port `p` (not handed out before) such that `p + offset` is free as well; both are
/// reserved. Used for servers that derive a second port from the first.
pub fn free_port_with_offset(offset: u16) -> u16 {
    let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for _ in 0..10_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // below the usual ephemeral range (32768+) so the kernel rarely hands these out
        let p = 20_000 + ((x >> 33) % 12_000) as u16;
        let Some(q) = p.checked_add(offset) else {
            continue;
        };
        if set.contains(&p) || set.contains(&q) || !port_is_free(p) || !port_is_free(q) {
            continue;
        }
        set.insert(p);
        set.insert(q);
        return p;
    }
    panic!("no free loopback port pair found");
}

/// Polls `cond` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A per-test temporary directory under the system temp dir (never under `/root`, which is
/// 0700 and not reachable by a dedicated server user). Mode 0755. Removed on Drop, unless the
/// thread is panicking and `WALRELAY_KEEP=1`: then it is kept and its path printed.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("walrelay-{prefix}-"))
            .tempdir_in(std::env::temp_dir())
            .expect("create temp dir");
        set_mode(dir.path(), 0o755);
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Makes a subdirectory (mode 0755) and returns its path.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create subdir");
        set_mode(&p, 0o755);
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var("WALRELAY_KEEP").as_deref() == Ok("1") {
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                eprintln!("WALRELAY_KEEP=1: kept test dir {}", kept.display());
            }
        }
    }
}

/// chmod, panicking on failure.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Reads a file to a String, lossy, empty if missing.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Sends signal `sig` (e.g. "TERM", "KILL") to `pid` with the shell's `kill` builtin (no
/// procps needed); errors ignored.
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("sh")
        .args([
            "-c",
            "kill -s \"$0\" \"$1\" 2>/dev/null",
            sig,
            &pid.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .status();
}

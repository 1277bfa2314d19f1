//! Runs the walrelay binary under test (`CARGO_BIN_EXE_walrelay`) as a child process.
//!
//! Owns: the child process (SIGKILLed on Drop) and its log file (stdout and stderr together).
//! Makes no assumption about walrelay's behaviour.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{read_lossy, TestDir};

/// Path of the walrelay binary cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walrelay"))
}

/// A running (or exited) walrelay process.
pub struct Walrelay {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
    _dir: Option<TestDir>,
}

impl Walrelay {
    /// Spawns `walrelay ARGS` with its log in a fresh temp dir.
    pub fn spawn(args: &[&str]) -> Walrelay {
        let dir = TestDir::new("walrelay");
        let log = dir.join("walrelay.log");
        let mut w = Walrelay::spawn_with(&log, args, &[]);
        w._dir = Some(dir);
        w
    }

    /// Spawns `walrelay ARGS` with extra environment variables, stdout+stderr appended to
    /// `log` (e.g. a file in the test's own dir).
    pub fn spawn_with(log: &Path, args: &[&str], env: &[(&str, &str)]) -> Walrelay {
        Walrelay::spawn_limited(log, args, env, None)
    }

    /// Like [`Walrelay::spawn_with`], with `RLIMIT_NOFILE` (soft and hard) set to `nofile` in
    /// the child before exec (to reach the descriptor limit quickly in a test).
    pub fn spawn_limited(
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Walrelay {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log fd");
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn walrelay");
        Walrelay {
            child,
            log: log.to_path_buf(),
            status: None,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything walrelay printed so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Same as [`Walrelay::log`].
    pub fn output(&self) -> String {
        self.log()
    }

    /// Exit status if it has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Sends SIGTERM (does not wait).
    pub fn terminate(&mut self) {
        if self.try_status().is_none() {
            super::signal(self.pid(), "TERM");
        }
    }

    /// SIGTERM, then waits up to 30 s for exit; panics (after SIGKILL) if it does not exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.terminate();
        match self.wait_exit(Duration::from_secs(30)) {
            Some(s) => s,
            None => {
                self.kill9();
                panic!(
                    "walrelay did not exit within 30 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }
}

impl Drop for Walrelay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- walrelay log tail ({}) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// Runs `walrelay ARGS` to completion (at most 120 s, then SIGKILL and panic):
/// (status, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (ExitStatus, String, String) {
    let dir = TestDir::new("walrelay-run");
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let out = std::fs::File::create(&out_path).expect("create stdout file");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn walrelay");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait walrelay") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "walrelay {args:?} did not finish in 120 s; stderr:\n{}",
                read_lossy(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, read_lossy(&out_path), read_lossy(&err_path))
}

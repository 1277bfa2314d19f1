//! A real S3-compatible server for the archive tests: SeaweedFS `weed mini` from
//! `$WALRELAY_INFRA/bin/weed`, listening only on 127.0.0.1 with credentials
//! `testkey`/`testsecret` and region `us-east-1`.
//!
//! Owns: the weed process (SIGKILLed on Drop) and its temp dir (data + `weed.log`). The server
//! can be stopped and started again on the same ports and data dir, as tests that simulate an
//! object-storage outage need.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, free_port_with_offset, read_lossy, TestDir};

pub const ACCESS_KEY: &str = "testkey";
pub const SECRET_KEY: &str = "testsecret";
pub const REGION: &str = "us-east-1";
pub const DEFAULT_BUCKET: &str = "walbucket";

/// Ports of the weed components (all on 127.0.0.1).
#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    admin: u16,
}

pub struct S3Server {
    dir: TestDir,
    ports: Ports,
    buckets: Vec<String>,
    child: Option<Child>,
}

/// Sends a raw HTTP/1.1 request without credentials; returns the status code.
pub fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl S3Server {
    /// Starts a server with the bucket `walbucket`.
    pub fn start() -> S3Server {
        S3Server::start_with_buckets(&[DEFAULT_BUCKET])
    }

    /// Starts a server creating `buckets` on startup.
    pub fn start_with_buckets(buckets: &[&str]) -> S3Server {
        let weed = weed_bin();
        assert!(
            weed.exists(),
            "SeaweedFS not installed at {} (run scripts/test-infra.sh)",
            weed.display()
        );
        let dir = TestDir::new("s3");
        std::fs::create_dir_all(dir.join("data")).expect("create s3 data dir");
        // weed's internal worker dials the admin server at admin port + 10000 whatever
        // -admin.port.grpc says: keep both free and consistent.
        let admin = free_port_with_offset(10_000);
        let ports = Ports {
            s3: free_port(),
            s3_grpc: free_port(),
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            admin,
        };
        let mut s = S3Server {
            dir,
            ports,
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            child: None,
        };
        s.start_again();
        s
    }

    /// (Re)starts the server on the same ports and data dir; waits until it serves S3.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "S3 server already running");
        let p = self.ports;
        let log_path = self.log_path();
        let log_offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open weed.log");
        let log_err = log.try_clone().expect("clone log fd");
        let mut cmd = Command::new(weed_bin());
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!("-admin.port={}", p.admin))
            .arg(format!("-admin.port.grpc={}", p.admin + 10_000))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-bucket={}", self.buckets.join(",")))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let mut child = cmd.spawn().expect("spawn weed mini");
        let start = Instant::now();
        // ready: the banner naming the S3 endpoint (printed after buckets exist) in this
        // start's part of the log, and the S3 port answering HTTP
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "weed mini exited ({status}) during startup:\n{}",
                    read_lossy(&log_path)
                );
            }
            let log = read_lossy(&log_path);
            let fresh = log.get(log_offset as usize..).unwrap_or("");
            if fresh.contains("S3 Endpoint") && http_status(p.s3, "GET", "/").is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("weed mini not ready after 90 s:\n{fresh}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// SIGTERM, waits up to 20 s, then SIGKILL. Ports and data stay for [`S3Server::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::signal(child.id(), "TERM");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL (an abrupt outage); ports and data stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }
    pub fn port(&self) -> u16 {
        self.ports.s3
    }
    pub fn bucket(&self) -> &str {
        self.buckets
            .first()
            .map(|s| s.as_str())
            .unwrap_or(DEFAULT_BUCKET)
    }
    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }
    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }
    pub fn region(&self) -> &'static str {
        REGION
    }
    /// Environment for `object_store`'s AWS builder `from_env` / AWS tools.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_BUCKET".into(), self.bucket().into()),
        ]
    }

    /// Creates a bucket on the running server (`weed shell s3.bucket.create`); it is also
    /// recreated-if-missing on later restarts.
    pub fn create_bucket(&mut self, name: &str) {
        let out = self.shell(&format!("s3.bucket.create -name {name}"));
        let list = self.shell("s3.bucket.list");
        assert!(
            list.contains(name),
            "bucket {name} not created: {out}\nlist: {list}"
        );
        if !self.buckets.iter().any(|b| b == name) {
            self.buckets.push(name.to_string());
        }
    }

    /// Runs one `weed shell` command against this server; returns its output.
    pub fn shell(&self, command: &str) -> String {
        let mut child = Command::new(weed_bin())
            .arg("shell")
            .arg(format!(
                "-master=127.0.0.1:{}.{}",
                self.ports.master, self.ports.master_grpc
            ))
            .arg(format!(
                "-filer=127.0.0.1:{}.{}",
                self.ports.filer, self.ports.filer_grpc
            ))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weed shell");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{command}");
            let _ = writeln!(stdin, "exit");
        }
        let out = child.wait_with_output().expect("weed shell");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("weed.log")
    }
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }
}

fn weed_bin() -> PathBuf {
    super::infra_dir().join("bin").join("weed")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

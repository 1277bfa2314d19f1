//! A real Azure Blob server for the archive tests: azurite's blob service
//! (`$WALRELAY_INFRA/bin/azurite-blob`, npm package `azurite`, installed by
//! `scripts/test-infra.sh` when npm is available), listening only on 127.0.0.1 with the
//! well-known development account `devstoreaccount1`.
//!
//! Owns: the azurite process (SIGKILLed on Drop) and its temp dir (blob data + `azurite.log`),
//! and the creation of containers with a SharedKey-signed REST call (object_store cannot
//! create containers). Must not: be required where azurite is not installed —
//! [`Azurite::start`] then returns the reason so that tests can skip.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{free_port, read_lossy, TestDir};

pub const ACCOUNT: &str = "devstoreaccount1";
/// The development key Microsoft publishes for azurite and the storage emulator.
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const DEFAULT_CONTAINER: &str = "walarchive";
/// The REST API version used for the harness's own requests.
const API_VERSION: &str = "2021-08-06";

pub struct Azurite {
    dir: TestDir,
    port: u16,
    child: Option<Child>,
}

/// `$WALRELAY_INFRA/bin/azurite-blob`.
pub fn azurite_bin() -> PathBuf {
    super::infra_dir().join("bin").join("azurite-blob")
}

/// Why azurite cannot run here (not installed, or no `node`), or `None` when it can.
pub fn unavailable() -> Option<String> {
    let bin = azurite_bin();
    if !bin.exists() {
        return Some(format!(
            "azurite not installed at {} (scripts/test-infra.sh installs it when npm is available)",
            bin.display()
        ));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match node {
        Ok(s) if s.success() => None,
        _ => Some("azurite is installed but `node` is not on PATH".into()),
    }
}

impl Azurite {
    /// Starts the blob service with the container `walarchive`. `Err(reason)` when azurite
    /// is not available on this machine; panics when it is but does not come up.
    pub fn start() -> Result<Azurite, String> {
        Azurite::start_with_containers(&[DEFAULT_CONTAINER])
    }

    pub fn start_with_containers(containers: &[&str]) -> Result<Azurite, String> {
        if let Some(reason) = unavailable() {
            return Err(reason);
        }
        let dir = TestDir::new("azurite");
        let data = dir.subdir("data");
        let port = free_port();
        let log_path = dir.join("azurite.log");
        let log = std::fs::File::create(&log_path).expect("create azurite.log");
        let log_err = log.try_clone().expect("clone log fd");
        let mut child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .arg("--location")
            .arg(&data)
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .expect("spawn azurite-blob");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "azurite-blob exited ({status}) during startup:\n{}",
                    read_lossy(&log_path)
                );
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "azurite-blob not listening after 30 s:\n{}",
                    read_lossy(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = Azurite {
            dir,
            port,
            child: Some(child),
        };
        for c in containers {
            server.create_container(c);
        }
        Ok(server)
    }

    /// Creates a container (Create Container, SharedKey-signed); panics unless azurite
    /// answers 201 Created.
    pub fn create_container(&self, name: &str) {
        let status = self.signed_request("PUT", &format!("/{ACCOUNT}/{name}"), "restype=container");
        assert_eq!(
            status.0,
            201,
            "create container {name}: {}\n{}",
            status.1,
            self.log()
        );
    }

    /// Sends one request without a body, signed with the account key; returns the status
    /// code and the whole response text.
    fn signed_request(&self, method: &str, path: &str, query: &str) -> (u16, String) {
        let date = http_date(SystemTime::now());
        let ms_headers = [("x-ms-date", date.as_str()), ("x-ms-version", API_VERSION)];
        // Shared Key string-to-sign: verb, eleven standard headers (all empty here: no body,
        // no conditions), the x-ms-* headers sorted, then the canonicalized resource
        // (/account + URL path, and each query parameter as `name:value` on its own line).
        let mut to_sign = format!("{method}\n{}", "\n".repeat(11));
        for (k, v) in &ms_headers {
            to_sign.push_str(&format!("{k}:{v}\n"));
        }
        to_sign.push_str(&format!("/{ACCOUNT}{path}"));
        let mut params: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        params.sort();
        for (k, v) in params {
            to_sign.push_str(&format!("\n{}:{v}", k.to_ascii_lowercase()));
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(ACCOUNT_KEY)
            .expect("account key is base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());

        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n",
            self.port
        );
        for (k, v) in &ms_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!(
            "Authorization: SharedKey {ACCOUNT}:{sig}\r\nConnection: close\r\n\r\n"
        ));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s.write_all(req.as_bytes()).expect("send request");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// The account URL, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }
    pub fn container(&self) -> &'static str {
        DEFAULT_CONTAINER
    }
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("azurite.log"))
    }

    /// SIGKILL (an abrupt outage).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

/// RFC 1123 date in GMT (`Sun, 06 Nov 1994 08:49:37 GMT`), as the `x-ms-date` header wants.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil-from-days (proleptic Gregorian), days since 1970-01-01
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn http_date_format() {
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "Tue, 29 Feb 2000 00:00:00 GMT"
    );
}

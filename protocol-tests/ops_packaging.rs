//! Packaging: the systemd unit passes `systemd-analyze verify` (skipped with a message when
//! systemd-analyze is missing), and `walrelay run` speaks the notify protocol the unit's
//! `Type=notify` and `WatchdogSec` rely on: READY=1 once serving, WATCHDOG=1 while running,
//! STOPPING=1 on SIGTERM — received on a real datagram socket, against a real PostgreSQL 15.
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{self, pg::Pg, walrelay::Walrelay, TestDir};

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: no systemd-analyze on this machine");
        return;
    };
    assert!(out.status.success());
    let t = TestDir::new("unit");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/walrelay.service"
    ))
    .unwrap();
    assert!(
        unit.contains("\nType=notify\n") && unit.contains("\nWatchdogSec="),
        "{unit}"
    );
    // verify checks that ExecStart's binary exists: point it at the one under test
    let bin = harness::walrelay::bin();
    let unit = unit.replace("/usr/bin/walrelay", bin.to_str().unwrap());
    let path = t.join("walrelay.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // verify reports parse problems as warnings with exit 0: there must be none
    assert!(!err.contains("walrelay.service:"), "{err}");
}

fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while start.elapsed() < timeout {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = m == want;
            got.push(m);
            if done {
                return got;
            }
        }
    }
    panic!("no {want} from walrelay within {timeout:?}; got {got:?}");
}

#[test]
fn run_notifies_systemd() {
    let t = TestDir::new("sdnotify");
    let primary = Pg::primary("15", &[]);
    let sock_path = t.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let log = t.join("walrelay.log");
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &log,
        &[
            "run",
            "--upstream",
            &conninfo,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    recv_until(&sock, "READY=1", Duration::from_secs(60));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(10));
    // SIGHUP does not stop it (and says that a restart applies changes)
    harness::signal(w.pid(), "HUP");
    harness::wait_for(Duration::from_secs(30), "the SIGHUP warning", || {
        w.log()
            .contains("SIGHUP: walrelay does not reload its configuration")
    });
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(10));
    assert!(w.is_running(), "{}", w.log());
    harness::signal(w.pid(), "TERM");
    recv_until(&sock, "STOPPING=1", Duration::from_secs(60));
    let st = w
        .wait_exit(Duration::from_secs(60))
        .expect("walrelay to exit");
    assert!(st.success(), "{}", w.log());
}

/// Man pages and completions come from the CLI definition: every subcommand is in them.
#[test]
fn man_pages_and_completions() {
    use crate::harness::walrelay::run_to_end;
    let (st, page, err) = run_to_end(&["man"]);
    assert!(st.success(), "{err}");
    assert!(page.contains(".TH walrelay 1"), "{page}");
    assert!(page.contains("walrelay\\-check(1)"), "{page}");
    let t = TestDir::new("man");
    let dir = t.join("man1");
    let (st, _, err) = run_to_end(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let check = std::fs::read_to_string(dir.join("walrelay-check.1")).unwrap();
    assert!(check.contains("\\-\\-nagios"), "{check}");
    assert!(dir.join("walrelay-run.1").exists() && dir.join("walrelay-feed-pause.1").exists());

    let (st, bash, err) = run_to_end(&["completions", "bash"]);
    assert!(st.success(), "{err}");
    assert!(
        bash.contains("_walrelay()") && bash.contains("--nagios"),
        "{bash}"
    );
    let script = t.join("walrelay.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let (st, zsh, _) = run_to_end(&["completions", "zsh"]);
    assert!(
        st.success() && zsh.starts_with("#compdef walrelay"),
        "{zsh}"
    );
    let (st, _, err) = run_to_end(&["completions", "tcsh"]);
    assert!(
        !st.success() && err.contains("invalid value 'tcsh'"),
        "{err}"
    );
}

//! Packaging (issue 13): the systemd unit passes `systemd-analyze verify` (with the man pages
//! walrelay generates, which its Documentation= names); `walrelay run` speaks sd_notify to a
//! socket the test binds (READY=1 once it serves a real PostgreSQL 15's WAL, WATCHDOG=1 with
//! $WATCHDOG_USEC, STOPPING=1 at SIGTERM), on a path and on an abstract socket; the generated
//! man pages are accepted by groff/man and the bash completion knows the subcommands.
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{self, pg::Pg, walrelay::Walrelay, TestDir};

fn repo_file(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// `walrelay generate man DIR`; the pages written.
fn generate_man(dir: &Path) -> Vec<PathBuf> {
    let (st, out, err) = harness::walrelay::run_to_end(&["generate", "man", dir.to_str().unwrap()]);
    assert!(st.success(), "generate man: {err}");
    out.lines().map(PathBuf::from).collect()
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze") || !have("man") {
        eprintln!("SKIP systemd_unit_verifies: systemd-analyze or man is not installed (apt-get install systemd man-db)");
        return;
    }
    let t = TestDir::new("unit");
    let unit = std::fs::read_to_string(repo_file("packaging/walrelay.service")).unwrap();
    for line in [
        "Type=notify",
        "User=walrelay",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/walrelay",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    // verify checks that ExecStart's binary exists and that Documentation= man pages resolve.
    let bin = harness::walrelay::bin();
    let unit = unit.replace("/usr/bin/walrelay", bin.to_str().unwrap());
    let path = t.join("walrelay.service");
    std::fs::write(&path, unit).unwrap();
    let man1 = t.subdir("man/man1");
    generate_man(&man1);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", t.join("man"))
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify:\n{text}");
    assert!(
        !text.contains("walrelay.service"),
        "systemd-analyze verify complains:\n{text}"
    );
    // A broken unit is caught: the check can fail.
    let bad = t.join("bad/walrelay.service");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(
        &bad,
        "[Service]\nType=notify\nExecStart=/nonexistent/walrelay run\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a unit without its binary verifies");
}

/// Datagrams received on `sock` until `until` holds for them or 60 s pass.
fn recv_until(sock: &UnixDatagram, got: &mut Vec<String>, until: impl Fn(&[String]) -> bool) {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !until(got) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "notifications so far: {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn notify_run(abstract_name: bool) {
    let t = TestDir::new("sdnotify");
    let primary = Pg::primary("15", &[]);
    let (sock, notify_socket) = if abstract_name {
        let name = format!(
            "walrelay-test-{}-{}",
            std::process::id(),
            harness::free_port()
        );
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes()).unwrap();
        (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
    } else {
        let p = t.join("notify.sock");
        (
            UnixDatagram::bind(&p).unwrap(),
            p.to_str().unwrap().to_string(),
        )
    };
    let port = harness::free_port();
    let mport = harness::free_port();
    let listen = format!("127.0.0.1:{port}");
    let maddr = format!("127.0.0.1:{mport}");
    let data = t.subdir("data");
    let mut env = vec![("NOTIFY_SOCKET", notify_socket.as_str())];
    if abstract_name {
        env.push(("WATCHDOG_USEC", "200000"));
    }
    let mut w = Walrelay::spawn_with(
        &t.join("walrelay.log"),
        &[
            "run",
            "--upstream",
            &primary.conninfo(),
            "-D",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--metrics-listen",
            &maddr,
        ],
        &env,
    );
    let mut got = Vec::new();
    recv_until(&sock, &mut got, |g| {
        g.iter().any(|m| m.lines().any(|l| l == "READY=1"))
    });
    // Ready means listening: walrelay's walsender answers right now (with the primary's
    // identity, or PostgreSQL's "starting up" while a fresh data dir has no WAL yet).
    let ident = primary.install().psql_conninfo(
        &format!("host=127.0.0.1 port={port} user=postgres replication=true"),
        "IDENTIFY_SYSTEM",
    );
    let sysid = primary.system_identifier().to_string();
    assert!(
        match &ident {
            Ok(o) => o.starts_with(&format!("{sysid}|")),
            Err(e) => e.contains("FATAL:  the database system is starting up"),
        },
        "IDENTIFY_SYSTEM at READY=1: {ident:?}"
    );
    let (code, _) =
        walrelay::admin::request(&maddr, "GET", "/metrics").expect("metrics at READY=1");
    assert_eq!(code, 200);
    assert!(
        data.join("walrelay.control").exists() || std::fs::read_dir(&data).unwrap().count() > 0
    );
    let ready = got
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap();
    assert!(ready.contains(&format!("MAINPID={}", w.pid())), "{ready:?}");
    assert!(!got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    if abstract_name {
        recv_until(&sock, &mut got, |g| g.iter().any(|m| m == "WATCHDOG=1"));
    }
    w.terminate();
    recv_until(&sock, &mut got, |g| {
        g.iter().any(|m| m.lines().any(|l| l == "STOPPING=1"))
    });
    let st = w
        .wait_exit(Duration::from_secs(30))
        .expect("walrelay exits at SIGTERM");
    assert!(st.success(), "exit {st:?}:\n{}", w.log());
    if !abstract_name {
        assert!(
            !got.iter().any(|m| m == "WATCHDOG=1"),
            "watchdog pings without WATCHDOG_USEC: {got:?}"
        );
    }
}

#[test]
fn sd_notify_ready_stopping_path_socket() {
    notify_run(false);
}

#[test]
fn sd_notify_ready_watchdog_stopping_abstract_socket() {
    notify_run(true);
}

#[test]
fn generated_man_pages_and_completions() {
    let t = TestDir::new("gen");
    let dir = t.subdir("man1");
    let pages = generate_man(&dir);
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "walrelay.1",
        "walrelay-run.1",
        "walrelay-wal-fetch.1",
        "walrelay-passwd.1",
        "walrelay-feed-advance.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        assert!(dir.join(want).is_file());
    }
    assert!(
        !names.iter().any(|n| n.contains("generate")),
        "the hidden generate subcommand got a page: {names:?}"
    );
    let run_page = std::fs::read_to_string(dir.join("walrelay-run.1")).unwrap();
    assert!(
        run_page.starts_with(".ie \\n(.g .ds Aq") || run_page.contains(".TH walrelay-run 1"),
        "{run_page}"
    );
    assert!(run_page.contains("\\-\\-metrics\\-listen"), "{run_page}");
    if have("groff") {
        for p in &pages {
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(p)
                .output()
                .unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "groff on {}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("groff not installed: page syntax not checked by groff");
    }
    if have("man") {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.join("walrelay-run.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "man -l: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("walrelay-run") && text.contains("--metrics-listen"),
            "{text}"
        );
    }

    let (st, script, err) = harness::walrelay::run_to_end(&["generate", "completions", "bash"]);
    assert!(st.success(), "{err}");
    assert!(script.contains("complete -F _walrelay"), "{script}");
    for sub in [
        "run",
        "wal-fetch",
        "verify",
        "passwd",
        "feed",
        "xacts",
        "receive",
    ] {
        assert!(
            script.contains(&format!("walrelay__{}", sub.replace('-', "__")))
                || script.contains(&format!(",{sub})")),
            "bash completion lacks {sub}"
        );
    }
    let path = t.join("walrelay.bash");
    std::fs::write(&path, &script).unwrap();
    // The script loads in bash and completes `walrelay ru` to `run`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(walrelay ru) COMP_CWORD=1 && _walrelay walrelay ru walrelay && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(words.trim(), "run", "completions of 'ru': {words}");
    let (st, _, err) = harness::walrelay::run_to_end(&["generate", "completions", "tcsh"]);
    assert_eq!(st.code(), Some(2), "unknown shell: {err}");
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

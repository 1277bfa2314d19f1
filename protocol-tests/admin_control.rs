//! The control endpoint against a real `walrelay run` in front of a real PostgreSQL 15:
//! control routes only on the control socket / the token-protected TCP listener, refused
//! without the token, with a foreign Host, and as a cross-origin form POST; the read-only
//! routes on the metrics listener, which stays answerable under a flood of silent
//! connections; `walrelay feed` / `walrelay xacts` over the Unix socket.
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use walrelay::admin::{call_blocking, Target};

use crate::harness::{self, pg::Pg, walrelay::run_to_end, TestDir};
use crate::server_common::Relay;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Setup {
    _t: TestDir,
    _primary: Pg,
    relay: Relay,
    metrics: String,
    control: String,
    token_file: String,
    data_dir: String,
}

fn setup(prefix: &str) -> Setup {
    let t = TestDir::new(prefix);
    let primary = Pg::primary("15", &[]);
    let metrics = format!("127.0.0.1:{}", harness::free_port());
    let control = format!("127.0.0.1:{}", harness::free_port());
    let token_file = t.join("control.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = t.join("walrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[control]\nlisten = \"{control}\"\ntoken_file = \"{}\"\nallowed_hosts = [\"relay.internal\"]\n\n[[feed]]\nname = \"lag\"\ndelay = \"1h\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let data_dir = relay.data.to_str().unwrap().to_string();
    Setup {
        _t: t,
        _primary: primary,
        relay,
        metrics,
        control,
        token_file: token_file.to_str().unwrap().to_string(),
        data_dir,
    }
}

fn tcp(addr: &str, token: Option<&str>) -> Target {
    Target::Tcp {
        addr: addr.to_string(),
        token: token.map(str::to_string),
    }
}

/// A request written by hand, for headers a well-behaved client never sends.
fn raw(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn feed_state(s: &Setup) -> String {
    let (st, out, err) = run_to_end(&["feed", "list", "--json", "--data-dir", &s.data_dir]);
    assert!(st.success(), "feed list failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["feeds"][0]["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn admin_control_refuses_and_separates() {
    let s = setup("admin-ctl");
    // the control socket: in the data directory, mode 0600
    let sock = s.relay.data.join("walrelay.control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    // metrics listener: read-only routes served, control routes not there
    let m = tcp(&s.metrics, None);
    for path in ["/metrics", "/status", "/health"] {
        let (st, body) = call_blocking(&m, "GET", path, &[]).unwrap();
        assert_eq!(st, 200, "{path}: {body}");
    }
    let (_, body) = call_blocking(&m, "GET", "/metrics", &[]).unwrap();
    assert!(body.contains("walrelay_flush_lsn_bytes"), "{body}");
    for (method, path) in [
        ("POST", "/feeds/lag/pause"),
        ("POST", "/feeds/lag/advance?to_lsn=FFFFFFFF/FFFFFFFF"),
        ("GET", "/feeds"),
        ("GET", "/xacts"),
    ] {
        let (st, body) = call_blocking(&m, method, path, &[]).unwrap();
        assert!(
            st == 404 || st == 405,
            "{method} {path} on the metrics listener: {st} {body}"
        );
    }
    assert_eq!(
        call_blocking(&m, "GET", "/status", &[("host", "evil.example:80")])
            .unwrap()
            .0,
        421,
        "DNS-rebinding Host on the metrics listener"
    );

    // control over TCP: the token is required
    let (st, body) = call_blocking(&tcp(&s.control, None), "GET", "/feeds", &[]).unwrap();
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("authentication required"), "{body}");
    let (st, body) = call_blocking(
        &tcp(&s.control, Some("wrong-token-0123456789")),
        "GET",
        "/feeds",
        &[],
    )
    .unwrap();
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("invalid token"), "{body}");
    let (st, _) = call_blocking(&tcp(&s.control, None), "POST", "/feeds/lag/pause", &[]).unwrap();
    assert_eq!(st, 401);
    let c = tcp(&s.control, Some(TOKEN));
    let (st, body) = call_blocking(&c, "GET", "/feeds", &[]).unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"lag\""), "{body}");
    // wrong Host (DNS rebinding): refused even with the token; configured names accepted
    let (st, body) = call_blocking(&c, "GET", "/feeds", &[("host", "evil.example")]).unwrap();
    assert_eq!(st, 421, "{body}");
    let (st, _) = call_blocking(&c, "GET", "/feeds", &[("host", "relay.internal:1")]).unwrap();
    assert_eq!(st, 200);

    // a cross-origin form POST (what a web page can send without a preflight): refused,
    // and the feed is not paused
    let form = |origin: &str| {
        format!(
            "POST /feeds/lag/pause HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=b",
            s.control
        )
    };
    let reply = raw(&s.control, &form("http://evil.example"));
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains("cross-origin request from"), "{reply}");
    // same origin but a form content type: still not a state change
    let reply = raw(&s.control, &form(&format!("http://{}", s.control)));
    assert!(reply.starts_with("HTTP/1.1 415"), "{reply}");
    assert_ne!(
        feed_state(&s),
        "paused",
        "a refused request paused the feed"
    );
    // the same form POST to the socket: refused too
    let (st, _) = call_blocking(
        &Target::Unix(sock.clone()),
        "POST",
        "/feeds/lag/pause",
        &[
            ("origin", "http://evil.example"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
    )
    .unwrap();
    assert_eq!(st, 403);
    assert_ne!(feed_state(&s), "paused");
    // with the token and a JSON request, over TCP: allowed
    let (st, body) = call_blocking(&c, "POST", "/feeds/lag/pause", &[]).unwrap();
    assert_eq!(st, 200, "{body}");
    assert_eq!(feed_state(&s), "paused");

    // the CLI over TCP with the token file, and over the socket by --control PATH
    let (st, out, err) = run_to_end(&[
        "feed",
        "resume",
        "lag",
        "--control",
        &format!("http://{}", s.control),
        "--token-file",
        &s.token_file,
    ]);
    assert!(st.success(), "{err}");
    assert!(out.contains("lag"), "{out}");
    let (st, _, err) = run_to_end(&[
        "feed",
        "list",
        "--control",
        &format!("http://{}", s.control),
    ]);
    assert!(!st.success(), "no token accepted");
    assert!(err.contains("authentication required"), "{err}");
    let (st, out, err) = run_to_end(&["feed", "list", "--control", sock.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(out.contains("lag"), "{out}");

    // the duration that used to panic the parser: a 400, and walrelay still serves
    let (st, body) = call_blocking(
        &Target::Unix(sock.clone()),
        "GET",
        "/xacts?since=now-99999999999999999999d",
        &[],
    )
    .unwrap();
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("invalid time"), "{body}");
    assert_eq!(call_blocking(&m, "GET", "/health", &[]).unwrap().0, 200);
}

#[test]
fn admin_cli_over_socket() {
    let s = setup("admin-cli");
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--data-dir", &s.data_dir]);
        let (st, out, err) = run_to_end(&a);
        assert!(st.success(), "walrelay {args:?}: {err}\n{out}");
        out
    };
    let out = cli(&["feed", "list"]);
    assert!(out.lines().any(|l| l.starts_with("lag ")), "{out}");
    cli(&["feed", "pause", "lag"]);
    assert_eq!(feed_state(&s), "paused");
    cli(&["feed", "resume", "lag"]);
    assert_ne!(feed_state(&s), "paused");
    // a transaction that drops a table shows up in `walrelay xacts`
    s._primary.psql("create table doomed (id int)");
    s._primary.psql("drop table doomed");
    s.relay.wait_flush(&s._primary, s._primary.current_lsn());
    harness::wait_for(
        Duration::from_secs(30),
        "the drop in walrelay xacts",
        || cli(&["xacts", "--since", "now-10m", "--drops-only"]).contains("base/"),
    );
    let (st, _, err) = run_to_end(&["feed", "pause", "nope", "--data-dir", &s.data_dir]);
    assert!(!st.success());
    assert!(err.contains("no feed named \"nope\""), "{err}");
    // no walrelay there: a clear error naming the socket
    let (st, _, err) = run_to_end(&["feed", "list", "--data-dir", "/nonexistent"]);
    assert!(!st.success());
    assert!(
        err.contains(
            "could not reach walrelay's control endpoint at \"/nonexistent/walrelay.control.sock\""
        ),
        "{err}"
    );
}

#[test]
fn admin_metrics_survive_silent_connections() {
    let s = setup("admin-flood");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.relay.proc.pid()))
            .unwrap()
            .count()
    };
    let baseline = fds();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        match std::net::TcpStream::connect(&s.metrics) {
            Ok(c) => silent.push(c),
            Err(e) => panic!("connect {}: {e}", s.metrics),
        }
    }
    // half of them send a partial request head and stop
    for c in silent.iter_mut().step_by(2) {
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    }
    for _ in 0..3 {
        let (st, body) = call_blocking(&tcp(&s.metrics, None), "GET", "/metrics", &[]).unwrap();
        assert_eq!(st, 200);
        assert!(body.contains("walrelay_flush_lsn_bytes"), "{body}");
    }
    // bounded: walrelay holds at most its connection cap (128) of them, the rest wait in
    // the kernel's backlog
    let held = fds().saturating_sub(baseline);
    assert!(
        held <= 128 + 8,
        "walrelay holds {held} more descriptors under the flood"
    );
    // the control socket is a listener of its own
    let (st, _) = call_blocking(
        &Target::Unix(s.relay.data.join("walrelay.control.sock")),
        "GET",
        "/status",
        &[],
    )
    .unwrap();
    assert_eq!(st, 200);
    drop(silent);
}

#[test]
fn admin_token_file_must_be_private() {
    let t = TestDir::new("admin-tokperm");
    let primary = Pg::primary("15", &[]);
    let token_file = t.join("control.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = t.join("walrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nlisten = \"127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
            harness::free_port(),
            token_file.display()
        ),
    )
    .unwrap();
    let data = t.subdir("data");
    let (st, _, err) = run_to_end(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--upstream",
        &primary.conninfo(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!st.success());
    assert!(
        err.contains("has group or world access; it must be 0600"),
        "{err}"
    );
}

/// `control.listen` on a non-loopback address with TLS: served over TLS only (checked with
/// curl against the test CA), token still required.
#[test]
fn admin_control_tls() {
    let t = TestDir::new("admin-tls");
    let primary = Pg::primary("15", &[]);
    let certs = crate::harness::certs::generate(&t.subdir("certs"), &["localhost", "127.0.0.1"]);
    let port = harness::free_port();
    let token_file = t.join("control.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = t.join("walrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nlisten = \"0.0.0.0:{port}\"\ntoken_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[[feed]]\nname = \"lag\"\ndelay = \"1h\"\n",
            token_file.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        ),
    )
    .unwrap();
    let _relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let curl = |extra: &[&str]| {
        let mut args = vec!["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra);
        let out = std::process::Command::new("curl")
            .args(&args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = format!("https://127.0.0.1:{port}/feeds");
    let ca = certs.ca_cert.to_str().unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (out, err) = curl(&["--cacert", ca, "-H", &auth, &url]);
    assert!(out.ends_with("\n200"), "{out} {err}");
    assert!(out.contains("\"lag\""), "{out}");
    let (out, _) = curl(&["--cacert", ca, &url]);
    assert!(out.ends_with("\n401"), "{out}");
    let (out, _) = curl(&[
        "--cacert",
        ca,
        "-H",
        &auth,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        &format!("https://127.0.0.1:{port}/feeds/lag/pause"),
    ]);
    assert!(out.ends_with("\n200"), "{out}");
    assert!(out.contains("paused"), "{out}");
    // plain HTTP to the TLS listener gets no answer
    let (out, _) = curl(&["-H", &auth, &format!("http://127.0.0.1:{port}/feeds")]);
    assert!(!out.contains("\"lag\""), "{out}");
    assert!(!out.ends_with("\n200"), "{out}");
}

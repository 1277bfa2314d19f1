//! SIGHUP reload of `walrelay run` (issue 13), against a real PostgreSQL 15 primary and
//! standby: a user added to `[server.users]` (with an hba rule requiring SCRAM) can connect
//! after `kill -HUP` — a real standby streams through walrelay as that user and replays rows —
//! while a file with a syntax error is refused with an ERROR line and the old users and rules
//! stay in force; a change that needs a restart is reported and not applied.
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{self, pg::Pg, walrelay::Walrelay, TestDir};

fn verifier(user: &str, password: &str) -> String {
    let mut child = Command::new(harness::walrelay::bin())
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walrelay passwd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn config(listen: &str, users: &[(&str, &str)], upstream_slot: &str) -> String {
    let mut s = format!(
        "[upstream]\nslot = \"{upstream_slot}\"\n\n[server]\nlisten = \"{listen}\"\n\n\
         [[server.hba]]\ntype = \"host\"\ndatabase = \"replication\"\nuser = \"all\"\n\
         address = \"127.0.0.1/32\"\nmethod = \"scram-sha-256\"\n\n[server.users]\n"
    );
    for (u, v) in users {
        s.push_str(&format!("{u} = \"{v}\"\n"));
    }
    s
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn sighup_reload_users_hba_and_refuses_a_broken_file() {
    let t = TestDir::new("reload");
    let primary = Pg::primary("15", &[]);
    let port = harness::free_port();
    let listen = format!("127.0.0.1:{port}");
    let alice = verifier("alice", "alice-secret");
    let bob = verifier("bob", "bob-secret");
    let cfg_path = t.join("walrelay.toml");
    std::fs::write(&cfg_path, config(&listen, &[("alice", &alice)], "walrelay")).unwrap();
    let data = t.subdir("data");
    let mut w = Walrelay::spawn_with(
        &t.join("walrelay.log"),
        &[
            "run",
            "-c",
            cfg_path.to_str().unwrap(),
            "--upstream",
            &primary.conninfo(),
            "-D",
            data.to_str().unwrap(),
            "--status-interval",
            "1s",
        ],
        &[("WALRELAY_LOG", "info")],
    );
    let ident = |user: &str, pw: &str| {
        primary.install().psql_conninfo(
            &format!("host=127.0.0.1 port={port} user={user} password={pw} replication=true"),
            "IDENTIFY_SYSTEM",
        )
    };
    let sysid = primary.system_identifier().to_string();
    harness::wait_for(Duration::from_secs(30), "alice served by walrelay", || {
        ident("alice", "alice-secret").is_ok_and(|o| o.starts_with(&sysid))
    });
    let e = ident("bob", "bob-secret").unwrap_err();
    assert!(
        e.contains("FATAL:  password authentication failed for user \"bob\""),
        "{e}"
    );

    // Add bob, reload.
    std::fs::write(
        &cfg_path,
        config(&listen, &[("alice", &alice), ("bob", &bob)], "walrelay"),
    )
    .unwrap();
    harness::signal(w.pid(), "HUP");
    harness::wait_for(Duration::from_secs(30), "the reload to be logged", || {
        w.log().contains("reload: server.users: user \"bob\" added")
    });
    assert!(w.is_running(), "SIGHUP ended walrelay:\n{}", w.log());
    assert!(w.log().contains(&format!(
        "received SIGHUP, reloading configuration file \"{}\"",
        cfg_path.display()
    )));
    let o = ident("bob", "bob-secret").expect("bob after the reload");
    assert!(o.starts_with(&sysid), "{o}");
    assert!(ident("alice", "alice-secret").is_ok());

    // A real standby streams through walrelay as bob.
    let standby = Pg::standby_of(
        &primary,
        "15",
        &format!("host=127.0.0.1 port={port} user=bob password=bob-secret application_name=bobs"),
        &[],
    );
    primary.psql("create table reloaded as select generate_series(1, 500) x");
    let lsn = primary.current_lsn();
    standby.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(standby.psql("select count(*) from reloaded"), "500");

    // A syntax error: refused, bob and alice still get in; alice is not dropped.
    let errors_before = count(&w.log(), "contains errors; no changes were applied");
    std::fs::write(&cfg_path, "[server\nlisten = \n").unwrap();
    harness::signal(w.pid(), "HUP");
    harness::wait_for(Duration::from_secs(30), "the refusal to be logged", || {
        count(&w.log(), "contains errors; no changes were applied") > errors_before
    });
    let log = w.log();
    let line = log
        .lines()
        .find(|l| l.contains("contains errors; no changes were applied"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("configuration file \"{}\"", cfg_path.display())),
        "{line}"
    );
    assert!(w.is_running());
    assert!(ident("bob", "bob-secret").is_ok_and(|o| o.starts_with(&sysid)));
    assert!(ident("alice", "alice-secret").is_ok());

    // Valid again, bob removed, and a slot change that needs a restart.
    std::fs::write(&cfg_path, config(&listen, &[("alice", &alice)], "other")).unwrap();
    harness::signal(w.pid(), "HUP");
    harness::wait_for(
        Duration::from_secs(30),
        "bob's removal to be logged",
        || {
            w.log()
                .contains("reload: server.users: user \"bob\" removed")
        },
    );
    let log = w.log();
    assert!(
        log.contains(
            "reload: [upstream] cannot be changed without restarting walrelay; the running value is kept"
        ),
        "{log}"
    );
    let e = ident("bob", "bob-secret").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"bob\""),
        "{e}"
    );
    // The running slot is still "walrelay" on the primary (active), no "other" slot.
    let slots = primary.psql("select slot_name from pg_replication_slots order by 1");
    assert_eq!(slots, "walrelay", "{slots}");
    // Streaming never stopped: the standby (authenticated before) still replays.
    primary.psql("insert into reloaded select generate_series(501, 600)");
    standby.wait_replayed(primary.current_lsn(), Duration::from_secs(60));
    assert_eq!(standby.psql("select count(*) from reloaded"), "600");
    let st = w.stop();
    assert!(st.success(), "{}", w.log());
}

/// A feed's delay changed in the file applies on SIGHUP to the standby already streaming
/// under it: held back by a 1 h delay, it catches up once the delay is 0.
#[test]
fn sighup_reload_changes_a_feed_delay_live() {
    use crate::server_common::Relay;
    let t = TestDir::new("reload-feed");
    let primary = Pg::primary("15", &[]);
    let cfg = t.join("walrelay.toml");
    let feed = |delay: &str| format!("[[feed]]\nname = \"late\"\ndelay = \"{delay}\"\n");
    std::fs::write(&cfg, feed("1h")).unwrap();
    let relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let standby = Pg::standby_of(&primary, "15", &relay.conninfo("late"), &[]);
    harness::wait_for(
        Duration::from_secs(60),
        "the standby to accept connections",
        || standby.try_psql("select 1").is_ok(),
    );
    primary.psql("create table held as select generate_series(1, 300) x");
    let lsn = primary.current_lsn();
    relay.wait_flush(&primary, lsn);
    // walrelay has it, the 1 h feed does not send it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        standby.try_psql("select count(*) from held").is_err(),
        "a 1 h feed sent a new commit"
    );
    std::fs::write(&cfg, feed("0s")).unwrap();
    harness::signal(relay.proc.pid(), "HUP");
    harness::wait_for(
        Duration::from_secs(30),
        "the feed change to be logged",
        || {
            relay
                .log()
                .contains("reload: feed \"late\": delay 1h -> 0, tripwire on -> on")
        },
    );
    standby.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(standby.psql("select count(*) from held"), "300");
}

/// A certificate renewed in place (same paths, new files) is served after SIGHUP; a broken
/// certificate file is refused and the one in force stays.
#[test]
fn sighup_reload_picks_up_a_renewed_certificate() {
    use crate::harness::certs;
    use crate::server_common::Relay;
    let t = TestDir::new("reload-tls");
    let c = certs::generate(&t.subdir("certs"), &[]);
    let primary = Pg::primary("15", &[]);
    let live_cert = t.join("live.crt");
    let live_key = t.join("live.key");
    std::fs::copy(&c.server_cert, &live_cert).unwrap();
    std::fs::copy(&c.server_key, &live_key).unwrap();
    let cfg = t.join("walrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            live_cert.display(),
            live_key.display()
        ),
    )
    .unwrap();
    let relay = Relay::start(&t, &primary, &["--config", cfg.to_str().unwrap()]);
    let sysid = primary.system_identifier().to_string();
    let ident = |root: &std::path::Path| {
        primary.install().psql_conninfo(
            &format!(
                "host=127.0.0.1 port={} user=postgres replication=true sslmode=verify-ca sslrootcert={}",
                relay.port,
                root.display()
            ),
            "IDENTIFY_SYSTEM",
        )
    };
    assert!(ident(&c.ca_cert).is_ok_and(|o| o.starts_with(&sysid)));
    let e = ident(&c.other_ca_cert).unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");

    // Renewed in place: the other CA's certificate at the same paths.
    std::fs::copy(&c.other_server_cert, &live_cert).unwrap();
    std::fs::copy(&c.other_server_key, &live_key).unwrap();
    harness::signal(relay.proc.pid(), "HUP");
    harness::wait_for(Duration::from_secs(30), "the new certificate", || {
        relay
            .log()
            .contains("reload: TLS certificate changed (new connections use it)")
    });
    assert!(ident(&c.other_ca_cert).is_ok_and(|o| o.starts_with(&sysid)));
    let e = ident(&c.ca_cert).unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");

    // A broken certificate file: refused, the certificate in force stays.
    std::fs::write(&live_cert, "not a certificate\n").unwrap();
    harness::signal(relay.proc.pid(), "HUP");
    harness::wait_for(Duration::from_secs(30), "the refusal", || {
        relay
            .log()
            .contains("contains errors; no changes were applied")
    });
    assert!(ident(&c.other_ca_cert).is_ok_and(|o| o.starts_with(&sysid)));
}

/// `local` rules and `peer` authentication are reloaded like the others: a Unix-socket
/// connection refused by a `local … reject` rule is accepted by `peer` after SIGHUP (as
/// this OS user; another user name fails with PostgreSQL's text), while TCP keeps its rule.
#[test]
fn sighup_reload_local_peer_rules() {
    let t = TestDir::new("reload-local");
    let primary = Pg::primary("15", &[]);
    let port = harness::free_port();
    let sock = t.subdir("sock");
    harness::set_mode(&sock, 0o777);
    let me = {
        let out = Command::new("id").arg("-un").output().expect("run id -un");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let conf = |local_method: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port},{}\"\n\n\
             [[server.hba]]\ntype = \"local\"\nmethod = \"{local_method}\"\n\n\
             [[server.hba]]\ntype = \"host\"\naddress = \"127.0.0.1/32\"\nmethod = \"trust\"\n",
            sock.display()
        )
    };
    let cfg_path = t.join("walrelay.toml");
    std::fs::write(&cfg_path, conf("reject")).unwrap();
    let data = t.subdir("data");
    let mut w = Walrelay::spawn_with(
        &t.join("walrelay.log"),
        &[
            "run",
            "-c",
            cfg_path.to_str().unwrap(),
            "--upstream",
            &primary.conninfo(),
            "-D",
            data.to_str().unwrap(),
        ],
        &[("WALRELAY_LOG", "info")],
    );
    let sysid = primary.system_identifier().to_string();
    let ident = |conn: &str| {
        primary
            .install()
            .psql_conninfo(&format!("{conn} replication=true"), "IDENTIFY_SYSTEM")
    };
    let tcp = format!("host=127.0.0.1 port={port} user={me}");
    let local = |user: &str| format!("host={} port={port} user={user}", sock.display());
    harness::wait_for(Duration::from_secs(30), "walrelay serving TCP", || {
        ident(&tcp).is_ok_and(|o| o.starts_with(&sysid))
    });
    let e = ident(&local(&me)).unwrap_err();
    assert!(
        e.contains(&format!(
            "pg_hba.conf rejects replication connection for host \"[local]\", user \"{me}\""
        )),
        "{e}"
    );

    std::fs::write(&cfg_path, conf("peer")).unwrap();
    harness::signal(w.pid(), "HUP");
    harness::wait_for(Duration::from_secs(30), "the reload to be logged", || {
        w.log()
            .contains("reload: server.hba: 2 rule(s) in force (were 2)")
    });
    assert!(w.is_running(), "SIGHUP ended walrelay:\n{}", w.log());
    assert!(
        !w.log().contains("cannot be changed without restarting"),
        "{}",
        w.log()
    );
    let o = ident(&local(&me)).expect("peer over the socket after the reload");
    assert!(o.starts_with(&sysid), "{o}");
    let e = ident(&local(&format!("not_{me}"))).unwrap_err();
    assert!(
        e.contains(&format!("Peer authentication failed for user \"not_{me}\"")),
        "{e}"
    );
    assert!(ident(&tcp).is_ok_and(|o| o.starts_with(&sysid)));
    w.stop();
    assert!(!w.log().contains("panicked"), "{}", w.log());
}

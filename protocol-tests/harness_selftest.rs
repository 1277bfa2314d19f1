//! Checks the test harness itself against real servers; independent of walrelay's behaviour.
use std::time::{Duration, Instant};

use crate::harness::{self, certs, pg::Pg, s3::S3Server, TestDir};

fn replicates(major: &str) {
    let t = Instant::now();
    let primary = Pg::primary(major, &[]);
    let standby = Pg::standby_of(&primary, major, &primary.conninfo(), &[]);
    eprintln!(
        "PG {major}: primary + standby up in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    let version = primary.psql("show server_version_num");
    assert!(
        version.starts_with(major),
        "server_version_num {version} for major {major}"
    );
    primary.psql("create table t as select generate_series(1, 1000) as x");
    let lsn = primary.current_lsn();
    standby.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(standby.psql("select count(*) from t"), "1000");
    harness::wait_for(Duration::from_secs(30), "walreceiver streaming", || {
        standby
            .try_psql("select status from pg_stat_wal_receiver")
            .as_deref()
            == Ok("streaming")
    });
    assert_eq!(
        primary.system_identifier(),
        standby.system_identifier(),
        "same cluster"
    );
    eprintln!(
        "PG {major}: replicated in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn harness_selftest_pg15_primary_and_standby() {
    replicates("15");
}

#[test]
fn harness_selftest_matrix_primary_and_standby() {
    for major in harness::majors() {
        if major != "15" {
            replicates(&major);
        }
    }
}

#[test]
fn harness_selftest_restart_promote_hba() {
    let mut primary = Pg::primary("15", &["wal_keep_size = '64MB'"]);
    let mut standby = Pg::standby_of(&primary, "15", &primary.conninfo(), &[]);
    primary.restart();
    primary.psql("create table r (x int); insert into r values (1)");
    standby.wait_replayed(primary.current_lsn(), Duration::from_secs(60));
    standby.promote();
    standby.psql("insert into r values (2)");
    assert_eq!(standby.psql("select count(*) from r"), "2");
    // reject everything from 127.0.0.1 except the local postgres superuser via trust
    primary.set_hba("host all postgres 127.0.0.1/32 trust\n");
    primary.reload();
    assert!(primary
        .psql_conninfo(
            &format!(
                "host=127.0.0.1 port={} user=nobody dbname=postgres",
                primary.port()
            ),
            "select 1"
        )
        .is_err());
    primary.stop();
    assert!(primary.try_psql("select 1").is_err());
    primary.start();
    assert_eq!(primary.psql("select 1"), "1");
    standby.stop_immediate();
}

#[test]
fn harness_selftest_tls_verify_full() {
    let dir = TestDir::new("certs");
    let certs = certs::generate(&dir.join("certs"), &["localhost", "127.0.0.1"]);
    let lines = certs.server_conf_lines();
    let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
    let pg = Pg::primary("15", &refs);
    assert_eq!(pg.psql("show ssl"), "on");
    for host in ["localhost", "127.0.0.1"] {
        let ok = pg.psql_conninfo(
            &format!(
                "host={host} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
                pg.port(),
                certs.ca_cert.display()
            ),
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        );
        assert_eq!(ok.as_deref(), Ok("t"), "verify-full via {host}");
    }
    // the unrelated CA must not verify the server
    let bad = pg.psql_conninfo(
        &format!(
            "host=localhost port={} user=postgres dbname=postgres sslmode=verify-ca sslrootcert={}",
            pg.port(),
            certs.other_ca_cert.display()
        ),
        "select 1",
    );
    assert!(bad.is_err(), "other CA accepted: {bad:?}");
    // client certificate
    let (cert, key) = certs.client_cert("postgres");
    let ok = pg.psql_conninfo(
        &format!(
            "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full \
             sslrootcert={} sslcert={} sslkey={}",
            pg.port(),
            certs.ca_cert.display(),
            cert.display(),
            key.display()
        ),
        "select client_dn from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert_eq!(ok.as_deref(), Ok("/CN=postgres"));
}

#[test]
fn harness_selftest_s3_answers_403_and_restarts() {
    let t = Instant::now();
    let mut s3 = S3Server::start();
    eprintln!(
        "S3 up in {:.1}s at {}",
        t.elapsed().as_secs_f64(),
        s3.endpoint()
    );
    let path = format!("/{}", s3.bucket());
    assert_eq!(harness::s3::http_status(s3.port(), "GET", &path), Some(403));
    s3.create_bucket("second");
    let t = Instant::now();
    s3.stop();
    assert_eq!(harness::s3::http_status(s3.port(), "GET", &path), None);
    s3.start_again();
    eprintln!("S3 stop + start in {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(harness::s3::http_status(s3.port(), "GET", &path), Some(403));
    assert!(s3.shell("s3.bucket.list").contains("second"));
}

#[test]
fn harness_selftest_walrelay_spawns() {
    // only process handling; walrelay's behaviour is not checked here
    let mut w = harness::walrelay::Walrelay::spawn(&["--help"]);
    let status = w.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "walrelay did not exit");
    let (_status, _out, _err) = harness::walrelay::run_to_end(&["--version"]);
}

#[test]
fn harness_selftest_server_stopped_when_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let pg = Pg::primary("15", &[]);
        tx.send((pg.port(), pg.datadir().to_path_buf())).unwrap();
        panic!("deliberate panic with a running server (expected in this test)");
    })
    .join();
    assert!(joined.is_err(), "the thread should have panicked");
    let (port, datadir) = rx.recv().expect("port");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server on port {port} still listening after the panic"
    );
    if std::env::var("WALRELAY_KEEP").as_deref() != Ok("1") {
        assert!(!datadir.exists(), "{} not removed", datadir.display());
    }
}

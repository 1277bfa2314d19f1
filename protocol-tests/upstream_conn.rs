//! The upstream replication client (`walrelay::upstream`) against real PostgreSQL:
//! TLS modes, SCRAM (with and without channel binding), md5, the password file,
//! multi-host failover and `target_session_attrs`, plus a short streaming session.

use std::os::unix::fs::PermissionsExt;

use crate::harness::certs;
use crate::harness::pg::Pg;
use crate::harness::{free_port, majors, TestDir};
use walrelay::upstream::conninfo::ConnInfo;
use walrelay::upstream::{CopyEvent, ReplConnection, UpstreamError};
use walrelay::Lsn;

fn ci(s: &str) -> ConnInfo {
    let mut c = ConnInfo::parse(s).expect("conninfo");
    // Tests must not depend on the environment of whoever runs them.
    c.apply_env(&|_| None);
    c
}

async fn connect(s: &str) -> Result<ReplConnection, UpstreamError> {
    ReplConnection::connect(&ci(s)).await
}

async fn connect_err(s: &str) -> String {
    match connect(s).await {
        Ok(_) => panic!("connection with \"{s}\" unexpectedly succeeded"),
        Err(e) => e.to_string(),
    }
}

/// A primary with TLS (certificate for `localhost` only), users for each auth method and a
/// pg_hba.conf that picks the method by user name.
fn tls_primary(major: &str, dir: &TestDir) -> (Pg, certs::Certs) {
    let c = certs::generate(dir.path(), &["localhost"]);
    let mut pg = Pg::primary(
        major,
        &[
            "ssl = on",
            &format!("ssl_cert_file = '{}'", c.server_cert.display()),
            &format!("ssl_key_file = '{}'", c.server_key.display()),
            "password_encryption = 'scram-sha-256'",
        ],
    );
    pg.psql(
        "CREATE ROLE scram LOGIN REPLICATION PASSWORD 'sekret';
         CREATE ROLE tlsonly LOGIN REPLICATION PASSWORD 'tlspw';
         SET password_encryption = 'md5';
         CREATE ROLE md5u LOGIN REPLICATION PASSWORD 'md5pw';",
    );
    pg.set_hba(
        "host    replication md5u    127.0.0.1/32 md5
         hostssl replication tlsonly 127.0.0.1/32 scram-sha-256
         host    replication scram   127.0.0.1/32 scram-sha-256
         host    all         all     127.0.0.1/32 trust
         host    replication all     127.0.0.1/32 trust",
    );
    pg.reload();
    (pg, c)
}

#[tokio::test]
async fn tls_and_auth() {
    let major = majors().into_iter().next().expect("a PostgreSQL major");
    let dir = TestDir::new("upstream_conn_tls");
    let (pg, c) = tls_primary(&major, &dir);
    let port = pg.port();
    let ca = c.ca_cert.display().to_string();

    // verify-full against the name in the certificate, SCRAM-SHA-256-PLUS required.
    let conn = connect(&format!(
        "host=localhost port={port} user=scram password=sekret sslmode=verify-full sslrootcert={ca} channel_binding=require"
    ))
    .await
    .expect("verify-full + channel binding");
    assert!(conn.is_tls());
    conn.close().await;

    // SCRAM over TLS without verification (sslmode=require) and without TLS.
    let conn = connect(&format!(
        "host=127.0.0.1 port={port} user=scram password=sekret sslmode=require"
    ))
    .await
    .unwrap();
    assert!(conn.is_tls());
    let conn = connect(&format!(
        "host=127.0.0.1 port={port} user=scram password=sekret sslmode=disable"
    ))
    .await
    .unwrap();
    assert!(!conn.is_tls());

    // sslmode=prefer (the default) uses TLS when the server has it: hostssl-only user.
    let conn = connect(&format!(
        "host=127.0.0.1 port={port} user=tlsonly password=tlspw"
    ))
    .await
    .unwrap();
    assert!(conn.is_tls());

    // verify-ca does not check the name.
    connect(&format!(
        "host=127.0.0.1 port={port} user=scram password=sekret sslmode=verify-ca sslrootcert={ca}"
    ))
    .await
    .expect("verify-ca with an IP address");

    // Wrong host name.
    let e = connect_err(&format!(
        "host=127.0.0.1 port={port} user=scram password=sekret sslmode=verify-full sslrootcert={ca}"
    ))
    .await;
    assert!(
        e.contains("server certificate for \"localhost\" does not match host name \"127.0.0.1\""),
        "{e}"
    );

    // Wrong CA.
    let other = certs::generate(&dir.path().join("other"), &["localhost"]);
    let e = connect_err(&format!(
        "host=localhost port={port} user=scram password=sekret sslmode=verify-full sslrootcert={}",
        other.ca_cert.display()
    ))
    .await;
    assert!(e.contains("certificate verify failed"), "{e}");

    // Channel binding required but impossible.
    let e = connect_err(&format!(
        "host=127.0.0.1 port={port} user=scram password=sekret sslmode=disable channel_binding=require"
    ))
    .await;
    assert!(e.contains("channel binding is required"), "{e}");

    // Wrong password.
    let err = connect(&format!(
        "host=127.0.0.1 port={port} user=scram password=wrong"
    ))
    .await
    .err()
    .expect("wrong password must fail");
    assert!(err.is_auth_failure());
    let e = err.to_string();
    assert!(
        e.contains(&format!(
            "connection to server at \"127.0.0.1\", port {port} failed: FATAL:  password authentication failed for user \"scram\""
        )),
        "{e}"
    );

    // No password at all.
    let e = connect_err(&format!(
        "host=127.0.0.1 port={port} user=scram passfile={}",
        dir.path().join("missing").display()
    ))
    .await;
    assert!(e.contains("fe_sendauth: no password supplied"), "{e}");

    // md5.
    connect(&format!(
        "host=127.0.0.1 port={port} user=md5u password=md5pw"
    ))
    .await
    .expect("md5");

    // The password file supplies the password (database field is "replication").
    let pf = dir.path().join("pgpass");
    std::fs::write(
        &pf,
        format!("# test\n127.0.0.1:{port}:replication:scram:sekret\n"),
    )
    .unwrap();
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
    connect(&format!(
        "host=127.0.0.1 port={port} user=scram passfile={}",
        pf.display()
    ))
    .await
    .expect(".pgpass");
    // ...but not when it is group-readable.
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = connect_err(&format!(
        "host=127.0.0.1 port={port} user=scram passfile={}",
        pf.display()
    ))
    .await;
    assert!(e.contains("no password supplied"), "{e}");
}

#[tokio::test]
async fn commands_and_streaming() {
    for major in majors() {
        let pg = Pg::primary(&major, &[]);
        let mut conn = connect(&format!("{} user=postgres", pg.conninfo()))
            .await
            .unwrap();
        let id = conn.identify_system().await.unwrap();
        assert_eq!(id.timeline, 1);
        let seg = conn.wal_segment_size().await.unwrap();
        assert_eq!(seg, 16 << 20);
        if conn.server_version_num() >= 150000 {
            assert_eq!(conn.read_replication_slot("missing").await.unwrap(), None);
        }
        conn.create_physical_slot("walrelay_q", true).await.unwrap();
        let e = conn
            .create_physical_slot("walrelay_q", true)
            .await
            .unwrap_err();
        assert_eq!(e.server_error().map(|f| f.code.as_str()), Some("42710"));
        if conn.server_version_num() >= 150000 {
            let s = conn
                .read_replication_slot("walrelay_q")
                .await
                .unwrap()
                .expect("slot exists");
            assert!(s.restart_lsn.is_some());
        }
        // A failing START_REPLICATION (before CopyBothResponse) keeps the session usable.
        let e = conn
            .start_replication(None, id.xlogpos, 9)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not in this server's history"),
            "{e}"
        );

        let start = id.xlogpos.segment_start(seg);
        conn.start_replication(Some("walrelay_q"), start, id.timeline)
            .await
            .unwrap();
        pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
        let mut next = start;
        while next < id.xlogpos {
            match conn.recv_copy().await.unwrap() {
                CopyEvent::XLogData {
                    data_start, data, ..
                } => {
                    assert_eq!(data_start, next, "contiguous WAL");
                    next = Lsn(next.0 + data.len() as u64);
                }
                CopyEvent::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    if reply_requested {
                        conn.send_status(wal_end, Lsn(0), Lsn(0), false)
                            .await
                            .unwrap();
                    }
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        conn.send_hs_feedback(0, 0, 0, 0).await.unwrap();
        // Stop streaming ourselves; the session takes commands again.
        assert_eq!(conn.finish_timeline().await.unwrap(), None);
        assert_eq!(conn.identify_system().await.unwrap().systemid, id.systemid);
        conn.drop_slot("walrelay_q").await.unwrap();
        conn.close().await;
    }
}

#[tokio::test]
async fn multi_host_and_session_attrs() {
    let major = majors().into_iter().next().expect("a PostgreSQL major");
    let primary = Pg::primary(&major, &[]);
    let down = free_port();
    let p = primary.port();

    // First host down: the second is reached; the failure is not reported.
    let conn = connect(&format!(
        "host=127.0.0.1,127.0.0.1 port={down},{p} user=postgres connect_timeout=5"
    ))
    .await
    .expect("second host");
    assert_eq!(conn.host_port().1, p);

    // All hosts down: one libpq-style line per host.
    let e = connect_err(&format!(
        "host=127.0.0.1,127.0.0.1 port={down},{down} user=postgres"
    ))
    .await;
    assert_eq!(
        e.lines()
            .filter(|l| l.starts_with("connection to server at"))
            .count(),
        2,
        "{e}"
    );

    // read-write skips a standby listed first.
    let standby = Pg::standby_of(
        &primary,
        &major,
        &format!("{} user=postgres", primary.conninfo()),
        &[],
    );
    let s = standby.port();
    let conn = connect(&format!(
        "host=127.0.0.1,127.0.0.1 port={s},{p} user=postgres target_session_attrs=read-write"
    ))
    .await
    .expect("primary after standby");
    assert_eq!(conn.host_port().1, p);
    let conn = connect(&format!(
        "host=127.0.0.1,127.0.0.1 port={p},{s} user=postgres target_session_attrs=standby"
    ))
    .await
    .expect("standby");
    assert_eq!(conn.host_port().1, s);
    let e = connect_err(&format!(
        "host=127.0.0.1 port={s} user=postgres target_session_attrs=primary"
    ))
    .await;
    assert!(e.contains("server is in hot standby mode"), "{e}");
}

//! Walsender authentication with TLS required: SCRAM (with and without channel binding),
//! md5 for an md5-stored user, client certificates, and the refusals (wrong password,
//! unknown user, plaintext, non-replication connection) with PostgreSQL's messages.
use std::time::Duration;

use crate::harness::{self, certs, pg::Pg, TestDir};
use crate::server_common::{ReceiveWal, Relay};

#[test]
fn server_auth_tls_scram() {
    let major = harness::majors()
        .last()
        .cloned()
        .unwrap_or_else(|| "18".into());
    let t = TestDir::new("srv-auth");
    let c = certs::generate(&t.subdir("certs"), &[]);
    let primary = Pg::primary(&major, &[]);
    let scram = walrelay::server::auth::scram_verifier("s3cret");
    let md5 = postgres_protocol::password::md5(b"m5pass", "bob");
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            r#"[server]
tls_cert = "{}"
tls_key = "{}"
tls_ca = "{}"
require_tls = true
[[server.hba]]
type = "hostssl"
user = "carol"
method = "cert"
[[server.hba]]
type = "hostssl"
user = "bob"
method = "md5"
[[server.hba]]
type = "hostssl"
address = "127.0.0.0/8"
method = "scram-sha-256"
[server.users]
alice = "{scram}"
bob = "{md5}"
"#,
            c.server_cert.display(),
            c.server_key.display(),
            c.ca_cert.display()
        ),
    )
    .unwrap();
    let data = t.subdir("relay");
    std::fs::create_dir_all(&data).unwrap();
    let port = harness::free_port();
    let relay = Relay::start_probe(
        &t,
        &primary,
        &data,
        port,
        &["--config", conf.to_str().unwrap()],
        "user=alice password=s3cret sslmode=require",
    );
    let base = format!("host=127.0.0.1 port={port} replication=true");
    let q = |extra: &str| {
        primary
            .install()
            .psql_conninfo(&format!("{base} {extra}"), "IDENTIFY_SYSTEM")
    };
    // right credentials, with channel binding required (SCRAM-SHA-256-PLUS)
    q("user=alice password=s3cret sslmode=require channel_binding=require").unwrap();
    let ok = q(&format!(
        "user=alice password=s3cret sslmode=verify-full host=localhost sslrootcert={}",
        c.ca_cert.display()
    ));
    assert!(ok.is_ok(), "{ok:?}");
    // wrong password, unknown user: the same message, as PostgreSQL gives
    let e = q("user=alice password=nope sslmode=require").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"alice\""),
        "{e}"
    );
    let e = q("user=mallory password=s3cret sslmode=require").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"mallory\""),
        "{e}"
    );
    // plaintext refused
    let e = q("user=alice password=s3cret sslmode=disable").unwrap_err();
    assert!(
        e.contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"alice\", no encryption"),
        "{e}"
    );
    // md5 for an md5-stored user
    q("user=bob password=m5pass sslmode=require").unwrap();
    let e = q("user=bob password=bad sslmode=require").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"bob\""),
        "{e}"
    );
    // client certificate (CN = user)
    let (cc, ck) = c.client_cert("carol");
    harness::set_mode(&ck, 0o600);
    q(&format!(
        "user=carol sslmode=require sslcert={} sslkey={}",
        cc.display(),
        ck.display()
    ))
    .unwrap();
    let e = q("user=carol sslmode=require sslcert=/nonexistent sslkey=/nonexistent").unwrap_err();
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    // a SQL connection is refused clearly
    let e = primary
        .install()
        .psql_conninfo(
            &format!("host=127.0.0.1 port={port} user=alice password=s3cret sslmode=require"),
            "select 1",
        )
        .unwrap_err();
    assert!(
        e.contains("walrelay accepts only physical replication connections"),
        "{e}"
    );

    // streaming over TLS with SCRAM
    let dir = t.subdir("recv");
    let recv = ReceiveWal::start_conn(
        &primary,
        &format!("host=127.0.0.1 port={port} user=alice password=s3cret sslmode=require"),
        &dir,
        &[],
    );
    primary.psql("create table x as select generate_series(1, 10000) g");
    primary.switch_wal();
    harness::wait_for(Duration::from_secs(30), "pg_receivewal over TLS", || {
        std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().len() == 24))
            .unwrap_or(false)
    });
    drop(recv);
    assert!(!relay.log().contains("panicked"));
}

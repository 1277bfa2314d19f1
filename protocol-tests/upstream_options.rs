//! libpq options of the upstream client against real PostgreSQL over TLS: `sslcrl` /
//! `sslcrldir` (a revoked server certificate is refused), `ssl_min_protocol_version` /
//! `ssl_max_protocol_version`, `sslcertmode`, and `service` through a service file.

use crate::harness::pg::Pg;
use crate::harness::{certs, majors, TestDir};
use walrelay::upstream::conninfo::ConnInfo;
use walrelay::upstream::ReplConnection;

async fn try_connect(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    let mut ci = ConnInfo::parse(s).map_err(|e| e.to_string())?;
    ci.apply_env(env);
    match ReplConnection::connect(&ci).await {
        Ok(c) => {
            c.close().await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[tokio::test]
async fn crl_protocol_versions_certmode_and_service() {
    let major = majors().into_iter().next().expect("a PostgreSQL major");
    let dir = TestDir::new("upopts");
    let c = certs::generate(&dir.join("certs"), &["localhost"]);
    // TLS 1.2 at most on the server; no ssl_ca_file, so no client certificate is requested.
    let pg = Pg::primary(
        &major,
        &[
            "ssl = on",
            &format!("ssl_cert_file = '{}'", c.server_cert.display()),
            &format!("ssl_key_file = '{}'", c.server_key.display()),
            "ssl_max_protocol_version = 'TLSv1.2'",
        ],
    );
    let port = pg.port();
    let ca = c.ca_cert.display().to_string();
    let base =
        format!("host=localhost port={port} user=postgres sslmode=verify-full sslrootcert={ca}");

    // CRLs: an empty one passes, one revoking the server certificate is refused, as a
    // file and in a directory.
    let empty = dir.join("empty.crl");
    c.crl(&[], &empty);
    try_connect(&format!("{base} sslcrl={}", empty.display()), &no_env)
        .await
        .expect("empty CRL");
    let crldir = dir.subdir("crls");
    let revoked = crldir.join("revoked.crl");
    c.crl(&[&c.server_cert], &revoked);
    let e = try_connect(&format!("{base} sslcrl={}", revoked.display()), &no_env)
        .await
        .unwrap_err();
    assert!(
        e.contains("SSL error: certificate verify failed") && e.contains("Revoked"),
        "{e}"
    );
    let e = try_connect(&format!("{base} sslcrldir={}", crldir.display()), &no_env)
        .await
        .unwrap_err();
    assert!(e.contains("Revoked"), "{e}");
    // A CRL of an unrelated CA says nothing about this chain: refused (CRL_CHECK_ALL).
    let other_dir = dir.subdir("othercrl");
    let other = certs::Certs {
        ca_cert: c.other_ca_cert.clone(),
        ca_key: c.other_ca_key.clone(),
        ..c.clone()
    };
    other.crl(&[], &other_dir.join("other.crl"));
    let e = try_connect(
        &format!("{base} sslcrldir={}", other_dir.display()),
        &no_env,
    )
    .await
    .unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");

    // Protocol versions: the server stops at TLS 1.2.
    try_connect(&format!("{base} ssl_min_protocol_version=TLSv1.2"), &no_env)
        .await
        .expect("TLS 1.2");
    let e = try_connect(&format!("{base} ssl_min_protocol_version=TLSv1.3"), &no_env)
        .await
        .unwrap_err();
    assert!(e.contains("SSL error"), "{e}");
    // libpq's range check (the minimum defaults to TLSv1.2)...
    let e = try_connect(&format!("{base} ssl_max_protocol_version=TLSv1.1"), &no_env)
        .await
        .unwrap_err();
    assert_eq!(e, "invalid SSL protocol version range");
    // ...and versions rustls does not speak.
    let e = try_connect(
        &format!("{base} ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1"),
        &no_env,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("ssl_max_protocol_version V1_1 is not supported by walrelay"),
        "{e}"
    );

    // sslcertmode=require: this server never asks for a client certificate.
    let e = try_connect(&format!("{base} sslcertmode=require"), &no_env)
        .await
        .unwrap_err();
    assert!(
        e.contains("server did not request an SSL certificate"),
        "{e}"
    );

    // service: host, port and TLS settings from a service file named by PGSERVICEFILE;
    // the connection string still wins.
    let sf = dir.join("pg_service.conf");
    std::fs::write(
        &sf,
        format!(
            "[relaysrc]\nhost=localhost\nport={port}\nuser=postgres\nsslmode=verify-full\nsslrootcert={ca}\n"
        ),
    )
    .unwrap();
    let sfs = sf.display().to_string();
    let env = move |k: &str| (k == "PGSERVICEFILE").then(|| sfs.clone());
    try_connect("service=relaysrc", &env)
        .await
        .expect("service file");
    let e = try_connect(
        &format!("service=relaysrc sslcrl={}", revoked.display()),
        &env,
    )
    .await
    .unwrap_err();
    assert!(e.contains("Revoked"), "{e}");
    let e = try_connect("service=missing", &env).await.unwrap_err();
    assert_eq!(e, "definition of service \"missing\" not found");
}

#[tokio::test]
async fn sslcertmode_with_client_certificates() {
    let major = majors().into_iter().next().expect("a PostgreSQL major");
    let dir = TestDir::new("upcertmode");
    let c = certs::generate(&dir.join("certs"), &["localhost"]);
    let lines = c.server_conf_lines();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut pg = Pg::primary(&major, &refs);
    pg.psql("CREATE ROLE certu LOGIN REPLICATION");
    pg.set_hba(
        "hostssl replication certu 127.0.0.1/32 cert
         host    all         all   127.0.0.1/32 trust
         host    replication all   127.0.0.1/32 trust",
    );
    pg.reload();
    let port = pg.port();
    let (cert, key) = c.client_cert("certu");
    let base = format!(
        "host=localhost port={port} sslmode=verify-full sslrootcert={}",
        c.ca_cert.display()
    );
    let with_cert = format!("sslcert={} sslkey={}", cert.display(), key.display());
    try_connect(
        &format!("{base} user=certu {with_cert} sslcertmode=require"),
        &no_env,
    )
    .await
    .expect("certificate sent");
    // Asked for, but none configured (the default files do not exist under this HOME).
    let e = try_connect(
        &format!(
            "{base} user=postgres sslcert={} sslcertmode=require",
            dir.join("none.crt").display()
        ),
        &no_env,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("server accepted connection without a valid SSL certificate"),
        "{e}"
    );
    // disable: the certificate is not sent, so `cert` authentication fails.
    let e = try_connect(
        &format!("{base} user=certu {with_cert} sslcertmode=disable"),
        &no_env,
    )
    .await
    .unwrap_err();
    assert!(e.contains("FATAL:"), "{e}");
}

//! Upstream authentication as strict as libpq.
//!
//! Part 1 uses a FAKE upstream — a scripted server over real TLS (rustls, certificates from
//! `harness::certs`) — because the faults are ones a real PostgreSQL never produces: a man
//! in the middle that answers the SASLInitialResponse with AuthenticationOk, a forged
//! server signature, a cleartext request where SCRAM was required. It also records the
//! client-first-message so the gs2 header can be checked. Everything on the client side is
//! walrelay's real code.
//!
//! Part 2 runs `require_auth` against a real PostgreSQL.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::harness::pg::Pg;
use crate::harness::{certs, majors, TestDir};
use walrelay::upstream::conninfo::ConnInfo;
use walrelay::upstream::ReplConnection;

#[derive(Clone, Copy, Debug)]
enum Script {
    /// R 10 (mechanisms), then R 0 right after the SASLInitialResponse.
    OkAfterInitial,
    /// A proper server-first-message, then R 0 without the server-final-message.
    OkAfterContinue,
    /// A proper server-first-message, then a server-final-message with a wrong signature.
    BadSignature,
    /// R 3: asks for a cleartext password.
    Cleartext,
}

/// What the fake saw from the client.
#[derive(Debug, Default)]
struct Seen {
    client_first: Option<String>,
    password_sent: bool,
}

trait Rw: Read + Write {}
impl<T: Read + Write> Rw for T {}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn auth(code: u32, data: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(data);
    msg(b'R', &b)
}

fn read_msg(s: &mut dyn Rw) -> Option<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).ok()?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).ok()?;
    Some((hdr[0], body))
}

fn ready(s: &mut dyn Rw) {
    let mut out = auth(0, b"");
    out.extend(msg(b'S', b"server_version\x0015.0\x00"));
    out.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    out.extend(msg(b'Z', b"I"));
    let _ = s.write_all(&out);
    let _ = s.flush();
}

fn tls_config(c: &certs::Certs) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.server_cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&c.server_key).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

/// Serves one connection with `script`, offering `mechs`; sends what it saw on `tx`.
fn serve(
    listener: &TcpListener,
    tls: &Arc<rustls::ServerConfig>,
    script: Script,
    mechs: &[&str],
    tx: &mpsc::Sender<Seen>,
) {
    let (mut tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Seen::default();
    let mut first = [0u8; 8];
    tcp.read_exact(&mut first).unwrap();
    let mut s: Box<dyn Rw> = if first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
        tcp.write_all(b"S").unwrap();
        let conn = rustls::ServerConnection::new(tls.clone()).unwrap();
        let mut st = rustls::StreamOwned::new(conn, tcp);
        let mut len = [0u8; 4];
        st.read_exact(&mut len).unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        st.read_exact(&mut rest).unwrap();
        Box::new(st)
    } else {
        // Startup packet without TLS: the rest of it.
        let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]) as usize;
        let mut rest = vec![0u8; len - 8];
        tcp.read_exact(&mut rest).unwrap();
        Box::new(tcp)
    };
    if let Script::Cleartext = script {
        s.write_all(&auth(3, b"")).unwrap();
        s.flush().unwrap();
        if let Some((b'p', _)) = read_msg(s.as_mut()) {
            seen.password_sent = true;
            ready(s.as_mut());
        }
        tx.send(seen).unwrap();
        return;
    }
    let mut list = Vec::new();
    for m in mechs {
        list.extend_from_slice(m.as_bytes());
        list.push(0);
    }
    list.push(0);
    s.write_all(&auth(10, &list)).unwrap();
    s.flush().unwrap();
    let Some((b'p', body)) = read_msg(s.as_mut()) else {
        tx.send(seen).unwrap();
        return;
    };
    // mechanism\0, int32 length, client-first-message
    let nul = body.iter().position(|b| *b == 0).unwrap();
    let cf = String::from_utf8(body[nul + 5..].to_vec()).unwrap();
    let nonce = cf.rsplit_once("r=").unwrap().1.to_string();
    seen.client_first = Some(cf);
    if let Script::OkAfterInitial = script {
        ready(s.as_mut());
        tx.send(seen).unwrap();
        return;
    }
    let server_first = format!("r={nonce}fakeservernonce,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096");
    s.write_all(&auth(11, server_first.as_bytes())).unwrap();
    s.flush().unwrap();
    if read_msg(s.as_mut()).is_none() {
        tx.send(seen).unwrap();
        return;
    }
    match script {
        Script::OkAfterContinue => ready(s.as_mut()),
        _ => {
            let _ = s.write_all(&auth(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
            let _ = s.flush();
        }
    }
    tx.send(seen).unwrap();
}

/// Runs one connection attempt of walrelay's client against the fake.
async fn attempt(
    c: &certs::Certs,
    script: Script,
    mechs: &'static [&'static str],
    conninfo: &str,
) -> (Result<(), String>, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = tls_config(c);
    let (tx, rx) = mpsc::channel();
    let th = std::thread::spawn(move || serve(&listener, &tls, script, mechs, &tx));
    let mut ci = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=u password=pw connect_timeout=10 {conninfo}"
    ))
    .unwrap();
    ci.apply_env(&|_| None);
    let r = ReplConnection::connect(&ci)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let seen = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    th.join().unwrap();
    let r = r.map_err(|e| {
        e.strip_prefix(&format!(
            "connection to server at \"127.0.0.1\", port {port} failed: "
        ))
        .map(str::to_string)
        .unwrap_or(e)
    });
    (r, seen)
}

const BOTH: &[&str] = &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
const PLAIN: &[&str] = &["SCRAM-SHA-256"];

#[tokio::test]
async fn fake_upstream_sasl_is_strict() {
    let dir = TestDir::new("upauth-fake");
    let c = certs::generate(dir.path(), &["127.0.0.1"]);

    // A MITM answers the SASLInitialResponse with AuthenticationOk: channel binding was
    // chosen but never verified.
    let (r, seen) = attempt(
        &c,
        Script::OkAfterInitial,
        BOTH,
        "sslmode=require channel_binding=require",
    )
    .await;
    assert_eq!(
        r,
        Err(
            "channel binding required, but server authenticated client without channel binding"
                .into()
        )
    );
    assert!(
        seen.client_first
            .as_deref()
            .is_some_and(|f| f.starts_with("p=tls-server-end-point,,n=,r=")),
        "{seen:?}"
    );
    // Without channel_binding=require the early AuthenticationOk is refused all the same.
    let (r, _) = attempt(&c, Script::OkAfterInitial, BOTH, "sslmode=require").await;
    assert_eq!(
        r,
        Err("server sent AuthenticationOk before completing the SASL exchange".into())
    );
    // ...also after the client proof, without the server's signature.
    let (r, _) = attempt(
        &c,
        Script::OkAfterContinue,
        BOTH,
        "sslmode=require channel_binding=require",
    )
    .await;
    assert_eq!(
        r,
        Err(
            "channel binding required, but server authenticated client without channel binding"
                .into()
        )
    );
    // With require_auth, libpq's requirement message.
    let (r, _) = attempt(
        &c,
        Script::OkAfterContinue,
        PLAIN,
        "sslmode=require require_auth=scram-sha-256",
    )
    .await;
    assert_eq!(
        r,
        Err("authentication method requirement \"scram-sha-256\" failed: server did not complete authentication".into())
    );
    // A forged server signature.
    let (r, _) = attempt(&c, Script::BadSignature, BOTH, "sslmode=require").await;
    assert_eq!(r, Err("incorrect server signature".into()));

    // gs2 header flags as libpq: 'y' over TLS when the server offers no -PLUS, 'n' without
    // TLS or with channel_binding=disable.
    let flag = |seen: &Seen| {
        seen.client_first
            .as_deref()
            .and_then(|f| f.split(',').next())
            .map(str::to_string)
    };
    let (_, seen) = attempt(&c, Script::OkAfterInitial, PLAIN, "sslmode=require").await;
    assert_eq!(flag(&seen).as_deref(), Some("y"), "{seen:?}");
    let (_, seen) = attempt(&c, Script::OkAfterInitial, PLAIN, "sslmode=disable").await;
    assert_eq!(flag(&seen).as_deref(), Some("n"), "{seen:?}");
    let (_, seen) = attempt(
        &c,
        Script::OkAfterInitial,
        BOTH,
        "sslmode=require channel_binding=disable",
    )
    .await;
    assert_eq!(flag(&seen).as_deref(), Some("n"), "{seen:?}");

    // require_auth=scram-sha-256: a cleartext request is refused and no password is sent.
    let (r, seen) = attempt(
        &c,
        Script::Cleartext,
        PLAIN,
        "sslmode=require require_auth=scram-sha-256",
    )
    .await;
    assert_eq!(
        r,
        Err("authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password".into())
    );
    assert!(!seen.password_sent);
    // Without it, the password goes out (over TLS) and the connection is made.
    let (r, seen) = attempt(&c, Script::Cleartext, PLAIN, "sslmode=require").await;
    assert_eq!(r, Ok(()));
    assert!(seen.password_sent);
}

#[tokio::test]
async fn require_auth_against_postgres() {
    let major = majors().into_iter().next().expect("a PostgreSQL major");
    let mut pg = Pg::primary(&major, &["password_encryption = 'scram-sha-256'"]);
    pg.psql(
        "CREATE ROLE scram LOGIN REPLICATION PASSWORD 'sekret';
         CREATE ROLE clear LOGIN REPLICATION PASSWORD 'clearpw';
         SET password_encryption = 'md5';
         CREATE ROLE md5u LOGIN REPLICATION PASSWORD 'md5pw';",
    );
    pg.set_hba(
        "host replication scram 127.0.0.1/32 scram-sha-256
         host replication clear 127.0.0.1/32 password
         host replication md5u  127.0.0.1/32 md5
         host all         all   127.0.0.1/32 trust
         host replication all   127.0.0.1/32 trust",
    );
    pg.reload();
    let port = pg.port();
    let go = |s: String| async move {
        let mut ci =
            match ConnInfo::parse(&format!("host=127.0.0.1 port={port} sslmode=disable {s}")) {
                Ok(c) => c,
                Err(e) => return Err(e.to_string()),
            };
        ci.apply_env(&|_| None);
        ReplConnection::connect(&ci).await.map(|_| ()).map_err(|e| {
            let e = e.to_string();
            e.strip_prefix(&format!(
                "connection to server at \"127.0.0.1\", port {port} failed: "
            ))
            .map(str::to_string)
            .unwrap_or(e)
        })
    };
    let ok = |s: &str| go(s.to_string());
    ok("user=scram password=sekret require_auth=scram-sha-256")
        .await
        .unwrap();
    ok("user=scram password=sekret require_auth=!password,!md5")
        .await
        .unwrap();
    ok("user=clear password=clearpw require_auth=password")
        .await
        .unwrap();
    ok("user=md5u password=md5pw require_auth=md5,scram-sha-256")
        .await
        .unwrap();
    ok("user=postgres require_auth=none").await.unwrap();
    assert_eq!(
        go("user=clear password=clearpw require_auth=scram-sha-256".into()).await,
        Err("authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password".into())
    );
    assert_eq!(
        go("user=scram password=sekret require_auth=md5".into()).await,
        Err("authentication method requirement \"md5\" failed: server requested SASL authentication".into())
    );
    assert_eq!(
        go("user=md5u password=md5pw require_auth=!md5".into()).await,
        Err(
            "authentication method requirement \"!md5\" failed: server requested a hashed password"
                .into()
        )
    );
    assert_eq!(
        go("user=postgres require_auth=scram-sha-256".into()).await,
        Err("authentication method requirement \"scram-sha-256\" failed: server did not complete authentication".into())
    );
    assert_eq!(
        go("user=postgres require_auth=!none".into()).await,
        Err("authentication method requirement \"!none\" failed: server did not complete authentication".into())
    );
    assert_eq!(
        go("user=postgres require_auth=md5,!none".into()).await,
        Err(
            "negative require_auth method \"!none\" cannot be mixed with non-negative methods"
                .into()
        )
    );
}

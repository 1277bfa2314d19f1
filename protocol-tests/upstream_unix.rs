//! The upstream client over Unix-domain sockets against real PostgreSQL 15 and 18: libpq's
//! `host=/dir` (and `@name`, the abstract namespace), `PGHOST=/dir`, peer and password
//! authentication on `local` lines of pg_hba.conf, the password file keyed by the socket
//! directory, TLS never attempted over a socket, `requirepeer`, and libpq's error texts.

use std::os::unix::fs::PermissionsExt;

use crate::harness::pg::Pg;
use crate::harness::{majors, TestDir};
use walrelay::upstream::conninfo::ConnInfo;
use walrelay::upstream::{ReplConnection, UpstreamError};

async fn connect_env(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ReplConnection, UpstreamError> {
    let mut c = ConnInfo::parse(s).expect("conninfo");
    c.apply_env(env);
    ReplConnection::connect(&c).await
}

async fn connect(s: &str) -> Result<ReplConnection, UpstreamError> {
    connect_env(s, &|_| None).await
}

async fn connect_err(s: &str) -> String {
    match connect(s).await {
        Ok(_) => panic!("connection with \"{s}\" unexpectedly succeeded"),
        Err(e) => e.to_string(),
    }
}

/// A primary listening on TCP and on a socket directory plus an abstract socket; `local`
/// lines: peer (any OS user mapped to `postgres`) for postgres, SCRAM for `pwuser`.
fn socket_primary(major: &str, sockdir: &std::path::Path, abstract_name: &str) -> Pg {
    let mut pg = Pg::primary(
        major,
        &[&format!(
            "unix_socket_directories = '{}, @{abstract_name}'",
            sockdir.display()
        )],
    );
    pg.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'sockpw';",
    );
    std::fs::write(pg.datadir().join("pg_ident.conf"), "m /^.*$ postgres\n").unwrap();
    crate::harness::pg::give_to_server(&pg.datadir().join("pg_ident.conf"));
    pg.set_hba(
        "local   replication pwuser                scram-sha-256
         local   replication postgres              peer map=m
         local   all         all                   peer map=m
         host    all         all      127.0.0.1/32 trust
         host    replication all      127.0.0.1/32 trust",
    );
    pg.reload();
    pg
}

#[tokio::test]
async fn unix_socket_connections() {
    for major in majors() {
        let dir = TestDir::new("upsock");
        let sockdir = dir.subdir("s");
        crate::harness::pg::give_to_server(&sockdir);
        let abstract_name = format!("walrelay-test-{}", std::process::id());
        let pg = socket_primary(&major, &sockdir, &abstract_name);
        let port = pg.port();
        let sd = sockdir.display().to_string();

        // Peer authentication through the socket directory; sslmode=require is ignored
        // over a socket (the server has no TLS at all), as libpq does.
        for extra in ["", " sslmode=require", " sslmode=verify-full"] {
            let mut conn = connect(&format!("host={sd} port={port} user=postgres{extra}"))
                .await
                .unwrap_or_else(|e| panic!("PG {major}: peer over {sd}{extra}: {e}"));
            assert!(!conn.is_tls());
            assert_eq!(conn.identify_system().await.unwrap().timeline, 1);
            assert_eq!(conn.host_port(), (sd.as_str(), port));
            conn.close().await;
        }

        // The abstract namespace (`@name`).
        let mut conn = connect(&format!("host=@{abstract_name} port={port} user=postgres"))
            .await
            .unwrap_or_else(|e| panic!("PG {major}: abstract socket: {e}"));
        conn.identify_system().await.unwrap();
        conn.close().await;

        // PGHOST=/dir with nothing else given but the port.
        let env_dir = sd.clone();
        let conn = connect_env(&format!("port={port} user=postgres"), &move |k| {
            (k == "PGHOST").then(|| env_dir.clone())
        })
        .await
        .unwrap_or_else(|e| panic!("PG {major}: PGHOST={sd}: {e}"));
        assert_eq!(conn.host_port().0, sd);
        conn.close().await;

        // The URI form with a percent-encoded socket directory.
        let enc = sd.replace('/', "%2F");
        connect(&format!("postgresql://postgres@{enc}:{port}/"))
            .await
            .unwrap_or_else(|e| panic!("PG {major}: URI: {e}"))
            .close()
            .await;

        // Password authentication over the socket: none given, then from the password file
        // whose host field is the socket directory.
        let missing = dir.join("none");
        let e = connect_err(&format!(
            "host={sd} port={port} user=pwuser passfile={}",
            missing.display()
        ))
        .await;
        assert!(
            e.contains(&format!(
                "connection to server on socket \"{sd}/.s.PGSQL.{port}\" failed: fe_sendauth: no password supplied"
            )),
            "{e}"
        );
        let pf = dir.join("pgpass");
        std::fs::write(
            &pf,
            format!(
                "localhost:{port}:replication:pwuser:wrong\n{}:{port}:replication:pwuser:sockpw\n",
                sd.replace(':', "\\:")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
        connect(&format!(
            "host={sd} port={port} user=pwuser passfile={}",
            pf.display()
        ))
        .await
        .unwrap_or_else(|e| panic!("PG {major}: .pgpass for a socket: {e}"))
        .close()
        .await;
        let e = connect_err(&format!("host={sd} port={port} user=pwuser password=bad")).await;
        assert!(
            e.contains("FATAL:  password authentication failed for user \"pwuser\""),
            "{e}"
        );

        // requirepeer: the server's user (SO_PEERCRED) must match.
        let e = connect_err(&format!(
            "host={sd} port={port} user=postgres requirepeer=no_such_peer_user"
        ))
        .await;
        let prefix = "requirepeer specifies \"no_such_peer_user\", but actual peer user name is \"";
        let at = e.find(prefix).unwrap_or_else(|| panic!("{e}"));
        let actual: String = e[at + prefix.len()..]
            .chars()
            .take_while(|c| *c != '"')
            .collect();
        assert!(!actual.is_empty(), "{e}");
        connect(&format!(
            "host={sd} port={port} user=postgres requirepeer={actual}"
        ))
        .await
        .unwrap_or_else(|e| panic!("PG {major}: requirepeer={actual}: {e}"))
        .close()
        .await;

        // No server on that socket: libpq's text.
        let nodir = dir.join("nothing-here").display().to_string();
        let e = connect_err(&format!("host={nodir} port=5999 user=postgres")).await;
        assert_eq!(
            e,
            format!(
                "connection to server on socket \"{nodir}/.s.PGSQL.5999\" failed: No such file or directory\n\tIs the server running locally and accepting connections on that socket?"
            )
        );
    }
}

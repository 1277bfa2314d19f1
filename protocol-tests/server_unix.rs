//! The walsender on a Unix-domain socket (issues 10 and 12): `[server] listen` names a
//! socket directory next to a TCP address; walrelay creates `<dir>/.s.PGSQL.<port>` (mode
//! 0777, as PostgreSQL) and its `.lock` file naming walrelay's PID. A real hot standby
//! (`primary_conninfo host=<dir>`) replays the primary's rows through the socket, a real
//! pg_receivewal authenticated by `peer` (SO_PEERCRED) writes segments byte-identical to the
//! primary's, a pg_receivewal asking for another user is refused with PostgreSQL's
//! `Peer authentication failed` text, a second walrelay on the same socket is refused by the
//! lock file, and at shutdown the socket and the lock file are removed.
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::{self, compare, pg::Pg, walrelay::Walrelay, TestDir};
use crate::server_common::{write_rows, ReceiveWal, Relay};

const SEG: u64 = 16 << 20;

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn server_unix_socket_standby_and_peer_receivewal() {
    let Some(major) = harness::majors().into_iter().next() else {
        return;
    };
    let t = TestDir::new("srv-unix");
    let sock = t.subdir("sock");
    harness::set_mode(&sock, 0o777);
    let me = whoami();
    let primary = Pg::primary(&major, &[]);
    let port = harness::free_port();
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        r#"[server]
[[server.hba]]
type = "local"
user = "postgres"
method = "trust"
[[server.hba]]
type = "local"
method = "peer"
[[server.hba]]
type = "host"
address = "127.0.0.1/32"
method = "trust"
"#,
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port},{}", sock.display());
    let data = t.subdir("relay");
    let mut relay = Relay::start_on(
        &t,
        &primary,
        &data,
        port,
        &["--config", conf.to_str().unwrap(), "--listen", &listen],
    );
    let socket = sock.join(format!(".s.PGSQL.{port}"));
    let lock = sock.join(format!(".s.PGSQL.{port}.lock"));
    let meta = std::fs::symlink_metadata(&socket).expect("socket file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    let lock_text = std::fs::read_to_string(&lock).expect("lock file");
    assert_eq!(
        lock_text.lines().next(),
        Some(relay.proc.pid().to_string().as_str()),
        "{lock_text}"
    );

    // A hot standby through the socket.
    let standby = Pg::standby_of(
        &primary,
        &major,
        &format!(
            "host={} port={port} user=postgres application_name=sb_unix",
            sock.display()
        ),
        &[],
    );
    let lsn = write_rows(&primary, "t1", 3000);
    standby.wait_replayed(lsn, Duration::from_secs(40));
    assert_eq!(standby.psql("select count(*) from t1"), "3000");
    assert!(
        relay
            .log()
            .contains("user=postgres application_name=sb_unix from [local]"),
        "{}",
        relay.log()
    );

    // pg_receivewal as this OS user: peer authentication.
    let recv_dir = t.subdir("receivewal");
    let recv = ReceiveWal::start_conn(
        &primary,
        &format!("host={} port={port} user={me}", sock.display()),
        &recv_dir,
        &[],
    );
    write_rows(&primary, "t2", 20000);
    let end = primary.switch_wal();
    let last = segment_file_name(1, (end.0 - 1) / SEG, SEG);
    harness::wait_for(
        Duration::from_secs(40),
        &format!("pg_receivewal to complete {last}"),
        || recv.has_complete(&last),
    );
    let n = compare::assert_segments_identical(&recv_dir, &primary.pg_wal());
    assert!(n >= 1, "compared {n} segments");
    assert!(!recv.log().contains("error"), "{}", recv.log());

    // Another user name than the OS user: refused as PostgreSQL refuses it.
    let other = primary
        .install()
        .command("pg_receivewal")
        .args([
            "-d",
            &format!("host={} port={port} user=not_{me}", sock.display()),
            "-D",
        ])
        .arg(t.subdir("refused"))
        .args(["-n"])
        .output()
        .unwrap();
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains(&format!("Peer authentication failed for user \"not_{me}\"")),
        "{err}"
    );

    // A second walrelay on the same socket: the lock file names a live process.
    let data2 = t.subdir("relay2");
    let mut second = Walrelay::spawn(&[
        "run",
        "--upstream",
        &primary.conninfo(),
        "--data-dir",
        data2.to_str().unwrap(),
        "--slot",
        "second",
        "--listen",
        &format!("{}:{port}", sock.display()),
    ]);
    let status = second.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| !s.success()), "{}", second.log());
    assert!(second.log().contains("already exists"), "{}", second.log());
    // the refused process removed nothing of the first one's
    assert!(socket.exists() && lock.exists());

    drop(recv);
    drop(standby);
    relay.proc.stop();
    assert!(!socket.exists(), "socket left behind");
    assert!(!lock.exists(), "lock file left behind");
    assert!(!relay.log().contains("panicked"), "{}", relay.log());
}

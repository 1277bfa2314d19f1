//! walrelay invoked as `pg_receivewal` (a symlink of that name): the command line, exit codes
//! and exact messages of PostgreSQL 18's pg_receivewal, for usage errors (no server) and for
//! the failures a DBA meets first against real PostgreSQL 15 and 18 (refused connection,
//! missing password, wrong password, missing slot, slot that exists), and `--create-slot`
//! leaving the slot's `restart_lsn` null.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{self, pg::Pg, TestDir};

/// A directory holding `pg_receivewal` -> the walrelay binary under test.
pub struct Symlinked {
    _dir: TestDir,
    pub bin: PathBuf,
}

impl Symlinked {
    pub fn new() -> Symlinked {
        let dir = TestDir::new("pgrw-bin");
        let bin = dir.join("pg_receivewal");
        std::os::unix::fs::symlink(harness::walrelay::bin(), &bin).expect("symlink pg_receivewal");
        Symlinked { _dir: dir, bin }
    }

    /// Runs `pg_receivewal ARGS` (argv[0] = the symlink's full path) with PG* variables
    /// cleared; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        run_bin(&self.bin, args)
    }
}

pub fn run_bin(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run pg_receivewal");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `command` under script(1), so that it has a terminal; types `input` once the
/// terminal shows "Password: ". Returns (exit code, everything the terminal showed).
fn with_terminal(command: &str, input: &str) -> (i32, String) {
    use std::io::{Read, Write};
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) (util-linux) must be installed");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut stdin = child.stdin.take();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(b) => seen.extend(b),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
        if let Some(mut i) = stdin.take() {
            if String::from_utf8_lossy(&seen).contains("Password: ") {
                // the prompt is out and echo is off
                std::thread::sleep(std::time::Duration::from_millis(200));
                i.write_all(input.as_bytes()).unwrap();
                i.flush().unwrap();
            } else {
                stdin = Some(i);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no end: {}",
            String::from_utf8_lossy(&seen)
        );
    }
    let st = child.wait().unwrap();
    (
        st.code().unwrap_or(-1),
        String::from_utf8_lossy(&seen).into_owned(),
    )
}

const HINT: &str = "pg_receivewal: hint: Try \"pg_receivewal --help\" for more information.\n";

#[test]
fn pgrw_cli_usage_errors_exit_1_with_postgresql_texts() {
    let s = Symlinked::new();
    let argv0 = s.bin.display().to_string();
    let t = TestDir::new("pgrw-cli");
    let d = t.subdir("wal");
    std::fs::create_dir_all(&d).unwrap();
    let d = d.to_str().unwrap();

    let (code, out, err) = s.run(&["--help"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.starts_with("pg_receivewal receives PostgreSQL streaming write-ahead logs.\n"));
    assert!(out.lines().all(|l| l.len() <= 95), "{out}");
    assert_eq!(s.run(&["-?"]).1, out);

    let (code, out, err) = s.run(&["--version"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.starts_with("pg_receivewal (walrelay ") && out.ends_with(") 18.0\n"),
        "{out}"
    );

    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--not-a-valid-option"],
            format!("{argv0}: unrecognized option '--not-a-valid-option'\n{HINT}"),
        ),
        (vec!["-x"], format!("{argv0}: invalid option -- 'x'\n{HINT}")),
        (
            vec!["-D"],
            format!("{argv0}: option requires an argument -- 'D'\n{HINT}"),
        ),
        (
            vec![],
            format!("pg_receivewal: error: no target directory specified\n{HINT}"),
        ),
        (
            vec!["-D", d, "--create-slot", "--drop-slot"],
            format!("pg_receivewal: error: cannot use --create-slot together with --drop-slot\n{HINT}"),
        ),
        (
            vec!["-D", d, "--slot=s", "--create-slot", "--drop-slot"],
            format!("pg_receivewal: error: cannot use --create-slot together with --drop-slot\n{HINT}"),
        ),
        (
            vec!["-D", d, "--create-slot"],
            format!("pg_receivewal: error: --create-slot needs a slot to be specified using --slot\n{HINT}"),
        ),
        (
            vec!["-D", d, "--synchronous", "--no-sync"],
            format!("pg_receivewal: error: cannot use --synchronous together with --no-sync\n{HINT}"),
        ),
        (
            vec!["-D", d, "extra"],
            format!("pg_receivewal: error: too many command-line arguments (first is \"extra\")\n{HINT}"),
        ),
        (
            vec!["-D", d, "--compress", "none:1"],
            "pg_receivewal: error: invalid compression specification: compression algorithm \"none\" does not accept a compression level\n".into(),
        ),
        (
            vec!["-D", d, "-Z", "zstd"],
            "pg_receivewal: error: compression with ZSTD is not yet supported\n".into(),
        ),
        (
            vec!["-D", d, "-s", "x"],
            "pg_receivewal: error: invalid value \"x\" for option -s/--status-interval\n".into(),
        ),
        (
            vec!["-D", d, "-E", "nope"],
            "pg_receivewal: error: could not parse end position \"nope\"\n".into(),
        ),
        (
            vec!["-D", "/nonexistent/wal"],
            "pg_receivewal: error: could not open directory \"/nonexistent/wal\": No such file or directory\n".into(),
        ),
        (vec!["-D", d, "--help"], HINT.to_string()),
    ];
    for (args, want) in cases {
        let (code, out, err) = s.run(&args);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (1, "", want.as_str()),
            "pg_receivewal {args:?}"
        );
    }

    // `walrelay receive` is the same mode under walrelay's name.
    let (code, _, err) = run_bin(&harness::walrelay::bin(), &["receive", "-D", d, "extra"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "walrelay: error: too many command-line arguments (first is \"extra\")\n\
         walrelay: hint: Try \"walrelay receive --help\" for more information.\n"
    );
}

fn server_failures(major: &str) {
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let s = Symlinked::new();
    let t = TestDir::new("pgrw-fail");
    let d = t.subdir("wal");
    std::fs::create_dir_all(&d).unwrap();
    let d = d.to_str().unwrap();

    // Nothing listens: the first connection fails, exit 1 even without -n.
    let port = harness::free_port();
    let ci = format!("host=127.0.0.1 port={port} user=postgres");
    let (code, _, err) = s.run(&["-D", d, "-d", &ci]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "pg_receivewal: error: connection to server at \"127.0.0.1\", port {port} failed: Connection refused\n\
             \tIs the server running on that host and accepting TCP/IP connections?\n"
        )
    );

    let mut primary = Pg::primary(major, &[]);
    primary.psql("create role pw login replication password 'secret'");
    primary.set_hba(
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host replication postgres 127.0.0.1/32 trust\n\
         host replication pw 127.0.0.1/32 scram-sha-256\n",
    );
    primary.reload();
    let p = primary.port();

    // -w (what Barman passes): no prompt, libpq's message.
    let ci = format!("host=127.0.0.1 port={p} user=pw");
    let (code, _, err) = s.run(&["-D", d, "-d", &ci, "-w", "-n"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!("pg_receivewal: error: connection to server at \"127.0.0.1\", port {p} failed: fe_sendauth: no password supplied\n")
    );
    let ci_bad = format!("host=127.0.0.1 port={p} user=pw password=wrong");
    let (code, _, err) = s.run(&["-D", d, "-d", &ci_bad, "-w"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!("pg_receivewal: error: connection to server at \"127.0.0.1\", port {p} failed: FATAL:  password authentication failed for user \"pw\"\n")
    );

    // -W: "Password: " on the terminal (a pty from script(1)), then the connection works.
    let ci_pw = format!("host=127.0.0.1 port={p} user=pw");
    let (code, out) = with_terminal(
        &format!(
            "{} -W -d '{ci_pw}' --slot pwslot --create-slot",
            s.bin.display()
        ),
        "secret\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("Password: "), "{out:?}");
    assert!(!out.contains("secret"), "the password was echoed: {out:?}");
    assert_eq!(
        primary.psql("select count(*) from pg_replication_slots where slot_name = 'pwslot'"),
        "1"
    );

    let ci = primary.conninfo();
    // A slot that does not exist (PG 15+: READ_REPLICATION_SLOT), with -n: exit 1.
    let (code, _, err) = s.run(&["-D", d, "-d", &ci, "--slot", "nonexistentslot", "-n"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "pg_receivewal: error: replication slot \"nonexistentslot\" does not exist\n\
         pg_receivewal: error: disconnected\n"
    );

    // --create-slot: a physical slot without reserved WAL (restart_lsn null), no -D needed.
    let (code, out, err) = s.run(&["-d", &ci, "--slot", "test", "--create-slot"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    assert_eq!(
        primary.psql(
            "select slot_type || ' ' || (restart_lsn is null)::text from pg_replication_slots where slot_name = 'test'"
        ),
        "physical true"
    );
    let (code, _, err) = s.run(&["-d", &ci, "--slot", "test", "--create-slot"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "pg_receivewal: error: could not send replication command \"CREATE_REPLICATION_SLOT \"test\" PHYSICAL\": ERROR:  replication slot \"test\" already exists\n"
    );
    let (code, _, err) = s.run(&[
        "-d",
        &ci,
        "--slot",
        "test",
        "--create-slot",
        "--if-not-exists",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    let (code, _, err) = s.run(&["-d", &ci, "--slot", "test", "--drop-slot", "-v"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "pg_receivewal: dropping replication slot \"test\"\n");
    assert_eq!(
        primary.psql("select count(*) from pg_replication_slots where slot_name = 'test'"),
        "0"
    );
    let (code, _, err) = s.run(&["-d", &ci, "--slot", "test", "--drop-slot"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "pg_receivewal: error: could not send replication command \"DROP_REPLICATION_SLOT \"test\"\": ERROR:  replication slot \"test\" does not exist\n"
    );
}

#[test]
fn pgrw_server_failures_15() {
    server_failures("15");
}

#[test]
fn pgrw_server_failures_18() {
    server_failures("18");
}

//! walrelay as `pg_receivewal`: the command-line personality of PostgreSQL's pg_receivewal
//! (version 18; see docs/pg_receivewal.md for where 15 differs), used when the binary is
//! invoked as `pg_receivewal` and by `walrelay receive`.
//!
//! Owns: the program flow of `pg_receivewal.c`'s `main` and `StreamLog` loop (argument
//! checks, the first connection, slot creation/removal, the reconnect loop, exit codes), the
//! password prompt (`-W`), and its messages ([`messages`]). The streaming itself is
//! [`crate::upstream::receiver`] writing through [`crate::store`].
//!
//! Must not: write WAL files itself (the store does), or change how `walrelay run` behaves.

pub mod getopt;
pub mod messages;
pub mod options;
pub mod usage;

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{Store, StoreError, StoreOptions};
use crate::upstream::conn::ReplConnection;
use crate::upstream::conninfo::ConnInfo;
use crate::upstream::error::UpstreamError;
use crate::upstream::receiver::{self, ReceiverError, ReceiverExit, ReceiverOptions};
use messages::Log;
use options::{Action, Options, PasswordPrompt, UsageError};

/// pg_receivewal's fixed wait between connection attempts (`RECONNECT_SLEEP_TIME`).
const RECONNECT_SLEEP: Duration = Duration::from_secs(5);

/// How the program was invoked.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `argv[0]` as given (glibc's getopt prefixes its complaints with it).
    pub argv0: String,
    /// The prefix of every message: the basename of argv[0] (`pg_receivewal`), or `walrelay`.
    pub prog: String,
    /// The command named in `--help` texts and hints: `pg_receivewal` or `walrelay receive`.
    pub command: String,
}

impl Invocation {
    /// Invoked under the name `argv0` (multi-call dispatch).
    pub fn from_argv0(argv0: &str) -> Invocation {
        let base = std::path::Path::new(argv0)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("pg_receivewal")
            .to_string();
        Invocation {
            argv0: argv0.to_string(),
            prog: base.clone(),
            command: base,
        }
    }

    /// `walrelay receive …`.
    pub fn walrelay_receive(argv0: &str) -> Invocation {
        Invocation {
            argv0: argv0.to_string(),
            prog: "walrelay".into(),
            command: "walrelay receive".into(),
        }
    }
}

/// True when argv[0] names pg_receivewal (symlink, hard link or copy).
pub fn invoked_as_pg_receivewal(argv0: &str) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|s| s.to_str())
        .is_some_and(|n| n == "pg_receivewal")
}

/// Runs the pg_receivewal personality; returns the process exit code.
pub fn main(inv: Invocation, args: Vec<String>) -> i32 {
    let log = Log {
        prog: inv.prog.clone(),
    };
    let hint = || {
        log.hint(&format!(
            "Try \"{} --help\" for more information.",
            inv.command
        ))
    };
    let opts = match options::parse(&inv.argv0, &args) {
        Ok(Action::Help) => {
            print!("{}", usage::help(&inv.command));
            return 0;
        }
        Ok(Action::Version) => {
            print!("{}", usage::version());
            return 0;
        }
        Ok(Action::Run(o)) => *o,
        Err(UsageError::Getopt(msg)) => {
            eprintln!("{msg}");
            hint();
            return 1;
        }
        Err(UsageError::HintOnly) => {
            hint();
            return 1;
        }
        Err(UsageError::Error { msg, hint: h }) => {
            log.error(&msg);
            if h {
                hint();
            }
            return 1;
        }
    };
    // Check existence of the destination directory.
    if let (Some(dir), false) = (&opts.directory, opts.create_slot || opts.drop_slot) {
        if let Err(e) = std::fs::read_dir(dir) {
            log.error(&messages::open_directory_failed(dir, &e));
            return 1;
        }
    }
    messages::init_tracing(&inv.prog, opts.verbose);
    tune_malloc();
    // One worker: the receive loop is one task, the disk writes run on the store's own
    // thread; a second worker only added a thread and its malloc arena to the peak RSS.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log.error(&format!("could not start the runtime: {e}"));
            return 1;
        }
    };
    let prog = inv.prog.clone();
    rt.block_on(async move {
        tokio::spawn(async move { run(&Log { prog }, opts).await })
            .await
            .unwrap_or_else(|e| {
                log.error(&format!("internal error: {e}"));
                1
            })
    })
}

/// The connection string from `-d`, `-h`, `-p`, `-U` and the environment.
fn conninfo(o: &Options, prog: &str) -> Result<ConnInfo, String> {
    let mut info = ConnInfo::parse(o.dbname.as_deref().unwrap_or("")).map_err(|e| e.to_string())?;
    for (key, value) in [("host", &o.host), ("port", &o.port), ("user", &o.username)] {
        if let Some(v) = value {
            info.set(key, v.clone()).map_err(|e| e.to_string())?;
        }
    }
    info.apply_env(&|k| std::env::var(k).ok());
    if info.fallback_application_name.is_none() {
        info.fallback_application_name = Some(prog.to_string());
    }
    Ok(info)
}

fn needs_password(e: &UpstreamError) -> bool {
    e.is_auth_failure() && e.to_string().contains("no password supplied")
}

/// `GetConnection`: connect, prompting for a password first with `-W`, or when the server
/// asks for one that is not known (unless `-w`, or when there is no terminal).
async fn connect(o: &Options, ci: &mut ConnInfo) -> Result<ReplConnection, String> {
    if o.password == PasswordPrompt::Always && ci.password.is_none() {
        ci.password = Some(prompt_password().await?);
    }
    match ReplConnection::connect(ci).await {
        Ok(c) => Ok(c),
        Err(e)
            if needs_password(&e)
                && o.password == PasswordPrompt::Auto
                && ci.password.is_none()
                && tty_available() =>
        {
            ci.password = Some(prompt_password().await?);
            ReplConnection::connect(ci).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn tty_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// `simple_prompt("Password: ", false)`: on /dev/tty with echo off (else standard input and
/// standard error).
async fn prompt_password() -> Result<String, String> {
    tokio::task::spawn_blocking(read_password)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("could not read password: {}", messages::strerror(&e)))
}

fn read_password() -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    let mut line = String::new();
    match tty {
        Ok(mut tty) => {
            tty.write_all(b"Password: ")?;
            tty.flush()?;
            let fd = tty.as_raw_fd();
            // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
            let mut saved: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: fd is an open terminal descriptor owned by `tty`.
            let have = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
            if have {
                let mut t = saved;
                t.c_lflag &= !libc::ECHO;
                // SAFETY: as above; `t` is a valid termios derived from the current one.
                unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &t) };
            }
            let r = std::io::BufReader::new(&tty).read_line(&mut line);
            if have {
                // SAFETY: restores the settings read above on the same descriptor.
                unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
            }
            let _ = tty.write_all(b"\n");
            r?;
        }
        Err(_) => {
            eprint!("Password: ");
            std::io::stdin().lock().read_line(&mut line)?;
            eprintln!();
        }
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// SIGINT/SIGTERM flip the returned watch to true (pg_receivewal: stop at the next possible
/// moment, exit 0; `walrelay run`: ordered shutdown).
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// `main` after the argument checks: returns the exit code.
async fn run(log: &Log, o: Options) -> i32 {
    let mut ci = match conninfo(&o, &log.prog) {
        Ok(ci) => ci,
        Err(e) => {
            log.error(&e);
            return 1;
        }
    };
    // Obtain a connection before doing anything (a failure here is final, loop or not).
    let mut conn = match connect(&o, &mut ci).await {
        Ok(c) => c,
        Err(e) => {
            log.error(&e);
            return 1;
        }
    };
    let shutdown = shutdown_signal();
    let version = conn.parameter("server_version").unwrap_or("").to_string();
    if let Err(e) = messages::check_server_version(conn.server_version_num(), &version) {
        log.error(&e);
        return 1;
    }
    if let Err(e) = conn.identify_system().await {
        log.error(&messages::command_failed("IDENTIFY_SYSTEM", &e));
        return 1;
    }
    if let Some(slot) = o.slot.as_deref().filter(|_| o.drop_slot) {
        tracing::info!("dropping replication slot \"{slot}\"");
        if let Err(e) = conn.drop_slot(slot).await {
            let cmd = format!("DROP_REPLICATION_SLOT \"{slot}\"");
            log.error(&messages::command_failed(&cmd, &e));
            return 1;
        }
        conn.close().await;
        return 0;
    }
    if let Some(slot) = o.slot.as_deref().filter(|_| o.create_slot) {
        tracing::info!("creating replication slot \"{slot}\"");
        // Like pg_receivewal: a physical slot that does not reserve WAL (restart_lsn stays
        // null until a client streams from it).
        match conn.create_physical_slot(slot, false).await {
            Ok(()) => {}
            Err(UpstreamError::Server(e)) if o.if_not_exists && e.code == "42710" => {}
            Err(e) => {
                let cmd = format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL");
                log.error(&messages::command_failed(&cmd, &e));
                return 1;
            }
        }
        conn.close().await;
        return 0;
    }
    if let Err(e) = conn.wal_segment_size().await {
        log.error(&e.to_string());
        return 1;
    }
    conn.close().await;
    let dir = o.directory.clone().unwrap_or_default();
    let store = match Store::start(
        std::path::Path::new(&dir),
        StoreOptions {
            tail_bytes: 0,
            // 4 MB of WAL in flight covers a few direct writes of the store; more is only RSS
            queue_bytes: 4 << 20,
            compression: o.compression,
            ..Default::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            log.error(&messages::open_directory_failed(&dir, &e));
            return 1;
        }
    };
    let ropts = ReceiverOptions {
        conninfo: ci,
        slot: o.slot.clone(),
        create_slot_if_missing: false,
        synchronous: o.synchronous,
        status_interval: Duration::from_secs(u64::from(o.status_interval)),
        receive_timeout: receiver::DEFAULT_RECEIVE_TIMEOUT,
        endpos: o.endpos,
        no_loop: true,
        reconnect_min: RECONNECT_SLEEP,
        reconnect_max: RECONNECT_SLEEP,
        flush_cap: None,
        info: None,
        hs_feedback: None,
    };
    let finished = report_finished_segments(&store);
    let code = stream_loop(log, &o, &store, ropts, shutdown).await;
    finished.abort();
    if let Err(e) = store.close().await {
        if code == 0 {
            log.error(&e.to_string());
            return 1;
        }
    }
    code
}

/// Keeps glibc malloc from mapping and unmapping the receive buffers (512 kB each, see
/// `upstream::conn`) every few frames: a fixed mmap threshold above their size puts them in
/// the heap, and a trim threshold above what is in flight (`StoreOptions::queue_bytes`) keeps
/// freed memory for the next buffers instead of returning it and faulting it in again (page
/// faults were ~15 % of a receive's CPU profile). Two arenas: the receive task and the store
/// thread. Receive mode only; allocators other than glibc's are left alone.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, before the runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// pg_receivewal's `-v` line for every completed segment: `finished segment at X/Y (timeline
/// N)`, X/Y being the segment's end.
fn report_finished_segments(store: &Store) -> tokio::task::JoinHandle<()> {
    let mut rx = store.positions();
    tokio::spawn(async move {
        let mut seen = rx.borrow_and_update().completed_segments;
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            let seg = p.wal_segment_size;
            if p.completed_segments > seen && seg > 0 {
                // The last segment completed ends at the segment boundary at or below write_lsn.
                let last_end = p.write_lsn.0 / seg * seg;
                for i in (0..p.completed_segments - seen).rev() {
                    let end = crate::lsn::Lsn(last_end.saturating_sub(i.saturating_mul(seg)));
                    tracing::info!("finished segment at {end} (timeline {})", p.timeline);
                }
            }
            seen = p.completed_segments;
        }
    })
}

/// `while (true) StreamLog()`: each attempt streams until the end position, a signal, or an
/// error; then `-n` ends with "disconnected" (exit 1), else a retry after 5 seconds.
async fn stream_loop(
    log: &Log,
    o: &Options,
    store: &Store,
    ropts: ReceiverOptions,
    mut shutdown: watch::Receiver<bool>,
) -> i32 {
    loop {
        match receiver::run(store.clone(), ropts.clone(), shutdown.clone()).await {
            Ok(ReceiverExit::EndPos(_)) | Ok(ReceiverExit::Shutdown) => return 0,
            Ok(ReceiverExit::StreamEnded) => {}
            Err(e) => {
                log.error(&messages::receiver_error(&e));
                if matches!(
                    e,
                    ReceiverError::Store(
                        StoreError::IdentityMismatch { .. } | StoreError::Control(_)
                    )
                ) {
                    return 1;
                }
            }
        }
        if *shutdown.borrow() {
            return 0;
        }
        if o.no_loop {
            log.error("disconnected");
            return 1;
        }
        log.info(&format!(
            "disconnected; waiting {} seconds to try again",
            RECONNECT_SLEEP.as_secs()
        ));
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_SLEEP) => {}
            _ = shutdown.wait_for(|s| *s) => return 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_call_names() {
        assert!(invoked_as_pg_receivewal("pg_receivewal"));
        assert!(invoked_as_pg_receivewal("/usr/local/bin/pg_receivewal"));
        assert!(!invoked_as_pg_receivewal("/usr/bin/walrelay"));
        assert!(!invoked_as_pg_receivewal("pg_receivewal2"));
        let i = Invocation::from_argv0("/opt/bin/pg_receivewal");
        assert_eq!(i.prog, "pg_receivewal");
        assert_eq!(i.argv0, "/opt/bin/pg_receivewal");
        let w = Invocation::walrelay_receive("walrelay");
        assert_eq!(
            (w.prog.as_str(), w.command.as_str()),
            ("walrelay", "walrelay receive")
        );
    }
}

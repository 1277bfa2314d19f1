//! Listening sockets (TCP and Unix-domain) and the admission of connections, so that no
//! number of clients can exhaust walrelay.
//!
//! Owns: binding `[server] listen` (TCP addresses; socket directories as
//! `<dir>/.s.PGSQL.<port>` with PostgreSQL's `.s.PGSQL.<port>.lock`, mode
//! `unix_socket_permissions`), the accept loops, and the limits applied before a connection
//! costs more than a file descriptor:
//!
//! - a cap **before accept** (a semaphore of `max_connections` + [`RESERVE`]): the reserve
//!   exists only to answer `sorry, too many clients already` right away (before the startup
//!   packet is read); past it, connections wait in the kernel's backlog;
//! - not-yet-authenticated connections: at most `max_startup_connections` in all and
//!   `max_startup_connections_per_address` per client address, refused at once beyond that;
//!   the pre-auth timeout (`startup_timeout`) is applied by the session;
//! - file descriptors: the soft `RLIMIT_NOFILE` is raised to the hard limit at start, and no
//!   connection is accepted while fewer than `reserved_file_descriptors` would remain (kept for
//!   the store, the archiver and the HTTP endpoints);
//! - accept errors (EMFILE, ENFILE, ENOBUFS …) back off exponentially and are logged at most
//!   every [`LOG_EVERY`], never a busy loop.
//!
//! Must not: read from a connection (that starts in `session.rs`).

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServerError;

/// Connections accepted past `max_connections`, only to be told so.
pub(crate) const RESERVE: usize = 8;
/// Accept errors and "not accepting" states are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the open file descriptor count is sampled from `/proc/self/fd`.
const FD_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One `[server] listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    /// A socket directory and the port that names the socket.
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix { dir, port } => write!(f, "{}", socket_path(dir, *port).display()),
        }
    }
}

/// `<dir>/.s.PGSQL.<port>`, the name libpq looks for.
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Splits `[server] listen`: comma-separated; an entry starting with `/` is a socket
/// directory, optionally `:PORT` (else the port of a TCP entry, else 5432).
pub fn parse_listen(s: &str) -> Result<Vec<ListenAddr>, String> {
    let items: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if items.is_empty() {
        return Err("server.listen is empty".into());
    }
    let tcp_port = items
        .iter()
        .filter(|i| !i.starts_with('/'))
        .find_map(|i| i.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()));
    items
        .iter()
        .map(|i| {
            if !i.starts_with('/') {
                return Ok(ListenAddr::Tcp((*i).to_string()));
            }
            let (dir, port) = match i.rsplit_once(':') {
                Some((d, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    let port = p
                        .parse::<u16>()
                        .map_err(|_| format!("invalid port in server.listen entry \"{i}\""))?;
                    (d, Some(port))
                }
                _ => (*i, None),
            };
            let port = port.or(tcp_port).unwrap_or(5432);
            if port == 0 {
                return Err(format!("invalid port in server.listen entry \"{i}\""));
            }
            Ok(ListenAddr::Unix {
                dir: PathBuf::from(dir),
                port,
            })
        })
        .collect()
}

/// Parses `unix_socket_permissions` (octal, `0777`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid server.unix_socket_permissions \"{s}\" (octal, e.g. 0770)"))
}

/// Who is on the other end.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    /// A Unix-domain socket client, with its credentials (`SO_PEERCRED`).
    Unix {
        uid: Option<u32>,
    },
}

impl Peer {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix { .. } => None,
        }
    }
    /// `client_addr` / `client_port` of `pg_stat_replication` (NULL / -1 for local).
    pub fn addr_port(&self) -> (String, u16) {
        match self {
            Peer::Tcp(a) => (a.ip().to_string(), a.port()),
            Peer::Unix { .. } => (String::new(), 0),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix { .. } => f.write_str("[local]"),
        }
    }
}

/// An accepted connection.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A bound listening socket.
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

/// A listening Unix-domain socket with its lock file; both removed on drop.
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    lock: PathBuf,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock);
    }
}

impl Bound {
    pub async fn bind(addr: &ListenAddr, mode: u32, data_dir: &Path) -> Result<Bound, ServerError> {
        let err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => Ok(Bound::Tcp(TcpListener::bind(a).await.map_err(err)?)),
            ListenAddr::Unix { dir, port } => {
                let (dir, port, data_dir) = (dir.clone(), *port, data_dir.to_path_buf());
                // Lock file and socket creation are file system calls: off the async workers.
                let r = tokio::task::spawn_blocking(move || bind_unix(&dir, port, mode, &data_dir))
                    .await
                    .map_err(|e| err(std::io::Error::other(e.to_string())))?;
                let (std_listener, path, lock) = r.map_err(|e| match e {
                    LockError::Io(source) => err(source),
                    LockError::Held(m) => ServerError::Config(m),
                })?;
                match UnixListener::from_std(std_listener) {
                    Ok(listener) => Ok(Bound::Unix(UnixSocket {
                        listener,
                        path,
                        lock,
                    })),
                    Err(source) => {
                        let _ = std::fs::remove_file(&path);
                        let _ = std::fs::remove_file(&lock);
                        Err(err(source))
                    }
                }
            }
        }
    }

    /// The TCP address (for a Unix socket: none).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Bound::Unix(u) => format!("Unix socket \"{}\"", u.path.display()),
        }
    }

    pub async fn accept(&self) -> std::io::Result<(Conn, Peer)> {
        match self {
            Bound::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), Peer::Tcp(a)))
            }
            Bound::Unix(u) => {
                let (s, _) = u.listener.accept().await?;
                let uid = s.peer_cred().ok().map(|c| c.uid());
                Ok((Conn::Unix(s), Peer::Unix { uid }))
            }
        }
    }
}

/// Takes the lock file, unlinks a stale socket file (the lock is ours, so it is stale, as
/// PostgreSQL reasons too), binds and sets the socket's mode.
fn bind_unix(
    dir: &Path,
    port: u16,
    mode: u32,
    data_dir: &Path,
) -> Result<(std::os::unix::net::UnixListener, PathBuf, PathBuf), LockError> {
    let path = socket_path(dir, port);
    let lock = lock_path(&path);
    create_lock_file(&lock, data_dir, dir, port)?;
    let _ = std::fs::remove_file(&path);
    let bound = std::os::unix::net::UnixListener::bind(&path).and_then(|l| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        l.set_nonblocking(true)?;
        Ok(l)
    });
    match bound {
        Ok(l) => Ok((l, path, lock)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&lock);
            Err(LockError::Io(e))
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

enum LockError {
    Io(std::io::Error),
    Held(String),
}

/// PostgreSQL's `CreateLockFile` for a socket: create exclusively; if one exists and names a
/// live process other than this one, refuse; else it is stale, remove and retry.
fn create_lock_file(lock: &Path, data_dir: &Path, dir: &Path, port: u16) -> Result<(), LockError> {
    let me = std::process::id();
    for _ in 0..100 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(lock)
        {
            Ok(mut f) => {
                std::fs::set_permissions(lock, std::fs::Permissions::from_mode(0o600))
                    .map_err(LockError::Io)?;
                let start = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                writeln!(
                    f,
                    "{me}\n{}\n{start}\n{port}\n{}",
                    data_dir.display(),
                    dir.display()
                )
                .and_then(|()| f.sync_all())
                .map_err(LockError::Io)?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = match std::fs::read_to_string(lock) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(LockError::Io(e)),
                };
                let pid = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<i32>().ok());
                if let Some(pid) = pid.filter(|p| *p > 0 && u32::try_from(*p).ok() != Some(me)) {
                    // SAFETY: kill with signal 0 only checks that the process exists.
                    let alive = unsafe { libc::kill(pid, 0) } == 0
                        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                    if alive {
                        return Err(LockError::Held(format!(
                            "lock file \"{}\" already exists: is another server (PID {pid}) using socket \"{}\"?",
                            lock.display(),
                            socket_path(dir, port).display()
                        )));
                    }
                }
                std::fs::remove_file(lock).map_err(LockError::Io)?;
            }
            Err(e) => return Err(LockError::Io(e)),
        }
    }
    Err(LockError::Held(format!(
        "could not create lock file \"{}\"",
        lock.display()
    )))
}

/// Not-yet-authenticated connections per client address.
type AddressCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The limits of [`Admission`]; one per server, shared by its listeners.
pub(crate) struct Limits {
    max_connections: usize,
    total: Arc<Semaphore>,
    startup: Arc<Semaphore>,
    per_address_max: usize,
    per_address: AddressCounts,
    fds: FdBudget,
}

/// Why a connection is refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// More than `max_connections` (within the reserve).
    TooMany,
    /// `max_startup_connections` not yet authenticated.
    StartupLimit,
    /// `max_startup_connections_per_address` from this address.
    AddressLimit,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooMany => "too_many",
            Refusal::StartupLimit => "startup_limit",
            Refusal::AddressLimit => "address_limit",
        }
    }
}

/// What an accepted connection holds: its place under the cap, and until it has
/// authenticated, its pre-auth places.
pub(crate) struct Admission {
    _total: OwnedSemaphorePermit,
    startup: Option<StartupPlace>,
}

impl Admission {
    /// Authentication done: the connection no longer counts as pre-auth.
    pub fn authenticated(&mut self) {
        self.startup = None;
    }
}

struct StartupPlace {
    _permit: OwnedSemaphorePermit,
    addr: Option<(IpAddr, AddressCounts)>,
}

impl Drop for StartupPlace {
    fn drop(&mut self) {
        if let Some((ip, map)) = &self.addr {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(ip);
                }
            }
        }
    }
}

impl Limits {
    pub fn new(
        max_connections: usize,
        max_startup: usize,
        per_address_max: usize,
        fds: FdBudget,
    ) -> Limits {
        let max_connections = max_connections.max(1);
        Limits {
            max_connections,
            total: Arc::new(Semaphore::new(max_connections.saturating_add(RESERVE))),
            startup: Arc::new(Semaphore::new(max_startup.clamp(1, max_connections))),
            per_address_max: per_address_max.max(1),
            per_address: Arc::default(),
            fds,
        }
    }

    /// Waits for a place under the cap and for file descriptor headroom: only then may the
    /// listener accept.
    pub async fn ready_to_accept(&self) -> OwnedSemaphorePermit {
        let mut last_log: Option<Instant> = None;
        loop {
            let permit = match self.total.clone().acquire_owned().await {
                Ok(p) => p,
                // The semaphore is never closed; wait like a full one would.
                Err(_) => std::future::pending().await,
            };
            match self.fds.headroom() {
                Ok(()) => return permit,
                Err((open, limit)) => {
                    drop(permit);
                    if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                        last_log = Some(Instant::now());
                        tracing::warn!(
                            "walsender: not accepting new connections: {open} of {limit} file descriptors in use ({} reserved for the store, the archiver and the HTTP endpoints)",
                            self.fds.reserved
                        );
                        metrics::counter!(super::status::REFUSED, "reason" => "fd_reserve")
                            .increment(1);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// See [`FdBudget::accepted`].
    pub fn fds_accepted(&self) {
        self.fds.accepted();
    }

    /// Decides on an accepted connection (holding the `permit` from
    /// [`Limits::ready_to_accept`]) before anything is read from it.
    pub fn admit(
        &self,
        permit: OwnedSemaphorePermit,
        peer: &Peer,
    ) -> Result<Admission, (Refusal, OwnedSemaphorePermit)> {
        let cap = self.max_connections.saturating_add(RESERVE);
        let in_use = cap.saturating_sub(self.total.available_permits());
        if in_use > self.max_connections {
            return Err((Refusal::TooMany, permit));
        }
        let Ok(sp) = self.startup.clone().try_acquire_owned() else {
            return Err((Refusal::StartupLimit, permit));
        };
        let addr = match peer.ip() {
            Some(ip) => {
                let mut m = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
                let n = m.entry(ip).or_insert(0);
                if *n >= self.per_address_max {
                    return Err((Refusal::AddressLimit, permit));
                }
                *n = n.saturating_add(1);
                Some((ip, self.per_address.clone()))
            }
            None => None,
        };
        Ok(Admission {
            _total: permit,
            startup: Some(StartupPlace { _permit: sp, addr }),
        })
    }
}

/// File descriptors walrelay may spend on walsender connections.
pub(crate) struct FdBudget {
    limit: usize,
    reserved: usize,
    /// Descriptors open at the last sample.
    sampled: Arc<AtomicUsize>,
    /// Connections accepted since the last sample (not yet seen in it).
    since_sample: Arc<AtomicUsize>,
}

impl FdBudget {
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit and starts sampling the open count
    /// (a blocking thread reads `/proc/self/fd` every [`FD_SAMPLE_EVERY`]).
    pub fn start(reserved: usize) -> FdBudget {
        let limit = raise_nofile_limit();
        let sampled = Arc::new(AtomicUsize::new(0));
        let since_sample = Arc::new(AtomicUsize::new(0));
        let (s, c) = (Arc::downgrade(&sampled), Arc::downgrade(&since_sample));
        // Reading /proc is blocking I/O: its own thread, first sample right away.
        let spawned = std::thread::Builder::new()
            .name("walrelay-fds".into())
            .spawn(move || loop {
                let (Some(s), Some(c)) = (s.upgrade(), c.upgrade()) else {
                    return;
                };
                if let Some(n) = count_open_fds() {
                    s.store(n, Ordering::Relaxed);
                    c.store(0, Ordering::Relaxed);
                }
                drop((s, c));
                std::thread::sleep(FD_SAMPLE_EVERY);
            });
        if let Err(e) = spawned {
            tracing::warn!("could not start the file descriptor sampler: {e}");
        }
        tracing::info!(
            "file descriptor limit {limit}, {reserved} reserved for the store, the archiver and the HTTP endpoints"
        );
        FdBudget {
            limit,
            reserved,
            sampled,
            since_sample,
        }
    }

    /// `Err((open, limit))` when accepting one more would eat into the reserve.
    fn headroom(&self) -> Result<(), (usize, usize)> {
        let open = self
            .sampled
            .load(Ordering::Relaxed)
            .saturating_add(self.since_sample.load(Ordering::Relaxed));
        if open.saturating_add(1).saturating_add(self.reserved) > self.limit {
            Err((open, self.limit))
        } else {
            Ok(())
        }
    }

    /// One more descriptor in use (an accepted connection), until the next sample sees it.
    pub fn accepted(&self) {
        self.since_sample.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sets the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in effect.
fn raise_nofile_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

fn count_open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Rate-limited accept error handling: the delay before the next accept.
pub(crate) struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    pub fn new() -> AcceptBackoff {
        AcceptBackoff {
            delay: Duration::ZERO,
            last_log: None,
            suppressed: 0,
        }
    }

    pub fn ok(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// Logs (at most every [`LOG_EVERY`]) and returns how long to wait before accepting
    /// again: doubling from 10 ms to 1 s for resource errors, none for a connection that
    /// was reset before it was accepted.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) -> Duration {
        let transient = matches!(
            e.raw_os_error(),
            Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EINTR)
        );
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let more = if self.suppressed > 0 {
                format!(" ({} more since the last report)", self.suppressed)
            } else {
                String::new()
            };
            tracing::warn!("walsender: accept on {what} failed: {e}{more}");
            self.last_log = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
        }
        metrics::counter!(super::status::ACCEPT_ERRORS).increment(1);
        if transient {
            return Duration::ZERO;
        }
        self.delay = self
            .delay
            .saturating_mul(2)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_entries() {
        assert_eq!(
            parse_listen("127.0.0.1:5433, /run/wr").unwrap(),
            vec![
                ListenAddr::Tcp("127.0.0.1:5433".into()),
                ListenAddr::Unix {
                    dir: "/run/wr".into(),
                    port: 5433
                }
            ]
        );
        assert_eq!(
            parse_listen("/tmp/x:6000").unwrap(),
            vec![ListenAddr::Unix {
                dir: "/tmp/x".into(),
                port: 6000
            }]
        );
        assert_eq!(
            parse_listen("/tmp/x").unwrap(),
            vec![ListenAddr::Unix {
                dir: "/tmp/x".into(),
                port: 5432
            }]
        );
        assert!(parse_listen(" , ").is_err());
        assert!(parse_listen("/tmp/x:0").is_err());
        assert_eq!(
            ListenAddr::Unix {
                dir: "/d".into(),
                port: 5
            }
            .to_string(),
            "/d/.s.PGSQL.5"
        );
    }

    #[test]
    fn socket_modes() {
        assert_eq!(parse_mode("0777").unwrap(), 0o777);
        assert_eq!(parse_mode("770").unwrap(), 0o770);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("01777").is_err());
    }

    fn budget(limit: usize) -> FdBudget {
        FdBudget {
            limit,
            reserved: 10,
            sampled: Arc::new(AtomicUsize::new(5)),
            since_sample: Arc::new(AtomicUsize::new(0)),
        }
    }

    #[test]
    fn admission_limits() {
        let l = Limits::new(3, 2, 1, budget(1000));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let p = |ip| Peer::Tcp(SocketAddr::new(ip, 1));
        let permit = || l.total.clone().try_acquire_owned().unwrap();
        let mut first = l.admit(permit(), &p(a)).ok().unwrap();
        // the same address again: over the per-address limit
        let (r, _) = l.admit(permit(), &p(a)).err().unwrap();
        assert_eq!(r, Refusal::AddressLimit);
        let _second = l.admit(permit(), &p(b)).ok().unwrap();
        // two not authenticated: over the startup limit
        let (r, _) = l.admit(permit(), &p(c)).err().unwrap();
        assert_eq!(r, Refusal::StartupLimit);
        // the first authenticates: its pre-auth places are free again
        first.authenticated();
        let _third = l.admit(permit(), &p(a)).ok().unwrap();
        // 4 in use > max_connections 3
        let (r, _) = l.admit(permit(), &p(c)).err().unwrap();
        assert_eq!(r, Refusal::TooMany);
        assert!(l.per_address.lock().unwrap().get(&c).is_none());
    }

    #[test]
    fn accept_errors_back_off_without_busy_looping() {
        let mut b = AcceptBackoff::new();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<Duration> = (0..9).map(|_| b.failed("test", &emfile)).collect();
        assert_eq!(waits.first(), Some(&Duration::from_millis(10)));
        assert_eq!(waits.get(1), Some(&Duration::from_millis(20)));
        assert_eq!(waits.last(), Some(&Duration::from_secs(1)));
        // logged once, the rest counted as suppressed
        assert_eq!(b.suppressed, 8);
        // a connection reset before accept is no reason to wait
        let reset = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.failed("test", &reset), Duration::ZERO);
        b.ok();
        assert_eq!(b.failed("test", &emfile), Duration::from_millis(10));
    }

    #[test]
    fn fd_headroom() {
        let b = budget(16);
        assert!(b.headroom().is_ok()); // 5 + 1 + 10 <= 16
        b.accepted();
        assert_eq!(b.headroom(), Err((6, 16)));
    }

    #[test]
    fn unix_lock_file_refuses_a_live_owner_and_replaces_a_stale_one() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join(".s.PGSQL.5999.lock");
        // PID 1 is alive and not us
        std::fs::write(&lock, "1\n/x\n").unwrap();
        assert!(matches!(
            create_lock_file(&lock, d.path(), d.path(), 5999),
            Err(LockError::Held(_))
        ));
        // a PID that cannot exist: stale
        std::fs::write(&lock, "2147483646\n/x\n").unwrap();
        assert!(create_lock_file(&lock, d.path(), d.path(), 5999).is_ok());
        let text = std::fs::read_to_string(&lock).unwrap();
        assert_eq!(text.lines().next().unwrap(), std::process::id().to_string());
    }
}

//! systemd's service notification protocol (`sd_notify(3)`), for `Type=notify` units:
//! `READY=1` once the store has recovered and the listeners are up, `RELOADING=1` around a
//! SIGHUP reload, `STOPPING=1` at shutdown, and `WATCHDOG=1` every half `$WATCHDOG_USEC`.
//!
//! Owns: the datagrams sent to `$NOTIFY_SOCKET` (a socket path, or an abstract name written
//! with a leading '@'). Without `$NOTIFY_SOCKET` every call is a no-op. Sends never block
//! (non-blocking socket; a full queue drops the message, as libsystemd's sd_notify may fail)
//! and never fail walrelay: a notification that cannot be sent is logged once at debug level.
//! Must not: read any other environment, or decide when walrelay is ready (main.rs does).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio::sync::watch;

/// Where the notifications go (`$NOTIFY_SOCKET`), parsed.
fn notify_addr(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract sockets need Linux",
            ));
        }
    }
    if !value.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET \"{value}\" is neither an absolute path nor @abstract"),
        ));
    }
    SocketAddr::from_pathname(value)
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`. Ok(false) when
/// the variable is unset or empty (not run by systemd).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let value = value.to_string_lossy();
    if value.is_empty() {
        return Ok(false);
    }
    let addr = notify_addr(&value)?;
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// [`notify`], logging (not returning) a failure.
pub fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::debug!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
    }
}

/// Half of `$WATCHDOG_USEC` when the watchdog is enabled for this process (`$WATCHDOG_PID`
/// unset or ours), like sd_watchdog_enabled(3) suggests.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// walrelay is ready: sends `READY=1` (with a STATUS line), then keeps the watchdog fed
/// until `shutdown` flips, and sends `STOPPING=1` then. Spawns one task; call on the runtime.
pub fn ready(status: &str, mut shutdown: watch::Receiver<bool>) {
    notify_logged(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
    let watchdog = watchdog_interval();
    tokio::spawn(async move {
        let mut tick = watchdog.map(tokio::time::interval);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                _ = async {
                    match tick.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => notify_logged("WATCHDOG=1"),
            }
        }
        stopping();
    });
}

/// Sends `STOPPING=1` once (from the task of [`ready`] or from `run` when its receiver has
/// returned, whichever comes first: the process may end before that task runs again).
pub fn stopping() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SENT: AtomicBool = AtomicBool::new(false);
    if !SENT.swap(true, Ordering::SeqCst) {
        notify_logged("STOPPING=1\nSTATUS=shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_addresses() {
        assert!(notify_addr("relative/path").is_err());
        assert!(notify_addr("/run/systemd/notify").is_ok());
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let a = notify_addr("@walrelay-test").unwrap();
            assert_eq!(a.as_abstract_name(), Some(&b"walrelay-test"[..]));
        }
    }
}

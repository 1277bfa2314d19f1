//! systemd's notification protocol (`Type=notify`): `READY=1`, `STOPPING=1`, `STATUS=…`
//! and the watchdog keep-alive `WATCHDOG=1`, sent as datagrams to `$NOTIFY_SOCKET`.
//!
//! Owns: the datagram send (a path, or `@name` for an abstract socket) and the watchdog
//! task (every half of `$WATCHDOG_USEC`, when that is set for this process). Without
//! `$NOTIFY_SOCKET` everything here does nothing. Must not: decide when walrelay is ready
//! (`main.rs` does: after the listeners are up, before streaming).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::sync::watch;

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET`; `Ok(false)` when it is not set.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(true)
}

/// Logs a failed notification (walrelay keeps running: systemd will time it out).
pub fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("could not notify systemd ({state}): {e}");
    }
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, for this pid if
/// `$WATCHDOG_PID` is set).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half interval until shutdown (a tokio task; nothing without
/// `$WATCHDOG_USEC`).
pub fn spawn_watchdog(mut shutdown: watch::Receiver<bool>) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => notify_logged("WATCHDOG=1"),
                _ = shutdown.wait_for(|v| *v) => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    // one test touches the environment, so no other test races it
    #[test]
    fn sends_datagrams_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::env::set_var("WATCHDOG_USEC", "3000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(3)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None);
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        assert!(!notify("READY=1").unwrap());
    }
}

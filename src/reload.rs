//! SIGHUP reload of `walrelay run`, like PostgreSQL's `pg_ctl reload`: the configuration
//! file is read again; TLS certificates and keys (also when only the files changed), hba
//! rules, users and the delayed feeds' delay/tripwire take effect for new connections and
//! decisions at once; every other change is logged as needing a restart and the running value
//! is kept. A file that does not parse or validate (bad TOML, unreadable certificate, invalid
//! hba rule or verifier) is refused as a whole with an ERROR line and the old configuration
//! stays in force.
//!
//! With `[[cluster]]` sections the top-level `[server]` (the shared listener) is reloaded
//! live; any change to the clusters or groups is reported as needing a restart.
//!
//! Owns: the SIGHUP handler task and the comparison of old and new configuration. Must not:
//! restart anything (listeners, the receiver, the archiver) or apply a partially valid file.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::delay::FeedController;
use crate::server::access::AccessReloader;
use crate::server::ServerSettings;

/// What a reload may change in a running walrelay.
pub struct ReloadTargets {
    /// The configuration file `run` read (None: started without `--config`).
    pub path: Option<PathBuf>,
    /// The file's configuration as loaded (before command-line overrides).
    pub loaded: Config,
    /// The walsender (None: no `server.listen`).
    pub server: Option<AccessReloader>,
    /// Effective `server.listen` (command-line override included).
    pub listen: Option<String>,
    pub feeds: Option<Arc<FeedController>>,
}

/// The outcome of one reload, as log lines.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

/// Installs the SIGHUP handler (until `shutdown`). Without it SIGHUP would end walrelay.
pub fn spawn(targets: ReloadTargets, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| format!("could not install the SIGHUP handler: {e}"))?;
    tokio::spawn(async move {
        let targets = Arc::new(tokio::sync::Mutex::new(targets));
        loop {
            tokio::select! {
                r = hup.recv() => if r.is_none() { break },
                _ = shutdown.changed() => break,
            }
            crate::sdnotify::notify_logged(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                monotonic_usec()
            ));
            let t = targets.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut t = t.blocking_lock();
                reload(&mut t)
            })
            .await;
            if let Err(e) = done {
                tracing::error!("reload failed: {e}");
            }
            crate::sdnotify::notify_logged("READY=1\nSTATUS=configuration reloaded");
        }
    });
    Ok(())
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000)
}

/// One reload (blocking: reads files). Logs what happened; Err = refused, nothing applied.
pub fn reload(t: &mut ReloadTargets) -> Result<Outcome, String> {
    let Some(path) = t.path.clone() else {
        tracing::info!("received SIGHUP: walrelay was started without --config, nothing to reload");
        return Ok(Outcome::default());
    };
    tracing::info!(
        "received SIGHUP, reloading configuration file \"{}\"",
        path.display()
    );
    let result = Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|new| {
            let settings = match &t.server {
                Some(_) => {
                    let mut sc = new.server.clone();
                    sc.listen = t.listen.clone();
                    Some(ServerSettings::from_config(&sc).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            Ok((new, settings))
        });
    let (new, settings) = match result {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(
                "configuration file \"{}\" contains errors; no changes were applied: {e}",
                path.display()
            );
            return Err(e);
        }
    };
    let mut out = Outcome {
        needs_restart: needs_restart(&t.loaded, &new, t.server.is_some(), t.feeds.is_some()),
        ..Outcome::default()
    };
    if let (Some(server), Some(settings)) = (&t.server, &settings) {
        let old_hash = server.certificate_hash();
        server.replace(settings);
        out.applied.extend(access_changes(
            &t.loaded,
            &new,
            old_hash,
            server.certificate_hash(),
        ));
    }
    if let Some(feeds) = &t.feeds {
        let r = feeds.reconfigure(&new.feed, &new.feeds);
        out.applied.extend(r.applied);
        out.needs_restart.extend(r.needs_restart);
    }
    for l in &out.applied {
        tracing::info!("reload: {l}");
    }
    for l in &out.needs_restart {
        tracing::warn!("reload: {l}");
    }
    if out.applied.is_empty() && out.needs_restart.is_empty() {
        tracing::info!("reload: no changes");
    }
    // What is in force now is the new file, except the parts that need a restart.
    let mut kept = new;
    restore_restart_only(&mut kept, &t.loaded);
    t.loaded = kept;
    Ok(out)
}

/// Lines for what changed in TLS, hba and users.
fn access_changes(
    old: &Config,
    new: &Config,
    old_hash: Option<Vec<u8>>,
    new_hash: Option<Vec<u8>>,
) -> Vec<String> {
    let mut v = Vec::new();
    let (o, n) = (&old.server, &new.server);
    for name in n.users.keys() {
        match o.users.get(name) {
            None => v.push(format!("server.users: user \"{name}\" added")),
            Some(s) if Some(s) != n.users.get(name) => {
                v.push(format!("server.users: credential of \"{name}\" changed"))
            }
            Some(_) => {}
        }
    }
    for name in o.users.keys().filter(|k| !n.users.contains_key(*k)) {
        v.push(format!("server.users: user \"{name}\" removed"));
    }
    if format!("{:?}", o.hba) != format!("{:?}", n.hba) {
        v.push(format!(
            "server.hba: {} rule(s) in force (were {})",
            n.hba.len(),
            o.hba.len()
        ));
    }
    if o.require_tls != n.require_tls {
        v.push(format!("server.require_tls = {}", n.require_tls));
    }
    match (old_hash.is_some(), new_hash.is_some()) {
        (false, true) => v.push("TLS enabled".into()),
        (true, false) => v.push("TLS disabled".into()),
        (true, true) if old_hash != new_hash => {
            v.push("TLS certificate changed (new connections use it)".into())
        }
        _ => {}
    }
    v
}

/// Sections and keys a reload cannot change, compared with what is in force.
fn needs_restart(old: &Config, new: &Config, have_server: bool, have_feeds: bool) -> Vec<String> {
    let mut v = Vec::new();
    let mut differs = |what: &str, a: String, b: String| {
        if a != b {
            v.push(format!(
                "{what} cannot be changed without restarting walrelay; the running value is kept"
            ));
        }
    };
    differs(
        "data_dir",
        format!("{:?}", old.data_dir),
        format!("{:?}", new.data_dir),
    );
    differs(
        "[upstream]",
        format!("{:?}", old.upstream),
        format!("{:?}", new.upstream),
    );
    differs(
        "[archive]",
        format!("{:?}", old.archive),
        format!("{:?}", new.archive),
    );
    differs(
        "[metrics]",
        format!("{:?}", old.metrics),
        format!("{:?}", new.metrics),
    );
    // several clusters: the clusters themselves (and their servers and feeds) are fixed
    differs(
        "[[cluster]] sections",
        format!("{:?}", old.cluster),
        format!("{:?}", new.cluster),
    );
    differs(
        "[[group]] sections",
        format!("{:?}", old.group),
        format!("{:?}", new.group),
    );
    differs(
        "[control]",
        format!("{:?}", old.control),
        format!("{:?}", new.control),
    );
    let mut server = new.server.clone();
    if have_server {
        copy_live_server(&mut server, &old.server);
        differs(
            "[server] (other than tls_cert, tls_key, tls_ca, require_tls, hba, users)",
            format!("{:?}", old.server),
            format!("{server:?}"),
        );
    } else {
        differs(
            "[server] (no walsender is running)",
            format!("{:?}", old.server),
            format!("{server:?}"),
        );
    }
    let mut feeds = new.feeds.clone();
    feeds.tripwire = old.feeds.tripwire;
    differs(
        "[feeds] (other than tripwire)",
        format!("{:?}", old.feeds),
        format!("{feeds:?}"),
    );
    if !have_feeds && !new.feed.is_empty() {
        v.push(
            "[[feed]]: feeds cannot be added to a walrelay started without any; restart it".into(),
        );
    }
    v
}

fn copy_live_server(dst: &mut crate::config::ServerConfig, src: &crate::config::ServerConfig) {
    dst.tls_cert = src.tls_cert.clone();
    dst.tls_key = src.tls_key.clone();
    dst.tls_ca = src.tls_ca.clone();
    dst.require_tls = src.require_tls;
    dst.hba = src.hba.clone();
    dst.users = src.users.clone();
}

/// `kept` = the new file with the restart-only parts put back to what runs.
fn restore_restart_only(kept: &mut Config, running: &Config) {
    kept.data_dir = running.data_dir.clone();
    kept.upstream = running.upstream.clone();
    kept.archive = running.archive.clone();
    kept.metrics = running.metrics.clone();
    kept.control = running.control.clone();
    let live = kept.server.clone();
    kept.server = running.server.clone();
    copy_live_server(&mut kept.server, &live);
    let tripwire = kept.feeds.tripwire;
    kept.feeds = running.feeds.clone();
    kept.feeds.tripwire = tripwire;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Config {
        Config::parse(s).unwrap()
    }

    #[test]
    fn restart_only_changes_are_named() {
        let old = cfg("[server]\nlisten = \"127.0.0.1:5433\"\n");
        let new = cfg("[server]\nlisten = \"127.0.0.1:5434\"\nusers = { bob = \"md5abc\" }\n[upstream]\nslot = \"x\"\n");
        let v = needs_restart(&old, &new, true, false);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with("[upstream] cannot be changed"), "{v:?}");
        assert!(v[1].starts_with("[server] (other than"), "{v:?}");
        // Users alone: live, nothing needs a restart.
        let new = cfg("[server]\nlisten = \"127.0.0.1:5433\"\nusers = { bob = \"md5abc\" }\n");
        assert!(needs_restart(&old, &new, true, false).is_empty());
        let a = access_changes(&old, &new, None, None);
        assert_eq!(a, vec!["server.users: user \"bob\" added".to_string()]);
        let mut kept = new.clone();
        restore_restart_only(&mut kept, &old);
        assert!(kept.server.users.contains_key("bob"));
    }
}

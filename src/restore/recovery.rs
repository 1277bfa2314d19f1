//! Recovery settings of a restored data directory.
//!
//! Owns: what `walrelay restore` appends to `postgresql.auto.conf` (`restore_command`
//! calling `walrelay wal-fetch`, one recovery target, `recovery_target_timeline = 'latest'`,
//! the target action, and for a standby `primary_conninfo`/`primary_slot_name`) and the
//! signal file (`recovery.signal`, or `standby.signal`). The signal file is written last:
//! a directory without it was not restored completely.
//! Must not: touch anything else in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

/// One recovery target (PostgreSQL allows at most one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Replay all WAL the archive has (no target setting).
    Latest,
    /// Stop as soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    Time(String),
    Xid(String),
    Name(String),
    Lsn(crate::Lsn),
}

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Pause,
    Promote,
    Shutdown,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Promote => "promote",
            Action::Shutdown => "shutdown",
        }
    }
}

/// Everything written into the data directory for recovery.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `restore_command` as argv: the walrelay binary and its `wal-fetch` archive options
    /// (`%f %p` are appended).
    pub wal_fetch: Vec<String>,
    pub target: Target,
    pub action: Option<Action>,
    pub inclusive: Option<bool>,
    /// `Some` for a standby: its `primary_conninfo` (empty: none, archive only).
    pub standby: Option<Standby>,
}

#[derive(Debug, Clone)]
pub struct Standby {
    pub primary_conninfo: Option<String>,
    pub slot: Option<String>,
}

/// Quotes a postgresql.conf string value.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes one word for the shell PostgreSQL runs `restore_command` with (`/bin/sh -c`).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Settings {
    /// The lines appended to postgresql.auto.conf.
    pub fn render(&self) -> String {
        // `%` is escaped as `%%`: PostgreSQL replaces %f, %p, %r in restore_command
        let mut cmd: Vec<String> = self
            .wal_fetch
            .iter()
            .map(|a| sh_quote(&a.replace('%', "%%")))
            .collect();
        cmd.push("%f".into());
        cmd.push("%p".into());
        let mut s = String::from("\n# added by walrelay restore\n");
        let mut set = |k: &str, v: String| s.push_str(&format!("{k} = {v}\n"));
        set("restore_command", conf_quote(&cmd.join(" ")));
        set("recovery_target_timeline", conf_quote("latest"));
        match &self.target {
            Target::Latest => {}
            Target::Immediate => set("recovery_target", conf_quote("immediate")),
            Target::Time(t) => set("recovery_target_time", conf_quote(t)),
            Target::Xid(x) => set("recovery_target_xid", conf_quote(x)),
            Target::Name(n) => set("recovery_target_name", conf_quote(n)),
            Target::Lsn(l) => set("recovery_target_lsn", conf_quote(&l.to_string())),
        }
        if self.target != Target::Latest {
            if let Some(i) = self.inclusive {
                if !matches!(self.target, Target::Immediate | Target::Name(_)) {
                    set(
                        "recovery_target_inclusive",
                        if i { "on" } else { "off" }.into(),
                    );
                }
            }
            if let Some(a) = self.action {
                set("recovery_target_action", conf_quote(a.as_str()));
            }
        }
        if let Some(sb) = &self.standby {
            if let Some(c) = &sb.primary_conninfo {
                set("primary_conninfo", conf_quote(c));
            }
            if let Some(slot) = &sb.slot {
                set("primary_slot_name", conf_quote(slot));
            }
        }
        s
    }

    /// Appends the settings and then writes the signal file (both fsynced).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let conf = dir.join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&conf)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        let signal = dir.join(if self.standby.is_some() {
            "standby.signal"
        } else {
            "recovery.signal"
        });
        let s = std::fs::File::create(&signal)?;
        s.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_target_and_standby() {
        let s = Settings {
            wal_fetch: vec![
                "/usr/bin/walrelay".into(),
                "wal-fetch".into(),
                "--archive".into(),
                "file:///srv/it's".into(),
            ],
            target: Target::Time("2026-12-02 01:00:00+00".into()),
            action: Some(Action::Promote),
            inclusive: Some(false),
            standby: None,
        };
        let r = s.render();
        assert!(r.contains(
            "restore_command = '/usr/bin/walrelay wal-fetch --archive ''file:///srv/it''\\\\''''s'' %f %p'\n"
        ), "{r}");
        assert!(r.contains("recovery_target_timeline = 'latest'\n"));
        assert!(r.contains("recovery_target_time = '2026-12-02 01:00:00+00'\n"));
        assert!(r.contains("recovery_target_inclusive = off\n"));
        assert!(r.contains("recovery_target_action = 'promote'\n"));
        let sb = Settings {
            target: Target::Latest,
            standby: Some(Standby {
                primary_conninfo: Some("host=127.0.0.1 port=5433".into()),
                slot: Some("s1".into()),
            }),
            ..s
        };
        let r = sb.render();
        assert!(!r.contains("recovery_target_action"));
        assert!(r.contains("primary_conninfo = 'host=127.0.0.1 port=5433'\n"));
        assert!(r.contains("primary_slot_name = 's1'\n"));
    }
}

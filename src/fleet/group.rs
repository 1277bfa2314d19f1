//! `[[group]]`: a set of clusters of this walrelay that form one database (application
//! sharding, or a Citus coordinator and its workers), for cluster-wide restore points and
//! group-wide feed control.
//!
//! Owns: [`GroupConfig`] (serde, strict), its checks against the cluster names, restore
//! point name rules and `name_format`. Must not: connect anywhere.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How restore points of a group are made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// `pg_create_restore_point` on every cluster inside a fence walrelay takes.
    #[default]
    Fence,
    /// `citus_create_restore_point` on the coordinator (Citus blocks distributed commits).
    Citus,
}

/// The fence of a `kind = "fence"` group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FenceKind {
    /// `pg_advisory_lock(fence_key)` on every cluster (exclusive); the application takes
    /// `pg_advisory_xact_lock_shared(fence_key)` on every cluster its distributed
    /// transaction touches, in the group's cluster order.
    #[default]
    Advisory,
    /// `fence_sql` on every cluster (in order), `unfence_sql` after (reverse order).
    Sql,
}

/// One `[[group]]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// `[A-Za-z0-9_-]{1,63}`, unique.
    pub name: String,
    /// Cluster names of this walrelay, in fence order.
    pub clusters: Vec<String>,
    #[serde(default)]
    pub kind: GroupKind,
    #[serde(default)]
    pub fence: FenceKind,
    /// The advisory lock key (`fence = "advisory"`).
    pub fence_key: Option<i64>,
    /// `fence = "sql"`: run on every cluster to fence (e.g. `LOCK TABLE ... IN EXCLUSIVE MODE`
    /// in a transaction, or a session-level lock).
    pub fence_sql: Option<String>,
    /// `fence = "sql"`: run on every cluster after the restore points (closing the session
    /// ends it anyway).
    pub unfence_sql: Option<String>,
    /// How long to wait for the fence on each cluster; then fail with nothing created.
    #[serde(default = "default_fence_timeout", deserialize_with = "de_duration")]
    pub fence_timeout: Duration,
    /// `kind = "citus"`: the cluster that runs `citus_create_restore_point`.
    pub coordinator: Option<String>,
    /// Periodic restore points in `walrelay run` (at least 10s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub every: Option<Duration>,
    /// strftime format (UTC) of periodic restore point names.
    #[serde(default = "default_name_format")]
    pub name_format: String,
}

fn default_fence_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_name_format() -> String {
    "walrelay-%Y%m%dT%H%M%SZ".into()
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => crate::config::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Longest restore point name: PostgreSQL's `MAXFNAMELEN - 1`.
pub const MAX_NAME: usize = 63;

/// Checks a restore point name: 1-63 letters, digits, `_`, `-`, `.`, not starting with `.`
/// (it becomes an object name in the archive).
pub fn check_restore_point_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid restore point name \"{name}\": use 1-{MAX_NAME} letters, digits, '_', '-' or '.' (not starting with '.')"
        ))
    }
}

fn valid_group_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl GroupConfig {
    /// The name of a periodic restore point made at `unix_secs`.
    pub fn periodic_name(&self, unix_secs: i64) -> Result<String, String> {
        use std::fmt::Write;
        let t = chrono::DateTime::from_timestamp(unix_secs, 0)
            .ok_or_else(|| format!("time {unix_secs} out of range"))?;
        let mut s = String::new();
        write!(s, "{}", t.format(&self.name_format)).map_err(|_| {
            format!(
                "group \"{}\": invalid name_format \"{}\"",
                self.name, self.name_format
            )
        })?;
        check_restore_point_name(&s)
            .map_err(|e| format!("group \"{}\": name_format gives an {e}", self.name))?;
        Ok(s)
    }

    /// Checks one group against the cluster names of this walrelay.
    pub fn check(&self, clusters: &[&str]) -> Result<(), String> {
        let g = &self.name;
        if !valid_group_name(g) {
            return Err(format!(
                "invalid group name \"{g}\": use 1-63 letters, digits, '_' or '-'"
            ));
        }
        if self.clusters.is_empty() {
            return Err(format!("group \"{g}\" lists no clusters"));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clusters {
            if !clusters.contains(&c.as_str()) {
                return Err(format!("group \"{g}\": no cluster named \"{c}\""));
            }
            if !seen.insert(c.as_str()) {
                return Err(format!("group \"{g}\" lists cluster \"{c}\" twice"));
            }
        }
        match self.kind {
            GroupKind::Fence => match self.fence {
                FenceKind::Advisory if self.fence_key.is_none() => {
                    return Err(format!(
                        "group \"{g}\": fence = \"advisory\" needs fence_key"
                    ))
                }
                FenceKind::Sql if self.fence_sql.as_deref().is_none_or(str::is_empty) => {
                    return Err(format!("group \"{g}\": fence = \"sql\" needs fence_sql"))
                }
                _ => {}
            },
            GroupKind::Citus => match self.coordinator.as_deref() {
                None => return Err(format!("group \"{g}\": kind = \"citus\" needs coordinator")),
                Some(c) if !self.clusters.iter().any(|x| x == c) => {
                    return Err(format!(
                        "group \"{g}\": coordinator \"{c}\" is not one of its clusters"
                    ))
                }
                _ => {}
            },
        }
        if self.fence_timeout.is_zero() {
            return Err(format!("group \"{g}\": fence_timeout must be above 0"));
        }
        if let Some(e) = self.every {
            if e < Duration::from_secs(10) {
                return Err(format!("group \"{g}\": every must be at least 10s"));
            }
            self.periodic_name(0)?;
        }
        Ok(())
    }
}

/// Checks all groups: each one, and unique names.
pub fn check_groups(groups: &[GroupConfig], clusters: &[&str]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for g in groups {
        g.check(clusters)?;
        if !seen.insert(g.name.as_str()) {
            return Err(format!("group \"{}\" is defined twice", g.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<GroupConfig, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_checks() {
        let g = parse("name = \"app\"\nclusters = [\"a\", \"b\"]\nfence_key = 7401\n").unwrap();
        assert_eq!(g.kind, GroupKind::Fence);
        assert_eq!(g.fence, FenceKind::Advisory);
        assert_eq!(g.fence_timeout, Duration::from_secs(10));
        g.check(&["a", "b"]).unwrap();
        assert_eq!(
            g.check(&["a"]).unwrap_err(),
            "group \"app\": no cluster named \"b\""
        );
        assert_eq!(g.periodic_name(0).unwrap(), "walrelay-19700101T000000Z");
        let g = parse("name = \"app\"\nclusters = [\"a\"]\n").unwrap();
        assert_eq!(
            g.check(&["a"]).unwrap_err(),
            "group \"app\": fence = \"advisory\" needs fence_key"
        );
        let g = parse("name = \"c\"\nclusters = [\"a\"]\nkind = \"citus\"\ncoordinator = \"x\"\n")
            .unwrap();
        assert_eq!(
            g.check(&["a"]).unwrap_err(),
            "group \"c\": coordinator \"x\" is not one of its clusters"
        );
        assert!(parse("name = \"a\"\nclusters = []\nbogus = 1\n")
            .unwrap_err()
            .contains("unknown field `bogus`"));
        let g = parse(
            "name = \"p\"\nclusters = [\"a\"]\nfence_key = 1\nevery = \"1s\"\nname_format = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            g.check(&["a"]).unwrap_err(),
            "group \"p\": every must be at least 10s"
        );
    }

    #[test]
    fn names() {
        check_restore_point_name("walrelay-20261202T010000Z").unwrap();
        assert!(check_restore_point_name("../x").is_err());
        assert!(check_restore_point_name(".x").is_err());
        assert!(check_restore_point_name(&"a".repeat(64)).is_err());
        assert!(check_restore_point_name("").is_err());
    }
}

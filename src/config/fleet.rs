//! The cluster model of the configuration: `[[cluster]]` sections, or the top-level
//! single-cluster form, both seen by the rest of walrelay as [`ClusterConfig`]s
//! ([`Config::clusters`]).
//!
//! Owns: the `[[cluster]]` keys, their validation (names, distinct data directories, no
//! top-level cluster keys mixed with `[[cluster]]`) and the single-cluster → one-cluster
//! mapping. Must not: start anything (`crate::cluster` runs clusters). See `docs/fleet.md`.

// Parses outside input: no panics from indexing, string slicing or overflow.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    ArchiveConfig, BackupConfig, Config, FeedConfig, FeedsConfig, ServerConfig, UpstreamConfig,
};

/// The cluster label of the single-cluster form without a top-level `name`.
pub const DEFAULT_CLUSTER: &str = "default";

/// One `[[cluster]]` section as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `[A-Za-z0-9_-]{1,63}`, unique: the `cluster` label, the routing name.
    pub name: String,
    /// Required, distinct per cluster.
    pub data_dir: PathBuf,
    /// SQL connection for restore points; default: the upstream conninfo with replication
    /// off and `dbname=postgres` (see `crate::fleet`).
    #[serde(default)]
    pub sql_conninfo: Option<String>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Its own walsender listener(s); unset: reachable through the shared top-level
    /// `[server]` listener only (routed by name).
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// Unset: the top-level `[archive]` (the layout separates clusters by system id).
    #[serde(default)]
    pub archive: Option<ArchiveConfig>,
    #[serde(default)]
    pub feed: Vec<FeedConfig>,
    #[serde(default)]
    pub feeds: FeedsConfig,
    /// Unset: the top-level `[backup]` (each cluster backs up its own upstream into its
    /// own archive).
    #[serde(default)]
    pub backup: Option<BackupConfig>,
}

/// Everything one cluster needs, whichever form the file used.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub sql_conninfo: Option<String>,
    pub upstream: UpstreamConfig,
    /// The cluster's own walsender settings and listener: the top-level `[server]` of the
    /// single-cluster form, `[cluster.server]` otherwise. `None`: no listener of its own
    /// (multi-cluster mode: served through the shared listener with the settings of
    /// [`ClusterConfig::served`]).
    pub server: Option<ServerConfig>,
    /// The walsender settings its sessions run with (hba, users, slots, timeouts): its own
    /// `server`, else the top-level `[server]`.
    pub served: ServerConfig,
    /// Resolved: `[cluster.archive]` or the top-level `[archive]`.
    pub archive: ArchiveConfig,
    pub feed: Vec<FeedConfig>,
    pub feeds: FeedsConfig,
    /// Resolved: `[cluster.backup]` or the top-level `[backup]`.
    pub backup: BackupConfig,
}

impl Config {
    /// `true` with `[[cluster]]` sections.
    pub fn is_multi_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }

    /// Every cluster of this process: the `[[cluster]]` sections in file order, or the
    /// top-level form as one cluster named `name` (default [`DEFAULT_CLUSTER`]).
    pub fn clusters(&self) -> Vec<ClusterConfig> {
        if self.cluster.is_empty() {
            return vec![ClusterConfig {
                name: self
                    .name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CLUSTER.to_string()),
                data_dir: self.data_dir.clone(),
                sql_conninfo: None,
                upstream: self.upstream.clone(),
                server: Some(self.server.clone()),
                served: self.server.clone(),
                archive: self.archive.clone(),
                feed: self.feed.clone(),
                feeds: self.feeds.clone(),
                backup: self.backup.clone(),
            }];
        }
        self.cluster
            .iter()
            .map(|c| ClusterConfig {
                name: c.name.clone(),
                data_dir: c.data_dir.clone(),
                sql_conninfo: c.sql_conninfo.clone(),
                upstream: c.upstream.clone(),
                server: c.server.clone(),
                served: c.server.clone().unwrap_or_else(|| self.server.clone()),
                archive: c.archive.clone().unwrap_or_else(|| self.archive.clone()),
                feed: c.feed.clone(),
                feeds: c.feeds.clone(),
                backup: c.backup.clone().unwrap_or_else(|| self.backup.clone()),
            })
            .collect()
    }

    /// The cluster named `name`.
    pub fn cluster_named(&self, name: &str) -> Option<ClusterConfig> {
        self.clusters().into_iter().find(|c| c.name == name)
    }

    /// The shared, routing listener of multi-cluster mode: the top-level `[server]` when it
    /// has a `listen` address. `None` in single-cluster mode (the top-level `[server]` is
    /// then the cluster's own).
    pub fn shared_server(&self) -> Option<&ServerConfig> {
        (self.is_multi_cluster() && self.server.listen.is_some()).then_some(&self.server)
    }

    /// The control socket: `control.socket`, else in the data directory (of the first
    /// cluster in multi-cluster mode).
    pub fn control_socket(&self) -> PathBuf {
        let dir = self.cluster.first().map_or(&self.data_dir, |c| &c.data_dir);
        self.control.socket_path(dir)
    }
}

/// `[A-Za-z0-9_-]{1,63}`.
pub(super) fn check_cluster_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid cluster name \"{n}\": use 1-63 letters, digits, '_' or '-'"
        ))
    }
}

/// Top-level keys that belong to a cluster and so may not stand beside `[[cluster]]`.
const CLUSTER_KEYS: [(&str, &str); 5] = [
    ("name", "name"),
    ("data_dir", "data_dir"),
    ("upstream", "[upstream]"),
    ("feed", "[[feed]]"),
    ("feeds", "[feeds]"),
];

/// Validation of the multi-cluster form; `table` is the file as parsed TOML (to tell a
/// key that was written from one that took its default).
pub(super) fn check_multi(c: &Config, table: &toml::Table) -> Result<(), String> {
    for (key, shown) in CLUSTER_KEYS {
        if table.contains_key(key) {
            let inner = match key {
                "name" | "data_dir" => format!("`{key}` of each [[cluster]]"),
                "upstream" => "[cluster.upstream]".to_string(),
                "feed" => "[[cluster.feed]]".to_string(),
                _ => "[cluster.feeds]".to_string(),
            };
            return Err(format!(
                "top-level {shown} cannot be combined with [[cluster]] sections: use {inner}"
            ));
        }
    }
    let mut names: HashMap<&str, ()> = HashMap::new();
    let mut dirs: HashMap<PathBuf, &str> = HashMap::new();
    for s in &c.cluster {
        check_cluster_name(&s.name)?;
        if names.insert(s.name.as_str(), ()).is_some() {
            return Err(format!("cluster \"{}\" is defined twice", s.name));
        }
        if s.data_dir.as_os_str().is_empty() {
            return Err(format!("cluster \"{}\": data_dir is empty", s.name));
        }
        let key = normalize(&s.data_dir);
        if let Some(other) = dirs.insert(key, s.name.as_str()) {
            return Err(format!(
                "clusters \"{other}\" and \"{}\" have the same data_dir \"{}\"",
                s.name,
                s.data_dir.display()
            ));
        }
    }
    Ok(())
}

/// `a/./b/` and `a/b` are the same directory (no file system access: the directory may not
/// exist yet).
fn normalize(p: &std::path::Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[server]
listen = "127.0.0.1:5433"
[archive]
url = "file:///arch"
[[cluster]]
name = "shard1"
data_dir = "/d/1"
[cluster.upstream]
conninfo = "host=a"
[[cluster.feed]]
name = "lag1"
delay = "1h"
[[cluster]]
name = "shard2"
data_dir = "/d/2"
sql_conninfo = "host=b dbname=postgres"
[cluster.upstream]
conninfo = "host=b"
slot = "s2"
[cluster.server]
listen = "127.0.0.1:5434"
[cluster.archive]
url = "file:///arch2"
"#;

    #[test]
    fn two_clusters() {
        let c = Config::parse(TWO).unwrap();
        assert!(c.is_multi_cluster());
        let cl = c.clusters();
        assert_eq!(cl.len(), 2);
        assert_eq!(cl[0].name, "shard1");
        assert_eq!(cl[0].upstream.conninfo.as_deref(), Some("host=a"));
        assert_eq!(cl[0].upstream.slot.as_deref(), Some("walrelay"));
        assert!(cl[0].server.is_none());
        assert_eq!(cl[0].served.listen.as_deref(), Some("127.0.0.1:5433"));
        assert_eq!(cl[0].archive.url.as_deref(), Some("file:///arch"));
        assert_eq!(cl[0].feed[0].name, "lag1");
        assert_eq!(cl[1].upstream.slot.as_deref(), Some("s2"));
        assert_eq!(
            cl[1].server.as_ref().unwrap().listen.as_deref(),
            Some("127.0.0.1:5434")
        );
        assert_eq!(cl[1].archive.url.as_deref(), Some("file:///arch2"));
        assert_eq!(
            cl[1].sql_conninfo.as_deref(),
            Some("host=b dbname=postgres")
        );
        assert_eq!(
            c.shared_server().unwrap().listen.as_deref(),
            Some("127.0.0.1:5433")
        );
        assert_eq!(
            c.control_socket(),
            PathBuf::from("/d/1/walrelay.control.sock")
        );
    }

    #[test]
    fn single_cluster_is_one_cluster() {
        let c = Config::parse("data_dir = \"/x\"\n[upstream]\nconninfo = \"host=a\"\n").unwrap();
        let cl = c.clusters();
        assert_eq!(cl.len(), 1);
        assert_eq!(cl[0].name, "default");
        assert_eq!(cl[0].data_dir, PathBuf::from("/x"));
        assert!(c.shared_server().is_none());
        let c = Config::parse("name = \"main\"\n").unwrap();
        assert_eq!(c.clusters()[0].name, "main");
        assert_eq!(
            Config::parse("name = \"a b\"\n").unwrap_err(),
            "invalid cluster name \"a b\": use 1-63 letters, digits, '_' or '-'"
        );
    }

    #[test]
    fn errors() {
        let dup = TWO.replace("name = \"shard2\"", "name = \"shard1\"");
        assert_eq!(
            Config::parse(&dup).unwrap_err(),
            "cluster \"shard1\" is defined twice"
        );
        let dir = TWO.replace("data_dir = \"/d/2\"", "data_dir = \"/d/./1/\"");
        assert_eq!(
            Config::parse(&dir).unwrap_err(),
            "clusters \"shard1\" and \"shard2\" have the same data_dir \"/d/./1/\""
        );
        let mixed = format!("[upstream]\nconninfo = \"host=x\"\n{TWO}");
        assert_eq!(
            Config::parse(&mixed).unwrap_err(),
            "top-level [upstream] cannot be combined with [[cluster]] sections: use [cluster.upstream]"
        );
        let mixed = format!("data_dir = \"/x\"\n{TWO}");
        assert_eq!(
            Config::parse(&mixed).unwrap_err(),
            "top-level data_dir cannot be combined with [[cluster]] sections: use `data_dir` of each [[cluster]]"
        );
        let mixed = format!("[[feed]]\nname = \"f\"\n{TWO}");
        assert!(Config::parse(&mixed)
            .unwrap_err()
            .starts_with("top-level [[feed]] cannot be combined"));
        let feed = TWO.replace(
            "[cluster.archive]",
            "[[cluster.feed]]\nname = \"lag1\"\n[cluster.archive]",
        );
        assert_eq!(
            Config::parse(&feed).unwrap_err(),
            "feed \"lag1\" is defined twice"
        );
        let name = TWO.replace("name = \"shard2\"", "name = \"shard/2\"");
        assert!(Config::parse(&name)
            .unwrap_err()
            .starts_with("invalid cluster name \"shard/2\""));
        let missing = TWO.replace("data_dir = \"/d/2\"\n", "");
        assert!(Config::parse(&missing)
            .unwrap_err()
            .contains("missing field `data_dir`"));
    }
}

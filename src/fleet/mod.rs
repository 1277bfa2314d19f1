//! Groups of clusters: cluster-wide restore points and group-wide feed control
//! (docs/fleet.md, "Restore points and groups").
//!
//! Owns: the `[[group]]` configuration ([`group`]), the fence around restore points
//! ([`fence`]), the Citus path ([`citus`]), creating, recording and listing restore points
//! ([`restore_point`]), the periodic task of `walrelay run` ([`schedule`]), and the view of
//! the configuration these need ([`Fleet`]: per cluster its SQL connection string, archive
//! and feed names).
//!
//! Must not: touch WAL, the store or the walsender; feed holds go through
//! [`crate::delay::group`] on the control endpoint.

pub mod citus;
pub mod cli;
pub mod fence;
pub mod group;
pub mod restore_point;
pub mod schedule;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::archive::ArchiveSettings;
use crate::config::ArchiveConfig;
pub use group::GroupConfig;

/// Errors of the fleet commands.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("could not read \"{path}\": {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("no group named \"{0}\" in the configuration")]
    NoSuchGroup(String),
    /// On one cluster: what failed there.
    #[error("cluster \"{cluster}\": {message}")]
    Cluster { cluster: String, message: String },
    #[error("{0}")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("{0}")]
    Refused(String),
}

/// What restore points and group feed control need to know of one cluster.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    pub name: String,
    /// The SQL connection string: `sql_conninfo`, else the upstream's (the SQL session
    /// leaves out `replication` and defaults `dbname` to `postgres`). `None`: neither set.
    pub sql_conninfo: Option<String>,
    /// Its archive (`[cluster.archive]`, else the top-level `[archive]`).
    pub archive: ArchiveSettings,
    /// Its delayed feeds.
    pub feeds: Vec<String>,
}

/// The clusters and groups of one configuration file.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub clusters: Vec<ClusterRef>,
    pub groups: Vec<GroupConfig>,
}

// The parts of the configuration file this module reads. Lenient (other keys are
// `crate::config`'s business and checked there), so that it reads both the single-cluster
// form and `[[cluster]]` sections.
#[derive(Deserialize, Default)]
#[serde(default)]
struct FileView {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    upstream: Option<UpstreamView>,
    sql_conninfo: Option<String>,
    archive: Option<ArchiveConfig>,
    feed: Vec<FeedView>,
    cluster: Vec<ClusterView>,
    group: Vec<GroupConfig>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UpstreamView {
    conninfo: Option<String>,
}

#[derive(Deserialize)]
struct FeedView {
    name: String,
}

#[derive(Deserialize)]
struct ClusterView {
    name: String,
    data_dir: PathBuf,
    #[serde(default)]
    sql_conninfo: Option<String>,
    #[serde(default)]
    upstream: Option<UpstreamView>,
    #[serde(default)]
    archive: Option<ArchiveConfig>,
    #[serde(default)]
    feed: Vec<FeedView>,
}

impl Fleet {
    /// Reads the clusters and groups of a configuration file.
    pub fn load(path: &Path) -> Result<Fleet, FleetError> {
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Read {
            path: path.into(),
            source,
        })?;
        Fleet::parse(&text).map_err(|e| FleetError::Config(format!("{}: {e}", path.display())))
    }

    /// [`Fleet::load`] from the text.
    pub fn parse(text: &str) -> Result<Fleet, String> {
        let v: FileView = toml::from_str(text).map_err(|e| e.to_string())?;
        let top_archive = v.archive.clone().unwrap_or_default();
        let conninfo = |sql: &Option<String>, up: &Option<UpstreamView>| {
            sql.clone()
                .or_else(|| up.as_ref().and_then(|u| u.conninfo.clone()))
        };
        let clusters: Vec<ClusterRef> = if v.cluster.is_empty() {
            let data_dir = v
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./walrelay-data"));
            vec![ClusterRef {
                name: v.name.clone().unwrap_or_else(|| "default".into()),
                sql_conninfo: conninfo(&v.sql_conninfo, &v.upstream),
                archive: ArchiveSettings::new(top_archive, data_dir),
                feeds: v.feed.iter().map(|f| f.name.clone()).collect(),
            }]
        } else {
            v.cluster
                .iter()
                .map(|c| ClusterRef {
                    name: c.name.clone(),
                    sql_conninfo: conninfo(&c.sql_conninfo, &c.upstream),
                    archive: ArchiveSettings::new(
                        c.archive.clone().unwrap_or_else(|| top_archive.clone()),
                        c.data_dir.clone(),
                    ),
                    feeds: c.feed.iter().map(|f| f.name.clone()).collect(),
                })
                .collect()
        };
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        group::check_groups(&v.group, &names)?;
        Ok(Fleet {
            clusters,
            groups: v.group,
        })
    }

    /// The clusters and groups of a loaded `run` configuration (the groups checked).
    pub fn from_config(cfg: &crate::config::Config) -> Result<Fleet, String> {
        let clusters: Vec<ClusterRef> = cfg
            .clusters()
            .into_iter()
            .map(|c| ClusterRef {
                sql_conninfo: c
                    .sql_conninfo
                    .clone()
                    .or_else(|| c.upstream.conninfo.clone()),
                archive: ArchiveSettings::new(c.archive.clone(), c.data_dir.clone()),
                feeds: c.feed.iter().map(|f| f.name.clone()).collect(),
                name: c.name,
            })
            .collect();
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        group::check_groups(&cfg.group, &names)?;
        Ok(Fleet {
            clusters,
            groups: cfg.group.clone(),
        })
    }

    pub fn group(&self, name: &str) -> Result<&GroupConfig, FleetError> {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .ok_or_else(|| FleetError::NoSuchGroup(name.to_string()))
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterRef> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The clusters of a group, in its order.
    pub fn members(&self, g: &GroupConfig) -> Result<Vec<&ClusterRef>, FleetError> {
        g.clusters
            .iter()
            .map(|c| {
                self.cluster(c).ok_or_else(|| {
                    FleetError::Config(format!("group \"{}\": no cluster named \"{c}\"", g.name))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi() {
        let f = Fleet::parse(
            "data_dir = \"/d\"\n[upstream]\nconninfo = \"host=p\"\nslot = \"s\"\n[[feed]]\nname = \"f1\"\ndelay = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(f.clusters.len(), 1);
        assert_eq!(f.clusters[0].name, "default");
        assert_eq!(f.clusters[0].sql_conninfo.as_deref(), Some("host=p"));
        assert_eq!(f.clusters[0].feeds, vec!["f1".to_string()]);
        let f = Fleet::parse(
            r#"
[archive]
url = "file:///a"
[[cluster]]
name = "s1"
data_dir = "/d1"
sql_conninfo = "host=x dbname=app"
[cluster.upstream]
conninfo = "host=p1"
[[cluster]]
name = "s2"
data_dir = "/d2"
[cluster.upstream]
conninfo = "host=p2"
[cluster.archive]
url = "file:///b"
[[group]]
name = "app"
clusters = ["s1", "s2"]
fence_key = 1
"#,
        )
        .unwrap();
        assert_eq!(
            f.clusters[0].sql_conninfo.as_deref(),
            Some("host=x dbname=app")
        );
        assert_eq!(f.clusters[1].sql_conninfo.as_deref(), Some("host=p2"));
        assert_eq!(f.clusters[0].archive.url().as_deref(), Some("file:///a"));
        assert_eq!(f.clusters[1].archive.url().as_deref(), Some("file:///b"));
        let g = f.group("app").unwrap();
        assert_eq!(f.members(g).unwrap().len(), 2);
        assert_eq!(
            f.group("x").unwrap_err().to_string(),
            "no group named \"x\" in the configuration"
        );
    }
}

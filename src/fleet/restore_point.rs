//! Cluster-wide restore points: create one on every cluster of a group, record it in the
//! archive, list the records.
//!
//! Owns: `walrelay restore-point create NAME --group G` (connect to every cluster over SQL,
//! refuse a name already recorded, take the fence, `pg_create_restore_point` on each
//! cluster — or `citus_create_restore_point` on a Citus coordinator —, release the fence,
//! record `{name, group, time, clusters: [{name, system_id, timeline, lsn}]}` create-if-absent
//! at `<archive prefix>/groups/<group>/restore_points/<name>.json` in every archive of the
//! group), and `walrelay restore-points` (the records read back). Must not: change feeds.

// Parses outside input (records read from the archive, query answers): no panics.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use super::fence::{self, Member};
use super::group::{check_restore_point_name, GroupConfig, GroupKind};
use super::{ClusterRef, Fleet, FleetError};
use crate::archive::backend::{self, Backend};
use crate::upstream::sql::{quote_literal, sql_conninfo, SqlSession};

/// Longest wait for a SQL connection to a cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest record read back from the archive.
const MAX_RECORD: usize = 1 << 20;

/// One cluster's part of a restore point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterPoint {
    pub name: String,
    pub system_id: Option<u64>,
    pub timeline: Option<u32>,
    /// `X/X`; `None` for Citus workers (Citus returns the coordinator's LSN only).
    pub lsn: Option<String>,
}

/// The record of one restore point of a group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestorePointRecord {
    pub name: String,
    pub group: String,
    /// `fence` or `citus`.
    pub kind: String,
    /// UTC, RFC 3339.
    pub time: String,
    pub clusters: Vec<ClusterPoint>,
}

fn cluster_err(cluster: &str, message: impl Into<String>) -> FleetError {
    FleetError::Cluster {
        cluster: cluster.to_string(),
        message: message.into(),
    }
}

/// Where a group's record lives in one archive.
pub fn record_path(b: &Backend, group: &str, name: &str) -> ObjPath {
    records_dir(b, group).child(format!("{name}.json"))
}

fn records_dir(b: &Backend, group: &str) -> ObjPath {
    b.prefix
        .child("groups")
        .child(group)
        .child("restore_points")
}

/// The distinct archives of a group's clusters (by URL), opened.
pub fn archives(members: &[&ClusterRef]) -> Result<Vec<Backend>, FleetError> {
    let mut out: Vec<Backend> = Vec::new();
    for c in members {
        let Some(url) = c.archive.url() else {
            continue;
        };
        if out.iter().any(|b| b.url == url) {
            continue;
        }
        out.push(backend::open(&url, &c.archive.config)?);
    }
    if out.is_empty() {
        return Err(FleetError::Config(
            "no cluster of the group has an archive to record restore points in".into(),
        ));
    }
    Ok(out)
}

async fn exists(b: &Backend, path: &ObjPath) -> Result<bool, FleetError> {
    match b.store.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(crate::archive::ArchiveError::store("read", path)(e).into()),
    }
}

fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, d.subsec_nanos())
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

/// Connects to every member (in order).
async fn connect_all(members: &[&ClusterRef]) -> Result<Vec<Member>, FleetError> {
    let mut out = Vec::new();
    for c in members {
        let Some(ci) = c.sql_conninfo.as_deref() else {
            return Err(cluster_err(
                &c.name,
                "no SQL connection string (set sql_conninfo or the upstream conninfo)",
            ));
        };
        let ci = sql_conninfo(ci, "walrelay restore-point")
            .map_err(|e| cluster_err(&c.name, e.to_string()))?;
        let mut s = SqlSession::connect(&ci, CONNECT_TIMEOUT)
            .await
            .map_err(|e| cluster_err(&c.name, format!("could not connect: {e}")))?;
        s.set_reply_timeout(Some(Duration::from_secs(60)));
        let rec = s
            .query_value("SELECT pg_is_in_recovery()::text")
            .await
            .map_err(|e| cluster_err(&c.name, e.to_string()))?;
        if rec.as_deref() != Some("false") {
            return Err(cluster_err(
                &c.name,
                format!(
                    "the server at {} is in recovery; restore points are created on the primary",
                    s.server()
                ),
            ));
        }
        out.push(Member {
            cluster: c.name.clone(),
            session: s,
        });
    }
    Ok(out)
}

/// Timeline from a WAL file name (its first 8 hex digits).
fn timeline_of(walfile: Option<&str>) -> Option<u32> {
    walfile
        .and_then(|w| w.get(0..8))
        .and_then(|t| u32::from_str_radix(t, 16).ok())
}

/// `pg_control_system().system_identifier` is an `int8`: identifiers past 2^63 read
/// negative.
fn system_id_of(v: Option<&str>) -> Option<u64> {
    v.and_then(|s| s.parse::<i64>().ok())
        .map(|i| u64::from_ne_bytes(i.to_ne_bytes()))
}

/// System identifier and timeline of the session's server, and `lsn`'s WAL file.
async fn describe(m: &mut Member, lsn: Option<String>) -> Result<ClusterPoint, FleetError> {
    let q = match &lsn {
        Some(l) => format!(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text, pg_walfile_name({}::pg_lsn)",
            quote_literal(l)
        ),
        None => "SELECT (SELECT system_identifier FROM pg_control_system())::text, pg_walfile_name(pg_current_wal_lsn())".into(),
    };
    let r = m
        .session
        .query(&q)
        .await
        .map_err(|e| cluster_err(&m.cluster, e.to_string()))?;
    let row = r.rows.into_iter().next().unwrap_or_default();
    let mut it = row.into_iter();
    let sys = it.next().flatten();
    let wal = it.next().flatten();
    Ok(ClusterPoint {
        name: m.cluster.clone(),
        system_id: system_id_of(sys.as_deref()),
        timeline: timeline_of(wal.as_deref()),
        lsn,
    })
}

/// Creates the points on the connected members: inside the fence, or through Citus.
async fn create_points(
    members: &mut [Member],
    g: &GroupConfig,
    name: &str,
) -> Result<Vec<ClusterPoint>, FleetError> {
    let mut points = Vec::new();
    match g.kind {
        GroupKind::Fence => {
            fence::take(members, g).await?;
            let q = format!(
                "SELECT pg_create_restore_point({})::text",
                quote_literal(name)
            );
            let mut lsns = Vec::new();
            for m in members.iter_mut() {
                let lsn = m
                    .session
                    .query_value(&q)
                    .await
                    .map_err(|e| cluster_err(&m.cluster, e.to_string()))?;
                lsns.push(lsn);
            }
            for (m, lsn) in members.iter_mut().zip(lsns) {
                points.push(describe(m, lsn).await?);
            }
        }
        GroupKind::Citus => {
            let coord = g.coordinator.clone().unwrap_or_default();
            let Some(m) = members.iter_mut().find(|m| m.cluster == coord) else {
                return Err(FleetError::Config(format!(
                    "group \"{}\": coordinator \"{coord}\" is not one of its clusters",
                    g.name
                )));
            };
            let lsn = super::citus::create(&mut m.session, name)
                .await
                .map_err(|e| cluster_err(&m.cluster, e.to_string()))?;
            points.push(describe(m, Some(lsn)).await?);
            for m in members.iter_mut().filter(|m| m.cluster != coord) {
                let mut p = describe(m, None).await?;
                p.timeline = None;
                points.push(p);
            }
        }
    }
    Ok(points)
}

/// `walrelay restore-point create NAME --group G`: the record once it is durable in every
/// archive of the group.
pub async fn create(
    fleet: &Fleet,
    group: &str,
    name: &str,
) -> Result<RestorePointRecord, FleetError> {
    check_restore_point_name(name).map_err(FleetError::Refused)?;
    let g = fleet.group(group)?;
    let members = fleet.members(g)?;
    let stores = archives(&members)?;
    for b in &stores {
        if exists(b, &record_path(b, group, name)).await? {
            return Err(FleetError::Refused(format!(
                "restore point \"{name}\" already exists in group \"{group}\" (recorded in {}); choose another name",
                b.url
            )));
        }
    }
    let mut sessions = connect_all(&members).await?;
    let result = create_points(&mut sessions, g, name).await;
    fence::release(sessions, g).await;
    let points = result?;
    let rec = RestorePointRecord {
        name: name.to_string(),
        group: group.to_string(),
        kind: match g.kind {
            GroupKind::Fence => "fence".into(),
            GroupKind::Citus => "citus".into(),
        },
        time: now_rfc3339(),
        clusters: points,
    };
    let body = Bytes::from(
        serde_json::to_vec_pretty(&rec)
            .map_err(|e| FleetError::Config(format!("could not encode the record: {e}")))?,
    );
    for b in &stores {
        let path = record_path(b, group, name);
        let created =
            crate::archive::upload::create_if_absent(&b.store, &path, body.clone(), "record")
                .await?;
        if !created {
            return Err(FleetError::Refused(format!(
                "restore point \"{name}\" was created on the clusters, but a record of that name appeared in {} meanwhile (another walrelay?); it was not overwritten",
                b.url
            )));
        }
    }
    Ok(rec)
}

async fn read_records(
    store: &Arc<dyn ObjectStore>,
    dir: &ObjPath,
) -> Result<Vec<RestorePointRecord>, FleetError> {
    let metas: Vec<object_store::ObjectMeta> = store
        .list(Some(dir))
        .try_collect()
        .await
        .map_err(crate::archive::ArchiveError::store("list", dir))?;
    let mut out = Vec::new();
    for m in metas {
        if !m.location.as_ref().ends_with(".json") || m.size > MAX_RECORD as u64 {
            continue;
        }
        let bytes = store
            .get(&m.location)
            .await
            .map_err(crate::archive::ArchiveError::store("read", &m.location))?
            .bytes()
            .await
            .map_err(crate::archive::ArchiveError::store("read", &m.location))?;
        match serde_json::from_slice::<RestorePointRecord>(&bytes) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("ignoring unreadable record \"{}\": {e}", m.location),
        }
    }
    Ok(out)
}

/// The recorded restore points of `group` (or of every group), oldest first.
pub async fn list(
    fleet: &Fleet,
    group: Option<&str>,
) -> Result<Vec<RestorePointRecord>, FleetError> {
    let groups: Vec<&GroupConfig> = match group {
        Some(g) => vec![fleet.group(g)?],
        None => fleet.groups.iter().collect(),
    };
    let mut out: Vec<RestorePointRecord> = Vec::new();
    for g in groups {
        let members = fleet.members(g)?;
        for b in archives(&members)? {
            for r in read_records(&b.store, &records_dir(&b, &g.name)).await? {
                if r.group == g.name && !out.iter().any(|o| o.group == r.group && o.name == r.name)
                {
                    out.push(r);
                }
            }
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// Text table of restore points.
pub fn format_list(list: &[RestorePointRecord]) -> String {
    let mut out = format!(
        "{:<12} {:<32} {:<28} {}\n",
        "group", "name", "time", "clusters (timeline/lsn)"
    );
    for r in list {
        let cl: Vec<String> = r
            .clusters
            .iter()
            .map(|c| {
                format!(
                    "{}={}/{}",
                    c.name,
                    c.timeline.map_or("-".to_string(), |t| t.to_string()),
                    c.lsn.as_deref().unwrap_or("-")
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<12} {:<32} {:<28} {}\n",
            r.group,
            r.name,
            r.time,
            cl.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_helpers() {
        assert_eq!(timeline_of(Some("000000020000000000000003")), Some(2));
        assert_eq!(timeline_of(Some("0")), None);
        assert_eq!(system_id_of(Some("-1")), Some(u64::MAX));
        assert_eq!(system_id_of(Some("7")), Some(7));
    }

    #[tokio::test]
    async fn records_roundtrip_and_duplicates() {
        let dir = std::env::temp_dir().join(format!("walrelay-rp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[archive]\nurl = \"file://{}\"\n[[cluster]]\nname = \"a\"\ndata_dir = \"/x\"\n[[group]]\nname = \"g\"\nclusters = [\"a\"]\nfence_key = 1\n",
            dir.display()
        );
        let fleet = Fleet::parse(&text).unwrap();
        let b = archives(&fleet.members(fleet.group("g").unwrap()).unwrap()).unwrap();
        let rec = RestorePointRecord {
            name: "rp1".into(),
            group: "g".into(),
            kind: "fence".into(),
            time: now_rfc3339(),
            clusters: vec![ClusterPoint {
                name: "a".into(),
                system_id: Some(u64::MAX),
                timeline: Some(1),
                lsn: Some("0/3000028".into()),
            }],
        };
        let p = record_path(&b[0], "g", "rp1");
        assert_eq!(p.as_ref(), "groups/g/restore_points/rp1.json");
        let body = Bytes::from(serde_json::to_vec(&rec).unwrap());
        assert!(
            crate::archive::upload::create_if_absent(&b[0].store, &p, body, "t")
                .await
                .unwrap()
        );
        assert_eq!(list(&fleet, Some("g")).await.unwrap(), vec![rec]);
        let e = create(&fleet, "g", "rp1").await.unwrap_err().to_string();
        assert!(
            e.starts_with("restore point \"rp1\" already exists in group \"g\""),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

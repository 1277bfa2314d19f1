//! The fence of a `kind = "fence"` group: while walrelay holds it on every cluster, no
//! distributed transaction of the application is between its first and its last commit, so
//! restore points created then are one consistent point of the whole group.
//!
//! Owns: taking the fence (in the group's cluster order, within `fence_timeout` overall) and
//! releasing it. Advisory: `pg_advisory_lock(fence_key)` under `lock_timeout`; the
//! application takes `pg_advisory_xact_lock_shared(fence_key)` on every cluster first thing in
//! each distributed transaction (the lock stays with a prepared transaction until COMMIT
//! PREPARED). SQL: `fence_sql` under `statement_timeout`, `unfence_sql` in reverse order.
//! Closing a session releases whatever it held. Must not: create restore points.

use std::time::{Duration, Instant};

use super::group::{FenceKind, GroupConfig};
use super::FleetError;
use crate::upstream::sql::SqlSession;
use crate::upstream::UpstreamError;

/// One cluster's session of a restore point run.
pub struct Member {
    pub cluster: String,
    pub session: SqlSession,
}

fn cluster_err(cluster: &str, message: impl Into<String>) -> FleetError {
    FleetError::Cluster {
        cluster: cluster.to_string(),
        message: message.into(),
    }
}

fn what(g: &GroupConfig) -> String {
    match g.fence {
        FenceKind::Advisory => format!("pg_advisory_lock({})", g.fence_key.unwrap_or_default()),
        FenceKind::Sql => "fence_sql".into(),
    }
}

/// Takes the fence on every member, in order. On an error the caller closes the sessions
/// (which releases what was taken).
pub async fn take(members: &mut [Member], g: &GroupConfig) -> Result<(), FleetError> {
    let deadline = Instant::now() + g.fence_timeout;
    for m in members.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout(&m.cluster, g, None));
        }
        let ms = left.as_millis().max(1);
        // The client-side bound is longer: the server's timeout gives the better message.
        m.session
            .set_reply_timeout(Some(left.saturating_add(Duration::from_secs(10))));
        let (set, q, reset) = match g.fence {
            FenceKind::Advisory => (
                format!("SET lock_timeout = '{ms}ms'"),
                format!(
                    "SELECT pg_advisory_lock({})",
                    g.fence_key.unwrap_or_default()
                ),
                "SET lock_timeout = DEFAULT",
            ),
            FenceKind::Sql => (
                format!("SET statement_timeout = '{ms}ms'"),
                g.fence_sql.clone().unwrap_or_default(),
                "SET statement_timeout = DEFAULT",
            ),
        };
        m.session
            .query(&set)
            .await
            .map_err(|e| cluster_err(&m.cluster, e.to_string()))?;
        match m.session.query(&q).await {
            Ok(_) => {}
            Err(UpstreamError::Server(e)) if e.code == "55P03" || e.code == "57014" => {
                return Err(timeout(&m.cluster, g, Some(e.to_string())));
            }
            Err(UpstreamError::Timeout(_)) => return Err(timeout(&m.cluster, g, None)),
            Err(e) => {
                return Err(cluster_err(
                    &m.cluster,
                    format!("could not take the fence ({}): {e}", what(g)),
                ))
            }
        }
        m.session
            .query(reset)
            .await
            .map_err(|e| cluster_err(&m.cluster, e.to_string()))?;
        m.session.set_reply_timeout(Some(Duration::from_secs(60)));
        tracing::debug!("fence taken on cluster \"{}\"", m.cluster);
    }
    Ok(())
}

fn timeout(cluster: &str, g: &GroupConfig, server: Option<String>) -> FleetError {
    let mut m = format!(
        "could not take the fence ({}) within fence_timeout ({}); no restore point was created",
        what(g),
        humantime::format_duration(g.fence_timeout)
    );
    if let Some(s) = server {
        m.push_str(&format!(" ({})", s.trim()));
    }
    cluster_err(cluster, m)
}

/// Releases the fence (advisory unlock or `unfence_sql`, in reverse order) and closes every
/// session. Errors are logged only: closing the session releases the fence anyway.
pub async fn release(members: Vec<Member>, g: &GroupConfig) {
    for mut m in members.into_iter().rev() {
        let q = match g.fence {
            FenceKind::Advisory => Some(format!("SELECT pg_advisory_unlock_all()")),
            FenceKind::Sql => g.unfence_sql.clone().filter(|s| !s.is_empty()),
        };
        if let Some(q) = q {
            if let Err(e) = m.session.query(&q).await {
                tracing::warn!(
                    "cluster \"{}\": releasing the fence: {e} (closing the session releases it)",
                    m.cluster
                );
            }
        }
        m.session.close().await;
    }
}

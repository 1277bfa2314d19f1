//! The Citus path of restore points: `citus_create_restore_point(name)` on the coordinator.
//! Citus blocks distributed commits itself, creates the restore point on every node and
//! returns the coordinator's LSN (its documented SQL API; Citus is not installable on the
//! test machines, so this path is untested against a real Citus — docs/fleet.md).
//!
//! Owns: the query and reading its answer. Must not: take a fence (Citus does).

use crate::upstream::sql::{quote_literal, SqlSession};
use crate::upstream::UpstreamError;

/// The coordinator's restore point LSN (text, `X/X`).
pub async fn create(s: &mut SqlSession, name: &str) -> Result<String, UpstreamError> {
    let q = format!(
        "SELECT citus_create_restore_point({})::text",
        quote_literal(name)
    );
    s.query_value(&q)
        .await?
        .ok_or_else(|| UpstreamError::protocol("citus_create_restore_point returned no LSN"))
}

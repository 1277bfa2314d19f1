//! Routing on the shared listener of a multi-cluster walrelay: which cluster a connection
//! wants, from what a standby can put in `primary_conninfo`.
//!
//! Owns: the routing table ([`Router`]) and the decision ([`Router::pick`]), in this order:
//! `options` containing `-c walrelay.cluster=NAME` (also `-cwalrelay.cluster=NAME` and
//! `--walrelay.cluster=NAME`), then `dbname` when it names a cluster (a physical walreceiver
//! always sends `dbname=replication`: libpqwalreceiver.c overrides it, so this serves
//! pg_receivewal and other clients), then `[server.route_users]` (user → cluster), then the
//! only cluster if there is just one. Must not: authenticate (the target cluster's hba and
//! users do, in `startup.rs`). See `docs/fleet.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Shared;
use crate::protocol::backend::ErrorFields;

/// The startup-option name a standby sets to choose a cluster.
pub const CLUSTER_OPTION: &str = "walrelay.cluster";

/// The `cluster` label of the shared listener's own series (admission refusals, startup
/// failures before a cluster is chosen): not a valid cluster name, so it never collides.
pub const SHARED_LABEL: &str = "(shared)";

/// SQLSTATE of "no cluster named" (`sqlserver_rejected_establishment_of_sqlconnection`).
pub const NO_CLUSTER: &str = "08004";
/// SQLSTATE of "no such cluster" (`invalid_catalog_name`, like an unknown database).
pub const UNKNOWN_CLUSTER: &str = "3D000";

/// Clusters reachable through a shared listener.
pub(crate) struct Router {
    pub clusters: Vec<(String, Arc<Shared>)>,
    /// user name → cluster name (`[server.route_users]`).
    pub users: BTreeMap<String, String>,
}

/// The value of `walrelay.cluster` in a startup `options` string (PostgreSQL's
/// `pg_split_opts` rules: whitespace separates, a backslash escapes the next character).
pub fn option_cluster(options: &str) -> Option<String> {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else {
            cur.push(c);
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut found = None;
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().map(String::as_str)
        } else if let Some(s) = w.strip_prefix("--") {
            Some(s)
        } else {
            w.strip_prefix("-c")
        };
        if let Some((k, v)) = setting.and_then(|s| s.split_once('=')) {
            // GUC names are case-insensitive, and '-' means '_' in them
            if k.replace('-', "_").eq_ignore_ascii_case(CLUSTER_OPTION) {
                found = Some(v.to_string()); // the last setting wins, as in PostgreSQL
            }
        }
    }
    found
}

impl Router {
    fn names(&self) -> String {
        self.clusters
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn named(&self, name: &str) -> Option<Arc<Shared>> {
        self.clusters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }

    fn unknown(&self, name: &str) -> ErrorFields {
        let mut e = super::session::fatal(
            UNKNOWN_CLUSTER,
            format!("cluster \"{name}\" does not exist"),
        );
        e.hint = Some(format!("This walrelay serves: {}.", self.names()));
        e
    }

    /// The cluster a connection with startup parameters `get` is for, or the FATAL to
    /// send.
    pub fn pick(
        &self,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(String, Arc<Shared>), ErrorFields> {
        if let Some(name) = get("options").as_deref().and_then(option_cluster) {
            return self
                .named(&name)
                .map(|s| (name.clone(), s))
                .ok_or_else(|| self.unknown(&name));
        }
        if let Some(db) = get("database") {
            if let Some(s) = self.named(&db) {
                return Ok((db, s));
            }
        }
        if let Some(user) = get("user") {
            if let Some(name) = self.users.get(&user) {
                return self
                    .named(name)
                    .map(|s| (name.clone(), s))
                    .ok_or_else(|| self.unknown(name));
            }
        }
        if let [(name, s)] = self.clusters.as_slice() {
            return Ok((name.clone(), s.clone()));
        }
        let mut e = super::session::fatal(
            NO_CLUSTER,
            "no cluster named in the startup packet: this walrelay serves several clusters",
        );
        e.hint = Some(format!(
            "Add options='-c {CLUSTER_OPTION}=NAME' to primary_conninfo, or map the user in [server.route_users]; clusters: {}.",
            self.names()
        ));
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_cluster() {
        assert_eq!(
            option_cluster("-c walrelay.cluster=shard1").as_deref(),
            Some("shard1")
        );
        assert_eq!(
            option_cluster("-cwalrelay.cluster=s2").as_deref(),
            Some("s2")
        );
        assert_eq!(
            option_cluster("--walrelay.cluster=s3").as_deref(),
            Some("s3")
        );
        assert_eq!(
            option_cluster("-c work_mem=1MB  -c WALRELAY.CLUSTER=a -c walrelay.cluster=b")
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            option_cluster("-c walrelay.cluster=a\\ b").as_deref(),
            Some("a b")
        );
        assert_eq!(option_cluster("-c work_mem=1MB"), None);
        assert_eq!(option_cluster("-c"), None);
        assert_eq!(option_cluster(""), None);
        assert_eq!(option_cluster("\\"), None);
    }
}

//! Group-wide feed control: pause, resume or advance a set of feeds (every delayed feed of
//! every cluster of a `[[group]]`) as one operation.
//!
//! Owns: the all-or-nothing rule. Every feed is checked first (it exists; for an advance,
//! its cluster's commit index has the target and the feed has not sent past it); any
//! failure refuses the whole set, names every cluster that failed, and changes nothing.
//! Only then is each feed held. Must not: hold feed state (that is [`super::feeds`]).

use std::sync::Arc;

use serde_json::{json, Value};

use super::feeds::{AdvanceTarget, FeedController};
use super::DelayError;
use crate::lsn::Lsn;

/// One member of a set: a feed, the cluster it belongs to (for messages), and its
/// controller.
pub struct Member {
    pub cluster: String,
    pub feed: String,
    pub controller: Arc<FeedController>,
}

/// What to do with every feed of the set.
#[derive(Debug, Clone)]
pub enum GroupAction {
    Pause,
    Resume,
    Advance(AdvanceTarget),
}

/// Parses `cluster:feed,cluster:feed` (the `feeds` parameter of `POST /feedset/…`); a bare
/// `feed` is its own cluster label.
pub fn parse_members(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (c, f) = part.split_once(':').unwrap_or((part, part));
        if c.is_empty() || f.is_empty() {
            return Err(format!("invalid feed \"{part}\" (use CLUSTER:FEED)"));
        }
        out.push((c.to_string(), f.to_string()));
    }
    if out.is_empty() {
        return Err("the group has no delayed feeds".into());
    }
    Ok(out)
}

/// Checks every member, then applies `action` to each. The answer lists each feed's new
/// state.
pub fn apply(members: &[Member], action: &GroupAction) -> Result<Value, DelayError> {
    let mut problems: Vec<String> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for m in members {
        let st = match m.controller.show(&m.feed) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("cluster \"{}\": {e}", m.cluster));
                continue;
            }
        };
        if let GroupAction::Advance(t) = action {
            match m.controller.resolve(t) {
                Ok((to, text)) => {
                    let pos = st
                        .get("position")
                        .and_then(Value::as_str)
                        .and_then(|p| p.parse::<Lsn>().ok())
                        .unwrap_or(Lsn(0));
                    if to < pos {
                        problems.push(format!(
                            "cluster \"{}\": feed \"{}\" has already sent WAL up to {pos}, past {to} ({text})",
                            m.cluster, m.feed
                        ));
                    }
                }
                Err(_) if matches!(t, AdvanceTarget::RestorePoint(_)) => {
                    if !missing.contains(&m.cluster.as_str()) {
                        missing.push(&m.cluster);
                    }
                }
                Err(e) => problems.push(format!("cluster \"{}\": {e}", m.cluster)),
            }
        }
    }
    if !missing.is_empty() {
        let name = match action {
            GroupAction::Advance(AdvanceTarget::RestorePoint(n)) => n.as_str(),
            _ => "",
        };
        problems.insert(
            0,
            format!(
                "restore point \"{name}\" is not yet in the commit index of cluster(s) {}",
                missing.join(", ")
            ),
        );
    }
    if !problems.is_empty() {
        return Err(DelayError::Target(format!(
            "refused for the whole group, no feed changed: {}",
            problems.join("; ")
        )));
    }
    let mut out = Vec::new();
    for m in members {
        let v = match action {
            GroupAction::Pause => m.controller.pause(&m.feed)?,
            GroupAction::Resume => m.controller.resume(&m.feed)?,
            GroupAction::Advance(t) => m.controller.advance(&m.feed, t)?,
        };
        out.push(json!({"cluster": m.cluster, "feed": v}));
    }
    Ok(json!({ "feeds": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse() {
        assert_eq!(
            parse_members("s1:a, s2:b").unwrap(),
            vec![("s1".into(), "a".into()), ("s2".into(), "b".into())]
        );
        assert_eq!(parse_members("a").unwrap(), vec![("a".into(), "a".into())]);
        assert_eq!(
            parse_members("").unwrap_err(),
            "the group has no delayed feeds"
        );
        assert!(parse_members(":a").is_err());
    }

    fn controller(dir: &std::path::Path, feed: &str, rp: bool) -> Arc<FeedController> {
        use crate::config::{FeedConfig, FeedsConfig};
        use crate::delay::index::{CommitIndex, IndexEntry};
        use crate::lsn::pg_now;
        use crate::store::Positions;
        let ix = CommitIndex::new();
        if rp {
            ix.push([IndexEntry::restore_point(
                Lsn(250),
                Lsn(290),
                pg_now(),
                "rp".into(),
            )]);
        }
        ix.set_coverage(Lsn(0), Lsn(400));
        let (_tx, rx) = tokio::sync::watch::channel(Positions {
            flush_lsn: Lsn(400),
            ..Default::default()
        });
        let cfg = FeedConfig {
            name: feed.into(),
            application_name: None,
            slot: None,
            user: None,
            delay: std::time::Duration::from_secs(3600),
            tripwire: None,
        };
        FeedController::new(&[cfg], &FeedsConfig::default(), dir, ix, rx).unwrap()
    }

    #[test]
    fn all_or_nothing() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = controller(d1.path(), "fa", true);
        let b = controller(d2.path(), "fb", false);
        let members = vec![
            Member {
                cluster: "s1".into(),
                feed: "fa".into(),
                controller: a.clone(),
            },
            Member {
                cluster: "s2".into(),
                feed: "fb".into(),
                controller: b.clone(),
            },
        ];
        let adv = GroupAction::Advance(AdvanceTarget::RestorePoint("rp".into()));
        assert_eq!(
            apply(&members, &adv).unwrap_err().to_string(),
            "refused for the whole group, no feed changed: restore point \"rp\" is not yet in the commit index of cluster(s) s2"
        );
        // nothing changed on the cluster that had it
        assert!(a.show("fa").unwrap()["hold"].is_null());
        // once both have it, both are held at their own restore point
        b.index()
            .push([crate::delay::index::IndexEntry::restore_point(
                Lsn(350),
                Lsn(390),
                crate::lsn::pg_now(),
                "rp".into(),
            )]);
        let v = apply(&members, &adv).unwrap();
        assert_eq!(v["feeds"][0]["feed"]["state"], "advanced");
        assert_eq!(v["feeds"][1]["feed"]["held_at"].as_str().is_some(), true);
        assert!(a.show("fa").unwrap()["hold"].is_string());
        assert!(b.show("fb").unwrap()["hold"].is_string());
        apply(&members, &GroupAction::Resume).unwrap();
        assert!(a.show("fa").unwrap()["hold"].is_null());
        apply(&members, &GroupAction::Pause).unwrap();
        assert_eq!(b.show("fb").unwrap()["state"], "paused");
        let bad = vec![Member {
            cluster: "s3".into(),
            feed: "nope".into(),
            controller: a,
        }];
        assert_eq!(
            apply(&bad, &GroupAction::Pause).unwrap_err().to_string(),
            "refused for the whole group, no feed changed: cluster \"s3\": no feed named \"nope\""
        );
    }
}

//! The persisted state of feeds: `delay/feeds.json` in the data directory.
//!
//! Owns: [`FeedState`] (hold, acknowledged tripwires, an index-gap hold, last position) and
//! its JSON form, and reading the file strictly: a file that exists but cannot be used is an
//! error that names it, says what is wrong and how to recover (silently starting without it
//! would drop every hold). Writing goes through [`crate::statefile::StateFile`] in
//! [`super::feeds`]. Must not: decide what a feed may send.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::lsn::Lsn;
use crate::statefile;

use super::policy::Hold;
use super::DelayError;

/// Persisted per-feed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FeedState {
    pub hold: Option<Hold>,
    pub tripwire_acked: Lsn,
    /// Last position a session of this feed reported (what it has been sent).
    pub position: Lsn,
    /// Unacknowledged gap in the commit index `[from, to)` the feed has not passed.
    pub gap: Option<(Lsn, Lsn)>,
}

impl FeedState {
    pub fn to_json(&self) -> Value {
        let hold = match &self.hold {
            None => Value::Null,
            Some(Hold::Paused { at }) => json!({"kind": "paused", "at": at.to_string()}),
            Some(Hold::Advanced { to, target }) => {
                json!({"kind": "advanced", "to": to.to_string(), "target": target})
            }
        };
        let gap = match self.gap {
            None => Value::Null,
            Some((from, to)) => json!({"from": from.to_string(), "to": to.to_string()}),
        };
        json!({
            "hold": hold,
            "tripwire_acked": self.tripwire_acked.to_string(),
            "position": self.position.to_string(),
            "index_gap": gap,
        })
    }

    /// Strict: anything missing or malformed is an error naming the field.
    fn from_json(v: &Value) -> Result<FeedState, String> {
        let lsn = |v: &Value, field: &str| -> Result<Lsn, String> {
            let s = v
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("\"{field}\" is missing or not a string"))?;
            s.parse::<Lsn>()
                .map_err(|e| format!("\"{field}\": {}", e.0))
        };
        let hold = match v.get("hold") {
            None | Some(Value::Null) => None,
            Some(h) => match h.get("kind").and_then(Value::as_str) {
                Some("paused") => Some(Hold::Paused { at: lsn(h, "at")? }),
                Some("advanced") => Some(Hold::Advanced {
                    to: lsn(h, "to")?,
                    target: h
                        .get("target")
                        .and_then(Value::as_str)
                        .ok_or("\"hold.target\" is missing")?
                        .to_string(),
                }),
                other => return Err(format!("unknown hold kind {other:?}")),
            },
        };
        let gap = match v.get("index_gap") {
            None | Some(Value::Null) => None,
            Some(g) => Some((lsn(g, "from")?, lsn(g, "to")?)),
        };
        Ok(FeedState {
            hold,
            tripwire_acked: lsn(v, "tripwire_acked")?,
            position: lsn(v, "position")?,
            gap,
        })
    }
}

/// Reads `feeds.json` (none yet: no state). Anything unusable is an error that says how to
/// recover: silently starting without it would drop every hold.
pub(super) fn load_state(path: &Path) -> Result<BTreeMap<String, FeedState>, DelayError> {
    let corrupt = |problem: String| {
        DelayError::StateFile(statefile::corrupt_message(
            path,
            &problem,
            "remove it to reset every feed: pauses, advances, index-gap holds and \
             acknowledged tripwires are then lost, so a delayed standby may be sent WAL it \
             was held before (stop those standbys, or pause their feeds right after \
             start-up with `walrelay feed pause`)",
        ))
    };
    let bytes = match statefile::read(path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(BTreeMap::new()),
        Err(e) => return Err(corrupt(format!("could not read it: {e}"))),
    };
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    let m = v
        .get("feeds")
        .and_then(Value::as_object)
        .ok_or_else(|| corrupt("no \"feeds\" object".into()))?;
    let mut state = BTreeMap::new();
    for (k, s) in m {
        let st = FeedState::from_json(s).map_err(|e| corrupt(format!("feed \"{k}\": {e}")))?;
        state.insert(k.clone(), st);
    }
    Ok(state)
}

/// What the feeds persisted in `<data_dir>/delay/feeds.json` still need, read-only and
/// strictly (for `walrelay archive expire`, which runs without the feed rules): the lowest
/// valid position of any feed, or `None` when no feed has one. Every feed counts, delayed or
/// not (the CLI does not know which are), which only keeps more WAL.
pub fn needed_floor(data_dir: &Path) -> Result<Option<Lsn>, DelayError> {
    let state = load_state(&data_dir.join("delay").join("feeds.json"))?;
    Ok(state
        .values()
        .map(|s| s.position)
        .filter(|p| p.is_valid())
        .min())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_floor_is_the_lowest_feed_position_and_strict() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(needed_floor(d.path()).unwrap(), None);
        std::fs::create_dir_all(d.path().join("delay")).unwrap();
        let path = d.path().join("delay").join("feeds.json");
        let a = FeedState {
            position: Lsn(0x5000),
            ..FeedState::default()
        };
        let b = FeedState {
            position: Lsn(0x3000),
            ..FeedState::default()
        };
        let none = FeedState::default();
        let v = json!({"feeds": {"a": a.to_json(), "b": b.to_json(), "c": none.to_json()}});
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(needed_floor(d.path()).unwrap(), Some(Lsn(0x3000)));
        std::fs::write(&path, b"{not json").unwrap();
        let e = needed_floor(d.path()).unwrap_err().to_string();
        assert!(e.contains("feeds.json"), "{e}");
    }
}

//! The feed controller: feed rules from the config, the sessions streaming under them, and
//! what operators do to them (pause, resume, advance), plus the tripwire.
//!
//! Owns: matching a walsender session to a `[[feed]]` (by `application_name`, and slot and
//! user when the rule names them; first match wins), each feed's persisted state
//! (`delay/feeds.json` in the data directory: hold, acknowledged tripwires, an index-gap
//! hold, last position; written by a [`StateFile`] writer thread) so a restart keeps holds —
//! a `feeds.json` that cannot be read stops start-up instead of silently dropping them —,
//! the tripwire log line and metric, index gaps (WAL the indexer could not decode holds
//! every delayed feed before it until an operator resumes or advances it), and the
//! retention floor [`FeedController::min_needed_lsn`] (delayed feeds' positions and the
//! indexer's position: WAL not yet indexed is never removed). Sessions call [`FeedSession::limit`] each time they
//! look for WAL to send and wait on [`FeedSession::changed`] besides their other events;
//! the cap comes from [`super::policy::decide`].
//!
//! Must not: read or send WAL, or delete files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::{FeedConfig, FeedsConfig};
use crate::lsn::{pg_now, Lsn, WAL_PAGE_SIZE};
use crate::statefile::{StateFile, Ticket};
use crate::store::Positions;

use super::index::{CommitIndex, Coverage, EntryKind};
use super::policy::{decide, Decision, FeedRule, FeedView, Hold, Reason};
use super::state::{load_state, FeedState};
use super::time::format_pg_time;
use super::DelayError;

/// Where `feed advance` moves a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvanceTarget {
    /// Just before the first commit with `xact_time` after this time.
    Time(i64),
    /// Just before this transaction's first record (so not even its locks are replayed).
    BeforeXid(u32),
    /// Exactly this position.
    Lsn(Lsn),
    /// Just after the (last) restore point with this name.
    RestorePoint(String),
}

impl AdvanceTarget {
    /// From admin query parameters (`to_time`, `before_xid`, `to_lsn`, `to_restore_point`).
    pub fn from_params(
        get: &dyn Fn(&str) -> Option<String>,
        now: i64,
    ) -> Result<AdvanceTarget, String> {
        let given: Vec<&str> = ["to_time", "before_xid", "to_lsn", "to_restore_point"]
            .into_iter()
            .filter(|k| get(k).is_some())
            .collect();
        if given.len() != 1 {
            return Err("give exactly one of to_time, before_xid, to_lsn, to_restore_point".into());
        }
        let v = get(given[0]).unwrap_or_default();
        Ok(match given[0] {
            "to_time" => {
                AdvanceTarget::Time(super::time::parse_pg_time(&v, now).map_err(|e| e.to_string())?)
            }
            "before_xid" => AdvanceTarget::BeforeXid(
                v.trim()
                    .parse()
                    .map_err(|_| format!("invalid transaction id \"{v}\""))?,
            ),
            "to_lsn" => AdvanceTarget::Lsn(
                v.parse()
                    .map_err(|e: crate::lsn::ParseLsnError| e.to_string())?,
            ),
            _ => AdvanceTarget::RestorePoint(v),
        })
    }
}

#[derive(Debug, Default)]
struct Runtime {
    sessions: usize,
    due_hint: Lsn,
    hint_generation: u64,
}

struct Feed {
    cfg: FeedConfig,
    /// Changed live by a reload ([`FeedController::reconfigure`]).
    rule: Mutex<(FeedRule, Duration)>,
    rt: Mutex<Runtime>,
}

impl Feed {
    fn rule(&self) -> FeedRule {
        lock(&self.rule).0
    }
    fn delay(&self) -> Duration {
        lock(&self.rule).1
    }
}

/// A feed's policy settings from its configuration.
fn rule_of(c: &FeedConfig, settings: &FeedsConfig) -> FeedRule {
    FeedRule {
        delay_us: i64::try_from(c.delay.as_micros()).unwrap_or(i64::MAX),
        tripwire: c.tripwire.unwrap_or(settings.tripwire),
    }
}

pub mod reconfigure;

/// All feeds. Shared (`Arc`) by the walsender sessions, the indexer and the admin routes.
pub struct FeedController {
    index: CommitIndex,
    feeds: Vec<Feed>,
    state_path: PathBuf,
    file: StateFile,
    state: Mutex<BTreeMap<String, FeedState>>,
    dirty: AtomicBool,
    control_tx: watch::Sender<u64>,
    min_needed_tx: watch::Sender<Option<Lsn>>,
    positions: watch::Receiver<Positions>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FeedController {
    /// Builds the controller from the config and the state saved in `data_dir`.
    pub fn new(
        feeds: &[FeedConfig],
        settings: &FeedsConfig,
        data_dir: &Path,
        index: CommitIndex,
        positions: watch::Receiver<Positions>,
    ) -> Result<Arc<FeedController>, DelayError> {
        let state_path = data_dir.join("delay").join("feeds.json");
        let state = load_state(&state_path)?;
        if let Some(dir) = state_path.parent() {
            crate::store::fsutil::ensure_dir(dir).map_err(|source| DelayError::Io {
                op: "create directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let feeds = feeds
            .iter()
            .map(|c| Feed {
                cfg: c.clone(),
                rule: Mutex::new((rule_of(c, settings), c.delay)),
                rt: Mutex::new(Runtime::default()),
            })
            .collect();
        let (control_tx, _) = watch::channel(0);
        let (min_needed_tx, _) = watch::channel(None);
        let ctl = Arc::new(FeedController {
            index,
            feeds,
            file: StateFile::new(&state_path),
            state_path,
            state: Mutex::new(state),
            dirty: AtomicBool::new(false),
            control_tx,
            min_needed_tx,
            positions,
        });
        ctl.update_min_needed();
        for f in &ctl.feeds {
            let st = ctl.state_of(&f.cfg.name);
            if let Some(h) = &st.hold {
                tracing::info!(
                    "feed \"{}\" keeps its saved hold: {}",
                    f.cfg.name,
                    hold_text(h)
                );
            }
            if let Some((from, to)) = st.gap {
                tracing::warn!(
                    "feed \"{}\" is still held at {from} before a gap in the commit index ({from} to {to}); `walrelay feed resume {}` or `walrelay feed advance` lets it go on",
                    f.cfg.name,
                    f.cfg.name
                );
            }
        }
        Ok(ctl)
    }

    pub fn index(&self) -> &CommitIndex {
        &self.index
    }

    /// Oldest WAL position a delayed feed still needs (its standby's position; retention
    /// should keep the segment holding it and everything after). `None` when no delayed feed
    /// has a position yet.
    pub fn min_needed_lsn(&self) -> watch::Receiver<Option<Lsn>> {
        self.min_needed_tx.subscribe()
    }

    fn state_of(&self, name: &str) -> FeedState {
        lock(&self.state).get(name).cloned().unwrap_or_default()
    }

    fn feed(&self, name: &str) -> Result<(usize, &Feed), DelayError> {
        self.feeds
            .iter()
            .enumerate()
            .find(|(_, f)| f.cfg.name == name)
            .ok_or_else(|| DelayError::NoSuchFeed(name.to_string()))
    }

    /// The feed a new streaming session belongs to, if any.
    pub fn attach(
        self: &Arc<Self>,
        application_name: &str,
        slot: Option<&str>,
        user: &str,
    ) -> Option<FeedSession> {
        let idx = self.feeds.iter().position(|f| {
            f.cfg.app_name() == application_name
                && f.cfg.slot.as_deref().is_none_or(|s| Some(s) == slot)
                && f.cfg.user.as_deref().is_none_or(|u| u == user)
        })?;
        let f = &self.feeds[idx];
        lock(&f.rt).sessions += 1;
        tracing::info!(
            "session of \"{application_name}\" streams under feed \"{}\" (delay {:?})",
            f.cfg.name,
            f.delay()
        );
        Some(FeedSession {
            ctl: self.clone(),
            idx,
            control: self.control_tx.subscribe(),
            coverage: self.index.coverage(),
        })
    }

    fn decide_for(&self, f: &Feed, st: &FeedState, sent: Lsn, flush: Lsn, now: i64) -> Decision {
        let cov: Coverage = self.index.coverage_now();
        let mut rt = lock(&f.rt);
        if rt.hint_generation != cov.truncations {
            rt.hint_generation = cov.truncations;
            rt.due_hint = Lsn(0);
        }
        let d = decide(
            &self.index,
            cov,
            f.rule(),
            FeedView {
                hold: st.hold.as_ref(),
                tripwire_acked: st.tripwire_acked,
                sent,
                gap: st.gap,
            },
            flush,
            now,
            rt.due_hint,
        );
        rt.due_hint = d.due_hint;
        d
    }

    fn flush(&self) -> Lsn {
        self.positions.borrow().flush_lsn
    }

    /// Hands a snapshot of every feed's state to the writer thread (no IO here; the
    /// snapshot is taken and submitted under the state lock, so writes keep their order).
    fn submit(&self) -> Ticket {
        let g = lock(&self.state);
        let m: serde_json::Map<String, Value> =
            g.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        let mut body = serde_json::to_vec_pretty(&json!({ "feeds": m })).unwrap_or_default();
        body.push(b'\n');
        self.dirty.store(false, Ordering::Relaxed);
        self.file.submit(body)
    }

    /// Saves and waits until `feeds.json` is durable (operator actions: a hold is only
    /// reported once it survives a crash). The fsync runs on the writer thread; waiting for
    /// it on a runtime worker goes through `block_in_place`, so the worker's other tasks
    /// move on meanwhile.
    fn save(&self) -> Result<(), DelayError> {
        let ticket = self.submit();
        let wait = move || ticket.wait_blocking();
        let r = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        r.map_err(|source| DelayError::Io {
            op: "write",
            path: self.state_path.clone(),
            source,
        })
    }

    /// Saves positions if they moved (called periodically) and refreshes
    /// [`FeedController::min_needed_lsn`].
    /// Never blocks: the write happens on the state writer thread.
    pub fn persist_if_dirty(&self) {
        if self.dirty.load(Ordering::Relaxed) || self.file.last_error().is_some() {
            self.submit();
        }
        self.update_min_needed();
    }

    /// Recomputes [`FeedController::min_needed_lsn`]: the oldest position of a delayed or
    /// held feed, and the indexer's position (WAL not yet indexed must stay until it is).
    pub fn update_min_needed(&self) {
        let indexed = self.index.coverage_now().upto;
        let g = lock(&self.state);
        let feeds = self
            .feeds
            .iter()
            .filter(|f| {
                f.rule().delay_us > 0
                    || g.get(&f.cfg.name)
                        .is_some_and(|s| s.hold.is_some() || s.gap.is_some())
            })
            .filter_map(|f| g.get(&f.cfg.name).map(|s| s.position))
            .filter(|p| p.is_valid())
            .min();
        drop(g);
        let min = Some(feeds.map_or(indexed, |p| p.min(indexed)));
        self.min_needed_tx.send_if_modified(|v| {
            if *v != min {
                *v = min;
                true
            } else {
                false
            }
        });
    }

    fn changed_control(&self) {
        self.control_tx.send_modify(|v| *v += 1);
        self.update_min_needed();
    }

    /// `feed pause`: hold the feed where it is.
    pub fn pause(&self, name: &str) -> Result<Value, DelayError> {
        let (_, f) = self.feed(name)?;
        let now = pg_now();
        let mut st = self.state_of(name);
        let at = if st.position.is_valid() {
            st.position
        } else {
            self.decide_for(f, &st, Lsn(0), self.flush(), now).cap
        };
        st.hold = Some(Hold::Paused { at });
        lock(&self.state).insert(name.to_string(), st);
        self.save()?;
        self.changed_control();
        tracing::info!("feed \"{name}\" paused at {at}");
        Ok(self.feed_json(f, now))
    }

    /// `feed resume`: drop any hold, acknowledge the tripwire the feed stands at, and let the
    /// delay rule alone decide again.
    pub fn resume(&self, name: &str) -> Result<Value, DelayError> {
        let (_, f) = self.feed(name)?;
        let now = pg_now();
        let mut st = self.state_of(name);
        st.hold = None;
        let gap = st.gap.take();
        // Acknowledge the tripwires the feed stands at (or inside of): the operator has seen
        // them. Tripwires further ahead still hold.
        for _ in 0..1000 {
            let d = self.decide_for(f, &st, st.position, self.flush(), now);
            match d.reason {
                Reason::Tripwire { entry } if entry.first <= st.position => {
                    st.tripwire_acked = st.tripwire_acked.max(entry.lsn);
                }
                // Held before the index's coverage (no recorded gap): the operator lets the
                // WAL up to the coverage start go without delay or tripwire.
                Reason::IndexGap { to, .. } if st.gap.is_none() && to.0 > 0 => {
                    let acked = Lsn(to.0.saturating_sub(1));
                    if st.tripwire_acked >= acked {
                        break;
                    }
                    st.tripwire_acked = acked;
                }
                _ => break,
            }
        }
        st.hold = None;
        lock(&self.state).insert(name.to_string(), st);
        self.save()?;
        self.changed_control();
        match gap {
            Some((from, to)) => tracing::warn!(
                "feed \"{name}\" resumed past the gap in the commit index ({from} to {to}): transactions there are sent without delay or tripwire"
            ),
            None => tracing::info!("feed \"{name}\" resumed"),
        }
        Ok(self.feed_json(f, now))
    }

    /// Resolves an advance target to a position using the commit index.
    pub fn resolve(&self, target: &AdvanceTarget) -> Result<(Lsn, String), DelayError> {
        let cov = self.index.coverage_now();
        let range = || {
            format!(
                "the commit index covers {} to {}",
                self.index.first_lsn().unwrap_or(cov.from),
                cov.upto
            )
        };
        match target {
            AdvanceTarget::Lsn(l) => Ok((*l, format!("lsn {l}"))),
            AdvanceTarget::BeforeXid(x) => {
                let found = self.index.select(usize::MAX, |e| {
                    e.xid == *x && e.kind != EntryKind::Prepare && e.kind != EntryKind::RestorePoint
                });
                let e = found.last().ok_or_else(|| {
                    DelayError::Target(format!(
                        "transaction {x} has no commit or abort record in the commit index ({})",
                        range()
                    ))
                })?;
                Ok((e.first, format!("before xid {x}")))
            }
            AdvanceTarget::Time(t) => {
                let first_after = self.index.select(1, |e| e.kind.is_commit() && e.time > *t);
                match first_after.first() {
                    Some(e) => Ok((e.lsn, format!("time {}", format_pg_time(*t)))),
                    None => Err(DelayError::Target(format!(
                        "no commit after {} has been received yet ({})",
                        format_pg_time(*t),
                        range()
                    ))),
                }
            }
            AdvanceTarget::RestorePoint(name) => {
                let found = self.index.select(usize::MAX, |e| {
                    e.kind == EntryKind::RestorePoint && e.name.as_deref() == Some(name.as_str())
                });
                let e = found.last().ok_or_else(|| {
                    DelayError::Target(format!(
                        "restore point \"{name}\" is not in the commit index ({})",
                        range()
                    ))
                })?;
                Ok((e.end, format!("restore point \"{name}\"")))
            }
        }
    }

    /// `feed advance`: move the feed to exactly the target (past the delay if need be) and
    /// hold it there.
    pub fn advance(&self, name: &str, target: &AdvanceTarget) -> Result<Value, DelayError> {
        let (_, f) = self.feed(name)?;
        let (to, text) = self.resolve(target)?;
        let mut st = self.state_of(name);
        if to < st.position {
            return Err(DelayError::Target(format!(
                "feed \"{name}\" has already sent WAL up to {}, past the target {to} ({text}); a standby cannot go back: make a new one from a base backup",
                st.position
            )));
        }
        // Tripwires before the target, and an index gap, are the operator's decision now.
        st.tripwire_acked = st.tripwire_acked.max(Lsn(to.0.saturating_sub(1)));
        st.gap = None;
        st.hold = Some(Hold::Advanced {
            to,
            target: text.clone(),
        });
        lock(&self.state).insert(name.to_string(), st);
        self.save()?;
        self.changed_control();
        tracing::info!("feed \"{name}\" advanced to {to} ({text}) and held there");
        Ok(self.feed_json(f, pg_now()))
    }

    /// Called by the indexer when it could not index `[from, to)` (a decoding error, or the
    /// WAL was gone): every delayed feed that has not passed `to` is held at `from` until an
    /// operator resumes or advances it. The returned ticket resolves once that hold is
    /// durable; the indexer waits for it before it indexes past the gap, so a crash cannot
    /// forget it.
    pub fn on_index_gap(&self, from: Lsn, to: Lsn) -> Ticket {
        let mut held = Vec::new();
        {
            let mut g = lock(&self.state);
            for f in self.feeds.iter().filter(|f| f.rule().delay_us > 0) {
                let st = g.entry(f.cfg.name.clone()).or_default();
                if st.position >= to {
                    continue;
                }
                st.gap = Some(match st.gap {
                    Some((a, b)) => (a.min(from), b.max(to)),
                    None => (from, to),
                });
                held.push(f.cfg.name.clone());
            }
        }
        for name in &held {
            tracing::error!(
                "commit index gap: WAL from {from} to {to} could not be indexed, so its commits can be neither delayed nor checked by the tripwire; feed \"{name}\" is held at {from} until `walrelay feed resume {name}` (send it on without delay) or `walrelay feed advance {name}`"
            );
            metrics::counter!(super::INDEX_GAP_TOTAL, "feed" => name.clone()).increment(1);
        }
        let ticket = self.submit();
        self.changed_control();
        ticket
    }

    /// Called by the indexer with newly indexed entries: the tripwire's log line and metric.
    pub fn on_indexed(&self, new: &[super::IndexEntry]) {
        for e in new.iter().filter(|e| e.drops_relations()) {
            for f in self
                .feeds
                .iter()
                .filter(|f| f.rule().delay_us > 0 && f.rule().tripwire)
            {
                let st = self.state_of(&f.cfg.name);
                if e.lsn <= st.tripwire_acked || e.lsn < st.position {
                    continue;
                }
                tracing::warn!(
                    "tripwire: held feed \"{}\" before xid {} committed at {} dropping {}; resume with `walrelay feed resume {}` or move it with `walrelay feed advance`",
                    f.cfg.name,
                    e.xid,
                    format_pg_time(e.time),
                    e.dropped_paths(),
                    f.cfg.name
                );
                metrics::counter!(super::TRIPWIRE_TOTAL, "feed" => f.cfg.name.clone()).increment(1);
            }
        }
    }

    fn feed_json(&self, f: &Feed, now: i64) -> Value {
        let st = self.state_of(&f.cfg.name);
        let d = self.decide_for(f, &st, st.position, self.flush(), now);
        let sessions = lock(&f.rt).sessions;
        let waiting = match &d.reason {
            Reason::Delay { entry, due } => json!({
                "xid": entry.xid,
                "lsn": entry.lsn.to_string(),
                "commit_time": format_pg_time(entry.time),
                "due": format_pg_time(*due),
                "due_in_seconds": (due - now) as f64 / 1e6,
            }),
            Reason::Tripwire { entry } => json!({
                "xid": entry.xid,
                "lsn": entry.lsn.to_string(),
                "commit_time": format_pg_time(entry.time),
                "dropped_relations": entry.dropped.iter().map(|r| r.path()).collect::<Vec<_>>(),
            }),
            _ => Value::Null,
        };
        // Where the feed stops (not the commit's LSN: the tripwire stops before the
        // transaction's first record), as the standby's pg_last_wal_replay_lsn() reports it
        // once it replayed everything sent.
        let seg_size = self.positions.borrow().wal_segment_size;
        let held_at = match (&d.reason, &st.hold) {
            (Reason::Tripwire { .. } | Reason::IndexGap { .. }, _) => Some(d.cap),
            (_, Some(Hold::Paused { at })) => Some(*at),
            (_, Some(Hold::Advanced { to, .. })) => Some(*to),
            _ => None,
        }
        .map(|l| replay_point(l, seg_size));
        let gap = st
            .gap
            .map(|(from, to)| json!({"from": from.to_string(), "to": to.to_string()}));
        json!({
            "name": f.cfg.name,
            "application_name": f.cfg.app_name(),
            "slot": f.cfg.slot,
            "user": f.cfg.user,
            "delay": humantime(f.delay()),
            "delay_seconds": f.delay().as_secs_f64(),
            "tripwire": f.rule().delay_us > 0 && f.rule().tripwire,
            "sessions": sessions,
            "position": st.position.to_string(),
            "send_limit": d.cap.to_string(),
            "state": match (&st.hold, &d.reason) {
                (_, Reason::IndexGap { .. }) => "index_gap",
                (Some(Hold::Paused { .. }), _) => "paused",
                (_, r) => r.name(),
            },
            "hold": st.hold.as_ref().map(hold_text),
            "held_at": held_at.map(|l| l.to_string()),
            "index_gap": gap,
            "waiting_commit": waiting,
        })
    }

    /// `feed list`: every feed with position, delay, hold and the commit it waits for.
    pub fn list(&self) -> Value {
        let now = pg_now();
        let cov = self.index.coverage_now();
        json!({
            "feeds": self.feeds.iter().map(|f| self.feed_json(f, now)).collect::<Vec<_>>(),
            "index": {
                "entries": self.index.len(),
                "from": self.index.first_lsn().map(|l| l.to_string()),
                "upto": cov.upto.to_string(),
            },
        })
    }

    /// One feed as JSON.
    pub fn show(&self, name: &str) -> Result<Value, DelayError> {
        let (_, f) = self.feed(name)?;
        Ok(self.feed_json(f, pg_now()))
    }
}

/// The position a standby's replay reports after replaying everything before `lsn`, a
/// record start: the end of the previous record, which is the page boundary when `lsn` is
/// the first record after a page header (`EndRecPtr` does not include the next page's
/// header).
pub fn replay_point(lsn: Lsn, seg_size: u64) -> Lsn {
    let off = lsn.0 % WAL_PAGE_SIZE;
    let header = if seg_size != 0 && lsn.0 % seg_size == off {
        crate::wal::page::LONG_HEADER_LEN as u64
    } else {
        crate::wal::page::SHORT_HEADER_LEN as u64
    };
    if off == header {
        Lsn(lsn.0 - off)
    } else {
        lsn
    }
}

fn hold_text(h: &Hold) -> String {
    match h {
        Hold::Paused { at } => format!("paused at {at}"),
        Hold::Advanced { to, target } => format!("advanced to {to} ({target})"),
    }
}

/// `8h`, `1h30m`, `5s`, `250ms`.
pub fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= n {
            out.push_str(&format!("{}{unit}", s / n));
            s %= n;
        }
    }
    out
}

/// A walsender session streaming under a feed. Dropping it detaches the session.
pub struct FeedSession {
    ctl: Arc<FeedController>,
    idx: usize,
    control: watch::Receiver<u64>,
    coverage: watch::Receiver<Coverage>,
}

impl FeedSession {
    pub fn name(&self) -> &str {
        &self.ctl.feeds[self.idx].cfg.name
    }

    /// The highest LSN the session may send now (it may be below `sent`: then it sends
    /// nothing and keeps the standby alive with keepalives), and when to ask again even if
    /// nothing else happens. `sent` is the session's position (recorded as the feed's
    /// position), `flush` the store's flush position.
    pub fn limit(&self, sent: Lsn, flush: Lsn) -> (Lsn, Option<Instant>) {
        let f = &self.ctl.feeds[self.idx];
        let st = {
            let mut g = lock(&self.ctl.state);
            let st = g.entry(f.cfg.name.clone()).or_default();
            if st.position != sent {
                st.position = sent;
                self.ctl.dirty.store(true, Ordering::Relaxed);
            }
            st.clone()
        };
        let now = pg_now();
        let d = self.ctl.decide_for(f, &st, sent, flush, now);
        let wake = d.wake_at.map(|t| {
            let us = u64::try_from(t.saturating_sub(now)).unwrap_or(0);
            Instant::now() + Duration::from_micros(us) + Duration::from_millis(1)
        });
        metrics::gauge!(super::FEED_CAP_LSN, "feed" => f.cfg.name.clone()).set(d.cap.0 as f64);
        (d.cap, wake)
    }

    /// Resolves when an operator acted on a feed or the index moved.
    pub async fn changed(&mut self) {
        tokio::select! {
            r = self.control.changed() => { if r.is_err() { std::future::pending::<()>().await } }
            r = self.coverage.changed() => { if r.is_err() { std::future::pending::<()>().await } }
        }
    }
}

impl Drop for FeedSession {
    fn drop(&mut self) {
        let f = &self.ctl.feeds[self.idx];
        let mut rt = lock(&f.rt);
        rt.sessions = rt.sessions.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delay::index::IndexEntry;
    use crate::wal::RelFileLocator;

    fn cfg(name: &str, delay: u64) -> FeedConfig {
        FeedConfig {
            name: name.into(),
            application_name: None,
            slot: None,
            user: None,
            delay: Duration::from_secs(delay),
            tripwire: None,
        }
    }

    fn commit(lsn: u64, time: i64, xid: u32, drops: bool) -> IndexEntry {
        IndexEntry {
            lsn: Lsn(lsn),
            end: Lsn(lsn + 40),
            first: Lsn(lsn),
            kind: EntryKind::Commit,
            time,
            xid,
            dropped: if drops {
                vec![RelFileLocator {
                    spc: 1663,
                    db: 5,
                    rel: 16384,
                }]
            } else {
                vec![]
            },
            name: None,
        }
    }

    #[test]
    fn control_round_trip_and_restart_keeps_holds() {
        let d = tempfile::tempdir().unwrap();
        let ix = CommitIndex::new();
        let now = pg_now();
        ix.push([
            commit(100, now - 100_000_000, 700, false),
            commit(200, now - 50_000_000, 701, true),
            IndexEntry::restore_point(Lsn(250), Lsn(290), now - 40_000_000, "rp".into()),
            commit(300, now - 1_000_000, 702, false),
        ]);
        ix.set_coverage(Lsn(0), Lsn(400));
        let (_ptx, prx) = watch::channel(Positions {
            flush_lsn: Lsn(400),
            ..Default::default()
        });
        let feeds = [cfg("lag", 10), cfg("plain", 0)];
        let ctl = FeedController::new(
            &feeds,
            &FeedsConfig::default(),
            d.path(),
            ix.clone(),
            prx.clone(),
        )
        .unwrap();
        assert!(ctl.attach("other", None, "u").is_none());
        let s = ctl.attach("lag", None, "u").unwrap();
        // the tripwire holds before xid 701
        let (cap, wake) = s.limit(Lsn(0), Lsn(400));
        assert_eq!((cap, wake), (Lsn(200), None));
        assert_eq!(ctl.show("lag").unwrap()["state"], "tripwire");
        // the plain feed is not held
        let p = ctl.attach("plain", None, "u").unwrap();
        assert_eq!(p.limit(Lsn(0), Lsn(400)).0, Lsn(400));
        // resume acknowledges it; then the delay holds before xid 702
        s.limit(Lsn(200), Lsn(400));
        ctl.resume("lag").unwrap();
        let (cap, wake) = s.limit(Lsn(200), Lsn(400));
        assert_eq!(cap, Lsn(300));
        assert!(wake.is_some());
        // advance targets
        assert_eq!(
            ctl.resolve(&AdvanceTarget::BeforeXid(702)).unwrap().0,
            Lsn(300)
        );
        assert_eq!(
            ctl.resolve(&AdvanceTarget::RestorePoint("rp".into()))
                .unwrap()
                .0,
            Lsn(290)
        );
        assert_eq!(
            ctl.resolve(&AdvanceTarget::Time(now - 60_000_000))
                .unwrap()
                .0,
            Lsn(200)
        );
        assert!(ctl.resolve(&AdvanceTarget::BeforeXid(9)).is_err());
        assert!(ctl.resolve(&AdvanceTarget::Time(now)).is_err());
        ctl.advance("lag", &AdvanceTarget::Lsn(Lsn(350))).unwrap();
        assert_eq!(s.limit(Lsn(300), Lsn(400)).0, Lsn(350));
        // going back is refused
        s.limit(Lsn(350), Lsn(400));
        assert!(ctl.advance("lag", &AdvanceTarget::BeforeXid(702)).is_err());
        assert!(matches!(ctl.pause("nope"), Err(DelayError::NoSuchFeed(_))));
        ctl.pause("plain").unwrap();
        p.limit(Lsn(380), Lsn(400));
        ctl.persist_if_dirty();
        assert_eq!(*ctl.min_needed_lsn().borrow(), Some(Lsn(350)));
        drop(s);
        drop(p);
        // a restart keeps holds and positions
        let ctl2 = FeedController::new(&feeds, &FeedsConfig::default(), d.path(), ix, prx).unwrap();
        let v = ctl2.list();
        assert_eq!(v["feeds"][0]["state"], "advanced");
        assert_eq!(v["feeds"][0]["held_at"], "0/15E");
        assert_eq!(v["feeds"][1]["state"], "paused");
        assert_eq!(*ctl2.min_needed_lsn().borrow(), Some(Lsn(350)));
    }

    fn controller(dir: &Path, ix: &CommitIndex, flush: u64) -> Arc<FeedController> {
        let (_ptx, prx) = watch::channel(Positions {
            flush_lsn: Lsn(flush),
            wal_segment_size: 16 << 20,
            ..Default::default()
        });
        FeedController::new(
            &[cfg("lag", 10)],
            &FeedsConfig::default(),
            dir,
            ix.clone(),
            prx,
        )
        .unwrap()
    }

    /// A corrupt feeds.json is an error naming the file, the problem and the way out; it was
    /// silently ignored (and with it every hold).
    #[test]
    fn corrupt_state_file_is_refused_with_recovery_advice() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("delay")).unwrap();
        let path = d.path().join("delay").join("feeds.json");
        let (_ptx, prx) = watch::channel(Positions::default());
        for body in [
            &b"{\"feeds\": {\"lag\": {\"hold\": {\"kind\": \"paused\", \"at\": \"0/1"[..],
            b"{\"feeds\": {\"lag\": {\"hold\": null, \"tripwire_acked\": \"x\", \"position\": \"0/0\"}}}",
            b"[]",
        ] {
            std::fs::write(&path, body).unwrap();
            let e = FeedController::new(
                &[cfg("lag", 10)],
                &FeedsConfig::default(),
                d.path(),
                CommitIndex::new(),
                prx.clone(),
            )
            .err()
            .expect("a corrupt feeds.json was accepted");
            let m = e.to_string();
            assert!(m.contains(&path.display().to_string()), "{m}");
            assert!(m.contains("Restore it from a backup, or remove it"), "{m}");
            assert!(m.contains("pauses, advances"), "{m}");
        }
    }

    /// "held at" of a tripwire hold is where the feed stops (the transaction's first record),
    /// not the commit; at a page's first record it is the page boundary, which is what the
    /// standby's replay position reports.
    #[test]
    fn tripwire_held_at_is_where_the_feed_stops() {
        let d = tempfile::tempdir().unwrap();
        let ix = CommitIndex::new();
        let mut drop = commit(0x2000, pg_now() - 100_000_000, 701, true);
        drop.first = Lsn(0x1800);
        ix.push([drop]);
        ix.set_coverage(Lsn(0), Lsn(0x3000));
        let ctl = controller(d.path(), &ix, 0x3000);
        let s = ctl.attach("lag", None, "u").unwrap();
        assert_eq!(s.limit(Lsn(0x100), Lsn(0x3000)).0, Lsn(0x1800));
        let f = ctl.show("lag").unwrap();
        assert_eq!(f["state"], "tripwire");
        assert_eq!(f["held_at"], "0/1800");
        assert_eq!(f["waiting_commit"]["lsn"], "0/2000");
        assert_eq!(replay_point(Lsn(8192 + 24), 16 << 20), Lsn(8192));
        assert_eq!(replay_point(Lsn((16 << 20) + 40), 16 << 20), Lsn(16 << 20));
        assert_eq!(replay_point(Lsn(8192 + 32), 16 << 20), Lsn(8192 + 32));
    }

    /// An index gap holds the delayed feed at its start, survives a restart, and only an
    /// operator (resume) lets the feed through; the indexer's position is the retention floor.
    #[tokio::test]
    async fn index_gap_holds_until_resumed_and_survives_restart() {
        let d = tempfile::tempdir().unwrap();
        let ix = CommitIndex::new();
        ix.set_coverage(Lsn(0), Lsn(0x5000));
        let ctl = controller(d.path(), &ix, 0x9000);
        let s = ctl.attach("lag", None, "u").unwrap();
        assert_eq!(s.limit(Lsn(0x1000), Lsn(0x9000)).0, Lsn(0x5000));
        ctl.persist_if_dirty();
        assert_eq!(*ctl.min_needed_lsn().borrow(), Some(Lsn(0x1000)));
        ctl.on_index_gap(Lsn(0x5000), Lsn(0x8000))
            .wait()
            .await
            .unwrap();
        ix.set_coverage(Lsn(0), Lsn(0x9000));
        assert_eq!(s.limit(Lsn(0x1000), Lsn(0x9000)).0, Lsn(0x5000));
        let f = ctl.show("lag").unwrap();
        assert_eq!(f["state"], "index_gap", "{f}");
        assert_eq!(f["held_at"], "0/5000");
        assert_eq!(f["index_gap"]["to"], "0/8000");
        drop(s);
        let ctl = tokio::task::spawn_blocking({
            let (dir, ix) = (d.path().to_path_buf(), ix.clone());
            move || {
                let ctl = controller(&dir, &ix, 0x9000);
                assert_eq!(ctl.show("lag").unwrap()["state"], "index_gap");
                ctl.resume("lag").unwrap();
                ctl
            }
        })
        .await
        .unwrap();
        let s = ctl.attach("lag", None, "u").unwrap();
        assert_eq!(s.limit(Lsn(0x1000), Lsn(0x9000)).0, Lsn(0x9000));
        // the floor: the indexer's position when no feed is further behind
        s.limit(Lsn(0x9000), Lsn(0x9000));
        ix.set_coverage(Lsn(0), Lsn(0x7000));
        ctl.persist_if_dirty();
        assert_eq!(*ctl.min_needed_lsn().borrow(), Some(Lsn(0x7000)));
    }

    /// Operator actions called on a runtime worker (the admin routes) wait for the durable
    /// write without blocking the runtime: other tasks keep running meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn operator_actions_on_a_worker_are_durable() {
        let d = tempfile::tempdir().unwrap();
        let ix = CommitIndex::new();
        ix.set_coverage(Lsn(0), Lsn(0x5000));
        let ctl = controller(d.path(), &ix, 0x5000);
        let ticker = tokio::spawn(async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        ctl.pause("lag").unwrap();
        let saved = std::fs::read_to_string(d.path().join("delay").join("feeds.json")).unwrap();
        assert!(saved.contains("\"paused\""), "{saved}");
        ticker.await.unwrap();
    }

    #[test]
    fn human_durations() {
        assert_eq!(humantime(Duration::from_secs(8 * 3600)), "8h");
        assert_eq!(humantime(Duration::from_secs(5400)), "1h30m");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
    }

    /// A delayed feed standing before the index's coverage (the commit index was lost and
    /// rebuilt from later WAL) is held where it stands; resume lets it go on, durably.
    #[tokio::test]
    async fn a_feed_before_the_coverage_is_held_until_resumed() {
        let d = tempfile::tempdir().unwrap();
        let ix = CommitIndex::new();
        ix.set_coverage(Lsn(0x4000), Lsn(0x9000));
        let ctl = controller(d.path(), &ix, 0x9000);
        let s = ctl.attach("lag", None, "u").unwrap();
        assert_eq!(s.limit(Lsn(0x1000), Lsn(0x9000)).0, Lsn(0x1000));
        let f = ctl.show("lag").unwrap();
        assert_eq!(f["state"], "index_gap", "{f}");
        ctl.persist_if_dirty();
        drop(s);
        let ctl = tokio::task::spawn_blocking({
            let (dir, ix) = (d.path().to_path_buf(), ix.clone());
            move || {
                let ctl = controller(&dir, &ix, 0x9000);
                ctl.resume("lag").unwrap();
                drop(ctl);
                // the acknowledgement survives a restart
                controller(&dir, &ix, 0x9000)
            }
        })
        .await
        .unwrap();
        let s = ctl.attach("lag", None, "u").unwrap();
        assert_eq!(s.limit(Lsn(0x1000), Lsn(0x9000)).0, Lsn(0x9000));
        assert_eq!(ctl.show("lag").unwrap()["state"], "caught_up");
    }
}

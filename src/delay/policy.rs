//! What a feed may send now, and when that changes next: the pure core of delayed feeds.
//!
//! Owns: the rule of `recovery_min_apply_delay` moved to the sending side — WAL is sent only
//! up to the start of the first commit record (commit or commit prepared, in LSN order) whose
//! `xact_time + delay` is still in the future, and, when every commit is due, no further than
//! the end of the last indexed transaction end (what follows belongs to transactions whose
//! commit has not been seen) — plus operator holds (pause, advance) and the
//! tripwire (stop before a commit that drops relations). Everything comes in as arguments,
//! the clock included, so it is unit-tested with a fake clock. Must not: do IO, log, or keep
//! state (the caller keeps the `due_hint`).

use crate::lsn::Lsn;

use super::index::{CommitIndex, Coverage, IndexEntry};

/// An operator hold on a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// `feed pause`: stay where the feed was; the delay still applies below that point.
    Paused { at: Lsn },
    /// `feed advance`: go to exactly `to`, past the delay if need be, and stay there.
    Advanced { to: Lsn, target: String },
}

/// The settings of one feed that the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRule {
    /// Delay in µs; 0 for a feed without delay.
    pub delay_us: i64,
    /// Stop before commits that drop relations (only for delayed feeds).
    pub tripwire: bool,
}

/// The feed's state as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedView<'a> {
    pub hold: Option<&'a Hold>,
    /// Tripwires at or before this position were acknowledged (resume, advance).
    pub tripwire_acked: Lsn,
    /// Where the session stands (what it has sent).
    pub sent: Lsn,
    /// An unacknowledged gap in the commit index (`[from, to)` was not indexed): a delayed
    /// feed stays at `from` until an operator acts, whatever else allows.
    pub gap: Option<(Lsn, Lsn)>,
}

/// What limits the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Everything walrelay has (flushed and indexed) may be sent.
    CaughtUp,
    /// Waiting for this commit to become due.
    Delay { entry: IndexEntry, due: i64 },
    /// Held before a commit that drops relations.
    Tripwire { entry: IndexEntry },
    /// `feed pause`.
    Paused { at: Lsn },
    /// `feed advance`.
    Advanced { to: Lsn },
    /// Held before WAL the commit index could not decode (or lost before decoding it):
    /// nothing there can be delayed or checked by the tripwire.
    IndexGap { from: Lsn, to: Lsn },
}

impl Reason {
    pub fn name(&self) -> &'static str {
        match self {
            Reason::CaughtUp => "caught_up",
            Reason::Delay { .. } => "delay",
            Reason::Tripwire { .. } => "tripwire",
            Reason::Paused { .. } => "paused",
            Reason::Advanced { .. } => "advanced",
            Reason::IndexGap { .. } => "index_gap",
        }
    }
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Highest LSN (exclusive end) the feed may send now. May be below `sent`: then the
    /// session waits.
    pub cap: Lsn,
    pub reason: Reason,
    /// When the decision changes by itself (µs since 2000-01-01): the due time of the commit
    /// waited for. `None` when only new WAL or an operator can change it.
    pub wake_at: Option<i64>,
    /// Every commit starting before this position is due; pass it back as `due_hint` next
    /// time (due-ness never reverts, so the scan is incremental).
    pub due_hint: Lsn,
}

/// Computes the feed's cap. `flush` is the store's flush position, `coverage` what the index
/// covers, `now` the current time (µs since 2000-01-01), `due_hint` the previous
/// [`Decision::due_hint`] (or `Lsn(0)`).
pub fn decide(
    index: &CommitIndex,
    coverage: Coverage,
    rule: FeedRule,
    feed: FeedView<'_>,
    flush: Lsn,
    now: i64,
    due_hint: Lsn,
) -> Decision {
    let mut d = decide_holds(index, coverage, rule, feed, flush, now, due_hint);
    // Fail closed: WAL the index did not see cannot be delayed or checked for drops.
    // (A standby already past the gap, e.g. one made from a newer base backup, is not held.)
    if let (true, Some((from, to))) = (rule.delay_us > 0, feed.gap) {
        if from <= d.cap && feed.sent < to {
            d.cap = from;
            d.reason = Reason::IndexGap { from, to };
            d.wake_at = None;
        }
    }
    // Fail closed, too, below the index's coverage: a delayed feed that stands before
    // `coverage.from` (the index was lost and rebuilt from later WAL, or pruned past it)
    // would be sent the commits in between with neither delay nor tripwire. It is held where
    // it stands until an operator acts: `resume` acknowledges up to the coverage start
    // (`tripwire_acked` reaches `coverage.from - 1`), `advance` moves it explicitly.
    let acked = feed.tripwire_acked.0.saturating_add(1) >= coverage.from.0;
    let advanced = matches!(feed.hold, Some(Hold::Advanced { .. }));
    if rule.delay_us > 0 && feed.sent < coverage.from && !acked && !advanced && d.cap > feed.sent {
        d.cap = feed.sent;
        d.reason = Reason::IndexGap {
            from: feed.sent,
            to: coverage.from,
        };
        d.wake_at = None;
    }
    d
}

fn decide_holds(
    index: &CommitIndex,
    coverage: Coverage,
    rule: FeedRule,
    feed: FeedView<'_>,
    flush: Lsn,
    now: i64,
    due_hint: Lsn,
) -> Decision {
    let delayed = rule.delay_us > 0;
    // A commit not yet decoded cannot be held back: a delayed feed stays within the index.
    let base = if delayed || rule.tripwire {
        flush.min(coverage.upto)
    } else {
        flush
    };
    if let Some(Hold::Advanced { to, .. }) = feed.hold {
        let cap = base.min(*to);
        let reason = if cap == *to {
            Reason::Advanced { to: *to }
        } else {
            Reason::CaughtUp
        };
        return Decision {
            cap,
            reason,
            wake_at: None,
            due_hint,
        };
    }
    let mut cap = base;
    let mut reason = Reason::CaughtUp;
    let mut wake_at = None;
    let mut hint = due_hint;
    if delayed {
        let found = index.with_from(due_hint, |it| {
            for e in it {
                if e.lsn >= base {
                    break;
                }
                if e.kind.is_commit() {
                    let due = e.time.saturating_add(rule.delay_us);
                    if due > now {
                        return Some((e.clone(), due));
                    }
                }
            }
            None
        });
        match found {
            Some((entry, due)) => {
                cap = entry.lsn;
                hint = entry.lsn;
                wake_at = Some(due);
                reason = Reason::Delay { entry, due };
            }
            None => {
                hint = hint.max(base);
                // Every commit below `base` is due. What follows the last transaction end
                // belongs to transactions whose commit has not arrived yet: hold it until that
                // commit is indexed and due. Otherwise the first records of a transaction (a
                // DROP's AccessExclusiveLock) could reach the standby before the tripwire can
                // see its commit.
                if let Some(end) = index.last_end_before(base) {
                    cap = base.min(end);
                }
            }
        }
    }
    // The tripwire: stop before the first record of a transaction whose commit drops
    // relations (so the standby does not take its locks either), unless the feed is past
    // its commit or the operator acknowledged it.
    if delayed && rule.tripwire {
        let trip = index
            .drops()
            .into_iter()
            .filter(|e| e.lsn >= feed.sent && e.lsn > feed.tripwire_acked)
            .min_by_key(|e| e.first);
        if let Some(e) = trip {
            if e.first < cap || (e.first == cap && e.lsn < base) {
                cap = e.first;
                wake_at = None;
                reason = Reason::Tripwire { entry: e };
            }
        }
    }
    if let Some(Hold::Paused { at }) = feed.hold {
        if *at <= cap {
            cap = *at;
            reason = Reason::Paused { at: *at };
            wake_at = None;
        }
    }
    Decision {
        cap,
        reason,
        wake_at,
        due_hint: hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delay::index::EntryKind;
    use crate::wal::RelFileLocator;

    const S: i64 = 1_000_000;

    fn e(lsn: u64, kind: EntryKind, time: i64, xid: u32, drops: bool) -> IndexEntry {
        IndexEntry {
            lsn: Lsn(lsn),
            end: Lsn(lsn + 50),
            first: Lsn(lsn),
            kind,
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

    /// commits at t=10s..15s every 100 bytes, an abort (never delays), a dropping commit.
    fn index() -> (CommitIndex, Coverage) {
        let ix = CommitIndex::new();
        ix.push([
            e(100, EntryKind::Commit, 10 * S, 1, false),
            e(200, EntryKind::Abort, 30 * S, 2, false),
            e(300, EntryKind::Commit, 11 * S, 3, false),
            e(400, EntryKind::CommitPrepared, 12 * S, 4, false),
            e(500, EntryKind::Commit, 13 * S, 5, true),
            e(600, EntryKind::Commit, 14 * S, 6, false),
        ]);
        (
            ix,
            Coverage {
                upto: Lsn(700),
                from: Lsn(0),
                version: 1,
                truncations: 0,
            },
        )
    }

    const DELAYED: FeedRule = FeedRule {
        delay_us: 5 * S,
        tripwire: false,
    };

    fn view(sent: u64) -> FeedView<'static> {
        FeedView {
            hold: None,
            tripwire_acked: Lsn(0),
            sent: Lsn(sent),
            gap: None,
        }
    }

    #[test]
    fn delay_caps_at_first_commit_not_due_and_wakes_then() {
        let (ix, cov) = index();
        // at t=14s: commit 1 (due 15s) is not due yet
        let d = decide(&ix, cov, DELAYED, view(0), Lsn(700), 14 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(100));
        assert_eq!(d.wake_at, Some(15 * S));
        assert_eq!(d.reason.name(), "delay");
        // exactly due: passes (due > now is "not yet")
        let d = decide(&ix, cov, DELAYED, view(100), Lsn(700), 15 * S, d.due_hint);
        assert_eq!(d.cap, Lsn(300), "the abort at 200 does not delay");
        assert_eq!(d.wake_at, Some(16 * S));
        // commit prepared is delayed too
        let d = decide(
            &ix,
            cov,
            DELAYED,
            view(300),
            Lsn(700),
            16 * S + 1,
            d.due_hint,
        );
        assert_eq!(d.cap, Lsn(400));
        // everything due: the cap is the end of the last transaction end (650), below the
        // index coverage (700) and the flush position (800): the WAL after it belongs to
        // transactions whose commit has not been seen yet
        let d = decide(&ix, cov, DELAYED, view(400), Lsn(800), 100 * S, d.due_hint);
        assert_eq!((d.cap, d.wake_at), (Lsn(650), None));
        assert_eq!(d.reason, Reason::CaughtUp);
        // once a later commit is indexed and due, the WAL before it goes too
        ix.push([e(680, EntryKind::Commit, 15 * S, 7, false)]);
        let d = decide(&ix, cov, DELAYED, view(400), Lsn(800), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(700));
        let d = decide(&ix, cov, DELAYED, view(400), Lsn(650), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(650));
        // no delay: only the flush position counts
        let rule = FeedRule {
            delay_us: 0,
            tripwire: true,
        };
        let d = decide(&ix, cov, rule, view(0), Lsn(650), 0, Lsn(0));
        assert_eq!((d.cap, d.wake_at), (Lsn(650), None));
    }

    #[test]
    fn fresh_standby_ahead_of_the_horizon_waits() {
        let (ix, cov) = index();
        // the standby asks for 650, the horizon (commit at 300, due 16s) is below it
        let d = decide(&ix, cov, DELAYED, view(650), Lsn(700), 15 * S + 5, Lsn(0));
        assert_eq!(d.cap, Lsn(300));
        assert!(d.cap < Lsn(650));
        // once everything up to its position is due it is not held below it
        let d = decide(&ix, cov, DELAYED, view(650), Lsn(700), 20 * S, d.due_hint);
        assert_eq!(d.cap, Lsn(650));
    }

    #[test]
    fn tripwire_holds_delayed_feeds_before_dropping_commits() {
        let (ix, cov) = index();
        let rule = FeedRule {
            delay_us: 5 * S,
            tripwire: true,
        };
        let d = decide(&ix, cov, rule, view(0), Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(500));
        assert!(matches!(&d.reason, Reason::Tripwire { entry } if entry.xid == 5));
        assert_eq!(d.wake_at, None);
        // acknowledged (resume): passes
        let mut v = view(500);
        v.tripwire_acked = Lsn(500);
        let d = decide(&ix, cov, rule, v, Lsn(700), 100 * S, d.due_hint);
        assert_eq!(d.cap, Lsn(650));
        // a feed already past it (e.g. a fresh standby) is not held
        let d = decide(&ix, cov, rule, view(600), Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(650));
        // not for feeds without delay
        let rule0 = FeedRule {
            delay_us: 0,
            tripwire: true,
        };
        let d = decide(&ix, cov, rule0, view(0), Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(700));
        // a not-yet-due commit before the tripwire is reported first
        let d = decide(&ix, cov, rule, view(0), Lsn(700), 16 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(400));
    }

    #[test]
    fn tripwire_stops_before_the_transactions_first_record() {
        let ix = CommitIndex::new();
        let mut drop = e(500, EntryKind::Commit, 13 * S, 5, true);
        drop.first = Lsn(350); // its lock record, before another commit
        ix.push([e(400, EntryKind::Commit, 12 * S, 4, false), drop]);
        let cov = Coverage {
            upto: Lsn(700),
            ..Default::default()
        };
        let rule = FeedRule {
            delay_us: 5 * S,
            tripwire: true,
        };
        // commit 4 not due yet (due 17s) but its cap would pass the lock record at 350
        let d = decide(&ix, cov, rule, view(0), Lsn(700), 16 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(350));
        assert_eq!(d.reason.name(), "tripwire");
    }

    #[test]
    fn pause_and_advance() {
        let (ix, cov) = index();
        let paused = Hold::Paused { at: Lsn(250) };
        let v = FeedView {
            hold: Some(&paused),
            tripwire_acked: Lsn(0),
            sent: Lsn(250),
            gap: None,
        };
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!((d.cap, d.wake_at), (Lsn(250), None));
        assert_eq!(d.reason, Reason::Paused { at: Lsn(250) });
        // the delay still applies below the pause point
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 14 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(100));
        // advance goes past the delay and the tripwire, and stays there
        let adv = Hold::Advanced {
            to: Lsn(500),
            target: "before xid 5".into(),
        };
        let v = FeedView {
            hold: Some(&adv),
            tripwire_acked: Lsn(0),
            sent: Lsn(100),
            gap: None,
        };
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 0, Lsn(0));
        assert_eq!((d.cap, d.wake_at), (Lsn(500), None));
        // ... but never past what walrelay has
        let d = decide(&ix, cov, DELAYED, v, Lsn(450), 0, Lsn(0));
        assert_eq!(d.cap, Lsn(450));
        assert_eq!(d.reason, Reason::CaughtUp);
    }

    #[test]
    fn incremental_hint_matches_full_scan() {
        let (ix, cov) = index();
        let mut hint = Lsn(0);
        for t in 0..40 {
            let now = t * S / 2;
            let inc = decide(&ix, cov, DELAYED, view(0), Lsn(700), now, hint);
            let full = decide(&ix, cov, DELAYED, view(0), Lsn(700), now, Lsn(0));
            assert_eq!(inc.cap, full.cap, "t={now}");
            hint = inc.due_hint;
        }
    }

    #[test]
    fn index_gap_holds_delayed_feeds_at_its_start() {
        let (ix, cov) = index();
        let mut v = view(0);
        v.gap = Some((Lsn(250), Lsn(1000)));
        // everything is due and nothing drops before 250: the gap alone holds
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!((d.cap, d.wake_at), (Lsn(250), None));
        assert_eq!(
            d.reason,
            Reason::IndexGap {
                from: Lsn(250),
                to: Lsn(1000)
            }
        );
        // it holds an advanced feed too (the advance came before the gap)
        let adv = Hold::Advanced {
            to: Lsn(600),
            target: "lsn 0/258".into(),
        };
        v.hold = Some(&adv);
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(250));
        // a commit not due before the gap still comes first
        v.hold = None;
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 14 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(100));
        assert_eq!(d.reason.name(), "delay");
        // a standby already past the gap is not held by it
        let mut past = v;
        past.sent = Lsn(1000);
        let d = decide(&ix, cov, DELAYED, past, Lsn(1200), 100 * S, Lsn(0));
        assert_eq!(d.reason.name(), "caught_up");
        // feeds without delay are not held by it
        let rule0 = FeedRule {
            delay_us: 0,
            tripwire: true,
        };
        let d = decide(&ix, cov, rule0, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(700));
    }

    /// A delayed feed standing before the index's coverage (the index was lost and rebuilt
    /// from later WAL) is held where it stands as an index gap, until the operator
    /// acknowledges up to the coverage start (resume) or advances it.
    #[test]
    fn a_feed_before_the_coverage_is_held_as_an_index_gap() {
        let (ix, mut cov) = index();
        cov.from = Lsn(300);
        let v = view(150);
        let d = decide(&ix, cov, DELAYED, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(150));
        assert_eq!(
            d.reason,
            Reason::IndexGap {
                from: Lsn(150),
                to: Lsn(300)
            }
        );
        assert_eq!(d.wake_at, None);
        // with the tripwire too
        let trip = FeedRule {
            delay_us: 5 * S,
            tripwire: true,
        };
        let d = decide(&ix, cov, trip, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!((d.cap, d.reason.name()), (Lsn(150), "index_gap"));
        // acknowledged up to the coverage start (what resume records): the rules apply again
        let mut acked = v;
        acked.tripwire_acked = Lsn(299);
        let d = decide(&ix, cov, DELAYED, acked, Lsn(700), 100 * S, Lsn(0));
        assert_eq!((d.cap, d.reason.name()), (Lsn(650), "caught_up"));
        // an advance is the operator's explicit decision
        let adv = Hold::Advanced {
            to: Lsn(250),
            target: "lsn 0/FA".into(),
        };
        let mut a = v;
        a.hold = Some(&adv);
        let d = decide(&ix, cov, DELAYED, a, Lsn(700), 100 * S, Lsn(0));
        assert_eq!((d.cap, d.reason.name()), (Lsn(250), "advanced"));
        // a feed at or past the coverage start, and a feed without delay, are not held
        let d = decide(&ix, cov, DELAYED, view(300), Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.reason.name(), "caught_up");
        let rule0 = FeedRule {
            delay_us: 0,
            tripwire: false,
        };
        let d = decide(&ix, cov, rule0, v, Lsn(700), 100 * S, Lsn(0));
        assert_eq!(d.cap, Lsn(700));
    }
}

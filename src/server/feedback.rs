//! Hot-standby feedback aggregation.
//!
//! Owns: the per-session xmin / catalog_xmin reported by downstream standbys (`h` messages)
//! and the minimum of them, published as [`HsFeedback`] on a `watch` channel that the
//! upstream receiver forwards to the primary. Comparisons use 64-bit full transaction ids
//! (`epoch << 32 | xid`), so an epoch wrap never makes an old xmin look new. A session that
//! sends zeros for both (hot_standby_feedback off) or disconnects stops holding anything back;
//! when no session needs feedback the published value is all zeros, which clears the xmin of
//! walrelay's slot on the primary. Must not: talk to sockets.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// What walrelay forwards to the primary as its own hot-standby feedback (the type the
/// upstream receiver consumes).
pub use crate::upstream::receiver::HsFeedback;

/// True when nothing is held back (the primary clears the slot's xmin on zeros).
pub fn is_empty(fb: &HsFeedback) -> bool {
    fb.xmin == 0 && fb.catalog_xmin == 0
}

fn full(xid: u32, epoch: u32) -> Option<u64> {
    // xid 0 (InvalidTransactionId) means "not set" for that field.
    (xid != 0).then(|| (u64::from(epoch) << 32) | u64::from(xid))
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    xmin: Option<u64>,
    catalog_xmin: Option<u64>,
}

/// Per-session feedback and the published minimum.
pub struct FeedbackAggregator {
    sessions: Mutex<HashMap<u64, Entry>>,
    tx: watch::Sender<HsFeedback>,
}

impl FeedbackAggregator {
    pub fn new() -> (FeedbackAggregator, watch::Receiver<HsFeedback>) {
        let (tx, rx) = watch::channel(HsFeedback::default());
        (
            FeedbackAggregator {
                sessions: Mutex::new(HashMap::new()),
                tx,
            },
            rx,
        )
    }

    /// Records a session's `h` message (zeros clear it).
    pub fn update(&self, session: u64, fb: HsFeedback) {
        let entry = Entry {
            xmin: full(fb.xmin, fb.xmin_epoch),
            catalog_xmin: full(fb.catalog_xmin, fb.catalog_xmin_epoch),
        };
        let mut g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if entry.xmin.is_none() && entry.catalog_xmin.is_none() {
            g.remove(&session);
        } else {
            g.insert(session, entry);
        }
        self.publish(&g);
    }

    /// The session ended: it holds nothing back any more.
    pub fn remove(&self, session: u64) {
        let mut g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if g.remove(&session).is_some() {
            self.publish(&g);
        }
    }

    fn publish(&self, g: &HashMap<u64, Entry>) {
        let xmin = g.values().filter_map(|e| e.xmin).min();
        let catalog = g.values().filter_map(|e| e.catalog_xmin).min();
        let split = |v: Option<u64>| v.map_or((0, 0), |v| (v as u32, (v >> 32) as u32));
        let (xmin, xmin_epoch) = split(xmin);
        let (catalog_xmin, catalog_xmin_epoch) = split(catalog);
        let fb = HsFeedback {
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch,
        };
        self.tx.send_if_modified(|cur| {
            if *cur != fb {
                *cur = fb;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(xmin: u32, xe: u32, cx: u32, ce: u32) -> HsFeedback {
        HsFeedback {
            xmin,
            xmin_epoch: xe,
            catalog_xmin: cx,
            catalog_xmin_epoch: ce,
        }
    }

    #[test]
    fn minimum_is_epoch_aware_and_zeros_clear() {
        let (agg, rx) = FeedbackAggregator::new();
        agg.update(1, fb(100, 1, 0, 0));
        // a larger xid in an older epoch is older
        agg.update(2, fb(4_000_000_000, 0, 0, 0));
        assert_eq!(*rx.borrow(), fb(4_000_000_000, 0, 0, 0));
        agg.update(3, fb(0, 0, 50, 2));
        assert_eq!(*rx.borrow(), fb(4_000_000_000, 0, 50, 2));
        agg.remove(2);
        assert_eq!(*rx.borrow(), fb(100, 1, 50, 2));
        agg.update(1, fb(0, 0, 0, 0));
        agg.update(3, fb(0, 7, 0, 7));
        assert_eq!(*rx.borrow(), HsFeedback::default());
        assert!(is_empty(&rx.borrow()));
    }
}

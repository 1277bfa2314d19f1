//! Live reconfiguration of the delayed feeds (SIGHUP reload, `crate::reload`): a feed's
//! `delay` and `tripwire` change in place, for sessions already streaming too (they re-decide
//! at once); adding or removing a feed, or changing which sessions it matches
//! (`application_name`, `slot`, `user`), needs a restart and is only reported.
//!
//! Must not: touch the saved feed state (holds, acknowledged tripwires stay as they are).

use super::{lock, rule_of, FeedController, FeedsConfig};
use crate::config::FeedConfig;

/// What a reload did to the feeds: lines to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Changes applied now.
    pub applied: Vec<String>,
    /// Changes that take effect only after a restart (the old setting stays in force).
    pub needs_restart: Vec<String>,
}

impl FeedController {
    /// Applies the new `[[feed]]` list and `[feeds]` settings where they can change live.
    pub fn reconfigure(&self, new: &[FeedConfig], settings: &FeedsConfig) -> Reconfigured {
        let mut out = Reconfigured::default();
        for n in new {
            if !self.feeds.iter().any(|f| f.cfg.name == n.name) {
                out.needs_restart
                    .push(format!("feed \"{}\" was added: it needs a restart", n.name));
            }
        }
        for f in &self.feeds {
            let Some(n) = new.iter().find(|n| n.name == f.cfg.name) else {
                out.needs_restart.push(format!(
                    "feed \"{}\" was removed: it stays until a restart",
                    f.cfg.name
                ));
                continue;
            };
            if n.app_name() != f.cfg.app_name() || n.slot != f.cfg.slot || n.user != f.cfg.user {
                out.needs_restart.push(format!(
                    "feed \"{}\": application_name, slot or user changed: needs a restart",
                    f.cfg.name
                ));
            }
            let rule = rule_of(n, settings);
            let mut cur = lock(&f.rule);
            if cur.0 != rule || cur.1 != n.delay {
                out.applied.push(format!(
                    "feed \"{}\": delay {} -> {}, tripwire {} -> {}",
                    f.cfg.name,
                    super::humantime(cur.1),
                    super::humantime(n.delay),
                    on_off(cur.0.tripwire),
                    on_off(rule.tripwire)
                ));
                *cur = (rule, n.delay);
            }
        }
        if !out.applied.is_empty() {
            // Streaming sessions wait on this: they re-decide under the new rule now.
            self.control_tx.send_modify(|g| *g = g.wrapping_add(1));
            self.update_min_needed();
        }
        out
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

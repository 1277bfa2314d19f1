//! Delayed feeds: standbys that stream from walrelay normally while walrelay holds the WAL
//! back, so a mistake on the primary (a dropped table) can be stopped before it reaches them.
//!
//! Owns: the commit index built from the stored WAL ([`index`], [`indexer`]), the per-feed
//! policy that turns delay, operator holds and the tripwire into "the highest LSN this session
//! may send" ([`policy`]), the feed controller that sessions register with and operators act
//! on ([`feeds`]), reading transactions back from segment files ([`segments`]) and
//! timestamp text ([`time`]).
//!
//! Must not: write WAL, touch sockets (the walsender asks [`feeds::FeedSession::limit`]), or
//! delete segments (retention reads [`feeds::FeedController::min_needed_lsn`]).
//!
//! | file | owns |
//! |---|---|
//! | [`index`] | `IndexEntry`, the in-memory `CommitIndex`, its append-only file |
//! | [`indexer`] | the task that follows the store's flush position and fills the index |
//! | [`policy`] | pure: cap, reason and next wake-up of one feed |
//! | [`api`] | control-endpoint routes, `walrelay feed` / `walrelay xacts` client side |
//! | [`feeds`] | feed rules, sessions, pause/resume/advance, tripwire, index gaps |
//! | [`group`] | group-wide pause/resume/advance over several feeds, all or nothing |
//! | [`state`] | the persisted feed state (`feeds.json`), read strictly |
//! | [`segments`] | reading segment files, the offline scan behind `walrelay xacts -D` |
//! | [`time`] | formatting/parsing `TimestampTz` |
//!
//! See `docs/delayed-replicas.md`.

pub mod api;
pub mod feeds;
pub mod group;
pub mod index;
pub mod indexer;
pub mod policy;
pub mod segments;
pub mod state;
pub mod time;

pub use feeds::{AdvanceTarget, FeedController, FeedSession};
pub use index::{CommitIndex, EntryKind, IndexEntry};

/// Metric: tripwire holds, labelled by feed.
pub const TRIPWIRE_TOTAL: &str = "walrelay_feed_tripwire_total";
/// Metric: index gaps that hold a feed, labelled by feed.
pub const INDEX_GAP_TOTAL: &str = "walrelay_feed_index_gap_total";
/// Metric: the LSN a feed may send up to (bytes).
pub const FEED_CAP_LSN: &str = "walrelay_feed_send_limit_bytes";
/// Metric: entries in the commit index.
pub const INDEX_ENTRIES: &str = "walrelay_commit_index_entries";

/// Errors of feed control and of the index.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    #[error("no feed named \"{0}\"")]
    NoSuchFeed(String),
    #[error("{0}")]
    Target(String),
    /// A state file that cannot be used (the message says how to recover).
    #[error("{0}")]
    StateFile(String),
    #[error("could not {op} \"{path}\": {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl DelayError {
    /// HTTP status for the admin API.
    pub fn http_status(&self) -> u16 {
        match self {
            DelayError::NoSuchFeed(_) => 404,
            DelayError::Target(_) => 409,
            DelayError::Io { .. } | DelayError::StateFile(_) => 500,
        }
    }
}

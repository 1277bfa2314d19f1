//! Proxy-side physical replication slots.
//!
//! Owns: the slots standbys create on walrelay (`CREATE_REPLICATION_SLOT … PHYSICAL`), their
//! `restart_lsn` (set from the standby's reported flush position, like
//! `PhysicalConfirmReceivedLocation`), which session holds each one, and their persistence in
//! `<data_dir>/slots.json` (through a [`StateFile`]: snapshots are taken under the slot
//! mutex and written by the state writer thread, never while the mutex every standby reply
//! takes is held, and never on an async worker; temporary slots are never persisted and are
//! dropped when their session ends). A `slots.json` that cannot be read stops start-up with
//! a message saying how to recover. Publishes the minimum `restart_lsn` of valid slots on a
//! `watch` channel for WAL retention, and invalidates a slot whose `restart_lsn` falls more
//! than `max_slot_wal_keep_size` behind walrelay's flush position, so a forgotten standby can
//! not fill walrelay's disk. Must not: delete WAL (retention does, reading the watch) or talk
//! to sockets.
//!
//! Declared slots (`[server] slots = [...]`, see docs/ha.md) are created at start if absent,
//! refuse DROP_REPLICATION_SLOT (55000), and are never invalidated. Two horizons are
//! published: [`Slots::load`]'s receiver is the minimum over every valid slot (archive
//! expiry: what a standby may still ask for), and [`Slots::local_floor`] leaves out declared
//! slots that are inactive or more than `max_slot_wal_keep_size` behind (local retention: a
//! declared slot whose standby streams from the other instance of an HA pair must not pin
//! this instance's disk; the WAL it needs is served from the shared archive).

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{codes, SqlState};
use crate::lsn::Lsn;
use crate::statefile::{self, StateFile};

pub const SLOTS_FILE: &str = "slots.json";

/// Errors of slot operations, with PostgreSQL's texts.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("replication slot \"{0}\" does not exist")]
    NotFound(String),
    #[error("replication slot \"{0}\" already exists")]
    Exists(String),
    #[error("replication slot \"{name}\" is active for PID {pid}")]
    Active { name: String, pid: i32 },
    #[error("replication slot name \"{0}\" is too short")]
    NameTooShort(String),
    #[error("replication slot name \"{0}\" is too long")]
    NameTooLong(String),
    #[error("replication slot name \"{0}\" contains invalid character")]
    NameInvalid(String),
    #[error("all replication slots are in use")]
    TooMany,
    #[error("can no longer get changes from replication slot \"{0}\"")]
    Invalidated(String),
    #[error("could not write file \"{path}\": {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("replication slot \"{0}\" is declared in the configuration")]
    Declared(String),
}

impl SlotError {
    pub fn detail(&self) -> Option<String> {
        match self {
            SlotError::Invalidated(_) => Some(
                "This slot has been invalidated because it exceeded the maximum reserved size."
                    .into(),
            ),
            _ => None,
        }
    }
    pub fn hint(&self) -> Option<String> {
        match self {
            SlotError::NameInvalid(_) => Some(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character."
                    .into(),
            ),
            SlotError::TooMany => {
                Some("Free one or increase walrelay's \"max_slots\" setting.".into())
            }
            SlotError::Declared(_) => Some(
                "Remove it from walrelay's [server] slots and restart walrelay to drop it.".into(),
            ),
            _ => None,
        }
    }
}

impl SqlState for SlotError {
    fn sqlstate(&self) -> &'static str {
        match self {
            SlotError::NotFound(_) => codes::UNDEFINED_OBJECT,
            SlotError::Exists(_) => codes::DUPLICATE_OBJECT,
            SlotError::Active { .. } => codes::OBJECT_IN_USE,
            SlotError::NameTooShort(_) | SlotError::NameInvalid(_) => codes::INVALID_NAME,
            SlotError::NameTooLong(_) => "42622",
            SlotError::TooMany => "53400",
            SlotError::Invalidated(_) | SlotError::Declared(_) => codes::OBJECT_NOT_IN_STATE,
            SlotError::Io { .. } | SlotError::Corrupt { .. } => codes::IO_ERROR,
        }
    }
}

/// `ReplicationSlotValidateName`: 1..63 bytes of `[a-z0-9_]`.
pub fn validate_name(name: &str) -> Result<(), SlotError> {
    if name.is_empty() {
        return Err(SlotError::NameTooShort(name.into()));
    }
    if name.len() >= 64 {
        return Err(SlotError::NameTooLong(name.into()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SlotError::NameInvalid(name.into()));
    }
    Ok(())
}

/// A slot as shown to commands and the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotView {
    pub name: String,
    pub temporary: bool,
    #[serde(serialize_with = "super::status::ser_opt_lsn")]
    pub restart_lsn: Option<Lsn>,
    pub invalidated: bool,
    pub active_pid: Option<i32>,
    /// Declared in `[server] slots` (created at start, never dropped by a client).
    pub declared: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    temporary: bool,
    /// Session that created a temporary slot (it is dropped when that session ends).
    owner: Option<u64>,
    restart_lsn: Option<Lsn>,
    invalidated: bool,
    active: Option<(u64, i32)>,
    /// Named in `[server] slots` (from the configuration, not from `slots.json`).
    declared: bool,
    /// A declared slot more than `max_slot_wal_keep_size` behind: it no longer holds local
    /// WAL (declared slots are never invalidated).
    capped: bool,
}

#[derive(Serialize, Deserialize)]
struct FileSlot {
    name: String,
    restart_lsn: Option<String>,
    #[serde(default)]
    invalidated: bool,
}

#[derive(Serialize, Deserialize)]
struct FileData {
    version: u32,
    slots: Vec<FileSlot>,
}

struct Inner {
    slots: BTreeMap<String, Slot>,
    dirty: bool,
}

/// The slot table. Shared by all sessions.
pub struct Slots {
    path: PathBuf,
    file: StateFile,
    max_slots: usize,
    max_keep: Option<u64>,
    inner: Mutex<Inner>,
    min_tx: watch::Sender<Option<Lsn>>,
    local_tx: watch::Sender<Option<Lsn>>,
}

impl Slots {
    /// Loads `<dir>/slots.json` (none yet: no slots).
    pub fn load(
        dir: &Path,
        max_slots: usize,
        max_keep: Option<u64>,
    ) -> Result<(Slots, watch::Receiver<Option<Lsn>>), SlotError> {
        let path = dir.join(SLOTS_FILE);
        let slots = read_file(&path)?;
        let (min_tx, min_rx) = watch::channel(None);
        let (local_tx, _) = watch::channel(None);
        let s = Slots {
            file: StateFile::new(&path),
            path,
            max_slots,
            max_keep,
            inner: Mutex::new(Inner {
                slots,
                dirty: false,
            }),
            min_tx,
            local_tx,
        };
        {
            let g = s.lock();
            s.publish(&g);
        }
        Ok((s, min_rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The horizon for local retention (see the module docs): changes when a slot moves,
    /// and when a declared slot becomes active or inactive.
    pub fn local_floor(&self) -> watch::Receiver<Option<Lsn>> {
        self.local_tx.subscribe()
    }

    fn publish(&self, g: &Inner) {
        let restart = |s: &Slot| s.restart_lsn.filter(|l| l.is_valid());
        let valid = || g.slots.values().filter(|s| !s.invalidated);
        let min = valid().filter_map(restart).min();
        let local = valid()
            .filter(|s| !s.declared || (s.active.is_some() && !s.capped))
            .filter_map(restart)
            .min();
        for (tx, v) in [(&self.min_tx, min), (&self.local_tx, local)] {
            tx.send_if_modified(|cur| {
                if *cur != v {
                    *cur = v;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Creates the slots declared in `[server] slots` that do not exist yet (persistent, no
    /// WAL reserved: `restart_lsn` is set by the standby's first reply) and marks every
    /// declared one, so that a client cannot drop it and the cap does not invalidate it. A
    /// declared slot that `slots.json` has as invalidated (by an earlier run, before it was
    /// declared) is made valid again with no `restart_lsn`. Durable before it returns.
    pub async fn declare(&self, names: &[String]) -> Result<Vec<String>, SlotError> {
        let (created, ticket) = {
            let mut g = self.lock();
            let mut created = Vec::new();
            let mut changed = false;
            for name in names {
                validate_name(name)?;
                if let Some(s) = g.slots.get_mut(name) {
                    if s.temporary {
                        return Err(SlotError::Exists(name.clone()));
                    }
                    s.declared = true;
                    if s.invalidated {
                        s.invalidated = false;
                        s.restart_lsn = None;
                        changed = true;
                    }
                    continue;
                }
                if g.slots.len() >= self.max_slots {
                    return Err(SlotError::TooMany);
                }
                g.slots.insert(
                    name.clone(),
                    Slot {
                        temporary: false,
                        owner: None,
                        restart_lsn: None,
                        invalidated: false,
                        active: None,
                        declared: true,
                        capped: false,
                    },
                );
                created.push(name.clone());
                changed = true;
            }
            self.publish(&g);
            (created, changed.then(|| self.submit(&g)))
        };
        if let Some(t) = ticket {
            t.wait().await.map_err(|e| self.io_error(e))?;
        }
        Ok(created)
    }

    /// Hands a snapshot of the persistent slots to the writer thread (called with the
    /// mutex held, so snapshots reach the writer in order; no IO happens here).
    fn submit(&self, g: &Inner) -> statefile::Ticket {
        let data = FileData {
            version: 1,
            slots: g
                .slots
                .iter()
                .filter(|(_, s)| !s.temporary)
                .map(|(n, s)| FileSlot {
                    name: n.clone(),
                    restart_lsn: s.restart_lsn.map(|l| l.to_string()),
                    invalidated: s.invalidated,
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&data).unwrap_or_default();
        text.push(b'\n');
        self.file.submit(text)
    }

    fn io_error(&self, source: std::io::Error) -> SlotError {
        SlotError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// CREATE_REPLICATION_SLOT … PHYSICAL. A persistent slot is durable in `slots.json`
    /// before this returns, as PostgreSQL persists a new slot before answering; the mutex is
    /// not held while waiting for the write.
    pub async fn create(
        &self,
        name: &str,
        temporary: bool,
        restart_lsn: Option<Lsn>,
        session: u64,
    ) -> Result<(), SlotError> {
        let Some(ticket) = self.create_now(name, temporary, restart_lsn, session)? else {
            return Ok(());
        };
        if let Err(e) = ticket.wait().await {
            let mut g = self.lock();
            if g.slots.get(name).is_some_and(|s| !s.temporary) {
                g.slots.remove(name);
                g.dirty = true;
            }
            self.publish(&g);
            return Err(self.io_error(e));
        }
        Ok(())
    }

    fn create_now(
        &self,
        name: &str,
        temporary: bool,
        restart_lsn: Option<Lsn>,
        session: u64,
    ) -> Result<Option<statefile::Ticket>, SlotError> {
        validate_name(name)?;
        let mut g = self.lock();
        if g.slots.contains_key(name) {
            return Err(SlotError::Exists(name.into()));
        }
        if g.slots.len() >= self.max_slots {
            return Err(SlotError::TooMany);
        }
        g.slots.insert(
            name.into(),
            Slot {
                temporary,
                owner: temporary.then_some(session),
                restart_lsn,
                invalidated: false,
                active: None,
                declared: false,
                capped: false,
            },
        );
        self.publish(&g);
        Ok((!temporary).then(|| self.submit(&g)))
    }

    /// DROP_REPLICATION_SLOT (without WAIT: an active slot is an error). Durable before it
    /// returns, like [`Slots::create`].
    pub async fn drop_slot(&self, name: &str, session: u64) -> Result<(), SlotError> {
        let Some(ticket) = self.drop_now(name, session)? else {
            return Ok(());
        };
        if let Err(e) = ticket.wait().await {
            // written again by the next persist_if_dirty
            self.lock().dirty = true;
            return Err(self.io_error(e));
        }
        Ok(())
    }

    fn drop_now(&self, name: &str, session: u64) -> Result<Option<statefile::Ticket>, SlotError> {
        let mut g = self.lock();
        let slot = g
            .slots
            .get(name)
            .ok_or_else(|| SlotError::NotFound(name.into()))?;
        if slot.declared {
            return Err(SlotError::Declared(name.into()));
        }
        if let Some((sess, pid)) = slot.active {
            if sess != session {
                return Err(SlotError::Active {
                    name: name.into(),
                    pid,
                });
            }
        }
        let temporary = slot.temporary;
        g.slots.remove(name);
        self.publish(&g);
        Ok((!temporary).then(|| self.submit(&g)))
    }

    /// Whether `name` is held by another session (for DROP … WAIT).
    pub fn is_active(&self, name: &str) -> bool {
        self.lock()
            .slots
            .get(name)
            .is_some_and(|s| s.active.is_some())
    }

    /// START_REPLICATION SLOT: marks the slot active for this session.
    pub fn acquire(&self, name: &str, session: u64, pid: i32) -> Result<SlotView, SlotError> {
        let mut g = self.lock();
        let slot = g
            .slots
            .get_mut(name)
            .ok_or_else(|| SlotError::NotFound(name.into()))?;
        if let Some((sess, apid)) = slot.active {
            if sess != session {
                return Err(SlotError::Active {
                    name: name.into(),
                    pid: apid,
                });
            }
        }
        if slot.invalidated {
            return Err(SlotError::Invalidated(name.into()));
        }
        slot.active = Some((session, pid));
        let v = view(name, slot);
        self.publish(&g);
        Ok(v)
    }

    pub fn release(&self, name: &str, session: u64) {
        let mut g = self.lock();
        if let Some(s) = g.slots.get_mut(name) {
            if s.active.is_some_and(|(sess, _)| sess == session) {
                s.active = None;
            }
        }
        self.publish(&g);
    }

    /// The session ended: release its slots and drop its temporary ones.
    pub fn session_ended(&self, session: u64) {
        let mut g = self.lock();
        g.slots.retain(|_, s| s.owner != Some(session));
        for s in g.slots.values_mut() {
            if s.active.is_some_and(|(sess, _)| sess == session) {
                s.active = None;
            }
        }
        self.publish(&g);
    }

    /// The standby reported `flush`: it becomes the slot's `restart_lsn` (even backwards,
    /// as PostgreSQL does). Persisted later by [`Slots::persist_if_dirty`].
    pub fn confirm_flush(&self, name: &str, flush: Lsn) {
        if !flush.is_valid() {
            return;
        }
        let mut g = self.lock();
        let Some(s) = g.slots.get_mut(name) else {
            return;
        };
        if s.invalidated || s.restart_lsn == Some(flush) {
            return;
        }
        s.restart_lsn = Some(flush);
        let temporary = s.temporary;
        if !temporary {
            g.dirty = true;
        }
        self.publish(&g);
    }

    pub fn get(&self, name: &str) -> Option<SlotView> {
        self.lock().slots.get(name).map(|s| view(name, s))
    }

    pub fn list(&self) -> Vec<SlotView> {
        self.lock().slots.iter().map(|(n, s)| view(n, s)).collect()
    }

    /// Invalidates slots more than `max_slot_wal_keep_size` behind `flush`. Returns the
    /// names invalidated.
    pub fn enforce_cap(&self, flush: Lsn) -> Vec<String> {
        let Some(cap) = self.max_keep else {
            return Vec::new();
        };
        let mut g = self.lock();
        let mut hit = Vec::new();
        let mut capped_changed = false;
        for (name, s) in g.slots.iter_mut() {
            let behind = s.restart_lsn.is_some_and(|r| flush.saturating_sub(r) > cap);
            if s.declared {
                // never invalidated: it only stops holding local WAL
                capped_changed |= s.capped != behind;
                s.capped = behind;
            } else if behind && !s.invalidated {
                s.invalidated = true;
                s.restart_lsn = None;
                hit.push(name.clone());
            }
        }
        if !hit.is_empty() {
            g.dirty = true;
        }
        if !hit.is_empty() || capped_changed {
            self.publish(&g);
        }
        hit
    }

    /// Hands `slots.json` to the state writer if a persistent slot moved since the last
    /// write (or the last write failed). Returns at once: no IO, and the mutex is held only
    /// to take the snapshot.
    pub fn persist_if_dirty(&self) -> Result<(), SlotError> {
        let mut g = self.lock();
        if !g.dirty && self.file.last_error().is_none() {
            return Ok(());
        }
        self.submit(&g);
        g.dirty = false;
        Ok(())
    }

    fn snapshot_now(&self) -> statefile::Ticket {
        let mut g = self.lock();
        g.dirty = false;
        self.submit(&g)
    }

    /// Writes the current slots and waits until they are durable (shutdown).
    pub async fn sync(&self) -> Result<(), SlotError> {
        let ticket = self.snapshot_now();
        ticket.wait().await.map_err(|e| self.io_error(e))
    }
}

/// Reads `slots.json` (none: no slots); anything unusable is an error that says how to
/// recover.
fn read_file(path: &Path) -> Result<BTreeMap<String, Slot>, SlotError> {
    let corrupt = |problem: String| SlotError::Corrupt {
        path: path.to_path_buf(),
        message: statefile::corrupt_message(
            path,
            &problem,
            "remove it to start without walrelay's replication slots: standbys that use one \
             then fail with \"replication slot ... does not exist\" until it is created again, \
             and the WAL the slots held back is no longer protected from retention",
        ),
    };
    let mut slots = BTreeMap::new();
    let bytes = match statefile::read(path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(slots),
        Err(e) => return Err(corrupt(format!("could not read it: {e}"))),
    };
    let data: FileData =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    if data.version != 1 {
        return Err(corrupt(format!("unknown version {}", data.version)));
    }
    for s in data.slots {
        validate_name(&s.name).map_err(|e| corrupt(e.to_string()))?;
        let restart_lsn = match &s.restart_lsn {
            Some(t) => Some(t.parse::<Lsn>().map_err(|e| {
                corrupt(format!("slot \"{}\": invalid restart_lsn: {}", s.name, e.0))
            })?),
            None => None,
        };
        if slots
            .insert(
                s.name.clone(),
                Slot {
                    temporary: false,
                    owner: None,
                    restart_lsn,
                    invalidated: s.invalidated,
                    active: None,
                    declared: false,
                    capped: false,
                },
            )
            .is_some()
        {
            return Err(corrupt(format!("slot \"{}\" appears twice", s.name)));
        }
    }
    Ok(slots)
}

fn view(name: &str, s: &Slot) -> SlotView {
    SlotView {
        name: name.into(),
        temporary: s.temporary,
        restart_lsn: s.restart_lsn,
        invalidated: s.invalidated,
        active_pid: s.active.map(|(_, p)| p),
        declared: s.declared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle_persistence_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (slots, min) = Slots::load(dir.path(), 3, Some(1000)).unwrap();
        assert!(matches!(
            slots.create("Bad", false, None, 1).await,
            Err(SlotError::NameInvalid(_))
        ));
        slots.create("s1", false, Some(Lsn(5000)), 1).await.unwrap();
        slots.create("t1", true, Some(Lsn(4000)), 1).await.unwrap();
        assert_eq!(*min.borrow(), Some(Lsn(4000)));
        assert!(matches!(
            slots.create("s1", false, None, 2).await,
            Err(SlotError::Exists(_))
        ));
        slots.acquire("s1", 2, 42).unwrap();
        let e = slots.drop_slot("s1", 3).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "replication slot \"s1\" is active for PID 42"
        );
        assert_eq!(e.sqlstate(), "55006");
        slots.confirm_flush("s1", Lsn(6000));
        slots.session_ended(1); // drops t1
        assert_eq!(*min.borrow(), Some(Lsn(6000)));
        slots.persist_if_dirty().unwrap();
        slots.sync().await.unwrap();
        let (again, min2) = Slots::load(dir.path(), 3, Some(1000)).unwrap();
        assert_eq!(again.get("s1").unwrap().restart_lsn, Some(Lsn(6000)));
        assert!(again.get("t1").is_none());
        assert_eq!(*min2.borrow(), Some(Lsn(6000)));
        assert_eq!(again.enforce_cap(Lsn(7001)), vec!["s1".to_string()]);
        assert_eq!(*min2.borrow(), None);
        assert!(matches!(
            again.acquire("s1", 9, 1),
            Err(SlotError::Invalidated(_))
        ));
        again.drop_slot("s1", 9).await.unwrap();
        assert!(matches!(
            again.drop_slot("s1", 9).await,
            Err(SlotError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn declared_slots_survive_drop_restart_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["standby1".to_string(), "standby2".to_string()];
        {
            let (slots, min) = Slots::load(dir.path(), 8, Some(1000)).unwrap();
            let local = slots.local_floor();
            assert_eq!(slots.declare(&names).await.unwrap(), names);
            let v = slots.get("standby1").unwrap();
            assert!(v.declared && !v.temporary && v.restart_lsn.is_none());
            // a client cannot drop it: PostgreSQL-like text, 55000
            let e = slots.drop_slot("standby1", 1).await.unwrap_err();
            assert_eq!(
                e.to_string(),
                "replication slot \"standby1\" is declared in the configuration"
            );
            assert_eq!(e.sqlstate(), "55000");
            assert!(e.hint().unwrap().contains("[server] slots"));
            // active: holds local WAL and the archive; inactive: only the archive
            slots.acquire("standby1", 2, 77).unwrap();
            slots.confirm_flush("standby1", Lsn(5000));
            assert_eq!(*min.borrow(), Some(Lsn(5000)));
            assert_eq!(*local.borrow(), Some(Lsn(5000)));
            slots.session_ended(2);
            assert_eq!(*min.borrow(), Some(Lsn(5000)));
            assert_eq!(*local.borrow(), None);
            // an ordinary slot still holds local WAL while inactive
            slots
                .create("plain", false, Some(Lsn(6000)), 3)
                .await
                .unwrap();
            assert_eq!(*local.borrow(), Some(Lsn(6000)));
            // far behind: the declared slot is not invalidated, the plain one is
            slots.acquire("standby1", 4, 78).unwrap();
            assert_eq!(*local.borrow(), Some(Lsn(5000)));
            assert_eq!(slots.enforce_cap(Lsn(7001)), vec!["plain".to_string()]);
            let v = slots.get("standby1").unwrap();
            assert!(!v.invalidated && v.restart_lsn == Some(Lsn(5000)));
            assert_eq!(
                *local.borrow(),
                None,
                "a capped declared slot holds no local WAL"
            );
            assert_eq!(*min.borrow(), Some(Lsn(5000)));
            slots.confirm_flush("standby1", Lsn(7000));
            assert!(slots.enforce_cap(Lsn(7001)).is_empty());
            assert_eq!(*local.borrow(), Some(Lsn(7000)));
            slots.session_ended(4);
            slots.sync().await.unwrap();
        }
        // restart: the file keeps the position; declaring again creates nothing
        let (again, min) = Slots::load(dir.path(), 8, Some(1000)).unwrap();
        assert!(
            !again.get("standby1").unwrap().declared,
            "declared-ness is config"
        );
        assert!(again.declare(&names).await.unwrap().is_empty());
        assert_eq!(again.get("standby1").unwrap().restart_lsn, Some(Lsn(7000)));
        assert_eq!(*min.borrow(), Some(Lsn(7000)));
        // taken out of the configuration: an ordinary slot, droppable
        let (third, _) = Slots::load(dir.path(), 8, Some(1000)).unwrap();
        third.declare(&names[1..]).await.unwrap();
        third.drop_slot("standby1", 9).await.unwrap();
        assert!(matches!(
            third.drop_slot("standby2", 9).await,
            Err(SlotError::Declared(_))
        ));
        // bad names and too many are start-up errors
        let (small, _) = Slots::load(tempfile::tempdir().unwrap().path(), 1, None).unwrap();
        assert!(matches!(
            small.declare(&["Bad".to_string()]).await,
            Err(SlotError::NameInvalid(_))
        ));
        assert!(matches!(
            small.declare(&names).await,
            Err(SlotError::TooMany)
        ));
    }
}

//! The in-memory tail of recent WAL, shared by every walsender without copying.
//!
//! Owns: a bounded run of contiguous `(start, Bytes)` chunks of the current timeline, as the
//! store wrote them. Readers get `Bytes` slices (reference-counted, no copy per standby).
//! Only the store thread pushes; readers must still bound what they send by `flush_lsn`.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::VecDeque;
use std::sync::RwLock;

use bytes::Bytes;

use crate::lsn::{Lsn, TimelineId};

#[derive(Default)]
struct Inner {
    tli: TimelineId,
    chunks: VecDeque<(Lsn, Bytes)>,
    bytes: usize,
}

pub struct Tail {
    cap: usize,
    inner: RwLock<Inner>,
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail {
            cap,
            inner: RwLock::new(Inner::default()),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A new timeline: forget everything.
    pub fn reset(&self, tli: TimelineId) {
        let mut g = self.write();
        g.tli = tli;
        g.chunks.clear();
        g.bytes = 0;
    }

    /// Writing restarts at `start`: drop chunks unless they end exactly there.
    pub fn restart_at(&self, start: Lsn) {
        let mut g = self.write();
        let contiguous = g
            .chunks
            .back()
            .is_some_and(|(s, b)| s.0.checked_add(b.len() as u64) == Some(start.0));
        if !contiguous {
            g.chunks.clear();
            g.bytes = 0;
        }
    }

    pub fn push(&self, start: Lsn, data: Bytes) {
        if self.cap == 0 || data.is_empty() {
            return;
        }
        let mut g = self.write();
        if let Some((s, b)) = g.chunks.back() {
            if s.0.checked_add(b.len() as u64) != Some(start.0) {
                g.chunks.clear();
                g.bytes = 0;
            }
        }
        g.bytes = g.bytes.saturating_add(data.len());
        g.chunks.push_back((start, data));
        while g.bytes > self.cap && g.chunks.len() > 1 {
            if let Some((_, b)) = g.chunks.pop_front() {
                g.bytes = g.bytes.saturating_sub(b.len());
            }
        }
    }

    /// WAL of timeline `tli` starting exactly at `from`, at most `max` bytes, never past
    /// `upto`. `None` when the tail does not hold `from` (read the files instead).
    pub fn get(&self, tli: TimelineId, from: Lsn, upto: Lsn, max: usize) -> Option<Bytes> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.tli != tli || from >= upto {
            return None;
        }
        let first = g.chunks.front()?.0;
        if from < first {
            return None;
        }
        // Chunks are contiguous and sorted: binary search the one holding `from`.
        let idx = g
            .chunks
            .partition_point(|(s, _)| *s <= from)
            .checked_sub(1)?;
        let (s, b) = g.chunks.get(idx)?;
        // `s <= from` (partition_point above).
        let off = usize::try_from(from.0.checked_sub(s.0)?).ok()?;
        if off >= b.len() {
            return None;
        }
        // `off < b.len()` and `from < upto` (checked above).
        let avail = b
            .len()
            .saturating_sub(off)
            .min(max)
            .min(usize::try_from(upto.0.saturating_sub(from.0)).unwrap_or(usize::MAX));
        Some(b.slice(off..off.saturating_add(avail)))
    }

    /// The oldest position held, if any.
    pub fn start(&self) -> Option<Lsn> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.chunks.front().map(|(s, _)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_bounds() {
        let t = Tail::new(10);
        t.reset(1);
        t.push(Lsn(100), Bytes::from_static(b"abcd"));
        t.push(Lsn(104), Bytes::from_static(b"efgh"));
        assert_eq!(
            t.get(1, Lsn(102), Lsn(200), 100).unwrap(),
            Bytes::from_static(b"cd")
        );
        assert_eq!(
            t.get(1, Lsn(104), Lsn(106), 100).unwrap(),
            Bytes::from_static(b"ef")
        );
        assert_eq!(t.get(1, Lsn(99), Lsn(200), 100), None);
        assert_eq!(t.get(1, Lsn(108), Lsn(200), 100), None);
        assert_eq!(t.get(2, Lsn(104), Lsn(200), 100), None);
        // over the cap: the oldest chunk goes
        t.push(Lsn(108), Bytes::from_static(b"ijkl"));
        assert_eq!(t.start(), Some(Lsn(104)));
        // a gap resets
        t.push(Lsn(200), Bytes::from_static(b"zz"));
        assert_eq!(t.start(), Some(Lsn(200)));
    }
}

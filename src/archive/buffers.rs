//! Reusable segment-sized buffers for uploads.
//!
//! An upload holds its whole object in memory (a create-if-absent PUT must be re-sendable on
//! retry), so the archiver needs one segment-sized buffer per upload in flight. Allocating and
//! freeing a fresh 16 MB buffer per segment from several threads made glibc's allocator keep
//! freed buffers in per-thread arenas (its mmap threshold rises to the size of the first large
//! buffer freed, after which such buffers come from arenas that are rarely returned to the
//! system): walrelay's peak RSS tripled during bulk archiving. The pool allocates buffers once
//! and hands them out again: at most `keep` idle buffers are kept, so memory stays bounded by
//! the buffers in use plus `keep`, whatever the WAL volume.
//!
//! Owns: the idle buffers. A buffer frozen into [`Bytes`] with [`BufferPool::freeze`] goes
//! back to the pool when the last clone of those bytes is dropped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A pool of byte buffers of (at least) one capacity.
#[derive(Clone, Debug)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    keep: usize,
    idle: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// Buffers of `capacity` bytes; at most `keep` idle ones are kept for reuse.
    pub fn new(capacity: usize, keep: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(Inner {
                capacity,
                keep,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Capacity of the buffers handed out.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// An empty buffer with at least [`BufferPool::capacity`] bytes of capacity: an idle one,
    /// or a new one.
    pub fn get(&self) -> Vec<u8> {
        let reused = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(self.inner.capacity),
        }
    }

    /// Returns `buf` to the pool (or frees it when enough are idle, or when it is not one of
    /// the pool's size).
    pub fn put(&self, buf: Vec<u8>) {
        if buf.capacity() < self.inner.capacity {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.inner.keep {
            idle.push(buf);
        }
    }

    /// `buf` as [`Bytes`] without copying; the buffer returns to the pool when the last clone
    /// is dropped.
    pub fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// Idle buffers (for tests).
    pub fn idle(&self) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let pool = BufferPool::new(1000, 2);
        let a = pool.get();
        assert!(a.capacity() >= 1000);
        let ptr = a.as_ptr();
        let mut a = a;
        a.extend_from_slice(b"hello");
        let bytes = pool.freeze(a);
        let clone = bytes.clone();
        assert_eq!(&bytes[..], b"hello");
        drop(bytes);
        assert_eq!(pool.idle(), 0, "still referenced by a clone");
        drop(clone);
        assert_eq!(pool.idle(), 1);
        let b = pool.get();
        assert_eq!(b.as_ptr(), ptr, "the idle buffer is handed out again");
        assert!(b.is_empty());
        // at most `keep` idle buffers
        let bufs: Vec<Vec<u8>> = (0..5).map(|_| pool.get()).collect();
        for x in bufs {
            pool.put(x);
        }
        assert_eq!(pool.idle(), 2);
        // foreign (smaller) buffers are not kept
        let pool = BufferPool::new(1000, 2);
        pool.put(Vec::with_capacity(10));
        assert_eq!(pool.idle(), 0);
    }
}

//! How the bytes of an open (uncompressed) segment reach the disk: O_DIRECT writes from an
//! aligned buffer in whole WAL pages, or buffered writes with early writeback where O_DIRECT
//! is refused.
//!
//! Owns: [`SegmentFile`], the file handles of the open segment, its aligned staging buffer
//! and the choice between the two write paths. Must not: know about WAL contents, positions
//! or renames (the store decides what is written where and when it must be durable).
//!
//! **Direct path** (the default where the filesystem accepts `O_DIRECT`): written bytes are
//! copied into a page-aligned buffer of [`BUF_BYTES`]; a full buffer goes to the file with one
//! `pwrite` on the `O_DIRECT` descriptor. [`SegmentFile::sync_data`] writes what the buffer
//! holds in whole [`PAGE`]s — the open page padded to its end — and then `fdatasync`s; the
//! open page stays in the buffer and is written again, fuller, at the next sync, as
//! PostgreSQL's `XLogWrite` re-writes its partial last page (with `debug_io_direct=wal`
//! too). The padding is zeros in a segment this store created (the file was reserved with
//! fallocate or zero-filled, so zeros are what it held there), and the file's own bytes in a
//! segment that existed before (a `.partial` being re-received: bytes past the re-received
//! position are still the durable WAL of before, read into the buffer before a page is first
//! touched), so a sync never makes the file hold less than it did. Nothing goes through the
//! page cache: no copy into it, no reclaim of it, and the O_DIRECT write invalidates cached
//! pages of the range, so buffered readers (walsenders, the archiver) read the disk's bytes.
//! `O_DIRECT` is not `O_DSYNC`: the device's cache and the metadata that makes written blocks
//! readable (the fallocated, unwritten extents turned written) become durable only with the
//! `fdatasync`, which is why every sync still ends with one.
//!
//! **Buffered path** (tmpfs and other filesystems that refuse `O_DIRECT` with EINVAL at open
//! or at the first write): bytes are written at once with `pwrite`; every [`WRITEBACK_BYTES`]
//! written start their writeback (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, asynchronous),
//! so dirty pages do not pile up until the fsync, and after each `fdatasync` the durable
//! pages are dropped from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`).

// Works with file offsets from the store: no panics from indexing or overflow.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// XLOG_BLCKSZ: the unit of direct writes (a multiple of every logical block size O_DIRECT
/// asks alignment to).
pub const PAGE: usize = 8192;
/// The staging buffer of the direct path: one `pwrite` per this many bytes of a stream.
pub const BUF_BYTES: usize = 1 << 20;
/// Buffered path: start writeback every this many bytes written.
pub const WRITEBACK_BYTES: u64 = 1 << 20;
/// Alignment of the buffer's memory (O_DIRECT wants the logical block size, 512 or 4096).
const ALIGN: usize = 4096;

fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE).saturating_mul(PAGE)
}

fn round_down(n: usize) -> usize {
    n.checked_rem(PAGE).map_or(n, |r| n.saturating_sub(r))
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// A page-aligned run of [`BUF_BYTES`] inside an over-allocated vector (never resized, so the
/// aligned start never moves).
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
}

thread_local! {
    /// The last segment's buffer, reused by the next one on the store thread (no new
    /// allocation and page faults per segment).
    static SPARE: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

impl AlignedBuf {
    /// The thread's spare buffer (stale bytes: every user tracks what it filled) or a new one.
    fn take() -> AlignedBuf {
        SPARE
            .with(|s| s.borrow_mut().take())
            .unwrap_or_else(AlignedBuf::new)
    }
    fn give_back(self) {
        SPARE.with(|s| *s.borrow_mut() = Some(self));
    }
    fn new() -> AlignedBuf {
        let mem = vec![0u8; BUF_BYTES.saturating_add(ALIGN)];
        let addr = mem.as_ptr() as usize;
        let start = addr
            .checked_rem(ALIGN)
            .map_or(0, |r| ALIGN.saturating_sub(r) % ALIGN);
        AlignedBuf { mem, start }
    }
    fn get(&self) -> &[u8] {
        self.mem
            .get(self.start..self.start.saturating_add(BUF_BYTES))
            .unwrap_or(&[])
    }
    fn get_mut(&mut self) -> &mut [u8] {
        let s = self.start;
        self.mem
            .get_mut(s..s.saturating_add(BUF_BYTES))
            .unwrap_or(&mut [])
    }
}

/// The direct path's state: `buf[..len]` is WAL for the file at `base..base + len` not yet
/// written to it (or written and kept: the open page); `buf[..filled]` reflects what the file
/// holds or will hold (with `prefill`).
struct Direct {
    fd: File,
    buf: AlignedBuf,
    /// File offset of `buf[0]`, a multiple of [`PAGE`].
    base: u64,
    len: usize,
    /// Bytes of the buffer read from the file (prefill) or written from it.
    filled: usize,
    /// The file existed before: pages are read from it before they are first written, so
    /// padding keeps its bytes. Otherwise padding is zeros.
    prefill: bool,
    /// File length: reads never go past it.
    file_len: u64,
    /// End of what this handle has written to the file.
    high: u64,
}

impl Drop for Direct {
    fn drop(&mut self) {
        std::mem::replace(
            &mut self.buf,
            AlignedBuf {
                mem: Vec::new(),
                start: 0,
            },
        )
        .give_back();
    }
}

impl Direct {
    /// Reads the file's bytes into `buf[filled..upto]` (zeros past its end).
    fn fill_to(&mut self, upto: usize) -> io::Result<()> {
        let upto = upto.min(BUF_BYTES);
        if self.filled >= upto {
            return Ok(());
        }
        let at = self.base.saturating_add(to_u64(self.filled));
        let avail = usize::try_from(self.file_len.saturating_sub(at)).unwrap_or(usize::MAX);
        let want = upto.saturating_sub(self.filled);
        let n = round_up(want.min(avail));
        let filled = self.filled;
        let buf = self.buf.get_mut();
        let dst = buf
            .get_mut(filled..filled.saturating_add(n))
            .ok_or_else(|| invalid("direct read past the buffer"))?;
        let mut got = 0usize;
        while got < dst.len() {
            let rest = dst.get_mut(got..).unwrap_or(&mut []);
            match self.fd.read_at(rest, at.saturating_add(to_u64(got))) {
                Ok(0) => break,
                Ok(k) => got = got.saturating_add(k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(rest) = buf.get_mut(filled.saturating_add(got)..upto) {
            rest.fill(0);
        }
        self.filled = upto;
        Ok(())
    }

    /// Writes `buf[..n]` (a multiple of [`PAGE`]) at `base`.
    fn write_out(&self, n: usize) -> io::Result<()> {
        let data = self
            .buf
            .get()
            .get(..n)
            .ok_or_else(|| invalid("direct write past the buffer"))?;
        if refuse::at_write() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.fd.write_all_at(data, self.base)
    }

    /// The buffer restarts at `offset`: its page's bytes before `offset` come from the file.
    /// Below bytes already written, padding must be the file's bytes from now on.
    fn restart_at(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.high {
            self.prefill = true;
        }
        let in_page = offset
            .checked_rem(to_u64(PAGE))
            .and_then(|r| usize::try_from(r).ok())
            .unwrap_or(0);
        self.base = offset.saturating_sub(to_u64(in_page));
        self.len = 0;
        self.filled = 0;
        if in_page > 0 || self.prefill {
            self.fill_to(PAGE)?;
        }
        self.len = in_page;
        Ok(())
    }

    fn write_at(&mut self, mut data: &[u8], offset: u64) -> io::Result<()> {
        if offset != self.base.saturating_add(to_u64(self.len)) {
            self.flush()?;
            self.restart_at(offset)?;
        }
        while !data.is_empty() {
            let room = BUF_BYTES.saturating_sub(self.len);
            let n = room.min(data.len());
            let end = self.len.saturating_add(n);
            if self.prefill {
                self.fill_to(round_up(end))?;
            }
            let (now, rest) = data.split_at(n);
            let len = self.len;
            self.buf
                .get_mut()
                .get_mut(len..end)
                .ok_or_else(|| invalid("direct write past the buffer"))?
                .copy_from_slice(now);
            self.len = end;
            data = rest;
            if self.len == BUF_BYTES {
                self.write_out(BUF_BYTES)?;
                self.high = self.high.max(self.base.saturating_add(to_u64(BUF_BYTES)));
                self.base = self.base.saturating_add(to_u64(BUF_BYTES));
                self.len = 0;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes everything held, the open page padded; keeps the open page for the next time.
    fn flush(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let end = round_up(self.len);
        if self.prefill {
            self.fill_to(end)?;
        } else {
            let len = self.len;
            if let Some(pad) = self.buf.get_mut().get_mut(len..end) {
                pad.fill(0);
            }
        }
        self.write_out(end)?;
        self.high = self.high.max(self.base.saturating_add(to_u64(end)));
        let keep_from = round_down(self.len);
        if keep_from < self.len {
            // the open page moves to the front, with its padding
            self.buf
                .get_mut()
                .copy_within(keep_from..keep_from.saturating_add(PAGE), 0);
            self.filled = PAGE;
        } else {
            self.filled = 0;
        }
        self.base = self.base.saturating_add(to_u64(keep_from));
        self.len = self.len.saturating_sub(keep_from);
        Ok(())
    }

    /// Lays the bytes held over `out`, read from the file at `offset`.
    fn overlay(&self, offset: u64, out: &mut [u8]) {
        let held_end = self.base.saturating_add(to_u64(self.len));
        let end = offset.saturating_add(to_u64(out.len()));
        let lo = offset.max(self.base);
        let hi = end.min(held_end);
        if lo >= hi {
            return;
        }
        let (Ok(src), Ok(dst), Ok(n)) = (
            usize::try_from(lo.saturating_sub(self.base)),
            usize::try_from(lo.saturating_sub(offset)),
            usize::try_from(hi.saturating_sub(lo)),
        ) else {
            return;
        };
        if let (Some(d), Some(s)) = (
            out.get_mut(dst..dst.saturating_add(n)),
            self.buf.get().get(src..src.saturating_add(n)),
        ) {
            d.copy_from_slice(s);
        }
    }
}

/// Which write path a segment file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Buffered,
}

/// The open segment's file as the store writes it.
pub struct SegmentFile {
    /// Buffered descriptor: reads, the buffered path's writes, fsync, hints.
    file: File,
    direct: Option<Direct>,
    /// Buffered path: written bytes end here; writeback was started up to `writeback_from`.
    written_end: u64,
    writeback_from: u64,
    /// Buffered path: the page cache was dropped up to here.
    dropped_to: u64,
}

impl SegmentFile {
    /// The buffered path only (compressed segments write through their own stream).
    pub fn buffered(file: File) -> SegmentFile {
        SegmentFile {
            file,
            direct: None,
            written_end: 0,
            writeback_from: 0,
            dropped_to: 0,
        }
    }

    /// Opens `path` (already opened buffered as `file`, `len` bytes long) for writing.
    /// `existed`: the file held WAL before this store opened it. O_DIRECT unless `try_direct`
    /// is false or the filesystem refuses it.
    pub fn open(
        file: File,
        path: &Path,
        len: u64,
        existed: bool,
        try_direct: bool,
    ) -> io::Result<SegmentFile> {
        let mut s = SegmentFile::buffered(file);
        if !try_direct {
            return Ok(s);
        }
        let opened = if refuse::at_open() {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
        };
        match opened {
            Ok(fd) => {
                s.direct = Some(Direct {
                    fd,
                    buf: AlignedBuf::take(),
                    base: 0,
                    len: 0,
                    filled: 0,
                    prefill: existed,
                    file_len: len,
                    high: 0,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(
                    "O_DIRECT refused for \"{}\" ({e}); buffered writes",
                    path.display()
                );
            }
            Err(e) => return Err(e),
        }
        Ok(s)
    }

    pub fn mode(&self) -> Mode {
        if self.direct.is_some() {
            Mode::Direct
        } else {
            Mode::Buffered
        }
    }

    /// The buffered descriptor (compressed streams write through a clone of it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes `data` at `offset` (not yet durable: see [`sync_data`](Self::sync_data)).
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(d) = self.direct.as_mut() {
            match d.write_at(data, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.fall_back(&e)?;
                }
                Err(e) => return Err(e),
            }
        }
        self.buffered_write(data, offset)
    }

    /// O_DIRECT was refused at a write: what the buffer holds goes to the file buffered, and
    /// the buffered path takes over.
    fn fall_back(&mut self, e: &io::Error) -> io::Result<()> {
        let Some(d) = self.direct.take() else {
            return Ok(());
        };
        tracing::debug!("O_DIRECT write refused ({e}); buffered writes");
        let held = d.buf.get().get(..d.len).unwrap_or(&[]);
        if !held.is_empty() {
            self.file.write_all_at(held, d.base)?;
            self.written_end = d.base.saturating_add(to_u64(d.len));
        }
        Ok(())
    }

    fn buffered_write(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        let end = offset.saturating_add(to_u64(data.len()));
        if offset < self.writeback_from {
            self.writeback_from = offset;
        }
        self.written_end = self.written_end.max(end);
        if self.written_end.saturating_sub(self.writeback_from) >= WRITEBACK_BYTES {
            start_writeback(&self.file, self.writeback_from, self.written_end);
            self.writeback_from = self.written_end;
        }
        Ok(())
    }

    /// Reads what the file holds at `offset`, including bytes written but still buffered.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)?;
        if let Some(d) = &self.direct {
            d.overlay(offset, buf);
        }
        Ok(())
    }

    /// Makes everything written durable: the direct buffer written out (whole pages), then
    /// `fdatasync`. On the buffered path the durable pages then leave the page cache.
    pub fn sync_data(&mut self) -> io::Result<()> {
        if let Some(d) = self.direct.as_mut() {
            match d.flush() {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.fall_back(&e)?,
                Err(e) => return Err(e),
            }
        }
        self.file.sync_data()?;
        if self.direct.is_none() && self.written_end > self.dropped_to {
            // Whole pages only: the open page will be written again.
            let to = self
                .written_end
                .saturating_sub(self.written_end.checked_rem(to_u64(PAGE)).unwrap_or(0));
            if to > self.dropped_to {
                drop_cache(&self.file, self.dropped_to, to);
                self.dropped_to = to;
            }
        }
        Ok(())
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: start writeback of `from..to`, do not wait. A
/// hint: failures are ignored (the fsync that follows reports real I/O errors).
fn start_writeback(file: &File, from: u64, to: u64) {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(from),
        libc::off64_t::try_from(to.saturating_sub(from)),
    ) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned by
    // `file`, which outlives the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// `posix_fadvise(POSIX_FADV_DONTNEED)` on `from..to` (clean pages after an fsync). A hint.
fn drop_cache(file: &File, from: u64, to: u64) {
    let (Ok(off), Ok(n)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to.saturating_sub(from)),
    ) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is owned by
    // `file`, which outlives the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off, n, libc::POSIX_FADV_DONTNEED);
    }
}

/// Tests only: O_DIRECT refused at open or at a write, as filesystems without direct I/O
/// refuse it (this machine's tmpfs accepts it since Linux 6.6). A scripted fake for a fault
/// the test machine's filesystems cannot produce; never on outside of tests.
#[cfg(test)]
pub(crate) mod refuse {
    use std::cell::Cell;
    thread_local! {
        pub static OPEN: Cell<bool> = const { Cell::new(false) };
        pub static WRITE: Cell<bool> = const { Cell::new(false) };
    }
    pub fn at_open() -> bool {
        OPEN.with(|c| c.get())
    }
    pub fn at_write() -> bool {
        WRITE.with(|c| c.get())
    }
}

#[cfg(not(test))]
mod refuse {
    pub fn at_open() -> bool {
        false
    }
    pub fn at_write() -> bool {
        false
    }
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;

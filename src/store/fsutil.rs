//! Durable file-system primitives: fsync of directories, durable rename, atomic small files.
//!
//! Owns: the exact fsync ordering walrelay's durability promises rest on
//! (`docs/durability.md`). Must not: know about WAL.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// Allocate `len` bytes of `file` at `offset` (extending it) without writing them; they read as
/// zeros. `Ok(false)` when the filesystem cannot (the caller zero-fills instead); ENOSPC is an
/// error like any other.
#[cfg(target_os = "linux")]
pub fn allocate(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(false);
    };
    loop {
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `file`, which outlives the call.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, n) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Allocate without writing: not available here, the caller zero-fills.
#[cfg(not(target_os = "linux"))]
pub fn allocate(_file: &File, _offset: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}

/// fsync a directory so that renames and creations inside it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync `from`, rename it to `to`, fsync the directory holding both.
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(from)?.sync_all()?;
    fs::rename(from, to)?;
    fsync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Write a whole small file atomically: see [`crate::statefile::write_atomic`] (unique
/// temporary file, fsync, rename, fsync directory, writers of one path serialized).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    crate::statefile::write_atomic(path, contents)
}

/// Make sure a directory exists (created with its parents) and is durable.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() {
                fsync_dir(parent)?;
            }
        }
    }
    Ok(())
}

//! Durable file-system primitives: fsync of directories, durable rename, atomic small files.
//!
//! Owns: the exact fsync ordering walrelay's durability promises rest on
//! (`docs/durability.md`), and the modes of created files and directories (PostgreSQL's
//! `common/file_perm.c` rule: 0600/0700, or 0640/0750 when the directory is group-accessible).
//! Must not: know about WAL.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// `PG_DIR_MODE_OWNER` / `PG_FILE_MODE_OWNER`.
pub const DIR_MODE_OWNER: u32 = 0o700;
pub const FILE_MODE_OWNER: u32 = 0o600;
/// `PG_DIR_MODE_GROUP` / `PG_FILE_MODE_GROUP`.
pub const DIR_MODE_GROUP: u32 = 0o750;
pub const FILE_MODE_GROUP: u32 = 0o640;

/// Modes for files and directories created in `dir`, as `SetDataDirectoryCreatePerm` decides
/// them from a directory's mode: group read/execute on `dir` (`0750` bits all set) allows
/// group read on what is created, anything else is owner-only. `(file mode, directory mode)`.
pub fn create_modes(dir: &Path) -> (u32, u32) {
    match fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & DIR_MODE_GROUP == DIR_MODE_GROUP => {
            (FILE_MODE_GROUP, DIR_MODE_GROUP)
        }
        _ => (FILE_MODE_OWNER, DIR_MODE_OWNER),
    }
}

/// Sets exactly `mode` on a file walrelay just created (the creation mode is cut by the
/// process umask; PostgreSQL sets its umask to the same effect).
pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(mode))
}

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

/// Write a whole small file atomically: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!("{name}.tmp"));
    let (mode, _) = create_modes(dir);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        set_mode(&f, mode)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Make sure a directory exists (created with its parents) and is durable.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE_OWNER)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE_OWNER))?;
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() {
                fsync_dir(parent)?;
            }
        }
    }
    Ok(())
}

//! Streamed archiving of a local file into a `file://` archive: the file is read in 1 MB
//! pieces, each hashed and written to a staging file as it passes, so an upload holds one
//! piece instead of a whole segment (issue 14: `walrelay run` with an archive must stay
//! lean even when the archiver falls behind the store's in-memory tail and reads segments
//! back from the data directory).
//!
//! Owns: [`copy_create`], the streamed form of the archiver's create-if-absent upload of an
//! uncompressed, unencrypted object. Each piece comes from the store's in-memory tail while
//! the tail still holds it (a slice of the tail's own buffer, let go once written: an upload
//! never pins a whole segment of the tail), else from the local file — both hold the same
//! durable bytes. Then: staging file next to the object (named
//! `<object>#<digits>`, which object_store's `LocalFileSystem` hides from listings, as its
//! own staging files), fsync, `link(2)` to the object's name (atomic, never replaces an
//! existing object), fsync of the object and its directories up to the archive root
//! ([`DurableFs::sync_file_blocking`]), then the staging file is removed. An object found
//! already there is fsynced too and compared byte for byte with the local file: the same
//! bytes are [`PutOutcome::AlreadyPresent`] (an HA peer archived it), anything else a
//! conflict, never overwritten — the same outcomes as `upload::put_create_payload`.
//!
//! Must not: compress, encrypt, or write anything but the one object (and its staging file);
//! run on an async worker (every function here blocks).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::path::Path as ObjPath;
use sha2::{Digest, Sha256};

use super::durable_fs::DurableFs;
use super::upload::PutOutcome;
use super::{layout, ArchiveError};
use crate::lsn::{Lsn, TimelineId};
use crate::store::Tail;

/// Bytes read, hashed and written per step.
const PIECE: usize = 1 << 20;

/// A streamed upload's result: the SHA-256 of the bytes copied and whether this call
/// created the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    pub sha256: String,
    pub outcome: PutOutcome,
}

/// Where the bytes of `src` may also be found: the store's tail, holding timeline `tli`'s
/// WAL from `start` (the file's first byte) on while it still has it.
#[derive(Clone)]
pub(crate) struct InTail {
    pub tail: std::sync::Arc<Tail>,
    pub tli: TimelineId,
    pub start: Lsn,
}

/// A local file to archive, opened once: retries of its upload read the same file (an
/// inode, not a name) even when the store renames it meanwhile (`.partial` completed,
/// divergent WAL set aside), and a file that vanished before the open is an error of the
/// job, not a transient failure to retry.
pub(crate) struct Source {
    file: File,
    path: PathBuf,
}

impl Source {
    /// Opens the first of `paths` that exists (blocking): a `.partial` the store may complete
    /// (rename) at any moment is given with its complete name after it.
    pub(crate) fn open_first(paths: &[PathBuf]) -> Result<Source, ArchiveError> {
        let mut last = None;
        for path in paths {
            match File::open(path) {
                Ok(file) => {
                    return Ok(Source {
                        file,
                        path: path.clone(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some((path, e)),
                Err(e) => return Err(ArchiveError::io("read", path)(e)),
            }
        }
        Err(match last {
            Some((path, e)) => ArchiveError::io("read", path)(e),
            None => ArchiveError::Config("no local file to archive".into()),
        })
    }

    /// Fills `buf` from offset `at`; a file ending before is [`short`].
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<(), ArchiveError> {
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => short(&self.path),
                _ => ArchiveError::io("read", &self.path)(e),
            })
    }
}

/// Copies the first `len` bytes of `src` (exactly `len` when `exact`: a complete segment;
/// at least `len` otherwise: a `.partial` snapshot; all of them durable) to the object
/// `location` of `fs` unless it exists (see the module doc), taking what it can from
/// `in_tail`. Blocking.
pub(crate) fn copy_create(
    fs: &DurableFs,
    src: &Source,
    len: u64,
    exact: bool,
    location: &ObjPath,
    in_tail: Option<&InTail>,
) -> Result<Copied, ArchiveError> {
    check_size(&src.file, &src.path, len, exact)?;
    let dest = fs
        .object_file(location)
        .map_err(ArchiveError::store("upload", location))?;
    // Already there (an HA peer, or a run before a crash, archived it): no copy, just make it
    // durable and compare. Otherwise copy; the link below still guards against a race.
    let found = dest.try_exists().map_err(ArchiveError::io("read", &dest))?;
    let copied = if found {
        None
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(ArchiveError::io("create directory", parent))?;
        }
        let staging = staging_path(&dest);
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
            .map_err(ArchiveError::io("create", &staging))?;
        // from here on the staging file is this call's own: removed whatever happens
        let r = copy_to_staging(out, src, len, in_tail, &staging).and_then(|sha256| {
            match std::fs::hard_link(&staging, &dest) {
                Ok(()) => Ok(Some(sha256)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(ArchiveError::io("link", &dest)(e)),
            }
        });
        let _ = std::fs::remove_file(&staging);
        r?
    };
    // an object a previous run (or an HA peer) left may not be durable yet: fsync it either way
    fs.sync_file_blocking(&dest)
        .map_err(ArchiveError::store("upload", location))?;
    if let Some(sha256) = copied {
        metrics::counter!(super::UPLOADED_BYTES).increment(len);
        return Ok(Copied {
            sha256,
            outcome: PutOutcome::Created,
        });
    }
    if let Some(sha256) = same_file_bytes(&dest, src, len)? {
        return Ok(Copied {
            sha256,
            outcome: PutOutcome::AlreadyPresent,
        });
    }
    Err(super::upload::conflict(location))
}

/// The local file `file` (at `path`) must hold exactly `len` bytes when `exact` (a complete
/// segment), at least `len` otherwise (a snapshot's prefix).
pub(crate) fn check_size(
    file: &File,
    path: &Path,
    len: u64,
    exact: bool,
) -> Result<(), ArchiveError> {
    let size = file
        .metadata()
        .map_err(ArchiveError::io("read", path))?
        .len();
    if exact && size != len {
        return Err(ArchiveError::Corrupt {
            path: path.display().to_string(),
            reason: format!("local file has {size} bytes, expected {len}"),
        });
    }
    if size < len {
        return Err(short(path));
    }
    Ok(())
}

pub(crate) fn short(path: &Path) -> ArchiveError {
    ArchiveError::Io {
        op: "read",
        path: path.to_path_buf(),
        source: io::Error::other("file shorter than expected"),
    }
}

/// `<dest>#<digits>`, hidden from `LocalFileSystem` listings: the process id, a counter and
/// the clock's nanoseconds, so that HA peers (often the same pid in their containers)
/// archiving the same segment at once do not pick one name (and if they did, the second's
/// `create_new` fails and it retries: a staging file is only ever removed by its creator).
fn staging_path(dest: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut s = dest.as_os_str().to_owned();
    s.push(format!(
        "#{}{:06}{nanos:09}",
        std::process::id(),
        n % 1_000_000
    ));
    PathBuf::from(s)
}

/// Copies `len` bytes of `input` (from the tail while it has them) into a new `staging` file,
/// hashing them; fsyncs it. Returns the SHA-256.
fn copy_to_staging(
    mut out: File,
    src: &Source,
    len: u64,
    in_tail: Option<&InTail>,
    staging: &Path,
) -> Result<String, ArchiveError> {
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let mut done: u64 = 0;
    let mut from_tail: u64 = 0;
    let mut tail = in_tail;
    while done < len {
        let want = usize::try_from(len.saturating_sub(done)).map_or(PIECE, |l| l.min(PIECE));
        // the tail first; once it no longer holds a position it never will again
        let piece = tail.and_then(|t| {
            let at = Lsn(t.start.0.checked_add(done)?);
            let end = Lsn(t.start.0.checked_add(len)?);
            t.tail.get(t.tli, at, end, want)
        });
        let n = match piece {
            Some(b) => {
                hasher.update(&b);
                out.write_all(&b)
                    .map_err(ArchiveError::io("write", staging))?;
                from_tail = from_tail.saturating_add(b.len() as u64);
                b.len()
            }
            None => {
                tail = None;
                buf.resize(want, 0);
                src.read_exact_at(&mut buf, done)?;
                hasher.update(&buf);
                out.write_all(&buf)
                    .map_err(ArchiveError::io("write", staging))?;
                want
            }
        };
        done = done.saturating_add(n as u64);
    }
    out.sync_all().map_err(ArchiveError::io("fsync", staging))?;
    if from_tail > 0 {
        metrics::counter!(super::FROM_TAIL_BYTES).increment(from_tail);
    }
    Ok(layout::hex(&hasher.finalize()))
}

/// The SHA-256 of the first `len` bytes of `src` if the object file `obj` holds exactly
/// them; `None` if it holds anything else.
fn same_file_bytes(obj: &Path, src: &Source, len: u64) -> Result<Option<String>, ArchiveError> {
    let found = Source::open_first(&[obj.to_path_buf()])?;
    let size = found
        .file
        .metadata()
        .map_err(ArchiveError::io("read", obj))?
        .len();
    if size != len {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    let mut x = vec![0u8; PIECE];
    let mut y = vec![0u8; PIECE];
    let mut done: u64 = 0;
    while done < len {
        let want = usize::try_from(len.saturating_sub(done)).map_or(PIECE, |l| l.min(PIECE));
        let (px, py) = (
            x.get_mut(..want).unwrap_or_default(),
            y.get_mut(..want).unwrap_or_default(),
        );
        found.read_exact_at(px, done)?;
        src.read_exact_at(py, done)?;
        if px != py {
            return Ok(None);
        }
        hasher.update(&*py);
        done = done.saturating_add(want as u64);
    }
    Ok(Some(layout::hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<u8>>()
    }

    #[test]
    fn copies_hashes_fsyncs_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let (fs, log) = DurableFs::new(&d.path().join("arch")).unwrap().with_log();
        let root = std::fs::canonicalize(d.path().join("arch")).unwrap();
        let len = 3 * PIECE + 12_345;
        let data = pattern(len, 0);
        let src = d.path().join("000000010000000000000001");
        std::fs::write(&src, &data).unwrap();
        let loc = ObjPath::from("7/wal/000000010000000000000001");

        let c = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            len as u64,
            true,
            &loc,
            None,
        )
        .unwrap();
        assert_eq!(c.outcome, PutOutcome::Created);
        assert_eq!(c.sha256, layout::hex(&Sha256::digest(&data)));
        let obj = root.join("7/wal/000000010000000000000001");
        assert_eq!(std::fs::read(&obj).unwrap(), data);
        // the object, then each directory up to the root, were fsynced
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                obj.clone(),
                root.join("7/wal"),
                root.join("7"),
                root.clone()
            ]
        );
        // no staging file left behind
        let names: Vec<_> = std::fs::read_dir(root.join("7/wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // the same bytes again (an HA peer got there first): already present, fsynced
        log.lock().unwrap().clear();
        let c = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            len as u64,
            true,
            &loc,
            None,
        )
        .unwrap();
        assert_eq!(c.outcome, PutOutcome::AlreadyPresent);
        assert_eq!(log.lock().unwrap().first(), Some(&obj));

        // different bytes: a conflict, and the object is unchanged
        let other = d.path().join("other");
        std::fs::write(&other, pattern(len, 1)).unwrap();
        let e = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&other)).unwrap(),
            len as u64,
            true,
            &loc,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ArchiveError::Conflict { .. }), "{e}");
        assert_eq!(std::fs::read(&obj).unwrap(), data);
    }

    /// An object already there is compared without a copy (no staging file is made); a
    /// source renamed after it was opened (a `.partial` completed meanwhile) is still read.
    #[test]
    fn present_objects_are_not_copied_and_sources_survive_renames() {
        let d = tempfile::tempdir().unwrap();
        let fs = DurableFs::new(&d.path().join("arch")).unwrap();
        let data = pattern(PIECE + 77, 9);
        let src = d.path().join("000000010000000000000003.partial");
        std::fs::write(&src, &data).unwrap();
        let source = Source::open_first(std::slice::from_ref(&src)).unwrap();
        std::fs::rename(&src, d.path().join("000000010000000000000003")).unwrap();
        let loc = ObjPath::from("7/wal/000000010000000000000003");
        let len = data.len() as u64;
        assert_eq!(
            copy_create(&fs, &source, len, true, &loc, None)
                .unwrap()
                .outcome,
            PutOutcome::Created
        );
        // the `.partial` gone (completed): the complete name after it is opened instead
        let complete = d.path().join("000000010000000000000003");
        let source = Source::open_first(&[src.clone(), complete.clone()]).unwrap();
        assert_eq!(source.path, complete);
        let again = copy_create(&fs, &source, len, true, &loc, None).unwrap();
        assert_eq!(again.outcome, PutOutcome::AlreadyPresent);
        assert_eq!(again.sha256, layout::hex(&Sha256::digest(&data)));
        let obj = fs.object_file(&loc).unwrap();
        let names: Vec<_> = std::fs::read_dir(obj.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["000000010000000000000003".to_string()]);
    }

    #[test]
    fn snapshot_copies_a_prefix_and_sizes_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let fs = DurableFs::new(&d.path().join("arch")).unwrap();
        let data = pattern(PIECE + 10, 3);
        let src = d.path().join("seg.partial");
        std::fs::write(&src, &data).unwrap();
        let loc = ObjPath::from("7/partial/seg-100");
        let c = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            100,
            false,
            &loc,
            None,
        )
        .unwrap();
        assert_eq!(c.outcome, PutOutcome::Created);
        assert_eq!(
            std::fs::read(fs.object_file(&loc).unwrap()).unwrap(),
            &data[..100]
        );
        // a complete segment must have exactly its size; a prefix needs at least its length
        let e = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            100,
            true,
            &ObjPath::from("x"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "archive object \"{}\" is corrupt: local file has {} bytes, expected 100",
                src.display(),
                PIECE + 10
            )
        );
        let e = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            2 * PIECE as u64,
            false,
            &ObjPath::from("y"),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("file shorter than expected"), "{e}");
        assert!(!fs.object_file(&ObjPath::from("y")).unwrap().exists());
    }

    /// Pieces the tail holds come from it (the file is not read for them: here it holds other
    /// bytes, which real durable WAL never does), the rest from the file; the hash covers
    /// exactly what was written.
    #[test]
    fn takes_what_the_tail_holds_then_reads_the_file() {
        let d = tempfile::tempdir().unwrap();
        let fs = DurableFs::new(&d.path().join("arch")).unwrap();
        let len = 3 * PIECE;
        let start = Lsn(16 << 20);
        let file_bytes = pattern(len, 0);
        let src = d.path().join("seg");
        std::fs::write(&src, &file_bytes).unwrap();
        let tail = std::sync::Arc::new(Tail::new(64 << 20));
        tail.reset(1);
        // the tail holds the first 1.5 pieces, marked differently
        let tail_bytes = pattern(PIECE + PIECE / 2, 9);
        tail.push(start, bytes::Bytes::from(tail_bytes.clone()));
        let t = InTail {
            tail,
            tli: 1,
            start,
        };
        let loc = ObjPath::from("seg");
        let c = copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            len as u64,
            true,
            &loc,
            Some(&t),
        )
        .unwrap();
        let mut want = tail_bytes.clone();
        want.extend_from_slice(&file_bytes[tail_bytes.len()..]);
        assert_eq!(std::fs::read(fs.object_file(&loc).unwrap()).unwrap(), want);
        assert_eq!(c.sha256, layout::hex(&Sha256::digest(&want)));
        // another timeline in the tail: nothing from it
        let t2 = InTail { tli: 2, ..t };
        let loc2 = ObjPath::from("seg2");
        copy_create(
            &fs,
            &Source::open_first(std::slice::from_ref(&src)).unwrap(),
            len as u64,
            true,
            &loc2,
            Some(&t2),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(fs.object_file(&loc2).unwrap()).unwrap(),
            file_bytes
        );
    }
}

//! Durable small state files, done once: every JSON/binary state file walrelay keeps next to
//! its WAL (`slots.json`, `delay/feeds.json`, `walrelay.archive-state`, the commit index when
//! it is rewritten, `walrelay.control`, history files) is written through here.
//!
//! Owns: the write protocol — a unique temporary file in the same directory (created
//! exclusively, so two writers never share one), write, fsync, rename over the target,
//! fsync of the directory — with writers of one path serialized in-process, and the file
//! mode (0600, or 0640 when the directory is group-readable, `(mode & 0750) == 0750`, as
//! PostgreSQL's `pg_file_create_mode` follows the data directory). And [`StateFile`]: a dedicated writer
//! thread per file that coalesces submissions (the latest state wins), so callers on async
//! workers or holding a lock on the standby path only hand over a snapshot and never wait
//! for an fsync; callers that need durability before they answer wait on
//! [`Ticket`]s (asynchronously, or on a blocking thread).
//!
//! Test-only failpoint: `WALRELAY_FAILPOINT_SLOTS_WRITE_DELAY_MS` makes every write of a
//! file named `slots.json` sleep that long first (read once per write; inert unless set).
//!
//! Must not: know what the files mean (callers encode and validate their own content).

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// The failpoint that delays `slots.json` writes (tests only).
pub const FAILPOINT_SLOTS_WRITE_DELAY: &str = "WALRELAY_FAILPOINT_SLOTS_WRITE_DELAY_MS";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// In-process lock per target path: writers of one file never interleave.
fn path_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut g = lock(LOCKS.get_or_init(Default::default));
    g.entry(path.to_path_buf()).or_default().clone()
}

/// fsync a directory so that renames and creations inside it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The mode of a new state file in `dir`: 0640 when the directory is group-readable
/// (`(mode & 0750) == 0750`, PostgreSQL's `SetDataDirectoryCreatePerm` rule, which the WAL
/// files follow too), else 0600.
#[cfg(unix)]
pub fn file_mode(dir: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o750 == 0o750 => 0o640,
        _ => 0o600,
    }
}

fn failpoint_delay(path: &Path) {
    if path.file_name().and_then(|n| n.to_str()) != Some("slots.json") {
        return;
    }
    if let Some(ms) = std::env::var(FAILPOINT_SLOTS_WRITE_DELAY)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Writes the whole file `path` durably and atomically: after a crash it holds either the
/// old or the new contents, and once this returns `Ok` the new contents survive one.
/// Blocking: call it from a blocking thread (or through [`StateFile`]).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let guard = path_lock(path);
    let _g = lock(&guard);
    failpoint_delay(path);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(file_mode(dir));
        }
        let mut f = o.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a state file: `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The message for a state file that cannot be used: which file, what is wrong, and what
/// the operator can do (`remedy`: what removing it loses).
pub fn corrupt_message(path: &Path, problem: &str, remedy: &str) -> String {
    format!(
        "state file \"{}\" is unusable: {problem}. walrelay does not start with it, so that \
         nothing it records is silently lost. Restore it from a backup, or {remedy}",
        path.display()
    )
}

/// What the writer thread reports after each write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Done {
    /// Highest generation written (successfully or not).
    gen: u64,
    /// Error text of that write.
    error: Option<String>,
}

#[derive(Default)]
struct Pending {
    next_gen: u64,
    /// The latest submission not yet picked up: (generation, contents).
    latest: Option<(u64, Vec<u8>)>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    done: watch::Sender<Done>,
}

/// A state file with its own writer thread. Submissions coalesce: when several arrive while
/// one is being written, only the newest is written next.
pub struct StateFile {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A submitted state: wait on it to know when it (or a newer state) is durable.
#[derive(Debug, Clone)]
pub struct Ticket {
    gen: u64,
    done: watch::Receiver<Done>,
}

impl Ticket {
    /// Waits until this state or a newer one was written; the write's error, if it failed.
    pub async fn wait(mut self) -> io::Result<()> {
        let gen = self.gen;
        match self.done.wait_for(|d| d.gen >= gen).await {
            Ok(d) => match &d.error {
                None => Ok(()),
                Some(e) => Err(io::Error::other(e.clone())),
            },
            Err(_) => Err(io::Error::other("the state writer stopped")),
        }
    }

    /// [`Ticket::wait`] for a blocking thread.
    pub fn wait_blocking(self) -> io::Result<()> {
        futures::executor::block_on(self.wait())
    }
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        let (done, _) = watch::channel(Done::default());
        StateFile {
            path: path.into(),
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                done,
            }),
            thread: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `contents` to the writer thread and returns at once (no IO here). Submission
    /// order is state order: call it while holding the lock the snapshot was taken under,
    /// so that a later state never gets an earlier generation.
    pub fn submit(&self, contents: Vec<u8>) -> Ticket {
        let gen = {
            let mut p = lock(&self.shared.pending);
            p.next_gen = p.next_gen.saturating_add(1);
            let gen = p.next_gen;
            p.latest = Some((gen, contents));
            gen
        };
        self.shared.wake.notify_one();
        self.ensure_thread();
        Ticket {
            gen,
            done: self.shared.done.subscribe(),
        }
    }

    /// The error of the newest finished write, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.done.borrow().error.clone()
    }

    fn ensure_thread(&self) {
        let mut t = lock(&self.thread);
        if t.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let path = self.path.clone();
        let name = format!(
            "walrelay-state-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file")
                .chars()
                .take(6)
                .collect::<String>()
        );
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || writer_loop(&shared, &path));
        match spawned {
            Ok(h) => *t = Some(h),
            Err(e) => {
                // Without a thread, write in place: slower, never lost.
                tracing::error!("could not start the state writer thread: {e}");
                let job = lock(&self.shared.pending).latest.take();
                if let Some((gen, body)) = job {
                    finish(&self.shared, gen, write_atomic(&self.path, &body));
                }
            }
        }
    }
}

fn finish(shared: &Shared, gen: u64, r: io::Result<()>) {
    shared.done.send_modify(|d| {
        d.gen = d.gen.max(gen);
        d.error = r.err().map(|e| e.to_string());
    });
}

fn writer_loop(shared: &Shared, path: &Path) {
    loop {
        let job = {
            let mut p = lock(&shared.pending);
            loop {
                if let Some(j) = p.latest.take() {
                    break Some(j);
                }
                if p.closed {
                    break None;
                }
                p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Some((gen, body)) = job else {
            return;
        };
        let r = write_atomic(path, &body);
        if let Err(e) = &r {
            tracing::error!("could not write state file \"{}\": {e}", path.display());
        }
        finish(shared, gen, r);
    }
}

impl Drop for StateFile {
    /// Writes what is still pending, then stops the thread.
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_all();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_mode_and_no_temp_left() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "temp file left");
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o750)).unwrap();
        write_atomic(&p, b"three").unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // group search without read is not group access (PostgreSQL's rule)
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o710)).unwrap();
        let q = d.path().join("y.json");
        write_atomic(&q, b"four").unwrap();
        let mode = fs::metadata(&q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&d.path().join("none")).unwrap(), None);
    }

    /// Concurrent writers of one file: each write is whole (the old fixed `name.tmp` let two
    /// writers truncate and rename each other's temporary file).
    #[test]
    fn concurrent_writers_never_mix() {
        let d = tempfile::tempdir().unwrap();
        let p = Arc::new(d.path().join("s.json"));
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let body = vec![b'a' + i; 64 * 1024];
                    for _ in 0..20 {
                        write_atomic(&p, &body).unwrap();
                        let got = fs::read(&*p).unwrap();
                        assert_eq!(got.len(), 64 * 1024);
                        assert!(got.iter().all(|&b| b == got[0]), "mixed contents");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn writer_coalesces_and_reports() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path().join("c.json"));
        let mut last = None;
        for i in 0..100 {
            last = Some(f.submit(format!("{i}").into_bytes()));
        }
        last.unwrap().wait().await.unwrap();
        assert_eq!(fs::read(f.path()).unwrap(), b"99");
        // an earlier ticket is satisfied by the newer write
        let t = f.submit(b"x".to_vec());
        let t2 = f.submit(b"y".to_vec());
        t.wait().await.unwrap();
        t2.wait().await.unwrap();
        assert_eq!(fs::read(f.path()).unwrap(), b"y");
        // a failing write is reported to its waiter
        let bad = StateFile::new(d.path().join("no-such-dir").join("c.json"));
        assert!(bad.submit(b"z".to_vec()).wait().await.is_err());
        assert!(bad.last_error().is_some());
        // drop writes what is pending
        let g = StateFile::new(d.path().join("d.json"));
        g.submit(b"last".to_vec());
        drop(g);
        assert_eq!(fs::read(d.path().join("d.json")).unwrap(), b"last");
    }
}

//! Restoring one base backup into a directory: the steps after the backup is chosen.
//!
//! Owns: the target directory rules (absent or empty, created 0700), unpacking every tar
//! archive (base into the data directory, each tablespace into its location or its
//! `--tablespace-mapping`, `pg_tblspc/<oid>` links to it), the manifest check over what was
//! unpacked, rewriting `tablespace_map` for a mapped tablespace, writing `backup_manifest`
//! and, only when everything checked out, the recovery settings and signal file. A failed
//! restore leaves `walrelay_restore_failed` (what went wrong) and no signal file.
//! Must not: choose the backup or read the archive's catalog (its caller does, [`super`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::manifest::{self, Manifest};
use super::recovery::Settings;
use super::unpack::{self, ArchiveKind, Found};
use super::RestoreError;

/// The marker a failed restore leaves in the data directory.
pub const FAILED_MARKER: &str = "walrelay_restore_failed";

/// One tar archive of the backup.
#[derive(Debug, Clone)]
pub struct ArchivePart {
    /// `base.tar` or `<oid>.tar`.
    pub name: String,
    pub tablespace_oid: Option<u32>,
    /// The tablespace's location on the server, if known.
    pub location: Option<PathBuf>,
}

/// Opens an archive's tar bytes (plaintext, decompressed) for blocking reads.
pub trait Opener: Send + Sync {
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, RestoreError>;
}

/// A `pg_basebackup -Ft` directory (base.tar, `<oid>.tar`, backup_manifest).
pub struct DirOpener(pub PathBuf);

impl Opener for DirOpener {
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, RestoreError> {
        let p = self.0.join(name);
        let f = std::fs::File::open(&p).map_err(|e| RestoreError::Io {
            op: "open",
            path: p,
            source: e,
        })?;
        Ok(Box::new(f))
    }
}

/// What was restored.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Restored {
    pub files: u64,
    pub bytes: u64,
    /// Tablespaces: oid → directory restored into.
    pub tablespaces: BTreeMap<u32, PathBuf>,
    /// Files in the backup the manifest does not list (reported, not fatal).
    pub extra: Vec<String>,
    pub manifest_checked: bool,
    /// The signal file written.
    pub signal: Option<PathBuf>,
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_filesystems<'a>(
    dir: &Path,
    tablespaces: impl Iterator<Item = &'a PathBuf>,
) -> Result<(), RestoreError> {
    use std::os::fd::AsRawFd;
    for p in std::iter::once(dir).chain(tablespaces.map(|p| p.as_path())) {
        let f = std::fs::File::open(p).map_err(io_err("open", p))?;
        // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io_err("syncfs", p)(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Creates `dir` (0700) or accepts it when it exists and is empty.
pub fn prepare_empty_dir(dir: &Path, what: &str) -> Result<(), RestoreError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(RestoreError::NotEmpty {
                    what: what.to_string(),
                    path: dir.to_path_buf(),
                });
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("chmod", dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir)),
        Err(e) => Err(io_err("open directory", dir)(e)),
    }
}

/// The directory a tablespace goes to: its mapping, else its location.
fn mapped(location: &Path, mapping: &[(PathBuf, PathBuf)]) -> PathBuf {
    mapping
        .iter()
        .find(|(old, _)| old == location)
        .map(|(_, new)| new.clone())
        .unwrap_or_else(|| location.to_path_buf())
}

/// Restores `parts` (base first) into `dir`, checks them against `manifest` (raw bytes),
/// then writes `settings`. On a failure after `dir` was created, leaves [`FAILED_MARKER`].
pub fn restore(
    dir: &Path,
    parts: &[ArchivePart],
    manifest: Option<&[u8]>,
    opener: &dyn Opener,
    mapping: &[(PathBuf, PathBuf)],
    settings: Option<&Settings>,
) -> Result<Restored, RestoreError> {
    prepare_empty_dir(dir, "target directory")?;
    let r = restore_inner(dir, parts, manifest, opener, mapping, settings);
    if let Err(e) = &r {
        let _ = std::fs::write(
            dir.join(FAILED_MARKER),
            format!("walrelay restore failed: {e}\nDo not start PostgreSQL on this directory.\n"),
        );
    }
    r
}

fn restore_inner(
    dir: &Path,
    parts: &[ArchivePart],
    manifest_bytes: Option<&[u8]>,
    opener: &dyn Opener,
    mapping: &[(PathBuf, PathBuf)],
    settings: Option<&Settings>,
) -> Result<Restored, RestoreError> {
    let manifest = manifest_bytes
        .map(Manifest::parse)
        .transpose()
        .map_err(RestoreError::Manifest)?;
    let mut found = Found::new();
    let mut out = Restored::default();
    let base = parts
        .iter()
        .find(|p| p.tablespace_oid.is_none())
        .ok_or(RestoreError::NoBase)?;
    let rd = opener.open(&base.name)?;
    let u = unpack::unpack(
        &base.name,
        rd,
        dir,
        &ArchiveKind::Base,
        manifest.as_ref(),
        &mut found,
    )?;
    out.files = u.files;
    out.bytes = u.bytes;
    // where each tablespace was on the server: the backup's metadata, the tablespace_map,
    // or the link in base.tar
    let map_path = dir.join("tablespace_map");
    let map = match std::fs::read_to_string(&map_path) {
        Ok(t) => Some(unpack::parse_tablespace_map(&t).map_err(RestoreError::Backup)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", &map_path)(e)),
    };
    for p in parts.iter().filter(|p| p.tablespace_oid.is_some()) {
        let oid = p.tablespace_oid.unwrap_or_default();
        let location = p
            .location
            .clone()
            .or_else(|| {
                map.as_ref()
                    .and_then(|m| m.iter().find(|(o, _)| *o == oid).map(|(_, l)| l.clone()))
            })
            .or_else(|| u.tablespace_links.get(&oid).cloned())
            .ok_or_else(|| {
                RestoreError::Backup(format!("no location known for tablespace {oid}"))
            })?;
        let target = mapped(&location, mapping);
        if !target.is_absolute() {
            return Err(RestoreError::Backup(format!(
                "tablespace {oid} would go to \"{}\", which is not absolute",
                target.display()
            )));
        }
        prepare_empty_dir(&target, &format!("tablespace {oid} directory"))?;
        let rd = opener.open(&p.name)?;
        let t = unpack::unpack(
            &p.name,
            rd,
            &target,
            &ArchiveKind::Tablespace { oid },
            manifest.as_ref(),
            &mut found,
        )?;
        out.files = out.files.saturating_add(t.files);
        out.bytes = out.bytes.saturating_add(t.bytes);
        let link = dir.join("pg_tblspc").join(oid.to_string());
        std::os::unix::fs::symlink(&target, &link).map_err(io_err("create link", &link))?;
        out.tablespaces.insert(oid, target);
    }
    if let Some(m) = &manifest {
        let problems = manifest::check(m, &found);
        let (extra, fatal): (Vec<_>, Vec<_>) = problems
            .into_iter()
            .partition(|p| matches!(p, manifest::Problem::Extra(_)));
        out.extra = extra.iter().map(|p| p.to_string()).collect();
        if !fatal.is_empty() {
            return Err(RestoreError::Verify(
                fatal.iter().map(|p| p.to_string()).collect(),
            ));
        }
        out.manifest_checked = true;
    }
    // the tablespace map PostgreSQL re-creates the links from must name the new places
    if let Some(m) = map {
        let remapped: Vec<(u32, PathBuf)> = m
            .into_iter()
            .map(|(oid, l)| {
                let t = out.tablespaces.get(&oid).cloned().unwrap_or(l);
                (oid, t)
            })
            .collect();
        let text = unpack::render_tablespace_map(&remapped);
        if std::fs::read_to_string(&map_path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&map_path, text).map_err(io_err("write", &map_path))?;
        }
    }
    if let Some(b) = manifest_bytes {
        let p = dir.join("backup_manifest");
        std::fs::write(&p, b).map_err(io_err("write", &p))?;
    }
    // Everything restored is durable before the signal file says "recover from this":
    // syncfs on the data directory's and every tablespace's file system (what initdb and
    // pg_basebackup do with --sync-method=syncfs).
    sync_filesystems(dir, out.tablespaces.values())?;
    if let Some(s) = settings {
        let signal = s
            .write(dir)
            .map_err(io_err("write recovery settings in", dir))?;
        out.signal = Some(signal);
    }
    Ok(out)
}

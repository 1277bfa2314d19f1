//! Unpacking a base backup's tar archives, safely.
//!
//! Owns: extracting one tar stream (the `tar` crate) into a directory, taking only what a
//! PostgreSQL base backup holds: regular files and directories with relative names (no
//! `..`, no absolute names, `.` components dropped), and symbolic links only as
//! `pg_tblspc/<oid>` in the base archive with an absolute target (what the server sends
//! when no tablespace map is asked for). No hard links, devices or FIFOs; never writing
//! through a link; never overwriting (files are created exclusively, so a name twice is an
//! error). Files 0600, directories 0700. Each file's size and checksum are computed while it
//! is written, in the algorithm the manifest lists for it ([`super::manifest`]). After the
//! end-of-archive marker the stream is read to its end (the archive reader checks its
//! SHA-256 at EOF).
//! Must not: run on an async worker (the caller uses `spawn_blocking`), or decide where
//! tablespaces go (the caller passes the directory).

// Parses outside input (tar headers): no panics from indexing, string slicing or overflow.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::manifest::{FileHasher, Manifest};

/// Errors while unpacking.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{archive}: could not read the archive: {source}")]
    Read {
        archive: String,
        source: std::io::Error,
    },
    #[error("{archive}: could not {op} \"{path}\": {source}")]
    Write {
        archive: String,
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{archive}: refusing entry \"{name}\": {why}")]
    Unsafe {
        archive: String,
        name: String,
        why: &'static str,
    },
}

/// What kind of archive is unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveKind {
    /// base.tar: into the data directory.
    Base,
    /// `<oid>.tar`: into the tablespace's directory; manifest paths are `pg_tblspc/<oid>/…`.
    Tablespace { oid: u32 },
}

/// What one archive held besides files.
#[derive(Debug, Default, Clone)]
pub struct Unpacked {
    /// `pg_tblspc/<oid>` symbolic links in the base archive: oid → target (not created:
    /// the caller creates them after mapping).
    pub tablespace_links: BTreeMap<u32, PathBuf>,
    pub files: u64,
    pub bytes: u64,
}

/// Digests of unpacked files by manifest path: (size, checksum bytes).
pub type Found = BTreeMap<String, (u64, Vec<u8>)>;

/// The entry's name as clean components, or why it is refused.
fn clean_name(raw: &[u8]) -> Result<Vec<String>, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8")?;
    if s.starts_with('/') {
        return Err("absolute name");
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("name contains \"..\""),
            c if c.contains('\0') => return Err("name contains NUL"),
            c => out.push(c.to_string()),
        }
    }
    if out.is_empty() {
        return Err("empty name");
    }
    Ok(out)
}

fn is_tablespace_link(parts: &[String]) -> Option<u32> {
    match parts {
        [a, oid]
            if a == "pg_tblspc" && !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()) =>
        {
            oid.parse().ok()
        }
        _ => None,
    }
}

/// Creates `dir` and its missing parents (0700) below `root` (which exists).
fn mkdirs(root: &Path, rel: &[String]) -> std::io::Result<()> {
    let mut p = root.to_path_buf();
    for c in rel {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().mode(0o700).create(&p)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct HashingWriter<W> {
    inner: W,
    hasher: Option<FileHasher>,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        let done = b.get(..n).unwrap_or(b);
        if let Some(h) = &mut self.hasher {
            h.update(done);
        }
        self.size = self.size.saturating_add(done.len() as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Unpacks one tar stream into `dest` (an existing, empty directory), recording each file's
/// digest in `found` under its manifest path.
pub fn unpack(
    archive_name: &str,
    input: impl Read,
    dest: &Path,
    kind: &ArchiveKind,
    manifest: Option<&Manifest>,
    found: &mut Found,
) -> Result<Unpacked, UnpackError> {
    let rd_err = |source| UnpackError::Read {
        archive: archive_name.to_string(),
        source,
    };
    let unsafe_entry = |name: &[u8], why| UnpackError::Unsafe {
        archive: archive_name.to_string(),
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    };
    let mut ar = tar::Archive::new(input);
    let mut out = Unpacked::default();
    let mut links: BTreeSet<Vec<String>> = BTreeSet::new();
    let prefix = match kind {
        ArchiveKind::Base => String::new(),
        ArchiveKind::Tablespace { oid } => format!("pg_tblspc/{oid}/"),
    };
    for entry in ar.entries().map_err(rd_err)? {
        let mut entry = entry.map_err(rd_err)?;
        let raw = entry.path_bytes().into_owned();
        let parts = clean_name(&raw).map_err(|why| unsafe_entry(&raw, why))?;
        if links
            .iter()
            .any(|l| parts.len() > l.len() && parts.starts_with(l))
        {
            return Err(unsafe_entry(&raw, "below a symbolic link"));
        }
        let rel = parts.join("/");
        let path = parts.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        let wr_err = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            let a = archive_name.to_string();
            move |source| UnpackError::Write {
                archive: a,
                op,
                path: p,
                source,
            }
        };
        let (parents, _) = parts.split_at(parts.len().saturating_sub(1));
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                mkdirs(dest, &parts).map_err(wr_err("create directory", &path))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                mkdirs(dest, parents).map_err(wr_err("create directory", &path))?;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(wr_err("create", &path))?;
                let key = format!("{prefix}{rel}");
                let mut w = HashingWriter {
                    inner: std::io::BufWriter::with_capacity(256 * 1024, f),
                    hasher: manifest.and_then(|m| m.hasher_for(&key)),
                    size: 0,
                };
                // a read error is the archive's, a write error the directory's
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = entry.read(&mut buf).map_err(rd_err)?;
                    if n == 0 {
                        break;
                    }
                    w.write_all(buf.get(..n).unwrap_or(&[]))
                        .map_err(wr_err("write", &path))?;
                }
                w.flush().map_err(wr_err("write", &path))?;
                let size = w.size;
                let sum = match w.hasher.take() {
                    Some(h) => h.finish().1,
                    None => Vec::new(),
                };
                if found.insert(key, (size, sum)).is_some() {
                    return Err(unsafe_entry(&raw, "name appears twice"));
                }
                out.files = out.files.saturating_add(1);
                out.bytes = out.bytes.saturating_add(size);
            }
            tar::EntryType::Symlink => {
                let oid = match kind {
                    ArchiveKind::Base => is_tablespace_link(&parts),
                    ArchiveKind::Tablespace { .. } => None,
                }
                .ok_or_else(|| unsafe_entry(&raw, "symbolic link outside pg_tblspc"))?;
                let target = entry
                    .link_name()
                    .map_err(rd_err)?
                    .ok_or_else(|| unsafe_entry(&raw, "symbolic link without a target"))?
                    .into_owned();
                if !target.is_absolute() {
                    return Err(unsafe_entry(&raw, "tablespace link is not absolute"));
                }
                if out.tablespace_links.insert(oid, target).is_some() {
                    return Err(unsafe_entry(&raw, "name appears twice"));
                }
                links.insert(parts);
            }
            _ => {
                return Err(unsafe_entry(
                    &raw,
                    "not a file, directory or tablespace link",
                ))
            }
        }
    }
    // the rest of the stream (padding after the end marker): the reader checks at EOF
    std::io::copy(&mut ar.into_inner(), &mut std::io::sink()).map_err(rd_err)?;
    Ok(out)
}

/// Parses a `tablespace_map` file: `<oid> <path>` lines, backslash escapes as
/// `read_tablespace_map` (xlogrecovery.c) undoes them.
pub fn parse_tablespace_map(text: &str) -> Result<Vec<(u32, PathBuf)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    let mut line = String::new();
    let mut lines = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => line.push(n),
                None => return Err("tablespace_map ends in a backslash".into()),
            },
            '\n' => lines.push(std::mem::take(&mut line)),
            '\r' => {}
            c => line.push(c),
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    for l in lines {
        let (oid, path) = l
            .split_once(' ')
            .ok_or_else(|| format!("invalid tablespace_map line \"{l}\""))?;
        let oid: u32 = oid
            .parse()
            .map_err(|_| format!("invalid tablespace oid \"{oid}\""))?;
        out.push((oid, PathBuf::from(path)));
    }
    Ok(out)
}

/// Writes a `tablespace_map` (escaping as `do_pg_backup_start` does).
pub fn render_tablespace_map(entries: &[(u32, PathBuf)]) -> String {
    let mut s = String::new();
    for (oid, p) in entries {
        s.push_str(&format!("{oid} "));
        for c in p.to_string_lossy().chars() {
            if matches!(c, '\n' | '\r' | '\\') {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            // bypass the builder's own path checks: write the raw name
            let nb = name.as_bytes();
            h.as_old_mut().name[..nb.len()].copy_from_slice(nb);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(
        t: &[u8],
        kind: ArchiveKind,
    ) -> (tempfile::TempDir, Result<Unpacked, UnpackError>, Found) {
        let d = tempfile::tempdir().unwrap();
        let mut found = Found::new();
        let r = unpack("base.tar", t, d.path(), &kind, None, &mut found);
        (d, r, found)
    }

    #[test]
    fn unpacks_files_dirs_and_tablespace_links() {
        use tar::EntryType::*;
        let t = tar_of(&[
            ("global/", Directory, b"", None),
            ("./pg_wal/archive_status/", Directory, b"", None),
            ("global/pg_control", Regular, b"ctl", None),
            ("PG_VERSION", Regular, b"15\n", None),
            ("pg_tblspc/16384", Symlink, b"", Some("/srv/ts")),
        ]);
        let (d, r, found) = run(&t, ArchiveKind::Base);
        let u = r.unwrap();
        assert_eq!(
            std::fs::read(d.path().join("global/pg_control")).unwrap(),
            b"ctl"
        );
        assert!(d.path().join("pg_wal/archive_status").is_dir());
        assert_eq!(
            u.tablespace_links.get(&16384),
            Some(&PathBuf::from("/srv/ts"))
        );
        assert_eq!(found.get("PG_VERSION").map(|f| f.0), Some(3));
        assert_eq!(u.files, 2);
    }

    #[test]
    fn refuses_unsafe_entries() {
        use tar::EntryType::*;
        for (entries, why) in [
            (vec![("../x", Regular, &b"x"[..], None)], "\"..\""),
            (vec![("/etc/x", Regular, &b"x"[..], None)], "absolute"),
            (vec![("a/../../x", Regular, &b"x"[..], None)], "\"..\""),
            (
                vec![("base/l", Symlink, &b""[..], Some("/etc"))],
                "outside pg_tblspc",
            ),
            (
                vec![("pg_tblspc/1", Symlink, &b""[..], Some("rel"))],
                "not absolute",
            ),
            (vec![("x", Link, &b""[..], Some("y"))], "not a file"),
            (vec![("x", Char, &b""[..], None)], "not a file"),
            (
                vec![
                    ("pg_tblspc/1", Symlink, &b""[..], Some("/tmp")),
                    ("pg_tblspc/1/evil", Regular, &b"x"[..], None),
                ],
                "below a symbolic link",
            ),
            (
                vec![
                    ("a", Regular, &b"x"[..], None),
                    ("./a", Regular, &b"y"[..], None),
                ],
                "create",
            ),
        ] {
            let (d, r, _) = run(&tar_of(&entries), ArchiveKind::Base);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(why), "{e} should say {why}");
            assert!(!d.path().join("evil").exists());
        }
        // no symlink at all in a tablespace archive
        let t = tar_of(&[("pg_tblspc/1", Symlink, b"", Some("/tmp"))]);
        assert!(run(&t, ArchiveKind::Tablespace { oid: 1 }).1.is_err());
    }

    #[test]
    fn tablespace_map_round_trip() {
        let e = vec![
            (16384, PathBuf::from("/srv/a b")),
            (2, PathBuf::from("/x\\y\nz")),
        ];
        let s = render_tablespace_map(&e);
        assert_eq!(parse_tablespace_map(&s).unwrap(), e);
        assert_eq!(
            parse_tablespace_map("16384 /tmp/rs-probe/ts\n").unwrap(),
            vec![(16384, PathBuf::from("/tmp/rs-probe/ts"))]
        );
        assert!(parse_tablespace_map("x /a\n").is_err());
    }
}

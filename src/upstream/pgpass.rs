//! The libpq password file (`~/.pgpass` or `PGPASSFILE`).
//!
//! Owns: looking up a password for `(host, port, database, user)` with libpq's rules:
//! lines `hostname:port:database:username:password`, `#` comments, `*` matches anything,
//! `\` escapes `:` and `\`, the first matching line wins, and a file readable by group or
//! others is ignored with a warning.
//! Must not: write the file or cache its contents.

#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)]

use std::path::{Path, PathBuf};

/// The default password file: `$HOME/.pgpass`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// Looks up the password for these connection parameters. Returns `None` if the file is
/// missing, unreadable, not a regular file, too permissive, or has no matching line.
pub fn lookup(path: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if md.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            );
            return None;
        }
    }
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    lookup_in(&text, host, port, db, user)
}

/// The matching logic on the file's text (separate for tests).
pub fn lookup_in(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), db, user];
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((fields, password)) = split_line(line) else {
            continue;
        };
        let matches = fields
            .iter()
            .zip(wanted.iter())
            .all(|(f, w)| f.wildcard || f.value == *w);
        if matches {
            return Some(password);
        }
    }
    None
}

struct Field {
    value: String,
    wildcard: bool,
}

/// Splits a line into four match fields and the password, or `None` if there are fewer
/// than five fields. The password is the unescaped rest of the line.
fn split_line(line: &str) -> Option<(Vec<Field>, String)> {
    let mut fields = Vec::with_capacity(4);
    let mut chars = line.chars();
    while fields.len() < 4 {
        let mut value = String::new();
        let mut raw_star_only = true;
        let mut raw_len: usize = 0;
        let mut ended = false;
        while let Some(c) = chars.next() {
            match c {
                ':' => {
                    ended = true;
                    break;
                }
                '\\' => {
                    raw_star_only = false;
                    raw_len = raw_len.saturating_add(1);
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
                c => {
                    if c != '*' {
                        raw_star_only = false;
                    }
                    raw_len = raw_len.saturating_add(1);
                    value.push(c);
                }
            }
        }
        if !ended {
            return None;
        }
        fields.push(Field {
            wildcard: raw_star_only && raw_len == 1,
            value,
        });
    }
    let mut password = String::new();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                password.push(n);
            }
        } else {
            password.push(c);
        }
    }
    Some((fields, password))
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)] // tests may panic
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "# comment\n\
        \n\
        short:line\n\
        db1:5432:replication:bob:first\n\
        db1:5432:replication:bob:second\n\
        db\\:x:*:*:alice:esc\\:aped\\\\pw\n\
        *:5433:*:*:wild\n\
        \\*:1:*:*:literalstar\n\
        h:2:*:carol:pw:with:colons\r\n";

    #[test]
    fn matching() {
        let l = |h, p, d, u| lookup_in(FILE, h, p, d, u);
        assert_eq!(
            l("db1", 5432, "replication", "bob").as_deref(),
            Some("first")
        );
        assert_eq!(l("db1", 5432, "postgres", "bob"), None);
        assert_eq!(
            l("db:x", 9, "any", "alice").as_deref(),
            Some("esc:aped\\pw")
        );
        assert_eq!(l("anything", 5433, "d", "u").as_deref(), Some("wild"));
        assert_eq!(l("*", 1, "d", "u").as_deref(), Some("literalstar"));
        assert_eq!(l("x", 1, "d", "u"), None);
        assert_eq!(l("h", 2, "d", "carol").as_deref(), Some("pw:with:colons"));
    }

    #[test]
    fn permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        std::fs::write(&p, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&p, "h", 1, "d", "u").as_deref(), Some("secret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(lookup(&p, "h", 1, "d", "u"), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(lookup(&p, "h", 1, "d", "u"), None);
        assert_eq!(lookup(&dir.path().join("missing"), "h", 1, "d", "u"), None);
        assert_eq!(lookup(dir.path(), "h", 1, "d", "u"), None);
    }
}

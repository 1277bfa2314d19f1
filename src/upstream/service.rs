//! libpq's connection service file (`pg_service.conf`).
//!
//! Owns: finding the service (`service=` or `PGSERVICE`), the files libpq reads —
//! `PGSERVICEFILE`, else `~/.pg_service.conf`; only when the service is not defined there,
//! `PGSYSCONFDIR/pg_service.conf` (default `/etc/postgresql-common`, Debian's libpq
//! `SYSCONFDIR`) — and parsing them with libpq's rules (`parseServiceFile` in fe-connect.c):
//! `[name]` groups, `key=value` lines (no spaces around `=`), `#` comments, leading and
//! trailing white space ignored, keys must be connection keywords, no nested `service`.
//! Settings from the service fill only what the connection string left unset; the
//! environment comes after them, as in libpq (`conninfo_add_defaults`).
//! Must not: open sockets or write files.
#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)]

use std::path::{Path, PathBuf};

use super::conninfo::ConnInfo;

/// Debian's libpq `SYSCONFDIR`, used when `PGSYSCONFDIR` is unset.
pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The settings of `service` in the file's text: `Ok(None)` when the file does not
/// define it. `file` is only used in messages.
pub fn parse(
    text: &str,
    file: &str,
    service: &str,
) -> Result<Option<Vec<(String, String)>>, String> {
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, line) in text.lines().enumerate() {
        let lineno = n.saturating_add(1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(group) = line.strip_prefix('[') {
            if found.is_some() {
                break; // end of the wanted group
            }
            if group.strip_suffix(']').is_some_and(|g| g == service) {
                found = Some(Vec::new());
            }
            continue;
        }
        let Some(settings) = found.as_mut() else {
            continue;
        };
        let Some((key, val)) = line.split_once('=') else {
            return Err(format!(
                "syntax error in service file \"{file}\", line {lineno}"
            ));
        };
        if key == "service" {
            return Err(format!(
                "nested \"service\" specifications not supported in service file \"{file}\", line {lineno}"
            ));
        }
        let mut probe = ConnInfo::default();
        if key == "password" || probe.set(key, val.to_string()).is_ok() {
            settings.push((key.to_string(), val.to_string()));
        } else {
            return Err(format!(
                "syntax error in service file \"{file}\", line {lineno}"
            ));
        }
    }
    Ok(found)
}

/// Looks the service up in one file; a missing file defines nothing.
fn lookup_file(path: &Path, service: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "service file \"{}\" could not be read: {e}",
                path.display()
            ))
        }
    };
    parse(
        &String::from_utf8_lossy(&text),
        &path.display().to_string(),
        service,
    )
}

/// The service's settings from the files, in libpq's order.
pub fn lookup(
    service: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let user_file = match get("PGSERVICEFILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => get("HOME").map(|h| Path::new(&h).join(".pg_service.conf")),
    };
    if let Some(f) = user_file {
        if let Some(settings) = lookup_file(&f, service)? {
            return Ok(settings);
        }
    }
    let sysconf = get("PGSYSCONFDIR").unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_string());
    if let Some(settings) = lookup_file(&Path::new(&sysconf).join("pg_service.conf"), service)? {
        return Ok(settings);
    }
    Err(format!("definition of service \"{service}\" not found"))
}

/// Applies the service named by `ci.service` or `PGSERVICE` to the settings `ci` left
/// unset. Errors are kept in `ci.deferred_error` (reported by `ConnInfo::validate`).
pub fn apply(ci: &mut ConnInfo, env: &dyn Fn(&str) -> Option<String>) {
    let Some(service) = ci
        .service
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| env("PGSERVICE").filter(|s| !s.is_empty()))
    else {
        return;
    };
    match lookup(&service, env) {
        Ok(settings) => {
            let mut from_file = ConnInfo::default();
            for (k, v) in settings {
                if let Err(e) = from_file.set(&k, v) {
                    ci.deferred_error = Some(e.0);
                    return;
                }
            }
            ci.fill_unset_from(from_file);
        }
        Err(e) => ci.deferred_error = Some(e),
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)] // tests may panic
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
        [other]\n\
        host=wrong\n\
        \n\
        [mydb]\n\
        \x20 host=db1,db2\n\
        port=5433\n\
        user=replicator\n\
        sslmode=verify-full   \n\
        [later]\n\
        host=nope\n";

    #[test]
    fn groups_and_errors() {
        let s = parse(FILE, "f", "mydb").unwrap().unwrap();
        assert_eq!(
            s,
            vec![
                ("host".to_string(), "db1,db2".to_string()),
                ("port".into(), "5433".into()),
                ("user".into(), "replicator".into()),
                ("sslmode".into(), "verify-full".into()),
            ]
        );
        assert_eq!(parse(FILE, "f", "missing").unwrap(), None);
        assert_eq!(
            parse("[a]\nhost\n", "f", "a").unwrap_err(),
            "syntax error in service file \"f\", line 2"
        );
        assert_eq!(
            parse("[a]\nbogus=1\n", "f", "a").unwrap_err(),
            "syntax error in service file \"f\", line 2"
        );
        assert_eq!(
            parse("[a]\nhost =x\n", "f", "a").unwrap_err(),
            "syntax error in service file \"f\", line 2"
        );
        assert_eq!(
            parse("[a]\nservice=b\n", "f", "a").unwrap_err(),
            "nested \"service\" specifications not supported in service file \"f\", line 2"
        );
        // Errors outside the wanted group do not matter.
        assert_eq!(
            parse("[b]\nhost\n[a]\nport=1\n", "f", "a")
                .unwrap()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn precedence() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.conf");
        std::fs::write(&user, "[svc]\nhost=from-user-file\nport=7000\n").unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir(&sys).unwrap();
        std::fs::write(
            sys.join("pg_service.conf"),
            "[svc]\nhost=from-sysconf\n[syssvc]\nhost=sys-only\npassword=pw\n",
        )
        .unwrap();
        let u = user.display().to_string();
        let d = sys.display().to_string();
        let env = move |k: &str| match k {
            "PGSERVICEFILE" => Some(u.clone()),
            "PGSYSCONFDIR" => Some(d.clone()),
            "PGPORT" => Some("9999".into()),
            "PGHOST" => Some("from-env".into()),
            _ => None,
        };
        // The user file wins over the system file; the connection string over both; the
        // service over the environment.
        let mut ci = ConnInfo::parse("service=svc user=explicit").unwrap();
        ci.apply_env(&env);
        ci.validate().unwrap();
        assert_eq!(ci.host.as_deref(), Some("from-user-file"));
        assert_eq!(ci.port.as_deref(), Some("7000"));
        assert_eq!(ci.user.as_deref(), Some("explicit"));
        let mut ci = ConnInfo::parse("service=svc host=explicit").unwrap();
        ci.apply_env(&env);
        assert_eq!(ci.host.as_deref(), Some("explicit"));
        // Only in the system file.
        let mut ci = ConnInfo::parse("service=syssvc").unwrap();
        ci.apply_env(&env);
        assert_eq!(ci.host.as_deref(), Some("sys-only"));
        assert_eq!(ci.password.as_deref(), Some("pw"));
        assert_eq!(ci.port.as_deref(), Some("9999"));
        // PGSERVICE names it when the string does not.
        let env2 = |k: &str| {
            if k == "PGSERVICE" {
                Some("syssvc".to_string())
            } else {
                env(k)
            }
        };
        let mut ci = ConnInfo::parse("").unwrap();
        ci.apply_env(&env2);
        assert_eq!(ci.host.as_deref(), Some("sys-only"));
        // Unknown service: libpq's message at validation.
        let mut ci = ConnInfo::parse("service=nope").unwrap();
        ci.apply_env(&env);
        assert_eq!(
            ci.validate().unwrap_err().0,
            "definition of service \"nope\" not found"
        );
    }
}

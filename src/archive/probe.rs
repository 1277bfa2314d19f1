//! The start-up probe of an archive: is it there, may walrelay read it, may it write?
//!
//! Owns: one bounded check before `run`, `verify`, `wal-fetch` and `bench-archive` start
//! working: for a `file://` archive read by `verify`/`wal-fetch` the directory must exist
//! (a missing one is an unmounted share, never an empty archive); a listing under the
//! prefix; and, unless read-only, a throwaway create-if-absent object under
//! `<prefix>/walrelay-probe/`, deleted again. Everything is bounded by a timeout, so missing
//! credentials (object_store then asks a cloud metadata service that is not there) give a
//! plain message instead of warnings in a loop.
//! Must not: touch WAL objects, manifests or the identity.

use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::{PutMode, PutOptions, PutPayload};

use super::backend::{self, Backend};
use super::{ArchiveError, ArchiveSettings};

/// How long the whole probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory of walrelay's throwaway probe objects, under the archive prefix.
pub const PROBE_DIR: &str = "walrelay-probe";

/// What the caller will do with the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `wal-fetch`, `verify`: list and read.
    ReadOnly,
    /// `run`, `bench-archive`: also create and delete objects.
    ReadWrite,
}

fn unusable(backend: &Backend, what: String) -> ArchiveError {
    let mut reason = what;
    if let Some(note) = &backend.credentials_note {
        reason.push_str("; ");
        reason.push_str(note);
    }
    ArchiveError::Unusable {
        url: backend.url.clone(),
        reason,
    }
}

/// For a read-only `file://` archive: the directory must exist (checked before
/// [`backend::open`], which would create it).
pub fn check_file_url_exists(url: &str) -> Result<(), ArchiveError> {
    if let Some(path) = url.strip_prefix("file://") {
        let p = std::path::Path::new(path);
        if p.is_absolute() && !p.is_dir() {
            return Err(ArchiveError::Unusable {
                url: url.to_string(),
                reason: format!(
                    "the archive directory \"{path}\" does not exist (an unmounted share?)"
                ),
            });
        }
    }
    Ok(())
}

/// Opens the archive of `settings` and probes it; the opened backend on success.
/// `Ok(None)` when archiving is disabled (`archive.url = "none"`).
pub async fn open_checked(
    settings: &ArchiveSettings,
    access: Access,
) -> Result<Option<Backend>, ArchiveError> {
    let Some(url) = settings.url() else {
        return Ok(None);
    };
    if access == Access::ReadOnly {
        check_file_url_exists(&url)?;
    }
    let b = backend::open(&url, &settings.config)?;
    probe(&b, access, PROBE_TIMEOUT).await?;
    Ok(Some(b))
}

/// Lists under the prefix and, for [`Access::ReadWrite`], creates and deletes a throwaway
/// object; all within `timeout`.
pub async fn probe(b: &Backend, access: Access, timeout: Duration) -> Result<(), ArchiveError> {
    match tokio::time::timeout(timeout, probe_inner(b, access)).await {
        Ok(r) => r,
        Err(_) => Err(unusable(b, format!("no answer within {timeout:?}"))),
    }
}

async fn probe_inner(b: &Backend, access: Access) -> Result<(), ArchiveError> {
    let prefix = (!b.prefix.as_ref().is_empty()).then_some(&b.prefix);
    b.store
        .list_with_delimiter(prefix)
        .await
        .map_err(|e| unusable(b, format!("could not list \"{}\": {e}", b.prefix)))?;
    if access == Access::ReadOnly {
        return Ok(());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{}-{nanos}", std::process::id());
    let path: ObjPath = b.prefix.child(PROBE_DIR).child(name.as_str());
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    b.store
        .put_opts(&path, PutPayload::from_static(b"walrelay probe\n"), opts)
        .await
        .map_err(|e| unusable(b, format!("could not write \"{path}\": {e}")))?;
    b.store
        .delete(&path)
        .await
        .map_err(|e| unusable(b, format!("could not delete \"{path}\": {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ArchiveConfig;

    #[tokio::test]
    async fn file_archive_probe() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("file://{}/missing", d.path().display());
        let s = ArchiveSettings::new(
            ArchiveConfig {
                url: Some(url.clone()),
                ..Default::default()
            },
            d.path(),
        );
        let e = open_checked(&s, Access::ReadOnly).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "archive {url} is not usable: the archive directory \"{}/missing\" does not exist (an unmounted share?)",
                d.path().display()
            )
        );
        // run creates it, and the probe leaves nothing behind
        assert!(open_checked(&s, Access::ReadWrite).await.unwrap().is_some());
        let probe_dir = d.path().join("missing").join(PROBE_DIR);
        let left = std::fs::read_dir(&probe_dir)
            .map(|r| r.count())
            .unwrap_or(0);
        assert_eq!(left, 0);
        assert!(open_checked(&s, Access::ReadOnly).await.unwrap().is_some());
    }

    /// A store that never answers (a TCP listener that accepts nothing): the probe gives up
    /// with a plain message within its timeout; without credentials the message says so.
    #[tokio::test]
    async fn unanswered_probe_is_bounded() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut cfg = ArchiveConfig::default();
        cfg.s3.endpoint = Some(format!("http://127.0.0.1:{port}"));
        cfg.s3.region = Some("us-east-1".into());
        let mut with_keys = cfg.clone();
        with_keys.s3.access_key_id = Some("k".into());
        with_keys.s3.secret_access_key = Some("s".into());
        let b = backend::open("s3://bucket/p", &with_keys).unwrap();
        let e = probe(&b, Access::ReadWrite, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "archive s3://bucket/p is not usable: no answer within 300ms"
        );

        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            let b = backend::open("s3://bucket/p", &cfg).unwrap();
            let e = probe(&b, Access::ReadOnly, Duration::from_secs(5))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("archive s3://bucket/p is not usable: "),
                "{e}"
            );
            assert!(
                e.ends_with("; no S3 credentials are configured (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or archive.s3.access_key_id and secret_access_key), so they were asked from the EC2 instance metadata service (169.254.169.254)"),
                "{e}"
            );
        }
        drop(l);
    }
}

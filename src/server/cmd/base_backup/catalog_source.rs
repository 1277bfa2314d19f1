//! [`BackupSource`](super::BackupSource) over the archive's backup catalog
//! ([`crate::backup::catalog`]): listing (with completeness) and opening archives and the
//! manifest. `Empty` (the archive holds nothing of this system yet) and `Failing` (the
//! archive could not be opened) answer like a catalog would. Must not: parse the archive's
//! layout itself.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;

use super::{BackupSource, ByteStream, ServedArchive, ServedBackup};
use crate::backup::catalog::{self, BackupMeta, BackupStream, Catalog};

pub(super) struct Empty;

#[async_trait::async_trait]
impl BackupSource for Empty {
    async fn list(&self, _: u64) -> Result<Vec<(ServedBackup, bool)>, String> {
        Ok(Vec::new())
    }
    async fn open(&self, b: &ServedBackup, _: Option<&str>) -> Result<ByteStream, String> {
        Err(format!("backup {} is not in the archive", b.id))
    }
}

pub(super) struct Failing(pub String);

#[async_trait::async_trait]
impl BackupSource for Failing {
    async fn list(&self, _: u64) -> Result<Vec<(ServedBackup, bool)>, String> {
        Err(self.0.clone())
    }
    async fn open(&self, _: &ServedBackup, _: Option<&str>) -> Result<ByteStream, String> {
        Err(self.0.clone())
    }
}

/// The catalog, and the metadata of the backups it listed (to open them).
pub(super) struct CatalogSource {
    cat: Catalog,
    metas: Mutex<HashMap<String, BackupMeta>>,
}

impl CatalogSource {
    pub fn new(reader: crate::archive::reader::ArchiveReader) -> CatalogSource {
        CatalogSource {
            cat: Catalog::from_reader(reader),
            metas: Mutex::new(HashMap::new()),
        }
    }
}

fn served(m: &BackupMeta) -> Option<ServedBackup> {
    Some(ServedBackup {
        id: m.id.clone(),
        system_id: m.system_id.parse().ok()?,
        start_lsn: m.start_lsn.parse().ok()?,
        timeline: m.timeline,
        stop_lsn: m.stop_lsn.parse().ok()?,
        stop_timeline: m.stop_timeline,
        archives: m
            .archives
            .iter()
            .map(|a| ServedArchive {
                name: a.name.clone(),
                tablespace_oid: a.tablespace_oid,
                location: a.location.clone(),
                size: a.size,
            })
            .collect(),
        has_manifest: m.manifest.is_some(),
    })
}

fn stream(s: BackupStream) -> ByteStream {
    s.map(|r| r.map_err(|e| e.to_string())).boxed()
}

#[async_trait::async_trait]
impl BackupSource for CatalogSource {
    async fn list(&self, system_id: u64) -> Result<Vec<(ServedBackup, bool)>, String> {
        let all = catalog::list(&self.cat).await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(all.len());
        let mut metas = HashMap::new();
        for (meta, status) in all {
            let Some(b) = served(&meta).filter(|b| b.system_id == system_id) else {
                continue;
            };
            out.push((b, status.is_complete()));
            metas.insert(meta.id.clone(), meta);
        }
        if let Ok(mut m) = self.metas.lock() {
            *m = metas;
        }
        Ok(out)
    }
    async fn open(&self, b: &ServedBackup, name: Option<&str>) -> Result<ByteStream, String> {
        let meta = self
            .metas
            .lock()
            .ok()
            .and_then(|m| m.get(&b.id).cloned())
            .ok_or_else(|| format!("backup {} is not in the archive", b.id))?;
        match name {
            Some(n) => catalog::open_archive(&self.cat, &meta, n)
                .await
                .map(stream)
                .map_err(|e| e.to_string()),
            None => match catalog::open_manifest(&self.cat, &meta).await {
                Ok(Some(st)) => Ok(stream(st)),
                Ok(None) => Err(format!("backup {} has no manifest", b.id)),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

//! Reading a stored backup's archives from blocking code: the bridge between the backup
//! catalog's async streams and the tar extraction, which runs on a blocking thread.
//!
//! Owns: [`CatalogOpener`] (opens `base.tar`/`<oid>.tar` through
//! `backup::catalog::open_archive`, which decrypts, decompresses and checks size and SHA-256
//! at the end; a mismatch surfaces as a read error of the last read) and the conversion of a
//! backup's metadata into [`ArchivePart`]s.
//! Must not: be called from an async worker thread (its reads block on the runtime).

use std::io::Read;
use std::path::PathBuf;

use bytes::{Buf, Bytes};
use futures::StreamExt;

use super::core::{ArchivePart, Opener};
use super::RestoreError;
use crate::backup::catalog::{self, BackupMeta, BackupStream, Catalog};

/// Opens a stored backup's archives.
pub struct CatalogOpener {
    pub handle: tokio::runtime::Handle,
    pub catalog: Catalog,
    pub meta: BackupMeta,
}

struct StreamReader {
    handle: tokio::runtime::Handle,
    stream: BackupStream,
    buf: Bytes,
    done: bool,
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() && !self.done {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None => self.done = true,
            }
        }
        let n = out.len().min(self.buf.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), self.buf.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.buf.advance(n);
        Ok(n)
    }
}

impl Opener for CatalogOpener {
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, RestoreError> {
        let stream = self
            .handle
            .block_on(catalog::open_archive(&self.catalog, &self.meta, name))
            .map_err(|e| RestoreError::Archive(e.to_string()))?;
        Ok(Box::new(StreamReader {
            handle: self.handle.clone(),
            stream,
            buf: Bytes::new(),
            done: false,
        }))
    }
}

/// The archives of a stored backup, base first.
pub fn parts(meta: &BackupMeta) -> Vec<ArchivePart> {
    let mut v: Vec<ArchivePart> = meta
        .archives
        .iter()
        .map(|a| ArchivePart {
            name: a.name.clone(),
            tablespace_oid: a.tablespace_oid,
            location: a.location.as_ref().map(PathBuf::from),
        })
        .collect();
    v.sort_by_key(|p| p.tablespace_oid.is_some());
    v
}

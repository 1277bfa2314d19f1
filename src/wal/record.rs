//! WAL records (placeholder, filled in next).
use crate::lsn::Lsn;
use bytes::Bytes;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub end: Lsn,
    pub xid: u32,
    pub rmid: u8,
    pub info: u8,
    pub data: Bytes,
}
#[derive(Debug)]
pub struct RecordDecoder;

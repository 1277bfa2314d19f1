//! xact (placeholder)
use super::record::Record;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelFileLocator {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XactKind {
    Commit,
    CommitPrepared,
    Abort,
    AbortPrepared,
    Prepare,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XactRecord {
    pub kind: XactKind,
    pub xact_time: i64,
    pub xid: u32,
    pub dropped_rels: Vec<RelFileLocator>,
}
pub fn decode_xact(_r: &Record) -> Option<XactRecord> {
    None
}
pub fn decode_restore_point(_r: &Record) -> Option<(i64, String)> {
    None
}

//! The CopyOut stream of BASE_BACKUP, as a walsender sends it.
//!
//! Owns: the messages of both shapes (`basebackup_copy.c` for PostgreSQL 15+, `basebackup.c`
//! of 13/14 before it):
//! - 15+: one CopyOutResponse, then CopyData messages whose first byte says what they carry:
//!   `n` a new archive (archive name, tablespace location or ""), `d` archive or manifest
//!   bytes, `p` progress (int64 bytes done), `m` the manifest follows; then CopyDone.
//! - ≤ 14: one CopyOutResponse … CopyDone per tar (bare CopyData bytes), then one more for
//!   the manifest.
//!
//! The result sets around the COPY (start/end position, tablespaces) are ordinary rows built
//! by the handler (`server/cmd/base_backup.rs`). Must not: do I/O.
//!
//! Data messages are split into a header and the payload, so the payload (a `Bytes` read
//! from the archive) goes to the socket without a copy.

use bytes::{BufMut, BytesMut};

use super::frame::{begin, end};
use super::put_cstr;

/// CopyOutResponse: overall format 0 (text), zero columns, as `SendCopyOutResponse`.
pub fn copy_out_response(buf: &mut BytesMut) {
    let at = begin(buf, b'H');
    buf.put_u8(0);
    buf.put_i16(0);
    end(buf, at);
}

/// 15+: CopyData `n`: a new archive begins.
pub fn new_archive(buf: &mut BytesMut, archive_name: &str, location: &str) {
    let at = begin(buf, b'd');
    buf.put_u8(b'n');
    put_cstr(buf, archive_name);
    put_cstr(buf, location);
    end(buf, at);
}

/// 15+: CopyData `p`: bytes of archive content sent so far.
pub fn progress(buf: &mut BytesMut, bytes_done: u64) {
    let at = begin(buf, b'd');
    buf.put_u8(b'p');
    buf.put_i64(i64::try_from(bytes_done).unwrap_or(i64::MAX));
    end(buf, at);
}

/// 15+: CopyData `m`: the manifest follows (as `d` messages).
pub fn manifest_start(buf: &mut BytesMut) {
    let at = begin(buf, b'd');
    buf.put_u8(b'm');
    end(buf, at);
}

/// The header of a CopyData carrying `len` payload bytes: with `typed` (15+) the payload is
/// preceded by the `d` type byte. `None` if the message would not fit PostgreSQL's length
/// word (callers send chunks far smaller).
pub fn data_header(len: usize, typed: bool) -> Option<BytesMut> {
    let extra = if typed { 5 } else { 4 };
    let total = i32::try_from(len.checked_add(extra)?).ok()?;
    let mut buf = BytesMut::with_capacity(6);
    buf.put_u8(b'd');
    buf.put_i32(total);
    if typed {
        buf.put_u8(b'd');
    }
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_as_postgres_sends_them() {
        let mut b = BytesMut::new();
        copy_out_response(&mut b);
        assert_eq!(&b[..], b"H\0\0\0\x07\0\0\0");
        let mut b = BytesMut::new();
        new_archive(&mut b, "16384.tar", "/srv/ts");
        assert_eq!(&b[..], b"d\0\0\0\x17n16384.tar\0/srv/ts\0");
        let mut b = BytesMut::new();
        new_archive(&mut b, "base.tar", "");
        assert_eq!(&b[..], b"d\0\0\0\x0fnbase.tar\0\0");
        let mut b = BytesMut::new();
        progress(&mut b, 0x0102_0304_0506);
        assert_eq!(&b[..], b"d\0\0\0\x0dp\0\0\x01\x02\x03\x04\x05\x06");
        let mut b = BytesMut::new();
        manifest_start(&mut b);
        assert_eq!(&b[..], b"d\0\0\0\x05m");
        assert_eq!(&data_header(3, true).unwrap()[..], b"d\0\0\0\x08d");
        assert_eq!(&data_header(3, false).unwrap()[..], b"d\0\0\0\x07");
        assert!(data_header(usize::MAX, true).is_none());
        assert!(data_header(i32::MAX as usize, false).is_none());
    }
}

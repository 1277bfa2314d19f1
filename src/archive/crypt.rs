//! Client-side encryption of archived objects (optional; off unless
//! `archive.encryption_key_file` is set).
//!
//! Owns: the key file (32 random bytes, or 64 hex digits; readable by its owner only) and the
//! object format: `WRLCRYP2` | key id (the first 8 bytes of SHA-256 of the key) | 7-byte random
//! nonce prefix | the stored bytes (after compression) in 64 KiB chunks, each sealed with
//! ChaCha20-Poly1305 in the STREAM construction (RustCrypto `aead::stream`, big-endian 32-bit
//! counter and last-chunk flag), so a truncated, reordered or altered object fails to open.
//! Every chunk's associated data is the header (magic, key id, nonce prefix) followed by the
//! object's name ([`object_name`]: its last path component without `.zst`, e.g. the segment
//! file name), so a sealed object stored under another object's name fails to open too.
//! With a key, objects without the header are refused unless `archive.allow_plaintext_objects`.
//! Must not: choose what is encrypted (the archiver does) or ever return unauthenticated bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, OsRng, Payload};
use chacha20poly1305::ChaCha20Poly1305;

use super::ArchiveError;

/// First bytes of an encrypted object.
pub const MAGIC: &[u8; 8] = b"WRLCRYP2";
/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const NONCE_PREFIX: usize = 7;
const HEADER: usize = MAGIC.len() + 8 + NONCE_PREFIX;
/// What manifests record for an encrypted object.
pub const ALGORITHM: &str = "chacha20poly1305-stream-64k";

/// An archive encryption key (its bytes never printed).
#[derive(Clone)]
pub struct Key {
    bytes: Arc<[u8; 32]>,
    id: [u8; 8],
    path: PathBuf,
    /// `archive.allow_plaintext_objects`: objects without the header are read as they are.
    allow_plaintext: bool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ id: {}, path: {:?} }}", self.id_hex(), self.path)
    }
}

fn key_error(path: &Path, why: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Config(format!(
        "archive.encryption_key_file \"{}\": {why}",
        path.display()
    ))
}

impl Key {
    /// Reads a key file: exactly 32 bytes, or 64 hex digits (a trailing newline allowed);
    /// refused when group or others may read it.
    pub fn load(path: &Path) -> Result<Key, ArchiveError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| key_error(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_error(
                path,
                format!("mode {mode:04o} lets group or others read it; chmod 600 it"),
            ));
        }
        let raw = std::fs::read(path).map_err(|e| key_error(path, e))?;
        let bytes: [u8; 32] = match raw.len() {
            32 => raw
                .as_slice()
                .try_into()
                .map_err(|_| key_error(path, "unreadable"))?,
            _ => {
                let text = std::str::from_utf8(&raw).unwrap_or("").trim();
                parse_hex32(text).ok_or_else(|| {
                    key_error(
                        path,
                        format!(
                            "{} bytes; a key is 32 random bytes or 64 hex digits (e.g. `openssl rand -hex 32`)",
                            raw.len()
                        ),
                    )
                })?
            }
        };
        Ok(Key::from_bytes(bytes, path))
    }

    pub fn from_bytes(bytes: [u8; 32], path: &Path) -> Key {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(d.get(..8).unwrap_or(&[0u8; 8]));
        Key {
            bytes: Arc::new(bytes),
            id,
            path: path.to_path_buf(),
            allow_plaintext: false,
        }
    }

    /// This key, reading objects without the encryption header as they are when `allow`
    /// (`archive.allow_plaintext_objects`, for migrating a plaintext archive).
    pub fn allow_plaintext(mut self, allow: bool) -> Key {
        self.allow_plaintext = allow;
        self
    }

    /// The key id recorded in objects and manifests (hex).
    pub fn id_hex(&self) -> String {
        super::layout::hex(&self.id)
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether stored bytes are an encrypted object.
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// The name an object at `path` is bound to: its last path component without `.zst` (the
/// segment, history or snapshot file name), the same under any `archive.url` prefix.
pub fn object_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    super::layout::strip_compression(file).0
}

/// Associated data of every chunk: the object's header, then its name.
fn associated_data(header: &[u8], path: &str) -> Vec<u8> {
    [header, object_name(path).as_bytes()].concat()
}

/// Seals `plain` with `key` as the object at `path`.
pub fn encrypt(key: &Key, plain: &[u8], path: &str) -> Result<Vec<u8>, ArchiveError> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut prefix = [0u8; NONCE_PREFIX];
    OsRng.fill_bytes(&mut prefix);
    let aead = ChaCha20Poly1305::new(key.bytes.as_ref().into());
    let mut enc = EncryptorBE32::from_aead(aead, prefix.as_ref().into());
    let chunks = plain.len().div_ceil(CHUNK).max(1);
    let mut out = Vec::with_capacity(HEADER + plain.len() + chunks * TAG);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(&prefix);
    let aad = associated_data(&out, path);
    let sealed =
        |e: chacha20poly1305::aead::Error| ArchiveError::Config(format!("encryption failed: {e}"));
    let mut rest = plain;
    while rest.len() > CHUNK {
        let (msg, tail) = rest.split_at(CHUNK);
        let piece = enc.encrypt_next(Payload { msg, aad: &aad });
        out.extend_from_slice(&piece.map_err(sealed)?);
        rest = tail;
    }
    let piece = enc.encrypt_last(Payload {
        msg: rest,
        aad: &aad,
    });
    out.extend_from_slice(&piece.map_err(sealed)?);
    Ok(out)
}

/// Opens an encrypted object read from `path`; a missing or different key, any altered
/// byte, or an object sealed under another name, is an error that says which.
pub fn decrypt(key: Option<&Key>, data: &[u8], path: &str) -> Result<Vec<u8>, ArchiveError> {
    let corrupt = |reason: String| ArchiveError::Corrupt {
        path: path.to_string(),
        reason,
    };
    let (Some(header), Some(id), Some(prefix), Some(body)) = (
        data.get(..HEADER),
        data.get(MAGIC.len()..MAGIC.len() + 8),
        data.get(MAGIC.len() + 8..HEADER),
        data.get(HEADER..),
    ) else {
        return Err(corrupt("encrypted object shorter than its header".into()));
    };
    let id_hex = super::layout::hex(id);
    let Some(key) = key else {
        return Err(ArchiveError::Encryption(format!(
            "archive object \"{path}\" is encrypted (key id {id_hex}); set archive.encryption_key_file to that key"
        )));
    };
    if key.id != id {
        return Err(ArchiveError::Encryption(format!(
            "archive object \"{path}\" is encrypted with key id {id_hex}, but archive.encryption_key_file \"{}\" holds key id {}",
            key.path.display(),
            key.id_hex()
        )));
    }
    let aead = ChaCha20Poly1305::new(key.bytes.as_ref().into());
    let mut dec = DecryptorBE32::from_aead(aead, prefix.into());
    let mut out = Vec::with_capacity(body.len());
    let aad = associated_data(header, path);
    let auth = |_| {
        corrupt(format!(
            "authentication failed (altered, truncated, or not sealed as \"{}\")",
            object_name(path)
        ))
    };
    let pieces: Vec<&[u8]> = body.chunks(CHUNK + TAG).collect();
    let Some((last, init)) = pieces.split_last() else {
        return Err(corrupt("encrypted object has no data".into()));
    };
    for p in init {
        let piece = dec.decrypt_next(Payload { msg: p, aad: &aad });
        out.extend_from_slice(&piece.map_err(auth)?);
    }
    let piece = dec.decrypt_last(Payload {
        msg: last,
        aad: &aad,
    });
    out.extend_from_slice(&piece.map_err(auth)?);
    Ok(out)
}

/// Opens stored bytes for reading: decrypted when encrypted; else as they are when no key is
/// configured or the key allows plaintext objects, and refused otherwise.
pub fn open_stored(
    key: Option<&Key>,
    stored: bytes::Bytes,
    path: &str,
) -> Result<bytes::Bytes, ArchiveError> {
    if is_encrypted(&stored) {
        return decrypt(key, &stored, path).map(bytes::Bytes::from);
    }
    match key {
        Some(k) if !k.allow_plaintext => Err(ArchiveError::Encryption(format!(
            "archive object \"{path}\" is not encrypted, but archive.encryption_key_file \"{}\" is set; \
             refusing it (set archive.allow_plaintext_objects = true while migrating a plaintext archive)",
            k.path.display()
        ))),
        _ => Ok(stored),
    }
}

/// Streaming form of [`encrypt`] (used for base backups, which never sit whole in memory):
/// the output of `push`es and `finish` equals `encrypt` of their concatenated input.
pub struct StreamSealer {
    enc: Option<EncryptorBE32<ChaCha20Poly1305>>,
    aad: Vec<u8>,
    header: Option<Vec<u8>>,
    pending: Vec<u8>,
}

impl StreamSealer {
    /// A sealer for the object at `path`.
    pub fn new(key: &Key, path: &str) -> StreamSealer {
        use chacha20poly1305::aead::rand_core::RngCore;
        let mut prefix = [0u8; NONCE_PREFIX];
        OsRng.fill_bytes(&mut prefix);
        let aead = ChaCha20Poly1305::new(key.bytes.as_ref().into());
        let enc = EncryptorBE32::from_aead(aead, prefix.as_ref().into());
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&key.id);
        header.extend_from_slice(&prefix);
        StreamSealer {
            enc: Some(enc),
            aad: associated_data(&header, path),
            header: Some(header),
            pending: Vec::with_capacity(2 * CHUNK),
        }
    }

    /// Seals what of `plain` fills whole chunks (the last chunk waits for `finish`).
    pub fn push(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h);
        }
        self.pending.extend_from_slice(plain);
        let enc = self
            .enc
            .as_mut()
            .ok_or_else(|| ArchiveError::Config("encryption already finished".into()))?;
        let mut start = 0usize;
        while self.pending.len().saturating_sub(start) > CHUNK {
            let end = start.saturating_add(CHUNK);
            let msg = self.pending.get(start..end).unwrap_or_default();
            let piece = enc
                .encrypt_next(Payload {
                    msg,
                    aad: &self.aad,
                })
                .map_err(|e| ArchiveError::Config(format!("encryption failed: {e}")))?;
            out.extend_from_slice(&piece);
            start = end;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Seals the last chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h);
        }
        let enc = self
            .enc
            .take()
            .ok_or_else(|| ArchiveError::Config("encryption already finished".into()))?;
        let piece = enc
            .encrypt_last(Payload {
                msg: &self.pending,
                aad: &self.aad,
            })
            .map_err(|e| ArchiveError::Config(format!("encryption failed: {e}")))?;
        out.extend_from_slice(&piece);
        Ok(())
    }
}

enum OpenerState {
    /// Fewer than the header's bytes seen so far.
    Start,
    Sealed(DecryptorBE32<ChaCha20Poly1305>),
    Plain,
    Done,
}

/// Streaming form of [`open_stored`]: decrypts an object as it is downloaded, or passes a
/// plaintext object through under the same rules. Bytes come out only once authenticated.
pub struct StreamOpener {
    key: Option<Key>,
    path: String,
    state: OpenerState,
    aad: Vec<u8>,
    pending: Vec<u8>,
}

impl StreamOpener {
    pub fn new(key: Option<&Key>, path: &str) -> StreamOpener {
        StreamOpener {
            key: key.cloned(),
            path: path.to_string(),
            state: OpenerState::Start,
            aad: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn corrupt(&self, reason: String) -> ArchiveError {
        ArchiveError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn begin(&mut self, at_eof: bool) -> Result<(), ArchiveError> {
        if !matches!(self.state, OpenerState::Start) {
            return Ok(());
        }
        let magic_known = self.pending.len() >= MAGIC.len() || at_eof;
        if !magic_known {
            return Ok(());
        }
        if !self.pending.starts_with(MAGIC) {
            // not encrypted: the same rules as open_stored
            if let Some(k) = self.key.as_ref().filter(|k| !k.allow_plaintext) {
                return Err(ArchiveError::Encryption(format!(
                    "archive object \"{}\" is not encrypted, but archive.encryption_key_file \"{}\" is set; \
                     refusing it (set archive.allow_plaintext_objects = true while migrating a plaintext archive)",
                    self.path,
                    k.path.display()
                )));
            }
            self.state = OpenerState::Plain;
            return Ok(());
        }
        if self.pending.len() < HEADER {
            if at_eof {
                return Err(self.corrupt("encrypted object shorter than its header".into()));
            }
            return Ok(());
        }
        let header: Vec<u8> = self.pending.drain(..HEADER).collect();
        let id = header.get(MAGIC.len()..MAGIC.len() + 8).unwrap_or_default();
        let prefix = header.get(MAGIC.len() + 8..HEADER).unwrap_or_default();
        let id_hex = super::layout::hex(id);
        let Some(key) = self.key.as_ref() else {
            return Err(ArchiveError::Encryption(format!(
                "archive object \"{}\" is encrypted (key id {id_hex}); set archive.encryption_key_file to that key",
                self.path
            )));
        };
        if key.id != id {
            return Err(ArchiveError::Encryption(format!(
                "archive object \"{}\" is encrypted with key id {id_hex}, but archive.encryption_key_file \"{}\" holds key id {}",
                self.path,
                key.path.display(),
                key.id_hex()
            )));
        }
        let aead = ChaCha20Poly1305::new(key.bytes.as_ref().into());
        self.aad = associated_data(&header, &self.path);
        self.state = OpenerState::Sealed(DecryptorBE32::from_aead(aead, prefix.into()));
        Ok(())
    }

    fn auth_error(&self) -> ArchiveError {
        self.corrupt(format!(
            "authentication failed (altered, truncated, or not sealed as \"{}\")",
            object_name(&self.path)
        ))
    }

    /// Feeds stored bytes; appends the authenticated plaintext available so far to `out`.
    pub fn push(&mut self, stored: &[u8], out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        self.pending.extend_from_slice(stored);
        self.begin(false)?;
        match &mut self.state {
            OpenerState::Start => Ok(()),
            OpenerState::Plain => {
                out.append(&mut self.pending);
                Ok(())
            }
            OpenerState::Done => Err(self.corrupt("data after the end".into())),
            OpenerState::Sealed(dec) => {
                let mut start = 0usize;
                let mut failed = false;
                while self.pending.len().saturating_sub(start) > CHUNK + TAG {
                    let end = start.saturating_add(CHUNK + TAG);
                    let msg = self.pending.get(start..end).unwrap_or_default();
                    match dec.decrypt_next(Payload {
                        msg,
                        aad: &self.aad,
                    }) {
                        Ok(p) => out.extend_from_slice(&p),
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                    start = end;
                }
                self.pending.drain(..start);
                if failed {
                    return Err(self.auth_error());
                }
                Ok(())
            }
        }
    }

    /// The end of the stored object: opens the last chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        self.begin(true)?;
        match std::mem::replace(&mut self.state, OpenerState::Done) {
            OpenerState::Start | OpenerState::Done => Ok(()),
            OpenerState::Plain => {
                out.append(&mut self.pending);
                Ok(())
            }
            OpenerState::Sealed(dec) => {
                if self.pending.is_empty() {
                    return Err(self.corrupt("encrypted object has no data".into()));
                }
                let p = dec
                    .decrypt_last(Payload {
                        msg: &self.pending,
                        aad: &self.aad,
                    })
                    .map_err(|_| self.auth_error())?;
                out.extend_from_slice(&p);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; 32], Path::new("/k"))
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = key(1);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 16 << 20] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let c = encrypt(&k, &plain, "o").unwrap();
            assert!(is_encrypted(&c));
            assert_ne!(c.get(HEADER..HEADER + 16), plain.get(..16));
            assert_eq!(decrypt(Some(&k), &c, "o").unwrap(), plain, "len {len}");
        }
        let plain = vec![5u8; 3 * CHUNK + 10];
        let c = encrypt(&k, &plain, "o").unwrap();
        let e = decrypt(Some(&key(2)), &c, "o").unwrap_err().to_string();
        assert!(e.contains("is encrypted with key id"), "{e}");
        let e = decrypt(None, &c, "o").unwrap_err().to_string();
        assert!(e.contains("set archive.encryption_key_file"), "{e}");
        // altered byte, truncated at a chunk boundary, truncated inside a chunk
        let mut bad = c.clone();
        bad[HEADER + 100] ^= 1;
        assert!(decrypt(Some(&k), &bad, "o").is_err());
        let cut = &c[..HEADER + 3 * (CHUNK + TAG)];
        assert!(decrypt(Some(&k), cut, "o").is_err());
        assert!(decrypt(Some(&k), &c[..c.len() - 1], "o").is_err());
    }

    const SEG1: &str = "p/7/wal/000000010000000000000001";
    const SEG2: &str = "p/7/wal/000000010000000000000002";

    #[test]
    fn sealed_object_is_bound_to_its_name() {
        let k = key(1);
        for len in [10, 3 * CHUNK + 10] {
            let plain = vec![5u8; len];
            let c = encrypt(&k, &plain, &format!("{SEG1}.zst")).unwrap();
            // the same name under another prefix, with or without `.zst`, opens
            for path in [SEG1, "moved/elsewhere/7/wal/000000010000000000000001.zst"] {
                assert_eq!(
                    open_stored(Some(&k), c.clone().into(), path).unwrap(),
                    plain
                );
            }
            // renamed to another segment's (or a snapshot's) name: refused, naming the object
            for path in [
                SEG2,
                "p/7/partial/000000010000000000000001.00A00000.partial",
            ] {
                let e = open_stored(Some(&k), c.clone().into(), path).unwrap_err();
                assert!(matches!(e, ArchiveError::Corrupt { .. }), "{e:?}");
                let e = e.to_string();
                assert!(
                    e.contains(path) && e.contains("authentication failed"),
                    "{e}"
                );
            }
        }
        // the key id is bound too: a header edited to another id fails even with that id's key
        let c = encrypt(&k, b"wal", SEG1).unwrap();
        let mut edited = c.clone();
        edited[MAGIC.len()] ^= 1;
        let e = decrypt(Some(&k), &edited, SEG1).unwrap_err().to_string();
        assert!(e.contains("is encrypted with key id"), "{e}");
        let mut edited = c;
        edited[HEADER - 1] ^= 1;
        assert!(decrypt(Some(&k), &edited, SEG1).is_err());
    }

    #[test]
    fn plaintext_objects_need_allow_plaintext_objects() {
        let plain = bytes::Bytes::from_static(b"plaintext segment bytes");
        let e = open_stored(Some(&key(1)), plain.clone(), SEG1).unwrap_err();
        assert!(matches!(e, ArchiveError::Encryption(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "archive object \"{SEG1}\" is not encrypted, but archive.encryption_key_file \"/k\" is set; \
                 refusing it (set archive.allow_plaintext_objects = true while migrating a plaintext archive)"
            )
        );
        let lenient = key(1).allow_plaintext(true);
        assert_eq!(
            open_stored(Some(&lenient), plain.clone(), SEG1).unwrap(),
            plain
        );
        assert_eq!(open_stored(None, plain.clone(), SEG1).unwrap(), plain);
        // allowing plaintext does not weaken sealed objects
        let c = encrypt(&lenient, b"wal", SEG1).unwrap();
        assert!(open_stored(Some(&lenient), c.into(), SEG2).is_err());
    }

    #[test]
    fn allow_plaintext_objects_from_the_configuration() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, [9u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let plain = bytes::Bytes::from_static(b"plaintext");
        for (allow, opens) in [
            ("", false),
            ("allow_plaintext_objects = false\n", false),
            ("allow_plaintext_objects = true\n", true),
        ] {
            let text = format!(
                "data_dir = \"/d\"\n[archive]\nencryption_key_file = \"{}\"\n{allow}",
                p.display()
            );
            let c = crate::config::Config::parse(&text).unwrap();
            let k = c.archive.encryption_key.as_ref();
            assert_eq!(open_stored(k, plain.clone(), SEG1).is_ok(), opens, "{text}");
        }
    }

    #[test]
    fn key_files() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, [9u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Key::load(&p).unwrap_err().to_string();
        assert!(e.contains("mode 0644 lets group or others read it"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = Key::load(&p).unwrap();
        std::fs::write(&p, format!("{}\n", "09".repeat(32))).unwrap();
        let b = Key::load(&p).unwrap();
        assert_eq!(a.id_hex(), b.id_hex());
        std::fs::write(&p, "short").unwrap();
        assert!(Key::load(&p).unwrap_err().to_string().contains("5 bytes"));
        assert!(!format!("{a:?}").contains("9, 9"));
    }

    #[test]
    fn streaming_matches_whole_object() {
        let k = key(3);
        let path = "p/7/backups/20260101T000000Z/base.tar.zst";
        for len in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            for piece in [1usize, 1000, CHUNK, 5 * CHUNK] {
                let mut sealer = StreamSealer::new(&k, path);
                let mut sealed = Vec::new();
                for p in plain.chunks(piece) {
                    sealer.push(p, &mut sealed).unwrap();
                }
                sealer.finish(&mut sealed).unwrap();
                // the whole-object opener reads it
                assert_eq!(decrypt(Some(&k), &sealed, path).unwrap(), plain);
                // and the streaming opener, fed in other pieces
                let mut opener = StreamOpener::new(Some(&k), path);
                let mut out = Vec::new();
                for p in sealed.chunks(777) {
                    opener.push(p, &mut out).unwrap();
                }
                opener.finish(&mut out).unwrap();
                assert_eq!(out, plain, "len {len} piece {piece}");
            }
        }
        // whole-object sealed, streamed open; truncation and alteration are caught
        let plain = vec![9u8; 2 * CHUNK + 5];
        let sealed = encrypt(&k, &plain, path).unwrap();
        for bad in [
            sealed[..sealed.len() - 1].to_vec(),
            sealed[..HEADER + CHUNK + TAG].to_vec(),
            {
                let mut b = sealed.clone();
                b[HEADER + 5] ^= 1;
                b
            },
        ] {
            let mut opener = StreamOpener::new(Some(&k), path);
            let mut out = Vec::new();
            let r = opener
                .push(&bad, &mut out)
                .and_then(|_| opener.finish(&mut out));
            assert!(matches!(r, Err(ArchiveError::Corrupt { .. })), "{r:?}");
        }
        // another name: refused
        let mut opener = StreamOpener::new(Some(&k), "p/7/backups/x/16384.tar");
        let mut out = Vec::new();
        opener.push(&sealed, &mut out).unwrap_or(());
        assert!(opener.finish(&mut out).is_err());
        // plaintext with a key: refused; without: passed through
        let mut opener = StreamOpener::new(Some(&k), path);
        assert!(matches!(
            opener.push(b"plaintext tar bytes", &mut out),
            Err(ArchiveError::Encryption(_))
        ));
        let mut opener = StreamOpener::new(None, path);
        let mut out = Vec::new();
        opener.push(b"plain", &mut out).unwrap();
        opener.finish(&mut out).unwrap();
        assert_eq!(out, b"plain");
    }
}

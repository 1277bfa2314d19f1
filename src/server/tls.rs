//! TLS for the walsender (rustls, ring provider).
//!
//! Owns: loading the server certificate chain and key (and the CA for client certificates)
//! from PEM files, the `tls-server-end-point` channel-binding hash of our own certificate
//! (RFC 5929: hashed with the certificate's signature hash, SHA-256 for MD5/SHA-1), and a
//! small non-panicking DER walk that reads the subject CN of a client certificate for `cert`
//! authentication. Must not: do socket IO.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// What a session needs to offer TLS.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    /// tls-server-end-point hash of our leaf certificate.
    pub endpoint_hash: Vec<u8>,
}

/// Loads the certificate, key and optional client CA.
pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<TlsSetup, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            format!(
                "could not read certificate file \"{}\": {e}",
                cert.display()
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "could not read certificate file \"{}\": {e}",
                cert.display()
            )
        })?;
    let leaf = certs
        .first()
        .ok_or_else(|| format!("no certificate in \"{}\"", cert.display()))?;
    let endpoint_hash = endpoint_hash(leaf.as_ref());
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("could not read private key file \"{}\": {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("could not read CA file \"{}\": {e}", ca.display()))?
            {
                let c =
                    c.map_err(|e| format!("could not read CA file \"{}\": {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("bad CA certificate in \"{}\": {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("TLS client verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate/key: {e}"))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        endpoint_hash,
    })
}

/// A DER TLV: (tag, content, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)?;
    let (len, hdr) = if l0 < 0x80 {
        (usize::from(l0), 2)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(i.checked_add(2)?)?);
        }
        (len, n.checked_add(2)?)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

/// tls-server-end-point: hash of the certificate with its signature's hash function.
pub fn endpoint_hash(cert: &[u8]) -> Vec<u8> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let alg_oid = (|| {
        let (_, cert_body, _) = tlv(cert)?;
        let (_, _, rest) = tlv(cert_body)?; // tbsCertificate
        let (_, alg, _) = tlv(rest)?; // AlgorithmIdentifier
        let (tag, oid, _) = tlv(alg)?;
        (tag == 0x06).then(|| oid.to_vec())
    })()
    .unwrap_or_default();
    // sha384WithRSA 1.2.840.113549.1.1.12, ecdsa-with-SHA384 1.2.840.10045.4.3.3,
    // sha512WithRSA …1.1.13, ecdsa-with-SHA512 …4.3.4
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    if SHA384.contains(&alg_oid.as_slice()) {
        Sha384::digest(cert).to_vec()
    } else if SHA512.contains(&alg_oid.as_slice()) {
        Sha512::digest(cert).to_vec()
    } else {
        Sha256::digest(cert).to_vec()
    }
}

/// The subject's commonName (OID 2.5.4.3) of a certificate, if any.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    let (_, cert_body, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(cert_body)?;
    let mut rest = tbs;
    // optional [0] version
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, mut subject, _) = tlv(rest)?;
    let mut cn = None;
    while !subject.is_empty() {
        let (_, set, next) = tlv(subject)?;
        subject = next;
        let mut set = set;
        while !set.is_empty() {
            let (_, atv, next) = tlv(set)?;
            set = next;
            let (tag, oid, value) = tlv(atv)?;
            if tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, v, _) = tlv(value)?;
                cn = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..3000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v: Vec<u8> = (0..n % 64).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = subject_cn(&v);
            assert_eq!(endpoint_hash(&v).len(), 32);
        }
    }
}

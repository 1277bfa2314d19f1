//! TLS for the upstream connection with libpq's `sslmode` semantics.
//!
//! Owns: building the rustls [`ClientConfig`] (ring provider) for a [`SslMode`], the
//! certificate verifiers that give `require`/`verify-ca`/`verify-full` their meaning, loading
//! `sslrootcert`/`sslcert`/`sslkey`, turning handshake failures into libpq-like messages, and
//! the `tls-server-end-point` channel-binding hash (RFC 5929) with a small DER walk.
//! Must not: do socket IO (the connection does the handshake).
//!
//! Semantics, as in libpq:
//! - `disable`: no TLS. `allow`/`prefer`/`require`: TLS without verifying the server
//!   certificate, unless a root certificate file exists (`sslrootcert`, default
//!   `~/.postgresql/root.crt`), in which case the chain is verified against it (like
//!   `verify-ca`).
//! - `verify-ca`: the chain must lead to `sslrootcert`; the host name is not checked.
//! - `verify-full`: chain and host name (DNS names and IP addresses) are checked.
//! - `sslrootcert=system` is not supported (no system trust store dependency).
//! - A client certificate is sent when `sslcert` (default `~/.postgresql/postgresql.crt`)
//!   exists, with its key from `sslkey` (default `~/.postgresql/postgresql.key`).
//!   Handshake signatures are always verified, even when the certificate is not.
//! - `sslcertmode` (PostgreSQL 16): `disable` never sends a client certificate, `allow` (the
//!   default) sends one when configured and asked for, `require` fails the connection at
//!   AuthenticationOk unless the server asked for a certificate and got one
//!   ([`ClientCertTracker`]).
//! - `sslcrl` / `sslcrldir`: when the chain is verified, certificates revoked by a CRL
//!   (PEM; `sslcrl` a file, default `~/.postgresql/root.crl` when neither is set; every CRL
//!   file in `sslcrldir`) are refused. As with OpenSSL's `X509_V_FLAG_CRL_CHECK_ALL` (libpq's
//!   setting), once CRLs are given, every certificate of the chain below the root must be
//!   covered by one.
//! - `ssl_min_protocol_version` (default `TLSv1.2`) / `ssl_max_protocol_version`: rustls
//!   speaks TLS 1.2 and 1.3 only; a maximum below 1.2 is refused as unsupported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use crate::upstream::conninfo::{ConnInfo, SslCertMode, SslMode, TlsVersion};
use crate::upstream::error::UpstreamError;

fn home_file(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(rel))
}

fn tls_err(s: impl Into<String>) -> UpstreamError {
    UpstreamError::Tls(s.into())
}

/// Whether the server asked for a client certificate during the handshake and whether one
/// was sent (for `sslcertmode=require`, checked at AuthenticationOk like libpq).
#[derive(Debug, Default)]
pub struct ClientCertTracker {
    requested: AtomicBool,
    sent: AtomicBool,
}

impl ClientCertTracker {
    /// libpq's check for `sslcertmode=require`.
    pub fn check_require(&self) -> Result<(), String> {
        if !self.requested.load(Ordering::Acquire) {
            Err("server did not request an SSL certificate".into())
        } else if !self.sent.load(Ordering::Acquire) {
            Err("server accepted connection without a valid SSL certificate".into())
        } else {
            Ok(())
        }
    }
}

/// Sends the configured certificate (if any) when the server asks, and records that.
#[derive(Debug)]
struct TrackingResolver {
    key: Option<Arc<CertifiedKey>>,
    tracker: Arc<ClientCertTracker>,
}

impl ResolvesClientCert for TrackingResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.tracker.requested.store(true, Ordering::Release);
        let k = self.key.clone();
        if k.is_some() {
            self.tracker.sent.store(true, Ordering::Release);
        }
        k
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Reads the CRLs to check against: `sslcrl` (default `~/.postgresql/root.crl` when neither
/// is set) and every CRL file of `sslcrldir`. Missing files are no CRL, as in libpq.
fn load_crls(ci: &ConnInfo) -> Result<Vec<CertificateRevocationListDer<'static>>, UpstreamError> {
    let file = ci.sslcrl.clone().filter(|s| !s.is_empty());
    let dir = ci.sslcrldir.clone().filter(|s| !s.is_empty());
    let file = match (&file, &dir) {
        (None, None) => home_file(".postgresql/root.crl"),
        (f, _) => f.as_ref().map(PathBuf::from),
    };
    let read = |p: &Path| -> Result<Vec<CertificateRevocationListDer<'static>>, UpstreamError> {
        CertificateRevocationListDer::pem_file_iter(p)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                tls_err(format!(
                    "could not load SSL certificate revocation list file \"{}\": {e}",
                    p.display()
                ))
            })
    };
    let mut crls = Vec::new();
    if let Some(f) = file.filter(|f| f.is_file()) {
        crls.extend(read(&f)?);
    }
    if let Some(d) = dir.map(PathBuf::from).filter(|d| d.is_dir()) {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            tls_err(format!(
                "could not read SSL certificate revocation list directory \"{}\": {e}",
                d.display()
            ))
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            // The directory may hold other files (OpenSSL's hash links point at CRLs).
            if let Ok(v) = read(&p) {
                crls.extend(v);
            }
        }
    }
    Ok(crls)
}

/// The rustls protocol versions allowed by `ssl_min/max_protocol_version`.
fn protocol_versions(
    ci: &ConnInfo,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, UpstreamError> {
    let (min, max) = ci.ssl_protocol_range()?;
    if let Some(m) = max.filter(|m| *m < TlsVersion::V1_2) {
        return Err(tls_err(format!(
            "ssl_max_protocol_version {m:?} is not supported by walrelay: it speaks TLS 1.2 and 1.3 only"
        )));
    }
    let mut v = Vec::new();
    for (ver, p) in [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ] {
        if ver >= min && max.is_none_or(|m| ver <= m) {
            v.push(p);
        }
    }
    Ok(v)
}

/// Builds the client configuration for this connection string and mode.
/// `mode` must not be `Disable`.
pub fn client_config(ci: &ConnInfo, mode: SslMode) -> Result<Arc<ClientConfig>, UpstreamError> {
    client_config_tracked(ci, mode).map(|(c, _)| c)
}

/// [`client_config`] plus the tracker of client-certificate requests.
pub fn client_config_tracked(
    ci: &ConnInfo,
    mode: SslMode,
) -> Result<(Arc<ClientConfig>, Arc<ClientCertTracker>), UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    // Root certificates.
    let explicit_root = ci.sslrootcert.clone().filter(|s| !s.is_empty());
    if explicit_root.as_deref() == Some("system") {
        return Err(tls_err(
            "sslrootcert=system is not supported by walrelay; give a root certificate file",
        ));
    }
    let root_path = explicit_root
        .map(PathBuf::from)
        .or_else(|| home_file(".postgresql/root.crt"));
    let root_exists = root_path.as_ref().is_some_and(|p| p.is_file());
    let verify = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if verify && !root_exists {
        let shown = root_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.postgresql/root.crt".into());
        return Err(tls_err(format!(
            "root certificate file \"{shown}\" does not exist\n\
             Either provide the file or change sslmode to disable server certificate verification."
        )));
    }

    let verifier: Arc<dyn ServerCertVerifier> = if root_exists {
        let path = root_path.unwrap_or_default();
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| {
                tls_err(format!(
                    "could not read root certificate file \"{}\": {e}",
                    path.display()
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                tls_err(format!(
                    "could not read root certificate file \"{}\": {e}",
                    path.display()
                ))
            })?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(tls_err(format!(
                "could not read root certificate file \"{}\": no certificates found",
                path.display()
            )));
        }
        let crls = load_crls(ci)?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .build()
            .map_err(|e| tls_err(format!("could not set up certificate verification: {e}")))?;
        if mode == SslMode::VerifyFull {
            inner
        } else {
            Arc::new(NoHostnameVerifier { inner })
        }
    } else {
        Arc::new(AcceptAnyCert {
            provider: provider.clone(),
        })
    };

    let versions = protocol_versions(ci)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_err(format!("could not create SSL context: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    // Client certificate.
    let explicit_cert = ci.sslcert.clone().filter(|s| !s.is_empty());
    let cert_path = explicit_cert
        .clone()
        .map(PathBuf::from)
        .or_else(|| home_file(".postgresql/postgresql.crt"));
    let certmode = ci.sslcertmode()?;
    let key = match cert_path.filter(|p| p.is_file() && certmode != SslCertMode::Disable) {
        Some(cert_path) => {
            let key_path = ci
                .sslkey
                .clone()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .or_else(|| home_file(".postgresql/postgresql.key"))
                .unwrap_or_default();
            let chain = CertificateDer::pem_file_iter(&cert_path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_err(format!(
                        "could not load SSL certificate file \"{}\": {e}",
                        cert_path.display()
                    ))
                })?;
            if chain.is_empty() {
                return Err(tls_err(format!(
                    "could not load SSL certificate file \"{}\": no certificates found",
                    cert_path.display()
                )));
            }
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                tls_err(format!(
                    "could not load private key file \"{}\": {e}",
                    key_path.display()
                ))
            })?;
            Some(Arc::new(
                CertifiedKey::from_der(chain, key, &provider)
                    .map_err(|e| tls_err(format!("could not load private key: {e}")))?,
            ))
        }
        None => {
            if let Some(p) = explicit_cert {
                tracing::debug!("sslcert \"{p}\" not used (missing, or sslcertmode=disable)");
            }
            None
        }
    };
    let tracker = Arc::new(ClientCertTracker::default());
    let config = builder.with_client_cert_resolver(Arc::new(TrackingResolver {
        key,
        tracker: tracker.clone(),
    }));
    Ok((Arc::new(config), tracker))
}

/// The rustls server name for a host string (DNS name or IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, UpstreamError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| tls_err(format!("invalid host name for SSL: \"{host}\"")))
}

/// Words a TLS handshake failure like libpq does, keeping rustls's reason.
pub fn describe_handshake_error(e: &std::io::Error, host: &str) -> String {
    let Some(re) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return format!("SSL error: {e}");
    };
    match re {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        }) => match presented
            .iter()
            .map(|n| clean_name(n))
            .collect::<Vec<_>>()
            .split_first()
        {
            Some((first, rest)) if !rest.is_empty() => format!(
                "server certificate for \"{first}\" (and {} other name{}) does not match host name \"{host}\"",
                rest.len(),
                if rest.len() == 1 { "" } else { "s" }
            ),
            Some((first, _)) => format!(
                "server certificate for \"{first}\" does not match host name \"{host}\""
            ),
            None => format!("could not get server's host name from server certificate (host name \"{host}\")"),
        },
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            format!("server certificate does not match host name \"{host}\"")
        }
        rustls::Error::InvalidCertificate(c) => {
            format!("SSL error: certificate verify failed: {c:?}")
        }
        other => format!("SSL error: {other}"),
    }
}

/// rustls reports presented names as `DnsName("x")` / `IpAddress(..)`; keep the name.
fn clean_name(n: &str) -> String {
    match (n.find("(\""), n.rfind("\")")) {
        (Some(a), Some(b)) if a + 2 <= b => n[a + 2..b].to_string(),
        _ => n.to_string(),
    }
}

/// `require`/`prefer`/`allow` without a root certificate: any certificate is accepted, but
/// the handshake signature must still be valid for the presented key.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: full chain verification, but a name mismatch is accepted.
#[derive(Debug)]
struct NoHostnameVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NoHostnameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name only after the chain has verified.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// Channel binding: tls-server-end-point.

/// Reads one DER TLV header at `pos`: returns (tag, content start, content end).
/// Only definite lengths (DER) are accepted; never panics.
fn der_tlv(buf: &[u8], pos: usize) -> Option<(u8, usize, usize)> {
    let tag = *buf.get(pos)?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur where we look
    }
    let first = *buf.get(pos.checked_add(1)?)? as usize;
    let mut p = pos.checked_add(2)?;
    let len = if first < 0x80 {
        first
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut l = 0usize;
        for _ in 0..n {
            l = (l << 8) | *buf.get(p)? as usize;
            p = p.checked_add(1)?;
        }
        l
    };
    let end = p.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    Some((tag, p, end))
}

/// The DER-encoded OID (content bytes) of the certificate's outer `signatureAlgorithm`.
pub fn signature_algorithm_oid(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQ: u8 = 0x30;
    const OID: u8 = 0x06;
    let (t, start, end) = der_tlv(cert_der, 0)?;
    if t != SEQ {
        return None;
    }
    let cert = cert_der.get(..end)?;
    let (t, _, tbs_end) = der_tlv(cert, start)?; // tbsCertificate
    if t != SEQ {
        return None;
    }
    let (t, alg_start, alg_end) = der_tlv(cert, tbs_end)?; // signatureAlgorithm
    if t != SEQ {
        return None;
    }
    let alg = cert.get(..alg_end)?;
    let (t, oid_start, oid_end) = der_tlv(alg, alg_start)?;
    if t != OID {
        return None;
    }
    alg.get(oid_start..oid_end)
}

/// The hash used for tls-server-end-point, by signature algorithm OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CbHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Maps a signature algorithm OID to the channel-binding hash: MD5 and SHA-1 are upgraded
/// to SHA-256 (RFC 5929 §4.1), others use their own hash. RSASSA-PSS, Ed25519 and unknown
/// algorithms give `None` (PostgreSQL's server cannot compute a hash for them either).
pub fn cb_hash_for_oid(oid: &[u8]) -> Option<CbHash> {
    // 1.2.840.113549.1.1.x (PKCS#1)
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4.1 ecdsa-with-SHA1 and 1.2.840.10045.4.3.x
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    // 1.2.840.10040.4.3 dsa-with-sha1; 2.16.840.1.101.3.4.3.x dsa-with-sha2
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    const DSA_SHA2: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        return Some(CbHash::Sha256);
    }
    let (prefix, last) = oid.split_last().map(|(l, p)| (p, *l))?;
    if prefix == PKCS1 {
        return match last {
            2 | 4 | 5 => Some(CbHash::Sha256), // md2, md5, sha1
            11 => Some(CbHash::Sha256),
            12 => Some(CbHash::Sha384),
            13 => Some(CbHash::Sha512),
            14 => Some(CbHash::Sha224),
            _ => None,
        };
    }
    if prefix == ECDSA_SHA2 {
        return match last {
            1 => Some(CbHash::Sha224),
            2 => Some(CbHash::Sha256),
            3 => Some(CbHash::Sha384),
            4 => Some(CbHash::Sha512),
            _ => None,
        };
    }
    if prefix == DSA_SHA2 {
        return match last {
            1 => Some(CbHash::Sha224),
            2 => Some(CbHash::Sha256),
            _ => None,
        };
    }
    None
}

/// The tls-server-end-point channel-binding data for a server end-entity certificate.
pub fn channel_binding_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    let h = cb_hash_for_oid(signature_algorithm_oid(cert_der)?)?;
    Some(match h {
        CbHash::Sha224 => sha2::Sha224::digest(cert_der).to_vec(),
        CbHash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        CbHash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        CbHash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/upstream")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn der_walk_fixtures() {
        // Generated with the openssl CLI (see fixtures/upstream/README).
        let rsa256 = fixture("rsa_sha256.der");
        assert_eq!(
            cb_hash_for_oid(signature_algorithm_oid(&rsa256).unwrap()),
            Some(CbHash::Sha256)
        );
        assert_eq!(
            channel_binding_hash(&rsa256).unwrap(),
            sha2::Sha256::digest(&rsa256).to_vec()
        );
        let ec384 = fixture("ec_sha384.der");
        assert_eq!(
            cb_hash_for_oid(signature_algorithm_oid(&ec384).unwrap()),
            Some(CbHash::Sha384)
        );
        assert_eq!(channel_binding_hash(&ec384).unwrap().len(), 48);
        let rsa512 = fixture("rsa_sha512.der");
        assert_eq!(channel_binding_hash(&rsa512).unwrap().len(), 64);
        let rsa1 = fixture("rsa_sha1.der");
        assert_eq!(
            channel_binding_hash(&rsa1).unwrap(),
            sha2::Sha256::digest(&rsa1).to_vec()
        );
        let ed = fixture("ed25519.der");
        assert!(signature_algorithm_oid(&ed).is_some());
        assert_eq!(channel_binding_hash(&ed), None);
    }

    #[test]
    fn presented_names() {
        assert_eq!(clean_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(clean_name("odd"), "odd");
    }

    #[test]
    fn der_walk_never_panics() {
        let rsa = fixture("rsa_sha256.der");
        for cut in 0..rsa.len() {
            let _ = signature_algorithm_oid(&rsa[..cut]);
        }
        let mut x = rsa.clone();
        for i in 0..x.len().min(64) {
            for v in [0u8, 0x7f, 0x80, 0x84, 0xff] {
                let old = x[i];
                x[i] = v;
                let _ = channel_binding_hash(&x);
                x[i] = old;
            }
        }
        assert_eq!(signature_algorithm_oid(&[]), None);
        assert_eq!(
            signature_algorithm_oid(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}

//! Client authentication for the walsender: `pg_hba.conf`-like rules and the password
//! exchanges (SCRAM-SHA-256 with and without channel binding, md5).
//!
//! Owns: matching an incoming connection (TLS or not, user, client address) against the
//! ordered rules from `[[server.hba]]`, the stored credentials (`[server.users]`: SCRAM
//! verifiers `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` or `md5<hex>` hashes, never
//! plaintext), and the server side of the SASL/md5 exchanges, with PostgreSQL's error texts
//! and SQLSTATEs. Unknown users get a mock SCRAM exchange that fails the same way a wrong
//! password does (no user enumeration). Must not: do IO (the session drives the exchange).
//!
//! md5 needs `md5(password ‖ user)`, which a SCRAM verifier cannot give: md5 works only for
//! users stored with an `md5…` hash; an `md5` rule with a SCRAM-stored user runs SCRAM, as
//! PostgreSQL does.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::HbaRuleConfig;
use crate::error::{codes, SqlState};

/// Which transports a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    /// Unix-domain socket connections.
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    ScramSha256,
    Md5,
    Cert,
    /// The client's operating system user (`SO_PEERCRED`) must be the requested user;
    /// `local` rules only.
    Peer,
}

/// One parsed `[[server.hba]]` rule.
#[derive(Debug, Clone)]
pub struct HbaRule {
    pub conn_type: ConnType,
    /// `None`: all users.
    pub users: Option<Vec<String>>,
    /// `None`: all addresses.
    pub net: Option<(IpAddr, u8)>,
    pub method: Method,
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("invalid IP address \"{addr}\" in hba rule"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("invalid CIDR mask in address \"{s}\""))?,
        None => max,
    };
    Ok((ip, bits))
}

/// Parses the configured rules (errors name the rule number, from 1).
pub fn parse_rules(rules: &[HbaRuleConfig]) -> Result<Vec<HbaRule>, String> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = i.saturating_add(1);
            let conn_type = match r.conn_type.as_str() {
                "local" => ConnType::Local,
                "host" => ConnType::Host,
                "hostssl" => ConnType::HostSsl,
                "hostnossl" => ConnType::HostNoSsl,
                t => {
                    return Err(format!(
                        "hba rule {n}: invalid connection type \"{t}\" (use local, host, hostssl, hostnossl)"
                    ))
                }
            };
            if !r
                .database
                .split(',')
                .all(|d| matches!(d.trim(), "replication" | "all"))
            {
                return Err(format!(
                    "hba rule {n}: database must be \"replication\" (walrelay serves only replication connections)"
                ));
            }
            let users = if r.user == "all" {
                None
            } else {
                Some(r.user.split(',').map(|u| u.trim().to_string()).collect())
            };
            let net = if r.address == "all" || r.address.is_empty() {
                None
            } else if conn_type == ConnType::Local {
                return Err(format!(
                    "hba rule {n}: a local rule has no address (Unix-domain sockets)"
                ));
            } else {
                Some(parse_cidr(&r.address).map_err(|e| format!("hba rule {n}: {e}"))?)
            };
            let method = match r.method.as_str() {
                "trust" => Method::Trust,
                "reject" => Method::Reject,
                "scram-sha-256" => Method::ScramSha256,
                "md5" => Method::Md5,
                "cert" => Method::Cert,
                "peer" => Method::Peer,
                m => {
                    return Err(format!(
                        "hba rule {n}: invalid authentication method \"{m}\" (use scram-sha-256, md5, trust, reject, cert, peer)"
                    ))
                }
            };
            if method == Method::Cert && conn_type != ConnType::HostSsl {
                return Err(format!(
                    "hba rule {n}: cert authentication is only supported on hostssl connections"
                ));
            }
            if method == Method::Peer && conn_type != ConnType::Local {
                return Err(format!(
                    "hba rule {n}: peer authentication is only supported on local sockets"
                ));
            }
            Ok(HbaRule {
                conn_type,
                users,
                net,
                method,
            })
        })
        .collect()
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    match (normalize(ip), normalize(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(bits)))
                    .unwrap_or(0)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(bits)))
                    .unwrap_or(0)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The first rule matching the connection, like `check_hba`.
pub fn find_rule<'a>(
    rules: &'a [HbaRule],
    tls: bool,
    user: &str,
    ip: Option<IpAddr>,
) -> Option<&'a HbaRule> {
    rules.iter().find(|r| {
        let type_ok = match (r.conn_type, ip) {
            (ConnType::Local, None) => true,
            (ConnType::Local, Some(_)) | (_, None) => false,
            (ConnType::Host, Some(_)) => true,
            (ConnType::HostSsl, Some(_)) => tls,
            (ConnType::HostNoSsl, Some(_)) => !tls,
        };
        type_ok
            && r.users
                .as_ref()
                .is_none_or(|us| us.iter().any(|u| u == user))
            && match (r.net, ip) {
                (None, _) => true,
                (Some(n), Some(ip)) => in_net(ip, n),
                (Some(_), None) => false,
            }
    })
}

/// `peer` authentication: the name of the client's operating system user must be `user`.
pub fn check_peer(uid: Option<u32>, user: &str) -> Result<(), AuthError> {
    // As PostgreSQL: the reason goes to the log, the client sees "Peer authentication failed".
    let Some(uid) = uid else {
        tracing::info!("could not get peer credentials");
        return Err(AuthError::PeerFailed(user.into()));
    };
    match os_user_name(uid) {
        Ok(name) if name == user => Ok(()),
        Ok(name) => {
            tracing::info!(
                "provided user name ({user}) and authenticated user name ({name}) do not match"
            );
            Err(AuthError::PeerFailed(user.into()))
        }
        Err(e) => {
            tracing::info!("could not look up local user ID {uid}: {e}");
            Err(AuthError::PeerFailed(user.into()))
        }
    }
}

/// The login name of `uid` (getpwuid_r).
fn os_user_name(uid: u32) -> Result<String, String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: getpwuid_r with a zeroed passwd, a buffer of buf.len() bytes and an out
        // pointer; the returned strings point into buf, copied before it is reused.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut res)
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len().saturating_mul(2), 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc).to_string());
        }
        if res.is_null() || pwd.pw_name.is_null() {
            return Err("user does not exist".into());
        }
        // SAFETY: pw_name is a NUL-terminated string inside buf.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Ok(name.to_string_lossy().into_owned());
    }
}

/// A stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Scram(ScramVerifier),
    /// `md5(password ‖ user)` as 32 lower-case hex digits (without the `md5` prefix).
    Md5(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` or `md5<32 hex>`.
pub fn parse_credential(s: &str) -> Result<Credential, String> {
    if let Some(hex) = s.strip_prefix("md5") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Credential::Md5(hex.to_ascii_lowercase()));
        }
        return Err("invalid md5 hash (expected \"md5\" and 32 hex digits)".into());
    }
    let bad = || {
        "invalid password verifier: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (see `walrelay passwd`) or md5<hex>; plaintext passwords are not accepted".to_string()
    };
    let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
    let (iter_salt, keys) = rest.split_once('$').ok_or_else(bad)?;
    let (iter, salt) = iter_salt.split_once(':').ok_or_else(bad)?;
    let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
    let iterations: u32 = iter.parse().ok().filter(|i| *i > 0).ok_or_else(bad)?;
    let salt = B64.decode(salt).map_err(|_| bad())?;
    let stored_key = B64.decode(stored).map_err(|_| bad())?;
    let server_key = B64.decode(server).map_err(|_| bad())?;
    if stored_key.len() != 32 || server_key.len() != 32 || salt.is_empty() {
        return Err(bad());
    }
    Ok(Credential::Scram(ScramVerifier {
        iterations,
        salt,
        stored_key,
        server_key,
    }))
}

/// A SCRAM verifier for `password` (what `walrelay passwd` prints).
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Authentication failures, with PostgreSQL's texts.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    PasswordFailed(String),
    #[error("malformed SCRAM message")]
    Malformed(String),
    #[error("client selected an invalid SASL authentication mechanism")]
    InvalidMechanism,
    #[error("SCRAM channel binding negotiation error")]
    ChannelBindingNegotiation(String),
    #[error("unsupported SCRAM channel-binding type \"{0}\"")]
    UnsupportedChannelBinding(String),
    #[error("SCRAM channel binding check failed")]
    ChannelBindingCheck,
    #[error("client uses authorization identity, but it is not supported")]
    AuthzId,
    #[error("expected password response, got message type {0}")]
    UnexpectedMessage(u8),
    #[error("connection requires a valid client certificate")]
    NoCertificate,
    #[error("certificate authentication failed for user \"{0}\"")]
    CertFailed(String),
    #[error("Peer authentication failed for user \"{0}\"")]
    PeerFailed(String),
}

impl AuthError {
    pub fn detail(&self) -> Option<String> {
        match self {
            AuthError::Malformed(d) | AuthError::ChannelBindingNegotiation(d) => Some(d.clone()),
            _ => None,
        }
    }
}

impl SqlState for AuthError {
    fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::PasswordFailed(_) => codes::INVALID_PASSWORD,
            AuthError::Malformed(_)
            | AuthError::InvalidMechanism
            | AuthError::UnexpectedMessage(_) => codes::PROTOCOL_VIOLATION,
            AuthError::AuthzId => codes::FEATURE_NOT_SUPPORTED,
            AuthError::ChannelBindingNegotiation(_)
            | AuthError::UnsupportedChannelBinding(_)
            | AuthError::ChannelBindingCheck
            | AuthError::NoCertificate
            | AuthError::CertFailed(_)
            | AuthError::PeerFailed(_) => codes::INVALID_AUTHORIZATION,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: new_from_slice cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(msg);
    m.finalize().into_bytes().into()
}

pub const SCRAM: &str = "SCRAM-SHA-256";
pub const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

enum ScramState {
    Initial,
    FirstSent {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        cbind_input: Vec<u8>,
    },
    Done,
}

/// The server side of one SCRAM-SHA-256(-PLUS) exchange (RFC 5802 / 7677, auth-scram.c).
pub struct ScramServer {
    user: String,
    verifier: ScramVerifier,
    /// Unknown user or no SCRAM secret: run the exchange, then fail.
    doomed: bool,
    /// tls-server-end-point hash of our certificate when on TLS.
    cbind: Option<Vec<u8>>,
    state: ScramState,
}

impl ScramServer {
    /// `verifier` None: mock exchange for an unknown user (fails at the end).
    pub fn new(user: &str, verifier: Option<ScramVerifier>, cbind: Option<Vec<u8>>) -> ScramServer {
        let doomed = verifier.is_none();
        let verifier = verifier.unwrap_or_else(|| mock_verifier(user));
        ScramServer {
            user: user.into(),
            verifier,
            doomed,
            cbind,
            state: ScramState::Initial,
        }
    }

    /// Mechanisms to offer in AuthenticationSASL.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        if self.cbind.is_some() {
            vec![SCRAM_PLUS, SCRAM]
        } else {
            vec![SCRAM]
        }
    }

    /// Handles SASLInitialResponse; returns the server-first message.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let plus = match mechanism {
            SCRAM => false,
            SCRAM_PLUS if self.cbind.is_some() => true,
            _ => return Err(AuthError::InvalidMechanism),
        };
        let malformed = |d: &str| AuthError::Malformed(d.to_string());
        let text =
            std::str::from_utf8(data).map_err(|_| malformed("The message is not valid UTF-8."))?;
        let (flag, rest) = text
            .split_at_checked(1)
            .ok_or_else(|| malformed("The message is empty."))?;
        let (gs2_cbind, rest) = match flag {
            "n" | "y" => {
                let rest = rest
                    .strip_prefix(',')
                    .ok_or_else(|| malformed("Comma expected, but found character."))?;
                if flag == "y" && self.cbind.is_some() {
                    return Err(AuthError::ChannelBindingNegotiation(
                        "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.".into(),
                    ));
                }
                if plus {
                    return Err(malformed(
                        "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.",
                    ));
                }
                (format!("{flag},"), rest)
            }
            "p" => {
                if !plus {
                    return Err(malformed(
                        "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
                    ));
                }
                let rest = rest
                    .strip_prefix('=')
                    .ok_or_else(|| malformed("Expected \"=\" after attribute \"p\"."))?;
                let (name, rest) = rest
                    .split_once(',')
                    .ok_or_else(|| malformed("Comma expected, but found end of string."))?;
                if name != "tls-server-end-point" {
                    return Err(AuthError::UnsupportedChannelBinding(name.into()));
                }
                (format!("p={name},"), rest)
            }
            _ => return Err(malformed("Unexpected channel-binding flag.")),
        };
        // authzid
        let rest = if rest.starts_with("a=") {
            return Err(AuthError::AuthzId);
        } else {
            rest.strip_prefix(',')
                .ok_or_else(|| malformed("Comma expected, but found character."))?
        };
        let gs2_header = format!("{gs2_cbind},");
        let client_first_bare = rest.to_string();
        let mut parts = client_first_bare.split(',');
        match parts.next() {
            Some(u) if u.starts_with("n=") => {}
            Some(u) if u.starts_with("m=") => {
                return Err(AuthError::Malformed(
                    "The client requires an unsupported SCRAM extension.".into(),
                ))
            }
            _ => return Err(malformed("Expected attribute \"n\".")),
        }
        let client_nonce = parts
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .ok_or_else(|| malformed("Expected attribute \"r\"."))?;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let mut cbind_input = gs2_header.into_bytes();
        if flag == "p" {
            cbind_input.extend_from_slice(self.cbind.as_deref().unwrap_or(&[]));
        }
        let out = server_first.clone().into_bytes();
        self.state = ScramState::FirstSent {
            client_first_bare,
            server_first,
            nonce,
            cbind_input,
        };
        Ok(out)
    }

    /// Handles the client-final message; returns the server-final message (`v=…`).
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ScramState::FirstSent {
            client_first_bare,
            server_first,
            nonce,
            cbind_input,
        } = std::mem::replace(&mut self.state, ScramState::Done)
        else {
            return Err(AuthError::Malformed("Unexpected SCRAM message.".into()));
        };
        let malformed = |d: &str| AuthError::Malformed(d.to_string());
        let text =
            std::str::from_utf8(data).map_err(|_| malformed("The message is not valid UTF-8."))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| malformed("Could not find proof in client-final-message."))?;
        let mut parts = without_proof.split(',');
        let c = parts
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .ok_or_else(|| malformed("Expected attribute \"c\"."))?;
        let c = B64
            .decode(c)
            .map_err(|_| malformed("Invalid channel binding data."))?;
        if c != cbind_input {
            return Err(AuthError::ChannelBindingCheck);
        }
        let r = parts
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or_else(|| malformed("Expected attribute \"r\"."))?;
        if r != nonce {
            return Err(malformed("Nonce does not match."));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| malformed("Malformed proof in client-final-message."))?;
        if proof.len() != 32 {
            return Err(malformed("Malformed proof in client-final-message."));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_sig = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_sig.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        let ok = constant_time_eq(&stored, &self.verifier.stored_key);
        if !ok || self.doomed {
            return Err(AuthError::PasswordFailed(self.user.clone()));
        }
        let server_sig = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)).into_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn mock_verifier(user: &str) -> ScramVerifier {
    // A stable per-process salt per user name, so repeated probes look like a real user.
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut s);
        s
    });
    let salt = hmac(secret, user.as_bytes());
    ScramVerifier {
        iterations: 4096,
        salt: salt.get(..16).unwrap_or(&salt).to_vec(),
        stored_key: hmac(secret, b"stored").to_vec(),
        server_key: hmac(secret, b"server").to_vec(),
    }
}

/// Checks an md5 PasswordMessage (`md5` + hex(md5(hex_hash ‖ salt))).
pub fn check_md5(
    user: &str,
    stored_hex: &str,
    salt: [u8; 4],
    response: &str,
) -> Result<(), AuthError> {
    let mut input = stored_hex.as_bytes().to_vec();
    input.extend_from_slice(&salt);
    let expected = format!("md5{}", hex(&md5_digest(&input)));
    if constant_time_eq(expected.as_bytes(), response.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::PasswordFailed(user.into()))
    }
}

/// MD5 of `input` (the `md-5` crate), only for the legacy md5 exchange.
fn md5_digest(input: &[u8]) -> Vec<u8> {
    <md5::Md5 as md5::Digest>::digest(input).to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn rule(t: &str, user: &str, addr: &str, method: &str) -> HbaRuleConfig {
        HbaRuleConfig {
            conn_type: t.into(),
            database: "replication".into(),
            user: user.into(),
            address: addr.into(),
            method: method.into(),
        }
    }

    #[test]
    fn md5_known_vectors() {
        assert_eq!(hex(&md5_digest(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            hex(&md5_digest(b"The quick brown fox jumps over the lazy dog")),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
        // the client side computes the same as postgres-protocol
        let stored = postgres_protocol::password::md5(b"secret", "bob");
        let Credential::Md5(h) = parse_credential(&stored).unwrap() else {
            panic!()
        };
        let resp = postgres_protocol::authentication::md5_hash(b"bob", b"secret", [1, 2, 3, 4]);
        check_md5("bob", &h, [1, 2, 3, 4], &resp).unwrap();
        assert!(check_md5("bob", &h, [1, 2, 3, 5], &resp).is_err());
    }

    #[test]
    fn hba_first_match_wins() {
        let rules = parse_rules(&[
            rule("hostssl", "alice", "10.0.0.0/8", "cert"),
            rule("host", "bob,carol", "127.0.0.1/32", "scram-sha-256"),
            rule("host", "all", "::1/128", "trust"),
            rule("host", "all", "all", "reject"),
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            find_rule(&rules, true, "alice", Some(ip("10.1.2.3")))
                .unwrap()
                .method,
            Method::Cert
        );
        assert_eq!(
            find_rule(&rules, false, "alice", Some(ip("10.1.2.3")))
                .unwrap()
                .method,
            Method::Reject
        );
        assert_eq!(
            find_rule(&rules, false, "carol", Some(ip("::ffff:127.0.0.1")))
                .unwrap()
                .method,
            Method::ScramSha256
        );
        assert_eq!(
            find_rule(&rules, false, "x", Some(ip("::1")))
                .unwrap()
                .method,
            Method::Trust
        );
        assert!(parse_rules(&[rule("host", "all", "1.2.3.4/33", "trust")]).is_err());
        assert!(parse_rules(&[rule("host", "all", "all", "password")]).is_err());
        // local: Unix-domain sockets only, no address; peer only there
        assert!(parse_rules(&[rule("local", "all", "10.0.0.0/8", "trust")]).is_err());
        assert!(parse_rules(&[rule("host", "all", "all", "peer")]).is_err());
        assert!(parse_rules(&[rule("bogus", "all", "all", "trust")]).is_err());
        let rules = parse_rules(&[
            rule("local", "all", "all", "peer"),
            rule("host", "all", "all", "trust"),
        ])
        .unwrap();
        assert_eq!(
            find_rule(&rules, false, "x", None).unwrap().method,
            Method::Peer
        );
        assert_eq!(
            find_rule(&rules, false, "x", Some(ip("10.0.0.1")))
                .unwrap()
                .method,
            Method::Trust
        );
        let host_only = parse_rules(&[rule("host", "all", "all", "trust")]).unwrap();
        assert!(find_rule(&host_only, false, "x", None).is_none());
    }

    #[test]
    fn peer_checks_the_os_user_name() {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let me = os_user_name(uid).unwrap();
        check_peer(Some(uid), &me).unwrap();
        let e = check_peer(Some(uid), "not-this-user").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Peer authentication failed for user \"not-this-user\""
        );
        assert_eq!(e.sqlstate(), codes::INVALID_AUTHORIZATION);
        assert!(check_peer(None, &me).is_err());
    }

    fn run_scram(
        password: &str,
        stored: Option<&str>,
        cbind: Option<Vec<u8>>,
        client_cb: ChannelBinding,
        mech: &str,
    ) -> Result<(), AuthError> {
        let verifier = stored.map(|s| match parse_credential(s).unwrap() {
            Credential::Scram(v) => v,
            _ => panic!(),
        });
        let mut server = ScramServer::new("bob", verifier, cbind);
        let mut client = ScramSha256::new(password.as_bytes(), client_cb);
        let first = server.client_first(mech, client.message())?;
        client.update(&first).unwrap();
        let fin = server.client_final(client.message())?;
        client.finish(&fin).unwrap();
        Ok(())
    }

    #[test]
    fn scram_exchange() {
        let v = scram_verifier("pw");
        run_scram("pw", Some(&v), None, ChannelBinding::unsupported(), SCRAM).unwrap();
        let e =
            run_scram("nope", Some(&v), None, ChannelBinding::unsupported(), SCRAM).unwrap_err();
        assert_eq!(
            e.to_string(),
            "password authentication failed for user \"bob\""
        );
        assert_eq!(e.sqlstate(), "28P01");
        // unknown user: same error
        let e = run_scram("pw", None, None, ChannelBinding::unsupported(), SCRAM).unwrap_err();
        assert_eq!(
            e.to_string(),
            "password authentication failed for user \"bob\""
        );
        // channel binding
        let hash = vec![7u8; 32];
        run_scram(
            "pw",
            Some(&v),
            Some(hash.clone()),
            ChannelBinding::tls_server_end_point(hash.clone()),
            SCRAM_PLUS,
        )
        .unwrap();
        let e = run_scram(
            "pw",
            Some(&v),
            Some(hash.clone()),
            ChannelBinding::tls_server_end_point(vec![8u8; 32]),
            SCRAM_PLUS,
        )
        .unwrap_err();
        assert!(matches!(e, AuthError::ChannelBindingCheck));
        // a client that supports binding but thinks we do not
        let e = run_scram(
            "pw",
            Some(&v),
            Some(hash),
            ChannelBinding::unrequested(),
            SCRAM,
        )
        .unwrap_err();
        assert!(matches!(e, AuthError::ChannelBindingNegotiation(_)));
    }

    #[test]
    fn garbage_never_panics() {
        let v = match parse_credential(&scram_verifier("x")).unwrap() {
            Credential::Scram(v) => v,
            _ => panic!(),
        };
        let mut rng = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 40) as usize;
            let data: Vec<u8> = (0..len)
                .map(|i| b"nyp=,ra-cs"[(rng as usize + i) % 10])
                .collect();
            let mut s = ScramServer::new("u", Some(v.clone()), Some(vec![1; 32]));
            let _ = s.client_first(SCRAM_PLUS, &data);
            let _ = s.client_final(&data);
        }
        assert!(parse_credential("plaintext").is_err());
        assert!(parse_credential("SCRAM-SHA-256$x:y$z:w").is_err());
    }
}

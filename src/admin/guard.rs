//! Who may call what on an HTTP listener: the checks every request passes before routing.
//!
//! Owns: the bearer token (read from `control.token_file`, compared in constant time, never
//! printed), the Host check against DNS rebinding (TCP only: IP literals, `localhost` and the
//! configured `allowed_hosts`), the Origin / `Sec-Fetch-Site` check against cross-origin
//! requests from a browser, and the rule that a state-changing method needs
//! `Content-Type: application/json` (which no cross-origin "simple" request can send without
//! a CORS preflight, which walrelay never grants). Must not: do IO other than reading the
//! token file, or know routes.
//!
//! The threat model is in `docs/security.md`.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::net::IpAddr;
use std::path::Path;

use http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a listener is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp { tls: bool },
    Unix,
}

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("could not read token file \"{path}\": {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("token file \"{0}\" has group or world access; it must be 0600 (chmod 600)")]
    Permissions(std::path::PathBuf),
    #[error("token file \"{0}\" holds no token of at least 16 characters")]
    TooShort(std::path::PathBuf),
}

impl Token {
    pub fn new(secret: &str) -> Token {
        Token {
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// Reads the first line of `path`; refuses a file others can read (as PostgreSQL does
    /// for its server key) and a token shorter than 16 characters.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| TokenError::Read {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TokenError::Permissions(path.into()));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let secret = text.lines().next().unwrap_or("").trim();
        if secret.chars().count() < 16 {
            return Err(TokenError::TooShort(path.into()));
        }
        Ok(Token::new(secret))
    }

    /// Reads the token for a client (no permission check: the client only sends it).
    pub fn read_secret(path: &Path) -> Result<String, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.into(),
            source,
        })?;
        Ok(text.lines().next().unwrap_or("").trim().to_string())
    }

    fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&d))
    }
}

/// The access rules of one listener.
#[derive(Debug, Clone)]
pub struct Policy {
    pub transport: Transport,
    /// Required as `Authorization: Bearer …` when set.
    pub token: Option<Token>,
    /// Host names accepted besides IP literals and `localhost` (lowercase).
    pub allowed_hosts: Vec<String>,
}

/// A refused request: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The host part of a Host header value (`[::1]:80` → `::1`, `a:80` → `a`).
fn host_part(value: &str) -> Option<&str> {
    if let Some(rest) = value.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        return (after.is_empty() || after.starts_with(':')).then_some(h);
    }
    match value.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(h),
        Some(_) => None,
        None => Some(value),
    }
}

impl Policy {
    pub fn new(transport: Transport, token: Option<Token>, allowed_hosts: &[String]) -> Policy {
        Policy {
            transport,
            token,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    fn host_ok(&self, host: &str) -> bool {
        let h = host.to_ascii_lowercase();
        h.parse::<IpAddr>().is_ok() || h == "localhost" || self.allowed_hosts.contains(&h)
    }

    /// Checks a request's method and headers; `Ok` lets it through to routing.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        let text = |name: header::HeaderName| -> Result<Option<&str>, Refusal> {
            match headers.get(&name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| refuse(400, format!("invalid {name} header"))),
            }
        };
        let host = text(header::HOST)?;
        if let Transport::Tcp { .. } = self.transport {
            let Some(host) = host else {
                return Err(refuse(400, "missing Host header"));
            };
            let name = host_part(host).ok_or_else(|| refuse(400, "invalid Host header"))?;
            if !self.host_ok(name) {
                return Err(refuse(
                    421,
                    format!(
                        "Host \"{name}\" is not accepted here (use an IP address, localhost, or a name listed in allowed_hosts)"
                    ),
                ));
            }
        }
        if let Some(origin) = text(header::ORIGIN)? {
            let own = match (self.transport, host) {
                (Transport::Tcp { tls }, Some(h)) => Some(format!(
                    "{}://{}",
                    if tls { "https" } else { "http" },
                    h.to_ascii_lowercase()
                )),
                _ => None,
            };
            if own.as_deref() != Some(origin.to_ascii_lowercase().as_str()) {
                return Err(refuse(
                    403,
                    format!("cross-origin request from \"{origin}\" refused"),
                ));
            }
        }
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| {
            !s.eq_ignore_ascii_case("same-origin") && !s.eq_ignore_ascii_case("none")
        }) {
            return Err(refuse(403, "cross-site request refused"));
        }
        if let Some(token) = &self.token {
            let presented = text(header::AUTHORIZATION)?.and_then(|a| {
                let (scheme, rest) = a.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
            match presented {
                None => {
                    return Err(refuse(
                        401,
                        "authentication required: send \"Authorization: Bearer <token>\" (control.token_file)",
                    ))
                }
                Some(p) if !token.matches(p) => return Err(refuse(401, "invalid token")),
                Some(_) => {}
            }
        }
        if method != Method::GET && method != Method::HEAD {
            let ct = text(header::CONTENT_TYPE)?.unwrap_or("");
            let media = ct.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/json") {
                return Err(refuse(
                    415,
                    format!("{method} requests need \"Content-Type: application/json\""),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(h: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in h {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn host_and_origin() {
        let p = Policy::new(
            Transport::Tcp { tls: false },
            None,
            &["Relay.Example".into()],
        );
        let ok =
            |h: &[(&'static str, &str)]| p.check(&Method::GET, &headers(h)).map_err(|r| r.status);
        assert_eq!(ok(&[("host", "127.0.0.1:9187")]), Ok(()));
        assert_eq!(ok(&[("host", "[::1]:9187")]), Ok(()));
        assert_eq!(ok(&[("host", "localhost")]), Ok(()));
        assert_eq!(ok(&[("host", "relay.example:80")]), Ok(()));
        assert_eq!(ok(&[("host", "evil.example:9187")]), Err(421));
        assert_eq!(ok(&[]), Err(400));
        assert_eq!(ok(&[("host", "[::1")]), Err(400));
        assert_eq!(
            ok(&[("host", "127.0.0.1:9"), ("origin", "http://127.0.0.1:9")]),
            Ok(())
        );
        assert_eq!(
            ok(&[("host", "127.0.0.1:9"), ("origin", "http://evil.example")]),
            Err(403)
        );
        assert_eq!(ok(&[("host", "127.0.0.1:9"), ("origin", "null")]), Err(403));
        assert_eq!(
            ok(&[("host", "127.0.0.1:9"), ("sec-fetch-site", "cross-site")]),
            Err(403)
        );
        let u = Policy::new(Transport::Unix, None, &[]);
        assert!(u.check(&Method::GET, &HeaderMap::new()).is_ok());
        assert_eq!(
            u.check(&Method::GET, &headers(&[("origin", "http://localhost")]))
                .map_err(|r| r.status),
            Err(403)
        );
    }

    #[test]
    fn token_and_content_type() {
        let p = Policy::new(
            Transport::Tcp { tls: false },
            Some(Token::new("0123456789abcdef-secret")),
            &[],
        );
        let st =
            |m: Method, h: &[(&'static str, &str)]| p.check(&m, &headers(h)).map_err(|r| r.status);
        let host = ("host", "127.0.0.1:1");
        assert_eq!(st(Method::GET, &[host]), Err(401));
        assert_eq!(
            st(Method::GET, &[host, ("authorization", "Bearer nope")]),
            Err(401)
        );
        assert_eq!(
            st(Method::GET, &[host, ("authorization", "Basic x")]),
            Err(401)
        );
        let auth = ("authorization", "bearer 0123456789abcdef-secret");
        assert_eq!(st(Method::GET, &[host, auth]), Ok(()));
        assert_eq!(st(Method::POST, &[host, auth]), Err(415));
        assert_eq!(
            st(
                Method::POST,
                &[
                    host,
                    auth,
                    ("content-type", "application/x-www-form-urlencoded")
                ]
            ),
            Err(415)
        );
        assert_eq!(
            st(
                Method::POST,
                &[
                    host,
                    auth,
                    ("content-type", "application/json; charset=utf-8")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            format!("{:?}", Token::new("hunter2hunter2hunter2")),
            "Token(<redacted>)"
        );
    }
}

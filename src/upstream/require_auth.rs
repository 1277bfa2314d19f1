//! libpq's `require_auth` (PostgreSQL 16): which authentication requests the client answers.
//!
//! Owns: parsing the setting (a comma-separated list of `password`, `md5`, `gss`, `sspi`,
//! `scram-sha-256`, `none`, all of them either plain or all `!`-negated) with libpq's error
//! texts (`connectOptions2` in fe-connect.c), and the check libpq's `check_expected_areq`
//! makes for each request and for AuthenticationOk.
//! Must not: do IO or know about SASL state beyond "the exchange finished".
#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)]

/// The kinds of authentication request a server can make (the `R` codes that matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// AUTH_REQ_PASSWORD (3)
    Password,
    /// AUTH_REQ_MD5 (5)
    Md5,
    /// AUTH_REQ_GSS / GSS_CONT (7, 8)
    Gss,
    /// AUTH_REQ_SSPI (9)
    Sspi,
    /// AUTH_REQ_SASL / SASL_CONT / SASL_FIN (10, 11, 12)
    Sasl,
    /// Any other code.
    Unknown,
}

impl AuthKind {
    fn bit(self) -> u8 {
        match self {
            AuthKind::Password => 1,
            AuthKind::Md5 => 2,
            AuthKind::Gss => 4,
            AuthKind::Sspi => 8,
            AuthKind::Sasl => 16,
            AuthKind::Unknown => 0,
        }
    }

    /// libpq's `auth_method_description`.
    fn description(self) -> &'static str {
        match self {
            AuthKind::Password => "server requested a cleartext password",
            AuthKind::Md5 => "server requested a hashed password",
            AuthKind::Gss => "server requested GSSAPI authentication",
            AuthKind::Sspi => "server requested SSPI authentication",
            AuthKind::Sasl => "server requested SASL authentication",
            AuthKind::Unknown => "server requested an unknown authentication type",
        }
    }

    /// The kind of an `R` code (`AuthRequest::Other` carries the code).
    pub fn of_code(code: u32) -> AuthKind {
        match code {
            3 => AuthKind::Password,
            5 => AuthKind::Md5,
            7 | 8 => AuthKind::Gss,
            9 => AuthKind::Sspi,
            10..=12 => AuthKind::Sasl,
            _ => AuthKind::Unknown,
        }
    }
}

/// A parsed `require_auth`. The default (unset or empty) allows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequireAuth {
    /// The setting as given (quoted in messages); empty when unset.
    text: String,
    allowed: u8,
    /// Whether AuthenticationOk must follow a finished exchange (`none` not allowed).
    auth_required: bool,
}

impl Default for RequireAuth {
    fn default() -> Self {
        RequireAuth {
            text: String::new(),
            allowed: u8::MAX,
            auth_required: false,
        }
    }
}

impl RequireAuth {
    /// Parses the setting with libpq's rules and messages.
    pub fn parse(s: Option<&str>) -> Result<RequireAuth, String> {
        let Some(s) = s.filter(|s| !s.is_empty()) else {
            return Ok(RequireAuth::default());
        };
        let mut r = RequireAuth {
            text: s.to_string(),
            allowed: 0,
            auth_required: true,
        };
        let mut negated = false;
        for (i, part) in s.split(',').enumerate() {
            let part = part.trim();
            let method = match part.strip_prefix('!') {
                Some(m) => {
                    if i == 0 {
                        r.auth_required = false;
                        r.allowed = u8::MAX;
                    } else if !negated {
                        return Err(format!(
                            "negative require_auth method \"{part}\" cannot be mixed with non-negative methods"
                        ));
                    }
                    negated = true;
                    m
                }
                None if negated => {
                    return Err(format!(
                        "require_auth method \"{part}\" cannot be mixed with negative methods"
                    ))
                }
                None => part,
            };
            let bits = match method {
                "password" => AuthKind::Password.bit(),
                "md5" => AuthKind::Md5.bit(),
                "gss" => AuthKind::Gss.bit(),
                "sspi" => AuthKind::Sspi.bit(),
                "scram-sha-256" => AuthKind::Sasl.bit(),
                "none" => {
                    r.auth_required = negated;
                    continue;
                }
                _ => return Err(format!("invalid require_auth value: \"{method}\"")),
            };
            let duplicate = if negated {
                r.allowed & bits == 0
            } else {
                r.allowed & bits == bits
            };
            if duplicate {
                return Err(format!(
                    "require_auth method \"{part}\" is specified more than once"
                ));
            }
            if negated {
                r.allowed &= !bits;
            } else {
                r.allowed |= bits;
            }
        }
        Ok(r)
    }

    fn failed(&self, reason: &str) -> String {
        format!(
            "authentication method requirement \"{}\" failed: {reason}",
            self.text
        )
    }

    /// Checks an authentication request before it is answered.
    pub fn check_request(&self, kind: AuthKind) -> Result<(), String> {
        if self.text.is_empty() {
            return Ok(());
        }
        if kind != AuthKind::Unknown && self.allowed & kind.bit() != 0 {
            Ok(())
        } else {
            Err(self.failed(kind.description()))
        }
    }

    /// Checks AuthenticationOk: `finished` is whether the client completed an exchange
    /// (sent a password, or verified the SCRAM server signature).
    pub fn check_ok(&self, finished: bool) -> Result<(), String> {
        if self.text.is_empty() || !self.auth_required || finished {
            Ok(())
        } else {
            Err(self.failed("server did not complete authentication"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let any = RequireAuth::parse(None).unwrap();
        assert!(any.check_request(AuthKind::Password).is_ok());
        assert!(any.check_ok(false).is_ok());

        let scram = RequireAuth::parse(Some("scram-sha-256")).unwrap();
        assert_eq!(
            scram.check_request(AuthKind::Password).unwrap_err(),
            "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
        );
        assert!(scram.check_request(AuthKind::Sasl).is_ok());
        assert_eq!(
            scram.check_ok(false).unwrap_err(),
            "authentication method requirement \"scram-sha-256\" failed: server did not complete authentication"
        );
        assert!(scram.check_ok(true).is_ok());

        let not_pw = RequireAuth::parse(Some("!password,!md5")).unwrap();
        assert!(not_pw.check_request(AuthKind::Sasl).is_ok());
        assert!(not_pw.check_request(AuthKind::Md5).is_err());
        assert!(not_pw.check_ok(false).is_ok()); // trust allowed with negations

        let not_none = RequireAuth::parse(Some("!none")).unwrap();
        assert!(not_none.check_request(AuthKind::Password).is_ok());
        assert!(not_none.check_ok(false).is_err());

        let none = RequireAuth::parse(Some("none")).unwrap();
        assert!(none.check_ok(false).is_ok());
        assert!(none.check_request(AuthKind::Md5).is_err());
        let scram_or_none = RequireAuth::parse(Some("scram-sha-256,none")).unwrap();
        assert!(scram_or_none.check_ok(false).is_ok());
        assert_eq!(
            RequireAuth::parse(Some("md5,!password")).unwrap_err(),
            "negative require_auth method \"!password\" cannot be mixed with non-negative methods"
        );
        assert_eq!(
            RequireAuth::parse(Some("!md5,password")).unwrap_err(),
            "require_auth method \"password\" cannot be mixed with negative methods"
        );
        assert_eq!(
            RequireAuth::parse(Some("md5,md5")).unwrap_err(),
            "require_auth method \"md5\" is specified more than once"
        );
        assert_eq!(
            RequireAuth::parse(Some("kerberos")).unwrap_err(),
            "invalid require_auth value: \"kerberos\""
        );
        assert_eq!(
            RequireAuth::parse(Some("md5"))
                .unwrap()
                .check_request(AuthKind::of_code(42))
                .unwrap_err(),
            "authentication method requirement \"md5\" failed: server requested an unknown authentication type"
        );
    }
}

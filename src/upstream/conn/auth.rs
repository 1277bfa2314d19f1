//! Authentication of the replication connection: the conversation after the startup packet
//! up to AuthenticationOk.
//!
//! Owns: answering trust, cleartext, md5 and SCRAM-SHA-256(-PLUS) requests, the password
//! source (`password`, else the password file), `require_auth` and `channel_binding`
//! enforcement with libpq's texts. Must not: build TLS or parse connection strings.
//!
//! The SASL exchange is linear, as in tokio-postgres's `authenticate_sasl`:
//! SASLInitialResponse, then exactly one AuthenticationSASLContinue (answered with the client
//! proof), then AuthenticationSASLFinal whose server signature must verify, then
//! AuthenticationOk. Anything else ends the connection. Channel binding counts as done only
//! once the server's signature over the binding data has been verified: a man in the middle
//! that answers the SASLInitialResponse with AuthenticationOk is refused under
//! `channel_binding=require` (libpq's `pg_fe_scram_channel_bound`).
//!
//! gs2 header flags as libpq's `build_client_first_message`: `p=tls-server-end-point` when
//! binding, `y` when walrelay could bind (TLS, `channel_binding` not `disable`) but the server
//! offered no `-PLUS` mechanism, `n` otherwise. (postgres-protocol names these the other way
//! round: its `ChannelBinding::unrequested()` writes `y`, `unsupported()` writes `n`.)

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::{startup_error, ReplConnection, Result};
use crate::protocol::backend::{AuthRequest, BackendMessage as Msg};
use crate::upstream::conninfo::{ChannelBindingMode, ConnInfo, HostSpec, SslCertMode};
use crate::upstream::error::UpstreamError;
use crate::upstream::pgpass;
use crate::upstream::require_auth::{AuthKind, RequireAuth};

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What the client insists on (libpq's `check_expected_areq`).
struct Policy {
    channel_binding: ChannelBindingMode,
    require_auth: RequireAuth,
    /// `sslcertmode=require`: the handshake's record of the server's certificate request
    /// (`None` without TLS).
    require_cert: Option<Option<std::sync::Arc<crate::upstream::tls::ClientCertTracker>>>,
}

impl Policy {
    /// Before answering a request of this kind.
    fn check_request(&self, kind: AuthKind) -> Result<()> {
        self.require_auth
            .check_request(kind)
            .map_err(UpstreamError::auth_client)?;
        if self.channel_binding == ChannelBindingMode::Require && kind != AuthKind::Sasl {
            return Err(UpstreamError::auth_client(
                "channel binding required but not supported by server's authentication request",
            ));
        }
        Ok(())
    }

    /// On AuthenticationOk. `finished`: the client completed an exchange; `bound`: a
    /// SCRAM-SHA-256-PLUS exchange whose server signature verified.
    fn check_ok(&self, finished: bool, bound: bool) -> Result<()> {
        self.require_auth
            .check_ok(finished)
            .map_err(UpstreamError::auth_client)?;
        if self.channel_binding == ChannelBindingMode::Require && !bound {
            return Err(UpstreamError::auth_client(
                "channel binding required, but server authenticated client without channel binding",
            ));
        }
        match &self.require_cert {
            None => Ok(()),
            Some(None) => Err(UpstreamError::auth_client(
                "server did not request an SSL certificate",
            )),
            Some(Some(t)) => t.check_require().map_err(UpstreamError::auth_client),
        }
    }
}

/// The next authentication message; notices and NegotiateProtocolVersion are skipped, an
/// ErrorResponse is the server's refusal.
async fn next_auth(conn: &mut ReplConnection) -> Result<AuthRequest> {
    loop {
        match conn.read_msg().await? {
            Msg::Authentication(a) => return Ok(a),
            Msg::ErrorResponse(e) => return Err(startup_error(e)),
            Msg::NoticeResponse(n) => tracing::info!("upstream: {n}"),
            Msg::NegotiateProtocolVersion { .. } => {
                tracing::debug!("server sent NegotiateProtocolVersion; staying on 3.0")
            }
            other => {
                return Err(UpstreamError::protocol(format!(
                    "expected authentication request from server, but received {other:?}"
                )))
            }
        }
    }
}

impl ReplConnection {
    /// Runs the authentication exchange after the startup packet was sent; returns once
    /// AuthenticationOk has been received and accepted.
    pub(super) async fn authenticate(
        &mut self,
        ci: &ConnInfo,
        h: &HostSpec,
        user: &str,
        db: &str,
    ) -> Result<()> {
        let policy = Policy {
            channel_binding: ci.channel_binding()?,
            require_auth: RequireAuth::parse(ci.require_auth.as_deref())
                .map_err(|e| UpstreamError::ConnInfo(crate::upstream::ConnInfoError(e)))?,
            require_cert: (ci.sslcertmode()? == SslCertMode::Require)
                .then(|| self.cert_tracker.clone()),
        };
        let password = || -> Result<String> {
            if let Some(p) = ci.password.as_deref().filter(|p| !p.is_empty()) {
                return Ok(p.to_string());
            }
            let file = ci
                .passfile
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(pgpass::default_path);
            file.and_then(|f| pgpass::lookup(&f, h.pgpass_host(), h.port, db, user))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| UpstreamError::auth_client("fe_sendauth: no password supplied"))
        };
        let (finished, bound) = match next_auth(self).await? {
            AuthRequest::Ok => (false, false),
            AuthRequest::Cleartext => {
                policy.check_request(AuthKind::Password)?;
                let pw = password()?;
                frontend::password_message(pw.as_bytes(), &mut self.wbuf)?;
                self.flush().await?;
                self.expect_ok().await?;
                (true, false)
            }
            AuthRequest::Md5 { salt } => {
                policy.check_request(AuthKind::Md5)?;
                let pw = password()?;
                let hash = md5_hash(user.as_bytes(), pw.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                self.flush().await?;
                self.expect_ok().await?;
                (true, false)
            }
            AuthRequest::Sasl { mechanisms } => {
                policy.check_request(AuthKind::Sasl)?;
                let bound = self.sasl(&policy, &mechanisms, &password).await?;
                (true, bound)
            }
            AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
                return Err(UpstreamError::auth_client(
                    "fe_sendauth: invalid authentication request from server: SASL continuation without a SASL exchange",
                ))
            }
            AuthRequest::Other(n) => {
                policy.check_request(AuthKind::of_code(n))?;
                return Err(UpstreamError::auth_client(format!(
                    "authentication method {n} not supported"
                )));
            }
        };
        policy.check_ok(finished, bound)
    }

    /// After a password message: the server accepts (AuthenticationOk) or refuses.
    async fn expect_ok(&mut self) -> Result<()> {
        match next_auth(self).await? {
            AuthRequest::Ok => Ok(()),
            other => Err(UpstreamError::auth_client(format!(
                "unexpected authentication request from server after the password was sent: {other:?}"
            ))),
        }
    }

    /// The SCRAM exchange, strictly in order. Returns whether channel binding was used and
    /// verified. Ends with AuthenticationOk read (not yet accepted: see `Policy::check_ok`).
    async fn sasl(
        &mut self,
        policy: &Policy,
        mechanisms: &[String],
        password: &(dyn Fn() -> Result<String> + Sync),
    ) -> Result<bool> {
        let plus = mechanisms.iter().any(|m| m == SCRAM_PLUS);
        let plain = mechanisms.iter().any(|m| m == SCRAM);
        let cb = policy.channel_binding;
        let (mech, binding) = if self.tls && plus && cb != ChannelBindingMode::Disable {
            let hash = self.cb_hash.clone().ok_or_else(|| {
                UpstreamError::auth_client(
                    "could not compute the channel binding hash of the server certificate (unsupported signature algorithm)",
                )
            })?;
            (SCRAM_PLUS, ChannelBinding::tls_server_end_point(hash))
        } else if cb == ChannelBindingMode::Require {
            return Err(UpstreamError::auth_client(
                "channel binding is required, but server did not offer an authentication method that supports channel binding",
            ));
        } else if plain {
            // libpq: 'y' = "client supports channel binding but thinks the server does
            // not" (TLS and binding not disabled), else 'n'. postgres-protocol writes 'y' for
            // `unrequested()` and 'n' for `unsupported()`.
            let b = if self.tls && cb != ChannelBindingMode::Disable {
                ChannelBinding::unrequested()
            } else {
                ChannelBinding::unsupported()
            };
            (SCRAM, b)
        } else {
            return Err(UpstreamError::auth_client(
                "none of the server's SASL authentication mechanisms are supported",
            ));
        };
        let binding_used = mech == SCRAM_PLUS;
        let pw = password()?;
        let mut scram = ScramSha256::new(pw.as_bytes(), binding);
        frontend::sasl_initial_response(mech, scram.message(), &mut self.wbuf)?;
        self.flush().await?;

        // server-first-message
        match next_auth(self).await? {
            AuthRequest::SaslContinue(data) => {
                scram.update(&data).map_err(|e| {
                    UpstreamError::auth_client(format!("malformed SCRAM message: {e}"))
                })?;
                frontend::sasl_response(scram.message(), &mut self.wbuf)?;
                self.flush().await?;
            }
            other => return Err(sasl_incomplete(policy, other)),
        }
        // server-final-message
        match next_auth(self).await? {
            AuthRequest::SaslFinal(data) => {
                if let Some(err) = data.strip_prefix(b"e=") {
                    return Err(UpstreamError::auth_client(format!(
                        "error received from server in SCRAM exchange: {}",
                        String::from_utf8_lossy(err)
                    )));
                }
                if !data.starts_with(b"v=") {
                    return Err(UpstreamError::auth_client(
                        "malformed SCRAM message (attribute \"v\" expected)",
                    ));
                }
                scram
                    .finish(&data)
                    .map_err(|_| UpstreamError::auth_client("incorrect server signature"))?;
            }
            other => return Err(sasl_incomplete(policy, other)),
        }
        match next_auth(self).await? {
            AuthRequest::Ok => Ok(binding_used),
            other => Err(UpstreamError::auth_client(format!(
                "unexpected authentication request from server after the SASL exchange: {other:?}"
            ))),
        }
    }
}

/// A message out of order inside the SASL exchange.
fn sasl_incomplete(policy: &Policy, got: AuthRequest) -> UpstreamError {
    match got {
        // The exchange did not finish: libpq's checks for an early AuthenticationOk first,
        // then walrelay's own refusal (libpq would accept it without those settings).
        AuthRequest::Ok => match policy.check_ok(false, false) {
            Err(e) => e,
            Ok(()) => UpstreamError::auth_client(
                "server sent AuthenticationOk before completing the SASL exchange",
            ),
        },
        AuthRequest::SaslFinal(_) => UpstreamError::auth_client(
            "AuthenticationSASLFinal received from server, but SASL authentication was not completed",
        ),
        AuthRequest::SaslContinue(_) => UpstreamError::auth_client(
            "unexpected AuthenticationSASLContinue: the server sent its final message out of order",
        ),
        other => UpstreamError::auth_client(format!(
            "unexpected authentication request during the SASL exchange: {other:?}"
        )),
    }
}

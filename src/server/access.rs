//! Who may connect and how: TLS, `require_tls`, hba rules and users — the part of the
//! server settings a SIGHUP reload replaces live (`crate::reload`). A session takes one
//! snapshot ([`Shared::access`]) per step of its startup; sessions already authenticated
//! keep streaming (PostgreSQL does the same on `pg_ctl reload`).
//!
//! Must not: change anything else of a running server (listen address, limits, timeouts).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{auth, tls, ServerHandle, ServerSettings, Shared};

/// The live-reloadable part of [`ServerSettings`].
pub struct Access {
    pub tls: Option<tls::TlsSetup>,
    pub require_tls: bool,
    pub hba: Vec<auth::HbaRule>,
    pub users: HashMap<String, auth::Credential>,
}

impl Access {
    pub fn of(s: &ServerSettings) -> Access {
        Access {
            tls: s.tls.clone(),
            require_tls: s.require_tls,
            hba: s.hba.clone(),
            users: s.users.clone(),
        }
    }
}

/// Holder in [`Shared`].
pub struct LiveAccess(RwLock<Arc<Access>>);

impl LiveAccess {
    pub fn new(s: &ServerSettings) -> LiveAccess {
        LiveAccess(RwLock::new(Arc::new(Access::of(s))))
    }
}

impl Shared {
    /// The current access rules (a snapshot; a reload never changes it under the caller).
    pub fn access(&self) -> Arc<Access> {
        self.access
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Replaces a running server's access rules (see the module doc).
#[derive(Clone)]
pub struct AccessReloader(Arc<Shared>);

impl AccessReloader {
    /// New connections use `s`'s TLS, hba rules and users from now on.
    pub fn replace(&self, s: &ServerSettings) {
        let new = Arc::new(Access::of(s));
        *self.0.access.0.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// tls-server-end-point hash of the certificate in force (None: TLS off).
    pub fn certificate_hash(&self) -> Option<Vec<u8>> {
        self.0
            .access()
            .tls
            .as_ref()
            .map(|t| t.endpoint_hash.clone())
    }
}

impl ServerHandle {
    pub fn access_reloader(&self) -> AccessReloader {
        AccessReloader(self.shared.clone())
    }
}

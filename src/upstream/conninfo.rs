//! libpq-style connection strings.
//!
//! Owns: parsing `key=value` strings and `postgresql://` URIs into a [`ConnInfo`], applying
//! the `PG*` environment variables (explicit settings win), and the defaults libpq uses.
//! Must not: open sockets or read files other than `/etc/passwd` for the default user name
//! (and a `stat` of the default socket directory, see [`default_socket_dir`]).
//!
//! Hosts follow libpq (`connectOptions2` in fe-connect.c): an entry with a `hostaddr` is a
//! TCP address; otherwise a `host` starting with `/` (a directory) or `@` (Linux abstract
//! namespace) is a Unix-domain socket directory, the socket being `<dir>/.s.PGSQL.<port>`;
//! an empty or missing host (without `hostaddr`) is the default socket directory.

#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)]

use std::fmt;
use std::time::Duration;

/// An invalid connection string or setting. Texts follow libpq where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnInfoError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, ConnInfoError> {
    Err(ConnInfoError(s.into()))
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, ConnInfoError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return err(format!("invalid sslmode value: \"{s}\"")),
        })
    }
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    Disable,
    Prefer,
    Require,
}

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

/// A parsed connection string. `None` means "not set": [`ConnInfo::apply_env`] fills
/// unset fields from the environment and the accessors supply libpq's defaults.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// Comma-separated `host` entries (empty entries mean the default host).
    pub host: Option<String>,
    /// `hostaddr` is accepted and used instead of `host` for connecting.
    pub hostaddr: Option<String>,
    /// Comma-separated ports.
    pub port: Option<String>,
    pub user: Option<String>,
    /// Never shown by `Debug`.
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub passfile: Option<String>,
    pub channel_binding: Option<String>,
    pub target_session_attrs: Option<String>,
    pub connect_timeout: Option<String>,
    pub options: Option<String>,
    /// libpq's `requirepeer`: the server's operating-system user on a Unix-domain socket.
    pub requirepeer: Option<String>,
    /// libpq's `require_auth` (see [`crate::upstream::require_auth`]).
    pub require_auth: Option<String>,
    pub keepalives: Option<String>,
    pub keepalives_idle: Option<String>,
    pub keepalives_interval: Option<String>,
    pub keepalives_count: Option<String>,
    pub tcp_user_timeout: Option<String>,
    pub sslcrl: Option<String>,
    pub sslcrldir: Option<String>,
    pub ssl_min_protocol_version: Option<String>,
    pub ssl_max_protocol_version: Option<String>,
    pub sslcertmode: Option<String>,
    /// A service name of the service file (applied by [`ConnInfo::apply_env`]).
    pub service: Option<String>,
    /// Options walrelay cannot honour and refuses unless harmless (see
    /// [`ConnInfo::validate`]).
    pub gssencmode: Option<String>,
    pub krbsrvname: Option<String>,
    pub sslnegotiation: Option<String>,
    /// An error found while applying the service file, reported by [`ConnInfo::validate`]
    /// (`apply_env` cannot fail).
    pub deferred_error: Option<String>,
}

/// Calls `$m!(field, ...)` with every setting of [`ConnInfo`] (all `Option<String>`).
macro_rules! for_each_setting {
    ($m:ident) => {
        $m!(
            host,
            hostaddr,
            port,
            user,
            password,
            dbname,
            application_name,
            fallback_application_name,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            passfile,
            channel_binding,
            target_session_attrs,
            connect_timeout,
            options,
            requirepeer,
            require_auth,
            keepalives,
            keepalives_idle,
            keepalives_interval,
            keepalives_count,
            tcp_user_timeout,
            sslcrl,
            sslcrldir,
            ssl_min_protocol_version,
            ssl_max_protocol_version,
            sslcertmode,
            gssencmode,
            krbsrvname,
            sslnegotiation,
        )
    };
}

impl fmt::Debug for ConnInfo {
    /// Like a derived `Debug`, but the password is shown as `<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ConnInfo");
        macro_rules! show {
            ($($f:ident),* $(,)?) => {
                $(
                    if stringify!($f) == "password" {
                        d.field("password", &self.password.as_ref().map(|_| "<redacted>"));
                    } else {
                        d.field(stringify!($f), &self.$f);
                    }
                )*
            };
        }
        for_each_setting!(show);
        d.field("service", &self.service);
        d.field("deferred_error", &self.deferred_error);
        d.finish()
    }
}

/// walrelay's default `connect_timeout` (per host) when none is given: libpq waits forever,
/// which turns a silent first host of a multi-host list into a hang. `connect_timeout=0`
/// still means "wait forever".
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// walrelay's TCP keepalive defaults (libpq leaves them to the system: 2 hours idle on
/// Linux): probes after 10 s idle, every 5 s, 3 unanswered probes drop the connection, so a
/// dead host or a broken network path is noticed within about 25 s. `0` in the connection
/// string means the system default, as in libpq.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
/// walrelay's default `tcp_user_timeout` (libpq: the system's, about 15 minutes of
/// retransmissions on Linux): sent data unacknowledged for 30 s drops the connection.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The TCP socket options of a connection (libpq's `keepalives*` and `tcp_user_timeout`).
/// `None` leaves the system default in place. Not used for Unix-domain sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    pub user_timeout: Option<Duration>,
}

/// Keywords libpq knows that walrelay accepts and ignores (they do not change what a
/// physical replication connection does, or they concern features walrelay lacks).
const IGNORED: &[&str] = &[
    "client_encoding",
    "sslcompression",
    "sslsni",
    "sslpassword",
    "gsslib",
    "gssdelegation",
    "replication",
    "load_balance_hosts",
    "min_protocol_version",
    "max_protocol_version",
];

/// libpq's TLS protocol version names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn parse(key: &str, s: &str) -> Result<TlsVersion, ConnInfoError> {
        Ok(match s {
            "TLSv1" => TlsVersion::V1_0,
            "TLSv1.1" => TlsVersion::V1_1,
            "TLSv1.2" => TlsVersion::V1_2,
            "TLSv1.3" => TlsVersion::V1_3,
            _ => return err(format!("invalid {key} value: \"{s}\"")),
        })
    }
}

/// libpq's `sslcertmode` (PostgreSQL 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslCertMode {
    /// Never send a client certificate.
    Disable,
    /// Send one if configured and the server asks (the default).
    Allow,
    /// Fail unless the server asked for, and got, a client certificate.
    Require,
}

impl ConnInfo {
    /// Parses a `key=value` string or a `postgresql://` / `postgres://` URI.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        let mut ci = ConnInfo::default();
        if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            ci.parse_uri(s)?;
        } else {
            for (k, v) in parse_kv(s)? {
                ci.set(&k, v)?;
            }
        }
        ci.validate()?;
        Ok(ci)
    }

    /// Sets one keyword. Unknown keywords are an error like libpq's.
    pub fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        let slot = match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => {
                self.password = Some(value);
                return Ok(());
            }
            "dbname" => &mut self.dbname,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "passfile" => &mut self.passfile,
            "channel_binding" => &mut self.channel_binding,
            "target_session_attrs" => &mut self.target_session_attrs,
            "connect_timeout" => &mut self.connect_timeout,
            "options" => &mut self.options,
            "requirepeer" => &mut self.requirepeer,
            "require_auth" => &mut self.require_auth,
            "keepalives" => &mut self.keepalives,
            "sslcrl" => &mut self.sslcrl,
            "sslcrldir" => &mut self.sslcrldir,
            "ssl_min_protocol_version" => &mut self.ssl_min_protocol_version,
            "ssl_max_protocol_version" => &mut self.ssl_max_protocol_version,
            "sslcertmode" => &mut self.sslcertmode,
            "service" => &mut self.service,
            "gssencmode" => &mut self.gssencmode,
            "krbsrvname" => &mut self.krbsrvname,
            "sslnegotiation" => &mut self.sslnegotiation,
            "keepalives_idle" => &mut self.keepalives_idle,
            "keepalives_interval" => &mut self.keepalives_interval,
            "keepalives_count" => &mut self.keepalives_count,
            "tcp_user_timeout" => &mut self.tcp_user_timeout,
            k if IGNORED.contains(&k) => return Ok(()),
            k => return err(format!("invalid connection option \"{k}\"")),
        };
        *slot = Some(value);
        Ok(())
    }

    /// Fills unset fields from the environment (`env("PGHOST")` etc.), like libpq does:
    /// settings given in the connection string always win.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        crate::upstream::service::apply(self, env);
        if self.password.is_none() {
            if let Some(v) = env("PGPASSWORD").filter(|v| !v.is_empty()) {
                self.password = Some(v);
            }
        }
        let pairs: [(&str, &mut Option<String>); 22] = [
            ("PGREQUIREAUTH", &mut self.require_auth),
            ("PGSSLCRL", &mut self.sslcrl),
            ("PGSSLCRLDIR", &mut self.sslcrldir),
            (
                "PGSSLMINPROTOCOLVERSION",
                &mut self.ssl_min_protocol_version,
            ),
            (
                "PGSSLMAXPROTOCOLVERSION",
                &mut self.ssl_max_protocol_version,
            ),
            ("PGSSLCERTMODE", &mut self.sslcertmode),
            ("PGGSSENCMODE", &mut self.gssencmode),
            ("PGKRBSRVNAME", &mut self.krbsrvname),
            ("PGSSLNEGOTIATION", &mut self.sslnegotiation),
            ("PGREQUIREPEER", &mut self.requirepeer),
            ("PGHOST", &mut self.host),
            ("PGPORT", &mut self.port),
            ("PGUSER", &mut self.user),
            ("PGSSLMODE", &mut self.sslmode),
            ("PGAPPNAME", &mut self.application_name),
            ("PGPASSFILE", &mut self.passfile),
            ("PGSSLROOTCERT", &mut self.sslrootcert),
            ("PGSSLCERT", &mut self.sslcert),
            ("PGSSLKEY", &mut self.sslkey),
            ("PGCHANNELBINDING", &mut self.channel_binding),
            ("PGTARGETSESSIONATTRS", &mut self.target_session_attrs),
            ("PGCONNECT_TIMEOUT", &mut self.connect_timeout),
        ];
        for (var, slot) in pairs {
            if slot.is_none() {
                if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                    *slot = Some(v);
                }
            }
        }
        if self.hostaddr.is_none() {
            if let Some(v) = env("PGHOSTADDR").filter(|v| !v.is_empty()) {
                self.hostaddr = Some(v);
            }
        }
        if self.dbname.is_none() {
            if let Some(v) = env("PGDATABASE").filter(|v| !v.is_empty()) {
                self.dbname = Some(v);
            }
        }
    }

    /// Fills every setting left unset here from `other` (service file settings).
    pub fn fill_unset_from(&mut self, other: ConnInfo) {
        macro_rules! fill {
            ($($f:ident),* $(,)?) => {
                $( if self.$f.is_none() { self.$f = other.$f; } )*
            };
        }
        for_each_setting!(fill);
    }

    /// [`ConnInfo::apply_env`] with the process environment.
    pub fn apply_process_env(&mut self) {
        self.apply_env(&|k| std::env::var(k).ok());
    }

    /// Checks the enumerated settings and the host/port lists, and refuses settings that
    /// would change security in a way walrelay cannot honour (instead of ignoring them).
    pub fn validate(&self) -> Result<(), ConnInfoError> {
        if let Some(e) = &self.deferred_error {
            return err(e.clone());
        }
        match self.gssencmode.as_deref().filter(|s| !s.is_empty()) {
            None | Some("disable") | Some("prefer") => {}
            Some("require") => {
                return err(
                    "gssencmode=require is not supported by walrelay (it has no GSSAPI support)",
                )
            }
            Some(s) => return err(format!("invalid gssencmode value: \"{s}\"")),
        }
        if self.krbsrvname.as_deref().is_some_and(|s| !s.is_empty()) {
            return err(
                "krbsrvname is not supported by walrelay (it has no Kerberos/GSSAPI support)",
            );
        }
        match self.sslnegotiation.as_deref().filter(|s| !s.is_empty()) {
            None | Some("postgres") => {}
            Some("direct") => return err("sslnegotiation=direct is not supported by walrelay"),
            Some(s) => return err(format!("invalid sslnegotiation value: \"{s}\"")),
        }
        self.ssl_protocol_range()?;
        self.sslcertmode()?;
        self.sslmode()?;
        self.channel_binding()?;
        self.target_session_attrs()?;
        self.connect_timeout()?;
        self.tcp_options()?;
        crate::upstream::require_auth::RequireAuth::parse(self.require_auth.as_deref())
            .map_err(ConnInfoError)?;
        self.hosts()?;
        Ok(())
    }

    /// The `(host, port)` pairs to try in order. `host` is what is shown in messages and used
    /// for TLS name checks; the address connected to is `hostaddr` when set.
    pub fn hosts(&self) -> Result<Vec<HostSpec>, ConnInfoError> {
        let split = |s: &Option<String>| -> Vec<String> {
            match s {
                Some(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
                None => Vec::new(),
            }
        };
        let hosts = split(&self.host);
        let addrs = split(&self.hostaddr);
        let ports = split(&self.port);
        let n = hosts.len().max(addrs.len()).max(1);
        if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
            return err(format!(
                "could not match {} host names to {} hostaddr values",
                hosts.len(),
                addrs.len()
            ));
        }
        if ports.len() > 1 && ports.len() != n {
            return err(format!(
                "could not match {} port numbers to {} hosts",
                ports.len(),
                n
            ));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let host = hosts.get(i).cloned().unwrap_or_default();
            let addr = addrs.get(i).cloned().filter(|a| !a.is_empty());
            // libpq: with neither host nor hostaddr, the default socket directory.
            let host = if host.is_empty() {
                addr.clone().unwrap_or_else(default_socket_dir)
            } else {
                host
            };
            let p = if ports.len() == 1 {
                ports.first()
            } else {
                ports.get(i)
            };
            let port = match p.map(|s| s.as_str()).filter(|s| !s.is_empty()) {
                None => 5432,
                Some(s) => match s.parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => return err(format!("invalid port number: \"{s}\"")),
                },
            };
            out.push(HostSpec { host, addr, port });
        }
        Ok(out)
    }

    /// `sslmode`, default `prefer`.
    pub fn sslmode(&self) -> Result<SslMode, ConnInfoError> {
        match self.sslmode.as_deref() {
            None => Ok(SslMode::Prefer),
            Some(s) => SslMode::parse(s),
        }
    }

    /// `ssl_min_protocol_version` (default `TLSv1.2`, as libpq) and
    /// `ssl_max_protocol_version` (default: none).
    pub fn ssl_protocol_range(&self) -> Result<(TlsVersion, Option<TlsVersion>), ConnInfoError> {
        let get = |v: &Option<String>, key: &str| -> Result<Option<TlsVersion>, ConnInfoError> {
            match v.as_deref().filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => TlsVersion::parse(key, s).map(Some),
            }
        };
        let min = get(&self.ssl_min_protocol_version, "ssl_min_protocol_version")?
            .unwrap_or(TlsVersion::V1_2);
        let max = get(&self.ssl_max_protocol_version, "ssl_max_protocol_version")?;
        if max.is_some_and(|m| m < min) {
            return err("invalid SSL protocol version range");
        }
        Ok((min, max))
    }

    /// `sslcertmode`, default `allow`.
    pub fn sslcertmode(&self) -> Result<SslCertMode, ConnInfoError> {
        Ok(match self.sslcertmode.as_deref() {
            None | Some("") | Some("allow") => SslCertMode::Allow,
            Some("disable") => SslCertMode::Disable,
            Some("require") => SslCertMode::Require,
            Some(s) => return err(format!("invalid sslcertmode value: \"{s}\"")),
        })
    }

    /// `channel_binding`, default `prefer`.
    pub fn channel_binding(&self) -> Result<ChannelBindingMode, ConnInfoError> {
        Ok(match self.channel_binding.as_deref() {
            None | Some("prefer") => ChannelBindingMode::Prefer,
            Some("disable") => ChannelBindingMode::Disable,
            Some("require") => ChannelBindingMode::Require,
            Some(s) => return err(format!("invalid channel_binding value: \"{s}\"")),
        })
    }

    /// `target_session_attrs`, default `any`.
    pub fn target_session_attrs(&self) -> Result<TargetSessionAttrs, ConnInfoError> {
        Ok(match self.target_session_attrs.as_deref() {
            None | Some("any") => TargetSessionAttrs::Any,
            Some("read-write") => TargetSessionAttrs::ReadWrite,
            Some("read-only") => TargetSessionAttrs::ReadOnly,
            Some("primary") => TargetSessionAttrs::Primary,
            Some("standby") => TargetSessionAttrs::Standby,
            Some("prefer-standby") => TargetSessionAttrs::PreferStandby,
            Some(s) => return err(format!("invalid target_session_attrs value: \"{s}\"")),
        })
    }

    /// `connect_timeout` per host: [`DEFAULT_CONNECT_TIMEOUT`] when unset, `None` (wait
    /// forever) for 0 or less. Value 1 is raised to 2 seconds like libpq.
    pub fn connect_timeout(&self) -> Result<Option<Duration>, ConnInfoError> {
        match self.connect_timeout.as_deref().map(str::trim) {
            None | Some("") => Ok(Some(DEFAULT_CONNECT_TIMEOUT)),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n <= 0 => Ok(None),
                Ok(n) => Ok(Some(Duration::from_secs(n.max(2) as u64))),
                Err(_) => err(format!(
                    "invalid integer value \"{s}\" for connection option \"connect_timeout\""
                )),
            },
        }
    }

    /// The TCP options: libpq's keywords, walrelay's defaults where unset (see the
    /// `DEFAULT_*` constants). Integers as libpq parses them; negative values count as 0
    /// (the system default).
    pub fn tcp_options(&self) -> Result<TcpOptions, ConnInfoError> {
        let int = |v: &Option<String>, name: &str| -> Result<Option<i64>, ConnInfoError> {
            match v.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
                    ConnInfoError(format!(
                        "invalid integer value \"{s}\" for connection option \"{name}\""
                    ))
                }),
            }
        };
        let secs = |v: Option<i64>, default: Duration| match v {
            None => Some(default),
            Some(n) if n <= 0 => None,
            Some(n) => Some(Duration::from_secs(n.unsigned_abs())),
        };
        let keepalives = int(&self.keepalives, "keepalives")?.is_none_or(|n| n != 0);
        let count = match int(&self.keepalives_count, "keepalives_count")? {
            None => Some(DEFAULT_KEEPALIVES_COUNT),
            Some(n) if n <= 0 => None,
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        };
        let user_timeout = match int(&self.tcp_user_timeout, "tcp_user_timeout")? {
            None => Some(DEFAULT_TCP_USER_TIMEOUT),
            Some(n) if n <= 0 => None,
            Some(n) => Some(Duration::from_millis(n.unsigned_abs())),
        };
        Ok(TcpOptions {
            keepalives,
            keepalives_idle: secs(
                int(&self.keepalives_idle, "keepalives_idle")?,
                DEFAULT_KEEPALIVES_IDLE,
            ),
            keepalives_interval: secs(
                int(&self.keepalives_interval, "keepalives_interval")?,
                DEFAULT_KEEPALIVES_INTERVAL,
            ),
            keepalives_count: count,
            user_timeout,
        })
    }

    /// The user name: `user`, else the operating-system user (like libpq).
    pub fn user_or_default(&self) -> String {
        self.user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(os_user_name)
    }

    /// The `database` startup parameter: `dbname` if given, else `replication` (what
    /// walreceiver and pg_receivewal send for a physical connection). Also what the
    /// password file is matched against.
    pub fn dbname_or_default(&self) -> String {
        self.dbname
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "replication".to_string())
    }

    /// `application_name`, else `fallback_application_name`, else `walrelay`.
    pub fn application_name_or_default(&self) -> String {
        self.application_name
            .clone()
            .or_else(|| self.fallback_application_name.clone())
            .unwrap_or_else(|| "walrelay".to_string())
    }

    fn parse_uri(&mut self, s: &str) -> Result<(), ConnInfoError> {
        let rest = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
            .unwrap_or(s);
        // Split off the query string and the path.
        let (before_q, query) = match rest.split_once('?') {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        let (authority, path) = match before_q.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (before_q, None),
        };
        let (userinfo, hostpart) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        // The URI as shown in messages: never with its password (libpq would echo it).
        let shown = match userinfo.and_then(|u| u.split_once(':')) {
            Some((u, _)) => s.replacen(authority, &format!("{u}:********@{hostpart}"), 1),
            None => s.to_string(),
        };
        let dec = |part: &str| percent_decode(part).map_err(|e| e.error(part, &shown));
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    self.user = Some(dec(u)?).filter(|u| !u.is_empty());
                    let p = percent_decode(p).map_err(|e| e.error("********", &shown))?;
                    self.password = Some(p);
                }
                None => self.user = Some(dec(userinfo)?).filter(|u| !u.is_empty()),
            }
        }
        if !hostpart.is_empty() {
            let mut hosts = Vec::new();
            let mut ports = Vec::new();
            for item in hostpart.split(',') {
                let (h, p) = if let Some(r) = item.strip_prefix('[') {
                    let Some((addr, after)) = r.split_once(']') else {
                        return err(format!(
                            "missing \"]\" in IPv6 host address in URI: \"{shown}\""
                        ));
                    };
                    let p = match after.strip_prefix(':') {
                        Some(p) => p,
                        None if after.is_empty() => "",
                        None => {
                            return err(format!(
                                "unexpected character \"{}\" after IPv6 host address in URI (expected \":\" or \"/\"): \"{shown}\"",
                                after.chars().next().unwrap_or(' ')
                            ))
                        }
                    };
                    (addr.to_string(), p)
                } else {
                    match item.rsplit_once(':') {
                        Some((h, p)) => (dec(h)?, p),
                        None => (dec(item)?, ""),
                    }
                };
                hosts.push(h);
                ports.push(dec(p)?);
            }
            if hosts.iter().any(|h| !h.is_empty()) {
                self.host = Some(hosts.join(","));
            }
            if ports.iter().any(|p| !p.is_empty()) {
                self.port = Some(ports.join(","));
            }
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            self.dbname = Some(dec(p)?);
        }
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return err(format!(
                        "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
                    ));
                };
                let k = dec(k)?;
                let v = if k == "password" {
                    percent_decode(v).map_err(|e| e.error("********", &shown))?
                } else {
                    dec(v)?
                };
                // libpq maps the JDBC-style ssl=true to sslmode=require.
                if k == "ssl" && v == "true" {
                    self.sslmode = Some("require".into());
                    continue;
                }
                self.set(&k, v)?;
            }
        }
        Ok(())
    }
}

/// One host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The host name as given (used in messages, TLS name checks and pgpass matching); a
    /// socket directory for Unix-domain sockets.
    pub host: String,
    /// `hostaddr`, when given: the address actually connected to (always TCP).
    pub addr: Option<String>,
    pub port: u16,
}

impl HostSpec {
    /// The Unix-domain socket path (`<dir>/.s.PGSQL.<port>`, libpq's `UNIXSOCK_PATH`) when
    /// this entry is a socket directory: no `hostaddr`, and a host starting with `/` or `@`
    /// (`@` = Linux abstract namespace, the `@` standing for the leading NUL byte).
    pub fn socket_path(&self) -> Option<String> {
        if self.addr.is_some() || !is_unixsock_path(&self.host) {
            return None;
        }
        Some(format!("{}/.s.PGSQL.{}", self.host, self.port))
    }

    /// The host name matched against the password file: libpq's `passwordFromFile` uses
    /// `localhost` for the default socket directory, the host (or directory) otherwise.
    pub fn pgpass_host(&self) -> &str {
        if self.addr.is_none() && self.host == default_socket_dir() {
            "localhost"
        } else {
            &self.host
        }
    }
}

/// libpq's `is_unixsock_path`: an absolute path, or `@` for the abstract namespace.
pub fn is_unixsock_path(host: &str) -> bool {
    host.starts_with('/') || host.starts_with('@')
}

/// The default Unix-domain socket directory, used when no host is given (libpq's
/// `DEFAULT_PGSOCKET_DIR`, a compile-time constant of each libpq build).
///
/// libpq builds disagree: Debian's (and so Ubuntu's, and the PGDG apt packages) use
/// `/var/run/postgresql`, PostgreSQL's own default and most other builds (PyPI wheels,
/// Homebrew, source builds) `/tmp`. walrelay has no libpq to ask, and `pg_config` does not
/// report it, so: the value given at build time in `WALRELAY_DEFAULT_PGSOCKET_DIR` when set
/// (packagers set it like their libpq); otherwise `/var/run/postgresql` when that directory
/// exists (Debian's `postgresql-common` creates it, and Debian's servers listen there),
/// else `/tmp`. `PGHOST` (or `host=`) always overrides it, as with libpq.
pub fn default_socket_dir() -> String {
    if let Some(d) = option_env!("WALRELAY_DEFAULT_PGSOCKET_DIR").filter(|d| !d.is_empty()) {
        return d.to_string();
    }
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if std::path::Path::new("/var/run/postgresql").is_dir() {
            "/var/run/postgresql".to_string()
        } else {
            "/tmp".to_string()
        }
    })
    .clone()
}

/// `key = value` pairs; values may be single-quoted; `\` escapes the next character.
fn parse_kv(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return err(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return err("unterminated quoted string in connection info string");
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        val.push(n);
                    }
                } else {
                    val.push(c);
                }
            }
        }
        out.push((key, val));
    }
    Ok(out)
}

/// Why a percent-encoded URI part could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeError {
    Nul,
    BadToken,
    Utf8,
}

impl DecodeError {
    /// The message, naming the part (`********` for a password) and the URI without its
    /// password.
    fn error(self, part: &str, uri: &str) -> ConnInfoError {
        ConnInfoError(match self {
            DecodeError::Nul => {
                format!("forbidden value %00 in percent-encoded value: \"{part}\"")
            }
            DecodeError::BadToken => format!("invalid percent-encoded token: \"{part}\""),
            DecodeError::Utf8 => format!("invalid UTF-8 in URI: \"{uri}\""),
        })
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => b.checked_sub(b'0'),
        b'a'..=b'f' => b.checked_sub(b'a' - 10),
        b'A'..=b'F' => b.checked_sub(b'A' - 10),
        _ => None,
    }
}

/// libpq's URI percent-decoding: `%XX` with two hex digits, `%00` forbidden.
fn percent_decode(s: &str) -> Result<String, DecodeError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hi = bytes
            .next()
            .and_then(hex_digit)
            .ok_or(DecodeError::BadToken)?;
        let lo = bytes
            .next()
            .and_then(hex_digit)
            .ok_or(DecodeError::BadToken)?;
        let v = hi.checked_mul(16).and_then(|h| h.checked_add(lo));
        match v {
            Some(0) => return Err(DecodeError::Nul),
            Some(v) => out.push(v),
            None => return Err(DecodeError::BadToken),
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::Utf8)
}

/// The user name of `uid` from `/etc/passwd` (walrelay links no NSS; `None` if absent).
pub fn user_name_of_uid(uid: u32) -> Option<String> {
    let pw = std::fs::read_to_string("/etc/passwd").ok()?;
    let uid = uid.to_string();
    pw.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next().filter(|n| !n.is_empty())?;
        let _password = f.next()?;
        (f.next()? == uid).then(|| name.to_string())
    })
}

/// The operating-system user name: `/etc/passwd` entry of our uid, else `$USER`.
fn os_user_name() -> String {
    use std::os::unix::fs::MetadataExt;
    if let Some(name) = std::fs::metadata("/proc/self")
        .ok()
        .and_then(|md| user_name_of_uid(md.uid()))
    {
        return name;
    }
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "postgres".to_string())
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects
)] // tests may panic
mod tests {
    use super::*;

    #[test]
    fn kv_basic_and_quoting() {
        let ci = ConnInfo::parse(
            "host=db1 port = 5433 user='bob smith' password='it\\'s \\\\ x' dbname=a\\ b application_name=''",
        )
        .unwrap();
        assert_eq!(ci.host.as_deref(), Some("db1"));
        assert_eq!(ci.port.as_deref(), Some("5433"));
        assert_eq!(ci.user.as_deref(), Some("bob smith"));
        assert_eq!(ci.password.as_deref(), Some("it's \\ x"));
        assert_eq!(ci.dbname.as_deref(), Some("a b"));
        assert_eq!(ci.application_name.as_deref(), Some(""));
        assert_eq!(ci.sslmode().unwrap(), SslMode::Prefer);
        assert_eq!(
            ci.hosts().unwrap(),
            vec![HostSpec {
                host: "db1".into(),
                addr: None,
                port: 5433
            }]
        );
    }

    #[test]
    fn kv_errors() {
        assert!(ConnInfo::parse("host").is_err());
        assert!(ConnInfo::parse("host='abc").is_err());
        assert_eq!(
            ConnInfo::parse("bogus=1").unwrap_err().0,
            "invalid connection option \"bogus\""
        );
        assert!(ConnInfo::parse("sslmode=maybe").is_err());
        assert!(ConnInfo::parse("port=99999").is_err());
        assert!(ConnInfo::parse("host=/tmp").is_ok());
        assert!(ConnInfo::parse("host=a,b,c port=1,2").is_err());
        assert!(ConnInfo::parse("connect_timeout=x").is_err());
        assert_eq!(
            ConnInfo::parse("keepalives_idle=soon").unwrap_err().0,
            "invalid integer value \"soon\" for connection option \"keepalives_idle\""
        );
        // Ignored libpq keywords are accepted.
        assert!(ConnInfo::parse("sslsni=1").is_ok());
    }

    #[test]
    fn multi_host() {
        let ci = ConnInfo::parse("host=a,b,,c port=1").unwrap();
        let h = ci.hosts().unwrap();
        assert_eq!(
            h.iter()
                .map(|h| (h.host.as_str(), h.port))
                .collect::<Vec<_>>(),
            vec![
                ("a", 1),
                ("b", 1),
                (default_socket_dir().as_str(), 1),
                ("c", 1)
            ]
        );
        assert_eq!(
            h[2].socket_path(),
            Some(format!("{}/.s.PGSQL.1", default_socket_dir()))
        );
        assert_eq!(h[0].socket_path(), None);
        let ci = ConnInfo::parse("host=a,b port=1,").unwrap();
        let h = ci.hosts().unwrap();
        assert_eq!((h[0].port, h[1].port), (1, 5432));
        let ci = ConnInfo::parse("").unwrap();
        assert_eq!(ci.hosts().unwrap()[0].host, default_socket_dir());
        assert_eq!(ci.hosts().unwrap()[0].port, 5432);
        assert_eq!(ci.hosts().unwrap()[0].pgpass_host(), "localhost");
    }

    #[test]
    fn unix_sockets() {
        // A directory, the abstract namespace, and hostaddr winning over a socket host.
        let ci = ConnInfo::parse("host=/run/pg,@abs,/x port=5433,5434,5435 hostaddr=,,127.0.0.1")
            .unwrap();
        let h = ci.hosts().unwrap();
        assert_eq!(h[0].socket_path().as_deref(), Some("/run/pg/.s.PGSQL.5433"));
        assert_eq!(h[0].pgpass_host(), "/run/pg");
        assert_eq!(h[1].socket_path().as_deref(), Some("@abs/.s.PGSQL.5434"));
        assert_eq!(h[2].socket_path(), None);
        assert_eq!(h[2].addr.as_deref(), Some("127.0.0.1"));
        // hostaddr alone: TCP, shown by its address.
        let ci = ConnInfo::parse("hostaddr=127.0.0.1").unwrap();
        let h = ci.hosts().unwrap();
        assert_eq!(
            (h[0].host.as_str(), h[0].socket_path()),
            ("127.0.0.1", None)
        );
        // An explicit default socket directory matches "localhost" in the password file.
        let ci = ConnInfo::parse(&format!("host={}", default_socket_dir())).unwrap();
        assert_eq!(ci.hosts().unwrap()[0].pgpass_host(), "localhost");
        // PGHOST=/dir.
        let mut ci = ConnInfo::parse("port=7").unwrap();
        ci.apply_env(&|k| (k == "PGHOST").then(|| "/sock/dir".to_string()));
        assert_eq!(
            ci.hosts().unwrap()[0].socket_path().as_deref(),
            Some("/sock/dir/.s.PGSQL.7")
        );
    }

    #[test]
    fn uri() {
        let ci = ConnInfo::parse(
            "postgresql://us%40er:p%3Ass@h1:5433,[::1]:5434,h3/my%20db?sslmode=verify-full&application_name=x%26y&connect_timeout=1",
        )
        .unwrap();
        assert_eq!(ci.user.as_deref(), Some("us@er"));
        assert_eq!(ci.password.as_deref(), Some("p:ss"));
        assert_eq!(ci.dbname.as_deref(), Some("my db"));
        assert_eq!(ci.application_name.as_deref(), Some("x&y"));
        assert_eq!(ci.sslmode().unwrap(), SslMode::VerifyFull);
        assert_eq!(ci.connect_timeout().unwrap(), Some(Duration::from_secs(2)));
        let h = ci.hosts().unwrap();
        assert_eq!(
            h.iter()
                .map(|h| (h.host.as_str(), h.port))
                .collect::<Vec<_>>(),
            vec![("h1", 5433), ("::1", 5434), ("h3", 5432)]
        );
        let ci = ConnInfo::parse("postgres://").unwrap();
        assert_eq!(ci, ConnInfo::default());
        let ci = ConnInfo::parse("postgres://u@/?host=x&port=7").unwrap();
        assert_eq!(ci.hosts().unwrap()[0].host, "x");
        assert_eq!(ci.hosts().unwrap()[0].port, 7);
        assert!(ConnInfo::parse("postgres://h/?bogus=1").is_err());
        assert!(ConnInfo::parse("postgres://h/?sslmode").is_err());
        assert!(ConnInfo::parse("postgres://h%zz/").is_err());
        assert!(ConnInfo::parse("postgres://[::1/").is_err());
        assert!(ConnInfo::parse("postgres://h/%00").is_err());
    }

    #[test]
    fn secrets_are_never_shown() {
        let ci = ConnInfo::parse("host=a password=hunter2").unwrap();
        let d = format!("{ci:?}");
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
        let ci = ConnInfo::parse("postgresql://u:hunter2@h/db?password=alsosecret").unwrap();
        let d = format!("{ci:?}");
        assert!(!d.contains("hunter2") && !d.contains("alsosecret"), "{d}");
        for uri in [
            "postgresql://u:hunter2@[::1/db",
            "postgresql://u:hunter2@[::1]x/db",
            "postgresql://u:hunter2%zz@h/db",
            "postgresql://u:hunter2%00@h/db",
            "postgresql://u:hunter2@h%zz/db",
            "postgresql://u:pw@h/db?password=hunter2%zz",
        ] {
            let e = ConnInfo::parse(uri).unwrap_err().0;
            assert!(!e.contains("hunter2"), "{uri}: {e}");
        }
        assert_eq!(
            ConnInfo::parse("postgresql://u:hunter2@[::1/db")
                .unwrap_err()
                .0,
            "missing \"]\" in IPv6 host address in URI: \"postgresql://u:********@[::1/db\""
        );
    }

    #[test]
    fn security_options_refused_or_checked() {
        let e = |s: &str| ConnInfo::parse(s).unwrap_err().0;
        assert_eq!(
            e("gssencmode=require"),
            "gssencmode=require is not supported by walrelay (it has no GSSAPI support)"
        );
        assert!(ConnInfo::parse("gssencmode=prefer").is_ok());
        assert!(ConnInfo::parse("gssencmode=disable").is_ok());
        assert_eq!(
            e("krbsrvname=postgres"),
            "krbsrvname is not supported by walrelay (it has no Kerberos/GSSAPI support)"
        );
        assert_eq!(
            e("sslnegotiation=direct"),
            "sslnegotiation=direct is not supported by walrelay"
        );
        assert!(ConnInfo::parse("sslnegotiation=postgres").is_ok());
        assert_eq!(
            e("sslcertmode=maybe"),
            "invalid sslcertmode value: \"maybe\""
        );
        assert_eq!(
            ConnInfo::parse("sslcertmode=require")
                .unwrap()
                .sslcertmode()
                .unwrap(),
            SslCertMode::Require
        );
        assert_eq!(
            e("ssl_min_protocol_version=TLSv9"),
            "invalid ssl_min_protocol_version value: \"TLSv9\""
        );
        assert_eq!(
            e("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2"),
            "invalid SSL protocol version range"
        );
        assert_eq!(
            ConnInfo::parse("").unwrap().ssl_protocol_range().unwrap(),
            (TlsVersion::V1_2, None)
        );
        assert!(ConnInfo::parse("sslcrl=/x sslcrldir=/y").is_ok());
    }

    #[test]
    fn liveness_defaults() {
        let ci = ConnInfo::parse("host=a").unwrap();
        assert_eq!(ci.connect_timeout().unwrap(), Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(
            ci.tcp_options().unwrap(),
            TcpOptions {
                keepalives: true,
                keepalives_idle: Some(Duration::from_secs(10)),
                keepalives_interval: Some(Duration::from_secs(5)),
                keepalives_count: Some(3),
                user_timeout: Some(Duration::from_secs(30)),
            }
        );
        let ci = ConnInfo::parse(
            "connect_timeout=0 keepalives=0 keepalives_idle=0 keepalives_interval=7 keepalives_count=-1 tcp_user_timeout=1500",
        )
        .unwrap();
        assert_eq!(ci.connect_timeout().unwrap(), None);
        assert_eq!(
            ci.tcp_options().unwrap(),
            TcpOptions {
                keepalives: false,
                keepalives_idle: None,
                keepalives_interval: Some(Duration::from_secs(7)),
                keepalives_count: None,
                user_timeout: Some(Duration::from_millis(1500)),
            }
        );
    }

    #[test]
    fn env_order() {
        let mut ci = ConnInfo::parse("host=explicit sslmode=disable").unwrap();
        let env = |k: &str| -> Option<String> {
            match k {
                "PGHOST" => Some("envhost".into()),
                "PGPORT" => Some("6000".into()),
                "PGUSER" => Some("envuser".into()),
                "PGPASSWORD" => Some("envpw".into()),
                "PGSSLMODE" => Some("verify-full".into()),
                "PGAPPNAME" => Some("".into()),
                "PGTARGETSESSIONATTRS" => Some("read-write".into()),
                _ => None,
            }
        };
        ci.apply_env(&env);
        assert_eq!(ci.host.as_deref(), Some("explicit"));
        assert_eq!(ci.sslmode().unwrap(), SslMode::Disable);
        assert_eq!(ci.port.as_deref(), Some("6000"));
        assert_eq!(ci.user_or_default(), "envuser");
        assert_eq!(ci.password.as_deref(), Some("envpw"));
        assert_eq!(ci.application_name_or_default(), "walrelay");
        assert_eq!(
            ci.target_session_attrs().unwrap(),
            TargetSessionAttrs::ReadWrite
        );
        assert_eq!(ci.dbname_or_default(), "replication");
    }
}

//! The TOML configuration of `walrelay run`, with documented defaults.
//!
//! Owns: parsing and validating the file (unknown keys are rejected), human durations
//! (`500ms`, `10s`, `8h`, `1h30m`, `2d`) and sizes (`64MB`), and the defaults that let
//! walrelay run with no file at all. Command-line flags override the file
//! (`main.rs` applies them). Must not: hold business logic.
//!
//! Every key, with its default, is listed in `docs/configuration.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where WAL segments, history files and the control file live.
    pub data_dir: PathBuf,
    pub upstream: UpstreamConfig,
    pub server: ServerConfig,
    pub archive: ArchiveConfig,
    pub metrics: MetricsConfig,
    /// Delayed and controlled feeds (`[[feed]]`), matched by the standby's
    /// `application_name` (and optionally slot and user).
    pub feed: Vec<FeedConfig>,
    /// Settings shared by all feeds (`[feeds]`).
    pub feeds: FeedsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./walrelay-data"),
            upstream: UpstreamConfig::default(),
            server: ServerConfig::default(),
            archive: ArchiveConfig::default(),
            metrics: MetricsConfig::default(),
            feed: Vec::new(),
            feeds: FeedsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// libpq connection string or URI of the primary (several hosts allowed).
    pub conninfo: Option<String>,
    /// Physical replication slot on the primary.
    pub slot: Option<String>,
    /// Create the slot (RESERVE_WAL) if it does not exist.
    pub create_slot: bool,
    /// fsync and report after every received message, also while catching up on a backlog
    /// (by default walrelay does so once caught up with the primary's flush position).
    pub synchronous: bool,
    /// Interval between status updates to the primary.
    #[serde(deserialize_with = "de_duration")]
    pub status_interval: Duration,
    /// First delay before reconnecting; doubles up to `reconnect_max`.
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_min: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_max: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            conninfo: None,
            slot: Some("walrelay".into()),
            create_slot: true,
            synchronous: false,
            status_interval: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the walsender listens on, e.g. `127.0.0.1:5433`. No listener when unset.
    pub listen: Option<String>,
    /// Most client connections at once (then `sorry, too many clients already`).
    pub max_connections: usize,
    /// Time allowed from connect to the end of authentication (`authentication_timeout`).
    #[serde(deserialize_with = "de_duration")]
    pub startup_timeout: Duration,
    /// PEM server certificate (chain) and key; TLS is offered when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA that client certificates must chain to (for `cert` rules).
    pub tls_ca: Option<PathBuf>,
    /// Refuse connections that did not negotiate TLS.
    pub require_tls: bool,
    /// Disconnect a streaming client that sent nothing for this long (0: never);
    /// a reply-requesting keepalive goes out at half of it.
    #[serde(deserialize_with = "de_duration")]
    pub wal_sender_timeout: Duration,
    /// Keepalive while no WAL is sent, so standbys with a short `wal_receiver_timeout` stay.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_interval: Duration,
    /// At shutdown, how long to wait for streaming clients to confirm what they were sent.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Most proxy-side replication slots.
    pub max_slots: usize,
    /// A slot more than this far behind walrelay's flush position is invalidated
    /// (like `max_slot_wal_keep_size`); unset: no limit.
    #[serde(deserialize_with = "de_opt_size")]
    pub max_slot_wal_keep_size: Option<u64>,
    /// Ordered authentication rules, first match wins (like `pg_hba.conf`). Default: trust
    /// from loopback addresses only.
    pub hba: Vec<HbaRuleConfig>,
    /// User name → SCRAM verifier (`walrelay passwd USER`) or `md5…` hash.
    pub users: std::collections::BTreeMap<String, String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: None,
            max_connections: 100,
            startup_timeout: Duration::from_secs(60),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            require_tls: false,
            wal_sender_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            max_slots: 64,
            max_slot_wal_keep_size: None,
            hba: Vec::new(),
            users: Default::default(),
        }
    }
}

/// One `[[server.hba]]` rule: `type` (host, hostssl, hostnossl), `database`
/// (`replication`), `user` (`all` or a comma list), `address` (`all` or CIDR) and `method`
/// (scram-sha-256, md5, trust, reject, cert).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HbaRuleConfig {
    #[serde(rename = "type", default = "default_hba_type")]
    pub conn_type: String,
    #[serde(default = "default_hba_database")]
    pub database: String,
    #[serde(default = "default_all")]
    pub user: String,
    #[serde(default = "default_all")]
    pub address: String,
    pub method: String,
}

fn default_hba_type() -> String {
    "host".into()
}
fn default_hba_database() -> String {
    "replication".into()
}
fn default_all() -> String {
    "all".into()
}

/// `[archive]`: uploading completed segments to an object store, local retention, reading
/// back. Documented in `docs/archive.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Object store URL (`file:///path`, `s3://bucket/prefix`, `az://container/prefix`,
    /// `gs://bucket/prefix`). Unset: `file://<data_dir>/archive`. `"none"` disables archiving.
    pub url: Option<String>,
    /// What `flush` reported to the primary means: `local` (fsynced here, the default) or
    /// `archive` (also in the object store).
    pub ack: AckMode,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// `none` or `zstd`; readers handle both whatever this says.
    pub compression: Compression,
    /// zstd level (1-19).
    pub compression_level: i32,
    /// Objects larger than this are uploaded in parts.
    #[serde(deserialize_with = "de_size")]
    pub multipart_threshold: u64,
    /// Part size of multipart uploads.
    #[serde(deserialize_with = "de_size")]
    pub part_size: u64,
    /// First delay after a failed upload; doubles (with jitter) up to `retry_max`.
    #[serde(deserialize_with = "de_duration")]
    pub retry_min: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub retry_max: Duration,
    /// The data directory is rescanned at least this often (also on every completed segment).
    #[serde(deserialize_with = "de_duration")]
    pub scan_interval: Duration,
    /// Upload a snapshot of the open segment this often when it has new WAL; `0` disables.
    #[serde(deserialize_with = "de_duration")]
    pub partial_interval: Duration,
    /// Which system's WAL to read when the archive holds several (`wal-fetch`, `verify`).
    pub system_id: Option<u64>,
    /// Segments read ahead by the archive reader and prefetched by `wal-fetch`.
    pub prefetch: usize,
    /// Local retention: keep at least the newest this many bytes of completed segments...
    #[serde(deserialize_with = "de_size")]
    pub keep_local_size: u64,
    /// ...and every segment younger than this.
    #[serde(deserialize_with = "de_duration")]
    pub keep_local_age: Duration,
    /// Alarm (log + `walrelay_archive_disk_cap_alarm`) when local WAL exceeds 90% of this;
    /// `0`: no cap.
    #[serde(deserialize_with = "de_size")]
    pub local_disk_cap: u64,
    /// `wal-fetch`: how long to retry an archive that does not answer (unreachable, an
    /// unmounted share, refused) before exiting with a status PostgreSQL treats as fatal.
    #[serde(deserialize_with = "de_duration")]
    pub fetch_retry_timeout: Duration,
    /// `wal-fetch`: deliver the newest partial snapshot (zero-padded to a whole segment)
    /// when the archive has no complete segment, for recovery to the end of archived WAL.
    pub fetch_partial: bool,
    /// Client-side encryption of archived objects: a file of 32 random bytes or 64 hex
    /// digits, mode 0600 (see docs/archive.md). Unset: objects are stored as they are.
    pub encryption_key_file: Option<PathBuf>,
    /// The key of `encryption_key_file`, loaded by [`Config::parse`]/[`Config::load`].
    #[serde(skip)]
    pub encryption_key: Option<crate::archive::crypt::Key>,
    /// Expiry of archived WAL (`walrelay archive expire`, and on a timer in `run`).
    pub retention: ArchiveRetention,
    /// S3 (and S3-compatible) options; unset ones come from the `AWS_*` environment.
    pub s3: S3Options,
    /// Azure options; unset ones come from the `AZURE_*` environment.
    pub azure: AzureOptions,
    /// Further object_store options by their documented names (`aws_…`, `azure_…`,
    /// `google_…`), for anything not covered above (e.g. `google_service_account`).
    pub options: std::collections::BTreeMap<String, String>,
}

impl ArchiveConfig {
    /// Loads `encryption_key_file` into `encryption_key` (a bad key file is an error).
    pub fn load_key(&mut self) -> Result<(), crate::archive::ArchiveError> {
        self.encryption_key = match &self.encryption_key_file {
            Some(p) => Some(crate::archive::crypt::Key::load(p)?),
            None => None,
        };
        Ok(())
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: None,
            ack: AckMode::Local,
            concurrency: 4,
            compression: Compression::None,
            compression_level: 3,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            scan_interval: Duration::from_secs(10),
            partial_interval: Duration::from_secs(60),
            system_id: None,
            prefetch: 4,
            keep_local_size: 1 << 30,
            keep_local_age: Duration::from_secs(3600),
            local_disk_cap: 0,
            fetch_retry_timeout: Duration::from_secs(60),
            fetch_partial: false,
            retention: ArchiveRetention::default(),
            encryption_key_file: None,
            encryption_key: None,
            s3: S3Options::default(),
            azure: AzureOptions::default(),
            options: Default::default(),
        }
    }
}

/// `[archive.retention]`: archived segments older than `keep_age` **and** outside the newest
/// `keep_size` bytes are deleted (with their manifests), oldest first, never at or past what a
/// proxy slot, a delayed feed or local WAL still needs. `0` leaves a rule out; both `0` (the
/// default): nothing is ever deleted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveRetention {
    #[serde(deserialize_with = "de_duration")]
    pub keep_age: Duration,
    #[serde(deserialize_with = "de_size")]
    pub keep_size: u64,
    /// How often `run` expires (when a rule is set).
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
}

impl Default for ArchiveRetention {
    fn default() -> Self {
        ArchiveRetention {
            keep_age: Duration::ZERO,
            keep_size: 0,
            interval: Duration::from_secs(3600),
        }
    }
}

/// Meaning of the `flush` position reported to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// At local fsync.
    #[default]
    Local,
    /// Only once in the object store (`archived_lsn`).
    Archive,
}

/// Compression of archived segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Zstd,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:8333` for a local server.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: Option<bool>,
    /// Path-style requests (`endpoint/bucket/key`), which most local servers need.
    /// Default: true when `endpoint` is set.
    pub path_style: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureOptions {
    pub account: Option<String>,
    pub access_key: Option<String>,
    /// e.g. `http://127.0.0.1:10000/devstoreaccount1` for azurite (with `use_emulator`, the
    /// account path segment may be left out).
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    /// Use azurite's well-known account and key (unless `account`/`access_key` are set), at
    /// `endpoint` if set, else at `$AZURITE_BLOB_STORAGE_URL` or `http://127.0.0.1:10000`.
    pub use_emulator: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`/metrics`), e.g. `127.0.0.1:9187`.
    pub listen: Option<String>,
}

/// One `[[feed]]`: which sessions it matches and how far it is held back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Name used by `walrelay feed …` and the admin API (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// `application_name` the standby connects with (default: the feed's name).
    #[serde(default)]
    pub application_name: Option<String>,
    /// Only sessions using this replication slot.
    #[serde(default)]
    pub slot: Option<String>,
    /// Only sessions of this user.
    #[serde(default)]
    pub user: Option<String>,
    /// Apply delay, e.g. `8h` (default 0: no delay, but pause/advance still work).
    #[serde(default, deserialize_with = "de_duration")]
    pub delay: Duration,
    /// Stop before commits that drop relations (default: `feeds.tripwire`; delayed feeds
    /// only).
    #[serde(default)]
    pub tripwire: Option<bool>,
}

impl FeedConfig {
    /// The `application_name` this feed matches.
    pub fn app_name(&self) -> &str {
        self.application_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedsConfig {
    /// Tripwire default for delayed feeds.
    pub tripwire: bool,
    /// Most entries kept in the commit index (memory and `delay/commit-index`).
    pub index_max_entries: usize,
}

impl Default for FeedsConfig {
    fn default() -> Self {
        FeedsConfig {
            tripwire: true,
            index_max_entries: 5_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration file \"{path}\": {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file \"{path}\": {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check_feeds()?;
        c.archive.load_key().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Feed names are unique and URL-safe.
    fn check_feeds(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for f in &self.feed {
            let ok = !f.name.is_empty()
                && f.name.len() <= 63
                && f.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !ok {
                return Err(format!(
                    "invalid feed name \"{}\": use 1-63 letters, digits, '_', '-' or '.'",
                    f.name
                ));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(format!("feed \"{}\" is defined twice", f.name));
            }
        }
        Ok(())
    }
}

/// Parses `500ms`, `10s`, `5min`/`5m`, `8h`, `2d`, combinations like `1h30m`, or a bare
/// number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration \"{s}\": expected a number"));
        }
        let num: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration \"{s}\""))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let mult = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => {
                return Err(format!(
                    "invalid duration \"{s}\": unknown unit \"{unit}\" (use ms, s, min, h, d)"
                ))
            }
        };
        total += Duration::from_secs_f64(num * mult);
    }
    Ok(total)
}

/// Parses `1024`, `64kB`, `16MB`, `2GB`, `1TB` (PostgreSQL's units, powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let num: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("invalid size \"{s}\""))?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        u => {
            return Err(format!(
                "invalid size \"{s}\": unknown unit \"{u}\" (use B, kB, MB, GB, TB)"
            ))
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

/// Serde helper for size fields (`"64MB"` or a number of bytes).
pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(b) => Ok(b),
        Raw::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("5XB").is_err());
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./walrelay-data"));
        assert_eq!(c.upstream.status_interval, Duration::from_secs(10));
        let c = Config::parse(
            "data_dir = \"/x\"\n[upstream]\nconninfo = \"host=a\"\nstatus_interval = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.upstream.status_interval, Duration::from_secs(2));
        assert_eq!(c.upstream.conninfo.as_deref(), Some("host=a"));
        let c = Config::parse(
            "[feeds]\ntripwire = false\n[[feed]]\nname = \"lag8h\"\ndelay = \"8h\"\n[[feed]]\nname = \"b\"\napplication_name = \"sb2\"\nslot = \"s\"\ntripwire = true\n",
        )
        .unwrap();
        assert!(!c.feeds.tripwire);
        assert_eq!(c.feed[0].delay, Duration::from_secs(8 * 3600));
        assert_eq!(c.feed[0].app_name(), "lag8h");
        assert_eq!(c.feed[1].app_name(), "sb2");
        assert_eq!(c.feed[1].delay, Duration::ZERO);
        assert!(Config::parse("[[feed]]\nname = \"a/b\"\n").is_err());
        assert!(Config::parse("[[feed]]\nname = \"a\"\n[[feed]]\nname = \"a\"\n").is_err());
        let c = Config::parse(
            "[server]\nlisten = \"127.0.0.1:5433\"\nmax_slot_wal_keep_size = \"1GB\"\n[[server.hba]]\nuser = \"bob\"\nmethod = \"scram-sha-256\"\n[server.users]\nbob = \"md5abc\"\n",
        )
        .unwrap();
        assert_eq!(c.server.max_slot_wal_keep_size, Some(1 << 30));
        assert_eq!(c.server.hba[0].database, "replication");
        assert_eq!(c.server.users["bob"], "md5abc");
        assert_eq!(c.server.max_connections, 100);
        let e = Config::parse("[upstream]\nconnifo = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `connifo`"), "{e}");
        let c = Config::parse(
            "[archive]\nurl = \"s3://b/p\"\nack = \"archive\"\ncompression = \"zstd\"\n\
             keep_local_size = \"2GB\"\npartial_interval = \"5s\"\n[archive.s3]\n\
             endpoint = \"http://127.0.0.1:1\"\n[archive.options]\ngoogle_service_account = \"/k\"\n",
        )
        .unwrap();
        assert_eq!(c.archive.ack, AckMode::Archive);
        assert_eq!(c.archive.compression, Compression::Zstd);
        assert_eq!(c.archive.keep_local_size, 2 << 30);
        assert_eq!(c.archive.partial_interval, Duration::from_secs(5));
        assert_eq!(c.archive.s3.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(c.archive.options.len(), 1);
        let e = Config::parse("[archive]\nack = \"remote\"\n").unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    /// The documented example stays a valid configuration.
    #[test]
    fn example_parses() {
        let text = include_str!("../docs/walrelay.example.toml");
        let c = super::Config::parse(text).unwrap();
        assert_eq!(
            c.upstream
                .conninfo
                .as_deref()
                .map(|s| s.starts_with("host=db1,db2")),
            Some(true)
        );
        assert_eq!(c.server.hba.len(), 2);
        assert_eq!(c.feed.len(), 1);
        assert_eq!(c.feed[0].delay, std::time::Duration::from_secs(8 * 3600));
    }
}

//! The TOML configuration of `walrelay run`, with documented defaults.
//!
//! Owns: parsing and validating the file (unknown keys are rejected), human durations
//! (`500ms`, `10s`, `8h`, `1h30m`, `2d`) and sizes (`64MB`), and the defaults that let
//! walrelay run with no file at all. Command-line flags override the file
//! (`main.rs` applies them). Must not: hold business logic.
//!
//! Every key, with its default, is listed in `docs/configuration.md`.

// Parses outside input: no panics from indexing, string slicing or overflow (docs/security.md).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod fleet;
pub use fleet::{ClusterConfig, ClusterSection, DEFAULT_CLUSTER};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names the single cluster of the top-level form (its `cluster` label in metrics and
    /// status); default `"default"`. An error together with `[[cluster]]`.
    pub name: Option<String>,
    /// Where WAL segments, history files and the control file live.
    pub data_dir: PathBuf,
    pub upstream: UpstreamConfig,
    pub server: ServerConfig,
    pub archive: ArchiveConfig,
    pub metrics: MetricsConfig,
    /// The control endpoint (`[control]`): feed control and transaction lists.
    pub control: ControlConfig,
    /// Delayed and controlled feeds (`[[feed]]`), matched by the standby's
    /// `application_name` (and optionally slot and user).
    pub feed: Vec<FeedConfig>,
    /// Settings shared by all feeds (`[feeds]`).
    pub feeds: FeedsConfig,
    /// Thresholds of `walrelay check` (`[check]`).
    pub check: CheckConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
    /// Several clusters in one process (`[[cluster]]`, see `docs/fleet.md`). Empty: the
    /// top-level form is the one cluster. Use [`Config::clusters`], never this directly.
    pub cluster: Vec<ClusterSection>,
    /// Groups of clusters (`[[group]]`): cluster-wide restore points and feed control
    /// (`crate::fleet`).
    pub group: Vec<crate::fleet::group::GroupConfig>,
    /// Base backups into the archive (`[backup]`, see `docs/backups.md`).
    pub backup: BackupConfig,
    /// Scheduled restore drills in `run` (`[drill]`, see docs/restore.md).
    pub drill: DrillConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./walrelay-data"),
            upstream: UpstreamConfig::default(),
            server: ServerConfig::default(),
            archive: ArchiveConfig::default(),
            metrics: MetricsConfig::default(),
            control: ControlConfig::default(),
            feed: Vec::new(),
            check: CheckConfig::default(),
            log: LogConfig::default(),
            feeds: FeedsConfig::default(),
            name: None,
            cluster: Vec::new(),
            group: Vec::new(),
            backup: BackupConfig::default(),
            drill: DrillConfig::default(),
        }
    }
}

/// `[drill]`: scheduled restore drills in `walrelay run` (the options of `walrelay drill`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// Run a drill this often (the first one `every` after start); `0` (the default): never.
    #[serde(deserialize_with = "de_duration")]
    pub every: Duration,
    /// Backup to drill: `latest` (the newest complete one) or an ID.
    pub backup: String,
    /// SQL run on the restored server.
    pub check_query: String,
    /// Also connect it as a standby of walrelay and require `streaming`.
    pub standby: bool,
    /// PostgreSQL bin directory (default /usr/lib/postgresql/<major>/bin, else PATH).
    pub pg_bin: Option<PathBuf>,
    /// User PostgreSQL runs as (required when walrelay runs as root).
    pub run_as: Option<String>,
    /// Database role for the check query.
    pub db_user: String,
    /// Longest wait for the restored server to reach its target.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            every: Duration::ZERO,
            backup: "latest".into(),
            check_query: "SELECT count(*) FROM pg_class".into(),
            standby: false,
            pg_bin: None,
            run_as: None,
            db_user: "postgres".into(),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// `[backup]`: scheduled base backups in `run` and their retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Take a base backup this often in `walrelay run`; `0` (the default): never.
    #[serde(deserialize_with = "de_duration")]
    pub every: Duration,
    /// Retention: keep the newest this many complete backups; `0`: no count rule.
    pub keep: usize,
    /// Retention: keep what restores to any point this far back; `0`: no age rule.
    #[serde(deserialize_with = "de_duration")]
    pub keep_for: Duration,
    /// The backup label sent to the server.
    pub label: String,
    /// Ask for an immediate checkpoint (`CHECKPOINT 'fast'`) instead of a spread one.
    pub fast_checkpoint: bool,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            every: Duration::ZERO,
            keep: 0,
            keep_for: Duration::ZERO,
            label: "walrelay".into(),
            fast_checkpoint: true,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// libpq connection string or URI of the primary (several hosts allowed). `Debug`
    /// never shows its password.
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
    /// Drop the connection when the primary sent nothing for this long (like
    /// `wal_receiver_timeout`; a reply is requested at half of it); `0s`: never.
    #[serde(deserialize_with = "de_duration")]
    pub receive_timeout: Duration,
    /// First delay before reconnecting; doubles up to `reconnect_max`.
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_min: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("conninfo", &self.conninfo.as_deref().map(redact::conninfo))
            .field("slot", &self.slot)
            .field("create_slot", &self.create_slot)
            .field("synchronous", &self.synchronous)
            .field("status_interval", &self.status_interval)
            .field("receive_timeout", &self.receive_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish_non_exhaustive()
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            conninfo: None,
            slot: Some("walrelay".into()),
            create_slot: true,
            synchronous: false,
            status_interval: Duration::from_secs(10),
            receive_timeout: crate::upstream::receiver::DEFAULT_RECEIVE_TIMEOUT,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the walsender listens: comma-separated `host:port` addresses and/or socket
    /// directories (`/run/walrelay` or `/run/walrelay:5433` → `<dir>/.s.PGSQL.<port>`), e.g.
    /// `127.0.0.1:5433`. No listener when unset.
    pub listen: Option<String>,
    /// Most client connections at once (then `sorry, too many clients already`).
    pub max_connections: usize,
    /// Most connections that have not finished authentication yet.
    pub max_startup_connections: usize,
    /// Most not-yet-authenticated connections from one client address.
    pub max_startup_connections_per_address: usize,
    /// File descriptors kept free for the store, the archiver and the HTTP endpoints: no
    /// new walsender connection is accepted closer than this to `RLIMIT_NOFILE`.
    pub reserved_file_descriptors: usize,
    /// Mode of the Unix-domain sockets (octal, like `unix_socket_permissions`).
    pub unix_socket_permissions: String,
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
    /// Most bytes of segment files the walsender sessions share in memory (docs/walsender.md,
    /// "Shared read cache"): 2 MB per session reading, at least 8 MB, at most this.
    #[serde(deserialize_with = "de_size")]
    pub read_cache_size: u64,
    /// Permanent proxy slots (docs/ha.md): created at start if absent, never dropped by a
    /// client, never invalidated; an inactive one holds only archived WAL.
    pub slots: Vec<String>,
    /// Ordered authentication rules, first match wins (like `pg_hba.conf`). Default: trust
    /// from loopback addresses only.
    pub hba: Vec<HbaRuleConfig>,
    /// User name → SCRAM verifier (`walrelay passwd USER`) or `md5…` hash.
    pub users: std::collections::BTreeMap<String, String>,
    /// Shared listener of several clusters: user name → cluster, for standbys that name no
    /// cluster in `options` (see `docs/fleet.md`).
    pub route_users: std::collections::BTreeMap<String, String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: None,
            max_connections: 100,
            max_startup_connections: 32,
            max_startup_connections_per_address: 16,
            reserved_file_descriptors: 128,
            unix_socket_permissions: "0777".into(),
            startup_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            require_tls: false,
            wal_sender_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            max_slots: 64,
            max_slot_wal_keep_size: None,
            read_cache_size: crate::store::readcache::DEFAULT_MAX as u64,
            slots: Vec::new(),
            hba: Vec::new(),
            users: Default::default(),
            route_users: Default::default(),
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
#[derive(Clone, Deserialize)]
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
    /// With `encryption_key_file`: read objects without the encryption header as they are
    /// (for migrating a plaintext archive); otherwise they are refused.
    pub allow_plaintext_objects: bool,
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
            Some(p) => Some(
                crate::archive::crypt::Key::load(p)?.allow_plaintext(self.allow_plaintext_objects),
            ),
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
            allow_plaintext_objects: false,
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

#[derive(Clone, Default, Deserialize)]
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

#[derive(Clone, Default, Deserialize)]
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
    /// Address of the read-only HTTP listener (`/metrics`, `/health`, `/status`), e.g.
    /// `0.0.0.0:9187`. No authentication: it serves nothing that changes state.
    pub listen: Option<String>,
    /// Host names accepted in the Host header besides IP literals and `localhost` (DNS
    /// rebinding protection), e.g. the name Prometheus scrapes.
    pub allowed_hosts: Vec<String>,
}

/// `[check]`: thresholds of `walrelay check` (warning / critical).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// Bytes walrelay's flush position may trail the primary's WAL end.
    #[serde(deserialize_with = "de_size")]
    pub warn_lag_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub crit_lag_bytes: u64,
    /// Seconds walrelay may have been behind the primary (0 while it has all WAL).
    #[serde(deserialize_with = "de_duration")]
    pub warn_lag_seconds: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub crit_lag_seconds: Duration,
    /// Bytes of stored WAL not yet archived.
    #[serde(deserialize_with = "de_size")]
    pub warn_archive_lag_bytes: u64,
    #[serde(deserialize_with = "de_size")]
    pub crit_archive_lag_bytes: u64,
    /// Age of the newest archived segment, checked only while completed segments wait
    /// for the archive (an idle primary completes none).
    #[serde(deserialize_with = "de_duration")]
    pub warn_archive_age: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub crit_archive_age: Duration,
    /// Free space on the data directory's file system, percent.
    pub warn_free_percent: f64,
    pub crit_free_percent: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            warn_lag_bytes: 64 << 20,
            crit_lag_bytes: 1 << 30,
            warn_lag_seconds: Duration::from_secs(60),
            crit_lag_seconds: Duration::from_secs(600),
            warn_archive_lag_bytes: 1 << 30,
            crit_archive_lag_bytes: 16 << 30,
            warn_archive_age: Duration::from_secs(900),
            crit_archive_age: Duration::from_secs(3600),
            warn_free_percent: 10.0,
            crit_free_percent: 5.0,
        }
    }
}

/// `[log]`: log output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line). `--log-format` overrides.
    pub format: Option<String>,
    /// Level filter in `RUST_LOG` syntax, e.g. `info` or `info,walrelay::archive=debug`;
    /// `$WALRELAY_LOG` overrides it.
    pub level: Option<String>,
}

/// `[control]`: where `walrelay feed` / `walrelay xacts` reach a running walrelay.
/// See `docs/security.md`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket (mode 0600). Default: `<data_dir>/walrelay.control.sock`.
    pub socket: Option<PathBuf>,
    /// Also serve control over TCP at this address (off by default); needs `token_file`,
    /// and `tls_cert`/`tls_key` unless the address is loopback.
    pub listen: Option<String>,
    /// File holding the bearer token (first line, at least 16 characters, mode 0600).
    pub token_file: Option<PathBuf>,
    /// PEM certificate (chain) and key for TLS on `listen`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Host names accepted in the Host header on `listen` besides IP literals and
    /// `localhost`.
    pub allowed_hosts: Vec<String>,
}

impl ControlConfig {
    /// The control socket's path for data directory `data_dir`.
    pub fn socket_path(&self, data_dir: &Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| data_dir.join("walrelay.control.sock"))
    }

    fn check(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("control.tls_cert and control.tls_key must be set together".into());
        }
        let Some(listen) = &self.listen else {
            return Ok(());
        };
        let addr: std::net::SocketAddr = listen
            .parse()
            .map_err(|e| format!("invalid control.listen \"{listen}\": {e}"))?;
        if self.token_file.is_none() {
            return Err("control.listen needs control.token_file (a bearer token)".into());
        }
        if !addr.ip().is_loopback() && self.tls_cert.is_none() {
            return Err(format!(
                "control.listen = \"{listen}\" is not a loopback address: it needs control.tls_cert and control.tls_key (the token would travel in clear text)"
            ));
        }
        Ok(())
    }
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
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if !c.cluster.is_empty() {
            crate::config::fleet::check_multi(&c, &table)?;
        } else if let Some(n) = &c.name {
            crate::config::fleet::check_cluster_name(n)?;
        }
        c.check_feeds()?;
        c.control.check()?;
        c.archive.load_key().map_err(|e| e.to_string())?;
        for s in &mut c.cluster {
            if let Some(a) = &mut s.archive {
                a.load_key()
                    .map_err(|e| format!("cluster \"{}\": {e}", s.name))?;
            }
        }
        Ok(c)
    }

    /// Feed names are unique (in the whole process) and URL-safe.
    fn check_feeds(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let all = self
            .feed
            .iter()
            .chain(self.cluster.iter().flat_map(|c| c.feed.iter()));
        for f in all {
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

/// Parses `500ms`, `10s`, `5min`/`5m`, `8h`, `2d`, combinations like `1h30m` or `1h 30m`
/// (humantime's syntax), or a bare number of seconds. Overflow is an error, never a panic.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration \"{s}\": too large"));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration \"{s}\": {e} (use e.g. 500ms, 10s, 5min, 8h, 2d, 1h30m)")
    })
}

/// Parses `1024`, `64kB`, `16MB`, `2GB`, `1TB` (PostgreSQL's units, powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    // `digits` is a char boundary (found by `find`).
    let (num, unit) = (s.get(..digits).unwrap_or(""), s.get(digits..).unwrap_or(""));
    let num: u64 = num.parse().map_err(|_| format!("invalid size \"{s}\""))?;
    let mult: u64 = match unit.trim() {
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

/// `Debug` of the configuration never shows secrets: passwords in `upstream.conninfo`, the
/// verifiers in `server.users`, object-store keys and `archive.options` values.
mod redact {
    use super::*;
    use std::fmt::{Debug, Formatter, Result};

    const HIDDEN: &str = "<redacted>";

    /// `conninfo` with any password replaced (keyword form and URI form).
    pub fn conninfo(s: &str) -> String {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let Some(scheme_end) = s.find("://").and_then(|p| p.checked_add(3)) else {
                return HIDDEN.into();
            };
            let rest = s.get(scheme_end..).unwrap_or("");
            let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = rest.get(..auth_end).unwrap_or("");
            let mut out = s.get(..scheme_end).unwrap_or("").to_string();
            match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    if userinfo.contains(':') {
                        out.push_str(&format!("{user}:{HIDDEN}@{hosts}"));
                    } else {
                        out.push_str(authority);
                    }
                }
                None => out.push_str(authority),
            }
            let tail = rest.get(auth_end..).unwrap_or("");
            match tail.split_once('?') {
                Some((path, query)) => {
                    out.push_str(path);
                    out.push('?');
                    let q: Vec<String> = query
                        .split('&')
                        .map(|kv| match kv.split_once('=') {
                            Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                                format!("{k}={HIDDEN}")
                            }
                            _ => kv.to_string(),
                        })
                        .collect();
                    out.push_str(&q.join("&"));
                }
                None => out.push_str(tail),
            }
            return out;
        }
        // keyword=value pairs; values may be single-quoted with backslash escapes
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                out.push(c);
                chars.next();
                continue;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            out.push_str(&key);
            while let Some(&c) = chars.peek() {
                if !c.is_whitespace() {
                    break;
                }
                out.push(c);
                chars.next();
            }
            if chars.peek() != Some(&'=') {
                continue;
            }
            out.push('=');
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                value.push('\'');
                chars.next();
                while let Some(c) = chars.next() {
                    value.push(c);
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    } else if c == '\'' {
                        break;
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            if key.eq_ignore_ascii_case("password") {
                out.push_str(HIDDEN);
            } else {
                out.push_str(&value);
            }
        }
        out
    }

    fn opt_hidden(v: &Option<String>) -> Option<&'static str> {
        v.as_ref().map(|_| HIDDEN)
    }

    impl Debug for ServerConfig {
        fn fmt(&self, f: &mut Formatter<'_>) -> Result {
            let users: std::collections::BTreeMap<&str, &str> =
                self.users.keys().map(|k| (k.as_str(), HIDDEN)).collect();
            f.debug_struct("ServerConfig")
                .field("listen", &self.listen)
                .field("max_connections", &self.max_connections)
                .field("startup_timeout", &self.startup_timeout)
                .field("tls_cert", &self.tls_cert)
                .field("tls_key", &self.tls_key)
                .field("tls_ca", &self.tls_ca)
                .field("require_tls", &self.require_tls)
                .field("wal_sender_timeout", &self.wal_sender_timeout)
                .field("keepalive_interval", &self.keepalive_interval)
                .field("shutdown_timeout", &self.shutdown_timeout)
                .field("max_slots", &self.max_slots)
                .field("max_slot_wal_keep_size", &self.max_slot_wal_keep_size)
                .field("read_cache_size", &self.read_cache_size)
                .field("slots", &self.slots)
                .field("hba", &self.hba)
                .field("users", &users)
                .field("route_users", &self.route_users)
                .finish()
        }
    }

    impl Debug for ArchiveConfig {
        fn fmt(&self, f: &mut Formatter<'_>) -> Result {
            let options: std::collections::BTreeMap<&str, &str> =
                self.options.keys().map(|k| (k.as_str(), HIDDEN)).collect();
            f.debug_struct("ArchiveConfig")
                .field("url", &self.url)
                .field("ack", &self.ack)
                .field("concurrency", &self.concurrency)
                .field("compression", &self.compression)
                .field("compression_level", &self.compression_level)
                .field("multipart_threshold", &self.multipart_threshold)
                .field("part_size", &self.part_size)
                .field("retry_min", &self.retry_min)
                .field("retry_max", &self.retry_max)
                .field("scan_interval", &self.scan_interval)
                .field("partial_interval", &self.partial_interval)
                .field("system_id", &self.system_id)
                .field("prefetch", &self.prefetch)
                .field("keep_local_size", &self.keep_local_size)
                .field("keep_local_age", &self.keep_local_age)
                .field("local_disk_cap", &self.local_disk_cap)
                .field("s3", &self.s3)
                .field("azure", &self.azure)
                .field("options", &options)
                .finish()
        }
    }

    impl Debug for S3Options {
        fn fmt(&self, f: &mut Formatter<'_>) -> Result {
            f.debug_struct("S3Options")
                .field("endpoint", &self.endpoint)
                .field("region", &self.region)
                .field("access_key_id", &self.access_key_id)
                .field("secret_access_key", &opt_hidden(&self.secret_access_key))
                .field("session_token", &opt_hidden(&self.session_token))
                .field("allow_http", &self.allow_http)
                .field("path_style", &self.path_style)
                .finish()
        }
    }

    impl Debug for AzureOptions {
        fn fmt(&self, f: &mut Formatter<'_>) -> Result {
            f.debug_struct("AzureOptions")
                .field("account", &self.account)
                .field("access_key", &opt_hidden(&self.access_key))
                .field("endpoint", &self.endpoint)
                .field("allow_http", &self.allow_http)
                .field("use_emulator", &self.use_emulator)
                .finish()
        }
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
        assert_eq!(parse_duration("5min").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        // regression: overflow used to panic in Duration::from_secs_f64
        for big in [
            "99999999999999999999d",
            "99999999999999999999",
            "18446744073709551616s",
        ] {
            assert!(parse_duration(big).is_err(), "{big}");
        }
        assert!(parse_duration("é").is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config::parse(
            "[upstream]\nconninfo = \"host=a password='s3 cr\\\\'et' user=u\"\n\
             [server.users]\nbob = \"SCRAM-SHA-256$4096:c2FsdA==$secretstuff\"\n\
             [archive.s3]\nsecret_access_key = \"AKsecretKEY\"\nsession_token = \"tok3n\"\n\
             [archive.azure]\naccess_key = \"azkey\"\n[archive.options]\ngoogle_service_account_key = \"gkey\"\n",
        )
        .unwrap();
        let d = format!("{c:?}");
        for secret in [
            "s3 cr",
            "et'",
            "secretstuff",
            "AKsecretKEY",
            "tok3n",
            "azkey",
            "gkey",
        ] {
            assert!(!d.contains(secret), "{secret} in {d}");
        }
        assert!(d.contains("host=a password=<redacted> user=u"), "{d}");
        assert!(d.contains("bob"), "{d}");
        assert_eq!(
            redact::conninfo("postgresql://u:pw@h1,h2/db?sslmode=require&password=x"),
            "postgresql://u:<redacted>@h1,h2/db?sslmode=require&password=<redacted>"
        );
        assert_eq!(redact::conninfo("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact::conninfo("password = 'a b' host=x"),
            "password =<redacted> host=x"
        );
    }

    #[test]
    fn control_section() {
        let c = Config::parse("data_dir = \"/d\"\n").unwrap();
        assert_eq!(
            c.control.socket_path(&c.data_dir),
            PathBuf::from("/d/walrelay.control.sock")
        );
        let c = Config::parse(
            "[control]\nlisten = \"127.0.0.1:9188\"\ntoken_file = \"/t\"\nallowed_hosts = [\"relay\"]\n",
        )
        .unwrap();
        assert_eq!(c.control.listen.as_deref(), Some("127.0.0.1:9188"));
        let e = Config::parse("[control]\nlisten = \"127.0.0.1:9188\"\n").unwrap_err();
        assert!(e.contains("needs control.token_file"), "{e}");
        let e = Config::parse("[control]\nlisten = \"0.0.0.0:9188\"\ntoken_file = \"/t\"\n")
            .unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(Config::parse(
            "[control]\nlisten = \"0.0.0.0:9188\"\ntoken_file = \"/t\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n"
        )
        .is_ok());
        assert!(Config::parse("[control]\ntls_cert = \"/c\"\n").is_err());
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
        assert_eq!(c.server.read_cache_size, 64 << 20);
        let c = Config::parse("[server]\nread_cache_size = \"16MB\"\n").unwrap();
        assert_eq!(c.server.read_cache_size, 16 << 20);
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

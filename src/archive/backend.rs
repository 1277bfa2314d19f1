//! Opening an object store from an archive URL.
//!
//! Settings are merged, never replaced: the builder starts `from_env()` (`AWS_*`, `AZURE_*`,
//! `GOOGLE_*`), walrelay's HTTP client defaults (timeouts) are added only for the keys the
//! environment did not set, then `[archive]` options override single keys. (object_store's
//! `with_client_options` would replace every client option `from_env` read, such as
//! `AWS_ALLOW_HTTP`, so it is never called.)
//!
//! Owns: URL parsing (`file:///path`, `memory:///`, `s3://bucket/prefix`,
//! `az://container/prefix`, `gs://bucket/prefix`), the per-backend options of `[archive]`
//! and the HTTP client settings (timeouts, the object_store client's own short retries; the
//! long retries with backoff live in [`super::upload`]). Must not: read or write objects.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::ArchiveError;
use crate::config::ArchiveConfig;

/// An opened object store and the key prefix walrelay works under.
#[derive(Clone, Debug)]
pub struct Backend {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjPath,
    /// The URL it was opened from (for messages).
    pub url: String,
    /// `file`, `memory`, `s3`, `az` or `gs`.
    pub scheme: &'static str,
    /// Set when no credentials were configured and object_store falls back to a cloud
    /// metadata service: said with a failed start-up probe.
    pub credentials_note: Option<String>,
    /// The `file://` archive itself, for uploads streamed from a local file
    /// (`archive::local_copy`): `None` for other schemes.
    pub local: Option<super::durable_fs::DurableFs>,
}

/// walrelay's HTTP client defaults, applied to the keys the environment left unset.
const CLIENT_DEFAULTS: [(ClientConfigKey, &str); 2] = [
    (ClientConfigKey::ConnectTimeout, "5s"),
    (ClientConfigKey::Timeout, "120s"),
];

/// Adds [`CLIENT_DEFAULTS`] to a builder through its `get`/`set` of client keys, keeping
/// what is already set (from the environment).
fn merge_client_defaults<B>(
    mut b: B,
    get: impl Fn(&B, ClientConfigKey) -> Option<String>,
    set: impl Fn(B, ClientConfigKey, &str) -> B,
) -> B {
    for (key, value) in CLIENT_DEFAULTS {
        if get(&b, key).is_none() {
            b = set(b, key, value);
        }
    }
    b
}

/// The environment variables through which object_store finds S3 credentials other than
/// the instance metadata service.
const AWS_CREDENTIAL_ENV: [&str; 4] = [
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

fn retry_config() -> RetryConfig {
    // A couple of quick retries inside the client; the uploader retries for as long as it
    // takes, with its own backoff, so an outage never fails an upload for good.
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
    }
}

fn split_bucket(rest: &str, url: &str) -> Result<(String, ObjPath), ArchiveError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ArchiveError::Config(format!(
            "archive URL \"{url}\" names no bucket or container"
        )));
    }
    let prefix = ObjPath::parse(prefix.trim_matches('/')).map_err(|e| {
        ArchiveError::Config(format!("invalid prefix in archive URL \"{url}\": {e}"))
    })?;
    Ok((bucket.to_string(), prefix))
}

/// Azurite's (and the legacy Azure Storage Emulator's) well-known account and key, published
/// by Microsoft for local development.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The account URL of an emulator: `endpoint` as given when it already has a path
/// (`http://127.0.0.1:10000/devstoreaccount1`), else with `/<account>` appended
/// (`http://127.0.0.1:10000`).
fn emulator_endpoint(endpoint: &str, account: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, r)| r);
    if after_scheme.contains('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/{account}")
    }
}

fn bad_option(key: &str, family: &str) -> ArchiveError {
    ArchiveError::Config(format!(
        "unknown archive option \"{key}\" for a {family} archive (see docs/archive.md)"
    ))
}

/// Whether S3 requests go with `x-amz-content-sha256: UNSIGNED-PAYLOAD` unless configured
/// (`archive.options.aws_unsigned_payload`, `AWS_UNSIGNED_PAYLOAD`): yes over TLS (no
/// endpoint: AWS over https; an `https://` endpoint). A signed payload makes object_store
/// hash every uploaded byte a second time (the archiver already hashed it once for the
/// manifest's SHA-256) and the store hash it again to check; over TLS the connection already
/// protects the body, and the manifest's SHA-256 is what `walrelay verify` checks. Over plain
/// HTTP the signature is the only protection of the body in transit, so it stays signed.
pub(crate) fn unsigned_payload_by_default(endpoint: Option<&str>) -> bool {
    match endpoint {
        None => true,
        Some(e) => e
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://")),
    }
}

/// Opens the object store named by `url` with the options of `cfg`. No network traffic
/// happens here: credentials and reachability show up on the first request.
pub fn open(url: &str, cfg: &ArchiveConfig) -> Result<Backend, ArchiveError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        ArchiveError::Config(format!(
            "archive URL \"{url}\" has no scheme (file://, s3://, az://, gs://)"
        ))
    })?;
    match scheme {
        "file" => {
            let path = Path::new(rest);
            if !path.is_absolute() {
                return Err(ArchiveError::Config(format!(
                    "archive URL \"{url}\": a file:// URL needs an absolute path (file:///dir)"
                )));
            }
            // object_store's LocalFileSystem never fsyncs: DurableFs does before a write
            // succeeds (an archived object must survive a power loss).
            let fs = super::durable_fs::DurableFs::new(path)
                .map_err(ArchiveError::io("open archive directory", path))?;
            Ok(Backend {
                store: Arc::new(fs.clone()),
                local: Some(fs),
                prefix: ObjPath::default(),
                url: url.to_string(),
                scheme: "file",
                credentials_note: None,
            })
        }
        "memory" => Ok(Backend {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: ObjPath::parse(rest.trim_matches('/'))
                .map_err(|e| ArchiveError::Config(e.to_string()))?,
            url: url.to_string(),
            scheme: "memory",
            credentials_note: None,
            local: None,
        }),
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
            let (bucket, prefix) = split_bucket(rest, url)?;
            let b = merge_client_defaults(
                AmazonS3Builder::from_env(),
                |b, k| b.get_config_value(&AmazonS3ConfigKey::Client(k)),
                |b, k, v| b.with_config(AmazonS3ConfigKey::Client(k), v),
            );
            let mut b = b.with_bucket_name(bucket);
            for (k, v) in &cfg.options {
                let key = AmazonS3ConfigKey::from_str(k).map_err(|_| bad_option(k, "S3"))?;
                b = b.with_config(key, v);
            }
            let o = &cfg.s3;
            if let Some(e) = &o.endpoint {
                b = b.with_endpoint(e);
                if e.starts_with("http://") && o.allow_http.is_none() {
                    b = b.with_allow_http(true);
                }
            }
            if let Some(v) = &o.region {
                b = b.with_region(v);
            }
            if let Some(v) = &o.access_key_id {
                b = b.with_access_key_id(v);
            }
            if let Some(v) = &o.secret_access_key {
                b = b.with_secret_access_key(v);
            }
            if let Some(v) = &o.session_token {
                b = b.with_token(v);
            }
            if let Some(v) = o.allow_http {
                b = b.with_allow_http(v);
            }
            let path_style = o.path_style.unwrap_or(o.endpoint.is_some());
            if path_style {
                b = b.with_virtual_hosted_style_request(false);
            }
            let has = |k: AmazonS3ConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
            let credentials_note = (!has(AmazonS3ConfigKey::AccessKeyId)
                && b.get_config_value(&AmazonS3ConfigKey::SkipSignature).as_deref() != Some("true")
                && !AWS_CREDENTIAL_ENV
                    .iter()
                    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty())))
            .then(|| {
                "no S3 credentials are configured (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 or archive.s3.access_key_id and secret_access_key), so they were asked from \
                 the EC2 instance metadata service (169.254.169.254)"
                    .to_string()
            });
            let explicit = cfg
                .options
                .keys()
                .any(|k| AmazonS3ConfigKey::from_str(k).ok() == Some(AmazonS3ConfigKey::UnsignedPayload))
                || std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some();
            let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
            if !explicit && unsigned_payload_by_default(endpoint.as_deref()) {
                b = b.with_unsigned_payload(true);
            }
            let s3 = b
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_retry(retry_config())
                .build()
                .map_err(|e| ArchiveError::Config(format!("S3 archive \"{url}\": {e}")))?;
            Ok(Backend {
                store: Arc::new(s3),
                prefix,
                url: url.to_string(),
                scheme: "s3",
                credentials_note,
                local: None,
            })
        }
        "az" | "azure" => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let (container, prefix) = split_bucket(rest, url)?;
            let b = merge_client_defaults(
                MicrosoftAzureBuilder::from_env(),
                |b, k| b.get_config_value(&AzureConfigKey::Client(k)),
                |b, k, v| b.with_config(AzureConfigKey::Client(k), v),
            );
            let mut b = b.with_container_name(container);
            for (k, v) in &cfg.options {
                let key = AzureConfigKey::from_str(k).map_err(|_| bad_option(k, "Azure"))?;
                b = b.with_config(key, v);
            }
            let o = &cfg.azure;
            let emulator = o.use_emulator.unwrap_or(false);
            if let (true, Some(endpoint)) = (emulator, &o.endpoint) {
                // object_store's emulator mode ignores `with_endpoint` (it only reads
                // AZURITE_BLOB_STORAGE_URL, default 127.0.0.1:10000). An emulator at a
                // configured address is addressed as an ordinary account instead: azurite
                // serves an account under its name as the first path segment, and signs the
                // same way.
                let account = o.account.as_deref().unwrap_or(EMULATOR_ACCOUNT);
                b = b
                    .with_use_emulator(false)
                    .with_account(account)
                    .with_access_key(o.access_key.as_deref().unwrap_or(EMULATOR_KEY))
                    .with_endpoint(emulator_endpoint(endpoint, account))
                    .with_allow_http(o.allow_http.unwrap_or(endpoint.starts_with("http://")));
            } else {
                if let Some(v) = &o.account {
                    b = b.with_account(v);
                }
                if let Some(v) = &o.access_key {
                    b = b.with_access_key(v);
                }
                if let Some(v) = &o.endpoint {
                    b = b.with_endpoint(v.clone());
                    if v.starts_with("http://") && o.allow_http.is_none() {
                        b = b.with_allow_http(true);
                    }
                }
                if let Some(v) = o.allow_http {
                    b = b.with_allow_http(v);
                }
                if let Some(v) = o.use_emulator {
                    b = b.with_use_emulator(v);
                }
            }
            let az = b
                .with_retry(retry_config())
                .build()
                .map_err(|e| ArchiveError::Config(format!("Azure archive \"{url}\": {e}")))?;
            Ok(Backend {
                store: Arc::new(az),
                prefix,
                url: url.to_string(),
                scheme: "az",
                credentials_note: None,
                local: None,
            })
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let (bucket, prefix) = split_bucket(rest, url)?;
            let b = merge_client_defaults(
                GoogleCloudStorageBuilder::from_env(),
                |b, k| b.get_config_value(&GoogleConfigKey::Client(k)),
                |b, k, v| b.with_config(GoogleConfigKey::Client(k), v),
            );
            let mut b = b.with_bucket_name(bucket);
            for (k, v) in &cfg.options {
                let key = GoogleConfigKey::from_str(k).map_err(|_| bad_option(k, "GCS"))?;
                b = b.with_config(key, v);
            }
            let gcs = b
                .with_retry(retry_config())
                .build()
                .map_err(|e| ArchiveError::Config(format!("GCS archive \"{url}\": {e}")))?;
            Ok(Backend {
                store: Arc::new(gcs),
                prefix,
                url: url.to_string(),
                scheme: "gs",
                credentials_note: None,
                local: None,
            })
        }
        other => Err(ArchiveError::Config(format!(
            "archive URL \"{url}\": unsupported scheme \"{other}\" (use file://, s3://, az://, gs://)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cfg = ArchiveConfig::default();
        let d = tempfile::tempdir().unwrap();
        let b = open(&format!("file://{}/a", d.path().display()), &cfg).unwrap();
        assert_eq!(b.scheme, "file");
        assert!(d.path().join("a").is_dir());
        assert!(open("file://relative/x", &cfg).is_err());
        assert!(open("/no/scheme", &cfg).is_err());
        assert!(open("ftp://x/y", &cfg).is_err());
        assert!(open("s3:///prefix", &cfg).is_err());

        let mut s3 = cfg.clone();
        s3.s3.endpoint = Some("http://127.0.0.1:9".into());
        s3.s3.region = Some("us-east-1".into());
        s3.s3.access_key_id = Some("k".into());
        s3.s3.secret_access_key = Some("s".into());
        let b = open("s3://bucket/some/prefix/", &s3).unwrap();
        assert_eq!(b.prefix.as_ref(), "some/prefix");
        assert_eq!(b.scheme, "s3");

        let mut bad = cfg.clone();
        bad.options.insert("no_such_option".into(), "1".into());
        let e = open("s3://bucket", &bad).unwrap_err();
        assert!(e.to_string().contains("no_such_option"), "{e}");
    }

    #[test]
    fn payload_is_unsigned_by_default_only_over_tls() {
        assert!(unsigned_payload_by_default(None));
        assert!(unsigned_payload_by_default(Some("https://s3.example.com")));
        assert!(unsigned_payload_by_default(Some("HTTPS://s3.example.com")));
        assert!(!unsigned_payload_by_default(Some("http://127.0.0.1:9000")));
        assert!(!unsigned_payload_by_default(Some("http")));
        assert!(!unsigned_payload_by_default(Some("")));
    }

    /// The `x-amz-content-sha256` header object_store sends for a PUT to `s3` (a one-shot
    /// listener that records the request head and answers 500: only the header is looked at,
    /// which a real S3 server does not report back).
    async fn content_sha256_header(mut s3: ArchiveConfig) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        s3.s3.endpoint = Some(format!("http://{}", l.local_addr().unwrap()));
        s3.s3.region = Some("us-east-1".into());
        s3.s3.access_key_id = Some("k".into());
        s3.s3.secret_access_key = Some("s".into());
        let b = open("s3://bucket/p", &s3).unwrap();
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the request head");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = c
                .write_all(b"HTTP/1.1 500 x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            String::from_utf8_lossy(&head).to_ascii_lowercase()
        });
        let _ = b
            .store
            .put(
                &ObjPath::from("p/x"),
                bytes::Bytes::from_static(b"wal").into(),
            )
            .await;
        let head = server.await.unwrap();
        head.lines()
            .find_map(|l| l.strip_prefix("x-amz-content-sha256:"))
            .unwrap_or_else(|| panic!("no x-amz-content-sha256 in {head}"))
            .trim()
            .to_string()
    }

    #[tokio::test]
    async fn plain_http_payload_stays_signed_unless_configured() {
        let cfg = ArchiveConfig::default();
        // sha256("wal")
        assert_eq!(
            content_sha256_header(cfg.clone()).await,
            crate::archive::layout::sha256_hex(b"wal")
        );
        let mut unsigned = cfg;
        unsigned
            .options
            .insert("aws_unsigned_payload".into(), "true".into());
        assert_eq!(content_sha256_header(unsigned).await, "unsigned-payload");
    }

    /// GCS has no emulator that works with object_store here: check the configuration path
    /// up to the network layer (builder accepts the options, prefix split).
    #[test]
    fn gcs_configuration() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("sa.json");
        // a syntactically valid service-account file with a throwaway RSA key is not needed
        // to build the client: the key is only parsed when signing the first request
        std::fs::write(&key, "{}").unwrap();
        let mut cfg = ArchiveConfig::default();
        cfg.options
            .insert("google_service_account".into(), key.display().to_string());
        let r = open("gs://bucket/wal/prefix", &cfg);
        match r {
            Ok(b) => {
                assert_eq!(b.scheme, "gs");
                assert_eq!(b.prefix.as_ref(), "wal/prefix");
            }
            // an unparsable key file is reported as a configuration error, not a panic
            Err(e) => assert!(matches!(e, ArchiveError::Config(_)), "{e}"),
        }
        let mut bad = ArchiveConfig::default();
        bad.options.insert("aws_endpoint".into(), "x".into());
        assert!(open("gs://bucket", &bad).is_err());
    }

    #[test]
    fn azure_configuration() {
        let mut cfg = ArchiveConfig::default();
        cfg.azure.use_emulator = Some(true);
        let b = open("az://container/p", &cfg).unwrap();
        assert_eq!(b.prefix.as_ref(), "p");

        assert_eq!(
            emulator_endpoint("http://127.0.0.1:10000", "acct"),
            "http://127.0.0.1:10000/acct"
        );
        assert_eq!(
            emulator_endpoint("http://127.0.0.1:10000/", "acct"),
            "http://127.0.0.1:10000/acct"
        );
        assert_eq!(
            emulator_endpoint("http://h:1/devstoreaccount1/", "acct"),
            "http://h:1/devstoreaccount1"
        );
    }

    /// `use_emulator` with an `endpoint`: requests go to that address, under the emulator
    /// account's path, signed with the well-known key (object_store's own emulator mode
    /// would ignore the endpoint).
    #[test]
    fn azure_emulator_endpoint_is_used() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        let mut cfg = ArchiveConfig::default();
        cfg.azure.use_emulator = Some(true);
        cfg.azure.endpoint = Some(format!("http://127.0.0.1:{port}"));
        let b = open("az://walarchive/pre", &cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(b.store.head(&b.prefix.child("x")));
        assert!(
            matches!(r, Err(object_store::Error::NotFound { .. })),
            "{r:?}"
        );
        let req = server.join().unwrap();
        let first = req.lines().next().unwrap_or("");
        assert_eq!(
            first, "HEAD /devstoreaccount1/walarchive/pre/x HTTP/1.1",
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("authorization: sharedkey devstoreaccount1:"),
            "{req}"
        );
    }
}

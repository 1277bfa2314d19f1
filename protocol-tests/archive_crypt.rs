//! Encrypted archive (`archive.encryption_key_file`) end to end: `walrelay run` uploads
//! PostgreSQL 15 WAL to SeaweedFS encrypted (the stored objects are not the WAL), a standby
//! restored with `restore_command = 'walrelay wal-fetch …'` alone reaches the primary's rows,
//! `verify` passes with the key, and `wal-fetch` with a wrong or no key is refused with the
//! reason (status 255, so PostgreSQL would stop rather than take the file for absent).
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::pg::{conf_quote, give_to_server, Pg};
use crate::harness::s3::S3Server;
use crate::harness::walrelay::{bin, run_to_end, Walrelay};
use crate::harness::{wait_for, TestDir};

const SEG: u64 = 16 << 20;

fn write_key(path: &std::path::Path, byte: u8) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, [byte; 32]).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to_server(path);
}

fn config(dir: &TestDir, s3: &S3Server, name: &str, key: Option<&std::path::Path>) -> String {
    let conf = dir.join(name);
    let key_line = key
        .map(|k| format!("encryption_key_file = \"{}\"\n", k.display()))
        .unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[upstream]\nstatus_interval = \"1s\"\n\
             [archive]\nurl = \"s3://{}/crypt\"\ncompression = \"zstd\"\n{key_line}\
             scan_interval = \"500ms\"\npartial_interval = \"0\"\n\
             [archive.s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            dir.join("data").display(),
            s3.bucket(),
            s3.endpoint(),
            s3.region(),
            s3.access_key(),
            s3.secret_key()
        ),
    )
    .unwrap();
    give_to_server(&conf);
    conf.display().to_string()
}

/// The stored bytes of segment `name` as they are in the bucket (object_store directly).
fn s3_object(s3: &S3Server, sysid: u64, name: &str) -> Vec<u8> {
    use object_store::aws::AmazonS3Builder;
    use object_store::ObjectStore;
    let store = AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region(s3.region())
        .with_access_key_id(s3.access_key())
        .with_secret_access_key(s3.secret_key())
        .with_bucket_name(s3.bucket())
        .build()
        .unwrap();
    let path = object_store::path::Path::from(format!("crypt/{sysid}/wal/{name}.zst"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    })
}

#[test]
fn encrypted_archive_restores_a_standby_and_refuses_a_wrong_key() {
    let primary = Pg::primary("15", &[]);
    primary.psql("create table t(x int, pad text)");
    let mut standby = Pg::standby_prepared(&primary, "15", "", &[]);
    let s3 = S3Server::start();
    let dir = TestDir::new("archive-crypt");
    let key = dir.join("archive.key");
    write_key(&key, 0x5a);
    let other = dir.join("other.key");
    write_key(&other, 0x33);
    let conf = config(&dir, &s3, "walrelay.toml", Some(&key));
    let wrong = config(&dir, &s3, "wrong.toml", Some(&other));
    let nokey = config(&dir, &s3, "nokey.toml", None);
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &dir.join("walrelay.log"),
        &["run", "-c", &conf, "--upstream", &conninfo],
        &[],
    );
    for _ in 0..3 {
        primary.psql("insert into t select g, repeat('z', 300) from generate_series(1, 3000) g");
        primary.switch_wal();
    }
    let target = primary.current_lsn();
    let last = segment_file_name(1, target.segno(SEG) - 1, SEG);
    let dest = dir.join("fetched");
    let dest_s = dest.display().to_string();
    wait_for(Duration::from_secs(90), "the last segment archived", || {
        run_to_end(&["wal-fetch", "-c", &conf, &last, &dest_s])
            .0
            .success()
    });
    let orig = std::fs::read(primary.pg_wal().join(&last)).unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == orig,
        "decrypted segment differs"
    );
    let expected = primary.psql("select count(*), sum(x) from t");

    // the object as stored is sealed: the format's magic, no WAL page header visible
    let stored = s3_object(&s3, primary.system_identifier(), &last);
    assert!(stored.starts_with(b"WRLCRYP2"), "object is not encrypted");
    assert!(
        !stored.windows(16).any(|x| x == &orig[..16]),
        "a WAL page header is visible in the stored object"
    );

    // wrong key, no key: refused with the reason, never "absent"
    let (st, _, err) = run_to_end(&["wal-fetch", "-c", &wrong, &last, &dest_s]);
    assert_eq!(st.code(), Some(255), "{err}");
    assert!(err.contains("is encrypted with key id"), "{err}");
    assert!(
        err.contains(&format!("{}\" holds key id", other.display())),
        "{err}"
    );
    let (st, _, err) = run_to_end(&["wal-fetch", "-c", &nokey, &last, &dest_s]);
    assert_eq!(st.code(), Some(255), "{err}");
    assert!(err.contains("set archive.encryption_key_file"), "{err}");

    // verify: clean with the key, not with another one
    let (st, out, err) = run_to_end(&["verify", "-c", &conf]);
    assert!(st.success(), "verify failed:\n{out}\n{err}");
    let (st, out, _) = run_to_end(&["verify", "-c", &wrong]);
    assert!(!st.success(), "verify passed with the wrong key:\n{out}");

    // a standby restored from the encrypted archive alone
    standby.append_conf(&format!(
        "restore_command = {}\n",
        conf_quote(&format!("{} wal-fetch -c {} %f %p", bin().display(), conf))
    ));
    standby.start();
    wait_for(
        Duration::from_secs(90),
        "standby to replay from the encrypted archive",
        || {
            standby
                .try_psql("select count(*), sum(x) from t")
                .ok()
                .as_deref()
                == Some(expected.as_str())
        },
    );
    assert!(!standby.log().contains("started streaming"));
    w.stop();
}

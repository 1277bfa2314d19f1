//! `walrelay backup` / `walrelay backups` against real PostgreSQL 14, 15 and 18.
//!
//! - `backup_pg{14,15,18}_with_tablespace_verifies`: a primary with a tablespace is backed
//!   up into a file:// archive (no `walrelay run`: exit status 3, listed incomplete); the
//!   objects are there, backup.json's start LSN and timeline equal the server's backup_label,
//!   its stop LSN the manifest's WAL range; the archives read back through the catalog API
//!   and, extracted with the stored manifest, pass the real `pg_verifybackup -n`. PG 14 takes
//!   the old BASE_BACKUP syntax and protocol (one COPY per tablespace).
//! - `backup_completes_then_a_missing_segment_is_an_alarm`: with `walrelay run` archiving,
//!   the backup becomes complete (exit 0); its first WAL segment deleted from the archive,
//!   `walrelay backups` names that segment and exits 2 (the alarm).
//! - `backup_encrypted_objects`: archive encryption on: no stored object is plaintext, the
//!   catalog reader returns the tar, the wrong key is refused.
//! - `retention_keep_one_and_expiry_floor`: `[backup] every`, `keep = 1` in `run`: the older
//!   backup is deleted; `archive expire` keeps the WAL from the newer backup's start.
//! - `backup_refusals`: a role without REPLICATION (exit 1, nothing stored); an existing ID
//!   is refused and its objects left as they were.
//! - `backup_failing_midway_leaves_nothing`: the walsender terminated during the upload:
//!   exit 1, no object (nor multipart staging file) left, nothing listed.
//! - `backup_to_s3_multipart`: SeaweedFS, 5 MB parts, read back with its SHA-256,
//!   pg_verifybackup passes.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use walrelay::backup::catalog::{self, BackupMeta, Catalog};

use crate::harness::pg::{give_to_server, Pg};
use crate::harness::walrelay::{run_to_end, Walrelay};
use crate::harness::{wait_for, TestDir};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(conf: &Path) -> walrelay::archive::ArchiveSettings {
    let c = walrelay::config::Config::load(conf).unwrap();
    walrelay::archive::ArchiveSettings::new(c.archive, c.data_dir)
}

fn list(conf: &Path) -> Vec<serde_json::Value> {
    let (status, out, err) = run_to_end(&["backups", "-c", conf.to_str().unwrap(), "--json"]);
    assert!(
        status.code() == Some(0) || status.code() == Some(2),
        "backups: {status:?}\n{out}\n{err}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Reads archive `name` of the backup through the catalog API into `dest`.
fn fetch(conf: &Path, meta: &BackupMeta, name: &str, dest: &Path) {
    let s = settings(conf);
    rt().block_on(async {
        use futures::StreamExt;
        let cat = Catalog::open(&s).await.unwrap();
        let mut st = match name {
            "backup_manifest" => catalog::open_manifest(&cat, meta).await.unwrap().unwrap(),
            _ => catalog::open_archive(&cat, meta, name).await.unwrap(),
        };
        let mut out = Vec::new();
        while let Some(b) = st.next().await {
            out.extend_from_slice(&b.unwrap());
        }
        std::fs::write(dest, out).unwrap();
    });
}

/// The same through the AsyncRead adapter.
fn fetch_read(conf: &Path, meta: &BackupMeta, name: &str, dest: &Path) {
    let s = settings(conf);
    rt().block_on(async {
        use tokio::io::AsyncReadExt;
        let cat = Catalog::open(&s).await.unwrap();
        let mut r = catalog::open_archive(&cat, meta, name)
            .await
            .unwrap()
            .into_async_read();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        std::fs::write(dest, out).unwrap();
    });
}

fn metas(conf: &Path) -> Vec<(BackupMeta, catalog::BackupStatus)> {
    let s = settings(conf);
    rt().block_on(async {
        let cat = Catalog::open(&s).await.unwrap();
        catalog::list(&cat).await.unwrap()
    })
}

fn write_conf(dir: &TestDir, archive: &Path, extra: &str) -> PathBuf {
    let conf = dir.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[upstream]\nstatus_interval = \"1s\"\n\
             [archive]\nurl = \"file://{}\"\nscan_interval = \"500ms\"\npartial_interval = \"0\"\n{extra}",
            dir.join("data").display(),
            archive.display()
        ),
    )
    .unwrap();
    conf
}

fn untar(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -xf {}: {}",
        tar.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn label_value<'a>(label: &'a str, key: &str) -> &'a str {
    label
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in backup_label:\n{label}"))
        .trim()
}

fn backup_verifies(major: &str) {
    let primary = Pg::primary(major, &[]);
    let dir = TestDir::new(&format!("backup-ts{major}"));
    let ts = dir.subdir("tablespace");
    give_to_server(&ts);
    primary.psql(&format!("create tablespace ts location '{}'", ts.display()));
    primary.psql("create table big(x int, pad text) tablespace ts");
    primary.psql("insert into big select g, repeat('z', 200) from generate_series(1, 20000) g");
    primary.psql("create table t(x int)");
    primary.psql("insert into t select generate_series(1, 1000)");
    let ts_oid: u32 = primary
        .psql("select oid from pg_tablespace where spcname = 'ts'")
        .trim()
        .parse()
        .unwrap();
    let archive = dir.subdir("archive");
    let conf = write_conf(&dir, &archive, "compression = \"zstd\"\n");
    let conf_s = conf.to_str().unwrap();
    // nothing archives this server's WAL: stored, but incomplete (exit status 3)
    let (status, out, err) = run_to_end(&[
        "backup",
        "-c",
        conf_s,
        "--upstream",
        &primary.conninfo(),
        "--label",
        "it's a test",
        "--wait-wal",
        "2s",
    ]);
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    assert!(out.contains(" stored: "), "{out}");
    assert!(
        err.contains("is stored but INCOMPLETE") && err.contains("is `walrelay run` archiving"),
        "{err}"
    );

    let listed = list(&conf);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "incomplete");
    let all = metas(&conf);
    let (meta, _) = &all[0];
    assert_eq!(meta.label, "it's a test");
    assert_eq!(meta.system_id, primary.system_identifier().to_string());
    assert_eq!(meta.compression, "zstd");
    let names: Vec<&str> = meta.archives.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"base.tar"), "{names:?}");
    let ts_tar = format!("{ts_oid}.tar");
    assert!(names.contains(&ts_tar.as_str()), "{names:?}");
    let ts_entry = meta.archives.iter().find(|a| a.name == ts_tar).unwrap();
    assert_eq!(ts_entry.tablespace_oid, Some(ts_oid));
    assert_eq!(ts_entry.location.as_deref(), Some(ts.to_str().unwrap()));
    let map = meta.tablespace_map.as_deref().expect("tablespace_map");
    assert!(map.contains(&format!("{ts_oid} {}", ts.display())), "{map}");
    let version: u32 = primary
        .psql("show server_version_num")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(meta.server_version, version);
    // the objects, compressed
    let bdir = archive
        .join(primary.system_identifier().to_string())
        .join("backups")
        .join(&meta.id);
    for o in [
        "base.tar.zst",
        &format!("{ts_tar}.zst"),
        "backup_manifest.zst",
        "backup.json",
    ] {
        assert!(bdir.join(o).is_file(), "{} missing", bdir.join(o).display());
    }
    // the server's own record of the backup
    let start = label_value(&meta.backup_label, "START WAL LOCATION:");
    let start = start.split_whitespace().next().unwrap();
    assert_eq!(meta.start_lsn, start);
    assert_eq!(
        meta.timeline.to_string(),
        label_value(&meta.backup_label, "START TIMELINE:")
    );
    assert!(
        meta.backup_label.contains("LABEL: it's a test"),
        "{}",
        meta.backup_label
    );

    // read back through the catalog and verify with pg_verifybackup
    let restore = dir.subdir("restore");
    let pgdata = restore.join("pgdata");
    fetch(&conf, meta, "base.tar", &restore.join("base.tar"));
    fetch_read(&conf, meta, &ts_tar, &restore.join("ts.tar"));
    fetch(
        &conf,
        meta,
        "backup_manifest",
        &restore.join("backup_manifest"),
    );
    untar(&restore.join("base.tar"), &pgdata);
    untar(
        &restore.join("ts.tar"),
        &pgdata.join("pg_tblspc").join(ts_oid.to_string()),
    );
    std::fs::copy(
        restore.join("backup_manifest"),
        pgdata.join("backup_manifest"),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(pgdata.join("backup_label")).unwrap(),
        meta.backup_label
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pgdata.join("backup_manifest")).unwrap()).unwrap();
    let range = &manifest["WAL-Ranges"][0];
    assert_eq!(range["Start-LSN"], meta.start_lsn.as_str());
    assert_eq!(range["End-LSN"], meta.stop_lsn.as_str());
    assert_eq!(range["Timeline"], meta.stop_timeline);
    let out = primary
        .install()
        .command("pg_verifybackup")
        .arg("-n")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // and it would catch a changed file
    let victim = pgdata.join("PG_VERSION");
    std::fs::write(&victim, "99\n").unwrap();
    let out = primary
        .install()
        .command("pg_verifybackup")
        .arg("-n")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "pg_verifybackup passed a changed file"
    );

    // a corrupted stored object is refused by the reader at its end
    let obj = bdir.join(format!("{ts_tar}.zst"));
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&obj, bytes).unwrap();
    let s = settings(&conf);
    let err = rt().block_on(async {
        let cat = Catalog::open(&s).await.unwrap();
        let st = catalog::open_archive(&cat, meta, &ts_tar).await.unwrap();
        st.read_to_end().await.unwrap_err().to_string()
    });
    assert!(err.contains(&ts_tar), "{err}");
}

#[test]
fn backup_pg15_with_tablespace_verifies() {
    backup_verifies("15");
}

#[test]
fn backup_pg18_with_tablespace_verifies() {
    backup_verifies("18");
}

#[test]
fn backup_pg14_with_tablespace_verifies() {
    backup_verifies("14");
}

#[test]
fn backup_completes_then_a_missing_segment_is_an_alarm() {
    let primary = Pg::primary("18", &[]);
    let dir = TestDir::new("backup-complete");
    let archive = dir.subdir("archive");
    let conf = write_conf(&dir, &archive, "");
    let conf_s = conf.to_str().unwrap();
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &dir.join("walrelay.log"),
        &["run", "-c", conf_s, "--upstream", &conninfo],
        &[],
    );
    primary.psql("create table t(x int)");
    primary.psql("insert into t select generate_series(1, 10000)");
    primary.switch_wal();
    let (status, out, err) = run_to_end(&[
        "backup",
        "-c",
        conf_s,
        "--upstream",
        &conninfo,
        "--wait-wal",
        "60s",
    ]);
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("is complete: the archive holds all its WAL"),
        "{out}"
    );
    // more WAL after it, archived
    primary.psql("insert into t select generate_series(1, 10000)");
    let after = primary.switch_wal();
    let seg = 16u64 << 20;
    let sysid = primary.system_identifier();
    let wal = archive.join(sysid.to_string()).join("wal");
    wait_for(
        Duration::from_secs(60),
        "WAL after the backup archived",
        || {
            wal.join(walrelay::lsn::segment_file_name(1, after.segno(seg), seg))
                .exists()
        },
    );
    let listed = list(&conf);
    assert_eq!(listed[0]["status"], "complete", "{listed:?}");
    let (status, out, _) = run_to_end(&["backups", "-c", conf_s]);
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("complete"), "{out}");
    let (_, out, _) = run_to_end(&["check", "-c", conf_s, "--upstream", &conninfo, "--json"]);
    assert!(out.contains("newest complete"), "{out}");
    w.stop();

    // `latest` is the newest complete backup
    let s = settings(&conf);
    let latest = rt().block_on(async {
        let cat = Catalog::open(&s).await.unwrap();
        catalog::find(&cat, "latest").await.unwrap().0.id
    });
    assert_eq!(listed[0]["id"], latest.as_str());

    // its first segment goes missing
    let start: walrelay::Lsn = listed[0]["start_lsn"].as_str().unwrap().parse().unwrap();
    let first = walrelay::lsn::segment_file_name(1, start.segno(seg), seg);
    std::fs::remove_file(wal.join(&first)).unwrap();
    let (status, out, err) = run_to_end(&["backups", "-c", conf_s]);
    assert_eq!(status.code(), Some(2), "{out}\n{err}");
    assert!(
        out.contains(&format!("incomplete: missing {first} (ALARM")),
        "{out}"
    );
    let listed = list(&conf);
    assert_eq!(listed[0]["status"], "incomplete");
    assert_eq!(listed[0]["first_missing"], first.as_str());
    assert_eq!(listed[0]["alarm"], true);
    let e = rt().block_on(async {
        let cat = Catalog::open(&s).await.unwrap();
        catalog::find(&cat, "latest").await.unwrap_err().to_string()
    });
    assert_eq!(e, "the archive holds no complete backup (1 incomplete)");
    // and `walrelay check` raises it
    let (status, out, err) =
        run_to_end(&["check", "-c", conf_s, "--upstream", &conninfo, "--json"]);
    assert_eq!(status.code(), Some(2), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let item = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backups")
        .unwrap_or_else(|| panic!("no backups item: {out}"));
    assert_eq!(item["status"], "CRITICAL", "{item}");
    assert!(item["message"].as_str().unwrap().contains(&first), "{item}");
}

#[test]
fn backup_encrypted_objects() {
    use std::os::unix::fs::PermissionsExt;
    let primary = Pg::primary("15", &[]);
    let dir = TestDir::new("backup-crypt");
    let archive = dir.subdir("archive");
    let key = dir.join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = write_conf(
        &dir,
        &archive,
        &format!(
            "compression = \"zstd\"\nencryption_key_file = \"{}\"\n",
            key.display()
        ),
    );
    let conf_s = conf.to_str().unwrap();
    let (status, out, err) = run_to_end(&[
        "backup",
        "-c",
        conf_s,
        "--upstream",
        &primary.conninfo(),
        "--wait-wal",
        "0",
    ]);
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    let all = metas(&conf);
    let (meta, _) = &all[0];
    assert!(meta.encrypted);
    let bdir = archive
        .join(primary.system_identifier().to_string())
        .join("backups")
        .join(&meta.id);
    for e in std::fs::read_dir(&bdir).unwrap() {
        let p = e.unwrap().path();
        let b = std::fs::read(&p).unwrap();
        assert!(
            b.starts_with(b"WRLCRYP2"),
            "{} is not encrypted",
            p.display()
        );
    }
    let tar = dir.join("base.tar");
    fetch(&conf, meta, "base.tar", &tar);
    let got = std::fs::read(&tar).unwrap();
    assert_eq!(
        walrelay::archive::layout::sha256_hex(&got),
        meta.archives
            .iter()
            .find(|a| a.name == "base.tar")
            .unwrap()
            .sha256
    );
    let x = dir.subdir("x");
    untar(&tar, &x);
    assert_eq!(
        std::fs::read_to_string(x.join("backup_label")).unwrap(),
        meta.backup_label
    );
    // another key: refused, naming the reason
    std::fs::write(&key, [8u8; 32]).unwrap();
    let (status, _, err) = run_to_end(&["backups", "-c", conf_s]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("is encrypted with key id"), "{err}");
}

#[test]
fn retention_keep_one_and_expiry_floor() {
    let primary = Pg::primary("15", &[]);
    let dir = TestDir::new("backup-retention");
    let archive = dir.subdir("archive");
    let conf = write_conf(&dir, &archive, "[backup]\nevery = \"3s\"\nkeep = 1\n");
    let conf_s = conf.to_str().unwrap();
    let conninfo = primary.conninfo();
    primary.psql("create table t(x int)");
    let mut w = Walrelay::spawn_with(
        &dir.join("walrelay.log"),
        &["run", "-c", conf_s, "--upstream", &conninfo],
        &[],
    );
    let seg = 16u64 << 20;
    let mut first_id = None;
    wait_for(Duration::from_secs(90), "a first complete backup", || {
        primary.psql("insert into t select generate_series(1, 1000)");
        primary.switch_wal();
        let l = metas_or_empty(&conf);
        first_id = l
            .iter()
            .find(|(_, s)| s.is_complete())
            .map(|(m, _)| m.id.clone());
        first_id.is_some()
    });
    let first_id = first_id.unwrap();
    let first_start: walrelay::Lsn = metas(&conf)
        .iter()
        .find(|(m, _)| m.id == first_id)
        .unwrap()
        .0
        .start();
    wait_for(
        Duration::from_secs(90),
        "the first backup deleted by keep = 1",
        || {
            primary.psql("insert into t select generate_series(1, 1000)");
            primary.switch_wal();
            let l = metas_or_empty(&conf);
            !l.is_empty() && l.iter().all(|(m, _)| m.id != first_id)
        },
    );
    w.stop();
    let left = metas(&conf);
    let newest_complete = left
        .iter()
        .rev()
        .find(|(_, s)| s.is_complete())
        .map(|(m, _)| m.clone())
        .expect("a complete backup is kept");
    assert!(newest_complete.id > first_id);
    assert!(
        newest_complete.start().segno(seg) > first_start.segno(seg),
        "WAL between the backups"
    );
    // expiry with a rule that would delete nearly everything keeps the backup's WAL
    let empty = dir.subdir("empty");
    let (status, out, err) = run_to_end(&[
        "archive",
        "expire",
        "-c",
        conf_s,
        "-D",
        empty.to_str().unwrap(),
        "--keep-size",
        "1",
        "--floor",
        "FF/0",
    ]);
    assert!(status.success(), "{out}\n{err}");
    let oldest = left
        .iter()
        .map(|(m, _)| m.start().segno(seg))
        .min()
        .unwrap();
    let wal = archive
        .join(primary.system_identifier().to_string())
        .join("wal");
    let mut segs: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segs.sort();
    assert_eq!(
        segs.first().map(String::as_str),
        Some(walrelay::lsn::segment_file_name(1, oldest, seg).as_str()),
        "{out}"
    );
    assert!(
        !wal.join(walrelay::lsn::segment_file_name(
            1,
            first_start.segno(seg),
            seg
        ))
        .exists(),
        "the deleted backup's WAL is expired"
    );
    let after = metas(&conf);
    let kept = after
        .iter()
        .find(|(m, _)| m.id == newest_complete.id)
        .unwrap();
    assert!(kept.1.is_complete(), "{:?}", kept.1);
}

fn metas_or_empty(conf: &Path) -> Vec<(BackupMeta, catalog::BackupStatus)> {
    let s = settings(conf);
    rt().block_on(async {
        match Catalog::open(&s).await {
            Ok(cat) => catalog::list(&cat).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    })
}

#[test]
fn backup_refusals() {
    let primary = Pg::primary("15", &[]);
    let dir = TestDir::new("backup-refuse");
    let archive = dir.subdir("archive");
    let conf = write_conf(&dir, &archive, "");
    let conf_s = conf.to_str().unwrap();
    // a role without REPLICATION: refused by the server, nothing stored
    primary.psql("create role plain login");
    let plain = format!("{} user=plain", primary.conninfo());
    let (status, out, err) = run_to_end(&["backup", "-c", conf_s, "--upstream", &plain]);
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(err.starts_with("walrelay backup: "), "{err}");
    assert!(err.contains("replication"), "{err}");
    // an existing ID is never overwritten: occupy the next seconds' IDs
    let sysid = primary.system_identifier();
    let now = chrono::Utc::now();
    let bdir = archive.join(sysid.to_string()).join("backups");
    let mut taken = Vec::new();
    for s in 0..20 {
        let id = catalog::id_for(now + chrono::Duration::seconds(s));
        let d = bdir.join(&id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("base.tar"), b"someone else's").unwrap();
        taken.push(d);
    }
    let (status, out, err) = run_to_end(&[
        "backup",
        "-c",
        conf_s,
        "--upstream",
        &primary.conninfo(),
        "--wait-wal",
        "0",
    ]);
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("already exists in the archive; refusing to overwrite it"),
        "{err}"
    );
    for d in &taken {
        assert_eq!(
            std::fs::read(d.join("base.tar")).unwrap(),
            b"someone else's"
        );
    }
    // none of them has backup.json: nothing is listed
    assert!(list(&conf).is_empty());
}

#[test]
fn backup_failing_midway_leaves_nothing() {
    let primary = Pg::primary("15", &[]);
    primary.psql("create table big(x int, pad text)");
    // random text: zstd at level 19 makes the backup take seconds
    primary.psql(
        "insert into big select g, md5(g::text) || md5((g * 7)::text) from generate_series(1, 300000) g",
    );
    let dir = TestDir::new("backup-midway");
    let archive = dir.subdir("archive");
    let conf = write_conf(
        &dir,
        &archive,
        "compression = \"zstd\"\ncompression_level = 19\n",
    );
    let conf_s = conf.to_str().unwrap().to_string();
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &dir.join("backup.log"),
        &[
            "backup",
            "-c",
            &conf_s,
            "--upstream",
            &conninfo,
            "--wait-wal",
            "0",
        ],
        &[],
    );
    let bdir = archive
        .join(primary.system_identifier().to_string())
        .join("backups");
    let has_files = |d: &Path| -> bool { walk(d).into_iter().any(|p| p.is_file()) };
    wait_for(Duration::from_secs(60), "the backup's first upload", || {
        has_files(&bdir)
    });
    let killed = primary.psql(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = 'walrelay backup'",
    );
    assert_eq!(killed.trim(), "1", "the backup was already over");
    let status = w.wait_exit(Duration::from_secs(60)).expect("backup exits");
    assert_eq!(status.code(), Some(1), "{}", w.output());
    let left: Vec<PathBuf> = walk(&bdir).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(list(&conf).is_empty());
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// The same through S3 (SeaweedFS): the archives go up as real multipart uploads (5 MB
/// parts), are listed, and read back with their SHA-256; pg_verifybackup passes.
#[test]
fn backup_to_s3_multipart() {
    use crate::harness::s3::S3Server;
    let primary = Pg::primary("15", &[]);
    primary.psql("create table t(x int, pad text)");
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 100000) g");
    let s3 = S3Server::start();
    let dir = TestDir::new("backup-s3");
    let conf = dir.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[archive]\nurl = \"s3://{}/bk\"\npart_size = \"5MB\"\n\
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
    let conf_s = conf.to_str().unwrap();
    let (status, out, err) = run_to_end(&[
        "backup",
        "-c",
        conf_s,
        "--upstream",
        &primary.conninfo(),
        "--wait-wal",
        "0",
    ]);
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    let all = metas(&conf);
    assert_eq!(all.len(), 1);
    let meta = &all[0].0;
    let base = meta.archives.iter().find(|a| a.name == "base.tar").unwrap();
    assert!(
        base.size > 10 << 20,
        "base.tar is {} bytes: not multipart",
        base.size
    );
    assert_eq!(base.stored_size, base.size, "compression none");
    let restore = dir.subdir("restore");
    let pgdata = restore.join("pgdata");
    fetch(&conf, meta, "base.tar", &restore.join("base.tar"));
    fetch(
        &conf,
        meta,
        "backup_manifest",
        &restore.join("backup_manifest"),
    );
    let tar = std::fs::read(restore.join("base.tar")).unwrap();
    assert_eq!(walrelay::archive::layout::sha256_hex(&tar), base.sha256);
    untar(&restore.join("base.tar"), &pgdata);
    std::fs::copy(
        restore.join("backup_manifest"),
        pgdata.join("backup_manifest"),
    )
    .unwrap();
    let out = primary
        .install()
        .command("pg_verifybackup")
        .arg("-n")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

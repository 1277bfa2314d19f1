//! walrelay's walsender answers BASE_BACKUP from the newest complete backup in its archive
//! (PG 15 and 18, real pg_basebackup / pg_verifybackup / standby):
//! - with no backup stored, `pg_basebackup -h walrelay` exits 1 with walrelay's ERROR and HINT;
//! - a backup is stored in walrelay's `file://` archive in the catalog's format
//!   (`<sysid>/backups/<ID>/{base.tar, backup_manifest, backup.json}`; here made with a real
//!   `pg_basebackup -Ft -X none` from the primary, the shape `walrelay backup` stores), and is
//!   served once the archive holds its WAL;
//! - PG 14 too (the ≤ 14 shape, one COPY per tar), whenever its binaries are installed;
//! - `pg_basebackup -h walrelay -X stream -R -Fp` (throttled with `-r`) makes a directory that
//!   `pg_verifybackup` accepts and that starts as a standby streaming from walrelay and
//!   replays rows written on the primary after the backup; during the backup the primary's
//!   `pg_stat_progress_basebackup` stays empty and `pg_stat_replication` shows only walrelay;
//! - the backup's first WAL segment is gone from walrelay's data directory (retention) by
//!   then, so `-X stream` gets it from the archive;
//! - `-Ft -X stream` writes `base.tar` and `backup_manifest` byte-identical to the stored ones;
//! - pg_basebackup 18 against a 14/15 walrelay gets the same bytes;
//! - a stored tar whose SHA-256 no longer matches makes pg_basebackup fail (exit 1, walrelay's
//!   text), nothing kept;
//! - a backup with a tablespace: every tar served byte-identical (`-Ft -P`);
//! - end to end with the real `walrelay backup` (compressed, encrypted): the fork streams;
//! - after a promotion, the timeline-1 backup is still served and the fork follows
//!   timeline 2 through walrelay;
//! - `-X fetch` is refused (exit 1, walrelay's text), `--no-manifest` writes no manifest.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sha2::{Digest, Sha256};
use walrelay::backup::catalog::{ArchiveEntry, BackupMeta, ManifestEntry};
use walrelay::lsn::{segment_file_name, Lsn};

use crate::harness::{self, pg::Pg, TestDir};
use crate::server_common::{write_rows, Relay};

const SEG: u64 = 16 << 20;
const ID: &str = "20260102T030405Z";

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `pg_basebackup` of `major` against walrelay.
fn basebackup(pg: &Pg, relay: &Relay, dir: &Path, args: &[&str]) -> Command {
    let mut c = pg.install().command("pg_basebackup");
    c.env("PGCONNECT_TIMEOUT", "10")
        .args(["-h", "127.0.0.1", "-p", &relay.port.to_string()])
        .args(["-U", "postgres", "-D"])
        .arg(dir)
        .args(["--no-sync"])
        .args(args);
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// "WAL-Ranges" of a backup manifest: (timeline, start, end).
fn wal_range(manifest: &[u8]) -> (u32, Lsn, Lsn) {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let r = &v["WAL-Ranges"][0];
    (
        r["Timeline"].as_u64().unwrap() as u32,
        r["Start-LSN"].as_str().unwrap().parse().unwrap(),
        r["End-LSN"].as_str().unwrap().parse().unwrap(),
    )
}

fn archived(archive: &Path, sysid: u64, name: &str) -> bool {
    let wal = archive.join(sysid.to_string()).join("wal");
    wal.join(name).is_file() || wal.join(format!("{name}.zst")).is_file()
}

/// A backup of the primary stored in the archive as `walrelay backup` stores it
/// (compression "none", not encrypted; tablespaces first, base.tar last, as the server sends
/// them). Returns (start, stop, base.tar, manifest).
fn store_backup(
    t: &TestDir,
    primary: &Pg,
    archive: &Path,
    sysid: u64,
) -> (Lsn, Lsn, Vec<u8>, Vec<u8>) {
    let (start, stop, tars, manifest) = store_backup_all(t, primary, archive, sysid);
    let base = tars.into_iter().find(|(n, _)| n == "base.tar").unwrap().1;
    (start, stop, base, manifest)
}

#[allow(clippy::type_complexity)]
fn store_backup_all(
    t: &TestDir,
    primary: &Pg,
    archive: &Path,
    sysid: u64,
) -> (Lsn, Lsn, Vec<(String, Vec<u8>)>, Vec<u8>) {
    let src = t.subdir("taken");
    let out = primary
        .install()
        .command("pg_basebackup")
        .args(["-h", "127.0.0.1", "-p", &primary.port().to_string()])
        .args(["-U", "postgres", "-D"])
        .arg(&src)
        .args(["-Ft", "-X", "none", "-c", "fast", "--no-sync"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let tar = std::fs::read(src.join("base.tar")).unwrap();
    let manifest = std::fs::read(src.join("backup_manifest")).unwrap();
    let (tli, start, stop) = wal_range(&manifest);
    assert_eq!(tli, 1);
    let label = Command::new("tar")
        .args(["-xOf"])
        .arg(src.join("base.tar"))
        .arg("backup_label")
        .output()
        .unwrap();
    assert!(label.status.success(), "{}", text(&label));
    let label = String::from_utf8(label.stdout).unwrap();
    assert!(
        label.contains(&format!("START WAL LOCATION: {start}")),
        "{label}"
    );

    let map = Command::new("tar")
        .args(["-xOf"])
        .arg(src.join("base.tar"))
        .arg("tablespace_map")
        .output()
        .unwrap();
    let map = map
        .status
        .success()
        .then(|| String::from_utf8(map.stdout).unwrap())
        .filter(|m| !m.is_empty());
    let mut archives = Vec::new();
    let mut tars = Vec::new();
    for line in map.iter().flat_map(|m| m.lines()) {
        let (oid, location) = line.split_once(' ').unwrap();
        let name = format!("{oid}.tar");
        let bytes = std::fs::read(src.join(&name)).unwrap();
        archives.push(ArchiveEntry {
            name: name.clone(),
            object: name.clone(),
            tablespace_oid: Some(oid.parse().unwrap()),
            location: Some(location.to_string()),
            size: bytes.len() as u64,
            stored_size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
        tars.push((name, bytes));
    }
    archives.push(ArchiveEntry {
        name: "base.tar".into(),
        object: "base.tar".into(),
        tablespace_oid: None,
        location: None,
        size: tar.len() as u64,
        stored_size: tar.len() as u64,
        sha256: sha256_hex(&tar),
    });
    tars.push(("base.tar".into(), tar));
    let dir = archive.join(sysid.to_string()).join("backups").join(ID);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &tars {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("backup_manifest"), &manifest).unwrap();
    let version: u32 = primary
        .psql("show server_version_num")
        .trim()
        .parse()
        .unwrap();
    let meta = BackupMeta {
        format: 1,
        id: ID.into(),
        label: "pg_basebackup base backup".into(),
        system_id: sysid.to_string(),
        timeline: 1,
        start_lsn: start.to_string(),
        stop_lsn: stop.to_string(),
        stop_timeline: 1,
        start_time: "2026-01-02T03:04:05Z".into(),
        stop_time: "2026-01-02T03:04:06Z".into(),
        server_version: version,
        wal_segment_size: SEG,
        compression: "none".into(),
        encrypted: false,
        backup_label: label,
        tablespace_map: map,
        archives,
        manifest: Some(ManifestEntry {
            object: "backup_manifest".into(),
            size: manifest.len() as u64,
            sha256: sha256_hex(&manifest),
        }),
    };
    std::fs::write(dir.join("backup.json"), meta.encode()).unwrap();
    (start, stop, tars, manifest)
}

fn fork_from_walrelay(major: &str) {
    // 14 (the ≤ 14 protocol shape: one COPY per tar, then the manifest's) runs whenever its
    // binaries are installed; 15+ as the version matrix says.
    let wanted = if major == "14" {
        harness::infra_dir()
            .join("pg/14/bin/pg_basebackup")
            .is_file()
    } else {
        harness::majors().iter().any(|m| m == major)
    };
    if !wanted {
        return;
    }
    let t = TestDir::new(&format!("srv-bb{major}"));
    let primary = Pg::primary(major, &[]);
    primary.psql("create table t (id int, pad text)");
    write_rows(&primary, "before", 1000);
    let sysid = primary.system_identifier();
    let archive = t.subdir("archive");
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "[archive]\nurl = \"file://{}\"\ncompression = \"zstd\"\nscan_interval = \"200ms\"\n\
             partial_interval = \"0\"\nkeep_local_size = \"32MB\"\nkeep_local_age = \"0s\"\n",
            archive.display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let relay = Relay::start(&t, &primary, &["-c", &conf_s]);

    // No backup stored yet: exit 1 with walrelay's ERROR and HINT on stderr.
    let none_dir = t.join("none");
    let out = basebackup(&primary, &relay, &none_dir, &["-X", "stream"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "walrelay has no complete base backup of system {sysid} to serve"
        )) && err.contains("Take one with walrelay backup."),
        "{err}"
    );

    let (start, stop, tar, manifest) = store_backup(&t, &primary, &archive, sysid);
    // Complete once the archive holds every segment from start's to stop's.
    primary.switch_wal();
    let segs: Vec<String> = (start.segno(SEG)..=(stop.0 - 1) / SEG)
        .map(|n| segment_file_name(1, n, SEG))
        .collect();
    harness::wait_for(Duration::from_secs(60), "the backup's WAL archived", || {
        segs.iter().all(|n| archived(&archive, sysid, n))
    });
    write_rows(&primary, "after", 500);
    // More WAL, so that retention removes the backup's first segment from walrelay's data
    // directory: `-X stream` then gets it from the archive.
    for i in 0..4 {
        write_rows(&primary, &format!("push{i}"), 2000);
        primary.switch_wal();
    }
    let first = &segs[0];
    harness::wait_for(
        Duration::from_secs(60),
        "the backup's first segment removed locally",
        || {
            !relay.data.join(first).exists()
                && !relay.data.join(format!("{first}.partial")).exists()
        },
    );

    // -X fetch: refused with walrelay's text.
    let out = basebackup(&primary, &relay, &t.join("fetch"), &["-X", "fetch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("walrelay does not include WAL in the base backups it serves"),
        "{}",
        text(&out)
    );

    // -Fp -X stream -R, throttled so that the primary can be watched during it.
    let fork_dir = TestDir::new(&format!("pg{major}-fork"));
    let data = fork_dir.join("data");
    let mut child = basebackup(&primary, &relay, &data, &["-X", "stream", "-R", "-r", "8M"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut polls = 0;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        let progress = primary.psql("select count(*) from pg_stat_progress_basebackup");
        assert_eq!(progress.trim(), "0", "the primary is taking a base backup");
        let senders = primary.psql(
            "select coalesce(string_agg(application_name || ':' || state, ','), '') from pg_stat_replication",
        );
        assert_eq!(senders.trim(), "walrelay:streaming", "{senders}");
        polls += 1;
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", text(&out));
    assert!(
        polls >= 1,
        "pg_basebackup ended before the primary was polled"
    );
    assert_eq!(
        std::fs::read(data.join("backup_manifest")).unwrap(),
        manifest
    );
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(
        label.contains(&format!("START WAL LOCATION: {start}")),
        "{label}"
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("port={}", relay.port)), "{auto}");
    assert!(data.join("standby.signal").is_file());
    let verify = primary
        .install()
        .command("pg_verifybackup")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}",
        text(&verify)
    );

    let mut fork = Pg::adopt(major, fork_dir, &[]);
    fork.start();
    harness::wait_for(
        Duration::from_secs(60),
        "the fork to stream from walrelay",
        || {
            fork.try_psql("select status from pg_stat_wal_receiver")
                .is_ok_and(|s| s.trim() == "streaming")
        },
    );
    let lsn = write_rows(&primary, "later", 700);
    fork.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(fork.psql("select count(*) from later"), "700");
    assert_eq!(fork.psql("select count(*) from after"), "500");
    let conninfo = fork.psql("select sender_port from pg_stat_wal_receiver");
    assert_eq!(conninfo.trim(), relay.port.to_string());
    let senders = primary.psql("select string_agg(application_name, ',') from pg_stat_replication");
    assert_eq!(senders.trim(), "walrelay");

    // -Ft -X stream: the stored tar and manifest, byte for byte, plus the streamed WAL.
    let tar_dir: PathBuf = t.join("tar");
    let out = basebackup(&primary, &relay, &tar_dir, &["-Ft", "-X", "stream"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(tar_dir.join("base.tar")).unwrap() == tar,
        "base.tar differs"
    );
    assert_eq!(
        std::fs::read(tar_dir.join("backup_manifest")).unwrap(),
        manifest
    );
    assert!(tar_dir.join("pg_wal.tar").is_file());

    // --manifest-checksums=SHA256: the stored manifest as it is, and a NOTICE saying so.
    let sha = t.join("sha256");
    let out = basebackup(
        &primary,
        &relay,
        &sha,
        &["-Ft", "-X", "stream", "--manifest-checksums=SHA256"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(sha.join("backup_manifest")).unwrap(),
        manifest
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "walrelay serves the stored backup manifest with the checksums it was taken with; MANIFEST_CHECKSUMS 'SHA256' is not applied"
        ),
        "{}",
        text(&out)
    );

    // --no-manifest: none written.
    let nm = t.join("nomanifest");
    let out = basebackup(&primary, &relay, &nm, &["-X", "stream", "--no-manifest"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!nm.join("backup_manifest").exists());
    assert!(nm.join("backup_label").is_file());

    // A newer client against the same walrelay (for 14: pg_basebackup 18 with the legacy
    // syntax and the ≤ 14 shape): the same bytes.
    if major != "18"
        && harness::infra_dir()
            .join("pg/18/bin/pg_basebackup")
            .is_file()
    {
        let new = harness::pg::PgInstall::get("18");
        let dir = t.join("tar18");
        let out = new
            .command("pg_basebackup")
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-h", "127.0.0.1", "-p", &relay.port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(&dir)
            .args(["--no-sync", "-Ft", "-X", "stream"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_basebackup 18: {}", text(&out));
        assert!(
            std::fs::read(dir.join("base.tar")).unwrap() == tar,
            "base.tar differs (18)"
        );
        assert_eq!(
            std::fs::read(dir.join("backup_manifest")).unwrap(),
            manifest
        );
    }

    // A stored tar that no longer matches its SHA-256: the client fails (exit 1), walrelay
    // says why, nothing is left behind.
    let stored = archive
        .join(sysid.to_string())
        .join("backups")
        .join(ID)
        .join("base.tar");
    let mut bad = tar.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&stored, &bad).unwrap();
    let bad_dir = t.join("corrupt");
    let out = basebackup(&primary, &relay, &bad_dir, &["-Ft", "-X", "stream"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("could not read base backup {ID} from the archive")),
        "{}",
        text(&out)
    );
    assert!(!bad_dir.join("base.tar").exists());

    let log = relay.log();
    assert!(log.contains(&format!("serving base backup {ID}")), "{log}");
    assert!(
        log.contains(&format!("WAL segment {} read from the archive", segs[0])),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// A backup with a tablespace: `-Ft -P` gets every tar (the tablespace's `<oid>.tar` first)
/// byte-identical to the stored ones, and (PG 18, which verifies tar backups)
/// `pg_verifybackup -n` passes.
fn with_tablespace(major: &str) {
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let t = TestDir::new(&format!("srv-bbts{major}"));
    let primary = Pg::primary(major, &[]);
    let ts = primary.dir().join("ts");
    std::fs::create_dir_all(&ts).unwrap();
    harness::pg::give_to_server(&ts);
    primary.psql(&format!("create tablespace ts location '{}'", ts.display()));
    primary.psql("create table tst (id int) tablespace ts");
    primary.psql("insert into tst select generate_series(1, 3000)");
    let sysid = primary.system_identifier();
    let archive = t.subdir("archive");
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "[archive]\nurl = \"file://{}\"\nscan_interval = \"200ms\"\n",
            archive.display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let relay = Relay::start(&t, &primary, &["-c", &conf_s]);
    let (start, stop, tars, manifest) = store_backup_all(&t, &primary, &archive, sysid);
    assert_eq!(tars.len(), 2, "a tablespace tar and base.tar");
    primary.switch_wal();
    let segs: Vec<String> = (start.segno(SEG)..=(stop.0 - 1) / SEG)
        .map(|n| segment_file_name(1, n, SEG))
        .collect();
    harness::wait_for(Duration::from_secs(60), "the backup's WAL archived", || {
        segs.iter().all(|n| archived(&archive, sysid, n))
    });
    let dir = t.join("tar");
    let out = basebackup(&primary, &relay, &dir, &["-Ft", "-X", "stream", "-P"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for (name, bytes) in &tars {
        assert!(
            std::fs::read(dir.join(name)).unwrap() == *bytes,
            "{name} differs"
        );
    }
    assert_eq!(
        std::fs::read(dir.join("backup_manifest")).unwrap(),
        manifest
    );
    if major == "18" {
        let verify = primary
            .install()
            .command("pg_verifybackup")
            .args(["-n"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "pg_verifybackup: {}",
            text(&verify)
        );
    }
}

/// End to end with the real `walrelay backup` (zstd-compressed, encrypted objects) while
/// `walrelay run` archives: `pg_basebackup -h walrelay -X stream -R` of it verifies and
/// starts as a standby streaming from walrelay.
fn walrelay_backup_then_fork(major: &str) {
    use std::os::unix::fs::PermissionsExt;
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let t = TestDir::new(&format!("srv-bbe2e{major}"));
    let primary = Pg::primary(major, &[]);
    write_rows(&primary, "before", 1000);
    let archive = t.subdir("archive");
    let key = t.join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "[archive]\nurl = \"file://{}\"\ncompression = \"zstd\"\nscan_interval = \"200ms\"\n\
             partial_interval = \"0\"\nencryption_key_file = \"{}\"\n",
            archive.display(),
            key.display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let relay = Relay::start(&t, &primary, &["-c", &conf_s]);
    let (status, out, err) = harness::walrelay::run_to_end(&[
        "backup",
        "-c",
        &conf_s,
        "--upstream",
        &primary.conninfo(),
        "--wait-wal",
        "60s",
    ]);
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    write_rows(&primary, "after", 300);

    let fork_dir = TestDir::new(&format!("pg{major}-e2e-fork"));
    let data = fork_dir.join("data");
    let out = basebackup(&primary, &relay, &data, &["-X", "stream", "-R"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let verify = primary
        .install()
        .command("pg_verifybackup")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}",
        text(&verify)
    );
    let mut fork = Pg::adopt(major, fork_dir, &[]);
    fork.start();
    harness::wait_for(
        Duration::from_secs(60),
        "the fork to stream from walrelay",
        || {
            fork.try_psql("select status from pg_stat_wal_receiver")
                .is_ok_and(|s| s.trim() == "streaming")
        },
    );
    let lsn = write_rows(&primary, "later", 400);
    fork.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(fork.psql("select count(*) from before"), "1000");
    assert_eq!(fork.psql("select count(*) from after"), "300");
    assert_eq!(fork.psql("select count(*) from later"), "400");
    assert!(
        relay.log().contains("serving base backup"),
        "{}",
        relay.log()
    );
}

#[test]
fn server_base_backup_walrelay_backup_pg15() {
    walrelay_backup_then_fork("15");
}

#[test]
fn server_base_backup_walrelay_backup_pg18() {
    walrelay_backup_then_fork("18");
}

/// After a failover: a backup taken on timeline 1 (with `walrelay backup`), then the primary
/// stops and its standby is promoted (walrelay follows timeline 2). `pg_basebackup -h
/// walrelay` still serves the timeline-1 backup (start and stop are on timeline 1 in
/// timeline 2's history), and the fork follows timeline 2 through walrelay and replays what
/// the new primary writes.
#[test]
fn server_base_backup_after_promotion() {
    let major = harness::majors()
        .first()
        .cloned()
        .unwrap_or_else(|| "15".into());
    let t = TestDir::new("srv-bbtli");
    let mut primary = Pg::primary(&major, &[]);
    let s1 = Pg::standby_of(&primary, &major, &primary.conninfo(), &[]);
    let archive = t.subdir("archive");
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        format!(
            "[archive]\nurl = \"file://{}\"\nscan_interval = \"200ms\"\npartial_interval = \"0\"\n",
            archive.display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        s1.port()
    );
    let data = t.subdir("relay");
    let port = harness::free_port();
    let relay = Relay::start_full(&t, &primary, &upstream, &data, port, &["-c", &conf_s], "");
    write_rows(&primary, "t1", 1000);
    let (status, out, err) = harness::walrelay::run_to_end(&[
        "backup",
        "-c",
        &conf_s,
        "--upstream",
        &primary.conninfo(),
        "--wait-wal",
        "60s",
    ]);
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    let lsn = write_rows(&primary, "t2", 500);
    s1.wait_replayed(lsn, Duration::from_secs(30));
    relay.wait_flush(&primary, lsn);

    primary.stop();
    s1.promote();
    let lsn = write_rows(&s1, "t3", 300);
    relay.wait_flush(&s1, lsn);
    let (_, tli, _) = relay.identify(&s1).unwrap();
    assert_eq!(tli, 2);

    let fork_dir = TestDir::new("pg-bbtli-fork");
    let data = fork_dir.join("data");
    let out = basebackup(&s1, &relay, &data, &["-X", "stream", "-R"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let verify = s1
        .install()
        .command("pg_verifybackup")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}",
        text(&verify)
    );
    let mut fork = Pg::adopt(&major, fork_dir, &[]);
    fork.start();
    let lsn = write_rows(&s1, "t4", 200);
    fork.wait_replayed(lsn, Duration::from_secs(60));
    assert_eq!(fork.psql("select count(*) from t3"), "300");
    assert_eq!(fork.psql("select count(*) from t4"), "200");
    harness::wait_for(Duration::from_secs(30), "the fork on timeline 2", || {
        fork.try_psql("select received_tli from pg_stat_wal_receiver")
            .is_ok_and(|s| s.trim() == "2")
    });
    assert!(!relay.log().contains("panicked"));
}

#[test]
fn server_base_backup_tablespace_pg15() {
    with_tablespace("15");
}

#[test]
fn server_base_backup_tablespace_pg18() {
    with_tablespace("18");
}

#[test]
fn server_base_backup_pg14() {
    fork_from_walrelay("14");
}

#[test]
fn server_base_backup_pg15() {
    fork_from_walrelay("15");
}

#[test]
fn server_base_backup_pg18() {
    fork_from_walrelay("18");
}

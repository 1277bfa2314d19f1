//! `walrelay restore`'s unpacking and manifest check against real `pg_basebackup -Ft`
//! output (PostgreSQL 15 and 18, with a tablespace): the restored directory passes the real
//! `pg_verifybackup`, a restored server has the primary's rows, a flipped byte is caught
//! and named, and a tablespace mapping moves the tablespace.

use std::path::Path;
use std::time::Duration;

use walrelay::restore::core::{restore, ArchivePart, DirOpener, FAILED_MARKER};
use walrelay::restore::recovery::{Action, Settings, Target};

use crate::harness::pg::{give_to_server, Pg};
use crate::harness::{majors, TestDir};
use crate::restore_common::{basebackup_tar, cp_restore_command, RestoredPg, FINGERPRINT};

fn parts(bb: &Path) -> Vec<ArchivePart> {
    let mut v = vec![ArchivePart {
        name: "base.tar".into(),
        tablespace_oid: None,
        location: None,
    }];
    for e in std::fs::read_dir(bb).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(oid) = n.strip_suffix(".tar").and_then(|o| o.parse().ok()) {
            v.push(ArchivePart {
                name: n,
                tablespace_oid: Some(oid),
                location: None,
            });
        }
    }
    v
}

/// A primary with table t in a tablespace; returns (primary, its test dir, fingerprint).
fn primary_with_tablespace(major: &str, dir: &TestDir) -> (Pg, String) {
    let pg = Pg::primary(major, &[]);
    let ts = dir.subdir("ts");
    give_to_server(&ts);
    pg.psql(&format!("create tablespace ts location '{}'", ts.display()));
    pg.psql("create table t (a int primary key, b text) tablespace ts");
    pg.psql("insert into t select g, md5(g::text) from generate_series(1, 5000) g");
    let fp = pg.psql(FINGERPRINT);
    (pg, fp)
}

#[test]
fn restore_pg_basebackup_tar_verifies_and_runs() {
    for major in majors() {
        let dir = TestDir::new("restore-unpack");
        let (pg, fp) = primary_with_tablespace(&major, &dir);
        let bb = dir.join("bb");
        basebackup_tar(
            pg.install(),
            pg.port(),
            &bb,
            &["--manifest-checksums=SHA256"],
        );
        // WAL after the backup is replayed from the primary's pg_wal (copied: a stable set)
        pg.switch_wal();
        let wal = dir.subdir("wal");
        for e in std::fs::read_dir(pg.pg_wal()).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), wal.join(e.file_name())).unwrap();
            }
        }
        give_to_server(&wal);

        // 1. restore with the tablespace mapped elsewhere (the primary still uses its own)
        let ts_moved = dir.join("ts-elsewhere");
        let data = dir.join("restored");
        let settings = Settings {
            wal_fetch: cp_restore_command(&wal),
            target: Target::Immediate,
            action: Some(Action::Promote),
            inclusive: None,
            standby: None,
        };
        let manifest = std::fs::read(bb.join("backup_manifest")).unwrap();
        let r = restore(
            &data,
            &parts(&bb),
            Some(&manifest),
            &DirOpener(bb.clone()),
            &[(dir.join("ts"), ts_moved.clone())],
            Some(&settings),
        )
        .unwrap_or_else(|e| panic!("PG {major}: restore: {e}"));
        assert!(r.manifest_checked);
        assert_eq!(r.extra, Vec::<String>::new(), "PG {major}");
        assert_eq!(r.tablespaces.len(), 1);
        assert_eq!(r.tablespaces.values().next().unwrap(), &ts_moved);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(data.join("recovery.signal").is_file());
        let map = std::fs::read_to_string(data.join("tablespace_map")).unwrap();
        assert!(
            map.ends_with(&format!(" {}\n", ts_moved.display())),
            "tablespace_map names the new place: {map}"
        );
        let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("recovery_target = 'immediate'\n"), "{auto}");

        let mut srv = RestoredPg::new(&major, &data, &dir.join("restored.log"));
        srv.start();
        srv.wait_target(Duration::from_secs(120));
        wait_for_promoted(&srv);
        assert_eq!(srv.psql(FINGERPRINT).unwrap(), fp, "PG {major}: rows");
        let loc = srv
            .psql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts'")
            .unwrap();
        assert_eq!(loc, ts_moved.display().to_string());
        drop(srv);

        // 2. the real pg_verifybackup agrees with a restore without a mapping (it checks the
        // tablespace through the pg_tblspc link)
        let data2 = dir.join("restored2");
        let ts_orig = dir.join("ts");
        // the primary still uses ts: restore a second copy under a mapping of its own that
        // keeps tablespace_map unchanged is impossible, so check the base-only directory:
        let r2 = restore(
            &data2,
            &parts(&bb),
            Some(&manifest),
            &DirOpener(bb.clone()),
            &[(ts_orig.clone(), dir.join("ts-copy2"))],
            None,
        )
        .unwrap();
        assert!(r2.manifest_checked);
        // undo the rewrite so that the directory is byte-for-byte the backup
        let orig_map = tar_member(&bb.join("base.tar"), "tablespace_map");
        std::fs::write(data2.join("tablespace_map"), orig_map).unwrap();
        let out = pg
            .install()
            .command("pg_verifybackup")
            .args(["-n", "-e"])
            .arg(&data2)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "PG {major}: pg_verifybackup: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // 3. the target directory must be empty
        let e = restore(
            &data2,
            &parts(&bb),
            Some(&manifest),
            &DirOpener(bb.clone()),
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "target directory \"{}\" exists and is not empty",
                data2.display()
            )
        );
    }
}

fn wait_for_promoted(srv: &RestoredPg) {
    crate::harness::wait_for(Duration::from_secs(60), "promoted", || {
        srv.psql("select pg_is_in_recovery()").as_deref() == Ok("f")
    });
}

/// The bytes of `member` in the tar file at `path`, and its data offset.
fn tar_member_at(path: &Path, member: &str) -> (Vec<u8>, u64) {
    use std::io::Read;
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().trim_start_matches("./") == member {
            let off = e.raw_file_position();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return (v, off);
        }
    }
    panic!("{member} not in {}", path.display());
}

fn tar_member(path: &Path, member: &str) -> Vec<u8> {
    tar_member_at(path, member).0
}

#[test]
fn restore_catches_a_flipped_byte_and_names_the_file() {
    let major = majors().into_iter().next().unwrap();
    let dir = TestDir::new("restore-corrupt");
    let (pg, _) = primary_with_tablespace(&major, &dir);
    for (algo, tablespace) in [("CRC32C", false), ("SHA512", true)] {
        let bb = dir.join(format!("bb-{algo}"));
        basebackup_tar(
            pg.install(),
            pg.port(),
            &bb,
            &[&format!("--manifest-checksums={algo}")],
        );
        // flip one byte inside a file's data (headers stay valid)
        let (archive, member) = if tablespace {
            let p = parts(&bb);
            let ts = p.iter().find(|p| p.tablespace_oid.is_some()).unwrap();
            let tar_path = bb.join(&ts.name);
            let mut ar = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
            let name = ar
                .entries()
                .unwrap()
                .map(|e| e.unwrap())
                .find(|e| e.header().entry_type().is_file() && e.size() > 0)
                .map(|e| e.path().unwrap().to_string_lossy().into_owned())
                .unwrap();
            (ts.name.clone(), name)
        } else {
            ("base.tar".to_string(), "global/pg_control".to_string())
        };
        let tar_path = bb.join(&archive);
        let (_, off) = tar_member_at(&tar_path, &member);
        let mut bytes = std::fs::read(&tar_path).unwrap();
        bytes[off as usize + 100] ^= 0x01;
        std::fs::write(&tar_path, bytes).unwrap();

        let data = dir.join(format!("restored-{algo}"));
        let manifest = std::fs::read(bb.join("backup_manifest")).unwrap();
        let settings = Settings {
            wal_fetch: vec!["false".into()],
            target: Target::Immediate,
            action: None,
            inclusive: None,
            standby: None,
        };
        let e = restore(
            &data,
            &parts(&bb),
            Some(&manifest),
            &DirOpener(bb.clone()),
            &[(dir.join("ts"), dir.join(format!("ts-{algo}")))],
            Some(&settings),
        )
        .unwrap_err()
        .to_string();
        let manifest_path = if tablespace {
            let oid = archive.trim_end_matches(".tar");
            format!("pg_tblspc/{oid}/{member}")
        } else {
            member.clone()
        };
        assert_eq!(
            e,
            format!(
                "the backup does not match its manifest: checksum mismatch for file \"{manifest_path}\""
            ),
            "{algo}"
        );
        assert!(!data.join("recovery.signal").exists(), "no signal file");
        let marker = std::fs::read_to_string(data.join(FAILED_MARKER)).unwrap();
        assert!(marker.contains(&manifest_path), "{marker}");
    }
    // a tampered manifest is refused before anything is trusted
    let bb = dir.join("bb-CRC32C");
    let mut m = std::fs::read_to_string(bb.join("backup_manifest")).unwrap();
    m = m.replacen("\"Size\": ", "\"Size\": 1", 1);
    let e = restore(
        &dir.join("restored-badmanifest"),
        &parts(&bb),
        Some(m.as_bytes()),
        &DirOpener(bb.clone()),
        &[],
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("backup manifest checksum mismatch: expected "),
        "{e}"
    );
}

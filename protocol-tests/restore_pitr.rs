//! `walrelay restore` from backups taken with `walrelay backup` into walrelay's archive,
//! recovering with `walrelay wal-fetch` on real PostgreSQL 15 and 18:
//! - backup → more writes → DROP TABLE → restore to just before the drop by time, by
//!   restore point name and by xid (from `walrelay xacts`): the row count and md5 of the
//!   table equal the primary's at that moment (promoted: paused just before the drop's
//!   commit, the replayed AccessExclusiveLock would block reading the table);
//! - a backup whose first WAL segment is deleted from the archive: restore refuses with
//!   the exact message; a flipped byte in a stored base.tar is caught.

use std::time::Duration;

use walrelay::restore::core::FAILED_MARKER;

use crate::harness::majors;
use crate::restore_common::{Env, RestoredPg, FINGERPRINT};

fn restore_and_check(env: &Env, major: &str, name: &str, args: &[&str], want: &str) {
    let dir = env.t.join(format!("restored-{name}"));
    let mut a = vec![
        "restore",
        "-c",
        env.cfg.to_str().unwrap(),
        "-D",
        dir.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    let (code, out, err) = env.walrelay(&a);
    assert_eq!(code, 0, "PG {major} {name}: walrelay restore: {out}{err}");
    assert!(
        out.contains("verified against its backup manifest"),
        "{out}"
    );
    assert!(dir.join("recovery.signal").is_file());
    let mut srv = RestoredPg::new(major, &dir, &env.t.join(format!("restored-{name}.log")));
    srv.start();
    srv.wait_target(Duration::from_secs(180));
    let got = srv.psql(FINGERPRINT);
    assert_eq!(
        got.as_deref(),
        Ok(want),
        "PG {major} {name}: the table as it was before the drop\n--- log ---\n{}",
        srv.log_text()
    );
    // recovery went through walrelay wal-fetch
    assert!(
        srv.log_text().contains("restored log file"),
        "{}",
        srv.log_text()
    );
}

#[test]
fn restore_to_just_before_a_drop_by_time_name_and_xid() {
    for major in majors() {
        let env = Env::new(&major, "");
        let p = &env.primary;
        p.psql("create table t (a int primary key, b text)");
        p.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
        let id = env.backup();
        // more writes after the backup
        p.psql("insert into t select g, md5(g::text) from generate_series(1001, 3000) g");
        p.psql("update t set b = 'changed' where a % 7 = 0");
        let want = p.psql(FINGERPRINT);
        let t_before = p.psql("select clock_timestamp()");
        p.psql("select pg_create_restore_point('before_drop')");
        std::thread::sleep(Duration::from_millis(1100));
        let out = p.psql("begin; drop table t; select txid_current() % 4294967296; commit;");
        let drop_xid: String = out
            .lines()
            .rfind(|l| l.trim().parse::<u64>().is_ok())
            .unwrap()
            .trim()
            .to_string();
        p.psql("create table later (x int); insert into later values (1)");
        env.archive_current();
        // the operator finds the drop with walrelay xacts
        let (code, xacts, err) = env.walrelay(&[
            "xacts",
            "-D",
            env.relay.data.to_str().unwrap(),
            "--drops-only",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(xacts.contains(&format!(" {drop_xid} ")), "{xacts}");

        restore_and_check(
            &env,
            &major,
            "time",
            &["--target-time", &t_before, "--target-action", "promote"],
            &want,
        );
        restore_and_check(
            &env,
            &major,
            "name",
            &[
                "--backup",
                &id,
                "--target-name",
                "before_drop",
                "--target-action",
                "promote",
            ],
            &want,
        );
        restore_and_check(
            &env,
            &major,
            "xid",
            &[
                "--target-xid",
                &drop_xid,
                "--target-inclusive",
                "false",
                "--target-action",
                "promote",
            ],
            &want,
        );
    }
}

#[test]
fn restore_refuses_an_incomplete_backup_and_catches_corruption() {
    let major = majors().into_iter().next().unwrap();
    let env = Env::new(&major, "");
    let p = &env.primary;
    p.psql("create table t (a int primary key, b text)");
    p.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
    let id = env.backup();
    let cfg = env.cfg.to_str().unwrap();

    // a flipped byte in the stored base.tar (uncompressed, unencrypted): caught
    let base = env.backup_dir(&id).join("base.tar");
    let original = std::fs::read(&base).unwrap();
    let mut bad = original.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&base, &bad).unwrap();
    let dir = env.t.join("restored-corrupt");
    let (code, out, err) = env.walrelay(&["restore", "-c", cfg, "-D", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("walrelay restore: base.tar: could not read the archive: ")
            && err.contains("does not match backup.json"),
        "{err}"
    );
    assert!(dir.join(FAILED_MARKER).is_file());
    assert!(!dir.join("recovery.signal").exists());
    std::fs::write(&base, &original).unwrap();

    // the backup's first WAL segment deleted from the archive: incomplete, refused
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.backup_dir(&id).join("backup.json")).unwrap())
            .unwrap();
    let start: walrelay::Lsn = meta["start_lsn"].as_str().unwrap().parse().unwrap();
    let seg = walrelay::lsn::segment_file_name(1, start.segno(16 << 20), 16 << 20);
    std::fs::remove_file(env.wal_dir().join(&seg)).unwrap();
    let (code, out, _) = env.walrelay(&["backups", "-c", cfg]);
    assert!(
        out.contains(&seg),
        "backups names the missing segment: {out} ({code})"
    );
    let dir = env.t.join("restored-incomplete");
    let (code, out, err) = env.walrelay(&["restore", "-c", cfg, "-D", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "walrelay restore: backup {id} is incomplete: the archive is missing WAL segment {seg} (use --force to restore it anyway)"
        )
    );
    assert!(!dir.exists(), "nothing restored");
    let (code, _, err) = env.walrelay(&[
        "restore",
        "-c",
        cfg,
        "--backup",
        &id,
        "-D",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("missing WAL segment {seg}")), "{err}");
    // --force restores it anyway (PostgreSQL will not get past the hole)
    let (code, out, err) =
        env.walrelay(&["restore", "-c", cfg, "--force", "-D", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("although the archive is missing {seg}")),
        "{out}"
    );
}

//! `walrelay drill` end to end on real PostgreSQL: green with its JSON report (the check
//! query's answer is the primary's, the working directory is gone afterwards), as a
//! standby streaming from walrelay, and red with the right exit codes when the archive is
//! broken (its first WAL segment deleted: CRITICAL) or no binaries fit (UNKNOWN).
//! As root the server runs as a dedicated user (`--run-as`), as in production.

use std::process::{Command, Stdio};

use crate::harness::{infra_dir, majors, walrelay::bin};
use crate::restore_common::Env;

const DRILL_USER: &str = "walrelaypg";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

fn ensure_user() {
    let ok = Command::new("id")
        .args(["-u", DRILL_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/bin/sh",
                DRILL_USER,
            ])
            .status();
    }
}

/// `walrelay drill ARGS` with the binaries of PostgreSQL `major`: (code, stdout, stderr).
fn drill(env: &Env, major: &str, args: &[&str]) -> (i32, String, String) {
    let pg = infra_dir().join("pg").join(major);
    let mut c = Command::new(bin());
    c.arg("drill")
        .args(["-c", env.cfg.to_str().unwrap()])
        .arg("--pg-bin")
        .arg(pg.join("bin"))
        .args(["--timeout", "3m"]);
    if pg.join("lib").join("libpq.so.5").exists() {
        c.env("LD_LIBRARY_PATH", pg.join("lib"));
    }
    if is_root() {
        ensure_user();
        c.args(["--run-as", DRILL_USER]);
    }
    c.args(args).stdin(Stdio::null());
    let out = c.output().expect("run walrelay drill");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn drill_green_with_report_then_red_when_the_archive_is_broken() {
    for major in majors() {
        let env = Env::new(&major, "");
        let p = &env.primary;
        p.psql("create table t (a int primary key, b text)");
        p.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
        let id = env.backup();
        p.psql("insert into t select g, md5(g::text) from generate_series(1001, 3000) g");
        env.archive_current();
        let work = env.t.join("drill");

        // green: replay everything archived, check query, JSON report, directory removed
        let (code, out, err) = drill(
            &env,
            &major,
            &[
                "--json",
                "--workdir",
                work.to_str().unwrap(),
                "--check-query",
                "select count(*) from t",
            ],
        );
        assert_eq!(code, 0, "PG {major}: drill: {out}{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["backup_id"], id.as_str());
        assert_eq!(r["check_result"], "3000", "{r}");
        let phases: Vec<&str> = r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(phases, ["restore", "start", "replay", "check", "stop"]);
        assert!(r["replay_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["replay_gb_per_hour"].as_f64().unwrap() > 0.0, "{r}");
        assert!(!work.exists(), "the drill directory is removed");

        // green as a standby of walrelay: pg_stat_wal_receiver says streaming
        let (code, out, err) = drill(&env, &major, &["--standby", "--nagios"]);
        assert_eq!(code, 0, "PG {major}: standby drill: {out}{err}");
        assert!(
            out.starts_with(&format!("DRILL OK - backup {id} ")),
            "{out}"
        );

        // red: the backup's first segment deleted from the archive
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.backup_dir(&id).join("backup.json")).unwrap(),
        )
        .unwrap();
        let start: walrelay::Lsn = meta["start_lsn"].as_str().unwrap().parse().unwrap();
        let seg = walrelay::lsn::segment_file_name(1, start.segno(16 << 20), 16 << 20);
        let seg_path = env.wal_dir().join(&seg);
        let saved = std::fs::read(&seg_path).unwrap();
        std::fs::remove_file(&seg_path).unwrap();
        let (code, out, _) = drill(&env, &major, &["--nagios"]);
        assert_eq!(code, 2, "CRITICAL: {out}");
        assert!(
            out.starts_with("DRILL CRITICAL - restore failed")
                && out.contains(&format!(
                    "backup {id} is incomplete: the archive is missing WAL segment {seg}"
                )),
            "{out}"
        );
        let (code, out, _) = drill(&env, &major, &["--json"]);
        assert_eq!(code, 1);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["ok"], false);
        assert_eq!(r["failed_phase"], "restore");
        std::fs::write(&seg_path, saved).unwrap();

        // unknown: binaries of another major
        let other = if major == "15" { "18" } else { "15" };
        let (code, out, _) = drill(&env, other, &["--nagios"]);
        assert_eq!(code, 3, "UNKNOWN: {out}");
        assert!(out.starts_with("DRILL UNKNOWN - setup failed"), "{out}");
    }
}

//! Archives configured from the environment alone, the start-up probe, and `wal-fetch`
//! exit statuses as a real PostgreSQL 15 recovery acts on them.
//!
//! - `env_only_s3_recovery_stops_on_unreachable_archive`: `walrelay run --archive s3://…`
//!   with only `AWS_*` variables archives to SeaweedFS; a recovery (recovery.signal) whose
//!   `wal-fetch` finds SeaweedFS stopped exits FATAL instead of ending early and promoting;
//!   with SeaweedFS back it replays everything archived; a second recovery with
//!   `wal-fetch --partial` reaches the last committed row, which is only in a partial
//!   snapshot.
//! - `env_only_azure_run_archives`: the same `run` against azurite with only `AZURE_*`.
//! - `run_refuses_missing_bucket_and_credentials`: the start-up probe's messages.
use std::process::{Command, Stdio};
use std::time::Duration;

use walrelay::lsn::segment_file_name;

use crate::harness::pg::{conf_quote, give_to_server, Pg};
use crate::harness::s3::S3Server;
use crate::harness::walrelay::{bin, Walrelay};
use crate::harness::{wait_for, TestDir};

const SEG: u64 = 16 << 20;

/// Runs `walrelay ARGS` with exactly `env` added (and no inherited `AWS_*`/`AZURE_*`):
/// (exit code, stderr).
fn walrelay_env(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("AZURE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run walrelay");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn generate(pg: &Pg, rounds: usize) {
    for _ in 0..rounds {
        pg.psql("insert into t select g, repeat('y', 300) from generate_series(1, 3000) g");
        pg.switch_wal();
    }
}

/// Turns a prepared standby into a targeted recovery (recovery.signal: promote at the end
/// of the archive) with `restore_command`.
fn as_recovery(pg: &mut Pg, restore_command: &str) {
    let data = pg.datadir().to_path_buf();
    let _ = std::fs::remove_file(data.join("standby.signal"));
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    give_to_server(&data.join("recovery.signal"));
    pg.append_conf(&format!(
        "restore_command = {}\n",
        conf_quote(restore_command)
    ));
}

fn env_prefix(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect::<String>()
}

#[test]
fn env_only_s3_recovery_stops_on_unreachable_archive() {
    let primary = Pg::primary("15", &[]);
    primary.psql("create table t(x int, pad text)");
    let mut rec = Pg::standby_prepared(&primary, "15", "", &[]);
    let mut pitr = Pg::standby_prepared(&primary, "15", "", &[]);
    let mut s3 = S3Server::start();
    let env: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_BUCKET")
        .collect();
    let url = format!("s3://{}/envonly", s3.bucket());
    let dir = TestDir::new("archive-env");
    let conf = dir.join("walrelay.toml");
    // no [archive.s3] section: endpoint, keys, region and allow_http come from AWS_*
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"{}\"\n[upstream]\nstatus_interval = \"1s\"\n\
             [archive]\nscan_interval = \"500ms\"\npartial_interval = \"1s\"\n\
             retry_min = \"200ms\"\nretry_max = \"1s\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &dir.join("walrelay.log"),
        &[
            "run",
            "-c",
            &conf_s,
            "--upstream",
            &conninfo,
            "--archive",
            &url,
        ],
        &env_ref,
    );
    generate(&primary, 3);
    let target = primary.current_lsn();
    let last_full = segment_file_name(1, target.segno(SEG) - 1, SEG);
    let probe_dest = dir.join("fetched");
    let probe_s = probe_dest.display().to_string();
    wait_for(
        Duration::from_secs(90),
        "segments archived via AWS_* only",
        || {
            walrelay_env(
                &["wal-fetch", "--archive", &url, &last_full, &probe_s],
                &env,
            )
            .0 == Some(0)
        },
    );
    assert!(
        !w.log().contains("builder error"),
        "env-only S3 hit the client-options reset:\n{}",
        w.log()
    );
    let expected_full = primary.psql("select count(*), sum(x) from t");

    // the last committed row lives only in the open segment (partial snapshots)
    primary.psql("insert into t values (-7, 'last')");
    let end = primary.current_lsn();
    let expected_last = primary.psql("select count(*), sum(x) from t");
    assert_ne!(expected_full, expected_last);
    let open_seg = segment_file_name(1, end.segno(SEG), SEG);
    let (code, err) = walrelay_env(&["wal-fetch", "--archive", &url, &open_seg, &probe_s], &env);
    assert_eq!(code, Some(1), "no complete segment: absent. stderr: {err}");
    assert!(err.is_empty(), "absent is silent: {err}");
    wait_for(
        Duration::from_secs(60),
        "a snapshot covering the last row",
        || {
            let (code, err) = walrelay_env(
                &[
                    "wal-fetch",
                    "--partial",
                    "--archive",
                    &url,
                    &open_seg,
                    &probe_s,
                ],
                &env,
            );
            code == Some(0)
                && err
                    .split("partial snapshot (")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= end.segment_offset(SEG))
        },
    );
    assert_eq!(std::fs::metadata(&probe_dest).unwrap().len(), SEG);

    // the archive goes away: recovery must stop, not end early and promote
    s3.stop();
    let fetch = format!(
        "{}{} wal-fetch --archive {url} --retry-timeout 3s %f %p",
        env_prefix(&env),
        bin().display()
    );
    as_recovery(&mut rec, &format!("env {fetch}"));
    rec.start_nowait();
    wait_for(
        Duration::from_secs(90),
        "recovery to stop on the unreachable archive",
        || rec.log().contains("database system is shut down"),
    );
    wait_for(Duration::from_secs(30), "the postmaster to exit", || {
        !rec.postmaster_alive()
    });
    let log = rec.log();
    assert!(
        log.contains("FATAL:  could not restore file"),
        "no FATAL from restore_command:\n{log}"
    );
    assert!(
        log.contains("exiting with status 255 so that PostgreSQL stops"),
        "wal-fetch did not say why:\n{log}"
    );
    assert!(
        !log.contains("selected new timeline ID"),
        "recovery ended early and promoted:\n{log}"
    );

    // the archive is back: the same recovery completes with every archived row
    s3.start_again();
    rec.start();
    wait_for(Duration::from_secs(90), "recovery to complete", || {
        rec.try_psql("select pg_is_in_recovery()").as_deref() == Ok("f")
    });
    assert_eq!(rec.psql("select count(*), sum(x) from t"), expected_full);

    // PITR to the end of WAL: --partial delivers the newest snapshot of the open segment
    let fetch_partial = format!(
        "env {}{} wal-fetch --partial --archive {url} %f %p",
        env_prefix(&env),
        bin().display()
    );
    as_recovery(&mut pitr, &fetch_partial);
    pitr.start();
    wait_for(Duration::from_secs(90), "PITR to complete", || {
        pitr.try_psql("select pg_is_in_recovery()").as_deref() == Ok("f")
    });
    assert_eq!(pitr.psql("select count(*), sum(x) from t"), expected_last);
    assert!(
        pitr.log().contains("restored from a partial snapshot"),
        "{}",
        pitr.log()
    );
    w.stop();
}

#[test]
fn env_only_azure_run_archives() {
    let az = match crate::harness::azurite::Azurite::start() {
        Ok(a) => a,
        Err(reason) => panic!("azurite is required for this test: {reason}"),
    };
    let primary = Pg::primary("15", &[]);
    primary.psql("create table t(x int, pad text)");
    let env: Vec<(String, String)> = vec![
        (
            "AZURE_STORAGE_ACCOUNT_NAME".into(),
            "devstoreaccount1".into(),
        ),
        (
            "AZURE_STORAGE_ACCOUNT_KEY".into(),
            crate::harness::azurite::ACCOUNT_KEY.into(),
        ),
        ("AZURE_STORAGE_ENDPOINT".into(), az.endpoint()),
        ("AZURE_ALLOW_HTTP".into(), "true".into()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let url = format!("az://{}/envonly", az.container());
    let dir = TestDir::new("archive-env-az");
    let data = dir.join("data").display().to_string();
    let conninfo = primary.conninfo();
    let mut w = Walrelay::spawn_with(
        &dir.join("walrelay.log"),
        &[
            "run",
            "-D",
            &data,
            "--upstream",
            &conninfo,
            "--archive",
            &url,
        ],
        &env_ref,
    );
    generate(&primary, 2);
    let target = primary.current_lsn();
    let last_full = segment_file_name(1, target.segno(SEG) - 1, SEG);
    let dest = dir.join("fetched");
    let dest_s = dest.display().to_string();
    wait_for(
        Duration::from_secs(90),
        "a segment archived via AZURE_* only",
        || walrelay_env(&["wal-fetch", "--archive", &url, &last_full, &dest_s], &env).0 == Some(0),
    );
    // byte-identical to the primary's segment
    let orig = std::fs::read(primary.pg_wal().join(&last_full)).unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == orig,
        "restored segment differs"
    );
    w.stop();
    drop(az);
}

#[test]
fn run_refuses_missing_bucket_and_credentials() {
    let s3 = S3Server::start();
    let all: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_BUCKET")
        .collect();
    let dir = TestDir::new("archive-probe");
    let data = dir.join("data").display().to_string();
    // the probe runs before any connection upstream: a dead upstream is never reached
    let args = |url: &str| -> Vec<String> {
        [
            "run",
            "-D",
            &data,
            "--upstream",
            "host=127.0.0.1 port=1",
            "--archive",
            url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |url: &str, env: &[(String, String)]| {
        let a = args(url);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        walrelay_env(&a, env)
    };

    let (code, err) = run("s3://no-such-bucket/p", &all);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "walrelay: error: archive s3://no-such-bucket/p is not usable: could not list \"p\""
        ),
        "{err}"
    );

    let no_keys: Vec<(String, String)> = all
        .iter()
        .filter(|(k, _)| !k.contains("ACCESS_KEY"))
        .cloned()
        .collect();
    let url = format!("s3://{}/p", s3.bucket());
    let (code, err) = run(&url, &no_keys);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("walrelay: error: archive {url} is not usable: ")),
        "{err}"
    );
    assert!(
        err.contains(
            "no S3 credentials are configured (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
        "{err}"
    );

    // a wrong key: the write (or list) is refused, start-up stops
    let mut bad = all.clone();
    for (k, v) in bad.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong-secret".into();
        }
    }
    let (code, err) = run(&url, &bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "walrelay: error: archive {url} is not usable: could not"
        )),
        "{err}"
    );

    // the same archive with the right keys passes the probe and leaves no probe object
    let (code, err) = walrelay_env(&["verify", "--archive", &url], &all);
    assert_ne!(code, Some(0), "empty archive: nothing to verify ({err})");
    assert!(!err.contains("not usable"), "{err}");

    // wal-fetch on a missing file:// archive directory (an unmounted share): not "absent"
    let missing = format!("file://{}/unmounted/archive", dir.path().display());
    let dest = dir.join("x").display().to_string();
    let (code, err) = walrelay_env(
        &[
            "wal-fetch",
            "--archive",
            &missing,
            "--retry-timeout",
            "1s",
            "000000010000000000000001",
            &dest,
        ],
        &[],
    );
    assert_eq!(code, Some(255), "{err}");
    assert!(
        err.contains("does not exist (an unmounted share?)")
            && err.contains("exiting with status 255"),
        "{err}"
    );
}

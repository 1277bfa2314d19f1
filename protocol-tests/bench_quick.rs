//! Every benchmark in `bench/` run in its `--quick` mode (seconds, tiny inputs), so that none
//! rots. Each test checks that the script exited 0 and produced all of its figures as
//! `RESULT <bench> <variant> key=value` lines with finite numbers: never how fast anything
//! was (timings are measured in `bench/` and recorded in docs/benchmarks.md, not asserted).
//!
//! The scripts start their own real servers (PostgreSQL in a user namespace when root,
//! SeaweedFS for the archive) and use the walrelay binary under test.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::harness;

/// (bench, variant) -> key -> value, parsed from the RESULT lines in `text`.
fn parse_results(text: &str) -> HashMap<(String, String), HashMap<String, f64>> {
    let mut out: HashMap<(String, String), HashMap<String, f64>> = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("RESULT") {
            continue;
        }
        let (Some(bench), Some(variant)) = (words.next(), words.next()) else {
            panic!("malformed RESULT line: {line:?}");
        };
        let entry = out
            .entry((bench.to_string(), variant.to_string()))
            .or_default();
        for kv in words {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("malformed RESULT field {kv:?} in {line:?}"));
            let v: f64 = v
                .parse()
                .unwrap_or_else(|_| panic!("RESULT field {kv:?} is not a number in {line:?}"));
            entry.insert(k.to_string(), v);
        }
    }
    out
}

/// Runs `bench/<script> --quick` and checks that every `(variant, key)` in `expect` was
/// reported for `bench` with a finite, non-negative value (and a positive one for keys listed
/// in `positive`).
fn run_quick(script: &str, bench: &str, expect: &[(&str, &[&str])], positive: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let port = harness::free_port_with_offset(19);
    let out = Command::new("bash")
        .arg(root.join("bench").join(script))
        .arg("--quick")
        .env("WALRELAY_BIN", env!("CARGO_BIN_EXE_walrelay"))
        .env("BENCH_RESULTS", &results)
        .env("BENCH_PORT", port.to_string())
        .env("TMPDIR", dir.path())
        .current_dir(&root)
        .output()
        .expect("run bench script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/{script} --quick failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let got = parse_results(&text);
    for (variant, keys) in expect {
        let Some(fields) = got.get(&(bench.to_string(), variant.to_string())) else {
            panic!(
                "bench/{script} --quick reported no RESULT for {bench} {variant}; got {:?}\n--- stdout\n{stdout}",
                got.keys().collect::<Vec<_>>()
            );
        };
        for key in *keys {
            let Some(v) = fields.get(*key) else {
                panic!("bench/{script}: {bench} {variant} lacks {key}; has {fields:?}");
            };
            assert!(
                v.is_finite() && *v >= 0.0,
                "bench/{script}: {bench} {variant} {key}={v}"
            );
            if positive.contains(key) {
                assert!(*v > 0.0, "bench/{script}: {bench} {variant} {key}={v}");
            }
        }
    }
}

#[test]
fn parse_results_reads_fields_and_rejects_nothing_silently() {
    let r = parse_results("noise\nRESULT b v mbps=1.5 x=2\nRESULT b w y=0\n");
    assert_eq!(r[&("b".into(), "v".into())]["mbps"], 1.5);
    assert_eq!(r[&("b".into(), "w".into())]["y"], 0.0);
    assert!(std::panic::catch_unwind(|| parse_results("RESULT b v mbps=fast")).is_err());
}

#[test]
fn bench_ingest_quick() {
    let k: &[&str] = &["mbps", "cpu_s_per_gb", "rss_kb", "wall_s"];
    run_quick(
        "ingest.sh",
        "ingest",
        &[
            ("pg_receivewal", k),
            ("walrelay", k),
            ("pg_receivewal-sync", k),
            ("walrelay-sync", k),
        ],
        &["mbps", "cpu_s_per_gb", "rss_kb"],
    );
}

#[test]
fn bench_fast_source_quick() {
    let k: &[&str] = &["mbps", "cpu_s_per_gb", "rss_kb", "server_cpu_s_per_gb"];
    run_quick(
        "fast-source.sh",
        "fast-source",
        &[("pg_receivewal", k), ("walrelay", k)],
        &["mbps", "cpu_s_per_gb", "rss_kb"],
    );
}

#[test]
fn bench_sync_commit_quick() {
    let k: &[&str] = &["tps", "lat_p50_ms", "lat_p99_ms"];
    run_quick(
        "sync-commit.sh",
        "sync-commit",
        &[("walrelay", k), ("pg_receivewal", k)],
        &["tps", "lat_p50_ms", "lat_p99_ms"],
    );
}

#[test]
fn bench_fanout_quick() {
    let direct: &[&str] = &["total_mbps", "client_mbps_min", "primary_cpu_s"];
    let relay: &[&str] = &[
        "total_mbps",
        "client_mbps_min",
        "primary_cpu_s",
        "walrelay_cpu_s",
        "walrelay_rss_kb",
    ];
    run_quick(
        "fanout.sh",
        "fanout",
        &[
            ("direct-1", direct),
            ("walrelay-1", relay),
            ("direct-3", direct),
            ("walrelay-3", relay),
        ],
        &["total_mbps", "client_mbps_min", "walrelay_rss_kb"],
    );
}

#[test]
fn bench_latency_quick() {
    let k: &[&str] = &["p50_ms", "p99_ms", "samples"];
    run_quick(
        "latency.sh",
        "latency",
        &[("direct", k), ("walrelay", k)],
        &["p50_ms", "p99_ms", "samples"],
    );
}

#[test]
fn bench_archive_quick() {
    let k: &[&str] = &["mbps"];
    run_quick("archive.sh", "archive", &[("c1", k), ("c4", k)], &["mbps"]);
}

#[test]
fn bench_archive_lag_quick() {
    let k: &[&str] = &["wal_mb", "lag_max_mb", "lag_mean_mb", "catchup_s", "rss_kb"];
    run_quick(
        "archive-lag.sh",
        "archive-lag",
        &[("bulk", k), ("pgbench", k)],
        &["wal_mb", "rss_kb"],
    );
}

#[test]
fn bench_memory_quick() {
    let k: &[&str] = &["hwm_kb", "cpu_s", "wal_mb"];
    run_quick(
        "memory.sh",
        "memory",
        &[("file-3", k)],
        &["hwm_kb", "wal_mb"],
    );
}

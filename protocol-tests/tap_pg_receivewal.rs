//! Outside judge for issue 10: PostgreSQL's own `src/bin/pg_basebackup/t/020_pg_receivewal.pl`,
//! UNMODIFIED, run with `prove` against walrelay installed as `pg_receivewal` (a symlink named
//! `pg_receivewal` in a directory first in PATH; every other PostgreSQL tool is the real one).
//!
//! The test and PostgreSQL's Perl framework (`src/test/perl`) come from Debian's source package
//! of the same version as the server binaries, unpacked by `scripts/test-infra.sh` under
//! `$WALRELAY_INFRA/tap/<major>`. The environment is what PostgreSQL's `make installcheck`
//! (`prove_installcheck` in `src/Makefile.global`) sets: run from the test's source directory,
//! `-I src/test/perl -I .`, `PG_REGRESS`, `TESTDIR` (PG 15) or `TESTDATADIR` + `TESTLOGDIR`
//! (PG 18), and pg_basebackup's `GZIP_PROGRAM`, `LZ4`, `TAR`. PostgreSQL refuses root, so prove
//! runs as the harness's non-root user ([`pg::run_as`]).
//!
//! Owns: a per-run temporary directory (the PATH directory and the test's `tmp_check`). Asserts
//! prove's verdict: a plan, every subtest `ok`, exit 0. On failure it prints the failing
//! subtests with their diagnostics and the tails of the framework's logs (`regress_log_*`, the
//! server logs).
//!
//! `tap_pg_receivewal_real_*` (ignored by default, run with `-- --ignored`) run the same
//! harness with the REAL pg_receivewal of that version: they prove that the harness and the
//! environment are right, so a failure of the walrelay variant is walrelay's.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::pg::{command_as_server, give_to_server, run_as, PgInstall, RunAs};
use crate::harness::{self, read_lossy, set_mode, TestDir};

/// How long one prove run may take before it is killed (the real pg_receivewal needs ~3 s).
const PROVE_TIMEOUT: Duration = Duration::from_secs(600);

/// One subtest line of the TAP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtest {
    pub number: u32,
    pub ok: bool,
    pub name: String,
}

/// What one prove run produced.
#[derive(Debug)]
pub struct TapRun {
    pub major: String,
    pub success: bool,
    pub exit: String,
    pub plan: Option<u32>,
    pub subtests: Vec<Subtest>,
    /// prove's stdout and stderr, interleaved.
    pub output: String,
    pub log_dir: PathBuf,
    /// What the `pg_receivewal` first in PATH answered to `--version` (proves which one ran).
    pub version: String,
}

impl TapRun {
    pub fn failed(&self) -> Vec<&Subtest> {
        self.subtests.iter().filter(|s| !s.ok).collect()
    }

    pub fn passed(&self) -> usize {
        self.subtests.iter().filter(|s| s.ok).count()
    }

    /// Everything a reader needs to see why it failed.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "PG {} ({}): prove {}; plan {:?}; {} of {} subtests run passed\n",
            self.major,
            self.version,
            self.exit,
            self.plan,
            self.passed(),
            self.subtests.len()
        );
        for f in self.failed() {
            s.push_str(&format!("  not ok {} - {}\n", f.number, f.name));
        }
        s.push_str("---- prove output ----\n");
        s.push_str(&self.output);
        s.push_str(&log_tails(&self.log_dir, 80));
        s
    }
}

/// Parses `prove -v` output: `ok N - name` / `not ok N - name` lines and the `1..N` plan.
pub fn parse_tap(output: &str) -> (Vec<Subtest>, Option<u32>) {
    let mut subtests = Vec::new();
    let mut plan = None;
    for line in output.lines() {
        if let Some(n) = line.strip_prefix("1..") {
            if let Ok(n) = n.trim().parse() {
                plan = Some(n);
            }
            continue;
        }
        let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else {
            continue;
        };
        let (num, name) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(number) = num.parse() else { continue };
        let name = name.strip_prefix("- ").unwrap_or(name).to_string();
        // prove -v repeats failed lines in its summary; keep the first occurrence.
        if !subtests.iter().any(|s: &Subtest| s.number == number) {
            subtests.push(Subtest { number, ok, name });
        }
    }
    (subtests, plan)
}

/// The last `n` lines of every log file the framework wrote under `dir`.
fn log_tails(dir: &Path, n: usize) -> String {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut s = String::new();
    for f in files {
        let text = read_lossy(&f);
        let lines: Vec<&str> = text.lines().collect();
        s.push_str(&format!(
            "---- {} (last {} lines) ----\n",
            f.display(),
            n.min(lines.len())
        ));
        s.push_str(&lines[lines.len().saturating_sub(n)..].join("\n"));
        s.push('\n');
    }
    s
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Where test-infra.sh unpacked PostgreSQL's test sources for `major`.
pub fn tap_root(major: &str) -> PathBuf {
    let root = harness::infra_dir().join("tap").join(major);
    assert!(
        root.join("src/bin/pg_basebackup/t/020_pg_receivewal.pl")
            .is_file()
            && root
                .join("src/test/perl/PostgreSQL/Test/Cluster.pm")
                .is_file(),
        "PostgreSQL {major}'s TAP sources are not under {} (run scripts/test-infra.sh)",
        root.display()
    );
    root
}

/// Runs `t/020_pg_receivewal.pl` of `major` with `receivewal` installed as `pg_receivewal`.
pub fn run_020(major: &str, receivewal: &Path, dir: &TestDir) -> TapRun {
    let install = PgInstall::get(major);
    let src = tap_root(major);
    let bindir = dir.subdir("bin");
    let link = bindir.join("pg_receivewal");
    match run_as() {
        // a dedicated user may not reach the build directory: give it its own copy
        RunAs::User(_) => {
            std::fs::copy(receivewal, &link).expect("copy pg_receivewal");
            set_mode(&link, 0o755);
        }
        _ => std::os::unix::fs::symlink(receivewal, &link).expect("symlink pg_receivewal"),
    }
    // TESTDIR (15) holds tmp_check/; TESTDATADIR/TESTLOGDIR (18) are used as they are.
    let testdir = dir.subdir("testdir");
    let datadir = dir.subdir("testdir/tmp_check");
    let logdir = dir.subdir("testdir/tmp_check/log");
    give_to_server(dir.path());
    let mut version_cmd = Command::new(&link);
    version_cmd.arg("--version");
    if let Some(lib) = install.lib_dir() {
        version_cmd.env("LD_LIBRARY_PATH", lib);
    }
    let version = version_cmd
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("cannot run {}: {e}", link.display()));

    let pg_bin = install.root.join("bin");
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        bindir.display(),
        pg_bin.display()
    );
    let pg_regress = install.root.join("lib/pgxs/src/test/regress/pg_regress");
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("HOME".into(), testdir.display().to_string()),
        ("LANG".into(), "C".into()),
        ("PG_REGRESS".into(), pg_regress.display().to_string()),
        ("GZIP_PROGRAM".into(), "gzip".into()),
        ("LZ4".into(), "lz4".into()),
        ("TAR".into(), "tar".into()),
        // bounds every wait of the framework (default 180 s) so a hang fails in time
        ("PG_TEST_TIMEOUT_DEFAULT".into(), "60".into()),
    ];
    if major == "15" {
        env.push(("TESTDIR".into(), testdir.display().to_string()));
    } else {
        env.push(("TESTDATADIR".into(), datadir.display().to_string()));
        env.push(("TESTLOGDIR".into(), logdir.display().to_string()));
    }
    if let Some(lib) = install.lib_dir() {
        env.push(("LD_LIBRARY_PATH".into(), lib.display().to_string()));
    }

    // the same command line as `make installcheck`, run from the test's source directory
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(
        [
            "prove",
            "-v",
            "-I",
            "../../../src/test/perl/",
            "-I",
            ".",
            "t/020_pg_receivewal.pl",
        ]
        .map(String::from),
    );
    let mut cmd = command_as_server(&argv);
    let out_path = dir.join("prove.out");
    let out = std::fs::File::create(&out_path).expect("create prove.out");
    let err = out.try_clone().expect("clone fd");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir(src.join("src/bin/pg_basebackup"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = cmd.spawn().expect("spawn prove");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait prove") {
            break Some(s);
        }
        if start.elapsed() > PROVE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = read_lossy(&out_path);
    let (subtests, plan) = parse_tap(&output);
    TapRun {
        major: major.to_string(),
        success: status.is_some_and(|s| s.success()),
        exit: match status {
            Some(s) => s.to_string(),
            None => format!("killed after {PROVE_TIMEOUT:?}"),
        },
        plan,
        subtests,
        output,
        log_dir: logdir,
        version,
    }
}

/// Asserts PostgreSQL's verdict: a plan, exactly that many subtests, all `ok`, prove exit 0.
fn assert_all_pass(run: &TapRun) {
    let all_ok = run.success
        && run.plan.is_some_and(|p| p as usize == run.subtests.len())
        && run.failed().is_empty()
        && !run.subtests.is_empty();
    assert!(all_ok, "020_pg_receivewal.pl failed\n{}", run.explain());
}

fn walrelay_as_pg_receivewal(major: &str) {
    let dir = TestDir::new(&format!("tap-{major}"));
    let run = run_020(major, &harness::walrelay::bin(), &dir);
    assert!(
        run.version.contains("walrelay"),
        "the pg_receivewal in PATH is not walrelay: {}",
        run.version
    );
    assert_all_pass(&run);
}

fn real_pg_receivewal(major: &str) {
    let dir = TestDir::new(&format!("tap-real-{major}"));
    let real = PgInstall::get(major).bin("pg_receivewal");
    let run = run_020(major, &real, &dir);
    assert!(
        run.version.starts_with("pg_receivewal (PostgreSQL) "),
        "{}",
        run.version
    );
    assert_all_pass(&run);
}

#[test]
fn tap_pg_receivewal_15() {
    walrelay_as_pg_receivewal("15");
}

#[test]
fn tap_pg_receivewal_18() {
    walrelay_as_pg_receivewal("18");
}

#[test]
#[ignore = "harness sanity check with the real pg_receivewal: run with --ignored"]
fn tap_pg_receivewal_real_15() {
    real_pg_receivewal("15");
}

#[test]
#[ignore = "harness sanity check with the real pg_receivewal: run with --ignored"]
fn tap_pg_receivewal_real_18() {
    real_pg_receivewal("18");
}

#[test]
fn tap_parse_reads_prove_verbose_output() {
    let out = "t/020.pl .. \nok 1 - a b\nnot ok 2 - c\n#   Failed test 'c'\n1..2\nnot ok 2 - c\n";
    let (subtests, plan) = parse_tap(out);
    assert_eq!(plan, Some(2));
    assert_eq!(
        subtests,
        vec![
            Subtest {
                number: 1,
                ok: true,
                name: "a b".into()
            },
            Subtest {
                number: 2,
                ok: false,
                name: "c".into()
            },
        ]
    );
}

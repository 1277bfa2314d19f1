//! walrelay as `pg_receivewal --compress` against real PostgreSQL 15 and 18: complete `.gz` /
//! `.lz4` segments that `gzip -t` / `lz4 -t` accept and that decompress byte-identical to the
//! primary's `pg_wal`, a `.gz.partial` / `.lz4.partial` whose content is the primary's WAL
//! prefix, and a restart from a compressed `.partial` (uncompressed run) that completes that
//! segment identical to `pg_wal`.
use std::io::Read;
use std::path::Path;
use std::process::Command;

use walrelay::lsn::Lsn;

use crate::harness::{self, pg::Pg, TestDir};
use crate::pgrw_cli::Symlinked;

const SEG: u64 = 16 << 20;

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 + suffix.len() && n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn decompress(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let name = path.to_str().unwrap();
    if name.contains(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("gunzip {name}: {e}"));
    } else {
        lz4_flex::frame::FrameDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("lz4 -d {name}: {e}"));
    }
    out
}

/// Writes WAL past at least one segment boundary; returns the insert position after it.
fn generate(pg: &Pg) -> Lsn {
    pg.psql("create table if not exists filler (id bigserial, pad text)");
    pg.psql("insert into filler (pad) select string_agg(md5(random()::text), '') from generate_series(1, 30) g, generate_series(1, 20000) r group by r");
    pg.switch_wal();
    pg.psql("insert into filler (pad) values ('after switch')");
    pg.insert_lsn()
}

fn check_tool(tool: &str, flag: &str, files: &[std::path::PathBuf]) {
    for f in files {
        let out = Command::new(tool)
            .arg(flag)
            .arg(f)
            .output()
            .unwrap_or_else(|e| panic!("{tool} must be installed (scripts/test-infra.sh): {e}"));
        assert!(
            out.status.success(),
            "{tool} {flag} {}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn method_round_trip(pg: &Pg, s: &Symlinked, t: &TestDir, method: &str, suffix: &str) {
    let dir = t.subdir(method);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let slot = format!("z_{method}");
    pg.psql(&format!(
        "select pg_create_physical_replication_slot('{slot}', true)"
    ));
    let endpos = generate(pg);
    let ci = pg.conninfo();
    let (code, _, err) = s.run(&[
        "-D",
        d,
        "-d",
        &ci,
        "--slot",
        &slot,
        "-n",
        "--endpos",
        &endpos.to_string(),
        "--compress",
        method,
    ]);
    assert_eq!(code, 0, "{err}");
    let complete = files_with_suffix(&dir, suffix);
    assert!(!complete.is_empty(), "no complete {suffix} segment");
    let partials = files_with_suffix(&dir, &format!("{suffix}.partial"));
    assert_eq!(partials.len(), 1, "{partials:?}");
    // nothing else: no uncompressed segment, no other file
    let all = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(all, complete.len() + 1);
    let tool = if method == "gzip" { "gzip" } else { "lz4" };
    let paths: Vec<_> = complete.iter().map(|n| dir.join(n)).collect();
    check_tool(tool, "-t", &paths);
    for name in &complete {
        let ours = decompress(&dir.join(name));
        let theirs = std::fs::read(pg.pg_wal().join(&name[..24])).unwrap();
        assert_eq!(ours.len() as u64, SEG, "{name}");
        assert!(ours == theirs, "{name} differs from pg_wal");
    }
    let p = &partials[0];
    let ours = decompress(&dir.join(p));
    let theirs = std::fs::read(pg.pg_wal().join(&p[..24])).unwrap();
    assert!(!ours.is_empty() && ours.len() < theirs.len());
    assert!(
        ours[..] == theirs[..ours.len()],
        "{p} is not the primary's WAL"
    );
    // The stream must have reached endpos inside the partial's segment.
    assert!(ours.len() as u64 >= endpos.segment_offset(SEG));

    // Restart without compression: resumes at the compressed partial's segment start and
    // completes it as a plain segment.
    let endpos2 = generate(pg);
    let (code, _, err) = s.run(&[
        "-D",
        d,
        "-d",
        &ci,
        "--slot",
        &slot,
        "-n",
        "--endpos",
        &endpos2.to_string(),
        "-v",
    ]);
    assert_eq!(code, 0, "{err}");
    let plain = &p[..24];
    // pg_receivewal's -v lines: where it starts (the compressed partial's segment), each
    // segment it finished, where it stopped.
    let log_id = u64::from_str_radix(&plain[8..16], 16).unwrap();
    let seg_id = u64::from_str_radix(&plain[16..24], 16).unwrap();
    let seg_start = Lsn((log_id << 32) + seg_id * SEG);
    let seg_end = Lsn(seg_start.0 + SEG);
    for want in [
        format!("pg_receivewal: starting log streaming at {seg_start} (timeline 1)\n"),
        format!("pg_receivewal: finished segment at {seg_end} (timeline 1)\n"),
        "pg_receivewal: stopped log streaming at ".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    let ours = std::fs::read(dir.join(plain)).expect("the partial's segment completed");
    let theirs = std::fs::read(pg.pg_wal().join(plain)).unwrap();
    assert!(ours == theirs, "{plain} differs from pg_wal");
    harness::compare::assert_segments_identical(&dir, &pg.pg_wal());
    pg.psql(&format!("select pg_drop_replication_slot('{slot}')"));
}

fn compress(major: &str) {
    if !harness::majors().iter().any(|m| m == major) {
        return;
    }
    let s = Symlinked::new();
    let t = TestDir::new("pgrw-z");
    let pg = Pg::primary(major, &[]);
    method_round_trip(&pg, &s, &t, "gzip", ".gz");
    method_round_trip(&pg, &s, &t, "lz4", ".lz4");
}

#[test]
fn pgrw_compress_15() {
    compress("15");
}

#[test]
fn pgrw_compress_18() {
    compress("18");
}

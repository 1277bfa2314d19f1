//! `walrelay archive expire` against a real `walrelay run` archive of a PostgreSQL 15
//! primary: segments older than the retention rule are deleted with their manifests, but
//! never the segment holding a proxy slot's `restart_lsn` or anything after it; `--dry-run`
//! deletes nothing.
use std::time::Duration;

use walrelay::lsn::{segment_file_name, Lsn};

use crate::harness::pg::Pg;
use crate::harness::walrelay::run_to_end;
use crate::harness::{wait_for, TestDir};
use crate::server_common::Relay;

const SEG: u64 = 16 << 20;

fn generate(pg: &Pg, rounds: usize) {
    for _ in 0..rounds {
        pg.psql("insert into t select g from generate_series(1, 1000) g");
        pg.switch_wal();
    }
}

fn list(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn expire_keeps_what_slots_need() {
    let t = TestDir::new("archive-expire");
    let primary = Pg::primary("15", &[]);
    primary.psql("create table t (x int)");
    let conf = t.join("walrelay.toml");
    std::fs::write(
        &conf,
        "[archive]\nscan_interval = \"500ms\"\npartial_interval = \"0\"\n\
         keep_local_size = \"0\"\nkeep_local_age = \"0\"\n\
         [archive.retention]\nkeep_age = \"1s\"\ninterval = \"1h\"\n",
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let relay = Relay::start(&t, &primary, &["-c", &conf_s]);
    generate(&primary, 3);
    relay.wait_flush(&primary, primary.current_lsn());
    let repl = format!("{} replication=true", relay.conninfo("psql"));
    primary
        .install()
        .psql_conninfo(&repl, "CREATE_REPLICATION_SLOT keep PHYSICAL RESERVE_WAL")
        .unwrap();
    let out = primary
        .install()
        .psql_conninfo(&repl, "READ_REPLICATION_SLOT keep")
        .unwrap();
    let restart: Lsn = out
        .split('|')
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("READ_REPLICATION_SLOT: {out}"));
    let keep_seg = restart.segno(SEG);
    generate(&primary, 4);
    let end = primary.current_lsn();
    let sysid = primary.system_identifier();
    let wal = relay
        .data
        .join("archive")
        .join(sysid.to_string())
        .join("wal");
    let manifests = relay
        .data
        .join("archive")
        .join(sysid.to_string())
        .join("manifest");
    let last = segment_file_name(1, end.segno(SEG) - 1, SEG);
    wait_for(Duration::from_secs(60), "the last segment archived", || {
        list(&wal).contains(&last)
    });
    let before = list(&wal);
    let first: u64 = before
        .iter()
        .filter_map(|n| u64::from_str_radix(n.get(16..24)?, 16).ok())
        .min()
        .unwrap();
    assert!(
        first < keep_seg,
        "nothing older than the slot ({restart}) archived: {before:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));

    let data = relay.data.display().to_string();
    let (st, out, err) =
        run_to_end(&["archive", "expire", "-c", &conf_s, "-D", &data, "--dry-run"]);
    assert!(st.success(), "{out}{err}");
    let expected: Vec<String> = (first..keep_seg)
        .map(|s| segment_file_name(1, s, SEG))
        .collect();
    let would: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .filter(|l| !l.contains(" segments "))
        .collect();
    assert_eq!(would, expected, "{out}");
    assert_eq!(list(&wal), before, "a dry run deleted something");

    // A delayed feed's persisted position (delay/feeds.json) holds the floor too: with one
    // at the start of the second archived segment, only the first may go.
    let feeds = relay.data.join("delay").join("feeds.json");
    std::fs::create_dir_all(feeds.parent().unwrap()).unwrap();
    let feed_pos = Lsn((first + 1) * SEG);
    std::fs::write(
        &feeds,
        format!(
            "{{\"feeds\": {{\"late\": {{\"hold\": null, \"tripwire_acked\": \"0/0\", \"position\": \"{feed_pos}\", \"index_gap\": null}}}}}}"
        ),
    )
    .unwrap();
    let (st, out, err) =
        run_to_end(&["archive", "expire", "-c", &conf_s, "-D", &data, "--dry-run"]);
    assert!(st.success(), "{out}{err}");
    let would: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .filter(|l| !l.contains(" segments "))
        .collect();
    assert_eq!(would, vec![segment_file_name(1, first, SEG)], "{out}");
    // an unreadable feeds.json is an error, never "no feed needs anything"
    std::fs::write(&feeds, b"{not json").unwrap();
    let (st, out, err) =
        run_to_end(&["archive", "expire", "-c", &conf_s, "-D", &data, "--dry-run"]);
    assert_eq!(st.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("feeds.json") && err.contains("invalid JSON"),
        "{err}"
    );
    std::fs::remove_file(&feeds).unwrap();

    let (st, out, err) = run_to_end(&["archive", "expire", "-c", &conf_s, "-D", &data]);
    assert!(st.success(), "{out}{err}");
    let after = list(&wal);
    for n in &expected {
        assert!(!after.contains(n), "{n} not deleted: {after:?}");
        assert!(
            !list(&manifests).contains(&format!("{n}.json")),
            "manifest of {n} left"
        );
    }
    for s in keep_seg..end.segno(SEG) {
        let n = segment_file_name(1, s, SEG);
        assert!(after.contains(&n), "{n} needed by the slot was deleted");
        assert!(list(&manifests).contains(&format!("{n}.json")));
    }
    assert!(
        out.contains(&format!("deleted {} segments", expected.len())),
        "{out}"
    );
    // the rest still verifies (from the slot's segment on)
    let (st, out, err) = run_to_end(&[
        "verify",
        "-c",
        &conf_s,
        "-D",
        &data,
        "--from",
        &Lsn(keep_seg * SEG).to_string(),
    ]);
    assert!(st.success(), "{out}{err}");
}

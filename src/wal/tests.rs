//! Cross-file tests: real WAL captured by `fixtures/capture.sh` (checked against pg_waldump)
//! and a no-panic property test over random and mutated input.

use super::page::build as pagebuild;
use super::*;
use crate::lsn::Lsn;
use std::path::PathBuf;

struct Fixture {
    seg_size: u64,
    sysid: u64,
    start: Lsn,
    end: Lsn,
    data: Vec<u8>,
    lsns: Vec<(Lsn, String)>,
    dump: Vec<String>,
}

fn fixture(major: u32) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/pg{major}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let lsn = |k: &str| manifest[k].as_str().unwrap().parse::<Lsn>().unwrap();
    let mut names: Vec<&String> = manifest["files"].as_object().unwrap().keys().collect();
    names.sort();
    let mut data = Vec::new();
    for n in names {
        let bytes = std::fs::read(dir.join(n)).unwrap();
        use sha2::Digest;
        let sum = sha2::Sha256::digest(&bytes);
        let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(manifest["files"][n].as_str().unwrap(), hex, "{n}");
        data.extend(bytes);
    }
    let lsns = std::fs::read_to_string(dir.join("waldump_lsns.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.to_string())
        })
        .collect();
    let dump = std::fs::read_to_string(dir.join("waldump.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    Fixture {
        seg_size: manifest["segment_size"].as_u64().unwrap(),
        sysid: manifest["system_identifier"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        start: lsn("start_lsn"),
        end: lsn("end_lsn"),
        data,
        lsns,
        dump,
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff] UTC` → µs since 2000-01-01 UTC.
fn parse_pg_time(s: &str) -> i64 {
    let s = s.trim().strip_suffix(" UTC").unwrap();
    let (date, time) = s.split_once(' ').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let micros: i64 = format!("{frac:0<6}").parse().unwrap();
    // days from civil (Howard Hinnant's algorithm), relative to 2000-01-01
    let (y, m, dd) = (d[0], d[1], d[2]);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days_unix = era * 146_097 + doe - 719_468;
    let days = days_unix - 10_957;
    ((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000) + micros
}

fn rmgr_id(name: &str) -> u8 {
    const NAMES: [&str; 22] = [
        "XLOG",
        "Transaction",
        "Storage",
        "CLOG",
        "Database",
        "Tablespace",
        "MultiXact",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "CommitTs",
        "ReplicationOrigin",
        "Generic",
        "LogicalMessage",
    ];
    NAMES.iter().position(|n| *n == name).unwrap() as u8
}

fn decode_all(f: &Fixture, chunk: usize) -> Vec<Record> {
    let mut dec = RecordDecoder::new(f.start, f.seg_size);
    let mut val = PageValidator::new(f.sysid, f.seg_size, 1);
    let mut out = Vec::new();
    let mut pos = f.start;
    for c in f.data.chunks(chunk) {
        val.check(pos, c).unwrap();
        dec.feed(pos, c).unwrap();
        pos = Lsn(pos.0 + c.len() as u64);
        while let Some(r) = dec.next() {
            out.push(r.unwrap());
        }
    }
    assert_eq!(pos, f.end);
    assert!(!dec.is_failed());
    out
}

fn check_fixture(major: u32) {
    let f = fixture(major);
    let records = decode_all(&f, 8191);
    // Same records, at the same positions, as pg_waldump lists.
    let got: Vec<(Lsn, u8)> = records.iter().map(|r| (r.lsn, r.rmid)).collect();
    let want: Vec<(Lsn, u8)> = f.lsns.iter().map(|(l, n)| (*l, rmgr_id(n))).collect();
    assert_eq!(got.len(), want.len(), "pg{major}: record count");
    assert_eq!(got, want, "pg{major}");
    // Other chunkings give identical records.
    for chunk in [1usize << 20, 8192, 40, 3] {
        assert_eq!(decode_all(&f, chunk), records, "pg{major} chunk {chunk}");
    }
    // The last record is the XLOG_SWITCH; it "ends" at the segment end.
    let last = records.last().unwrap();
    assert!(last.is_switch());
    assert_eq!(last.end, f.end);
    // At least one record spans a segment boundary (the 1.2 MB logical message).
    assert!(records
        .iter()
        .any(|r| r.lsn.segno(f.seg_size) != Lsn(r.end.0 - 1).segno(f.seg_size)));

    let by_lsn: std::collections::HashMap<Lsn, &Record> =
        records.iter().map(|r| (r.lsn, r)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut restore_points = 0;
    for line in &f.dump {
        let lsn: Lsn = line
            .split("lsn: ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let tx: u32 = line
            .split("tx: ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let desc = line.split("desc: ").nth(1).unwrap();
        let r = by_lsn[&lsn];
        seen.insert(lsn);
        if let Some(name) = desc.strip_prefix("RESTORE_POINT ") {
            let (time, got) = decode_restore_point(r).unwrap();
            assert_eq!(got, name);
            assert!(time > 0);
            assert!(decode_xact(r).is_none());
            restore_points += 1;
            continue;
        }
        let (word, rest) = desc.split_once(' ').unwrap();
        let x = decode_xact(r).unwrap_or_else(|| panic!("pg{major}: not decoded: {line}"));
        let (kind, xid, rest) = match word {
            "COMMIT" => (XactKind::Commit, tx, rest),
            "ABORT" => (XactKind::Abort, tx, rest),
            "COMMIT_PREPARED" | "ABORT_PREPARED" => {
                let (x, rest) = rest.split_once(": ").unwrap();
                let k = if word == "COMMIT_PREPARED" {
                    XactKind::CommitPrepared
                } else {
                    XactKind::AbortPrepared
                };
                (k, x.parse().unwrap(), rest)
            }
            "PREPARE" => (XactKind::Prepare, tx, rest.split_once(": ").unwrap().1),
            other => panic!("unexpected {other}"),
        };
        assert_eq!(x.kind, kind, "{line}");
        assert_eq!(x.xid, xid, "{line}");
        let time = rest.split(';').next().unwrap();
        assert_eq!(x.xact_time, parse_pg_time(time), "{line}");
        let rels: Vec<String> = rest
            .split("; ")
            .find_map(|p| p.strip_prefix("rels: "))
            .map(|s| s.split(' ').map(str::to_string).collect())
            .unwrap_or_default();
        let got: Vec<String> = x.dropped_rels.iter().map(RelFileLocator::path).collect();
        assert_eq!(got, rels, "{line}");
    }
    assert_eq!(restore_points, 1);
    // Every transaction record decoded is one pg_waldump listed (none missed).
    for r in &records {
        if decode_xact(r).is_some() || decode_restore_point(r).is_some() {
            assert!(seen.contains(&r.lsn), "pg{major}: extra {:?}", r.lsn);
        }
    }
    // Starting at each segment start skips the leading continuation.
    for seg in 0..(f.data.len() as u64 / f.seg_size) {
        let s = Lsn(f.start.0 + seg * f.seg_size);
        let off = (seg * f.seg_size) as usize;
        let mut dec = RecordDecoder::new(s, f.seg_size);
        dec.feed(s, &f.data[off..]).unwrap();
        let first = dec.next().unwrap().unwrap();
        let want = records.iter().find(|r| r.lsn >= s).unwrap();
        assert_eq!(first.lsn, want.lsn, "pg{major}: start at {s}");
    }
}

#[test]
fn real_wal_pg15() {
    check_fixture(15);
}

#[test]
fn real_wal_pg18() {
    check_fixture(18);
}

/// Small deterministic PRNG (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn feed_everything(start: Lsn, seg: u64, data: &[u8], rng: &mut Rng) -> usize {
    let mut val = PageValidator::new(0, seg, 1 + rng.below(3) as u32);
    let mut dec = RecordDecoder::new(start, seg);
    let mut pos = start;
    let mut n = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let take = (1 + rng.below(20_000) as usize).min(rest.len());
        let (c, r) = rest.split_at(take);
        if val.check(pos, c).is_err() {
            val.reset(Lsn(pos.0 + c.len() as u64));
        }
        let _ = dec.feed(pos, c);
        pos = Lsn(pos.0 + c.len() as u64);
        rest = r;
        while let Some(r) = dec.next() {
            if let Ok(rec) = r {
                let _ = decode_xact(&rec);
                let _ = decode_restore_point(&rec);
                let _ = rec.main_data();
                n += 1;
            }
        }
    }
    n
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seg = 1u64 << 20;
    // Pure noise, and noise behind valid page headers.
    for i in 0..200 {
        let len = rng.below(40_000) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let start = Lsn(rng.below(1 << 40) & !7);
        if i % 2 == 0 {
            let pages = pagebuild::pages(seg * 3, 4, seg, 42, 1);
            for (d, p) in data.iter_mut().zip(pages.iter()) {
                if rng.below(4) != 0 {
                    *d = *p;
                }
            }
            feed_everything(Lsn(seg * 3), seg, &data, &mut rng);
        } else {
            feed_everything(start, seg, &data, &mut rng);
        }
        let text = String::from_utf8_lossy(&data);
        let _ = history::parse_history(&text);
    }
    // History-like text.
    for _ in 0..500 {
        let alphabet = b"0123456789ABCDEF/\t\n #x-";
        let len = rng.below(200) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
            .collect();
        let _ = history::parse_history(&s);
    }
}

#[test]
fn mutated_real_wal_never_panics() {
    let mut rng = Rng(12345);
    for major in [15, 18] {
        let f = fixture(major);
        // Clean decode for reference.
        let clean = feed_everything(f.start, f.seg_size, &f.data, &mut rng);
        assert!(clean > 100);
        for _ in 0..12 {
            let mut d = f.data.clone();
            for _ in 0..1 + rng.below(64) {
                let at = rng.below(d.len() as u64) as usize;
                // Favour page headers and record headers.
                let at = match rng.below(3) {
                    0 => at - at % 8192 + rng.below(40) as usize,
                    _ => at,
                };
                if let Some(b) = d.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
            feed_everything(f.start, f.seg_size, &d, &mut rng);
        }
        // Every record, with random bytes flipped, through the body decoders.
        let records = decode_all(&f, 1 << 20);
        for r in records.iter().filter(|r| r.rmid <= 1) {
            for _ in 0..20 {
                let mut d = r.data.to_vec();
                let at = rng.below(d.len() as u64) as usize;
                d[at] = rng.next() as u8;
                let mut m = r.clone();
                let cut = rng.below(d.len() as u64 + 1) as usize;
                if rng.below(4) == 0 {
                    d.truncate(cut);
                }
                m.data = d.into();
                let _ = decode_xact(&m);
                let _ = decode_restore_point(&m);
                let _ = m.main_data();
            }
        }
    }
}

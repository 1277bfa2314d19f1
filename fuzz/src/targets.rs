//! The bodies of walrelay's fuzz targets: one function per parser family fed by the network,
//! files or an operator, each taking arbitrary bytes. A target must never panic, whatever
//! the input; everything else (an `Err`, `None`) is a correct answer.
//!
//! Shared by the libFuzzer binaries in `fuzz/fuzz_targets/` and by the replay test
//! `protocol-tests/fuzz_replay.rs`, which runs every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the same function on each `cargo test`.
//! Uses only walrelay's public API; must not do IO.
#![allow(dead_code)]

use bytes::BytesMut;

use walrelay::archive::layout;
use walrelay::config;
use walrelay::delay;
use walrelay::lsn::{self, Lsn};
use walrelay::pgreceivewal::options;
use walrelay::protocol::backend::BackendMessage;
use walrelay::protocol::command::parse_command;
use walrelay::protocol::frame::split_frame;
use walrelay::protocol::frontend::{self, FrontendMessage};
use walrelay::protocol::replication::{ClientCopyMessage, ServerCopyMessage};
use walrelay::upstream::conninfo::ConnInfo;
use walrelay::upstream::pgpass;
use walrelay::wal::{self, PageHeader, PageValidator, RecordDecoder};

/// One fuzz target: its name and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name (the directory names under `fuzz/corpus/` and `fuzz/regressions/`).
pub const TARGETS: &[Target] = &[
    ("frames", frames),
    ("startup", startup),
    ("replication_command", replication_command),
    ("wal_pages", wal_pages),
    ("history", history),
    ("wal_names", wal_names),
    ("conninfo", conninfo),
    ("pgpass", pgpass_file),
    ("times", times),
    ("config_toml", config_toml),
    ("pg_receivewal_args", pg_receivewal_args),
    ("commit_index", commit_index),
    ("http_request", http_request),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Regular protocol frames in both directions (tag, length, body), as a stream: split, then
/// decoded as a frontend and as a backend message; CopyData bodies also as replication
/// messages from either side.
pub fn frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..1024 {
        match split_frame(&mut buf, 1 << 20) {
            Ok(Some(frame)) => {
                if frame.tag == b'd' {
                    let _ = ServerCopyMessage::decode(&frame.body);
                    let _ = ClientCopyMessage::decode(&frame.body);
                }
                let _ = FrontendMessage::decode(frame.clone());
                let _ = BackendMessage::decode(frame);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // a bare CopyData payload too (what the streaming loops decode)
    let payload = bytes::Bytes::copy_from_slice(data);
    let _ = ServerCopyMessage::decode(&payload);
    let _ = ClientCopyMessage::decode(data);
}

/// Startup-phase packets (startup, SSLRequest, GSSENCRequest, CancelRequest) as a stream,
/// and the bodies of PasswordMessage / SASLInitialResponse.
pub fn startup(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        match frontend::parse_startup(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = frontend::parse_password(data);
    let _ = frontend::parse_sasl_initial(data);
}

/// Replication commands as a walsender receives them in a simple query.
pub fn replication_command(data: &[u8]) {
    let _ = parse_command(&text(data));
}

/// WAL pages and records: page headers, the page validator and the record decoder over the
/// same bytes, then the transaction/restore-point decoders on every record found. The first
/// byte picks the segment size, the next eight the start position (aligned to a page).
pub fn wal_pages(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let seg_size: u64 = match sel % 4 {
        0 => 16 << 20,
        1 => 1 << 20,
        2 => 64 << 20,
        _ => 1 << 30,
    };
    let (start, body) = match rest.split_first_chunk::<8>() {
        Some((s, b)) => (u64::from_le_bytes(*s), b),
        None => (0, rest),
    };
    let start = Lsn(start & !(8192 - 1));
    let _ = PageHeader::parse(body);
    let mut v = PageValidator::new(0x1234_5678_9abc_def0, seg_size, 1);
    v.reset(start);
    let _ = v.check(start, body);
    let _ = v.position();
    let _ = v.validated_end();

    let mut d = RecordDecoder::new(start, seg_size);
    if d.feed(start, body).is_ok() {
        for _ in 0..4096 {
            match d.next() {
                Some(Ok(rec)) => {
                    let _ = rec.main_data();
                    let _ = rec.is_switch();
                    let _ = wal::decode_xact(&rec);
                    let _ = wal::decode_restore_point(&rec);
                }
                Some(Err(_)) | None => break,
            }
        }
    }
    let _ = wal::record::record_crc(body);
}

/// Timeline history files (fetched with TIMELINE_HISTORY, read from disk and the archive),
/// then the lookups done on them.
pub fn history(data: &[u8]) {
    if let Ok(entries) = wal::parse_history(&text(data)) {
        for tli in [0, 1, 2, u32::MAX] {
            let _ = wal::history::check_history_for(&entries, tli);
            let _ = wal::switch_point_of(&entries, tli);
            let _ = wal::tli_of_lsn(&entries, tli, Lsn(0));
            let _ = wal::tli_of_lsn(&entries, tli, Lsn(u64::MAX));
        }
    }
}

/// WAL file names in a directory and object keys in a bucket: segment/history/partial names
/// for every segment size, compression suffixes, partial object names, the archive's JSON
/// identity and manifest objects.
pub fn wal_names(data: &[u8]) {
    let s = text(data);
    for seg in [1u64 << 20, 16 << 20, 1 << 30] {
        let _ = lsn::parse_wal_file_name(&s, seg);
    }
    let _ = layout::strip_compression(&s);
    let _ = layout::parse_partial(&s);
    if let Some(id) = layout::Identity::decode(data) {
        let _ = id.system_id();
    }
    if let Some(m) = layout::Manifest::decode(data) {
        let _ = m.start();
        let _ = m.end();
        let _ = m.compression();
    }
}

/// Connection strings: `key=value` lists and `postgresql://` URIs.
pub fn conninfo(data: &[u8]) {
    let _ = ConnInfo::parse(&text(data));
}

/// `.pgpass` contents, looked up for a fixed and for an input-derived key.
pub fn pgpass_file(data: &[u8]) {
    let s = text(data);
    let _ = pgpass::lookup_in(&s, "localhost", 5432, "postgres", "postgres");
    let first: Vec<&str> = s.lines().next().unwrap_or("").split(':').collect();
    let field = |i: usize| first.get(i).copied().unwrap_or("*");
    let port = field(1).parse().unwrap_or(5432);
    let _ = pgpass::lookup_in(&s, field(0), port, field(2), field(3));
}

/// Operator-supplied durations, sizes and times (config values, `--since`/`--until`,
/// `?since=` of the HTTP API).
pub fn times(data: &[u8]) {
    let s = text(data);
    let _ = config::parse_duration(&s);
    let _ = config::parse_size(&s);
    for now in [0, 1_000_000_000_000_000, i64::MAX, i64::MIN] {
        let _ = delay::time::parse_pg_time(&s, now);
    }
    let _ = delay::api::parse_time_arg(Some(&s));
}

/// The TOML configuration file.
pub fn config_toml(data: &[u8]) {
    let _ = config::Config::parse(&text(data));
}

/// pg_receivewal's command line: arguments separated by NUL bytes.
pub fn pg_receivewal_args(data: &[u8]) {
    let args: Vec<String> = data.split(|&b| b == 0).map(text).collect();
    let _ = options::parse("pg_receivewal", &args);
}

/// The delayed feeds' commit index file (a sequence of `len | crc32c | body` entries). The
/// input is decoded as it is, and also as one entry body framed with a correct length and
/// checksum (a fuzzer cannot forge CRCs, and a torn or foreign file can hold any body).
pub fn commit_index(data: &[u8]) {
    let mut framed = Vec::with_capacity(data.len() + 8);
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    framed.extend_from_slice(data);
    if let Some((e, _)) = delay::IndexEntry::decode(&framed) {
        let _ = e.to_json();
        let _ = e.dropped_paths();
    }
    let mut rest = data;
    for _ in 0..4096 {
        match delay::IndexEntry::decode(rest) {
            Some((_, used)) if used > 0 && used <= rest.len() => {
                rest = rest.get(used..).unwrap_or_default();
            }
            _ => break,
        }
    }
}

/// An HTTP request to the admin/control endpoints, as `admin::server` sees it after hyper:
/// line 1 is `METHOD TARGET`, the next lines `Name: value` headers (invalid names/values are
/// skipped, as hyper would refuse them). The target is parsed as an `http::Uri`, then goes
/// through the access checks of `admin::guard` (for a Unix socket, for TCP with and without
/// TLS, with and without a bearer token), the target decoding and dispatch of
/// `admin::routes`, and the feed/xacts query arguments of `delay::api`
/// (`to_time`/`before_xid`/`to_lsn`/`to_restore_point`, `since`/`until`/`drops_only`/`limit`).
pub fn http_request(data: &[u8]) {
    use std::sync::Arc;
    use walrelay::admin::guard::{Policy, Token, Transport};
    use walrelay::admin::routes::{Request, Response, Routes};

    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let (method, target) = match first.iter().position(|&b| b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, &b"/"[..]),
    };
    let method = http::Method::from_bytes(method).unwrap_or(http::Method::GET);
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..i]),
            http::HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let hosts = ["relay.example".to_string(), "[fe80::1]".to_string()];
    for transport in [
        Transport::Unix,
        Transport::Tcp { tls: false },
        Transport::Tcp { tls: true },
    ] {
        for token in [None, Some(Token::new("s3cret"))] {
            let _ = Policy::new(transport, token, &hosts).check(&method, &headers);
        }
    }

    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let Ok(req) = Request::from_target(method.as_str(), uri.path(), uri.query()) else {
        return;
    };
    let _ = req.rest(0);
    let _ = req.rest(1);
    let _ = req.rest(usize::MAX);
    let get = |k: &str| req.param(k).map(str::to_string);
    let _ = delay::AdvanceTarget::from_params(&get, lsn::pg_now());
    let _ = delay::AdvanceTarget::from_params(&get, i64::MIN);
    let _ = delay::AdvanceTarget::from_params(&get, i64::MAX);
    if let Ok(filter) = delay::api::filter_from(&req) {
        let _ = filter.limit;
    }

    let mut routes = Routes::default();
    let echo = |status: u16| -> walrelay::admin::routes::Handler {
        Arc::new(move |r: &Request| Response::text(status, r.path.clone()))
    };
    routes.add("GET", "/metrics", echo(200));
    routes.add("GET", "/feeds", echo(200));
    routes.add("POST", "/feeds", echo(201));
    routes.add("GET", "/xacts", echo(200));
    routes.add("GET", "/", echo(204));
    let _ = routes.dispatch(&req);
}

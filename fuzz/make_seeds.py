#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ (hand-made valid inputs, so the fuzzer starts
from the formats' real structure) and the regression seeds fuzz/regressions/<target>/ (inputs
that made walrelay panic once). Re-run after changing it; the files are committed."""
import os, struct, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

def put(kind, target, name, data):
    d = os.path.join(HERE, kind, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body

def cstr(s):
    return s.encode() + b"\0"

# ---- frames
xlogdata = b"w" + struct.pack(">QQq", 0x1000000, 0x1000100, 1234) + b"\x00" * 64
keepalive = b"k" + struct.pack(">QqB", 0x1000100, 5678, 1)
standby_status = b"r" + struct.pack(">QQQqB", 1, 2, 3, 4, 0)
hs_feedback = b"h" + struct.pack(">qIIII", 1, 2, 3, 4, 5)
put("corpus", "frames", "auth_ok", msg(b"R", struct.pack(">i", 0)) + msg(b"Z", b"I"))
put("corpus", "frames", "sasl", msg(b"R", struct.pack(">i", 10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0"))
put("corpus", "frames", "md5", msg(b"R", struct.pack(">i", 5) + b"salt"))
put("corpus", "frames", "rowdesc", msg(b"T", struct.pack(">h", 2) + cstr("systemid") + struct.pack(">ihihih", 0, 0, 25, -1, -1, 0) + cstr("timeline") + struct.pack(">ihihih", 0, 0, 23, 4, -1, 0))
             + msg(b"D", struct.pack(">h", 2) + struct.pack(">i", 19) + b"7312345678901234567" + struct.pack(">i", -1))
             + msg(b"C", cstr("IDENTIFY_SYSTEM")) + msg(b"Z", b"I"))
put("corpus", "frames", "error", msg(b"E", b"SERROR\0VERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0"))
put("corpus", "frames", "notice_param", msg(b"N", b"SWARNING\0Mhi\0\0") + msg(b"S", cstr("server_version") + cstr("15.18")) + msg(b"K", struct.pack(">ii", 42, 99)))
put("corpus", "frames", "copy_both", msg(b"W", b"\0\0\0") + msg(b"d", xlogdata) + msg(b"d", keepalive) + msg(b"c", b""))
put("corpus", "frames", "client_copy", msg(b"d", standby_status) + msg(b"d", hs_feedback) + msg(b"c", b"") + msg(b"X", b""))
put("corpus", "frames", "query", msg(b"Q", cstr("START_REPLICATION SLOT \"s\" PHYSICAL 0/1000000 TIMELINE 1")))
put("corpus", "frames", "password", msg(b"p", cstr("secret")) + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", 4) + b"n,,n"))

# ---- startup
def startup(params, ver=0x00030000):
    body = struct.pack(">i", ver) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">i", len(body) + 4) + body
put("corpus", "startup", "startup_v3", startup([("user", "postgres"), ("database", "replication"), ("replication", "true"), ("application_name", "s1")]))
put("corpus", "startup", "startup_v32", startup([("user", "u"), ("_pq_.x", "1")], 0x00030002))
put("corpus", "startup", "ssl_then_startup", struct.pack(">ii", 8, 80877103) + startup([("user", "u")]))
put("corpus", "startup", "gssenc", struct.pack(">ii", 8, 80877104))
put("corpus", "startup", "cancel", struct.pack(">iiii", 16, 80877102, 123, 456))
put("corpus", "startup", "sasl_initial", cstr("SCRAM-SHA-256") + struct.pack(">i", 32) + b"n,,n=,r=abcdefghijklmnopqrstuvwx")

# ---- replication commands
for i, c in enumerate([
    "IDENTIFY_SYSTEM", "SHOW wal_segment_size", "TIMELINE_HISTORY 2",
    "START_REPLICATION 0/1000000", "START_REPLICATION SLOT \"s\" PHYSICAL 16/B374D848 TIMELINE 3",
    "START_REPLICATION PHYSICAL 0/0 TIMELINE 1;", "CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL",
    "CREATE_REPLICATION_SLOT \"a b\" TEMPORARY PHYSICAL (RESERVE_WAL true)",
    "CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'nothing')",
    "DROP_REPLICATION_SLOT s WAIT", "READ_REPLICATION_SLOT s", "BASE_BACKUP (LABEL 'x', CHECKPOINT 'fast')",
    "SELECT 1", "/* c */ identify_system", "ALTER_REPLICATION_SLOT s (FAILOVER true)",
]):
    put("corpus", "replication_command", "cmd%02d" % i, c)

# ---- WAL pages: the first 24 KB of real segments (selector 0 = 16 MB segments, then the start LSN)
for major, seg, segno in [("pg15", "000000010000000000000007", 7), ("pg18", "000000010000000000000008", 8)]:
    with open(os.path.join(ROOT, "fixtures", major, seg), "rb") as f:
        pages = f.read(24576)
    start = segno * (16 << 20)
    put("corpus", "wal_pages", major + "_first_pages", b"\0" + struct.pack("<Q", start) + pages)
    with open(os.path.join(ROOT, "fixtures", major, seg), "rb") as f:
        f.seek(8192 * 5)
        mid = f.read(16384)
    put("corpus", "wal_pages", major + "_mid_pages", b"\0" + struct.pack("<Q", start + 8192 * 5) + mid)

# ---- history files
put("corpus", "history", "tli3", "1\t0/3000000\tno recovery target specified\n\n2\t0/5000028\tbefore 2026-01-01 00:00:00+00\n")
put("corpus", "history", "comments", "# comment\n1\t16/B374D848\tat restore point \"x\"\n")

# ---- WAL file names and object keys
for i, n in enumerate(["000000010000000000000001", "00000001000000000000000A.partial", "00000002.history",
                       "0000000100000001000000FF", "000000010000000000000003.zst",
                       "000000010000000000000003.00A000.partial.zst", "000000010000000000000003.0.partial",
                       "000000010000000000000001.gz", "000000010000000000000001.lz4.partial"]):
    put("corpus", "wal_names", "name%02d" % i, n)
put("corpus", "wal_names", "identity_json", '{"format":1,"system_id":"7312345678901234567","wal_segment_size":16777216}')
put("corpus", "wal_names", "manifest_json", '{"name":"000000010000000000000001","start":"0/1000000","end":"0/2000000","size":16777216,"sha256":"00","compression":"zstd","stored_size":12}')
# regression (issue 12): 24 bytes with a non-ASCII character panicked parse_wal_file_name
put("regressions", "wal_names", "non_ascii_24_bytes", "0000000100000000000000\u00e9")
put("regressions", "wal_names", "non_ascii_24_bytes_2", "\u00e90000000100000000000000")
put("regressions", "wal_names", "non_ascii_partial", "0000000100000000000000\u00e9.partial")
# a character across byte 8 or 16 (where the name is sliced): these are the ones that panic
put("regressions", "wal_names", "non_ascii_at_8", "0000000\u00e9000000000000000")
put("regressions", "wal_names", "non_ascii_at_16", "000000010000000\u00e90000000")
put("regressions", "wal_names", "non_ascii_at_8_partial", "0000000\u00e9000000000000000.partial")
# found by fuzz/run.sh --quick (2026-12-01): 0xff bytes become U+FFFD (3 bytes) across byte 8
put("regressions", "wal_names", "fuzz_crash_793471", bytes.fromhex("303030ffffffff3637383973746f7279"))

# ---- conninfo
for i, c in enumerate(["host=/tmp port=5432 user=postgres dbname=replication",
                       "host='a b' password='it''s \\' x' application_name=x sslmode=verify-full",
                       "postgresql://u:p%40ss@h1:5432,h2:5433/db?sslmode=require&target_session_attrs=read-write",
                       "postgres://%2Fvar%2Frun%2Fpostgresql/db", "postgresql://[::1]:5432/?host=/tmp&port=5433",
                       "hostaddr=127.0.0.1,::1 host=a,b port=1,2 connect_timeout=10 keepalives=1"]):
    put("corpus", "conninfo", "c%02d" % i, c)

# ---- .pgpass
put("corpus", "pgpass", "basic", "localhost:5432:*:postgres:secret\n# comment\n*:*:*:*:pw\\:with\\\\colon\n")
put("corpus", "pgpass", "socket", "/tmp:5432:replication:u:x\n")

# ---- durations, sizes, times
for i, t in enumerate(["10s", "500ms", "1h30m", "5min", "2d", "8h", "3600", "16MB", "1GB", "512kB",
                       "now", "now-5min", "now-1h30m", "2026-01-01 00:00:00", "2026-12-01 21:00:00.123456+02:00",
                       "2026-12-01T21:00:00Z", "@1700000000", "-infinity"]):
    put("corpus", "times", "t%02d" % i, t)
# regression (issue 12): GET /xacts?since=now-99999999999999999999d panicked in duration parsing
put("regressions", "times", "now_minus_huge_days", "now-99999999999999999999d")
put("regressions", "times", "huge_days", "99999999999999999999d")
put("regressions", "times", "huge_seconds_unix", "@99999999999999999")
# found by fuzz/run.sh --quick (2026-12-01)
put("regressions", "times", "fuzz_crash_98ad98", "9999999999999999998h")

# ---- TOML config
shutil.rmtree(os.path.join(HERE, "corpus", "config_toml"), ignore_errors=True)
with open(os.path.join(ROOT, "docs", "walrelay.example.toml"), "rb") as f:
    put("corpus", "config_toml", "example", f.read())
put("corpus", "config_toml", "minimal", "[upstream]\nconninfo = \"host=/tmp\"\n[store]\ndir = \"/var/lib/walrelay\"\n")

# ---- pg_receivewal arguments (NUL-separated)
for i, a in enumerate([["-D", "/tmp/x", "--slot=s", "-v", "-n"],
                       ["--directory=/tmp/x", "-Z", "gzip:1", "--synchronous", "-E", "0/3000000"],
                       ["-Dx", "-Zlz4", "-s", "0", "-h", "/tmp", "-p", "5432", "-U", "u", "-w"],
                       ["--create-slot", "--if-not-exists", "-S", "s", "--no-sync"],
                       ["-?"], ["--version"], ["-D", "x", "--compress=none:1"], ["-D", "x", "-Z", "9"]]):
    put("corpus", "pg_receivewal_args", "a%02d" % i, b"\0".join(s.encode() for s in a))

# ---- commit index: a few entries in the on-disk encoding (version byte first)
# bodies (the target frames them with len + crc32c): lsn end time xid kind name_len ndropped
# dropped(spc db rel)* name first
def entry(lsn, end, time, xid, kind, name=b"", dropped=(), first=None):
    b = struct.pack("<QQqIBBH", lsn, end, time, xid, kind, len(name), len(dropped))
    for r in dropped:
        b += struct.pack("<III", *r)
    return b + name + struct.pack("<Q", lsn if first is None else first)
put("corpus", "commit_index", "commit_drop", entry(0x3000028, 0x3000100, 817000000000000, 740, 1, dropped=[(1663, 5, 16384)], first=0x2FFF000))
put("corpus", "commit_index", "restore_point", entry(0x3000200, 0x3000260, 817000000000001, 0, 6, name=b"before_drop"))
put("corpus", "commit_index", "abort", entry(0x3000300, 0x3000340, 817000000000002, 741, 3))

# ---- http requests to the admin/control endpoints: "METHOD TARGET" then "Name: value" lines
def http(method, target, *headers):
    return "\r\n".join([method + " " + target] + list(headers)) + "\r\n"
for name, data in [
    ("get_metrics", http("GET", "/metrics", "Host: 127.0.0.1:9187")),
    ("get_metrics_unix", http("GET", "/metrics")),
    ("head_root", http("HEAD", "/", "Host: localhost")),
    ("get_feeds", http("GET", "/feeds", "Host: [::1]:9187", "Sec-Fetch-Site: same-origin")),
    ("get_feed", http("GET", "/feeds/delayed%20one", "Host: relay.example")),
    ("advance_lsn", http("POST", "/feeds/x/advance?to_lsn=0/1", "Host: localhost:9187",
                         "Content-Type: application/json", "Authorization: Bearer s3cret")),
    ("advance_time", http("POST", "/feeds/x/advance?to_time=2026-12-01%2012:00:00%2B01",
                          "Host: localhost", "Content-Type: application/json; charset=utf-8",
                          "Origin: http://localhost", "Authorization: bearer  s3cret ")),
    ("advance_xid", http("POST", "/feeds/x/advance?before_xid=740", "Host: 10.0.0.1",
                         "Content-Type: Application/JSON", "Sec-Fetch-Site: none")),
    ("advance_rp", http("POST", "/feeds/x/advance?to_restore_point=before+drop%21", "Host: localhost",
                        "Content-Type: application/json")),
    ("advance_two", http("POST", "/feeds/x/advance?to_lsn=16/B374D848&to_time=-1h",
                         "Host: localhost", "Content-Type: text/plain")),
    ("pause", http("POST", "/feeds/x/pause", "Host: localhost", "Content-Type: application/json",
                   "Authorization: Basic dTpw")),
    ("xacts", http("GET", "/xacts?since=-2h&until=now&drops_only=1&limit=5", "Host: relay.example:80")),
    ("xacts_odd", http("GET", "/xacts?since=2026-12-01T00:00:00Z&limit=18446744073709551616&&=&drops_only",
                       "Host: RELAY.EXAMPLE")),
    ("odd_encodings", http("GET", "/feeds/%2F%2e%2E/%ff%fe/%C3%A9%zz%?a%20=b+c&%ff=%e2%82", "Host: [fe80::1%25eth0]:x",
                           "Origin: https://evil.example", "Sec-Fetch-Site: cross-site")),
    ("double_slash", http("DELETE", "//feeds///x//", "Host: [::1]", "Origin: null")),
    ("absolute_form", http("GET", "http://127.0.0.1:9187/metrics?x", "Host: 127.0.0.1:9187")),
    ("star", http("OPTIONS", "*", "Host: :")),
]:
    put("corpus", "http_request", name, data)

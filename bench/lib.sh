# shellcheck shell=bash
# Shared helpers for the shell benchmarks (sourced, not run). Each script that sources this
# gets: $T (temp dir, removed on exit), as_pg (run PostgreSQL tools as a non-root user
# namespace when root), pg_init/pg_start (a PostgreSQL 15 primary on 127.0.0.1), $PSQL,
# gen_wal (bulk inserts until N bytes of WAL), cpu_of PID (user+sys seconds), rss_kb/hwm_kb,
# on_exit CMD (extra cleanup, run before the servers are stopped), and the conventions every
# script follows:
#
#   --quick            run tiny (seconds): the test suite runs every script this way so that
#                      none rots (protocol-tests/bench_quick.rs); it checks that each produced
#                      its figures, never how fast. Sets QUICK=1.
#   --runs N           alternating runs per variant (A B A B ...); medians are reported.
#   --drop-caches      drop the page cache before each measured client (root only). Default:
#                      a warm page cache, as on any long-running server — `warm_cache` fills
#                      free memory with a file's pages first (not in --quick), so writes must
#                      reclaim cache as they go. Each script prints which mode it ran in.
#   BENCH_RESULTS=F    append the machine-readable RESULT lines to F as well as stdout.
#   WALRELAY_BIN=P     use that binary (no build); otherwise `cargo build --release` once.
#   BENCH_PORT=P       ports P .. P+19 are this script's (default 55439).
#   PGBIN=DIR          PostgreSQL binaries (default Debian's PostgreSQL 15).
#
# RESULT lines: `RESULT <bench> <variant> key=value ...`, values plain numbers; per-run values
# are folded with `stats` into median/min/max (key, key_min, key_max).
set -euo pipefail
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
DROP_CACHES=0
RUNS=${BENCH_RUNS:-}
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --drop-caches) DROP_CACHES=1 ;;
    --runs) RUNS=$2; shift ;;
    --runs=*) RUNS=${1#--runs=} ;;
    *) BENCH_ARGS+=("$1") ;;
  esac
  shift
done
set -- "${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}"
# default_runs N: RUNS unless given (1 in --quick mode)
default_runs() { if [ -z "$RUNS" ]; then if [ "$QUICK" = 1 ]; then RUNS=1; else RUNS=$1; fi; fi; }
if [ -n "${WALRELAY_BIN:-}" ]; then BIN=$WALRELAY_BIN; else BIN=$BENCH_ROOT/target/release/walrelay; fi
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${BENCH_PORT:-55439}
T=$(mktemp -d /tmp/walrelay-bench.XXXXXX)
BENCH_PGDATAS=()
BENCH_EXIT=()
as_pg() { if [ "$(id -u)" = 0 ]; then unshare --user --map-user=65534 --map-group=65534 -- "$@"; else "$@"; fi; }
on_exit() { BENCH_EXIT+=("$*"); }
bench_cleanup() {
  set +e
  for c in "${BENCH_EXIT[@]}"; do eval "$c" >/dev/null 2>&1; done
  for d in "${BENCH_PGDATAS[@]}"; do as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1; done
  [ -n "${BENCH_KEEP:-}" ] && { echo "kept $T"; return; }
  rm -rf "$T"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# pg_init DIR PORT: a PostgreSQL 15 primary for the benchmarks (replica WAL, big max_wal_size).
pg_init() {
  as_pg "$PGBIN/initdb" -D "$1" -U postgres -A trust --no-sync >/dev/null
  cat >>"$1/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 20
max_replication_slots = 20
max_wal_size = 8GB
checkpoint_timeout = 1h
shared_buffers = 512MB
CONF
}
# pg_start DIR
pg_start() { BENCH_PGDATAS+=("$1"); as_pg "$PGBIN/pg_ctl" -D "$1" -l "$1.log" -w start >/dev/null; }
psql_at() { "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d postgres "${@:2}"; }
PSQL="psql_at $PORT"
CONN="host=127.0.0.1 port=$PORT user=postgres"

# gen_wal BYTES: bulk INSERTs until the primary wrote at least BYTES of WAL; each INSERT is
# sized to what is left (~300 bytes of WAL per row, 10 000 to 2 M rows, i.e. ~3 to ~600 MB), so
# small --quick targets are not overshot. The caller measures the actual amount.
gen_wal() {
  $PSQL -c "create unlogged table if not exists seed as select md5(g::text) || md5((g+1)::text) as t from generate_series(1, 100000) g" >/dev/null
  $PSQL -c "create table if not exists w (t text)" >/dev/null
  local start done_bytes=0 rows
  start=$($PSQL -c "select pg_current_wal_lsn()")
  while [ "$done_bytes" -lt "$1" ]; do
    rows=$(( ($1 - done_bytes) / 300 + 1 ))
    [ "$rows" -gt 2000000 ] && rows=2000000
    [ "$rows" -lt 10000 ] && rows=10000
    $PSQL -c "insert into w select t || t || t || t from seed, generate_series(1, 20) limit $rows" >/dev/null
    done_bytes=$($PSQL -c "select (pg_current_wal_lsn() - '$start'::pg_lsn)::bigint")
  done
}
# lsn_bytes X/Y -> decimal
lsn_bytes() { local h=${1%/*} l=${1#*/}; echo $(( (16#$h << 32) + 16#$l )); }
# cpu_of PID: user+sys CPU seconds of a running process (clock ticks from /proc/PID/stat)
cpu_of() {
  local tck; tck=$(getconf CLK_TCK)
  awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t }' "/proc/$1/stat"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
# build_release: `cargo build --release` unless BENCH_NO_BUILD=1 (then target/release/walrelay as is)
build_release() {
  [ -n "${WALRELAY_BIN:-}" ] || [ "${BENCH_NO_BUILD:-}" = 1 ] || (cd "$BENCH_ROOT" && cargo build --release --quiet)
}
# warm_cache: the page cache mode. Warm (default): when more than 1 GB of RAM is free, a file
# in $T of the free part (bounded so that 20 GB of disk stay free) is written and synced, so
# the cache is full of clean pages, as on a server that has run for a while; kept until exit
# (removing it would free its pages). Not in --quick (seconds only; previous runs' data stays
# in cache). Prints the mode.
warm_cache() {
  if [ "$DROP_CACHES" = 1 ]; then echo "page cache: dropped before each client (--drop-caches)"; return; fi
  if [ "$QUICK" = 1 ]; then echo "page cache: warm (not filled in --quick: previous runs' data in cache)"; return; fi
  local free_mb disk_mb fill
  free_mb=$(awk '/^MemFree:/ {print int($2 / 1024)}' /proc/meminfo)
  disk_mb=$(df -Pm "$T" | awk 'NR == 2 {print $4}')
  fill=$(( free_mb - 512 ))
  [ $(( disk_mb - 20480 )) -lt "$fill" ] && fill=$(( disk_mb - 20480 ))
  if [ "$fill" -gt 512 ]; then
    dd if=/dev/zero of="$T/cache-fill" bs=1M count="$fill" status=none && sync
  fi
  echo "page cache: warm ($(awk '/^MemFree:/ {print int($2 / 1024)}' /proc/meminfo) MB of RAM free after filling $(( fill > 512 ? fill : 0 )) MB; --drop-caches to drop it before each client)"
}
# drop_caches_if_asked: with --drop-caches, sync and drop the page cache (root only)
drop_caches_if_asked() {
  if [ "$DROP_CACHES" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; fi
}
# wait_http URL SECONDS
wait_http() { local i; for ((i = 0; i < $2 * 10; i++)); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; return 1; }

# result BENCH VARIANT key=value ...: one machine-readable line (stdout and $BENCH_RESULTS)
result() {
  local line="RESULT $*"
  echo "$line"
  if [ -n "${BENCH_RESULTS:-}" ]; then echo "$line" >>"$BENCH_RESULTS"; fi
}
# stats V1 V2 ...: "median min max" of the numbers given (median of an even count = mean of
# the middle two)
stats() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan nan nan"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.10g %.10g %.10g\n", m, v[1], v[NR] }'
}
# kv_stats KEY V1 V2 ...: "KEY=median KEY_min=min KEY_max=max"
kv_stats() {
  local k=$1 m lo hi; shift
  read -r m lo hi < <(stats "$@")
  echo "$k=$m ${k}_min=$lo ${k}_max=$hi"
}
# pctl FILE P: the P-th percentile (nearest rank) of the numbers in FILE (one per line)
pctl() {
  sort -g "$1" | awk -v p="$2" '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    r = int((p / 100) * NR + 0.999999); if (r < 1) r = 1; if (r > NR) r = NR
    print v[r] }'
}
# tree_cpu PID: CPU seconds of PID, its reaped children (cutime+cstime) and its live
# descendants. For a postmaster this is the whole server's CPU, walsenders that already
# exited included (the postmaster reaps them).
tree_cpu() {
  local tck; tck=$(getconf CLK_TCK)
  local pids=("$1") all=("$1") p c
  while [ ${#pids[@]} -gt 0 ]; do
    p=${pids[0]}; pids=("${pids[@]:1}")
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do pids+=("$c"); all+=("$c"); done
  done
  local sum=0
  for p in "${all[@]}"; do
    if [ "$p" = "$1" ]; then
      sum=$(awk -v s="$sum" '{ sub(/^.*\) /, ""); print s + $12 + $13 + $14 + $15 }' /proc/"$p"/stat 2>/dev/null || echo "$sum")
    else
      sum=$(awk -v s="$sum" '{ sub(/^.*\) /, ""); print s + $12 + $13 }' /proc/"$p"/stat 2>/dev/null || echo "$sum")
    fi
  done
  awk -v s="$sum" -v t="$tck" 'BEGIN { printf "%.2f\n", s / t }'
}
# postmaster_pid PGDATA
postmaster_pid() { head -1 "$1/postmaster.pid"; }
# calc EXPR: floating-point arithmetic (awk), e.g. calc "$bytes / 1048576 / $wall"
calc() { awk "BEGIN { printf \"%.10g\\n\", $* }"; }

# --- SeaweedFS for the archive benchmarks (bench/archive.sh, bench/archive-lag.sh) ---
# weed_start: a SeaweedFS `weed mini` (flags as protocol-tests/harness/s3.rs) on 127.0.0.1
# with every port given explicitly inside PORT+10 .. PORT+19 (S3 on PORT+10), bucket
# `walbucket`, data and log under $T/weed; stopped on exit. Sets WEED_S3 (the endpoint URL)
# and WEED_PID, and exports AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION for it.
# (weed's built-in maintenance worker also dials the admin gRPC at admin port + 10000,
# whatever -admin.port.grpc says; it only logs that it cannot connect there.)
WEED=${WEED:-${WALRELAY_INFRA:-/opt/walrelay-infra}/bin/weed}
weed_start() {
  local b=$((PORT + 10)) d="$T/weed" i
  mkdir -p "$d/data"
  (cd "$d" && exec "$WEED" mini -dir="$d/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port=$b -s3.port.grpc=$((b + 1)) -master.port=$((b + 2)) -master.port.grpc=$((b + 3)) \
    -volume.port=$((b + 4)) -volume.port.grpc=$((b + 5)) -filer.port=$((b + 6)) \
    -filer.port.grpc=$((b + 7)) -admin.port=$((b + 8)) -admin.port.grpc=$((b + 9)) \
    -admin.ui=false -webdav=false -master.telemetry=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -filer.localSocket="$d/filer.sock" -s3.localSocket="$d/s3.sock" \
    -bucket=walbucket) >"$d/weed.log" 2>&1 &
  WEED_PID=$!
  # weed names its gRPC unix sockets in /tmp after the ports: remove this instance's
  on_exit "kill $WEED_PID; wait $WEED_PID; for p in $((b + 1)) $((b + 3)) $((b + 5)) $((b + 7)) $((b + 9)); do rm -f /tmp/seaweedfs-*-grpc-\$p.sock; done"
  WEED_S3=http://127.0.0.1:$b
  export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_REGION=us-east-1
  for ((i = 0; i < 900; i++)); do
    kill -0 "$WEED_PID" 2>/dev/null || break
    grep -q "S3 Endpoint" "$d/weed.log" && curl -s -o /dev/null "$WEED_S3/" && return 0
    sleep 0.1
  done
  echo "weed mini did not start:" >&2; cat "$d/weed.log" >&2
  return 1
}

# --- walrelay run receiving a backlog live (bench/fanout.sh, bench/fast-source.sh) ---
# relay_start WPORT MPORT: `walrelay run --archive none` from the primary on $PORT, with its
# walsender on WPORT and /status on MPORT; waits until it streams. Sets WPID; defines status.
relay_start() {
  # fan-out starts up to 50 clients at once from one address: above the default
  # pre-authentication limits (16 per address, 32 in all; docs/security.md), so raise them
  cat >"$T/wr.toml" <<TOML
[server]
max_connections = 200
max_startup_connections = 128
max_startup_connections_per_address = 128
TOML
  "$BIN" run -c "$T/wr.toml" --upstream "$CONN" -D "$T/wr" --slot walrelay --archive none \
    --listen "127.0.0.1:$1" --metrics-listen "127.0.0.1:$2" >"$T/walrelay.log" 2>&1 &
  WPID=$!
  on_exit "kill $WPID; wait $WPID"
  RELAY_STATUS=http://127.0.0.1:$2/status
  wait_http "$RELAY_STATUS" 30
  until [ "$(status | jq -r .upstream.connected)" = true ]; do sleep 0.1; done
}
status() { curl -fs "$RELAY_STATUS"; }
# relay_backlog GB: generate GB of WAL (fractions allowed) while walrelay receives it live,
# then one more commit (clients with --endpos stop only once they saw WAL past it). Sets SEG,
# segno/seg (the backlog's first segment), endpos, final (flush position after the extra
# commit), bytes (segment start to endpos); returns once walrelay flushed `final`.
relay_backlog() {
  SEG=$((16 * 1024 * 1024)) # wal_segment_size (initdb default)
  local start t0
  start=$($PSQL -c "select pg_current_wal_lsn()")
  segno=$(($(lsn_bytes "$start") / SEG))
  seg=$(printf "%08X%08X%08X" 1 $((segno / 256)) $((segno % 256)))
  echo "generating $1 GB of WAL (walrelay receives it live)..."
  gen_wal "$(awk -v g="$1" 'BEGIN { printf "%d", g * 1073741824 }')"
  endpos=$($PSQL -c "select pg_current_wal_lsn()")
  $PSQL -c "insert into w values ('end')" >/dev/null
  final=$($PSQL -c "select pg_current_wal_flush_lsn()")
  bytes=$(($(lsn_bytes "$endpos") - segno * SEG))
  t0=$(now)
  until [ "$(lsn_bytes "$(status | jq -r .store.flush_lsn)")" -ge "$(lsn_bytes "$final")" ]; do sleep 0.1; done
  echo "backlog: $bytes bytes from the start of segment $seg to $endpos; walrelay flushed it $(calc "$(now) - $t0") s after generation ended (CPU so far $(cpu_of "$WPID") s, VmHWM $(hwm_kb "$WPID") kB)"
}

# same_segments DIR REF: every complete segment in DIR is byte-identical to REF's file of that
# name (which must exist); prints how many there were. Use as `n=$(same_segments …)` (a
# mismatch fails the command substitution, and with it the script).
same_segments() {
  local f n count=0
  for f in "$1"/0000000*; do
    n=$(basename "$f")
    case "$n" in *.partial | "0000000*") continue ;; esac
    [ -f "$2/$n" ] || { echo "$1: $n is missing in $2" >&2; exit 1; }
    cmp -s "$f" "$2/$n" || { echo "MISMATCH: $1/$n differs from $2/$n" >&2; exit 1; }
    count=$((count + 1))
  done
  echo "$count"
}

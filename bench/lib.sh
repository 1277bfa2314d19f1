# Shared helpers for the shell benchmarks (sourced, not run). Each script that sources this
# gets: $T (temp dir, removed on exit), as_pg (run PostgreSQL tools as a non-root user
# namespace when root), pg_init/pg_start (a PostgreSQL 15 primary on 127.0.0.1), $PSQL,
# gen_wal (bulk inserts until N bytes of WAL), cpu_of PID (user+sys seconds), rss_kb/hwm_kb,
# on_exit CMD (extra cleanup, run before the servers are stopped).
set -euo pipefail
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

# pg_init DIR PORT: a primary configured like bench/receive.sh's.
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

# gen_wal BYTES: bulk inserts (as bench/receive.sh) until the primary wrote BYTES of WAL.
gen_wal() {
  $PSQL -c "create unlogged table if not exists seed as select md5(g::text) || md5((g+1)::text) as t from generate_series(1, 100000) g" >/dev/null
  $PSQL -c "create table if not exists w (t text)" >/dev/null
  local start done_bytes
  start=$($PSQL -c "select pg_current_wal_lsn()")
  while :; do
    $PSQL -c "insert into w select t || t || t || t from seed, generate_series(1, 20)" >/dev/null
    done_bytes=$($PSQL -c "select (pg_current_wal_lsn() - '$start'::pg_lsn)::bigint")
    [ "$done_bytes" -ge "$1" ] && break
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
build_release() { [ "${BENCH_NO_BUILD:-}" = 1 ] || cargo build --release --quiet; }
# wait_http URL SECONDS
wait_http() { local i; for ((i = 0; i < $2 * 10; i++)); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; return 1; }

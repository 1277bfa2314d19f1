#!/usr/bin/env bash
# Receive throughput: walrelay receive vs pg_receivewal draining the same WAL backlog from a
# real PostgreSQL 15 primary on loopback (see docs/benchmarks.md).
#
#   bench/receive.sh [GB]        # default 2 GB of WAL backlog
#
# Both clients start from their own slot created before the backlog was generated, stop at the
# same --endpos, and write to the same disk. Reported: wall time, MB/s, CPU seconds (user+sys)
# and peak RSS (GNU time). walrelay runs in its default mode (fsync at every queue drain, status
# after each fsync); pg_receivewal in its default mode (fsync at segment close).
#   BENCH_COMPARE=/path/to/other/walrelay   also run that binary on the same backlog (A/B)
#   BENCH_PERF=/path/perf.data              wrap walrelay (not the A/B one) in perf record
#   BENCH_NO_BUILD=1                        use target/release/walrelay as it is
set -euo pipefail
cd "$(dirname "$0")/.."
GB=${1:-2}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${BENCH_PORT:-55439}
[ "${BENCH_NO_BUILD:-}" = 1 ] || cargo build --release --quiet
BIN=$PWD/target/release/walrelay
T=$(mktemp -d /tmp/walrelay-bench.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then unshare --user --map-user=65534 --map-group=65534 -- "$@"; else "$@"; fi; }
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$T/pg" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$T"; }
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$T/pg" -U postgres -A trust --no-sync >/dev/null
cat >>"$T/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_wal_size = 8GB
checkpoint_timeout = 1h
shared_buffers = 512MB
CONF
as_pg "$PGBIN/pg_ctl" -D "$T/pg" -l "$T/pg.log" -w start >/dev/null
PSQL="$PGBIN/psql -X -At -h 127.0.0.1 -p $PORT -U postgres -d postgres"
CONN="host=127.0.0.1 port=$PORT user=postgres"
$PSQL -c "select pg_create_physical_replication_slot('s_pgrw', true)" >/dev/null
$PSQL -c "select pg_create_physical_replication_slot('s_walrelay', true)" >/dev/null
[ -n "${BENCH_COMPARE:-}" ] && $PSQL -c "select pg_create_physical_replication_slot('s_compare', true)" >/dev/null
echo "generating ${GB} GB of WAL..."
$PSQL -c "create unlogged table seed as select md5(g::text) || md5((g+1)::text) as t from generate_series(1, 100000) g" >/dev/null
$PSQL -c "create table w (t text)" >/dev/null
start=$($PSQL -c "select pg_current_wal_lsn()")
target=$(( GB * 1024 * 1024 * 1024 ))
while :; do
  $PSQL -c "insert into w select t || t || t || t from seed, generate_series(1, 20)" >/dev/null
  done_bytes=$($PSQL -c "select pg_current_wal_lsn() - '$start'::pg_lsn")
  [ "${done_bytes%.*}" -ge "$target" ] && break
done
endpos=$($PSQL -c "select pg_current_wal_lsn()")
bytes=$($PSQL -c "select (pg_current_wal_lsn() - '$start'::pg_lsn)::bigint")
echo "backlog: $bytes bytes, endpos $endpos"
sync

run() {  # name, command...
  local name=$1; shift
  mkdir -p "$T/$name"; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %U %S %M" -o "$T/$name.time" "$@" >"$T/$name.log" 2>&1 || { cat "$T/$name.log"; exit 1; }
  read -r wall user sys rss <"$T/$name.time"
  local mbs cpu
  mbs=$(echo "scale=0; $bytes / 1048576 / $wall" | bc)
  cpu=$(echo "$user + $sys" | bc)
  printf "%-14s wall %6.2f s   %5s MB/s   cpu %6.2f s   peak RSS %6d kB\n" "$name" "$wall" "$mbs" "$cpu" "$rss"
}
run pg_receivewal "$PGBIN/pg_receivewal" -d "$CONN" -D "$T/pg_receivewal" -S s_pgrw -E "$endpos" -n
if [ -n "${BENCH_PERF:-}" ]; then WRAP=(perf record -F 499 -g -o "$BENCH_PERF"); else WRAP=(); fi
run walrelay "${WRAP[@]}" "$BIN" receive -d "$CONN" -D "$T/walrelay" -S s_walrelay -E "$endpos" -n
if [ -n "${BENCH_COMPARE:-}" ]; then
  run walrelay-cmp "$BENCH_COMPARE" receive -d "$CONN" -D "$T/walrelay-cmp" -S s_compare -E "$endpos" -n
  for f in "$T"/walrelay-cmp/0000000*; do
    case "$f" in *.partial) continue;; esac
    cmp -s "$f" "$T/walrelay/$(basename "$f")" || { echo "MISMATCH (compare) $(basename "$f")"; exit 1; }
  done
fi
for f in "$T"/walrelay/0000000*; do
  case "$f" in *.partial) continue;; esac
  n=$(basename "$f"); [ -f "$T/pg_receivewal/$n" ] || continue
  cmp -s "$f" "$T/pg_receivewal/$n" || { echo "MISMATCH $n"; exit 1; }
done
echo "segments identical between walrelay and pg_receivewal: $(ls "$T"/walrelay | grep -c '^[0-9A-F]\{24\}$')"

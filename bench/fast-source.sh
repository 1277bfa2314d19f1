#!/usr/bin/env bash
# Ingest from a fast source: `walrelay receive` vs `pg_receivewal` reading the same stored WAL
# from one `walrelay run --listen` (see docs/benchmarks.md, "Ingest from a fast source").
#
#   bench/fast-source.sh [GB]          # default 2 GB of WAL (--quick: 64 MB), 3 runs each
#   bench/fast-source.sh --runs 5 4
#   bench/fast-source.sh --quick       # seconds; run by protocol-tests/bench_quick.rs
#   bench/fast-source.sh --drop-caches # drop the page cache before each client (root only)
#
# Why: a PostgreSQL primary's walsender tops out around 500-700 MB/s on loopback, so draining
# a primary measures the primary. Here the source is walrelay serving WAL it already stored
# (the segment files are fresh and in the page cache), with nothing else running. The page
# cache is warm by default (lib.sh `warm_cache`: free memory filled with clean pages first, so
# the clients' writes reclaim cache as on a long-running server); --drop-caches drops it before
# each client, so the source reads its files from disk. The mode is printed.
#
# How: a PostgreSQL 15 primary generates the backlog (bulk INSERTs, gen_wal) while
# `walrelay run --listen` receives it live through its slot. Once walrelay has flushed the
# backlog's end (endpos) the primary is stopped (BENCH_STOP_PRIMARY=0 keeps it up, idle):
# walrelay keeps serving its stored WAL while its upstream is down, and nothing else competes
# for the CPU. Then, alternating per run (A B A B ...), each client streams the whole backlog
# from walrelay into an empty directory on the same disk:
#   pg_receivewal -d "host=127.0.0.1 port=WPORT user=postgres" -D DIR -E endpos -n
#   walrelay receive -d "host=127.0.0.1 port=WPORT user=postgres" -D DIR -E endpos -n
# Both start at the backlog's first segment: a zero-filled `<segment>.partial` in the empty
# directory makes either client start there (no slot needed; walrelay's slots reserve WAL from
# its current flush segment only). Both run in their default durability mode (pg_receivewal:
# fsync at segment close; walrelay receive: fsync at each queue drain).
#
# Figures (median over the runs, with min/max):
#   mbps                 backlog bytes / the client's wall time (MB = 2^20 bytes)
#   cpu_s_per_gb         the client's user+sys CPU (GNU time) per GB (2^30 bytes) received
#   rss_kb               the client's peak RSS (GNU time %M)
#   server_cpu_s_per_gb  the serving walrelay's CPU (delta of /proc/PID/stat) per GB served
# Every run's completed segments are compared (cmp) with walrelay's stored ones, so both
# clients received byte-identical WAL.
#
# Knobs: GB (argument, fractional allowed), --runs N, BENCH_STOP_PRIMARY=0, and lib.sh's
# BENCH_PORT / WALRELAY_BIN / BENCH_RESULTS / PGBIN. Ports: BENCH_PORT (primary), +1 walrelay's
# walsender, +2 walrelay's admin HTTP.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$BENCH_ROOT" || exit 1
default_runs 3
if [ "$QUICK" = 1 ]; then GB=${1:-0.0625}; else GB=${1:-2}; fi
STOP_PRIMARY=${BENCH_STOP_PRIMARY:-1}
WPORT=$((PORT + 1)); MPORT=$((PORT + 2))
build_release

pg_init "$T/pg" "$PORT"
echo "autovacuum = off" >>"$T/pg/postgresql.conf"
pg_start "$T/pg"
relay_start "$WPORT" "$MPORT"
relay_backlog "$GB"
gb=$(calc "$bytes / 1073741824")
if [ "$STOP_PRIMARY" = 1 ]; then
  as_pg "$PGBIN/pg_ctl" -D "$T/pg" -m fast -w stop >/dev/null
  for ((i = 0; i < 100; i++)); do [ "$(status | jq -r .upstream.connected)" = false ] && break; sleep 0.1; done
  echo "primary stopped; walrelay upstream.connected=$(status | jq -r .upstream.connected), serving its stored WAL"
fi
sync
warm_cache

# client NAME CMD...: one timed run into an empty $T/c; appends to $T/r.NAME.{mbps,cpu,rss,srv}
client() {
  local name=$1 w u s m c0 c1 n; shift
  rm -rf "$T/c"; mkdir -p "$T/c"
  truncate -s 16M "$T/c/$seg.partial"
  sync
  drop_caches_if_asked
  c0=$(cpu_of "$WPID")
  if ! /usr/bin/time -f "%e %U %S %M" -o "$T/time" "$@" >"$T/client.log" 2>&1; then
    cat "$T/client.log" "$T/time"; tail -20 "$T/walrelay.log"; exit 1
  fi
  c1=$(cpu_of "$WPID")
  read -r w u s m <"$T/time"
  n=$(same_segments "$T/c" "$T/wr")
  [ "$n" -eq $((bytes / SEG)) ] || { echo "$name: $n completed segments, expected $((bytes / SEG))"; exit 1; }
  calc "$bytes / 1048576 / $w" >>"$T/r.$name.mbps"
  calc "($u + $s) / $gb" >>"$T/r.$name.cpu"
  echo "$m" >>"$T/r.$name.rss"
  calc "($c1 - $c0) / $gb" >>"$T/r.$name.srv"
  printf "%-14s wall %7.2f s  %7.1f MB/s  cpu %6.2f s (%5.2f s/GB)  peak RSS %7d kB  walrelay server cpu %6.2f s (%5.2f s/GB)  %d segments identical\n" \
    "$name" "$w" "$(tail -1 "$T/r.$name.mbps")" "$(calc "$u + $s")" "$(tail -1 "$T/r.$name.cpu")" "$m" \
    "$(calc "$c1 - $c0")" "$(tail -1 "$T/r.$name.srv")" "$n"
  rm -rf "$T/c"
}

WCONN="host=127.0.0.1 port=$WPORT user=postgres"
echo "== $RUNS alternating run(s): pg_receivewal and walrelay receive reading from walrelay =="
for ((r = 1; r <= RUNS; r++)); do
  client pg_receivewal "$PGBIN/pg_receivewal" -d "$WCONN" -D "$T/c" -E "$endpos" -n
  client walrelay "$BIN" receive -d "$WCONN" -D "$T/c" -E "$endpos" -n
done

echo "== medians (min/max) over $RUNS run(s), $bytes bytes each, page cache $([ "$DROP_CACHES" = 1 ] && echo dropped || echo warm) =="
for v in pg_receivewal walrelay; do
  # shellcheck disable=SC2046
  result fast-source "$v" \
    $(kv_stats mbps $(cat "$T/r.$v.mbps")) \
    $(kv_stats cpu_s_per_gb $(cat "$T/r.$v.cpu")) \
    $(kv_stats rss_kb $(cat "$T/r.$v.rss")) \
    $(kv_stats server_cpu_s_per_gb $(cat "$T/r.$v.srv"))
done
echo "walrelay (server) total CPU $(cpu_of "$WPID") s, VmHWM $(hwm_kb "$WPID") kB"

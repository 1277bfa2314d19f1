#!/usr/bin/env bash
# Added latency: time from a commit on a PostgreSQL 15 primary until the row is visible on a
# real hot standby, with the standby streaming through `walrelay run --listen` versus the same
# standby connected directly to the primary. See docs/benchmarks.md.
#
#   bench/latency.sh [SAMPLES]         # default 500 commits per run, 3 runs
#   bench/latency.sh --quick           # 30 commits, 1 run (protocol-tests/bench_quick.rs)
#   BENCH_VARIANTS="direct walrelay" BENCH_GAP_MS=20 bench/latency.sh --runs 5 1000
#
# Setup: the primary; `walrelay run --archive none --listen` in its default configuration
# (slot on the primary, group-commit window StoreOptions::flush_delay = 10 ms) and, for the
# `walrelay-sync` variant, a second one with --synchronous (fsync and publish after every
# received message); then one standby from pg_basebackup (taken after both walrelays are
# connected, so they hold all the WAL it needs), hot_standby = on,
# wal_retrieve_retry_interval = 100ms. Both walrelays stay connected for every variant, so the
# primary's load is the same for all.
# Variants (alternated per run: direct, walrelay, walrelay-sync, direct, ...): the standby's
# primary_conninfo is switched with ALTER SYSTEM + pg_reload_conf() (PG 13+ restarts the WAL
# receiver on a reload; the standby itself keeps running); the script waits until
# pg_stat_wal_receiver shows `streaming` from the expected port and the standby has replayed
# the primary's current WAL position.
#   direct         standby ← primary
#   walrelay       standby ← walrelay run (default configuration) ← primary
#   walrelay-sync  standby ← walrelay run --synchronous ← primary (context: without the 10 ms
#                  group-commit window)
#
# Method, per run: a reader session on the standby runs a DO loop: SELECT id, clock_timestamp()
# - ts FROM lat WHERE id > last (a new snapshot per statement: READ COMMITTED, and a COMMIT
# after every poll so it holds no snapshot), RAISE NOTICE of the difference in ms for every
# row the first time it is visible, pg_sleep(0.0005) between polls (PostgreSQL rounds that up
# to 1 ms: the resolution of the measurement is ~1 ms plus one poll). Once it announced itself,
# a writer on the primary runs a DO loop inserting (id, clock_timestamp()) and COMMITting each
# row, BENCH_GAP_MS (20) ms apart so that every commit travels alone. The start time is the
# insert's clock_timestamp() just before its COMMIT: the figure includes the primary's own
# commit flush (fsync), equally for every variant. Primary and standby run on the same machine,
# so their clocks agree. The notices are read from psql's stderr; a run fails unless every row
# was seen. The first BENCH_WARMUP (5) rows of every run are written and read but not counted:
# the first commits after the switch of upstream and of a new writer session are slow for
# reasons that have nothing to do with the path (first relation/page access, plan caches;
# 45-95 ms seen directly from the primary).
#
# Figures: p50_ms and p99_ms = the median over runs (kv_stats: _min/_max over runs) of each
# run's 50th / 99th percentile (nearest rank); samples = rows measured over all runs;
# pooled_p50_ms / pooled_p99_ms / mean_ms / max_ms = over the samples of all runs together.
# Knobs: SAMPLES (first argument), --runs N, BENCH_VARIANTS, BENCH_GAP_MS, BENCH_WARMUP, plus
# lib.sh's.
# Ports: PORT primary, PORT+1/+2 walrelay (listen/metrics), PORT+3/+4 walrelay --synchronous,
# PORT+5 standby.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit 1
default_runs 3
if [ "$QUICK" = 1 ]; then SAMPLES=${1:-30}; else SAMPLES=${1:-500}; fi
GAP_MS=${BENCH_GAP_MS:-20}
WARMUP=${BENCH_WARMUP:-5}
VARIANTS=${BENCH_VARIANTS:-"direct walrelay walrelay-sync"}
WPORT=$((PORT + 1)); WMPORT=$((PORT + 2)); SPORT=$((PORT + 3)); SMPORT=$((PORT + 4)); SBPORT=$((PORT + 5))
build_release

pg_init "$T/pg" "$PORT"
pg_start "$T/pg"
$PSQL -c "create table lat (id int primary key, ts timestamptz not null) with (autovacuum_enabled = false)" >/dev/null

WPIDS=()
# shellcheck disable=SC2016 # expanded when the cleanup runs
on_exit 'for p in "${WPIDS[@]}"; do kill "$p"; done'
# walrelay NAME LISTEN METRICS [ARGS...]
walrelay() {
  local name=$1 listen=$2 metrics=$3; shift 3
  "$BIN" run --upstream "$CONN application_name=$name" -D "$T/$name" --slot "$name" --archive none \
    --listen "127.0.0.1:$listen" --metrics-listen "127.0.0.1:$metrics" "$@" >"$T/$name.log" 2>&1 &
  WPIDS+=($!)
  wait_http "http://127.0.0.1:$metrics/status" 30 || { cat "$T/$name.log"; exit 1; }
  local i
  for ((i = 0; i < 300; i++)); do
    [ "$(curl -fs "http://127.0.0.1:$metrics/status" | jq -r .upstream.connected)" = true ] && return 0
    sleep 0.1
  done
  echo "$name did not connect to the primary" >&2; cat "$T/$name.log" >&2; exit 1
}
walrelay walrelay "$WPORT" "$WMPORT"
case " $VARIANTS " in *" walrelay-sync "*) walrelay walrelay_sync "$SPORT" "$SMPORT" --synchronous ;; esac

as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$T/sb" -X stream -c fast --no-sync
cat >>"$T/sb/postgresql.conf" <<CONF
port = $SBPORT
shared_buffers = 128MB
hot_standby = on
wal_retrieve_retry_interval = 100ms
primary_conninfo = 'host=127.0.0.1 port=$PORT user=postgres application_name=bench_sb'
CONF
touch "$T/sb/standby.signal"
pg_start "$T/sb"
SBPSQL="psql_at $SBPORT"

port_of() { case "$1" in direct) echo "$PORT" ;; walrelay) echo "$WPORT" ;; walrelay-sync) echo "$SPORT" ;; *) echo "unknown variant $1" >&2; exit 1 ;; esac; }
# upstream VARIANT: point the standby at it; wait until it streams from there and caught up
upstream() {
  local p i s lsn ok
  p=$(port_of "$1")
  $SBPSQL -c "alter system set primary_conninfo = 'host=127.0.0.1 port=$p user=postgres application_name=bench_sb'" >/dev/null
  $SBPSQL -c "select pg_reload_conf()" >/dev/null
  for ((i = 0; i < 600; i++)); do
    s=$($SBPSQL -c "select status || ' ' || sender_port from pg_stat_wal_receiver")
    [ "$s" = "streaming $p" ] && break
    sleep 0.1
  done
  [ "$s" = "streaming $p" ] || { echo "standby is not streaming from port $p ($1): '$s'" >&2; tail -20 "$T/sb.log" >&2; exit 1; }
  lsn=$($PSQL -c "select pg_current_wal_lsn()")
  for ((i = 0; i < 600; i++)); do
    ok=$($SBPSQL -c "select pg_last_wal_replay_lsn() >= '$lsn'")
    [ "$ok" = t ] && return 0
    sleep 0.1
  done
  echo "standby did not replay up to $lsn through $1" >&2; exit 1
}

declare -A P50 P99 NS
NEXT=0
# one VARIANT RUN
one() {
  local v=$1 r=$2 first=$((NEXT + 1)) last=$((NEXT + WARMUP + SAMPLES)) err="$T/reader-$1-$2.err" rpid i
  NEXT=$last
  upstream "$v"
  : >"$err"
  # the reader gives up SAMPLES·gap + 60 s after it started
  $SBPSQL -c "DO \$\$
DECLARE
  seen int := $first - 1;
  r record;
  deadline timestamptz := clock_timestamp() + interval '$(( (WARMUP + SAMPLES) * GAP_MS / 1000 + 60 )) s';
BEGIN
  RAISE NOTICE 'ready';
  WHILE seen < $last AND clock_timestamp() < deadline LOOP
    FOR r IN SELECT id, extract(epoch FROM clock_timestamp() - ts) * 1000 AS ms FROM lat WHERE id > seen ORDER BY id LOOP
      RAISE NOTICE 'lat % %', r.id, round(r.ms::numeric, 3);
      seen := r.id;
    END LOOP;
    COMMIT;
    PERFORM pg_sleep(0.0005);
  END LOOP;
END
\$\$" >/dev/null 2>"$err" &
  rpid=$!
  for ((i = 0; i < 300; i++)); do grep -q "NOTICE:  ready" "$err" && break; sleep 0.05; done
  grep -q "NOTICE:  ready" "$err" || { echo "the reader did not start" >&2; cat "$err" >&2; exit 1; }
  $PSQL -c "DO \$\$
BEGIN
  FOR i IN $first..$last LOOP
    INSERT INTO lat VALUES (i, clock_timestamp());
    COMMIT;
    PERFORM pg_sleep($GAP_MS / 1000.0);
  END LOOP;
END
\$\$" >/dev/null
  wait "$rpid" || { echo "the reader failed" >&2; cat "$err" >&2; exit 1; }
  awk -v from=$((first + WARMUP)) '$1 == "NOTICE:" && $2 == "lat" && $3 >= from { print $4 }' "$err" >"$T/lat-$v-$r"
  local n p50 p99
  n=$(wc -l <"$T/lat-$v-$r")
  [ "$n" -eq "$SAMPLES" ] || { echo "$v run $r: saw $n of $SAMPLES rows on the standby" >&2; tail -5 "$err" >&2; exit 1; }
  p50=$(pctl "$T/lat-$v-$r" 50); p99=$(pctl "$T/lat-$v-$r" 99)
  P50[$v]+="$p50 "; P99[$v]+="$p99 "; NS[$v]=$(( ${NS[$v]:-0} + n ))
  cat "$T/lat-$v-$r" >>"$T/lat-$v"
  printf "run %d %-14s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (%d rows)\n" "$r" "$v" "$p50" "$p99" \
    "$(sort -g "$T/lat-$v-$r" | tail -1)" "$n"
}

echo "== $SAMPLES commits per run, ${GAP_MS} ms apart, $RUNS run(s) =="
for ((r = 1; r <= RUNS; r++)); do
  for v in $VARIANTS; do one "$v" "$r"; done
done

echo
printf "%-14s %8s %8s %8s %8s %10s %10s %8s %8s\n" variant p50_ms p50_min p50_max p99_ms p99_min p99_max mean_ms samples
for v in $VARIANTS; do
  # shellcheck disable=SC2086 # word lists of per-run values
  {
    read -r pm plo phi < <(stats ${P50[$v]})
    read -r qm qlo qhi < <(stats ${P99[$v]})
  }
  printf "%-14s %8.3f %8.3f %8.3f %8.3f %10.3f %10.3f %8.3f %8d\n" "$v" "$pm" "$plo" "$phi" "$qm" "$qlo" "$qhi" \
    "$(awk '{ s += $1 } END { print s / NR }' "$T/lat-$v")" "${NS[$v]}"
done
for v in $VARIANTS; do
  # shellcheck disable=SC2086
  result latency "$v" "$(kv_stats p50_ms ${P50[$v]})" "$(kv_stats p99_ms ${P99[$v]})" "samples=${NS[$v]}" \
    "pooled_p50_ms=$(pctl "$T/lat-$v" 50)" "pooled_p99_ms=$(pctl "$T/lat-$v" 99)" \
    "mean_ms=$(awk '{ s += $1 } END { printf "%.3f", s / NR }' "$T/lat-$v")" \
    "max_ms=$(sort -g "$T/lat-$v" | tail -1)"
done

#!/usr/bin/env bash
# Live synchronous commit: TPS and per-transaction latency of a write-heavy pgbench on a
# PostgreSQL 15 primary (synchronous_commit = on) whose only synchronous standby is
# walrelay, versus pg_receivewal --synchronous. See docs/benchmarks.md.
#
#   bench/sync-commit.sh [SECS]             # default 30 s of pgbench per run, 3 runs
#   bench/sync-commit.sh --quick            # 3 s, scale 1, 1 run (protocol-tests/bench_quick.rs)
#   BENCH_VARIANTS="walrelay pg_receivewal" BENCH_SCALE=10 BENCH_CLIENTS=8 bench/sync-commit.sh --runs 5 30
#
# Variants (alternated per run: none, walrelay, walrelay-run, pg_receivewal, none, ...):
#   walrelay       `walrelay receive -S slot --synchronous` is the synchronous standby: the
#                  like-for-like counterpart of pg_receivewal --synchronous (same role, same
#                  flags). It fsyncs after every received message and reports flush right after
#                  the fsync, which is what a synchronous standby needs.
#   pg_receivewal  `pg_receivewal -S slot --synchronous` is the synchronous standby.
#   walrelay-run   context: `walrelay run --archive none` in its default configuration (no
#                  --synchronous), the daemon an operator runs anyway: it reports flush only
#                  after fsync too, but its group commit keeps fsyncs 10 ms apart
#                  (StoreOptions::flush_delay, paced from the previous fsync), so under a
#                  stream of commits each waits up to that long.
#   none           context: no synchronous standby (synchronous_standby_names = '', i.e. commit
#                  waits for the local flush only, as synchronous_commit = local).
# Each consumer variant gets a fresh slot created at the current position and an empty
# directory, is started, and must show `streaming` + `sync` in pg_stat_replication (by its
# application_name, set in the conninfo) before pgbench starts, and still `sync` after it
# ended (the script fails otherwise). Only the consumer under test is connected during its run.
#
# Load: `pgbench -N` (simple-update: UPDATE pgbench_accounts, SELECT, INSERT pgbench_history
# per transaction, every one a commit that writes WAL) rather than TPC-B: -N leaves out the
# updates of the 10·scale hot branch/teller rows, whose row-lock queues would multiply each
# commit wait across the waiting clients; what is measured is the commit path itself.
# BENCH_PGBENCH_MODE="" runs TPC-B instead. Full: scale 10, 8 clients, 2 threads, SECS s;
# quick: scale 1, 3 s. A CHECKPOINT precedes every run (the same full-page-write pattern for
# every run); pgbench runs with -n (no vacuum), -l (per-transaction log) and -r.
#
# Figures (median over runs, _min/_max over runs via kv_stats):
#   tps            pgbench's "tps = … (without initial connection time)"
#   lat_p50_ms     50th / 99th percentile (nearest rank) of the per-transaction latency of
#   lat_p99_ms     one run: the `time` column (µs) of every line of pgbench's -l log, in ms
#   commit_avg_ms  mean latency of the END (commit) statement, from pgbench -r
# Knobs: SECS (first argument), --runs N, BENCH_VARIANTS, BENCH_SCALE, BENCH_CLIENTS,
# BENCH_THREADS, BENCH_PGBENCH_MODE, plus lib.sh's (WALRELAY_BIN, BENCH_PORT, ...).
# Ports: PORT (primary), PORT+1 (walrelay-run's metrics listener).
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit 1
default_runs 3
if [ "$QUICK" = 1 ]; then
  SECS=${1:-3}; SCALE=${BENCH_SCALE:-1}
else
  SECS=${1:-30}; SCALE=${BENCH_SCALE:-10}
fi
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
MODE=${BENCH_PGBENCH_MODE--N}
VARIANTS=${BENCH_VARIANTS:-"none walrelay walrelay-run pg_receivewal"}
MPORT=$((PORT + 1))
build_release

pg_init "$T/pg" "$PORT"
echo "synchronous_commit = on" >>"$T/pg/postgresql.conf"
pg_start "$T/pg"
echo "pgbench -i -s $SCALE ..."
as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$T/pgbench-init.log" 2>&1 ||
  { cat "$T/pgbench-init.log"; exit 1; }

# set_sync NAMES: synchronous_standby_names on the primary (reloaded)
set_sync() {
  $PSQL -c "alter system set synchronous_standby_names = '$1'" >/dev/null
  $PSQL -c "select pg_reload_conf()" >/dev/null
}
# repl_state APP: "state sync_state" of APP in pg_stat_replication (empty when absent)
repl_state() {
  $PSQL -c "select state || ' ' || sync_state from pg_stat_replication where application_name = '$1'"
}
# wait_sync APP LOG: until APP is streaming as the synchronous standby (30 s)
wait_sync() {
  local i s=
  for ((i = 0; i < 300; i++)); do
    s=$(repl_state "$1")
    [ "$s" = "streaming sync" ] && return 0
    sleep 0.1
  done
  echo "$1 is not the synchronous standby after 30 s (pg_stat_replication: '${s}')" >&2
  $PSQL -c "select application_name, state, sync_state, flush_lsn from pg_stat_replication" >&2
  cat "$2" >&2
  exit 1
}

declare -A TPS P50 P99 COMMIT
CUR_PID=''  # the consumer running now (stopped on exit)
# shellcheck disable=SC2016 # expanded when the cleanup runs
on_exit '[ -z "$CUR_PID" ] || kill "$CUR_PID"'
# one VARIANT RUN
one() {
  local v=$1 r=$2 app="bench_$1" slot="sc_${1//-/_}_$2" dir="$T/recv" pid='' log="$T/$1-$2.consumer.log"
  $PSQL -c "checkpoint" >/dev/null
  if [ "$v" = none ]; then
    set_sync ""
  else
    $PSQL -c "select pg_create_physical_replication_slot('$slot', true)" >/dev/null
    mkdir -p "$dir"
    set_sync "\"$app\""
    case "$v" in
      walrelay)
        "$BIN" receive -d "$CONN application_name=$app" -D "$dir" -S "$slot" --synchronous >"$log" 2>&1 &
        pid=$! ;;
      walrelay-run)
        "$BIN" run --upstream "$CONN application_name=$app" -D "$dir" --slot "$slot" --archive none \
          --metrics-listen "127.0.0.1:$MPORT" >"$log" 2>&1 &
        pid=$! ;;
      pg_receivewal)
        "$PGBIN/pg_receivewal" -d "$CONN application_name=$app" -D "$dir" -S "$slot" --synchronous >"$log" 2>&1 &
        pid=$! ;;
      *) echo "unknown variant $v" >&2; exit 1 ;;
    esac
    CUR_PID=$pid
    wait_sync "$app" "$log"
  fi
  local out="$T/$v-$r.pgbench" lp="$T/pgb-$v-$r"
  # a commit that never gets its flush reply would hang pgbench: bound it
  # shellcheck disable=SC2086 # MODE: zero or more pgbench options
  if ! timeout $((SECS + 120)) "$PGBIN/pgbench" -n $MODE -r -c "$CLIENTS" -j "$THREADS" -T "$SECS" \
    -l --log-prefix="$lp" -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$out" 2>&1; then
    cat "$out" >&2; [ -n "$pid" ] && cat "$log" >&2; exit 1
  fi
  if [ "$v" != none ]; then
    local s; s=$(repl_state "$app")
    [ "$s" = "streaming sync" ] || { echo "$app stopped being the synchronous standby during the run: '$s'" >&2; cat "$log" >&2; exit 1; }
    set_sync ""
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # shellcheck disable=SC2034 # read by the on_exit cleanup
    CUR_PID=''
    $PSQL -c "select pg_drop_replication_slot('$slot')" >/dev/null
    rm -rf "$dir"
  fi
  # pgbench -l: client_id transaction_no time(us) script_no time_epoch time_us ...
  cat "$lp".* | awk '{ printf "%.3f\n", $3 / 1000 }' >"$T/lat-$v-$r"
  rm -f "$lp".*
  local tps p50 p99 n commit
  tps=$(awk '/^tps = / { print $3; exit }' "$out")
  commit=$(awk '$NF == "END;" { print $1; exit }' "$out")
  n=$(wc -l <"$T/lat-$v-$r")
  if [ -z "$tps" ] || [ "$n" -eq 0 ]; then
    echo "no pgbench figures for $v run $r" >&2; cat "$out" >&2; exit 1
  fi
  p50=$(pctl "$T/lat-$v-$r" 50); p99=$(pctl "$T/lat-$v-$r" 99)
  TPS[$v]+="$tps "; P50[$v]+="$p50 "; P99[$v]+="$p99 "; COMMIT[$v]+="${commit:-0} "
  printf "run %d %-14s tps %9.1f  latency p50 %7.3f ms  p99 %7.3f ms  commit avg %7.3f ms  (%d transactions)\n" \
    "$r" "$v" "$tps" "$p50" "$p99" "${commit:-0}" "$n"
}

echo "== pgbench $MODE, scale $SCALE, $CLIENTS clients, $THREADS threads, ${SECS} s, $RUNS run(s) =="
for ((r = 1; r <= RUNS; r++)); do
  for v in $VARIANTS; do one "$v" "$r"; done
done

echo
printf "%-14s %10s %10s %10s %10s %10s %10s %12s\n" variant tps tps_min tps_max p50_ms p99_ms p99_max commit_avg_ms
for v in $VARIANTS; do
  # shellcheck disable=SC2086 # word lists of per-run values
  {
    read -r tm tlo thi < <(stats ${TPS[$v]})
    read -r pm _ _ < <(stats ${P50[$v]})
    read -r qm _ qhi < <(stats ${P99[$v]})
    read -r cm _ _ < <(stats ${COMMIT[$v]})
  }
  printf "%-14s %10.1f %10.1f %10.1f %10.3f %10.3f %10.3f %12.3f\n" "$v" "$tm" "$tlo" "$thi" "$pm" "$qm" "$qhi" "$cm"
done
for v in $VARIANTS; do
  # shellcheck disable=SC2086
  result sync-commit "$v" "$(kv_stats tps ${TPS[$v]})" "$(kv_stats lat_p50_ms ${P50[$v]})" \
    "$(kv_stats lat_p99_ms ${P99[$v]})" "$(kv_stats commit_avg_ms ${COMMIT[$v]})"
done

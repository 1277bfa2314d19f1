#!/usr/bin/env bash
# Archive lag under sustained ingest: `walrelay run` archiving to SeaweedFS S3 (weed mini on
# loopback) while a PostgreSQL 15 primary generates WAL for SECS seconds; once a second the
# script samples `walrelay_archive_lag_bytes` from /metrics and write/flush/archived positions
# from /status. See docs/benchmarks.md.
#
#   bench/archive-lag.sh [--runs N] [SECS]      # default 60 s of ingest per load, 2 runs
#   bench/archive-lag.sh --quick                # 5 s per load, 1 run (the test suite)
#   BENCH_LOADS="bulk pgbench" BENCH_OUT=/tmp/lag bench/archive-lag.sh 60
#
# Loads: `bulk` = one session running back-to-back bulk INSERTs (as bench/receive.sh, the
# primary's peak WAL rate); `pgbench` = pgbench TPC-B, 8 clients (OLTP-like, a few MB/s).
# Runs alternate (bulk, pgbench, bulk, pgbench, ...); each run gets a fresh walrelay (default
# [archive] settings: concurrency 4, no compression, ack = local) archiving to its own prefix,
# and its own new slot. Figures per load (median, min, max over the runs):
#   wal_mb       WAL the primary generated during the ingest
#   lag_max_mb   largest flush_lsn - archived_lsn (from /status) seen while ingesting
#   lag_mean_mb  its mean over the samples (samples before the first archived_lsn skipped)
#   catchup_s    from the end of ingest until archived_lsn reaches the start of the segment
#                holding the final position (the open segment is only archived when
#                complete, or as a partial snapshot every archive.partial_interval)
#   rss_kb       walrelay's peak RSS (VmHWM) over the run
# BENCH_OUT=DIR keeps the per-second CSVs. Ports: PORT (PostgreSQL), PORT+1 (walrelay's
# metrics), PORT+10..PORT+19 (SeaweedFS).
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit
if [ "$QUICK" = 1 ]; then SECS=${1:-5}; else SECS=${1:-60}; fi
default_runs 2
LOADS=${BENCH_LOADS:-"bulk pgbench"}
MPORT=$((PORT + 1))
build_release
SEG=$((16 * 1024 * 1024))

weed_start

pg_init "$T/pg" "$PORT"
pg_start "$T/pg"
$PSQL -c "create unlogged table seed as select md5(g::text) || md5((g+1)::text) as t from generate_series(1, 100000) g" >/dev/null
$PSQL -c "create table w (t text)" >/dev/null
if [ "$QUICK" = 1 ]; then SCALE=1; ROWS=1; else SCALE=20; ROWS=5; fi
as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
$PSQL -c "checkpoint" >/dev/null

status() { curl -fs "http://127.0.0.1:$MPORT/status"; }
archived() { lsn_bytes "$(status | jq -r '.archive.archived_lsn // "0/0"')"; }

run_one() {  # LOAD RUN
  local load=$1 run=$2 cfg="$T/walrelay-$1-$2.toml" csv="$T/lag-$1-$2.csv"
  cat >"$cfg" <<TOML
[archive]
url = "s3://walbucket/$load-$run"
[archive.s3]
endpoint = "$WEED_S3"
region = "us-east-1"
access_key_id = "testkey"
secret_access_key = "testsecret"
TOML
  # a fresh walrelay and slot per run, started at the current position
  "$BIN" run -c "$cfg" --upstream "$CONN" -D "$T/wr" --slot "lag_${load}_$run" \
    --metrics-listen "127.0.0.1:$MPORT" >"$T/walrelay-$load-$run.log" 2>&1 &
  local wpid=$!
  wait_http "http://127.0.0.1:$MPORT/status" 30
  until [ "$(status | jq -r .upstream.connected)" = true ]; do sleep 0.1; done
  sleep 1
  echo "t,phase,primary_lsn,write_lsn,flush_lsn,archived_lsn,lag_bytes" >"$csv"
  local t0; t0=$(now)
  sample() {
    local s lag p phase ts
    ts=$(calc "$(now) - $t0")
    phase=$(cat "$T/phase" 2>/dev/null || echo ingest)
    s=$(status || echo '{}')
    lag=$(curl -fs "http://127.0.0.1:$MPORT/metrics" | awk '/^walrelay_archive_lag_bytes/ {print $2}')
    p=$($PSQL -c "select pg_current_wal_lsn()")
    echo "$ts,$phase,$(lsn_bytes "$p"),$(lsn_bytes "$(jq -r '.store.write_lsn // "0/0"' <<<"$s")"),$(lsn_bytes "$(jq -r '.store.flush_lsn // "0/0"' <<<"$s")"),$(lsn_bytes "$(jq -r '.archive.archived_lsn // "0/0"' <<<"$s")"),${lag:-}" >>"$csv"
  }
  ( # sampler: one sample started every second (each in the background, so a slow sample
    # does not stretch the interval)
    while :; do sample & sleep 1; done ) &
  local sp=$!
  echo ingest >"$T/phase"
  local l0 l1; l0=$($PSQL -c "select pg_current_wal_lsn()")
  case $load in
    bulk)
      local end; end=$(echo "$(now) + $SECS" | bc)
      while [ "$(echo "$(now) < $end" | bc)" = 1 ]; do
        $PSQL -c "insert into w select t || t || t || t from seed, generate_series(1, $ROWS)" >/dev/null
      done
      $PSQL -c "truncate w" >/dev/null ;;
    pgbench)
      as_pg "$PGBIN/pgbench" -n -c 8 -j 2 -T "$SECS" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 ;;
  esac
  l1=$($PSQL -c "select pg_current_wal_lsn()")
  local te; te=$(now)
  echo catchup >"$T/phase"
  local goal=$(( $(lsn_bytes "$l1") / SEG * SEG ))
  local a=0 limit; limit=$(echo "$te + 600" | bc)
  until [ "$a" -ge "$goal" ]; do
    if [ "$(echo "$(now) > $limit" | bc)" = 1 ]; then
      echo "archive did not catch up within 600 s (archived $a, goal $goal)" >&2
      tail -20 "$T/walrelay-$load-$run.log" >&2
      return 1
    fi
    sleep 0.2
    a=$(archived)
  done
  local catchup; catchup=$(calc "$(now) - $te")
  sleep 1.1; kill "$sp"; wait "$sp" 2>/dev/null || true
  local cpu; cpu=$(cpu_of "$wpid"); local hwm; hwm=$(hwm_kb "$wpid")
  kill "$wpid"; wait "$wpid" || true
  rm -rf "$T/wr"; rm -f "$T/phase"
  $PSQL -c "select pg_drop_replication_slot('lag_${load}_$run')" >/dev/null
  $PSQL -c "checkpoint" >/dev/null
  local gen=$(( $(lsn_bytes "$l1") - $(lsn_bytes "$l0") ))
  # lag = flush_lsn - archived_lsn from /status (samples before the archiver published its
  # first archived_lsn are skipped); the gauge is reported too; recv = primary - flush_lsn.
  awk -F, -v load="$load" -v run="$run" -v gen="$gen" -v secs="$SECS" -v cu="$catchup" -v cpu="$cpu" -v hwm="$hwm" -v out="$T/runs-$load" '
    NR > 1 && $2 == "ingest" && $6 > 0 { n++; l = $5 - $6; s += l; if (l > m) m = l; g = $7; gs += g; if (g > gm) gm = g; r = $3 - $5; if (r > rm) rm = r }
    END { printf "%-7s run %d: WAL %5.0f MB in %ds (%5.1f MB/s)  archive lag (flush-archived) during ingest: max %6.1f MB, mean %6.1f MB [gauge max %6.1f, mean %6.1f] (%d samples)  max receive lag %6.1f MB  catch-up %6.2f s  walrelay cpu %6.2f s  VmHWM %d kB\n",
          load, run, gen / 1048576, secs, gen / 1048576 / secs, m / 1048576, (n ? s / n : 0) / 1048576, gm / 1048576, (n ? gs / n : 0) / 1048576, n, rm / 1048576, cu, cpu, hwm
          printf "%.3f %.3f %.3f %.3f %d\n", gen / 1048576, m / 1048576, (n ? s / n : 0) / 1048576, cu, hwm >> out }' "$csv"
  if [ -n "${BENCH_OUT:-}" ]; then mkdir -p "$BENCH_OUT"; cp "$csv" "$BENCH_OUT/"; fi
  return 0
}
for ((r = 1; r <= RUNS; r++)); do
  for load in $LOADS; do run_one "$load" "$r"; done
done

# one RESULT line per load: median (min, max) over the runs
echo
printf '%-8s %10s %12s %13s %11s %10s\n' load wal_mb lag_max_mb lag_mean_mb catchup_s rss_kb
for load in $LOADS; do
  col() { awk -v c="$1" '{ print $c }' "$T/runs-$load"; }
  # shellcheck disable=SC2046
  med() { stats $(col "$1") | cut -d' ' -f1; }
  printf '%-8s %10s %12s %13s %11s %10s\n' "$load" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)"
  # shellcheck disable=SC2046
  result archive-lag "$load" $(kv_stats wal_mb $(col 1)) $(kv_stats lag_max_mb $(col 2)) \
    $(kv_stats lag_mean_mb $(col 3)) $(kv_stats catchup_s $(col 4)) $(kv_stats rss_kb $(col 5))
done

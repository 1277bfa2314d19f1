#!/usr/bin/env bash
# Archive lag under sustained ingest: `walrelay run` archiving to SeaweedFS S3 (weed mini on
# loopback) while a PostgreSQL 15 primary generates WAL for SECS seconds; once a second the
# script samples `walrelay_archive_lag_bytes` from /metrics and write/flush/archived positions
# from /status. See docs/benchmarks.md.
#
#   bench/archive-lag.sh [SECS]                  # default 60 s of ingest per load
#   BENCH_LOADS="bulk pgbench" BENCH_RUNS=2 BENCH_OUT=/tmp/lag bench/archive-lag.sh 60
#
# Loads: `bulk` = one session running back-to-back bulk INSERTs (as bench/receive.sh, the
# primary's peak WAL rate); `pgbench` = pgbench TPC-B, 8 clients (OLTP-like, a few MB/s).
# Catch-up = time from the end of ingest until archived_lsn reaches the start of the segment
# that holds the final flush position (the open segment is only archived when complete, or as
# a partial snapshot every archive.partial_interval).
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
SECS=${1:-60}
RUNS=${BENCH_RUNS:-2}
LOADS=${BENCH_LOADS:-"bulk pgbench"}
WEED=${WEED:-/opt/walrelay-infra/bin/weed}
MPORT=$((PORT + 2))
[ -n "${WALRELAY_BIN:-}" ] || build_release
BIN=${WALRELAY_BIN:-$PWD/target/release/walrelay}
SEG=$((16 * 1024 * 1024))

# SeaweedFS, as protocol-tests/harness/s3.rs starts it
S3P=$((PORT + 10)); ADMIN=$((PORT - 30000 + 20))
mkdir -p "$T/weed/data"
(cd "$T/weed" && exec "$WEED" mini -dir="$T/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port=$S3P -s3.port.grpc=$((PORT + 11)) -master.port=$((PORT + 12)) -master.port.grpc=$((PORT + 13)) \
  -volume.port=$((PORT + 14)) -volume.port.grpc=$((PORT + 15)) -filer.port=$((PORT + 16)) \
  -filer.port.grpc=$((PORT + 17)) -admin.port=$ADMIN -admin.port.grpc=$((ADMIN + 10000)) \
  -admin.ui=false -webdav=false -master.telemetry=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -bucket=walbucket) >"$T/weed.log" 2>&1 &
export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret
WEEDPID=$!
on_exit "kill $WEEDPID; wait $WEEDPID"
for ((i = 0; i < 900; i++)); do grep -q "S3 Endpoint" "$T/weed.log" && curl -s -o /dev/null "http://127.0.0.1:$S3P/" && break; sleep 0.1; done
grep -q "S3 Endpoint" "$T/weed.log" || { cat "$T/weed.log"; exit 1; }

pg_init "$T/pg" "$PORT"
pg_start "$T/pg"
$PSQL -c "create unlogged table seed as select md5(g::text) || md5((g+1)::text) as t from generate_series(1, 100000) g" >/dev/null
$PSQL -c "create table w (t text)" >/dev/null
as_pg "$PGBIN/pgbench" -i -q -s 20 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
$PSQL -c "checkpoint" >/dev/null

run_one() {  # LOAD RUN
  local load=$1 run=$2 cfg="$T/walrelay-$1-$2.toml" csv="$T/lag-$1-$2.csv"
  cat >"$cfg" <<TOML
[archive]
url = "s3://walbucket/$load-$run"
[archive.s3]
endpoint = "http://127.0.0.1:$S3P"
region = "us-east-1"
access_key_id = "testkey"
secret_access_key = "testsecret"
TOML
  # a fresh walrelay and slot per run, started at the current position
  "$BIN" run -c "$cfg" --upstream "$CONN" -D "$T/wr" --slot "lag_${load}_$run" \
    --metrics-listen "127.0.0.1:$MPORT" >"$T/walrelay.log" 2>&1 &
  local wpid=$!
  wait_http "http://127.0.0.1:$MPORT/status" 30
  until [ "$(curl -fs "http://127.0.0.1:$MPORT/status" | jq -r .upstream.connected)" = true ]; do sleep 0.1; done
  sleep 1
  echo "t,phase,primary_lsn,write_lsn,flush_lsn,archived_lsn,lag_bytes" >"$csv"
  local t0; t0=$(now)
  sample() {
    local s lag p phase ts
    ts=$(echo "$(now) - $t0" | bc)
    phase=$(cat "$T/phase" 2>/dev/null || echo ingest)
    s=$(curl -fs "http://127.0.0.1:$MPORT/status" || echo '{}')
    lag=$(curl -fs "http://127.0.0.1:$MPORT/metrics" | awk '/^walrelay_archive_lag_bytes/ {print $2}')
    p=$($PSQL -c "select pg_current_wal_lsn()")
    echo "$ts,$phase,$(lsn_bytes "$p"),$(lsn_bytes "$(jq -r .store.write_lsn <<<"$s")"),$(lsn_bytes "$(jq -r .store.flush_lsn <<<"$s")"),$(lsn_bytes "$(jq -r '.archive.archived_lsn // "0/0"' <<<"$s")"),${lag:-}" >>"$csv"
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
        $PSQL -c "insert into w select t || t || t || t from seed, generate_series(1, 5)" >/dev/null
      done
      $PSQL -c "truncate w" >/dev/null ;;
    pgbench)
      as_pg "$PGBIN/pgbench" -n -c 8 -j 2 -T "$SECS" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1 ;;
  esac
  l1=$($PSQL -c "select pg_current_wal_lsn()")
  local te; te=$(now)
  echo catchup >"$T/phase"
  local goal=$(( $(lsn_bytes "$l1") / SEG * SEG ))
  local a=0
  until [ "$a" -ge "$goal" ]; do
    sleep 0.2
    a=$(lsn_bytes "$(curl -fs "http://127.0.0.1:$MPORT/status" | jq -r '.archive.archived_lsn // "0/0"')")
  done
  local catchup; catchup=$(echo "$(now) - $te" | bc)
  sleep 1.1; kill "$sp"; wait "$sp" 2>/dev/null || true
  local cpu; cpu=$(cpu_of "$wpid"); local hwm; hwm=$(hwm_kb "$wpid")
  kill "$wpid"; wait "$wpid" || true
  rm -rf "$T/wr"; rm -f "$T/phase"
  $PSQL -c "select pg_drop_replication_slot('lag_${load}_$run')" >/dev/null
  $PSQL -c "checkpoint" >/dev/null
  local gen=$(( $(lsn_bytes "$l1") - $(lsn_bytes "$l0") ))
  # lag = flush_lsn - archived_lsn from /status (samples before the archiver published its
  # first archived_lsn are skipped); the gauge is reported too; recv = primary - flush_lsn.
  awk -F, -v load="$load" -v run="$run" -v gen="$gen" -v secs="$SECS" -v cu="$catchup" -v cpu="$cpu" -v hwm="$hwm" '
    NR > 1 && $2 == "ingest" && $6 > 0 { n++; l = $5 - $6; s += l; if (l > m) m = l; g = $7; gs += g; if (g > gm) gm = g; r = $3 - $5; if (r > rm) rm = r }
    END { printf "%-7s run %d: WAL %5.0f MB in %ds (%5.1f MB/s)  archive lag (flush-archived) during ingest: max %6.1f MB, mean %6.1f MB [gauge max %6.1f, mean %6.1f] (%d samples)  max receive lag %6.1f MB  catch-up %6.2f s  walrelay cpu %6.2f s  VmHWM %d kB\n",
          load, run, gen / 1048576, secs, gen / 1048576 / secs, m / 1048576, (n ? s / n : 0) / 1048576, gm / 1048576, (n ? gs / n : 0) / 1048576, n, rm / 1048576, cu, cpu, hwm }' "$csv"
  [ -n "${BENCH_OUT:-}" ] && { mkdir -p "$BENCH_OUT"; cp "$csv" "$BENCH_OUT/"; }
  return 0
}
for load in $LOADS; do
  for ((r = 1; r <= RUNS; r++)); do run_one "$load" "$r"; done
done

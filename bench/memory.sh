#!/usr/bin/env bash
# Memory of `walrelay run` with an archive and 10 downstream clients: peak RSS (VmHWM of
# /proc/PID/status) while the primary generates WAL that walrelay receives, archives and
# serves at once (see docs/benchmarks.md, "Issue 14: serving, archive, memory").
#
#   bench/memory.sh [GB]          # default 1 GB of WAL, 10 clients, 2 runs, file:// archive
#   BENCH_CLIENTS=20 BENCH_ARCHIVE=s3 bench/memory.sh --runs 1 0.5
#   bench/memory.sh --quick       # ~48 MB, 3 clients, 1 run; run by protocol-tests/bench_quick.rs
#
# Per run: a fresh `walrelay run` (its own data directory and slot, `archive.url` a fresh
# file:// directory — or, with BENCH_ARCHIVE=s3, a prefix in a SeaweedFS `weed mini`; with
# BENCH_ARCHIVE=none no archive, for reference —
# defaults otherwise: concurrency 4, no compression, ack = local) streaming from a PostgreSQL
# 15 primary, and BENCH_CLIENTS pg_receivewal clients (each into its own directory, from the
# current segment on, no slot) connected to walrelay's walsender. The primary generates GB of
# WAL (bulk INSERTs: its peak rate); the run ends when walrelay flushed and archived it and
# every client received it (`--endpos`). Figures (RESULT memory <archive>-<N>):
#   hwm_kb     walrelay's VmHWM at the end of the run
#   cpu_s      walrelay's CPU (utime+stime) over the run
#   wal_mb     WAL generated
# Client 1's completed segments are compared (cmp) with walrelay's.
# Ports: BENCH_PORT primary, +1 walsender, +2 admin HTTP, +10..+19 SeaweedFS.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$BENCH_ROOT" || exit 1
default_runs 2
if [ "$QUICK" = 1 ]; then
  GB=${1:-0.045}; N=${BENCH_CLIENTS:-3}
else
  GB=${1:-1}; N=${BENCH_CLIENTS:-10}
fi
ARCHIVE=${BENCH_ARCHIVE:-file}
WPORT=$((PORT + 1)); MPORT=$((PORT + 2))
build_release

pg_init "$T/pg" "$PORT"
cat >>"$T/pg/postgresql.conf" <<CONF
autovacuum = off
CONF
pg_start "$T/pg"
if [ "$ARCHIVE" = s3 ]; then weed_start; fi

# one_run R: one walrelay run with N clients and GB of WAL; appends to $T/r.*
one_run() {
  local r=$1 url start segno seg endpos final i pids=() c0 t0 target
  case $ARCHIVE in
    file) url="file://$T/archive-$r" ;;
    s3) url="s3://walbucket/memory-$r" ;;
    none) url="none" ;;
  esac
  printf '[archive]\nurl = "%s"\n' "$url" >"$T/run-$r.toml"
  if [ "$ARCHIVE" = s3 ]; then printf '[archive.s3]\nendpoint = "%s"\n' "$WEED_S3" >>"$T/run-$r.toml"; fi
  "$BIN" run -c "$T/run-$r.toml" --upstream "$CONN" -D "$T/wr-$r" --slot "memory$r" \
    --listen "127.0.0.1:$WPORT" --metrics-listen "127.0.0.1:$MPORT" >"$T/walrelay-$r.log" 2>&1 &
  WPID=$!
  on_exit "kill $WPID; wait $WPID"
  RELAY_STATUS=http://127.0.0.1:$MPORT/status
  wait_http "$RELAY_STATUS" 30
  until [ "$(status | jq -r .upstream.connected)" = true ]; do sleep 0.1; done
  c0=$(cpu_of "$WPID"); t0=$(now)
  SEG=$((16 * 1024 * 1024))
  start=$($PSQL -c "select pg_current_wal_lsn()")
  segno=$(($(lsn_bytes "$start") / SEG))
  seg=$(printf "%08X%08X%08X" 1 $((segno / 256)) $((segno % 256)))
  # walrelay must have the starting segment before clients ask for it
  until [ "$(lsn_bytes "$(status | jq -r .store.flush_lsn)")" -ge "$(lsn_bytes "$start")" ]; do sleep 0.1; done
  # the clients stream while the WAL is generated: their end is known only afterwards, so
  # they run without --endpos and are stopped once they have the final position
  rm -rf "$T/c"; mkdir -p "$T/c"
  for ((i = 1; i <= N; i++)); do
    mkdir "$T/c/$i"; truncate -s 16M "$T/c/$i/$seg.partial"
    "$PGBIN/pg_receivewal" -d "host=127.0.0.1 port=$WPORT user=postgres" -D "$T/c/$i" -n \
      -s 1 >"$T/c/$i.log" 2>&1 &
    pids+=($!)
  done
  echo "run $r: generating $GB GB of WAL into walrelay (archive $ARCHIVE, $N clients)..."
  gen_wal "$(awk -v g="$GB" 'BEGIN { printf "%d", g * 1073741824 }')"
  endpos=$($PSQL -c "select pg_current_wal_lsn()")
  $PSQL -c "select pg_switch_wal()" >/dev/null
  $PSQL -c "insert into w values ('end')" >/dev/null
  final=$($PSQL -c "select pg_current_wal_flush_lsn()")
  # archived: every segment up to the one holding endpos (switched, so complete)
  target=$(( ($(lsn_bytes "$endpos") / SEG + 1) * SEG ))
  until [ "$(lsn_bytes "$(status | jq -r .store.flush_lsn)")" -ge "$(lsn_bytes "$final")" ] &&
    { [ "$ARCHIVE" = none ] || [ "$(lsn_bytes "$(status | jq -r '.archive.archived_lsn // "0/0"')")" -ge "$target" ]; }; do sleep 0.2; done
  # every client got the segment holding endpos complete
  local last; last=$(printf "%08X%08X%08X" 1 $(( (target / SEG - 1) / 256 )) $(( (target / SEG - 1) % 256 )))
  for ((i = 1; i <= N; i++)); do
    until [ -f "$T/c/$i/$last" ]; do
      kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { echo "client $i exited"; cat "$T/c/$i.log"; tail -20 "$T/walrelay-$r.log"; exit 1; }
      sleep 0.2
    done
  done
  local cpu hwm wall nseg
  cpu=$(calc "$(cpu_of "$WPID") - $c0"); hwm=$(hwm_kb "$WPID"); wall=$(calc "$(now) - $t0")
  for p in "${pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  nseg=$(same_segments "$T/c/1" "$T/wr-$r")
  [ "$nseg" -ge $(( (target - segno * SEG) / SEG )) ] || { echo "client 1 has $nseg complete segments"; exit 1; }
  kill "$WPID"; wait "$WPID" 2>/dev/null || true
  $PSQL -c "select pg_drop_replication_slot('memory$r')" >/dev/null 2>&1 || true
  local wal_mb; wal_mb=$(calc "($(lsn_bytes "$endpos") - $(lsn_bytes "$start")) / 1048576")
  printf 'run %d: %.0f MB of WAL in %.1f s, walrelay CPU %.2f s, VmHWM %d kB\n' "$r" "$wal_mb" "$wall" "$cpu" "$hwm"
  echo "$hwm" >>"$T/r.hwm"; echo "$cpu" >>"$T/r.cpu"; echo "$wal_mb" >>"$T/r.wal"
  rm -rf "$T/c" "$T/wr-$r" "$T/archive-$r"
}

for ((r = 1; r <= RUNS; r++)); do one_run "$r"; done
# shellcheck disable=SC2046
result memory "$ARCHIVE-$N" $(kv_stats hwm_kb $(cat "$T/r.hwm")) $(kv_stats cpu_s $(cat "$T/r.cpu")) \
  $(kv_stats wal_mb $(cat "$T/r.wal"))

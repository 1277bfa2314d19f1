#!/usr/bin/env bash
# Ingest from a real primary: `walrelay receive` vs `pg_receivewal` draining the same slot
# backlog from a PostgreSQL 15 primary on loopback, in their default and synchronous modes.
#
#   bench/ingest.sh [GB] [--runs N] [--quick] [--drop-caches]  # default 2 GB of backlog, 3 runs
#
# One primary generates GB of WAL (bulk INSERTs) after one physical slot per client and run
# has been created, so every client drains exactly the same WAL from its own slot, from the
# same start to the same --endpos, into an empty directory on the same disk. Per run the
# variants alternate: pg_receivewal, walrelay, pg_receivewal --synchronous, walrelay
# --synchronous (and walrelay-cmp when BENCH_COMPARE is set). The page cache is warm by default
# (`warm_cache` in lib.sh: free memory filled with clean pages first, so the clients' writes
# reclaim cache as on a long-running server); `--drop-caches` drops it before each client
# (root only) so every client's walsender reads pg_wal from disk. The mode is printed.
#
# Figures per variant (median over runs, with min and max): MB/s = backlog bytes / wall time;
# CPU-s per GB = the client's user+sys CPU (GNU time, all threads) per GiB of WAL; peak RSS.
# Default modes: pg_receivewal fsyncs at segment close; walrelay fsyncs at most every 10 ms
# (group commit) because it re-serves and acknowledges only durable WAL. Synchronous modes:
# both fsync after every received batch and report flush at once.
# Every complete segment of every client is compared with pg_receivewal's (cmp).
#
#   BENCH_COMPARE=/path/to/other/walrelay   A/B: also run that binary (variant walrelay-cmp)
#   BENCH_PERF=/path/perf.data              wrap walrelay's first default-mode run in perf record
source "$(dirname "$0")/lib.sh"
cd "$BENCH_ROOT"
default_runs 3
if [ "$QUICK" = 1 ]; then MB=${1:-48}; else MB=$(calc "${1:-2} * 1024"); MB=${MB%.*}; fi
build_release

pg_init "$T/pg" "$PORT"
pg_start "$T/pg"
VARIANTS=(pg_receivewal walrelay pg_receivewal-sync walrelay-sync)
[ -n "${BENCH_COMPARE:-}" ] && VARIANTS+=(walrelay-cmp)
for ((r = 1; r <= RUNS; r++)); do
  for v in "${VARIANTS[@]}"; do
    $PSQL -c "select pg_create_physical_replication_slot('s_${v//-/_}_$r', true)" >/dev/null
  done
done
echo "generating $MB MB of WAL..."
start=$($PSQL -c "select pg_current_wal_lsn()")
gen_wal $((MB * 1024 * 1024))
endpos=$($PSQL -c "select pg_current_wal_lsn()")
bytes=$($PSQL -c "select ('$endpos'::pg_lsn - '$start'::pg_lsn)::bigint")
# one more commit, so WAL past endpos is flushed: otherwise a client that has everything up to
# endpos may wait for the primary's next WAL record before it sees that it is done
$PSQL -c "insert into w values ('end')" >/dev/null
echo "backlog: $bytes bytes ($start to $endpos)"
$PSQL -c checkpoint >/dev/null
sync
warm_cache

declare -A MBPS CPUGB RSS WALL
run_one() {  # VARIANT RUN
  local v=$1 r=$2 slot dir cmd=()
  slot="s_${v//-/_}_$r"; dir="$T/out/$v.$r"
  mkdir -p "$dir"
  case $v in
    pg_receivewal) cmd=("$PGBIN/pg_receivewal") ;;
    pg_receivewal-sync) cmd=("$PGBIN/pg_receivewal" --synchronous) ;;
    walrelay) cmd=("$BIN" receive) ;;
    walrelay-sync) cmd=("$BIN" receive --synchronous) ;;
    walrelay-cmp) cmd=("$BENCH_COMPARE" receive) ;;
  esac
  if [ "$v" = walrelay ] && [ "$r" = 1 ] && [ -n "${BENCH_PERF:-}" ]; then
    cmd=(perf record -F 499 -g -o "$BENCH_PERF" -- "${cmd[@]}")
  fi
  drop_caches_if_asked
  /usr/bin/time -f "%e %U %S %M" -o "$dir.time" "${cmd[@]}" -d "$CONN" -D "$dir" -S "$slot" \
    -E "$endpos" -n >"$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
  local wall user sys rss
  read -r wall user sys rss <"$dir.time"
  MBPS[$v]+=" $(calc "$bytes / 1048576 / $wall")"
  CPUGB[$v]+=" $(calc "($user + $sys) / ($bytes / 1073741824)")"
  RSS[$v]+=" $rss"
  WALL[$v]+=" $wall"
  printf "run %d %-19s wall %7.2f s  %7.1f MB/s  cpu %6.2f s  peak RSS %7d kB\n" \
    "$r" "$v" "$wall" "$(calc "$bytes / 1048576 / $wall")" "$(calc "$user + $sys")" "$rss"
  # byte identity with the first pg_receivewal run (every complete segment)
  if [ "$v" != pg_receivewal ] || [ "$r" != 1 ]; then
    local count
    count=$(same_segments "$dir" "$T/out/pg_receivewal.1")
    [ "$count" -gt 0 ] || { echo "$v run $r wrote no complete segment"; exit 1; }
    rm -rf "$dir"
  fi
}
for ((r = 1; r <= RUNS; r++)); do
  for v in "${VARIANTS[@]}"; do run_one "$v" "$r"; done
done

echo
echo "backlog $bytes bytes, $RUNS run(s), page cache $([ "$DROP_CACHES" = 1 ] && echo dropped || echo warm); median (min–max)"
printf "| %-19s | %-22s | %-22s | %-20s |\n" client "MB/s" "CPU-s per GB" "peak RSS kB"
for v in "${VARIANTS[@]}"; do
  # shellcheck disable=SC2086
  {
    read -r m1 l1 h1 < <(stats ${MBPS[$v]})
    read -r m2 l2 h2 < <(stats ${CPUGB[$v]})
    read -r m3 l3 h3 < <(stats ${RSS[$v]})
    printf "| %-19s | %6.1f (%6.1f–%6.1f) | %5.2f (%5.2f–%5.2f) | %6d (%6d–%6d) |\n" \
      "$v" "$m1" "$l1" "$h1" "$m2" "$l2" "$h2" "$m3" "$l3" "$h3"
    result ingest "$v" "bytes=$bytes" "$(kv_stats mbps ${MBPS[$v]})" "$(kv_stats cpu_s_per_gb ${CPUGB[$v]})" \
      "$(kv_stats rss_kb ${RSS[$v]})" "$(kv_stats wall_s ${WALL[$v]})"
  }
done

#!/usr/bin/env bash
# Fan-out: N downstream clients on one upstream slot, connected to the PostgreSQL 15 primary
# directly vs through `walrelay run --listen` (see docs/benchmarks.md, "Fan-out").
#
#   bench/fanout.sh [GB]                       # default 0.5 GB backlog, N = 1 10 50, 2 runs
#   BENCH_CLIENTS="1 10" bench/fanout.sh --runs 1 0.25
#   bench/fanout.sh --quick                    # ~32 MB, N = 1 3; run by protocol-tests/bench_quick.rs
#
# Setup: a PostgreSQL 15 primary (max_wal_senders/max_connections raised for 50+ direct
# clients, autovacuum off so that nothing but the clients loads it during a phase) and
# `walrelay run --archive none --listen` streaming from it through its slot `walrelay`. A
# pg_basebackup (-X stream) is taken, then the backlog is generated (bulk INSERTs); walrelay
# receives it live (its ingest is not measured here: see bench/ingest.sh). A second slot
# `hold` on the primary keeps the backlog for the direct clients.
#
# Each phase (direct-N or walrelay-N) starts N clients at once against the primary or against
# walrelay, all reading the same backlog up to the same end (endpos):
#   - N >= 3: 2 of them are real hot standbys, each started from its own fresh copy of the
#     base backup (own port), timed until pg_last_wal_replay_lsn() >= endpos (the time
#     includes the standby's start-up; it is watched by one server-side polling query);
#   - the other N-2 (N = 1: the only one) are pg_receivewal (default mode: fsync at segment
#     close), each into its own empty directory, starting at the backlog's first segment (a
#     zero-filled `<segment>.partial` makes it start there without a slot) and stopping at
#     `--endpos`.
# Phases alternate per run: for N: for run: direct-N; walrelay-N.
#
# Figures per phase (RESULT bench=fanout, variants direct-N and walrelay-N; median over the
# runs with _min/_max):
#   total_mbps        sum of the bytes each client received / phase wall time (MB = 2^20)
#   client_mbps_min   slowest client: pg_receivewal bytes / its own wall time, a standby's
#   client_mbps_max   bytes (endpos - backup start) / its time to replay them; fastest client
#   primary_cpu_s     the primary's CPU over the phase: tree_cpu of the postmaster (its
#                     exited walsenders included); for walrelay-N the primary is idle but for
#                     walrelay's one walsender, which is the point
#   walrelay_cpu_s    (walrelay-N only) delta of /proc/PID/stat utime+stime over the phase
#   walrelay_rss_kb   (walrelay-N only) max VmRSS sampled every 0.2 s during the phase
#   cpu_s_per_gb      the serving side's CPU per GB the clients received (GB = 2^30): the
#                     primary's (direct-N) or walrelay's (walrelay-N) CPU-s / total GB
# After each phase, one pg_receivewal client's completed segments are compared (cmp) with
# walrelay's stored ones.
#
# Cost: N=50 writes 48 x GB to disk per phase (pg_receivewal fsyncs each segment), so large
# N is bounded by the disk and the clients' CPU on a small machine. With the defaults (0.5 GB,
# N = 1 10 50, 2 runs) a run takes about 10-15 minutes on 2 cores.
#
# Knobs: GB (argument, fractional allowed), --runs N, BENCH_CLIENTS="1 10 50",
# BENCH_PHASE_TIMEOUT (seconds, default 900; quick 60), and lib.sh's BENCH_PORT /
# WALRELAY_BIN / BENCH_RESULTS / PGBIN. Ports: BENCH_PORT primary, +1 walrelay's walsender,
# +2 walrelay's admin HTTP, +3 and +4 the two standbys.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$BENCH_ROOT" || exit 1
default_runs 2
if [ "$QUICK" = 1 ]; then
  GB=${1:-0.03}; CLIENTS=${BENCH_CLIENTS:-"1 3"}; TMO=${BENCH_PHASE_TIMEOUT:-60}
else
  GB=${1:-0.5}; CLIENTS=${BENCH_CLIENTS:-"1 10 50"}; TMO=${BENCH_PHASE_TIMEOUT:-900}
fi
WPORT=$((PORT + 1)); MPORT=$((PORT + 2))
maxn=1; for n in $CLIENTS; do [ "$n" -gt "$maxn" ] && maxn=$n; done
build_release

pg_init "$T/pg" "$PORT"
cat >>"$T/pg/postgresql.conf" <<CONF
max_wal_senders = $((maxn + 10))
max_connections = $((maxn + 50))
autovacuum = off
CONF
pg_start "$T/pg"
PGPID=$(postmaster_pid "$T/pg")
# the direct clients and standbys need the primary to keep the backlog (walrelay's slot advances)
$PSQL -c "select pg_create_physical_replication_slot('hold', true)" >/dev/null
relay_start "$WPORT" "$MPORT"
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$T/base" -X stream -c fast --no-sync
base_start=$(awk '/^START WAL LOCATION/ {print $4}' "$T/base/backup_label")
relay_backlog "$GB"
sb_bytes=$(($(lsn_bytes "$endpos") - $(lsn_bytes "$base_start")))
echo "standbys: $sb_bytes bytes from the backup start $base_start"
sync

# sampler PID OUTFILE: max VmRSS (kB) of PID, every 0.2 s until killed
sampler() { local max=0 r; while :; do r=$(rss_kb "$1" 2>/dev/null || echo 0); [ "$r" -gt "$max" ] && { max=$r; echo "$max" >"$2"; }; sleep 0.2; done; }

# standby_watch I: wait until standby I accepts connections, then until it replayed endpos
# (one query polling server-side every 20 ms); writes the time it got there to $T/sb$I.done
standby_watch() {
  local p=$((PORT + 2 + $1)) deadline=$((SECONDS + TMO))
  until psql_at "$p" -c "select 1" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "standby $1 did not accept connections" >&2; return 1; }
    sleep 0.1
  done
  timeout $((deadline - SECONDS + 1)) "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "do \$\$ begin while coalesce(pg_last_wal_replay_lsn() < '$endpos', true) loop perform pg_sleep(0.02); end loop; end \$\$" >/dev/null
  now >"$T/sb$1.done"
}

# phase SOURCE N: N clients against the primary (SOURCE=direct) or walrelay (SOURCE=walrelay)
phase() {
  local src=$1 n=$2 port nsb nrw i p pids=() sp c0=0 c1=0 p0 p1 t0 t1 wall total min max w
  local v="$src-$n"
  if [ "$src" = direct ]; then port=$PORT; else port=$WPORT; fi
  if [ "$n" -ge 3 ]; then nsb=2; else nsb=0; fi
  nrw=$((n - nsb))
  rm -rf "$T/c"; mkdir -p "$T/c"
  for ((i = 1; i <= nrw; i++)); do mkdir "$T/c/$i"; truncate -s 16M "$T/c/$i/$seg.partial"; done
  for ((i = 1; i <= nsb; i++)); do
    rm -rf "$T/sb$i" "$T/sb$i.done"
    cp -a "$T/base" "$T/sb$i"
    BENCH_PGDATAS+=("$T/sb$i")
    cat >>"$T/sb$i/postgresql.conf" <<CONF
port = $((PORT + 2 + i))
primary_conninfo = 'host=127.0.0.1 port=$port user=postgres application_name=bench_sb$i'
CONF
    touch "$T/sb$i/standby.signal"
  done
  sync
  echo 0 >"$T/rss"
  if [ "$src" = walrelay ]; then sampler "$WPID" "$T/rss" & sp=$!; c0=$(cpu_of "$WPID"); fi
  p0=$(tree_cpu "$PGPID"); t0=$(now)
  for ((i = 1; i <= nsb; i++)); do
    as_pg "$PGBIN/pg_ctl" -D "$T/sb$i" -l "$T/sb$i.log" -W start >/dev/null
    standby_watch "$i" &
    pids+=($!)
  done
  for ((i = 1; i <= nrw; i++)); do
    /usr/bin/time -f "%e" -o "$T/c/$i.time" timeout "$TMO" "$PGBIN/pg_receivewal" \
      -d "host=127.0.0.1 port=$port user=postgres" -D "$T/c/$i" -E "$endpos" -n >"$T/c/$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" || {
      echo "$v: a client failed or timed out"; cat "$T"/c/*.log; for ((i = 1; i <= nsb; i++)); do tail -5 "$T/sb$i.log"; done
      tail -20 "$T/walrelay.log"; exit 1
    }
  done
  t1=$(now); p1=$(tree_cpu "$PGPID")
  if [ "$src" = walrelay ]; then c1=$(cpu_of "$WPID"); kill "$sp"; wait "$sp" 2>/dev/null || true; fi
  for ((i = 1; i <= nsb; i++)); do as_pg "$PGBIN/pg_ctl" -D "$T/sb$i" -m immediate stop >/dev/null; done
  wall=$(calc "$t1 - $t0")
  total=$((nrw * bytes + nsb * sb_bytes))
  min=""; max=""
  for ((i = 1; i <= nrw; i++)); do
    read -r w <"$T/c/$i.time"
    echo "$bytes $w"
  done >"$T/rates"
  for ((i = 1; i <= nsb; i++)); do echo "$sb_bytes $(calc "$(cat "$T/sb$i.done") - $t0")"; done >>"$T/rates"
  read -r min max < <(awk '{ r = $1 / 1048576 / $2; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r } END { printf "%.6g %.6g\n", lo, hi }' "$T/rates")
  # the clients received exactly what walrelay stored (client 1: a pg_receivewal)
  local nseg
  nseg=$(same_segments "$T/c/1" "$T/wr")
  [ "$nseg" -eq $((bytes / SEG)) ] || { echo "$v: $nseg completed segments, expected $((bytes / SEG))"; exit 1; }
  calc "$total / 1048576 / $wall" >>"$T/r.$v.total"
  echo "$min" >>"$T/r.$v.min"
  echo "$max" >>"$T/r.$v.max"
  calc "$p1 - $p0" >>"$T/r.$v.pcpu"
  if [ "$src" = walrelay ]; then calc "($c1 - $c0) * 1073741824 / $total" >>"$T/r.$v.cpg"; else calc "($p1 - $p0) * 1073741824 / $total" >>"$T/r.$v.cpg"; fi
  if [ "$src" = walrelay ]; then calc "$c1 - $c0" >>"$T/r.$v.wcpu"; cat "$T/rss" >>"$T/r.$v.wrss"; fi
  printf "%-12s %2d pg_receivewal + %d standbys  wall %7.2f s  total %7.1f MB/s  per client %6.1f-%6.1f MB/s  primary cpu %6.2f s" \
    "$v" "$nrw" "$nsb" "$wall" "$(tail -1 "$T/r.$v.total")" "$min" "$max" "$(tail -1 "$T/r.$v.pcpu")"
  if [ "$src" = walrelay ]; then printf "  walrelay cpu %6.2f s  max RSS %7d kB" "$(tail -1 "$T/r.$v.wcpu")" "$(cat "$T/rss")"; fi
  printf "  serving CPU %.2f s/GB" "$(tail -1 "$T/r.$v.cpg")"
  echo
  rm -rf "$T/c" "$T"/sb[12] "$T"/sb[12].done
}

echo "== $RUNS alternating run(s) per N: N clients direct from the primary vs through walrelay =="
for n in $CLIENTS; do
  for ((r = 1; r <= RUNS; r++)); do phase direct "$n"; phase walrelay "$n"; done
done

echo "== medians (min/max) over $RUNS run(s) =="
for n in $CLIENTS; do
  for src in direct walrelay; do
    v="$src-$n"
    extra=()
    if [ "$src" = walrelay ]; then
      # shellcheck disable=SC2207,SC2046
      extra=($(kv_stats walrelay_cpu_s $(cat "$T/r.$v.wcpu")) $(kv_stats walrelay_rss_kb $(cat "$T/r.$v.wrss")))
    fi
    # shellcheck disable=SC2046
    result fanout "$v" \
      $(kv_stats total_mbps $(cat "$T/r.$v.total")) \
      $(kv_stats client_mbps_min $(cat "$T/r.$v.min")) \
      $(kv_stats client_mbps_max $(cat "$T/r.$v.max")) \
      $(kv_stats primary_cpu_s $(cat "$T/r.$v.pcpu")) \
      $(kv_stats cpu_s_per_gb $(cat "$T/r.$v.cpg")) \
      "${extra[@]}"
  done
done
echo "walrelay total CPU $(cpu_of "$WPID") s, VmHWM $(hwm_kb "$WPID") kB"

#!/usr/bin/env bash
# Fan-out: pg_receivewal streaming a WAL backlog directly from a PostgreSQL 15 primary vs
# through `walrelay run --listen` (which already holds the WAL), with N concurrent clients;
# then a fresh standby (pg_basebackup) catching up on the same backlog from the primary vs
# from walrelay. See docs/benchmarks.md.
#
#   bench/fanout.sh [GB]          # default 1 GB of WAL backlog
#   BENCH_RUNS=2 BENCH_CLIENTS="1 4 10" BENCH_STANDBY=1 bench/fanout.sh 1
#
# Every client starts at the first segment of the backlog (a zero-filled `.partial` of that
# segment in its empty directory makes pg_receivewal start there, without a slot) and stops at
# the same --endpos. walrelay's CPU seconds are the delta of /proc/PID/stat over each phase;
# its RSS is sampled every 0.2 s (max reported), VmHWM is read before it is stopped.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
GB=${1:-1}
RUNS=${BENCH_RUNS:-2}
CLIENTS=${BENCH_CLIENTS:-"1 4 10"}
STANDBY=${BENCH_STANDBY:-1}
WPORT=$((PORT + 1)); MPORT=$((PORT + 2)); SBPORT=$((PORT + 3))
[ -n "${WALRELAY_BIN:-}" ] || build_release
BIN=${WALRELAY_BIN:-$PWD/target/release/walrelay}

pg_init "$T/pg" "$PORT"
pg_start "$T/pg"
"$BIN" run --upstream "$CONN" -D "$T/wr" --slot walrelay --archive none \
  --listen "127.0.0.1:$WPORT" --metrics-listen "127.0.0.1:$MPORT" >"$T/walrelay.log" 2>&1 &
WPID=$!
on_exit "kill $WPID; wait $WPID"
wait_http "http://127.0.0.1:$MPORT/status" 30
status() { curl -fs "http://127.0.0.1:$MPORT/status"; }
until [ "$(status | jq -r .upstream.connected)" = true ]; do sleep 0.1; done
if [ "$STANDBY" = 1 ]; then
  as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$T/base" -X stream -c fast --no-sync
fi
# the direct clients need the primary to keep the backlog (walrelay's slot advances)
$PSQL -c "select pg_create_physical_replication_slot('hold', true)" >/dev/null
start=$($PSQL -c "select pg_current_wal_lsn()")
segno=$(( $(lsn_bytes "$start") / (16 * 1024 * 1024) ))  # 16 MB segments (initdb default)
seg=$(printf "%08X%08X%08X" 1 $((segno / 256)) $((segno % 256)))
segstart=$(printf "%X/%X" $((segno * 16 * 1024 * 1024 >> 32)) $((segno * 16 * 1024 * 1024 & 0xFFFFFFFF)))
echo "generating ${GB} GB of WAL (walrelay receives it live)..."
gen_wal $((GB * 1024 * 1024 * 1024))
endpos=$($PSQL -c "select pg_current_wal_lsn()")
bytes=$($PSQL -c "select ('$endpos'::pg_lsn - '$segstart'::pg_lsn)::bigint")
echo "backlog: $bytes bytes from $segstart (segment $seg) to $endpos"
t0=$(now)
until [ "$(lsn_bytes "$(status | jq -r .store.flush_lsn)")" -ge "$(lsn_bytes "$endpos")" ]; do sleep 0.1; done
echo "walrelay flushed up to endpos $(echo "$(now) - $t0" | bc) s after generation ended; cpu so far $(cpu_of $WPID) s, VmHWM $(hwm_kb $WPID) kB"
sync

# sampler PID OUTFILE: max VmRSS (kB) of PID while it runs; stop with kill
sampler() { local max=0 r; while :; do r=$(rss_kb "$1" 2>/dev/null || echo 0); [ "$r" -gt "$max" ] && { max=$r; echo "$max" >"$2"; }; sleep 0.2; done; }

# clients NAME N HOST_PORT: N concurrent pg_receivewal from 127.0.0.1:HOST_PORT
clients() {
  local name=$1 n=$2 port=$3 i pids=() c0 c1 t0 t1 wall
  for ((i = 1; i <= n; i++)); do
    mkdir -p "$T/c/$i"; truncate -s 16M "$T/c/$i/$seg.partial"
  done
  echo 0 >"$T/rss"; sampler "$WPID" "$T/rss" & local sp=$!
  c0=$(cpu_of "$WPID"); t0=$(now)
  for ((i = 1; i <= n; i++)); do
    /usr/bin/time -f "%e %U %S" -o "$T/c/$i.time" "$PGBIN/pg_receivewal" \
      -d "host=127.0.0.1 port=$port user=postgres" -D "$T/c/$i" -E "$endpos" -n >"$T/c/$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { cat "$T"/c/*.log; exit 1; }; done
  t1=$(now); c1=$(cpu_of "$WPID"); kill "$sp"; wait "$sp" 2>/dev/null || true
  wall=$(echo "$t1 - $t0" | bc)
  local per min=999999 max=0 sum=0 ccpu=0
  for ((i = 1; i <= n; i++)); do
    read -r w u s <"$T/c/$i.time"
    per=$(echo "$bytes / 1048576 / $w" | bc)
    sum=$((sum + per)); [ "$per" -lt "$min" ] && min=$per; [ "$per" -gt "$max" ] && max=$per
    ccpu=$(echo "$ccpu + $u + $s" | bc)
  done
  # all clients must end with the same, complete WAL: compare client 1's segments with walrelay's
  for f in "$T"/c/1/0000000*; do
    case "$f" in *.partial) continue;; esac
    cmp -s "$f" "$T/wr/$(basename "$f")" || { echo "MISMATCH $(basename "$f")"; exit 1; }
  done
  printf "%-9s N=%-2d wall %6.2f s  aggregate %5d MB/s  per-client mean %4d MB/s (min %4d, max %4d)  clients cpu %6.2f s  walrelay cpu %6s s  walrelay max RSS %6d kB\n" \
    "$name" "$n" "$wall" "$(echo "$bytes * $n / 1048576 / $wall" | bc)" "$((sum / n))" "$min" "$max" "$ccpu" \
    "$(if [ "$name" = walrelay ]; then echo "$c1 - $c0" | bc; else echo -; fi)" \
    "$(if [ "$name" = walrelay ]; then cat "$T/rss"; else echo 0; fi)"
  rm -rf "$T/c"
}

echo "== pg_receivewal, direct from the primary vs through walrelay =="
for ((r = 1; r <= RUNS; r++)); do clients direct 1 "$PORT"; done
for n in $CLIENTS; do
  for ((r = 1; r <= RUNS; r++)); do clients walrelay "$n" "$WPORT"; done
done

if [ "$STANDBY" = 1 ]; then
  echo "== fresh standby (pg_basebackup taken before the backlog) catching up =="
  base_end=$(awk '/^START WAL LOCATION/ {print $4}' "$T/base/backup_label")
  sb_bytes=$(( $(lsn_bytes "$endpos") - $(lsn_bytes "$base_end") ))
  standby() {  # NAME UPSTREAM_PORT
    local d="$T/sb" c0 t0 t1 wall ok
    BENCH_PGDATAS+=("$d")
    cp -a "$T/base" "$d"
    cat >>"$d/postgresql.conf" <<CONF
port = $SBPORT
primary_conninfo = 'host=127.0.0.1 port=$2 user=postgres application_name=bench_sb'
CONF
    touch "$d/standby.signal"
    c0=$(cpu_of "$WPID"); t0=$(now)
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$T/sb.log" start >/dev/null
    until ok=$(psql_at "$SBPORT" -c "select pg_last_wal_replay_lsn() >= '$endpos'" 2>/dev/null) && [ "$ok" = t ]; do sleep 0.1; done
    t1=$(now)
    wall=$(echo "$t1 - $t0" | bc)
    printf "standby from %-8s replayed %d bytes in %6.2f s = %4d MB/s   walrelay cpu %6s s\n" \
      "$1" "$sb_bytes" "$wall" "$(echo "$sb_bytes / 1048576 / $wall" | bc)" \
      "$(if [ "$1" = walrelay ]; then echo "$(cpu_of "$WPID") - $c0" | bc; else echo -; fi)"
    as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
    rm -rf "$d" "$T/sb.log"
  }
  for ((r = 1; r <= RUNS; r++)); do standby primary "$PORT"; standby walrelay "$WPORT"; done
fi
echo "walrelay total cpu $(cpu_of $WPID) s, VmHWM $(hwm_kb $WPID) kB, VmRSS now $(rss_kb $WPID) kB"

#!/usr/bin/env bash
# Quickstart: build walrelay, start a throwaway local PostgreSQL primary, and run
# `walrelay run` against it: data in ./walrelay-quickstart/data, the walsender on
# 127.0.0.1:5433 and the status page and metrics on http://127.0.0.1:9187/.
# Ctrl-C stops walrelay and the throwaway primary (both are kept for the next run).
#
#   scripts/quickstart.sh              # PostgreSQL 15 from Debian
#   WALRELAY_UPSTREAM='host=db1 user=replicator' scripts/quickstart.sh   # a real primary instead
#
# Re-running reuses the throwaway primary and walrelay's data; `--fresh` (or
# WALRELAY_QUICKSTART_FRESH=1) deletes both first. The exit status is walrelay's.
#
# Environment (all optional):
#   WALRELAY_QUICKSTART_DIR    where the cluster and data live (default ./walrelay-quickstart)
#   PGPORT_QUICKSTART          port of the throwaway primary (default 54329)
#   WALRELAY_QUICKSTART_LISTEN walsender address (default 127.0.0.1:5433)
#   WALRELAY_QUICKSTART_METRICS status page / metrics address (default 127.0.0.1:9187)
#   WALRELAY_BIN               use this walrelay binary instead of building one
#   WALRELAY_QUICKSTART_PGBIN  PostgreSQL bin directory (default /usr/lib/postgresql/15/bin)
#   WALRELAY_QUICKSTART_EXIT_AFTER_READY=1  stop (SIGTERM) walrelay as soon as its
#                              metrics endpoint answers, and exit with its status (for tests)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "quickstart: $*"; }
die() { echo "quickstart: error: $*" >&2; exit 1; }

FRESH=${WALRELAY_QUICKSTART_FRESH:-0}
if [ "${1:-}" = "--fresh" ]; then FRESH=1; shift; fi
QS=${WALRELAY_QUICKSTART_DIR:-$PWD/walrelay-quickstart}
PORT=${PGPORT_QUICKSTART:-54329}
LISTEN=${WALRELAY_QUICKSTART_LISTEN:-127.0.0.1:5433}
METRICS=${WALRELAY_QUICKSTART_METRICS:-127.0.0.1:9187}
LISTEN_HOST=${LISTEN%:*}; LISTEN_PORT=${LISTEN##*:}
METRICS_HOST=${METRICS%:*}; METRICS_PORT=${METRICS##*:}

if [ -n "${WALRELAY_BIN:-}" ]; then
  BIN=$WALRELAY_BIN
  [ -x "$BIN" ] || die "WALRELAY_BIN=$BIN is not an executable"
else
  command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
  say "building walrelay (cargo build --release; the first build takes several minutes)"
  cargo build --release
  BIN=$PWD/target/release/walrelay
fi

# True once GET /metrics on the metrics address answers 200 (bash's /dev/tcp: no curl needed).
metrics_up() (
  exec 2>/dev/null
  exec 3<>"/dev/tcp/$METRICS_HOST/$METRICS_PORT" || exit 1
  printf 'GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$METRICS" >&3
  IFS= read -r -t 5 status <&3 || exit 1
  case "$status" in "HTTP/1."?" 200"*) exit 0 ;; *) exit 1 ;; esac
)

WALRELAY_PID=
on_signal() { [ -n "$WALRELAY_PID" ] && kill -TERM "$WALRELAY_PID" 2>/dev/null || true; }

# Runs walrelay in the background, forwards Ctrl-C/SIGTERM to it, and returns its status.
run_walrelay() {
  trap on_signal INT TERM
  "$BIN" "$@" &
  WALRELAY_PID=$!
  if [ "${WALRELAY_QUICKSTART_EXIT_AFTER_READY:-0}" = 1 ]; then
    local i
    for i in $(seq 1 600); do
      if metrics_up; then say "walrelay is up and http://$METRICS/metrics answers; stopping it (WALRELAY_QUICKSTART_EXIT_AFTER_READY)"; kill -TERM "$WALRELAY_PID"; break; fi
      kill -0 "$WALRELAY_PID" 2>/dev/null || break
      sleep 0.1
    done
  fi
  local rc=0
  while :; do
    wait "$WALRELAY_PID" && rc=0 || rc=$?
    # `wait` returns >128 when a trapped signal interrupts it: wait again for walrelay.
    kill -0 "$WALRELAY_PID" 2>/dev/null || break
  done
  WALRELAY_PID=
  trap - INT TERM
  if [ "$rc" != 0 ]; then echo "quickstart: walrelay exited with status $rc" >&2; fi
  return "$rc"
}

next_steps() {  # $1: how to reach the primary with psql
  cat <<EOF
quickstart: walrelay is starting. Things to try, in another terminal:
  status page:      http://$METRICS/   (JSON: http://$METRICS/status, Prometheus: /metrics)
  health check:     $BIN check --help
  walsender:        psql "host=$LISTEN_HOST port=$LISTEN_PORT user=postgres replication=true" -c IDENTIFY_SYSTEM
  a pg_receivewal through walrelay:
                    pg_receivewal -h $LISTEN_HOST -p $LISTEN_PORT -U postgres -D /tmp/wal-copy -v
  a standby:        pg_basebackup -h ${2:-<primary>} -D /tmp/standby -R, then in its postgresql.auto.conf
                    primary_conninfo = 'host=$LISTEN_HOST port=$LISTEN_PORT user=postgres'
  generate WAL:     $1 -c 'create table t as select generate_series(1,1000000) x'
EOF
}

if [ -n "${WALRELAY_UPSTREAM:-}" ]; then
  mkdir -p "$QS"
  SLOT=walrelay
  cat >&2 <<EOF
quickstart: WARNING: walrelay will create (if absent) the physical replication slot "$SLOT" on
quickstart: WARNING: that primary. The slot keeps WAL on the primary until walrelay has it: if you
quickstart: WARNING: stop here for good, drop it on the primary, or its pg_wal grows without bound:
quickstart: WARNING:   psql "$WALRELAY_UPSTREAM" -c "SELECT pg_drop_replication_slot('$SLOT')"
EOF
  next_steps "psql \"$WALRELAY_UPSTREAM\"" "<primary>"
  rc=0
  run_walrelay run --upstream "$WALRELAY_UPSTREAM" --slot "$SLOT" -D "$QS/data-upstream" \
    --listen "$LISTEN" --metrics-listen "$METRICS" "$@" || rc=$?
  cat >&2 <<EOF
quickstart: reminder: the slot "$SLOT" is still on the primary. When you are done with walrelay:
quickstart:   psql "$WALRELAY_UPSTREAM" -c "SELECT pg_drop_replication_slot('$SLOT')"
EOF
  exit "$rc"
fi

PGBIN=${WALRELAY_QUICKSTART_PGBIN:-/usr/lib/postgresql/15/bin}
if ! [ -x "$PGBIN/postgres" ]; then
  say "installing Debian's PostgreSQL 15"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15
fi
# PostgreSQL refuses to run as root: as root, run it in a user namespace, or, where user
# namespaces are not allowed (some containers), as a dedicated system user owning $QS.
PG_RUNAS=direct
if [ "$(id -u)" = 0 ]; then
  if unshare --user --map-user=65534 --map-group=65534 -- true 2>/dev/null; then
    PG_RUNAS=userns
  else
    PG_RUNAS=walrelaypg
    id -u walrelaypg >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh walrelaypg
  fi
fi
as_pg() {
  case $PG_RUNAS in
    direct) "$@" ;;
    userns) unshare --user --map-user=65534 --map-group=65534 -- "$@" ;;
    *) mkdir -p "$QS"; chown -R "$PG_RUNAS:" "$QS"; runuser -u "$PG_RUNAS" -- "$@" ;;
  esac
}
PRIMARY=$QS/primary
DATA=$QS/data

if [ "$FRESH" = 1 ]; then say "--fresh: deleting $QS"; rm -rf "$QS"; fi
# A previous run's primary may still be up (killed quickstart): stop it first.
if [ -f "$PRIMARY/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -m fast stop >/dev/null 2>&1 || true; fi
if [ -d "$PRIMARY" ] && ! [ -f "$PRIMARY/PG_VERSION" ]; then
  say "$PRIMARY is an incomplete cluster (an interrupted run): recreating it and walrelay's data"
  rm -rf "$PRIMARY" "$DATA"
fi
if ! [ -d "$PRIMARY" ]; then
  # walrelay's data belongs to the cluster it came from: a new cluster gets new data.
  rm -rf "$DATA"
  mkdir -p "$QS"
  say "creating the throwaway primary in $PRIMARY"
  as_pg "$PGBIN/initdb" -D "$PRIMARY" -U postgres -A trust --no-sync >/dev/null
  cat >>"$PRIMARY/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
CONF
else
  say "reusing the throwaway primary in $PRIMARY and walrelay's data in $DATA (--fresh to start over)"
fi
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -m fast stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -l "$QS/primary.log" -o "-p $PORT" -w start >/dev/null \
  || die "the throwaway primary did not start (see $QS/primary.log)"
say "throwaway primary on 127.0.0.1:$PORT (log $QS/primary.log)"
next_steps "psql -h 127.0.0.1 -p $PORT -U postgres" "127.0.0.1 -p $PORT -U postgres"
say "walrelay writes to $DATA; Ctrl-C to stop"
run_walrelay run --upstream "host=127.0.0.1 port=$PORT user=postgres" -D "$DATA" \
  --listen "$LISTEN" --metrics-listen "$METRICS" "$@"

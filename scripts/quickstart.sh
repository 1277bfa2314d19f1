#!/usr/bin/env bash
# Quickstart: build walrelay, start a throwaway local PostgreSQL primary, and run
# `walrelay run` against it on its embedded defaults (data in ./walrelay-data).
# Ctrl-C stops walrelay and the throwaway primary.
#
#   scripts/quickstart.sh              # PostgreSQL 15 from Debian
#   WALRELAY_UPSTREAM='host=db1 user=replicator' scripts/quickstart.sh   # a real primary instead
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then echo "quickstart: cargo is required (https://rustup.rs)" >&2; exit 1; fi
cargo build --release --quiet
BIN=$PWD/target/release/walrelay

if [ -n "${WALRELAY_UPSTREAM:-}" ]; then
  exec "$BIN" run --upstream "$WALRELAY_UPSTREAM" "$@"
fi

if ! [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15
fi
PGBIN=/usr/lib/postgresql/15/bin
as_pg() {  # PostgreSQL refuses to run as root: use a user namespace then
  if [ "$(id -u)" = 0 ]; then unshare --user --map-user=65534 --map-group=65534 -- "$@"; else "$@"; fi
}
PORT=${PGPORT_QUICKSTART:-54329}
TMP=$(mktemp -d /tmp/walrelay-quickstart.XXXXXX)
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$TMP/primary" -m fast stop >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$TMP/primary" -U postgres -A trust --no-sync >/dev/null
cat >>"$TMP/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
CONF
as_pg "$PGBIN/pg_ctl" -D "$TMP/primary" -l "$TMP/primary.log" -w start >/dev/null
echo "quickstart: throwaway primary on 127.0.0.1:$PORT (log $TMP/primary.log)"
echo "quickstart: generate WAL with: psql -h 127.0.0.1 -p $PORT -U postgres -c 'create table t as select generate_series(1,1000000) x'"
echo "quickstart: walrelay writes to ./walrelay-data; metrics on http://127.0.0.1:9187/metrics; Ctrl-C to stop"
"$BIN" run --upstream "host=127.0.0.1 port=$PORT user=postgres" --metrics-listen 127.0.0.1:9187 "$@" || true

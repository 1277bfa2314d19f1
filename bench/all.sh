#!/usr/bin/env bash
# Every benchmark, one after another (they must not share the 2 cores), each with its own
# defaults; output of each in $BENCH_OUT/<name>.log (default bench-results/<date>/), RESULT
# lines collected in $BENCH_OUT/results.
#
#   bench/all.sh            # the full set (about 45 minutes on 2 cores)
#   bench/all.sh --quick    # every benchmark tiny (what the test suite runs, one by one)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export BENCH_RESULTS=$PWD/$OUT/results
if [ -z "${WALRELAY_BIN:-}" ]; then
  cargo build --release --quiet
  export WALRELAY_BIN=$PWD/target/release/walrelay
fi
for b in ingest fast-source sync-commit latency fanout archive archive-lag; do
  echo "== bench/$b.sh $*"
  bash "bench/$b.sh" "$@" 2>&1 | tee "$OUT/$b.log"
done
echo "results: $BENCH_RESULTS"

#!/usr/bin/env bash
# Power-loss trials (issue 11): walrelay as the synchronous standby of PostgreSQL 15 under a
# commit loop, with the unsynced-loss fault injection (WALRELAY_TEST_UNSYNCED_LOSS=1, see
# src/store/lossy.rs), crashed N times at random points. After each crash walrelay, restarted
# with no upstream, must serve at least everything it had acknowledged; at the end a standby
# from a base backup without WAL must receive every acknowledged commit from walrelay.
# This is the protocol test `store_powerloss::powerloss_quick` with more crashes.
#
#   bench/powerloss.sh                 # 50 crashes
#   bench/powerloss.sh 200             # 200 crashes
#   WALRELAY_POWERLOSS_SEED=S bench/powerloss.sh   # replay the crash points of a seed
#
# Prints one line per crash and a final RESULT line; exits non-zero on the first violation.
# Not part of bench/all.sh (it measures correctness, not speed); not to be run alongside
# other benchmarks on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
CRASHES=${1:-50}
export WALRELAY_POWERLOSS_CRASHES=$CRASHES
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
if cargo test --test protocol store_powerloss::powerloss_quick -- --exact --nocapture \
  --test-threads=1 2>&1 | tee "$log" | grep --line-buffered -E '^powerloss:|panicked|^test '; then :; fi
if grep -q 'test store_powerloss::powerloss_quick ... ok' "$log"; then
  commits=$(sed -n 's/^powerloss: .* \([0-9]*\) acknowledged commits all on the fresh standby.*/\1/p' "$log" | tail -1)
  echo "RESULT powerloss crashes=$CRASHES commits=${commits:-0} failures=0 seconds=$(( $(date +%s) - start ))"
else
  echo "RESULT powerloss crashes=$CRASHES failures=1 seconds=$(( $(date +%s) - start ))"
  exit 1
fi

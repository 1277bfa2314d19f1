#!/usr/bin/env bash
# Coverage-guided fuzzing of walrelay's parsers of outside input with libFuzzer (libfuzzer-sys),
# on stable rustc: the code is instrumented with LLVM's SanitizerCoverage through stable
# `-C passes=sancov-module -C llvm-args=...` flags (what cargo-fuzz passes), so neither nightly
# nor cargo-fuzz is needed. Panics abort, so libFuzzer reports them as crashes.
#
#   fuzz/run.sh                 # every target, FUZZ_RUNS executions each (default 10^7)
#   fuzz/run.sh --quick         # every target, FUZZ_QUICK_RUNS executions each (default 20000)
#   fuzz/run.sh [--quick] T...  # only the named targets (see `ls fuzz/fuzz_targets`)
# Env: FUZZ_RUNS, FUZZ_QUICK_RUNS, FUZZ_MAX_TIME (seconds per target, 0 = no limit; default 0),
#      FUZZ_MAX_LEN (default 65536), FUZZ_KEEP_GOING=1 (libFuzzer's fork mode with
#      -ignore_crashes=1: keep fuzzing a target past a crash, e.g. one whose known panic is not
#      fixed yet; every crash is still written to fuzz/artifacts/ and the run fails).
#
# Inputs: fuzz/corpus/<target>/ (committed seeds) and fuzz/work/<target>/ (what the fuzzer
# found, not committed). Before fuzzing, every regression seed in fuzz/regressions/<target>/
# is replayed once; a panic there is reported and counted as a failure. Crashes found are written
# to fuzz/artifacts/<target>/ (add them to fuzz/regressions/ once fixed). Logs: fuzz/logs/.
# Exit status: 0 when no target crashed.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${FUZZ_RUNS:-10000000}
if [ "${1:-}" = "--quick" ]; then RUNS=${FUZZ_QUICK_RUNS:-20000}; shift; fi
MAX_TIME=${FUZZ_MAX_TIME:-0}
MAX_LEN=${FUZZ_MAX_LEN:-65536}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
if [ $# -gt 0 ]; then targets=("$@"); else
  mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//' | sort); fi

# --target keeps the instrumentation off build scripts and proc macros (as cargo-fuzz does).
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$TRIPLE" --bins
bindir=target/$TRIPLE/release

mkdir -p logs
failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t" "corpus/$t"
  if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
    if ! "$bindir/$t" -runs=1 "regressions/$t"/* >"logs/$t.regressions.log" 2>&1; then
      echo "== $t: a regression seed crashes (see fuzz/logs/$t.regressions.log)" >&2
      failed+=("$t(regression)")
    fi
  fi
  start=$(date +%s)
  set +e
  keep=()
  [ "${FUZZ_KEEP_GOING:-0}" = 1 ] && keep=(-fork=1 -ignore_crashes=1)
  "$bindir/$t" "${keep[@]}" -runs="$RUNS" -max_total_time="$MAX_TIME" -max_len="$MAX_LEN" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    "work/$t" "corpus/$t" >"logs/$t.log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  # fork mode prints no final stats: take the last "#N: cov: ..." status line
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\):\{0,1\}[[:space:]].*cov:.*/\1/p' "logs/$t.log" | tail -1)
  crashes=$(ls "artifacts/$t" | grep -c '^crash-' || true)
  cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | sed 's/cov: //')
  summary+=("$(printf '%-20s %12s execs %6s s  cov %6s  crash files %3s  %s' "$t" "${execs:-?}" "$secs" \
    "${cov:-?}" "$crashes" \
    "$([ $rc = 0 ] && echo ok || echo "CRASH (rc $rc, see fuzz/logs/$t.log, fuzz/artifacts/$t/)")")")
  [ $rc = 0 ] || failed+=("$t")
  echo "${summary[-1]}"
done
echo "== summary ($(date -u '+%Y-%m-%d %H:%M UTC'), runs per target: $RUNS, max time: $MAX_TIME s)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}" >&2; exit 1; fi

#!/usr/bin/env bash
# Archive upload throughput by upload concurrency: `walrelay bench-archive` against SeaweedFS
# S3 (`weed mini` on loopback, started as protocol-tests/harness/s3.rs does; payload signed,
# as walrelay does over plain http, and unsigned, as it does over https) and against a
# local-directory archive (file://), alternating runs. See docs/benchmarks.md.
#
#   bench/archive.sh [--runs N]      # 32 segments of 16 MB per level, concurrency 1 2 4 8 16, 3 runs
#   bench/archive.sh --quick         # 4 segments per level, concurrency 1 and 4, 1 run
#   BENCH_SEGMENTS=64 BENCH_CONCURRENCY=1,4 BENCH_COMPRESSION=zstd bench/archive.sh
#
# Each run calls `walrelay bench-archive --json` once per target (S3, then the directory):
# per concurrency level it uploads BENCH_SEGMENTS pseudo-random (incompressible) segment-sized
# objects through the archiver's upload path (hash, compression as BENCH_COMPRESSION, the
# create-if-absent PUT, the manifest), N at a time, under a prefix of its own that it deletes
# afterwards. S3 settings come from an [archive] config (endpoint, region) and the AWS_*
# environment (credentials), as `walrelay run` takes them.
# Figures (median, min, max over the runs): `mbps` = WAL MB (2^20 bytes) uploaded per second
# at that concurrency; `cpu_s` = walrelay's CPU (user+sys) for the whole call, all levels.
# Variants: cN (S3, SigV4 payload hash), unsigned-cN (S3, `UNSIGNED-PAYLOAD`: one SHA-256 per
# byte), file-cN (local directory).
# Ports: PORT+10..PORT+19 (SeaweedFS).
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit
default_runs 3
if [ "$QUICK" = 1 ]; then
  SEGMENTS=${BENCH_SEGMENTS:-4}; CONCURRENCY=${BENCH_CONCURRENCY:-1,4}
else
  SEGMENTS=${BENCH_SEGMENTS:-32}; CONCURRENCY=${BENCH_CONCURRENCY:-1,2,4,8,16}
fi
COMPRESSION=${BENCH_COMPRESSION:-none}
build_release

weed_start
cat >"$T/s3.toml" <<TOML
[archive]
url = "s3://walbucket/bench"
[archive.s3]
endpoint = "$WEED_S3"
TOML
{ cat "$T/s3.toml"; printf '[archive.options]\naws_unsigned_payload = "true"\n'; } >"$T/s3u.toml"

# bench TARGET RUN: one bench-archive call; appends "concurrency mbps" to $T/mbps-<variant>
bench() {
  local target=$1 args=()
  case $target in
    s3) args=(-c "$T/s3.toml") ;;
    s3u) args=(-c "$T/s3u.toml") ;;
    file) args=(--url "file://$T/file-archive") ;;
  esac
  /usr/bin/time -f '%U %S' -o "$T/time-$target-$2" "$BIN" bench-archive "${args[@]}" \
    --concurrency "$CONCURRENCY" --segments "$SEGMENTS" \
    --compression "$COMPRESSION" --json >"$T/out-$target-$2.json"
  local c mbps prefix="" u s
  [ "$target" = file ] && prefix=file-
  [ "$target" = s3u ] && prefix=unsigned-
  read -r u s <"$T/time-$target-$2"
  calc "$u + $s" >>"$T/cpu-${prefix:-s3-}"
  printf '%-5s run %d  walrelay CPU %.2f s (all levels)\n' "$target" "$2" "$(calc "$u + $s")"
  while read -r c mbps; do
    echo "$mbps" >>"$T/mbps-${prefix}c$c"
    printf '%-5s run %d  concurrency %3d  %8.1f MB/s\n' "$target" "$2" "$c" "$mbps"
  done < <(jq -r '"\(.concurrency) \(.mbps)"' "$T/out-$target-$2.json")
}
for ((r = 1; r <= RUNS; r++)); do
  bench s3 "$r"
  bench s3u "$r"
  bench file "$r"
done

echo
echo "$SEGMENTS segments of 16 MB per level, compression $COMPRESSION, $RUNS run(s): median (min - max) MB/s"
for prefix in "" unsigned- file-; do
  # shellcheck disable=SC2046
  read -r m lo hi < <(stats $(cat "$T/cpu-${prefix:-s3-}"))
  printf '%-12s walrelay CPU %.2f s (%.2f - %.2f) for all levels\n' "${prefix:-s3-}" "$m" "$lo" "$hi"
  for c in ${CONCURRENCY//,/ }; do
    v=${prefix}c$c
    # shellcheck disable=SC2046
    read -r m lo hi < <(stats $(cat "$T/mbps-$v"))
    printf '%-12s %8.1f  (%.1f - %.1f)\n' "$v" "$m" "$lo" "$hi"
    # shellcheck disable=SC2046
    result archive "$v" $(kv_stats mbps $(cat "$T/mbps-$v")) $(kv_stats cpu_s $(cat "$T/cpu-${prefix:-s3-}"))
  done
done

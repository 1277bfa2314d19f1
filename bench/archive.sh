#!/bin/sh
# Archive throughput against SeaweedFS by upload concurrency (see docs/benchmarks.md).
set -e
cd "$(dirname "$0")/.."
cargo test --release --test protocol archive_bench -- --ignored --nocapture "$@"

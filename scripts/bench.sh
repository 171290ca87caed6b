#!/usr/bin/env bash
# Runs every benchmark in one go and regenerates the tables of
# docs/benchmarks.md and the plot docs/img/benchmarks.svg from the results.
# Needs redis-server (the Redis and stack benches start their own).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p tierstack-benches -- --warm-up-time 2 --measurement-time 5 "$@"
python3 scripts/bench_report.py

#!/usr/bin/env bash
# Runs every benchmark and regenerates the tables of docs/benchmarks.md and
# the plots docs/img/benchmarks.svg and docs/img/scaling.svg from the results.
# RUNS=3 runs the benches three times; each ratio is taken within one run and
# the tables report the median of those ratios (the default is one run).
# Extra arguments go to criterion (a filter such as `memory/`).
# Needs redis-server (the Redis and stack benches start their own).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-1}
case $runs in '' | *[!0-9]* | 0) echo "bench.sh: RUNS must be a positive number, not '$runs'" >&2; exit 2 ;; esac
rm -rf target/criterion-runs
for run in $(seq "$runs"); do
    echo "== run $run of $runs" >&2
    cargo bench -p tierstack-benches -- --warm-up-time 2 --measurement-time 5 "$@"
    mkdir -p target/criterion-runs
    cp -r target/criterion "target/criterion-runs/$run"
done
python3 scripts/bench_report.py

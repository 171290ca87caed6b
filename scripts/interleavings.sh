#!/usr/bin/env bash
# Model checks of the group-commit queue and single-flight under shuttle
# (docs/testing.md, "Interleavings"). The scenarios are ordinary library
# tests (`group_commit::tests`, `flight::tests`); `--cfg shuttle` swaps the
# queue's and the flight map's locks, channels and threads for shuttle's and
# runs each scenario under many random schedules. The build has a target
# directory of its own, so it never mixes with the normal one.
#
# Environment:
#   TIERSTACK_SHUTTLE_ITERATIONS  random schedules per scenario (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg shuttle"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_SHUTTLE:-target/shuttle}
cargo test -p tierstack-core --lib group_commit::tests
cargo test -p tierstack --no-default-features --features memory --lib flight::tests

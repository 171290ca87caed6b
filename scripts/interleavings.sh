#!/usr/bin/env bash
# Model checks of single-flight and the group-commit queue under shuttle
# (docs/testing.md, "Interleavings"). `--cfg shuttle` swaps their locks,
# channels and threads for shuttle's, so the build has a target directory of
# its own and never mixes with the normal one.
#
# Environment:
#   TIERSTACK_SHUTTLE_ITERATIONS  random schedules per test (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg shuttle"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_SHUTTLE:-target/shuttle}
cargo test -p tierstack-core --test interleavings
cargo test -p tierstack --no-default-features --features memory --test interleavings

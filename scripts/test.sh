#!/usr/bin/env bash
# The full test suite: formatting, lints, docs, every test of every crate.
# Installs or starts what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS=0
# Each heading says how long the run has taken and how much disk is free,
# so that a slow step or a full disk shows in the log.
step() { printf '\n== [%ss, %s free] %s\n' "$SECONDS" "$(df -h --output=avail . 2>/dev/null | tail -1 | tr -d ' ')" "$*"; }

step "redis-server and redis-cli (the Redis tier's tests start their own servers), python3 (the SQLite readers' checks), sqlite3 and openssl (environment-gated tests), setpriv (root runs the read-only directory cases as an unprivileged user)"
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
    || ! command -v python3 >/dev/null 2>&1 || ! command -v sqlite3 >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server python3 sqlite3 openssl util-linux
    elif command -v brew >/dev/null 2>&1; then
        # macOS has sqlite3 and openssl; the setpriv cases are Linux-only and
        # report themselves as ignored there.
        brew install redis python3
    else
        echo "install redis-server, redis-cli, python3, sqlite3, openssl and setpriv, then run this again" >&2
        exit 1
    fi
fi
redis-server --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet

step "cargo test (all features)"
# Environment-gated tests (harness = false) report a missing environment as
# ignored, with the reason. CI runs as root with everything above installed,
# so there a missing environment is a failure, never a skip.
if [ "${CI:-}" = "true" ]; then export TIERSTACK_REQUIRE_ENVIRONMENT=1; fi
cargo test --workspace --all-features

step "model checks of single-flight and the group-commit queue under shuttle (scripts/interleavings.sh)"
bash scripts/interleavings.sh

step "the previous release and this one on the same SQLite file, exports and Redis server (scripts/compat.sh)"
bash scripts/compat.sh
step "all tests passed"

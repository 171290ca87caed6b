#!/usr/bin/env bash
# The full test suite: formatting, lints, docs, every test of every crate.
# Installs or starts what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "redis-server and redis-cli (the Redis tier's tests start their own servers), python3 (the SQLite readers' checks)"
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
    || ! command -v python3 >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server python3
    elif command -v brew >/dev/null 2>&1; then
        brew install redis python3
    else
        echo "install redis-server, redis-cli and python3, then run this again" >&2
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
cargo test --workspace --all-features

step "the previous release and this one on the same SQLite file, exports and Redis server (scripts/compat.sh)"
bash scripts/compat.sh

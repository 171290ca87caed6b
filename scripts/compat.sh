#!/usr/bin/env bash
# The previous release's `tierstack` and this one against the same SQLite
# file, the same Redis server and each other's exports, both ways.
#
# Required of every pairing: no corruption, no wrong value, nothing the other
# version can read destroyed silently; where a version cannot read what the
# other wrote it fails or misses clearly. docs/upgrading.md says what each
# direction does; this script checks exactly that.
#
# The previous release is built once from a pinned commit into
# target/previous-release (TIERSTACK_PREVIOUS_RELEASE overrides the commit).
set -euo pipefail
cd "$(dirname "$0")/.."

previous=${TIERSTACK_PREVIOUS_RELEASE:-e4d4522abdd5efd691386649aaa0d21c816405e4}
cache_dir=$PWD/target/previous-release
old=$cache_dir/tierstack-$previous
new=$PWD/target/debug/tierstack

if [ ! -x "$old" ]; then
    echo "building the previous release ($previous)"
    src=$(mktemp -d)
    git archive "$previous" | tar -x -C "$src"
    # Without debuginfo, and only the binary kept: this build is a tool
    # of the check, and CI's disk also holds the workspace's own builds.
    build_previous() {
        CARGO_PROFILE_DEV_DEBUG=0 CARGO_TARGET_DIR="$cache_dir/target" cargo build --quiet --locked \
            --manifest-path "$src/Cargo.toml" -p tierstack-cli "$@"
    }
    if ! build_previous; then
        # A failed build of a pinned, once-good commit is the machine's
        # (disk, memory), not the code's: say which, and try once more alone.
        df -h . >&2
        echo "building the previous release failed; trying again with one job" >&2
        build_previous -j 1
    fi
    mkdir -p "$cache_dir"
    cp "$cache_dir/target/debug/tierstack" "$old"
    rm -rf "$src" "$cache_dir/target"
fi
cargo build --quiet -p tierstack-cli

work=$(mktemp -d)
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
# check DESCRIPTION EXPECTED_EXIT EXPECTED_STDOUT|- STDERR_PATTERN|- -- COMMAND...
check() {
    local what=$1 want_code=$2 want_out=$3 want_err=$4
    shift 5
    local code=0
    "$@" >"$work/out" 2>"$work/err" || code=$?
    local out err
    out=$(cat "$work/out")
    err=$(cat "$work/err")
    local ok=1
    [ "$code" = "$want_code" ] || ok=0
    if [ "$want_out" != "-" ] && [ "$out" != "$want_out" ]; then ok=0; fi
    if [ "$want_err" != "-" ] && ! grep -q -- "$want_err" "$work/err"; then ok=0; fi
    if grep -q "panicked" "$work/err"; then ok=0; fi
    if [ "$ok" = 1 ]; then
        passed=$((passed + 1))
        echo "ok   $what"
    else
        failed=$((failed + 1))
        echo "FAIL $what: exit $code (want $want_code), stdout '$out' (want '$want_out'), stderr '$err' (want /$want_err/)"
    fi
}

echo
echo "== SQLite: the RFC config, previous release first, then this one"
location=$work/rfc
printf 'cache:\n  enabled: true\n  file_ttl_days: 7\n  memory_ttl_seconds: 3600\n  max_memory_entries: 1000\n  location: "%s"\n' \
    "$location" >"$work/rfc.yaml"
rfc=(--config "$work/rfc.yaml")
check "previous release stores a value" 0 - - -- "$old" "${rfc[@]}" set "audnexus:book:asin=B1" '{"title":"Dune"}'
check "previous release reads it" 0 '{"title":"Dune"}' - -- "$old" "${rfc[@]}" get "audnexus:book:asin=B1"
check "this release reads the previous release's value (file migrated)" 0 '{"title":"Dune"}' - -- "$new" "${rfc[@]}" get "audnexus:book:asin=B1"
check "this release stores a value" 0 - - -- "$new" "${rfc[@]}" set "audnexus:book:asin=B2" '{"title":"Emma"}'
check "previous release refuses the migrated file clearly (get)" 2 "" "newer tierstack" -- "$old" "${rfc[@]}" get "audnexus:book:asin=B1"
check "previous release refuses the migrated file clearly (set)" 2 "" "newer tierstack" -- "$old" "${rfc[@]}" set "audnexus:book:asin=B3" '1'
check "this release still reads the first value" 0 '{"title":"Dune"}' - -- "$new" "${rfc[@]}" get "audnexus:book:asin=B1"
check "this release still reads its own value" 0 '{"title":"Emma"}' - -- "$new" "${rfc[@]}" get "audnexus:book:asin=B2"
if command -v python3 >/dev/null 2>&1; then
    check "python3 sees text timestamps and JSON in every row" 0 "2 2" - -- python3 -c '
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1], detect_types=sqlite3.PARSE_DECLTYPES)
rows = c.execute("SELECT data, expires_at FROM metadata_cache").fetchall()
[json.loads(d) for d, _ in rows]
live = c.execute("SELECT count(*) FROM metadata_cache WHERE expires_at > CURRENT_TIMESTAMP").fetchone()[0]
print(len(rows), live)' "$location/metadata.db"
fi

echo
echo "== Exports, both ways"
old_location=$work/old
printf 'cache:\n  location: "%s"\n' "$old_location" >"$work/old.yaml"
check "previous release stores a value in its own file" 0 - - -- "$old" --config "$work/old.yaml" set "pathinfo:path=/a" '"x"'
check "previous release exports" 0 - - -- "$old" --config "$work/old.yaml" export "$work/old.jsonl"
check "this release imports the previous release's export" 0 - - -- "$new" "${rfc[@]}" import "$work/old.jsonl"
check "the imported value reads" 0 '"x"' - -- "$new" "${rfc[@]}" get "pathinfo:path=/a"
check "this release exports" 0 - - -- "$new" "${rfc[@]}" export "$work/new.jsonl"
check "previous release refuses this release's export clearly" 2 "" "newer tierstack" -- "$old" --config "$work/old.yaml" import "$work/new.jsonl"
check "previous release's file unchanged by the refused import" 0 '"x"' - -- "$old" --config "$work/old.yaml" get "pathinfo:path=/a"

echo
echo "== Redis: one server, one prefix, both releases side by side"
port=""
for candidate in $(shuf -i 20000-40000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --daemonize yes --pidfile "$work/redis.pid" >/dev/null
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_pid=$(cat "$work/redis.pid")
printf 'cache:\n  codec: json\n  compression: none\n  tiers:\n    - kind: redis\n      url: redis://127.0.0.1:%s\n      prefix: team\n' \
    "$port" >"$work/redis.yaml"
r=(--config "$work/redis.yaml")
k="audnexus:book:asin=R1"
check "previous release stores a value in Redis" 0 - - -- "$old" "${r[@]}" set "$k" '"old"'
check "this release does not see it (another key layout): a miss, not a wrong value" 1 "" - -- "$new" "${r[@]}" get "$k"
check "this release stores its own value" 0 - - -- "$new" "${r[@]}" set "$k" '"new"'
check "previous release still reads its value" 0 '"old"' - -- "$old" "${r[@]}" get "$k"
check "this release reads its value" 0 '"new"' - -- "$new" "${r[@]}" get "$k"
check "previous release clears its namespace" 0 - - -- "$old" "${r[@]}" clear --yes
check "this release's value survives the previous release's clear" 0 '"new"' - -- "$new" "${r[@]}" get "$k"
check "previous release stores again" 0 - - -- "$old" "${r[@]}" set "$k" '"old again"'
check "this release clears its namespace" 0 - - -- "$new" "${r[@]}" clear --yes
check "the previous release's value survives this release's clear" 0 '"old again"' - -- "$old" "${r[@]}" get "$k"
check "this release's value is gone" 1 "" - -- "$new" "${r[@]}" get "$k"
keys=$(redis-cli -p "$port" --scan | sort | tr '\n' ' ')
check "the server holds only the previous release's key" 0 "team:1:$k " - -- echo "$keys"

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

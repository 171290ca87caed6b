#!/usr/bin/env bash
# Mutation testing with cargo-mutants (docs/testing.md, "Mutation testing").
#
#   scripts/mutants.sh            the change's tierstack-core files only: the
#                                 mutants in lines that differ from the base
#                                 commit, tested with core's own tests, within
#                                 a time budget; exits 1 if a mutant is missed
#   scripts/mutants.sh --full     every mutant of tierstack-core (core's own
#                                 tests) and of flight.rs and policy.rs (the
#                                 facade's library tests): about 40 min here with two jobs
#
# Environment:
#   MUTANTS_BASE         commit to diff against (default: .ci/mutants-base,
#                        the last commit that landed; move it forward when a
#                        stop lands)
#   MUTANTS_BUDGET_SECS  wall-time cap of the diff run (default 420); what the
#                        cap leaves untested is listed, and is not a failure
#   MUTANTS_OUT          output directory (default target/mutants)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${MUTANTS_OUT:-target/mutants}
budget=${MUTANTS_BUDGET_SECS:-420}
if ! [[ "$budget" =~ ^[0-9]+$ ]]; then
    echo "mutants: MUTANTS_BUDGET_SECS must be a whole number of seconds, got '$budget'" >&2
    exit 2
fi
if ! cargo mutants --version >/dev/null 2>&1; then
    echo "== installing cargo-mutants" >&2
    cargo install cargo-mutants --locked --quiet
fi

case "${1:-}" in
    --full)
        mkdir -p "$out"
        # All features, so that feature-gated code (the bincode codec) is
        # built and tested rather than reported as missed; `--all-targets`
        # leaves out the doc tests, which only compile the examples.
        cargo mutants -p tierstack-core --all-features --test-workspace false -j 2 \
            -o "$out/core" -- --all-targets || true
        cargo mutants -p tierstack -f crates/tierstack/src/flight.rs -f crates/tierstack/src/policy.rs \
            --test-workspace false -j 2 -o "$out/facade" -- --lib || true
        for d in "$out/core" "$out/facade"; do
            echo "== $d"
            for kind in caught missed timeout unviable; do
                printf '%-9s %s\n' "$kind" "$(wc -l < "$d/mutants.out/$kind.txt")"
            done
        done
        exit 0
        ;;
    "") ;;
    *) echo "usage: scripts/mutants.sh [--full]" >&2; exit 2 ;;
esac

base=${MUTANTS_BASE:-$(tr -d '[:space:]' < .ci/mutants-base)}
if ! git rev-parse --quiet --verify "$base^{commit}" >/dev/null; then
    echo "mutants: base commit '$base' is not in this clone; nothing to compare with" >&2
    exit 2
fi
mkdir -p "$out"
diff_file="$out/change.diff"
git diff "$base" -- crates/tierstack-core/src > "$diff_file"
if ! [ -s "$diff_file" ]; then
    echo "mutants: no change to crates/tierstack-core since $base"
    exit 0
fi
cargo mutants -p tierstack-core --all-features --in-diff "$diff_file" --list > "$out/all.txt"
echo "mutants: $(wc -l < "$out/all.txt") mutants in the change since $base, budget ${budget}s"
status=0
timeout --signal=INT "$budget" \
    cargo mutants -p tierstack-core --all-features --in-diff "$diff_file" --test-workspace false \
    --timeout 120 -j 2 -o "$out" -- --all-targets || status=$?
# cargo-mutants exits 2 for missed mutants and 3 for timeouts (both read
# from the outcome files below); anything else but success means it could
# not test at all (1: bad arguments, 4: the tests fail without a mutant).
case "$status" in
    0 | 2 | 3 | 124 | 130) ;;
    *) echo "mutants: cargo mutants failed (exit $status) before it could test the change" >&2; exit 1 ;;
esac
results="$out/mutants.out"
tested=$(cat "$results"/{caught,missed,timeout,unviable}.txt 2>/dev/null | wc -l)
echo "mutants: tested $tested of $(wc -l < "$out/all.txt")"
if [ "$status" = 124 ] || [ "$status" = 130 ]; then
    echo "mutants: the budget ran out; not tested:"
    # Mutant names as cargo-mutants prints them, without the outcome files'.
    cat "$results"/{caught,missed,timeout,unviable}.txt 2>/dev/null | sort > "$out/tested.txt"
    sort "$out/all.txt" | comm -23 - "$out/tested.txt" | sed 's/^/  /'
fi
if [ -s "$results/missed.txt" ]; then
    echo "mutants: missed (a test should fail for each, or the code is dead):" >&2
    sed 's/^/  /' "$results/missed.txt" >&2
    exit 1
fi
echo "mutants: no mutant of the change survived"

#!/usr/bin/env bash
# The instruction-count regression gate: runs each scenario of the `icount`
# example (benches/icount/main.rs) under callgrind, counts the instructions of
# its measured loop only, and compares instructions per operation with the
# committed baseline, benches/icount-baseline.json. Instruction counts, unlike
# criterion's medians on these 2-core machines, repeat run to run, so a 10%
# threshold means something.
#
#   scripts/icount.sh            compare; exit 1 if a scenario costs > 10% more
#   scripts/icount.sh --update   rewrite the baseline (commit it with the reason)
#
# Environment: ICOUNT_TOLERANCE (percent, default 10), ICOUNT_BASELINE (path).
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=${ICOUNT_BASELINE:-benches/icount-baseline.json}
tolerance=${ICOUNT_TOLERANCE:-10}
update=false

usage() {
    echo "usage: scripts/icount.sh [--update]" >&2
    echo "  compares instructions per operation with $baseline; --update rewrites it" >&2
}

case "${1:-}" in
    "") ;;
    --update) update=true ;;
    -h | --help) usage; exit 0 ;;
    *) usage; exit 2 ;;
esac
if [ $# -gt 1 ]; then usage; exit 2; fi
if ! [[ "$tolerance" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "icount: ICOUNT_TOLERANCE must be a number of percent, got '$tolerance'" >&2
    exit 2
fi

# valgrind from the distribution (the same way scripts/test.sh gets
# redis-server); python3 reads and writes the baseline.
if ! command -v valgrind >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "icount: installing valgrind and python3 with apt-get" >&2
        $sudo apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind python3 || true
    fi
fi
for tool in valgrind python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "icount: $tool is missing and could not be installed; install it (Debian: apt-get install $tool) and run this again" >&2
        exit 1
    fi
done
if ! valgrind --tool=callgrind --help >/dev/null 2>&1; then
    echo "icount: this valgrind has no callgrind tool; install Debian's valgrind package" >&2
    exit 1
fi

# The bench profile: the artifacts `cargo bench` already built are reused.
echo "== building the icount example (bench profile)"
if ! bin=$(cargo build --profile bench -p tierstack-benches --example icount \
    --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "icount" and m.get("executable"):
        print(m["executable"])
'); then
    echo "icount: building the icount example failed" >&2
    exit 1
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "icount: cargo did not report the icount example's executable" >&2
    exit 1
fi

# Without address randomisation, hash tables keyed by addresses and the
# allocator's layout repeat run to run. Not every container permits it.
norandom=()
if setarch "$(uname -m)" -R true >/dev/null 2>&1; then
    norandom=(setarch "$(uname -m)" -R)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name <TAB> iterations <TAB> description, one scenario a line.
if ! "$bin" --list >"$work/list"; then
    echo "icount: $bin --list failed" >&2
    exit 1
fi

results="$work/results.tsv"
: >"$results"
while IFS=$'\t' read -r name iterations description; do
    out="$work/$name.callgrind"
    log="$work/$name.log"
    printf '%-12s %s ... ' "$name" "$description" >&2
    start=$SECONDS
    # --toggle-collect: only the measured pass (and what it calls, on its
    # thread) is counted; setup, warm-up and the checks are not.
    if ! timeout 600 "${norandom[@]}" valgrind --tool=callgrind \
        --toggle-collect='*icount_measured_pass*' \
        --callgrind-out-file="$out" --dump-instr=no --dump-line=no \
        "$bin" "$name" "$iterations" >"$log" 2>&1; then
        echo "failed" >&2
        echo "icount: scenario $name failed under callgrind; its output:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
    if ! [[ "$total" =~ ^[0-9]+$ ]] || [ "$total" -eq 0 ]; then
        echo "failed" >&2
        echo "icount: callgrind counted nothing for $name: icount_measured_pass was not entered (inlined or renamed?)" >&2
        exit 1
    fi
    echo "$((SECONDS - start))s" >&2
    printf '%s\t%s\t%s\n' "$name" "$iterations" "$total" >>"$results"
done <"$work/list"

rustc_version=$(rustc --version 2>/dev/null || echo unknown)
valgrind_version=$(valgrind --version)

python3 - "$baseline" "$results" "$tolerance" "$update" "$rustc_version" "$valgrind_version" <<'EOF'
import json
import sys

path, results, tolerance, update, rustc, valgrind = sys.argv[1:]
tolerance = float(tolerance)

now = {}
with open(results) as f:
    for line in f:
        name, iterations, total = line.rstrip("\n").split("\t")
        # One decimal: integers would hide a change of a few instructions on
        # the cheapest scenario, more digits are noise.
        now[name] = {
            "iterations": int(iterations),
            "instructions_per_op": round(int(total) / int(iterations), 1),
        }

if update == "true":
    doc = {
        "about": "Instructions per operation of each scenario of benches/icount/main.rs, "
        "counted by callgrind (scripts/icount.sh). Regenerate with "
        "`scripts/icount.sh --update` when the hot path changes on purpose, "
        "and give the reason in the commit.",
        "rustc": rustc,
        "valgrind": valgrind,
        "scenarios": now,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"{'scenario':<12} {'instructions/op':>16}")
    for name, r in now.items():
        print(f"{name:<12} {r['instructions_per_op']:>16.1f}")
    print(f"\nwrote {path}; commit it with the reason the counts changed")
    sys.exit(0)

try:
    with open(path) as f:
        doc = json.load(f)
    base = {name: float(r["instructions_per_op"]) for name, r in doc["scenarios"].items()}
except FileNotFoundError:
    print(f"icount: no baseline at {path}; create it with scripts/icount.sh --update", file=sys.stderr)
    sys.exit(1)
except (ValueError, KeyError, TypeError, AttributeError) as e:
    print(f"icount: cannot read {path} ({e!r}); regenerate it with scripts/icount.sh --update", file=sys.stderr)
    sys.exit(1)

if doc.get("rustc") != rustc or doc.get("valgrind") != valgrind:
    print(
        f"note: the baseline was made with {doc.get('rustc')} / {doc.get('valgrind')}, "
        f"this run uses {rustc} / {valgrind}; counts move with the compiler",
        file=sys.stderr,
    )

failed, faster, unknown = [], [], []
print(f"\n{'scenario':<12} {'baseline':>10} {'now':>10} {'change':>8}")
for name, r in now.items():
    value = r["instructions_per_op"]
    if name not in base or base[name] <= 0:
        unknown.append(name)
        print(f"{name:<12} {'-':>10} {value:>10.1f} {'new':>8}")
        continue
    change = (value - base[name]) / base[name] * 100
    mark = ""
    if change > tolerance:
        failed.append(name)
        mark = "  FAIL"
    elif change < -tolerance:
        faster.append(name)
    print(f"{name:<12} {base[name]:>10.1f} {value:>10.1f} {change:>+7.1f}%{mark}")
for name in base:
    if name not in now:
        print(f"{name:<12} {base[name]:>10.1f} {'-':>10} {'gone':>8}")

print()
if failed:
    print(
        f"icount: {', '.join(failed)} cost more than {tolerance:g}% more instructions than "
        f"the baseline. If that is intended, run scripts/icount.sh --update and give the "
        f"reason in the commit.",
        file=sys.stderr,
    )
    sys.exit(1)
if unknown or any(name not in now for name in base):
    print(
        "icount: the scenarios differ from the baseline's; run scripts/icount.sh --update",
        file=sys.stderr,
    )
    sys.exit(1)
if faster:
    print(
        f"hint: {', '.join(faster)} cost more than {tolerance:g}% fewer instructions than the "
        f"baseline; run scripts/icount.sh --update so the gate guards the new level"
    )
print(f"icount: every scenario within +{tolerance:g}% of the baseline")
EOF

#!/usr/bin/env python3
"""Turns criterion's JSON output into the tables of docs/benchmarks.md and the
plot docs/img/benchmarks.svg.

Reads target/criterion/<group>/<bench>/new/estimates.json (medians) and
sample.json (per-sample times, for a p99 of the samples), writes the part of
docs/benchmarks.md between the `results:begin` and `results:end` markers, and
draws ops/s per backend (raw library vs tierstack) as an SVG bar chart.
Standard library only. Run by scripts/bench.sh after `cargo bench`.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITERION = os.path.join(ROOT, "target", "criterion")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SVG = os.path.join(ROOT, "docs", "img", "benchmarks.svg")
SCALING_SVG = os.path.join(ROOT, "docs", "img", "scaling.svg")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# (section, label, group, raw bench, tierstack bench, target ratio or None,
#  "lower" when tierstack should take at most target x the raw time,
#  "throughput" when the group times a fixed amount of work and the target
#  is a minimum of raw-time / tierstack-time)
ROWS = [
    ("Memory tier", "hit: `TieredCache::get` (memory over SQLite, prebuilt key) vs raw moka `future::Cache` (TTL)", "memory/hit", "raw_moka", "cache", 1.0, "lower"),
    ("Memory tier", "hit: `TieredCache::get` vs raw moka `sync::Cache` (TTL; stretch)", "memory/hit", "raw_moka_sync", "cache", 1.0, "lower"),
    ("Memory tier", "hit: `TieredCache::get` vs raw quick_cache (the engine beneath)", "memory/hit", "raw_quick_cache", "cache", None, "lower"),
    ("Memory tier", "hit: `TieredCache::get`, memory tier alone, vs raw moka", "memory/hit", "raw_moka", "cache_memory_only", None, "lower"),
    ("Memory tier", "hit: `MemoryTier::get` (the async trait call) vs raw moka", "memory/hit", "raw_moka", "tier", None, "lower"),
    ("Memory tier", "hit: `get_or_fetch` vs `get`", "memory/hit", "cache", "get_or_fetch", 1.1, "lower"),
    ("Memory tier", "hit: `CachedFn::call` vs `Key::new` + `get` by hand", "memory/hit", "key_new_and_get", "cached_fn", 1.1, "lower"),
    ("Memory tier", "hit: `get_or_fetch` with the source's rate limit spent (1/h) vs without (memory only)", "memory/hit", "get_or_fetch_memory_only", "get_or_fetch_rate_limited", None, "lower"),
    ("Memory tier", "miss vs raw moka", "memory/miss", "raw_moka", "cache_memory_only", None, "lower"),
    ("Memory tier", "miss vs raw quick_cache", "memory/miss", "raw_quick_cache", "cache_memory_only", None, "lower"),
    ("Memory tier", "insert: `MemoryTier::set` (the async trait call, encoded entry) vs raw quick_cache insert (value made beforehand)", "memory/insert", "raw_quick_cache_prebuilt", "tier_set", 1.5, "lower"),
    ("Memory tier", "insert: `MemoryTier::set_ready` (the cache's write path, encoded entry) vs raw quick_cache insert (value made beforehand)", "memory/insert", "raw_quick_cache_prebuilt", "tier_set_ready", 1.5, "lower"),
    ("Memory tier", "insert: `MemoryTier::set` vs raw moka insert (value made beforehand)", "memory/insert", "raw_moka_prebuilt", "tier_set", 1.5, "lower"),
    ("Memory tier", "insert: `TieredCache::set` (encodes the value) vs raw moka insert (both make the value)", "memory/insert", "raw_moka", "cache", None, "lower"),
    ("Memory tier", "1 task, 20,000 L1 hits (throughput, raw time / tierstack time) vs raw moka", "memory/scaling_1_task", "raw_moka", "cache", 1.0, "throughput"),
    ("Memory tier", "2 tasks on 2 workers, 20,000 L1 hits (throughput) vs raw moka", "memory/scaling_2_tasks", "raw_moka", "cache", 1.0, "throughput"),
    ("Memory tier", "2 tasks on 2 workers (throughput) vs raw quick_cache", "memory/scaling_2_tasks", "raw_quick_cache", "cache", None, "throughput"),
    ("Ecosystem", "hit: `#[tierstack::cached]` function returning `Arc<T>` vs a `CachedFn::call` hit", "ecosystem/hit", "cached_fn", "attribute_arc", 1.1, "lower"),
    ("Ecosystem", "hit: `#[tierstack::cached]` function returning `T` (a clone of the cached value) vs a `CachedFn::call` hit", "ecosystem/hit", "cached_fn", "attribute_clone", None, "lower"),
    ("Ecosystem", "L1 hit with a Prometheus recorder installed and a publisher every 100 ms vs no recorder (feature `metrics` on in both)", "ecosystem/metrics_hit", "no_recorder", "prometheus_recorder", 1.1, "lower"),
    ("Proxy", "GET of a cached answer through `tierstack proxy` vs the same through a plain forwarding proxy (axum + reqwest, no cache), loopback", "proxy/get", "passthrough", "tierstack_hit", None, "lower"),
    ("Proxy", "GET of a cached answer through `tierstack proxy` vs straight to the upstream (which answers at once), loopback", "proxy/get", "direct", "tierstack_hit", None, "lower"),
    ("SQLite", "get + decode", "sqlite/get", "raw_select_decode", "cache", 1.2, "lower"),
    ("SQLite", "set vs the raw autocommit UPSERT (rewrites the bytes the row holds)", "sqlite/set", "raw_upsert", "cache", 1.5, "lower"),
    ("SQLite", "set vs the raw UPSERT with a fresh expiry (what a cache writes)", "sqlite/set", "raw_upsert_fresh_expiry", "cache", None, "lower"),
    ("SQLite", "set_many(1000) vs one raw transaction (rewrites the bytes the rows hold)", "sqlite/set_many_1000", "raw_one_transaction", "tier", 1.3, "lower"),
    ("SQLite", "set_many(1000) vs one raw transaction with fresh expiries", "sqlite/set_many_1000", "raw_one_transaction_fresh_expiry", "tier", None, "lower"),
    ("redb", "get + decode", "redb/get", "raw_get_decode", "cache", 1.2, "lower"),
    ("redb", "set (durable commit)", "redb/set", "raw_insert_commit", "cache", None, "lower"),
    ("sled", "get + decode", "sled/get", "raw_get_decode", "cache", 1.2, "lower"),
    ("Redis", "get + decode: `TieredCache::get` vs raw GET", "redis/get", "raw_get_decode", "cache", 1.15, "lower"),
    ("Redis", "get: `Tier::get` vs raw GET", "redis/get", "raw_get", "tier", 1.15, "lower"),
    ("Redis", "set: `TieredCache::set` vs raw SET PX", "redis/set", "raw_set_px", "cache", None, "lower"),
    ("Redis", "get_many(100) vs raw MGET", "redis/get_many_100", "raw_mget", "tier", 1.2, "lower"),
    ("Redis", "32 tasks x 50 gets (throughput, raw time / tier time)", "redis/concurrent_32x50_get", "raw", "tier", 0.8, "throughput"),
    ("Keys", "`Key::new`, one parameter, vs `format!`", "key", "format_one_param", "new_one_param", 1.5, "lower"),
    ("Keys", "`Key::new`, three parameters, vs `format!`", "key", "format_three_params", "new_three_params", None, "lower"),
    ("Keys", "`Key::builder`, three parameters, vs `format!`", "key", "format_three_params", "builder_three_params", None, "lower"),
    ("Codecs", "encode MessagePack", "codec/encode_msgpack", "raw", "tierstack", 1.1, "lower"),
    ("Codecs", "decode MessagePack", "codec/decode_msgpack", "raw", "tierstack", 1.1, "lower"),
    ("Codecs", "encode JSON", "codec/encode_json", "raw", "tierstack", 1.1, "lower"),
    ("Codecs", "decode JSON", "codec/decode_json", "raw", "tierstack", 1.1, "lower"),
    ("Codecs", "encode bincode", "codec/encode_bincode", "raw", "tierstack", 1.1, "lower"),
    ("Codecs", "decode bincode", "codec/decode_bincode", "raw", "tierstack", 1.1, "lower"),
    ("Compression", "zstd 3", "compression/zstd3", "raw", "tierstack", 1.1, "lower"),
    ("Compression", "zstd 3 with a dictionary", "compression/zstd3_dictionary", "raw", "tierstack", 1.1, "lower"),
    ("Compression", "read a zstd entry (decompress + decode; tierstack also checks the checksum)", "compression/read_zstd3_entry", "raw_decompress_decode", "tierstack", 1.1, "lower"),
]

STACKS = ["memory+sqlite", "memory+sqlite+redis"]

# (label, group, peer bench, [(tierstack label, bench)], target)
# Ratios are tierstack time / peer time: below 1 means tierstack is faster.
PEERS = [
    ("disk store get", "peers/disk_get", "cached_redb", "`cached` RedbCache",
     [("redb", "tierstack_redb"), ("SQLite", "tierstack_sqlite")], "faster"),
    ("disk store set", "peers/disk_set", "cached_redb", "`cached` RedbCache",
     [("redb", "tierstack_redb"), ("SQLite", "tierstack_sqlite")], "faster"),
    ("Redis store get", "peers/redis_get", "cached", "`cached` AsyncRedisCache",
     [("Redis", "tierstack")], "faster"),
    ("Redis store set", "peers/redis_set", "cached", "`cached` AsyncRedisCache",
     [("Redis", "tierstack")], "faster"),
    ("memory+disk hit, from memory", "peers/hybrid_memory_hit", "foyer", "foyer HybridCache",
     [("memory+SQLite", "tierstack_memory_sqlite"), ("memory+redb", "tierstack_memory_redb")], "on par"),
    ("memory+disk hit, from disk", "peers/hybrid_disk_hit", "foyer", "foyer HybridCache",
     [("memory+SQLite", "tierstack_memory_sqlite"), ("memory+redb", "tierstack_memory_redb")], "on par"),
]

# "On par" allows the noise of these machines: within 10%.
ON_PAR = 1.1

PLOT = [
    ("memory", "memory/hit", "raw_moka", "cache"),
    ("sqlite", "sqlite/get", "raw_select_decode", "cache"),
    ("redb", "redb/get", "raw_get_decode", "cache"),
    ("sled", "sled/get", "raw_get_decode", "cache"),
    ("redis", "redis/get", "raw_get_decode", "cache"),
]


RUNS = os.path.join(ROOT, "target", "criterion-runs")


def run_dirs():
    """Criterion output of each run kept by scripts/bench.sh (RUNS=3 keeps
    three), or the last run alone."""
    if os.path.isdir(RUNS):
        dirs = sorted(os.path.join(RUNS, d) for d in os.listdir(RUNS))
        if dirs:
            return dirs
    return [CRITERION]


def load_one(root, group, bench):
    """(median ns, p99 of per-iteration sample times ns) of one run, or None."""
    path = os.path.join(root, group.replace("/", "_"), bench, "new")
    try:
        with open(os.path.join(path, "estimates.json")) as f:
            median = json.load(f)["median"]["point_estimate"]
        with open(os.path.join(path, "sample.json")) as f:
            sample = json.load(f)
        per_iter = sorted(t / n for t, n in zip(sample["times"], sample["iters"]))
        p99 = per_iter[min(len(per_iter) - 1, int(len(per_iter) * 0.99))]
        return median, p99
    except (OSError, KeyError, ValueError):
        return None


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def load(group, bench):
    """(median ns, p99 ns): the median over the kept runs, or None."""
    runs = [r for r in (load_one(d, group, bench) for d in run_dirs()) if r]
    if not runs:
        return None
    return median([r[0] for r in runs]), median([r[1] for r in runs])


def ratio_of(group, raw, ours, kind):
    """The median over the runs of the ratio taken within each run."""
    ratios = []
    for d in run_dirs():
        a, b = load_one(d, group, raw), load_one(d, group, ours)
        if a and b:
            ratios.append(a[0] / b[0] if kind == "throughput" else b[0] / a[0])
    return (median(ratios), len(ratios)) if ratios else (None, 0)


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def verdict(ratio, target, kind):
    if target is None:
        return "–"
    met = ratio >= target if kind == "throughput" else ratio <= target
    sign = "≥" if kind == "throughput" else "≤"
    return f"{sign} {target}×: {'met' if met else 'missed'}"


def tables():
    out = []
    section = None
    for sec, label, group, raw, ours, target, kind in ROWS:
        a, b = load(group, raw), load(group, ours)
        if sec != section:
            section = sec
            out.append(f"\n### {sec}\n")
            out.append("| operation | raw | tierstack | ratio | target | p99 raw | p99 tierstack | p99 ratio (≤ 1.5×) |")
            out.append("| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")
        if a is None or b is None:
            out.append(f"| {label} | not run | not run | – | – | – | – | – |")
            continue
        ratio, runs = ratio_of(group, raw, ours, kind)
        p99 = b[1] / a[1]
        p99_verdict = "–" if kind == "throughput" else ("met" if p99 <= 1.5 else "missed") + f" ({p99:.2f}×)"
        out.append(
            f"| {label} | {fmt(a[0])} | {fmt(b[0])} | {ratio:.2f}× | {verdict(ratio, target, kind)} "
            f"| {fmt(a[1])} | {fmt(b[1])} | {p99_verdict} |"
        )
    out.append("\n### Stacks\n")
    out.append("| stack | L1 hit | lowest tier hit + copy-up | lowest tier hit alone | L1 insert | copy-up target (≤ hit + 1.2 × insert) | miss + fetch + write-through |")
    out.append("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for stack in STACKS:
        group = f"stack/{stack}"
        parts = {b: load(group, b) for b in ["l1_hit", "lowest_hit_with_copy_up", "lowest_hit_alone", "l1_insert", "miss_fetch_write_through"]}
        if any(v is None for v in parts.values()):
            out.append(f"| {stack} | not run | | | | | |")
            continue
        m = {k: v[0] for k, v in parts.items()}
        bound = m["lowest_hit_alone"] + 1.2 * m["l1_insert"]
        met = "met" if m["lowest_hit_with_copy_up"] <= bound else "missed"
        verdict_text = f"{met} ({fmt(m['lowest_hit_with_copy_up'])} vs {fmt(bound)})"
        if stack.count("+") > 1:
            # Copy-up from L3 also writes L2 (a SQLite commit); the target
            # is stated for an L2 hit copied into L1.
            verdict_text = "– (copies into L1 and L2)"
        out.append(
            f"| {stack} | {fmt(m['l1_hit'])} | {fmt(m['lowest_hit_with_copy_up'])} | {fmt(m['lowest_hit_alone'])} "
            f"| {fmt(m['l1_insert'])} | {verdict_text} | {fmt(m['miss_fetch_write_through'])} |"
        )
    out.append("\n### Peers\n")
    out.append("| workload | peer | peer time | tierstack | tierstack time | ratio (tierstack / peer) | target |")
    out.append("| --- | --- | ---: | --- | ---: | ---: | --- |")
    for label, group, peer, peer_name, ours, target in PEERS:
        theirs = load(group, peer)
        for name, bench in ours:
            mine = load(group, bench)
            if theirs is None or mine is None:
                out.append(f"| {label} | {peer_name} | not run | {name} | not run | – | – |")
                continue
            ratio = mine[0] / theirs[0]
            met = ratio < 1 if target == "faster" else ratio <= ON_PAR
            out.append(
                f"| {label} | {peer_name} | {fmt(theirs[0])} | {name} | {fmt(mine[0])} | {ratio:.2f}× "
                f"| {target}: {'met' if met else 'missed'} |"
            )
    return "\n".join(out) + "\n"


def svg():
    bars = []
    for name, group, raw, ours in PLOT:
        a, b = load(group, raw), load(group, ours)
        if a and b:
            bars.append((name, 1e9 / a[0], 1e9 / b[0]))
    if not bars:
        return None
    width, left, row, bar = 720, 90, 46, 16
    height = 60 + row * len(bars) + 30
    # A log scale: Redis (thousands/s) and memory (millions/s) on one axis.
    import math
    low = 10 ** math.floor(math.log10(min(min(r, t) for _, r, t in bars)))
    high = 10 ** math.ceil(math.log10(max(max(r, t) for _, r, t in bars)))
    span = width - left - 120

    def length(ops):
        return span * math.log10(ops / low) / math.log10(high / low)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">get + decode, operations per second (one task, log scale; higher is better)</text>',
        f'<rect x="{left}" y="32" width="12" height="12" fill="#9aa5b1"/><text x="{left + 16}" y="42">raw library</text>',
        f'<rect x="{left + 110}" y="32" width="12" height="12" fill="#2f6fba"/><text x="{left + 126}" y="42">through tierstack</text>',
    ]
    for i, (name, raw_ops, ours_ops) in enumerate(bars):
        y = 60 + i * row
        parts.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{name}</text>')
        for j, (ops, colour) in enumerate([(raw_ops, "#9aa5b1"), (ours_ops, "#2f6fba")]):
            w = max(1, length(ops))
            yy = y + j * (bar + 2)
            parts.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar}" fill="{colour}"/>')
            label = f"{ops / 1e6:.2f} M/s" if ops >= 1e6 else f"{ops / 1e3:.1f} k/s"
            parts.append(f'<text x="{left + w + 4:.1f}" y="{yy + bar - 4}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def scaling_svg():
    """L1 hits per second with 1 and 2 tasks on 2 workers: raw moka,
    raw quick_cache and tierstack, side by side."""
    series = [("raw moka", "raw_moka", "#9aa5b1"), ("raw quick_cache", "raw_quick_cache", "#c9a227"), ("tierstack", "cache", "#2f6fba")]
    rows = []
    for tasks, group in [(1, "memory/scaling_1_task"), (2, "memory/scaling_2_tasks")]:
        values = []
        for _, bench, _ in series:
            got = load(group, bench)
            if got is None:
                return None
            values.append(20000 * 1e9 / got[0])
        rows.append((tasks, values))
    width, left, row, bar = 720, 90, 70, 16
    height = 60 + row * len(rows) + 20
    high = max(v for _, values in rows for v in values)
    span = width - left - 120
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">L1 hits per second, 2-core machine (higher is better)</text>',
    ]
    x = left
    for name, _, colour in series:
        parts.append(f'<rect x="{x}" y="32" width="12" height="12" fill="{colour}"/><text x="{x + 16}" y="42">{name}</text>')
        x += 140
    for i, (tasks, values) in enumerate(rows):
        y = 60 + i * row
        parts.append(f'<text x="{left - 8}" y="{y + 2 * bar}" text-anchor="end">{tasks} task{"s" if tasks > 1 else ""}</text>')
        for j, (value, (_, _, colour)) in enumerate(zip(values, series)):
            w = max(1, span * value / high)
            yy = y + j * (bar + 2)
            parts.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar}" fill="{colour}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{yy + bar - 4}">{value / 1e6:.2f} M/s</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    if not os.path.isdir(CRITERION):
        sys.exit("no target/criterion: run `cargo bench -p tierstack-benches` first")
    with open(DOC) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{DOC} lacks the {BEGIN} / {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(DOC, "w") as f:
        f.write(head + BEGIN + "\n" + tables() + END + tail)
    drawing = svg()
    if drawing:
        os.makedirs(os.path.dirname(SVG), exist_ok=True)
        with open(SVG, "w") as f:
            f.write(drawing)
    scaling = scaling_svg()
    if scaling:
        with open(SCALING_SVG, "w") as f:
            f.write(scaling)
    print(f"wrote {os.path.relpath(DOC, ROOT)}, {os.path.relpath(SVG, ROOT)} and {os.path.relpath(SCALING_SVG, ROOT)}")


if __name__ == "__main__":
    main()

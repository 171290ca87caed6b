//! The `metrics` feature: after a scripted workload over memory and SQLite,
//! the published counters equal what the workload did, sources past the
//! limit share `source="other"`, fetches are timed, and L1 hits record
//! nothing as they happen; a stats file's totals publish under the same
//! names.
//!
//! One workload test, because the recorder it installs is process-global;
//! the stats-file test uses a thread-local recorder.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tierstack::metrics::{Metrics, MetricsOptions};
use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl};

#[derive(Debug, thiserror::Error)]
#[error("the upstream answered 503")]
struct Upstream;

/// Values by metric name and its labels (sorted `name=value` pairs).
type Values = HashMap<(String, Vec<String>), DebugValue>;

fn snapshot(snapshotter: &metrics_util::debugging::Snapshotter) -> Values {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            ((key.key().name().to_owned(), labels), value)
        })
        .collect()
}

fn counter(values: &Values, name: &str, labels: &[&str]) -> u64 {
    let mut labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
    labels.sort();
    match values.get(&(name.to_owned(), labels.clone())) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}{labels:?}: expected a counter, got {other:?}"),
    }
}

fn samples(values: &Values, name: &str, labels: &[&str]) -> usize {
    let mut labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
    labels.sort();
    match values.get(&(name.to_owned(), labels)) {
        Some(DebugValue::Histogram(v)) => v.len(),
        None => 0,
        other => panic!("{name}: expected a histogram, got {other:?}"),
    }
}

// One scripted workload and its checks, in the order they happen.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "current_thread")]
async fn a_scripted_workload_publishes_exact_counts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let dir = tempfile::tempdir().expect("dir");
    let sqlite = SqliteTier::open(&SqliteConfig::new(dir.path().join("m.db")), 1)
        .await
        .expect("sqlite");
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).expect("memory"))
        .tier(sqlite)
        .metrics(
            MetricsOptions::default()
                .source_limit(1)
                .label("cache", "test"),
        )
        .build();
    let book = |id: u32| Key::new("books", [("id", id)]);

    // 3 cold books: 3 misses in each tier, 3 fetches, 3 writes in each.
    for id in 0..3 {
        let value: std::sync::Arc<String> = cache
            .get_or_fetch(&book(id), Ttl::TierDefault, |_| async move {
                Ok::<_, Upstream>(format!("book {id}"))
            })
            .await
            .expect("fetched");
        assert_eq!(*value, format!("book {id}"));
    }
    // 10,000 L1 hits.
    for i in 0..10_000 {
        assert!(cache.get::<String>(&book(i % 3)).await.is_some());
    }
    // A failing fetch: a miss in each tier, a fetch, a fetch error.
    let failed = cache
        .get_or_fetch::<String, _, _, _>(&book(99), Ttl::TierDefault, |_| async { Err(Upstream) })
        .await;
    assert!(failed.is_err());
    // A second source, past the limit of one: published as `other`.
    cache
        .set(
            &Key::new("authors", [("id", 1)]),
            "Herbert".to_owned(),
            Ttl::TierDefault,
        )
        .await
        .expect("set");
    assert!(
        cache
            .get::<String>(&Key::new("authors", [("id", 2)]))
            .await
            .is_none()
    );

    // Nothing counted is published before `publish`: hits add no work.
    let before = snapshot(&snapshotter);
    assert!(
        !before.keys().any(|(name, _)| name.ends_with("_total")),
        "counters published before publish(): {:?}",
        before.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        samples(
            &before,
            "tierstack_fetch_duration_seconds",
            &["cache=test", "source=books"]
        ),
        4,
        "each of the 4 fetches is timed once, the failed one too"
    );
    assert_eq!(
        before
            .keys()
            .filter(
                |(name, labels)| name == "tierstack_tier_call_duration_seconds"
                    && labels.contains(&"tier=memory".to_owned())
            )
            .count(),
        0,
        "the memory tier answers without I/O calls, so none is timed"
    );

    Metrics::new(&cache).publish_with_sizes().await;
    let values = snapshot(&snapshotter);
    let memory = ["cache=test", "tier=memory"];
    let disk = ["cache=test", "tier=sqlite"];
    assert_eq!(
        counter(&values, "tierstack_tier_hits_total", &memory),
        10_000
    );
    assert_eq!(counter(&values, "tierstack_tier_misses_total", &memory), 5);
    assert_eq!(counter(&values, "tierstack_tier_writes_total", &memory), 4);
    assert_eq!(counter(&values, "tierstack_tier_hits_total", &disk), 0);
    assert_eq!(counter(&values, "tierstack_tier_misses_total", &disk), 5);
    assert_eq!(counter(&values, "tierstack_tier_writes_total", &disk), 4);
    let books = ["cache=test", "source=books"];
    assert_eq!(
        counter(&values, "tierstack_source_hits_total", &books),
        10_000
    );
    assert_eq!(counter(&values, "tierstack_source_misses_total", &books), 4);
    assert_eq!(
        counter(&values, "tierstack_source_fetches_total", &books),
        4
    );
    assert_eq!(
        counter(&values, "tierstack_source_fetch_errors_total", &books),
        1
    );
    let other = ["cache=test", "source=other"];
    assert_eq!(counter(&values, "tierstack_source_misses_total", &other), 1);
    assert_eq!(
        counter(&values, "tierstack_source_fetches_total", &other),
        0
    );
    assert!(
        !values
            .keys()
            .any(|(_, labels)| labels.contains(&"source=authors".to_owned())),
        "a source past the limit has no series of its own"
    );
    assert_eq!(
        counter(
            &values,
            "tierstack_backplane_published_total",
            &["cache=test"]
        ),
        0
    );
    // Gauges: 4 entries in each tier.
    for tier in [memory, disk] {
        match values.get(&(
            "tierstack_tier_entries".to_owned(),
            tier.iter().map(|l| (*l).to_owned()).collect(),
        )) {
            // 4 is exact in an f64.
            Some(DebugValue::Gauge(n)) => {
                assert!((n.into_inner() - 4.0).abs() < f64::EPSILON, "{tier:?}: {n}");
            }
            other => panic!("entries of {tier:?}: {other:?}"),
        }
    }
    // Every published counter equals the cache's own.
    let stats = cache.stats();
    assert_eq!(
        counter(&values, "tierstack_tier_read_bytes_total", &disk),
        stats.layer("sqlite").expect("sqlite").bytes_read
    );

    // SQLite calls are timed, one in 16 on this thread: 64 more reads of
    // absent keys (each a memory miss answered at once, an SQLite read).
    for i in 0..64 {
        let _ = cache.get::<String>(&book(1_000 + i)).await;
    }
    let after = snapshot(&snapshotter);
    let sampled = samples(
        &after,
        "tierstack_tier_call_duration_seconds",
        &["cache=test", "tier=sqlite", "operation=get"],
    );
    assert!(
        sampled == 4,
        "64 SQLite gets, one in 16 timed: {sampled} samples"
    );

    // Publishing on a schedule keeps the counters current.
    let publishing = Metrics::new(&cache).publish_every(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(publishing);
    let scheduled = snapshot(&snapshotter);
    assert_eq!(
        counter(&scheduled, "tierstack_source_misses_total", &books),
        4 + 64
    );
}

#[test]
fn a_stats_files_totals_publish_under_the_same_names_with_sources_past_the_limit_as_other() {
    let mut stored = tierstack::StoredStats::default();
    let mut sqlite = tierstack::StoredCounters::default();
    sqlite.hits = 7;
    sqlite.writes = 3;
    stored.tiers.insert("sqlite".into(), sqlite);
    for (source, fetches) in [("a", 1), ("b", 2), ("c", 4)] {
        let mut counters = tierstack::StoredCounters::default();
        counters.fetches = fetches;
        counters.misses = fetches;
        stored.sources.insert(source.into(), counters);
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let size = tierstack::TierSize {
        entries: 5,
        bytes: 900,
    };
    metrics::with_local_recorder(&recorder, || {
        tierstack::metrics::publish_stored(
            &stored,
            [("sqlite", size)],
            &MetricsOptions::default()
                .source_limit(1)
                .label("cache", "books"),
        );
    });
    let values = snapshot(&snapshotter);
    let tier = ["tier=sqlite", "cache=books"];
    assert_eq!(counter(&values, "tierstack_tier_hits_total", &tier), 7);
    assert_eq!(counter(&values, "tierstack_tier_writes_total", &tier), 3);
    assert_eq!(counter(&values, "tierstack_tier_errors_total", &tier), 0);
    let a = ["source=a", "cache=books"];
    let other = ["source=other", "cache=books"];
    assert_eq!(counter(&values, "tierstack_source_fetches_total", &a), 1);
    assert_eq!(
        counter(&values, "tierstack_source_fetches_total", &other),
        6,
        "b and c"
    );
    assert_eq!(counter(&values, "tierstack_source_misses_total", &other), 6);
    let gauge = |name: &str| match values.get(&(name.to_owned(), {
        let mut l: Vec<String> = tier.iter().map(|s| (*s).to_owned()).collect();
        l.sort();
        l
    })) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name}: expected a gauge, got {other:?}"),
    };
    assert!((gauge("tierstack_tier_entries") - 5.0).abs() < f64::EPSILON);
    assert!((gauge("tierstack_tier_bytes") - 900.0).abs() < f64::EPSILON);
    // Counters a stats file does not keep are not published as zeros.
    assert!(
        !values
            .keys()
            .any(|(name, _)| name == "tierstack_tier_copy_ups_total"),
        "{values:?}"
    );
}

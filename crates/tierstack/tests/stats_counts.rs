//! Counters tell the truth: one lookup counts one hit or one miss per tier it
//! reached, and the per-source counters add up to the tiers' own.

use std::time::Duration;

use tierstack::{
    CacheStats, Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl,
};

#[derive(Debug, thiserror::Error)]
#[error("upstream answered 503")]
struct Upstream;

fn key(source: &str, id: u32) -> Key {
    Key::new(source, [("id", id.to_string())])
}

async fn stack(dir: &std::path::Path) -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .tier(
            SqliteTier::open(&SqliteConfig::new(dir.join("cache.db")), 1)
                .await
                .unwrap(),
        )
        .build()
}

fn tier_counts(stats: &CacheStats) -> Vec<(String, u64, u64)> {
    stats
        .layers
        .iter()
        .map(|l| (l.name.clone(), l.hits, l.misses))
        .collect()
}

#[tokio::test]
async fn a_get_or_fetch_miss_counts_one_miss_per_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    cache
        .get_or_fetch(&key("audnexus:book", 1), Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>(1u32)
        })
        .await
        .unwrap();
    assert_eq!(
        tier_counts(&cache.stats()),
        [("memory".to_owned(), 0, 1), ("sqlite".to_owned(), 0, 1)]
    );
    cache
        .get_or_fetch(&key("audnexus:book", 1), Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>(2u32)
        })
        .await
        .unwrap();
    assert_eq!(
        tier_counts(&cache.stats()),
        [("memory".to_owned(), 1, 1), ("sqlite".to_owned(), 0, 1)]
    );
}

/// Σ over sources of (hits + negative hits) is Σ over tiers of hits, and
/// Σ over sources of misses is the last tier's misses: every lookup ends
/// in exactly one tier hit or in a miss of every tier.
fn assert_sources_add_up_to_tiers(stats: &CacheStats) {
    let totals = stats.totals();
    let tier_hits: u64 = stats.layers.iter().map(|l| l.hits).sum();
    let last_misses = stats.layers.last().map_or(0, |l| l.misses);
    assert_eq!(totals.hits + totals.negative_hits, tier_hits, "{stats:#?}");
    assert_eq!(totals.misses, last_misses, "{stats:#?}");
}

#[tokio::test]
async fn per_source_counters_add_up_to_the_tier_totals() {
    let dir = tempfile::tempdir().unwrap();
    let first = stack(dir.path()).await;
    // Cold fetches, hits, a failed fetch, "not found" answers and a batch.
    for id in 0..10 {
        for _ in 0..2 {
            first
                .get_or_fetch(
                    &key("audnexus:book", id),
                    Ttl::TierDefault,
                    |_| async move { Ok::<_, Upstream>(id) },
                )
                .await
                .unwrap();
        }
    }
    first
        .get_or_fetch::<u32, _, _, _>(&key("audnexus:book", 99), Ttl::TierDefault, |_| async {
            Err(Upstream)
        })
        .await
        .unwrap_err();
    for _ in 0..3 {
        first
            .get_or_fetch_optional(
                &key("audnexus:search", 1),
                Duration::from_secs(60),
                |_| async { Ok::<Option<u32>, Upstream>(None) },
            )
            .await
            .unwrap();
    }
    let keys: Vec<Key> = (5..15).map(|id| key("pathinfo", id)).collect();
    first
        .get_or_fetch_many(&keys, Ttl::TierDefault, |missing, _| async move {
            Ok::<_, Upstream>(missing.into_iter().map(|k| (k, Some(0u32))).collect())
        })
        .await
        .unwrap();
    assert_sources_add_up_to_tiers(&first.stats());
    drop(first);

    // A new process on the same file: its hits come from SQLite.
    let second = stack(dir.path()).await;
    for id in 0..10 {
        second.get::<u32>(&key("audnexus:book", id)).await.unwrap();
    }
    second
        .get_or_fetch_many(&keys, Ttl::TierDefault, |missing, _| async move {
            Ok::<_, Upstream>(missing.into_iter().map(|k| (k, Some(1u32))).collect())
        })
        .await
        .unwrap();
    let stats = second.stats();
    assert_eq!(stats.layer("sqlite").unwrap().hits, 20);
    assert_sources_add_up_to_tiers(&stats);
}

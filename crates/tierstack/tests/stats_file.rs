//! Counters kept across processes in a stats file: each cache adds what it
//! counted when dropped or flushed, never twice, and concurrent writers lose
//! nothing.

use std::sync::Arc;

use tierstack::{Key, MemoryConfig, MemoryTier, StoredStats, TieredCache, Ttl};

fn cache(path: &std::path::Path) -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap())
        .stats_file(path)
        .build()
}

fn key(i: u32) -> Key {
    Key::new("audnexus:book", [("asin", i.to_string())])
}

#[tokio::test]
async fn counters_add_up_over_caches_and_flushes_never_count_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("stats.json");
    {
        let c = cache(&path);
        c.set(&key(1), 1_u32, Ttl::TierDefault).await.unwrap();
        assert!(c.get::<u32>(&key(1)).await.is_some());
        assert!(c.get::<u32>(&key(2)).await.is_none());
        c.flush_stats().unwrap();
        c.flush_stats().unwrap();
        assert!(c.get::<u32>(&key(1)).await.is_some());
        // Dropped here: adds the one hit since the flush.
    }
    {
        let c = cache(&path);
        assert!(c.get::<u32>(&key(3)).await.is_none());
    }
    let stored = StoredStats::load(&path).unwrap();
    let memory = stored.tiers["memory"];
    assert_eq!((memory.hits, memory.misses, memory.writes), (2, 2, 1));
    let source = stored.sources["audnexus:book"];
    assert_eq!((source.hits, source.misses), (2, 2));
    assert_eq!(source.hit_ratio(), Some(0.5));
    assert!(!stored.since.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_processes_lose_no_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("stats.json"));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let path = Arc::clone(&path);
        tasks.push(tokio::spawn(async move {
            let c = cache(&path);
            for i in 0..10 {
                let _ = c.get::<u32>(&key(i)).await;
            }
            // Flushing from a blocking thread, as many processes would at once.
            tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = StoredStats::load(&path).unwrap();
    assert_eq!(stored.tiers["memory"].misses, 160);
    assert!(!dir.path().join("stats.json.lock").exists());
}

#[tokio::test]
async fn a_file_that_is_not_a_stats_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    // Damaged JSON, someone else's JSON, a database: none of them is
    // replaced by counters (a damaged file is the user's to look at).
    let cases: [&[u8]; 3] = [
        b"{ not json",
        b"{\"settings\": {\"theme\": \"dark\"}}",
        b"SQLite format 3\0 and pages",
    ];
    for bytes in cases {
        std::fs::write(&path, bytes).unwrap();
        assert!(StoredStats::load(&path).is_err());
        let c = cache(&path);
        let _ = c.get::<u32>(&key(1)).await;
        let error = c.flush_stats().unwrap_err();
        assert!(error.to_string().contains("refusing"), "{error}");
        drop(c);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(!dir.path().join("stats.json.lock").exists());
    }
    // A file written before stats files had a header is still read and kept.
    std::fs::write(
        &path,
        br#"{"since":"2026-01-01T00:00:00Z","tiers":{"memory":{"misses":4}}}"#,
    )
    .unwrap();
    {
        let c = cache(&path);
        let _ = c.get::<u32>(&key(1)).await;
    }
    let stored = StoredStats::load(&path).unwrap();
    assert_eq!(stored.tiers["memory"].misses, 5);
    assert_eq!(stored.since, "2026-01-01T00:00:00Z");
    // Without a stats file nothing is written anywhere.
    let plain = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .build();
    assert!(plain.stats_file().is_none());
    plain.flush_stats().unwrap();
}

//! Cross-host invalidation between two caches in one process: a delete or a
//! clear in one drops the other's memory copies; a process ignores its own
//! messages; a reconnect empties memory (messages may have been missed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tierstack::{
    ClearScope, Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, Tier, TieredCache, Ttl,
};
use tierstack_conformance::redis_server::{RedisServer, redis_cli, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

fn key(name: &str) -> Key {
    Key::new("audnexus:book", [("asin", name)])
}

async fn cache(url: &str, prefix: &str) -> TieredCache {
    let config = RedisConfig::new(url)
        .prefix(prefix)
        .backplane(true)
        .breaker(3, Duration::from_millis(200));
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .tier(RedisTier::open(&config, 1).await.unwrap())
        .build()
}

/// Waits until `subscribers` processes listen on the namespace's channel.
fn wait_for_subscribers(port: u16, prefix: &str, subscribers: usize) {
    let channel = format!("{prefix}:c:invalidations:1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = redis_cli(port, &["PUBSUB", "NUMSUB", &channel]);
        let count: usize = out
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if count >= subscribers {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subscribers} subscribers: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn in_memory(cache: &TieredCache, key: &Key) -> bool {
    let memory: &Arc<dyn Tier> = cache.tiers().next().unwrap();
    memory.get(key).await.unwrap().is_some()
}

async fn until_gone(cache: &TieredCache, key: &Key) -> Duration {
    let started = Instant::now();
    while in_memory(cache, key).await {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{key} still in the other cache's memory after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_or_clear_in_one_cache_drops_the_others_memory_copy() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("backplane");
    let a = cache(server.url(), &prefix).await;
    let b = cache(server.url(), &prefix).await;
    wait_for_subscribers(server.port(), &prefix, 2);

    for name in ["one", "two", "three"] {
        a.set(&key(name), name.to_owned(), Ttl::TierDefault)
            .await
            .unwrap();
        // b reads it from Redis and keeps a copy in its memory tier.
        assert!(b.get::<String>(&key(name)).await.is_some());
        assert!(in_memory(&b, &key(name)).await);
    }
    a.delete(&key("one")).await.unwrap();
    let took = until_gone(&b, &key("one")).await;
    println!("invalidation reached the other cache in {took:?}");
    assert!(b.get::<String>(&key("one")).await.is_none());
    assert!(in_memory(&b, &key("two")).await, "other keys stay");

    a.clear(ClearScope::Source("audnexus:book".to_owned()))
        .await
        .unwrap();
    until_gone(&b, &key("two")).await;
    until_gone(&b, &key("three")).await;

    // Each cache applied the other's messages only.
    assert_eq!(a.stats().backplane.received, 0);
    assert_eq!(a.stats().backplane.published, 2);
    assert_eq!(b.stats().backplane.received, 2);

    // After the server comes back, b empties its memory: invalidations sent
    // while it was away are lost.
    b.set(&key("kept"), "k".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();
    assert!(in_memory(&b, &key("kept")).await);
    server.restart();
    let started = Instant::now();
    while b.stats().backplane.resyncs == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no resync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!in_memory(&b, &key("kept")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_backplane_nothing_is_published() {
    let server = RedisServer::start();
    let prefix = unique_prefix("quiet");
    let config = RedisConfig::new(server.url()).prefix(&prefix);
    let tier = RedisTier::open(&config, 1).await.unwrap();
    assert!(tier.backplane().is_none());
    let cache = TieredCache::builder().tier(tier).build();
    cache.set(&key("x"), 1_u32, Ttl::TierDefault).await.unwrap();
    cache.delete(&key("x")).await.unwrap();
    assert_eq!(cache.stats().backplane.published, 0);
}

/// A host's stack of memory, its own SQLite file and the shared Redis.
async fn with_a_local_file(url: &str, prefix: &str, file: &std::path::Path) -> TieredCache {
    let config = RedisConfig::new(url)
        .prefix(prefix)
        .backplane(true)
        .breaker(3, Duration::from_millis(200));
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .tier(SqliteTier::open(&SqliteConfig::new(file), 1).await.unwrap())
        .tier(RedisTier::open(&config, 1).await.unwrap())
        .build()
}

async fn in_file(cache: &TieredCache, key: &Key) -> bool {
    let file: &Arc<dyn Tier> = cache.tiers().nth(1).unwrap();
    file.get(key).await.unwrap().is_some()
}

/// The backplane reaches every tier that is not shared across hosts, a
/// local SQLite file too: a key deleted (or a source cleared) on one host
/// is gone from the other host's memory and file. A lost subscription
/// empties memory only: the file keeps its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_or_clear_reaches_the_other_hosts_local_sqlite_file() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("backplane-file");
    let dir = tempfile::tempdir().unwrap();
    let a = with_a_local_file(server.url(), &prefix, &dir.path().join("a.db")).await;
    let b = with_a_local_file(server.url(), &prefix, &dir.path().join("b.db")).await;
    wait_for_subscribers(server.port(), &prefix, 2);

    for name in ["one", "two", "three"] {
        a.set(&key(name), name.to_owned(), Ttl::TierDefault)
            .await
            .unwrap();
        // b reads it from Redis and copies it into its memory and its file.
        assert!(b.get::<String>(&key(name)).await.is_some());
        assert!(in_memory(&b, &key(name)).await && in_file(&b, &key(name)).await);
    }
    a.delete(&key("one")).await.unwrap();
    let started = Instant::now();
    while in_file(&b, &key("one")).await || in_memory(&b, &key("one")).await {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still in the other host's file or memory after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b.get::<String>(&key("one")).await.is_none());
    assert!(in_file(&b, &key("two")).await, "other keys stay");

    a.clear(ClearScope::Source("audnexus:book".to_owned()))
        .await
        .unwrap();
    let started = Instant::now();
    while in_file(&b, &key("two")).await || in_file(&b, &key("three")).await {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a cleared source is still in the other host's file after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    b.set(&key("kept"), "k".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();
    server.restart();
    let started = Instant::now();
    while b.stats().backplane.resyncs == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no resync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!in_memory(&b, &key("kept")).await, "memory emptied");
    assert!(
        in_file(&b, &key("kept")).await,
        "the file keeps its entries"
    );
}

//! tierstack next to the crates users would otherwise pick, on one workload
//! (the ~400-byte book records of `common`, keys as tierstack renders them):
//!
//! - disk stores: `TieredCache` over redb and over SQLite vs `cached`'s
//!   `RedbCache` (async API; durable commits on both redb sides);
//! - Redis stores: `TieredCache` over Redis vs `cached`'s `AsyncRedisCache`
//!   (both on a `redis-server` this bench starts);
//! - memory + disk: `TieredCache` over memory + SQLite and memory + redb vs
//!   foyer's `HybridCache` (memory + block engine on a file), hits served from
//!   memory and hits that have to go to disk (memory holds 100 of 5,000 keys,
//!   read in a cycle, so every read misses memory);
//! - moka alone is the floor of `memory.rs`.
//!
//! Every side returns what its API returns: tierstack an `Arc<V>`, foyer an
//! entry handle, `cached` an owned value (its disk and Redis stores decode
//! into a fresh value either way).
#![allow(missing_docs)]
#![allow(clippy::too_many_lines)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cached::ConcurrentCachedAsync;
use cached::stores::{AsyncRedisCache, RedbCache};
use criterion::{Criterion, criterion_group, criterion_main};
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy,
};

mod common;
use common::{Book, KEYS, book, key, runtime};
use tierstack::{
    Compression, MemoryConfig, MemoryTier, RedbConfig, RedbTier, RedisConfig, RedisTier,
    SqliteConfig, SqliteTier, Tier, TieredCache, Ttl,
};
use tierstack_conformance::redis_server::{RedisServer, unique_prefix};

/// Keys of the disk-hit groups: far more than the 100 entries memory holds.
const DISK_KEYS: u64 = 5000;

/// Memory capacity of the disk-hit stacks, in entries.
const SMALL_MEMORY: u64 = 100;

fn cache_over(tiers: Vec<Arc<dyn Tier>>) -> TieredCache {
    tiers
        .into_iter()
        .fold(
            TieredCache::builder().compression(Compression::None),
            tierstack::TieredCacheBuilder::shared_tier,
        )
        .build()
}

fn counter(modulo: u64) -> impl Fn() -> u64 {
    let n = AtomicU64::new(0);
    move || n.fetch_add(1, Ordering::Relaxed) % modulo
}

fn disk_and_redis(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let server = RedisServer::shared_or_start();

    let redb: Arc<dyn Tier> = Arc::new(
        rt.block_on(RedbTier::open(
            &RedbConfig::new(dir.path().join("tier.redb")),
            1,
        ))
        .expect("redb tier"),
    );
    let sqlite: Arc<dyn Tier> = Arc::new(
        rt.block_on(SqliteTier::open(
            &SqliteConfig::new(dir.path().join("tier.db")),
            1,
        ))
        .expect("sqlite tier"),
    );
    let redis: Arc<dyn Tier> = Arc::new(
        rt.block_on(RedisTier::open(
            &RedisConfig::new(server.url())
                .prefix(unique_prefix("peers"))
                .ttl(None),
            1,
        ))
        .expect("redis tier"),
    );
    let ours_redb = cache_over(vec![redb]);
    let ours_sqlite = cache_over(vec![sqlite]);
    let ours_redis = cache_over(vec![Arc::clone(&redis)]);

    let cached_redb: RedbCache<String, Book> = RedbCache::builder("peer")
        .disk_dir(dir.path().join("cached"))
        .build()
        .expect("cached redb");
    let cached_redis: AsyncRedisCache<String, Book> = rt
        .block_on(
            AsyncRedisCache::builder(unique_prefix("cached"))
                .connection_string(server.url())
                .ttl(Duration::from_secs(3600))
                .build(),
        )
        .expect("cached redis");

    rt.block_on(async {
        for i in 0..KEYS {
            for cache in [&ours_redb, &ours_sqlite, &ours_redis] {
                cache
                    .set(&key(i), book(i), Ttl::TierDefault)
                    .await
                    .expect("fill");
            }
            let k = key(i).as_str().to_owned();
            cached_redb
                .async_cache_set(k.clone(), book(i))
                .await
                .expect("fill cached redb");
            cached_redis
                .async_cache_set(k, book(i))
                .await
                .expect("fill cached redis");
        }
    });

    let next = counter(KEYS);
    get_and_set(
        c,
        &rt,
        "disk",
        &[
            ("tierstack_redb", &ours_redb),
            ("tierstack_sqlite", &ours_sqlite),
        ],
        ("cached_redb", &cached_redb),
        &next,
    );
    get_and_set(
        c,
        &rt,
        "redis",
        &[("tierstack", &ours_redis)],
        ("cached", &cached_redis),
        &next,
    );

    rt.block_on(async {
        let _ = redis.clear(tierstack::ClearScope::All).await;
        let _ = cached_redis.async_cache_clear().await;
    });
    drop(server);
}

/// Groups `peers/{label}_get` and `peers/{label}_set`: each tierstack cache
/// in `ours` next to the `cached` store `theirs`, on the same keys.
fn get_and_set<S>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    label: &str,
    ours: &[(&str, &TieredCache)],
    (their_name, theirs): (&str, &S),
    next: &impl Fn() -> u64,
) where
    S: ConcurrentCachedAsync<String, Book> + Sync,
    S::Error: std::fmt::Debug,
{
    let mut group = c.benchmark_group(format!("peers/{label}_get"));
    for &(name, cache) in ours {
        group.bench_function(name, |b| {
            b.to_async(rt).iter(|| {
                let k = key(next());
                async move { cache.get::<Book>(&k).await.expect("hit") }
            });
        });
    }
    group.bench_function(their_name, |b| {
        b.to_async(rt).iter(|| {
            let k = key(next()).as_str().to_owned();
            async move { theirs.async_cache_get(&k).await.expect("get").expect("hit") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group(format!("peers/{label}_set"));
    for &(name, cache) in ours {
        group.bench_function(name, |b| {
            b.to_async(rt).iter(|| {
                let i = next();
                async move {
                    cache
                        .set(&key(i), book(i), Ttl::TierDefault)
                        .await
                        .expect("set");
                }
            });
        });
    }
    group.bench_function(their_name, |b| {
        b.to_async(rt).iter(|| {
            let i = next();
            async move {
                theirs
                    .async_cache_set(key(i).as_str().to_owned(), book(i))
                    .await
                    .expect("set")
            }
        });
    });
    group.finish();
}

/// foyer's hybrid cache: memory of `entries` records over a block engine in
/// `dir`, written on insert (as tierstack writes through).
async fn foyer_hybrid(dir: &std::path::Path, entries: usize) -> HybridCache<String, Book> {
    let device = FsDeviceBuilder::new(dir)
        .with_capacity(256 * 1024 * 1024)
        .build()
        .expect("foyer device");
    HybridCacheBuilder::new()
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        .memory(entries)
        .storage()
        .with_engine_config(BlockEngineConfig::new(device))
        .build()
        .await
        .expect("foyer")
}

fn hybrid(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let memory = |entries: u64| -> Arc<dyn Tier> {
        Arc::new(MemoryTier::new(&MemoryConfig::with_max_entries(entries)).expect("memory"))
    };
    let stacks = |tag: &str, entries: u64| -> [(String, TieredCache); 2] {
        let sqlite: Arc<dyn Tier> = Arc::new(
            rt.block_on(SqliteTier::open(
                &SqliteConfig::new(dir.path().join(format!("{tag}.db"))),
                1,
            ))
            .expect("sqlite"),
        );
        let redb: Arc<dyn Tier> = Arc::new(
            rt.block_on(RedbTier::open(
                &RedbConfig::new(dir.path().join(format!("{tag}.redb"))),
                1,
            ))
            .expect("redb"),
        );
        [
            (
                "tierstack_memory_sqlite".to_owned(),
                cache_over(vec![memory(entries), sqlite]),
            ),
            (
                "tierstack_memory_redb".to_owned(),
                cache_over(vec![memory(entries), redb]),
            ),
        ]
    };

    for (tag, keys, memory_entries) in
        [("memory", KEYS, 100_000), ("disk", DISK_KEYS, SMALL_MEMORY)]
    {
        let ours = stacks(tag, memory_entries);
        let foyer_dir = dir.path().join(format!("foyer-{tag}"));
        std::fs::create_dir_all(&foyer_dir).expect("foyer dir");
        let foyer = rt.block_on(foyer_hybrid(&foyer_dir, memory_entries as usize));
        rt.block_on(async {
            for i in 0..keys {
                for (_, cache) in &ours {
                    cache
                        .set(&key(i), book(i), Ttl::TierDefault)
                        .await
                        .expect("fill");
                }
                foyer.insert(key(i).as_str().to_owned(), book(i));
            }
            // The block engine writes in the background: wait until every
            // record reads back, so the timed gets are hits.
            for i in 0..keys {
                let k = key(i).as_str().to_owned();
                let mut tries = 0;
                while foyer.get(&k).await.expect("foyer get").is_none() {
                    tries += 1;
                    assert!(tries < 100, "foyer lost {k}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });

        let next = counter(keys);
        let mut group = c.benchmark_group(format!("peers/hybrid_{tag}_hit"));
        for (name, cache) in &ours {
            group.bench_function(name.as_str(), |b| {
                b.to_async(&rt).iter(|| {
                    let k = key(next());
                    async move { cache.get::<Book>(&k).await.expect("hit") }
                });
            });
        }
        group.bench_function("foyer", |b| {
            b.to_async(&rt).iter(|| {
                let k = key(next()).as_str().to_owned();
                let cache = &foyer;
                async move { cache.get(&k).await.expect("get").expect("hit") }
            });
        });
        group.finish();
        rt.block_on(foyer.close()).expect("foyer close");
    }
}

criterion_group!(benches, disk_and_redis, hybrid);
criterion_main!(benches);

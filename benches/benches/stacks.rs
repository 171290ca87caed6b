//! Whole stacks, as applications use them: memory + SQLite, and memory +
//! SQLite + Redis (a `redis-server` the bench starts). For each: an L1 hit,
//! a hit in the lowest tier with copy-up into the tiers above, and a miss
//! that fetches and writes through. Next to them, the parts the copy-up
//! target is stated in: the lower tier's hit alone and an L1 insert
//! (target: L2 hit with copy-up <= L2 hit + 1.2 x L1 insert).
#![allow(missing_docs)]
#![allow(clippy::too_many_lines)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::{Book, KEYS, book, entry, key, runtime};
use tierstack::{
    Compression, Key, MemoryConfig, MemoryTier, RedisConfig, RedisTier, SqliteConfig, SqliteTier,
    Tier, TieredCache, Ttl,
};
use tierstack_conformance::redis_server::{RedisServer, unique_prefix};

fn stacks(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let server = RedisServer::shared_or_start();
    let memory = || -> Arc<dyn Tier> {
        Arc::new(MemoryTier::new(&MemoryConfig::with_max_entries(100_000)).expect("memory"))
    };
    let sqlite = |name: &str| -> Arc<dyn Tier> {
        Arc::new(
            rt.block_on(SqliteTier::open(
                &SqliteConfig::new(dir.path().join(name)),
                1,
            ))
            .expect("sqlite"),
        )
    };
    let redis: Arc<dyn Tier> = Arc::new(
        rt.block_on(RedisTier::open(
            &RedisConfig::new(server.url())
                .prefix(unique_prefix("stacks"))
                .ttl(None),
            1,
        ))
        .expect("redis"),
    );
    let build = |tiers: &[&Arc<dyn Tier>]| {
        tiers
            .iter()
            .fold(
                TieredCache::builder().compression(Compression::None),
                |b, t| b.shared_tier(Arc::clone(t)),
            )
            .build()
    };

    let (l1, l2) = (memory(), sqlite("two.db"));
    let two = build(&[&l1, &l2]);
    let l2_alone = build(&[&l2]);
    let (l1b, l2b) = (memory(), sqlite("three.db"));
    let three = build(&[&l1b, &l2b, &redis]);
    let l3_alone = build(&[&redis]);
    rt.block_on(async {
        let entries: Vec<_> = (0..KEYS).map(|i| (key(i), entry(i))).collect();
        for tier in [&l1, &l2, &l1b, &l2b, &redis] {
            tier.set_many(entries.clone()).await.expect("fill");
        }
    });

    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed) % KEYS;
    let fresh = AtomicU64::new(KEYS);
    let next_fresh = || fresh.fetch_add(1, Ordering::Relaxed);

    for (label, cache, top, lower, lowest_alone) in [
        ("memory+sqlite", &two, &l1, vec![], &l2_alone),
        ("memory+sqlite+redis", &three, &l1b, vec![&l2b], &l3_alone),
    ] {
        let mut group = c.benchmark_group(format!("stack/{label}"));
        group.bench_function("l1_hit", |b| {
            b.to_async(&rt).iter(|| {
                let k = key(next());
                async move { cache.get::<Book>(&k).await.expect("hit") }
            });
        });
        group.bench_function("lowest_hit_with_copy_up", |b| {
            // Only the get is timed; the evictions before it are not.
            b.to_async(&rt).iter_custom(|iters| {
                let lower = lower.clone();
                let keys: Vec<Key> = (0..iters).map(|_| key(next())).collect();
                async move {
                    let mut timed = Duration::ZERO;
                    for k in keys {
                        top.delete(&k).await.expect("evict from L1");
                        for tier in &lower {
                            tier.delete(&k).await.expect("evict from L2");
                        }
                        let started = Instant::now();
                        cache.get::<Book>(&k).await.expect("hit");
                        timed += started.elapsed();
                    }
                    timed
                }
            });
        });
        group.bench_function("lowest_hit_alone", |b| {
            b.to_async(&rt).iter(|| {
                let k = key(next());
                async move { lowest_alone.get::<Book>(&k).await.expect("hit") }
            });
        });
        group.bench_function("l1_insert", |b| {
            b.to_async(&rt).iter(|| {
                let i = next();
                let e = entry(i);
                async move { top.set(&key(i), e).await.expect("insert") }
            });
        });
        group.bench_function("miss_fetch_write_through", |b| {
            b.to_async(&rt).iter(|| {
                let i = next_fresh();
                async move {
                    cache
                        .get_or_fetch::<Book, _, _, std::io::Error>(
                            &key(i),
                            Ttl::TierDefault,
                            |_| async move { Ok(book(i)) },
                        )
                        .await
                        .expect("fetched")
                }
            });
        });
        group.finish();
    }
    rt.block_on(async {
        let _ = redis.clear(tierstack::ClearScope::All).await;
    });
    drop(server);
}

criterion_group!(benches, stacks);
criterion_main!(benches);

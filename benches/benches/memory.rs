//! The memory tier next to raw moka, in one run.
//!
//! - `raw_moka/hit`: `moka::future::Cache<Key, Arc<Book>>::get`, the floor.
//! - `raw_quick_cache/hit`: `quick_cache::sync::Cache<Key, Arc<Book>>::get`,
//!   the fastest known in-memory floor (no async, no per-entry expiry).
//! - `tier/hit`: `MemoryTier::get` (entry with header and decoded value).
//! - `cache/hit`: `TieredCache::get::<Book>` over one memory tier: the whole
//!   typed path (lookup, freshness, downcast, statistics).
//! - the same for misses and inserts.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tierstack::{Key, MemoryConfig, MemoryTier, Tier, TieredCache, Ttl};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
    authors: Vec<String>,
    runtime_minutes: u32,
}

fn book(i: usize) -> Book {
    Book {
        asin: format!("B{i:09}"),
        title: format!("Book number {i}"),
        authors: vec![format!("Author {}", i % 97)],
        runtime_minutes: 600 + (i % 300) as u32,
    }
}

const KEYS: usize = 1000;

fn keys() -> Vec<Key> {
    (0..KEYS)
        .map(|i| Key::new("audnexus:book", [("asin", format!("B{i:09}"))]))
        .collect()
}

fn memory_tier(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let keys = keys();
    let raw: moka::future::Cache<Key, Arc<Book>> =
        moka::future::Cache::builder().max_capacity(100_000).build();
    let tier = Arc::new(
        MemoryTier::new(&MemoryConfig::with_max_entries(100_000).ttl(Duration::from_secs(3600)))
            .expect("tier"),
    );
    let cache = TieredCache::builder().shared_tier(tier.clone()).build();
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            raw.insert(k.clone(), Arc::new(book(i))).await;
            cache.set(k, book(i), Ttl::TierDefault).await.expect("set");
        }
    });
    let quick: quick_cache::sync::Cache<Key, Arc<Book>> = quick_cache::sync::Cache::new(100_000);
    for (i, k) in keys.iter().enumerate() {
        quick.insert(k.clone(), Arc::new(book(i)));
    }
    let missing = Key::new("audnexus:book", [("asin", "missing")]);

    let mut group = c.benchmark_group("memory/hit");
    let mut i = 0usize;
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = &keys[i];
            let raw = &raw;
            async move { raw.get(k).await.expect("hit") }
        });
    });
    group.bench_function("raw_quick_cache", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            quick.get(&keys[i]).expect("hit")
        });
    });
    group.bench_function("tier", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = &keys[i];
            let tier = &tier;
            async move { tier.get(k).await.expect("ok").expect("hit") }
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = &keys[i];
            let cache = &cache;
            async move { cache.get::<Book>(k).await.expect("hit") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("memory/miss");
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt).iter(|| async { raw.get(&missing).await });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.get::<Book>(&missing).await });
    });
    group.finish();

    let mut group = c.benchmark_group("memory/insert");
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = keys[i].clone();
            let raw = &raw;
            async move { raw.insert(k, Arc::new(book(i))).await }
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = &keys[i];
            let cache = &cache;
            async move { cache.set(k, book(i), Ttl::TierDefault).await.expect("set") }
        });
    });
    group.finish();
}

criterion_group!(benches, memory_tier);
criterion_main!(benches);

//! The memory tier next to the raw in-memory caches a user would otherwise
//! hand-roll, in one run. Every moka floor is configured as a user's L1
//! would be: `time_to_live` set.
//!
//! - `memory/hit`: `raw_moka` (`moka::future::Cache<Key, Arc<Book>>::get`),
//!   `raw_moka_sync` (`moka::sync::Cache`), `raw_quick_cache`
//!   (`quick_cache::sync::Cache<Key, Arc<Book>>::get`, the engine beneath
//!   the memory tier); `tier` (`MemoryTier::get`, the async trait call);
//!   `cache` (`TieredCache::get::<Book>` on memory over SQLite, prebuilt
//!   key: the whole typed path); `cache_memory_only`; `get_or_fetch` and
//!   `key_new_and_get` / `cached_fn` (a `CachedFn::call` hit next to what a
//!   user would write by hand: `Key::new` + `get`).
//! - `memory/miss`, `memory/insert` (`cache` encodes the value; `tier_set`
//!   inserts a pre-encoded entry through the async `Tier::set`,
//!   `tier_set_ready` through `Tier::set_ready`, the cache's path; next to
//!   the raw engines' inserts).
//! - `memory/scaling_1_task`, `memory/scaling_2_tasks`: a fixed number of
//!   L1 hits spread over 1 or 2 Tokio tasks on 2 workers (throughput).
#![allow(missing_docs)]
#![allow(clippy::too_many_lines)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tierstack::{
    Compression, FetchOptions, Key, MemoryConfig, MemoryTier, SourcePolicy, SqliteConfig,
    SqliteTier, Tier, TieredCache, Ttl,
};

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
const TTL: Duration = Duration::from_secs(3600);
/// Hits per measured batch in the scaling groups.
const SCALING_OPS: usize = 20_000;

fn asin(i: usize) -> String {
    format!("B{i:09}")
}

fn keys() -> Vec<Key> {
    (0..KEYS)
        .map(|i| Key::new("audnexus:book", [("asin", asin(i))]))
        .collect()
}

fn memory_tier() -> Arc<MemoryTier> {
    Arc::new(MemoryTier::new(&MemoryConfig::with_max_entries(100_000).ttl(TTL)).expect("tier"))
}

/// Runs `run(state, task, tasks)` on `tasks` tasks at once and returns the
/// wall time until all are done. Each task gets its own clone of `state`
/// up front, so that no shared refcount is touched per operation.
fn spread<S, F, Fut>(rt: &tokio::runtime::Runtime, tasks: usize, state: &S, run: F) -> Duration
where
    S: Clone + Send + 'static,
    F: Fn(S, usize, usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let futures: Vec<_> = (0..tasks).map(|t| run(state.clone(), t, tasks)).collect();
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        for h in handles {
            h.await.expect("task");
        }
        start.elapsed()
    })
}

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let keys = Arc::new(keys());
    let raw: moka::future::Cache<Key, Arc<Book>> = moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    let raw_sync: moka::sync::Cache<Key, Arc<Book>> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    let quick: Arc<quick_cache::sync::Cache<Key, Arc<Book>>> =
        Arc::new(quick_cache::sync::Cache::new(100_000));
    let tier = memory_tier();
    let only_memory = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(memory_tier())
        .build();
    let sqlite = rt
        .block_on(SqliteTier::open(
            &SqliteConfig::new(dir.path().join("l2.db")),
            1,
        ))
        .expect("sqlite");
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier.clone())
        .tier(sqlite)
        .build();
    // The same memory-only cache with the source's budget spent (1/h):
    // a hit must not notice it.
    let limited = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(memory_tier())
        .source_policy(
            "audnexus:*",
            SourcePolicy::default().rate("1/h".parse().expect("a rate")),
        )
        .build();
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            limited
                .set(k, book(i), Ttl::TierDefault)
                .await
                .expect("set");
            raw.insert(k.clone(), Arc::new(book(i))).await;
            raw_sync.insert(k.clone(), Arc::new(book(i)));
            quick.insert(k.clone(), Arc::new(book(i)));
            cache.set(k, book(i), Ttl::TierDefault).await.expect("set");
            only_memory
                .set(k, book(i), Ttl::TierDefault)
                .await
                .expect("set");
        }
    });
    let by_hand = {
        let cache = cache.clone();
        move |i: usize| {
            let cache = cache.clone();
            async move {
                let key = Key::new("audnexus:book", [("asin", asin(i))]);
                cache.get::<Book>(&key).await.expect("hit")
            }
        }
    };
    let cached_fn = cache.cached_fn(
        |i: &usize| Key::new("audnexus:book", [("asin", asin(*i))]),
        |i: usize, _ctx| async move { Ok::<_, Infallible>(book(i)) },
    );
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
    group.bench_function("raw_moka_sync", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            raw_sync.get(&keys[i]).expect("hit")
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
    group.bench_function("cache_memory_only", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = &keys[i];
            let cache = &only_memory;
            async move { cache.get::<Book>(k).await.expect("hit") }
        });
    });
    for (name, cache) in [
        ("get_or_fetch", &cache),
        ("get_or_fetch_memory_only", &only_memory),
        ("get_or_fetch_rate_limited", &limited),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % KEYS;
                let (k, n) = (&keys[i], i);
                async move {
                    cache
                        .get_or_fetch::<Book, _, _, Infallible>(
                            k,
                            FetchOptions::default(),
                            |_| async move { Ok(book(n)) },
                        )
                        .await
                        .expect("hit")
                }
            });
        });
    }
    group.bench_function("key_new_and_get", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            by_hand(i)
        });
    });
    group.bench_function("cached_fn", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let f = &cached_fn;
            let n = i;
            async move { f.call(n).await.expect("hit") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("memory/miss");
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt).iter(|| async { raw.get(&missing).await });
    });
    group.bench_function("raw_quick_cache", |b| b.iter(|| quick.get(&missing)));
    group.bench_function("cache_memory_only", |b| {
        b.to_async(&rt)
            .iter(|| async { only_memory.get::<Book>(&missing).await });
    });
    group.finish();

    let entries: Vec<_> = (0..KEYS)
        .map(|i| {
            let expires = tierstack::Timestamp::now().saturating_add(TTL);
            let meta = tierstack::EntryMeta::new(&keys[i], 1, tierstack::Timestamp::now())
                .expiring(expires, expires);
            tierstack::Entry::encode(
                &book(i),
                tierstack::Codec::MsgPack,
                &Compression::None,
                meta,
                tierstack::DecodeLimits::default(),
            )
            .expect("encodes")
        })
        .collect();
    let mut group = c.benchmark_group("memory/insert");
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = keys[i].clone();
            let raw = &raw;
            async move { raw.insert(k, Arc::new(book(i))).await }
        });
    });
    group.bench_function("raw_quick_cache", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            quick.insert(keys[i].clone(), Arc::new(book(i)));
        });
    });
    // The value made beforehand, as `tier_set`'s entries are: the engine's
    // own insert cost.
    let books: Vec<Arc<Book>> = (0..KEYS).map(|i| Arc::new(book(i))).collect();
    group.bench_function("raw_quick_cache_prebuilt", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            quick.insert(keys[i].clone(), Arc::clone(&books[i]));
        });
    });
    group.bench_function("raw_moka_prebuilt", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let (k, v) = (keys[i].clone(), Arc::clone(&books[i]));
            let raw = &raw;
            async move { raw.insert(k, v).await }
        });
    });
    // A tier of its own: the encoded entries carry no decoded value, and
    // writing them into the stack's L1 would turn later hits into decodes.
    let insert_tier = memory_tier();
    group.bench_function("tier_set", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let (k, e) = (&keys[i], entries[i].clone());
            let tier = &insert_tier;
            async move { tier.set(k, e).await.expect("set") }
        });
    });
    // What the cache calls on an in-memory tier: the synchronous write,
    // no future.
    group.bench_function("tier_set_ready", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            match insert_tier.set_ready(&keys[i], entries[i].clone()) {
                tierstack::SetReadiness::Done(result) => result.expect("set"),
                tierstack::SetReadiness::NeedsIo(_) => panic!("the memory tier stores at once"),
            }
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let k = &keys[i];
            let cache = &only_memory;
            async move { cache.set(k, book(i), Ttl::TierDefault).await.expect("set") }
        });
    });
    group.finish();

    for tasks in [1, 2] {
        let name = if tasks == 1 {
            "memory/scaling_1_task"
        } else {
            "memory/scaling_2_tasks"
        };
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(SCALING_OPS as u64));
        let raw_state = (raw.clone(), Arc::clone(&keys));
        group.bench_function("raw_moka", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        spread(&rt, tasks, &raw_state, |(raw, keys), t, tasks| async move {
                            for i in (t..SCALING_OPS).step_by(tasks) {
                                raw.get(&keys[i % KEYS]).await.expect("hit");
                            }
                        })
                    })
                    .sum()
            });
        });
        let quick_state = (Arc::clone(&quick), Arc::clone(&keys));
        group.bench_function("raw_quick_cache", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        spread(
                            &rt,
                            tasks,
                            &quick_state,
                            |(quick, keys), t, tasks| async move {
                                for i in (t..SCALING_OPS).step_by(tasks) {
                                    quick.get(&keys[i % KEYS]).expect("hit");
                                }
                            },
                        )
                    })
                    .sum()
            });
        });
        let cache_state = (cache.clone(), Arc::clone(&keys));
        group.bench_function("cache", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        spread(
                            &rt,
                            tasks,
                            &cache_state,
                            |(cache, keys), t, tasks| async move {
                                for i in (t..SCALING_OPS).step_by(tasks) {
                                    cache.get::<Book>(&keys[i % KEYS]).await.expect("hit");
                                }
                            },
                        )
                    })
                    .sum()
            });
        });
        group.finish();
    }
}

criterion_group!(benches, memory);
criterion_main!(benches);

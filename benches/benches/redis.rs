//! The Redis tier next to raw redis-rs on the same server, in one run.
//!
//! The bench starts its own `redis-server` on a free port (or uses
//! `TIERSTACK_REDIS_URL`). Raw floors use one shared multiplexed
//! connection, as an application would:
//! - get: raw `GET` + MessagePack decode vs `TieredCache::get` over the tier
//!   alone; raw `GET` vs `Tier::get` (bytes to entry, no decode);
//! - set: raw `SET … PX` of the encoded value vs `TieredCache::set`;
//! - get_many(100): raw `MGET` of 100 keys vs `Tier::get_many`;
//! - concurrent: 32 tasks × 50 gets at once, raw vs tier (throughput).
#![allow(missing_docs)]
#![allow(clippy::too_many_lines)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::{Book, KEYS, book, entry, key, runtime};
use tierstack::{Codec, Compression, Key, RedisConfig, RedisTier, Tier, TieredCache};
use tierstack_conformance::redis_server::{RedisServer, unique_prefix};

const TASKS: u64 = 32;
const PER_TASK: u64 = 50;

fn raw_key(i: u64) -> String {
    format!("raw:{}", key(i).as_str())
}

fn redis(c: &mut Criterion) {
    let rt = runtime();
    let server = RedisServer::shared_or_start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("bench"))
        .ttl(None);
    let tier: Arc<dyn Tier> = Arc::new(rt.block_on(RedisTier::open(&config, 1)).expect("tier"));
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(Arc::clone(&tier))
        .build();
    let client = redis::Client::open(server.url()).expect("client");
    let raw = rt
        .block_on(client.get_multiplexed_async_connection())
        .expect("raw connection");
    rt.block_on(async {
        let entries = (0..KEYS).map(|i| (key(i), entry(i))).collect();
        tier.set_many(entries).await.expect("fill");
        let mut raw = raw.clone();
        for i in 0..KEYS {
            let mut body = Vec::new();
            Codec::MsgPack.encode(&book(i), &mut body).expect("encode");
            redis::cmd("SET")
                .arg(raw_key(i))
                .arg(body)
                .query_async::<()>(&mut raw)
                .await
                .expect("raw fill");
        }
    });

    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed) % KEYS;

    let mut group = c.benchmark_group("redis/get");
    group.bench_function("raw_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let k = raw_key(next());
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(k)
                    .query_async(&mut raw)
                    .await
                    .expect("get");
                rmp_serde::from_slice::<Book>(&bytes).expect("decode")
            }
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let k = key(next());
            let cache = &cache;
            async move { cache.get::<Book>(&k).await.expect("hit") }
        });
    });
    group.bench_function("raw_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let k = raw_key(next());
            async move {
                redis::cmd("GET")
                    .arg(k)
                    .query_async::<Vec<u8>>(&mut raw)
                    .await
                    .expect("get")
            }
        });
    });
    group.bench_function("tier", |b| {
        b.to_async(&rt).iter(|| {
            let k = key(next());
            let tier = &tier;
            async move { tier.get(&k).await.expect("get").expect("hit") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("redis/set");
    group.bench_function("raw_set_px", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let i = next();
            async move {
                let mut body = Vec::new();
                Codec::MsgPack.encode(&book(i), &mut body).expect("encode");
                redis::cmd("SET")
                    .arg(raw_key(i))
                    .arg(body)
                    .arg("PX")
                    .arg(3_600_000)
                    .query_async::<()>(&mut raw)
                    .await
                    .expect("set");
            }
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let i = next();
            let cache = &cache;
            async move {
                cache
                    .set(&key(i), book(i), Duration::from_secs(3600))
                    .await
                    .expect("set");
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("redis/get_many_100");
    let batch = |start: u64| (start..start + 100).map(|i| i % KEYS).collect::<Vec<_>>();
    group.bench_function("raw_mget", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let names: Vec<String> = batch(next()).into_iter().map(raw_key).collect();
            async move {
                redis::cmd("MGET")
                    .arg(names)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut raw)
                    .await
                    .expect("mget")
            }
        });
    });
    group.bench_function("tier", |b| {
        b.to_async(&rt).iter(|| {
            let keys: Vec<Key> = batch(next()).into_iter().map(key).collect();
            let tier = &tier;
            async move { tier.get_many(&keys).await.expect("get_many") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("redis/concurrent_32x50_get");
    group.sample_size(20);
    group.bench_function("raw", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = raw.clone();
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|t| {
                            let mut raw = raw.clone();
                            tokio::spawn(async move {
                                for j in 0..PER_TASK {
                                    let _: Vec<u8> = redis::cmd("GET")
                                        .arg(raw_key((t * PER_TASK + j) % KEYS))
                                        .query_async(&mut raw)
                                        .await
                                        .expect("get");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                }
                started.elapsed()
            }
        });
    });
    group.bench_function("tier", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let tier = Arc::clone(&tier);
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|t| {
                            let tier = Arc::clone(&tier);
                            tokio::spawn(async move {
                                for j in 0..PER_TASK {
                                    tier.get(&key((t * PER_TASK + j) % KEYS))
                                        .await
                                        .expect("get")
                                        .expect("hit");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                }
                started.elapsed()
            }
        });
    });
    group.finish();
    rt.block_on(async {
        let _ = tier.clear(tierstack::ClearScope::All).await;
    });
    drop(server);
}

criterion_group!(benches, redis);
criterion_main!(benches);

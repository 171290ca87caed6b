//! The ecosystem layer next to what it wraps, in one run:
//!
//! - `ecosystem/hit`: a hit of a `#[tierstack::cached]` function (returning
//!   `Arc<Book>`, and returning `Book` by clone) next to a `CachedFn::call`
//!   hit on the same cache and keys;
//! - `ecosystem/metrics_hit`: an L1 hit with no metrics recorder, then the
//!   same after a Prometheus recorder is installed and a publisher runs
//!   every 100 ms (the `metrics` feature is on in both: a hit records
//!   nothing, and this row shows it).
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::{Book, book, runtime};
use tierstack::metrics::Metrics;
use tierstack::{GlobalCache, Key, MemoryConfig, MemoryTier, TieredCache, Ttl};

const IDS: u64 = 1000;

static CACHE: GlobalCache = GlobalCache::new();

fn key(id: u64) -> Key {
    Key::new("audnexus:book", [("asin", id)])
}

#[tierstack::cached(cache = CACHE, source = "audnexus:book")]
async fn shared_book(asin: u64) -> tierstack::Result<Arc<Book>> {
    Ok(Arc::new(book(asin)))
}

#[tierstack::cached(cache = CACHE, source = "audnexus:book")]
async fn cloned_book(asin: u64) -> tierstack::Result<Book> {
    Ok(book(asin))
}

fn ecosystem(c: &mut Criterion) {
    let rt = runtime();
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("memory"))
        .build();
    assert!(CACHE.set(cache.clone()).is_ok(), "set once");
    rt.block_on(async {
        for id in 0..IDS {
            cache
                .set(&key(id), book(id), Ttl::TierDefault)
                .await
                .expect("set");
        }
    });
    assert_eq!(
        shared_book_key(7),
        key(7),
        "the attribute's key is the CachedFn's"
    );
    let cached_fn = cache.cached_fn(
        |id: &u64| key(*id),
        |id: u64, _ctx| async move { Ok::<_, Infallible>(book(id)) },
    );

    let mut group = c.benchmark_group("ecosystem/hit");
    let mut id = 0u64;
    group.bench_function("cached_fn", |b| {
        b.to_async(&rt).iter(|| {
            id = (id + 1) % IDS;
            let (f, n) = (&cached_fn, id);
            async move { f.call(n).await.expect("hit") }
        });
    });
    group.bench_function("attribute_arc", |b| {
        b.to_async(&rt).iter(|| {
            id = (id + 1) % IDS;
            shared_book(id)
        });
    });
    group.bench_function("attribute_clone", |b| {
        b.to_async(&rt).iter(|| {
            id = (id + 1) % IDS;
            cloned_book(id)
        });
    });
    group.finish();

    let keys: Vec<Key> = (0..IDS).map(key).collect();
    let mut group = c.benchmark_group("ecosystem/metrics_hit");
    group.bench_function("no_recorder", |b| {
        b.to_async(&rt).iter(|| {
            id = (id + 1) % IDS;
            let (cache, k) = (&cache, &keys[id as usize]);
            async move { cache.get::<Book>(k).await.expect("hit") }
        });
    });
    let _prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this bench");
    let _publishing = {
        let _context = rt.enter();
        Metrics::new(&cache).publish_every(Duration::from_millis(100))
    };
    group.bench_function("prometheus_recorder", |b| {
        b.to_async(&rt).iter(|| {
            id = (id + 1) % IDS;
            let (cache, k) = (&cache, &keys[id as usize]);
            async move { cache.get::<Book>(k).await.expect("hit") }
        });
    });
    group.finish();
}

criterion_group!(benches, ecosystem);
criterion_main!(benches);

//! Quickstart: a two-tier stack in front of a slow, rate-limited lookup.
//!
//! A small, short-lived L1 holds the hot set; a larger L2 with a longer TTL
//! holds everything seen recently. Run with:
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tierstack::{Key, MemoryConfig, MemoryTier, TieredCache, Ttl};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
}

#[derive(Debug)]
struct Upstream;

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream unavailable")
    }
}

impl std::error::Error for Upstream {}

/// Stands in for a metadata API that takes 50 ms per call.
async fn fetch_book(asin: &str, calls: &AtomicUsize) -> Result<Book, Upstream> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Book {
        asin: asin.to_owned(),
        title: format!("Title of {asin}"),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(
            &MemoryConfig::with_max_entries(100)
                .name("hot")
                .ttl(Duration::from_secs(3600)),
        )?)
        .tier(MemoryTier::new(
            &MemoryConfig::with_max_bytes(64 << 20)
                .name("warm")
                .ttl(Duration::from_secs(7 * 86400)),
        )?)
        .schema_version(1)
        .build();

    let calls = Arc::new(AtomicUsize::new(0));
    let asins: Vec<String> = (0..20).map(|i| format!("B00000{i:04}")).collect();

    // 200 concurrent lookups of 20 distinct books: single-flight makes that
    // 20 upstream calls, however the requests interleave.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        let asin = asins[i % asins.len()].clone();
        tasks.push(tokio::spawn(async move {
            let key = Key::new("audnexus:book", [("asin", asin.as_str())]);
            cache
                .get_or_fetch(&key, Ttl::TierDefault, || fetch_book(&asin, &calls))
                .await
        }));
    }
    for task in tasks {
        let book = task.await??;
        assert!(book.title.ends_with(&book.asin));
    }
    let cold = started.elapsed();

    let started = Instant::now();
    for asin in &asins {
        let key = Key::new("audnexus:book", [("asin", asin.as_str())]);
        let book = cache
            .get_or_fetch(&key, Ttl::TierDefault, || fetch_book(asin, &calls))
            .await?;
        assert_eq!(&book.asin, asin);
    }
    let warm = started.elapsed();

    let upstream = calls.load(Ordering::SeqCst);
    println!("cold: 200 lookups in {cold:?}, warm: 20 lookups in {warm:?}");
    println!("upstream calls: {upstream} (one per distinct book)");
    for layer in cache.stats().layers {
        println!(
            "tier {:<5} hits {:>4}  misses {:>4}  writes {:>4}",
            layer.name, layer.hits, layer.misses, layer.writes
        );
    }
    if upstream != asins.len() {
        return Err(format!("expected {} upstream calls, saw {upstream}", asins.len()).into());
    }
    Ok(())
}

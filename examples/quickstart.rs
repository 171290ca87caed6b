//! Quickstart: the RFC's embedded stack — memory (L1, 1 h, 1000 entries) over
//! SQLite (L2, 7 days) — in front of a slow, rate-limited lookup.
//!
//! 1. 200 concurrent lookups of 20 books: single-flight makes that 20
//!    upstream calls.
//! 2. A "restart": a new cache on the same SQLite file answers every lookup
//!    from disk, with no upstream call, copying each hit up into its L1.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl};

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

async fn stack(db: &std::path::Path) -> tierstack::Result<TieredCache> {
    Ok(TieredCache::builder()
        .tier(MemoryTier::new(
            &MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)),
        )?)
        .tier(SqliteTier::open(&SqliteConfig::new(db), 1).await?)
        .schema_version(1)
        .build())
}

fn key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("tierstack-quickstart-{}", std::process::id()));
    let db = dir.join("metadata.db");
    let calls = Arc::new(AtomicUsize::new(0));
    let asins: Vec<String> = (0..20).map(|i| format!("B00000{i:04}")).collect();

    let cache = stack(&db).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        let asin = asins[i % asins.len()].clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(&key(&asin), Ttl::TierDefault, |_| fetch_book(&asin, &calls))
                .await
        }));
    }
    for task in tasks {
        let book = task.await??;
        assert!(book.title.ends_with(&book.asin));
    }
    let cold = started.elapsed();
    let cold_calls = calls.load(Ordering::SeqCst);
    drop(cache);

    // A new process would do exactly this: open the same file.
    let restarted = stack(&db).await?;
    let started = Instant::now();
    for asin in &asins {
        let book = restarted
            .get_or_fetch(&key(asin), Ttl::TierDefault, |_| fetch_book(asin, &calls))
            .await?;
        assert_eq!(&book.asin, asin);
    }
    let warm = started.elapsed();
    let warm_calls = calls.load(Ordering::SeqCst) - cold_calls;

    println!("cold run:  200 lookups in {cold:>10.1?}, {cold_calls} upstream calls");
    println!(
        "restarted:  20 lookups in {warm:>10.1?}, {warm_calls} upstream calls (answered from {})",
        db.display()
    );
    for layer in restarted.stats().layers {
        println!(
            "  tier {:<7} hits {:>3}  misses {:>3}  copy-ups {:>3}",
            layer.name, layer.hits, layer.misses, layer.copy_ups
        );
    }
    drop(restarted);
    std::fs::remove_dir_all(&dir)?;
    if cold_calls != asins.len() || warm_calls != 0 {
        return Err(format!(
            "expected {} cold and 0 warm upstream calls, saw {cold_calls} and {warm_calls}",
            asins.len()
        )
        .into());
    }
    Ok(())
}

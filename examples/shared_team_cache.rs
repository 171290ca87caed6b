//! A team cache: two machines (here, two processes with their own memory
//! and their own SQLite file) share one Redis as L3.
//!
//! 1. Host A looks up 40 books: 40 upstream calls, stored in all three tiers.
//! 2. Host B, a separate process, looks up the same books: 0 upstream calls,
//!    every answer from Redis, copied into B's memory and SQLite.
//! 3. Host B deletes one book (a bad record); through the backplane, host A
//!    drops it from its memory and SQLite too, and fetches it afresh.
//!
//! Needs a Redis server: `TIERSTACK_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Everything it writes is under a prefix of its
//! own, removed at the end.
//!
//! ```sh
//! cargo run --release --example shared_team_cache
//! ```

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack::{
    ClearScope, Key, MemoryConfig, MemoryTier, RedisConfig, RedisTier, SqliteConfig, SqliteTier,
    TieredCache, Ttl,
};

const BOOKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
}

fn asin(i: usize) -> String {
    format!("B{i:09}")
}

fn keys() -> Vec<Key> {
    (0..BOOKS)
        .map(|i| Key::new("audnexus:book", [("asin", asin(i))]))
        .collect()
}

/// Memory, a SQLite file of this host's own, and the team's Redis.
async fn host_cache(dir: &str, host: &str, redis_url: &str, prefix: &str) -> TieredCache {
    let redis = RedisConfig::new(redis_url)
        .prefix(prefix)
        .ttl(Some(Duration::from_secs(3600)))
        .backplane(true);
    TieredCache::builder()
        .tier(
            MemoryTier::new(&MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)))
                .expect("memory tier"),
        )
        .tier(
            SqliteTier::open(&SqliteConfig::new(format!("{dir}/{host}.db")), 1)
                .await
                .expect("SQLite tier"),
        )
        .tier(RedisTier::open(&redis, 1).await.expect("Redis tier"))
        .build()
}

/// Looks the books up, counting calls to the (simulated) metadata API.
async fn look_up(cache: &TieredCache, calls: &Arc<AtomicUsize>) -> Vec<Book> {
    let calls = Arc::clone(calls);
    let found = cache
        .get_or_fetch_many::<Book, _, _, std::io::Error>(&keys(), Ttl::TierDefault, |missing, _| {
            let calls = Arc::clone(&calls);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                calls.fetch_add(missing.len(), Ordering::SeqCst);
                Ok(missing
                    .iter()
                    .map(|k| {
                        let asin = k.params().unwrap_or_default()[0].1.clone();
                        let title = format!("Title of {asin}");
                        (k.clone(), Some(Book { asin, title }))
                    })
                    .collect())
            }
        })
        .await
        .expect("lookups");
    found
        .into_iter()
        .map(|b| (*b.expect("every book exists")).clone())
        .collect()
}

fn hits(cache: &TieredCache) -> String {
    cache
        .stats()
        .layers
        .iter()
        .map(|l| format!("{} {}", l.name, l.hits))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Host B: reads what A stored, then deletes one book.
async fn second_host(dir: &str, redis_url: &str, prefix: &str) {
    let cache = host_cache(dir, "host-b", redis_url, prefix).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let books = look_up(&cache, &calls).await;
    assert_eq!(books.len(), BOOKS);
    println!(
        "host B  {:>3} upstream calls   hits: {}",
        calls.load(Ordering::SeqCst),
        hits(&cache)
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "host B should not call the API"
    );
    cache.delete(&keys()[7]).await.expect("delete");
    println!("host B  deleted {}", keys()[7]);
}

#[tokio::main]
async fn main() {
    let redis_url = std::env::var("TIERSTACK_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--second-host") {
        second_host(&args[2], &redis_url, &args[3]).await;
        return;
    }

    let dir = std::env::temp_dir().join(format!("tierstack-team-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let dir_str = dir.to_str().expect("UTF-8 path").to_owned();
    let prefix = format!("tierstack-example-{}", std::process::id());

    let host_a = host_cache(&dir_str, "host-a", &redis_url, &prefix).await;
    if let Some((_, tierstack::Health::Unhealthy(why))) = host_a.health().await.get(2) {
        eprintln!("Redis at {redis_url} is not usable: {why}");
        eprintln!("start one (redis-server) or set TIERSTACK_REDIS_URL");
        std::process::exit(2);
    }
    println!("two hosts, each with memory and its own SQLite file, sharing Redis at {redis_url}");
    let calls = Arc::new(AtomicUsize::new(0));
    look_up(&host_a, &calls).await;
    println!(
        "host A  {:>3} upstream calls   hits: {}",
        calls.load(Ordering::SeqCst),
        hits(&host_a)
    );

    let status = Command::new(std::env::current_exe().expect("this program"))
        .args(["--second-host", &dir_str, &prefix])
        .status()
        .expect("start host B");
    assert!(status.success(), "host B failed");

    // The delete on B reached A's private tiers through the backplane.
    let deleted = &keys()[7];
    for _ in 0..200 {
        if host_a
            .tiers()
            .next()
            .expect("memory")
            .get(deleted)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = calls.load(Ordering::SeqCst);
    look_up(&host_a, &calls).await;
    let refetched = calls.load(Ordering::SeqCst) - before;
    println!(
        "host A  {refetched:>3} upstream call after B's delete (backplane: {} received)",
        host_a.stats().backplane.received
    );

    host_a.clear(ClearScope::All).await.expect("clean up");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        BOOKS + 1,
        "expected {BOOKS} + 1 upstream calls"
    );
    assert_eq!(refetched, 1, "A should fetch only the deleted book again");
}

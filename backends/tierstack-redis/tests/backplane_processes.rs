//! Cross-host invalidation between two OS processes: this test binary runs
//! itself again as the "other host", which keeps a key in its memory tier
//! until this process deletes it.
//!
//! `harness = false`: `main` is either the parent (the test) or, with
//! `TIERSTACK_BACKPLANE_CHILD` set, the child.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tierstack::{Key, MemoryConfig, MemoryTier, Tier, TieredCache, Ttl};
use tierstack_conformance::redis_server::{RedisServer, redis_cli, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

fn key() -> Key {
    Key::new("audnexus:book", [("asin", "B002V1A0WE")])
}

async fn cache(url: &str, prefix: &str) -> TieredCache {
    let config = RedisConfig::new(url).prefix(prefix).backplane(true);
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap())
        .tier(RedisTier::open(&config, 1).await.unwrap())
        .build()
}

/// The other process: reads the key (into its memory), says READY, then
/// answers each CHECK line with HAS or GONE (is the key still in memory?).
async fn child(url: &str, prefix: &str) {
    let cache = cache(url, prefix).await;
    assert!(
        cache.get::<String>(&key()).await.is_some(),
        "child sees the key"
    );
    let memory: Arc<dyn Tier> = Arc::clone(cache.tiers().next().unwrap());
    println!("READY");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.unwrap().as_str() {
            "CHECK" => {
                let has = memory.get(&key()).await.unwrap().is_some();
                println!("{}", if has { "HAS" } else { "GONE" });
            }
            _ => return,
        }
    }
}

async fn parent() {
    let server = RedisServer::start();
    let prefix = unique_prefix("processes");
    let cache = cache(server.url(), &prefix).await;
    cache
        .set(&key(), "Dune".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();

    let mut other = Command::new(std::env::current_exe().unwrap())
        .env(
            "TIERSTACK_BACKPLANE_CHILD",
            format!("{} {prefix}", server.url()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = other.stdin.take().unwrap();
    let mut from_child = BufReader::new(other.stdout.take().unwrap()).lines();
    let ready = from_child.next().unwrap().unwrap();
    assert!(ready == "READY", "child said {ready:?}");
    let mut ask = |line: &str| -> String {
        writeln!(to_child, "{line}").unwrap();
        from_child.next().map(Result::unwrap).unwrap_or_default()
    };
    assert_eq!(ask("CHECK"), "HAS");
    // Both processes subscribed: the parent and the child.
    let channel = format!("{prefix}:c:invalidations:1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis_cli(server.port(), &["PUBSUB", "NUMSUB", &channel]).contains("\n2") {
        assert!(Instant::now() < deadline, "child never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }

    cache.delete(&key()).await.unwrap();
    let started = Instant::now();
    loop {
        if ask("CHECK") == "GONE" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the other process kept the deleted key"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "the other process dropped the key {:?} after the delete",
        started.elapsed()
    );
    ask("EXIT");
    let _ = other.wait();
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var("TIERSTACK_BACKPLANE_CHILD") {
        let (url, prefix) = spec.split_once(' ').unwrap();
        child(url, prefix).await;
        return;
    }
    parent().await;
    println!("test a_delete_in_one_process_drops_the_key_from_another_processes_memory ... ok");
}

//! Errors print each cause once: `Display` of an error leaves its source to
//! `source()`, and a failed batch says which keys it failed for.

use std::time::Duration;

use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl};

#[derive(Debug, thiserror::Error)]
#[error("upstream answered 503")]
struct Upstream;

fn key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

async fn stack(dir: &std::path::Path) -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap())
        .tier(
            SqliteTier::open(&SqliteConfig::new(dir.join("cache.db")), 1)
                .await
                .unwrap(),
        )
        .build()
}

/// Every message of the chain, outermost first.
fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect()
}

fn assert_each_cause_once(messages: &[String]) {
    for (i, outer) in messages.iter().enumerate() {
        for inner in &messages[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?}; chain {messages:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_failed_fetch_shows_its_cause_once_in_the_source_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let err = cache
        .get_or_fetch::<String, _, _, _>(&key("B1"), Ttl::TierDefault, |_| async { Err(Upstream) })
        .await
        .unwrap_err();
    let messages = chain(&err);
    assert_eq!(
        messages,
        [
            "fetch failed: audnexus:book:asin=B1",
            "upstream answered 503"
        ]
    );
    assert_each_cause_once(&messages);
    assert_eq!(
        err.report().to_string(),
        "fetch failed: audnexus:book:asin=B1: upstream answered 503"
    );
}

#[tokio::test]
async fn a_failed_batch_names_every_key_of_a_short_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let keys = [key("A"), key("B")];
    let err = cache
        .get_or_fetch_many::<String, _, _, _>(&keys, Ttl::TierDefault, |_, _| async {
            Err(Upstream)
        })
        .await
        .unwrap_err();
    let messages = chain(&err);
    assert_eq!(
        messages,
        [
            "fetch failed: batch fetch of 2 keys (audnexus:book:asin=A, audnexus:book:asin=B) failed",
            "upstream answered 503"
        ]
    );
    assert_each_cause_once(&messages);
}

#[tokio::test]
async fn a_failed_long_batch_names_the_first_keys_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let keys: Vec<Key> = (0..50).map(|i| key(&format!("B{i:02}"))).collect();
    let err = cache
        .get_or_fetch_many::<String, _, _, _>(
            &keys,
            tierstack::FetchOptions::ttl(Ttl::TierDefault).hard_timeout(Duration::from_millis(20)),
            |_, _| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Upstream>(Vec::new())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "fetch failed: batch fetch of 50 keys (audnexus:book:asin=B00, audnexus:book:asin=B01, \
         audnexus:book:asin=B02 and 47 more) did not answer in time"
    );
}

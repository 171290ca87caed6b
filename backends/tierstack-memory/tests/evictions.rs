//! What the memory tier counts as evicted: entries it dropped to stay
//! within its capacity, not older versions replaced by a write of the same
//! key, nor entries past their retention.
#![allow(missing_docs)]

use std::time::Duration;

use tierstack_core::{
    Codec, Compression, DecodeLimits, Entry, EntryMeta, Key, SetReadiness, Tier, Timestamp,
};
use tierstack_memory::{MemoryConfig, MemoryTier};

fn key(i: usize) -> Key {
    Key::new("evictions", [("i", i.to_string())])
}

fn entry(key: &Key, ttl: Duration) -> Entry {
    let now = Timestamp::now();
    let expires = now.saturating_add(ttl);
    let meta = EntryMeta::new(key, 1, now).expiring(expires, expires);
    Entry::encode(
        &"value",
        Codec::MsgPack,
        &Compression::None,
        meta,
        DecodeLimits::default(),
    )
    .expect("encodes")
}

#[tokio::test]
async fn overwriting_a_key_is_not_an_eviction() {
    let tier = MemoryTier::new(&MemoryConfig::with_max_entries(1000)).expect("tier");
    for round in 0..50 {
        for i in 0..10 {
            let k = key(i);
            if round % 2 == 0 {
                tier.set(&k, entry(&k, Duration::from_secs(60)))
                    .await
                    .expect("set");
            } else {
                assert!(matches!(
                    tier.set_ready(&k, entry(&k, Duration::from_secs(60))),
                    SetReadiness::Done(Ok(()))
                ));
            }
        }
    }
    let stats = tier.stats();
    assert_eq!((stats.evictions, stats.expirations), (0, 0));
    assert_eq!(tier.size().await.expect("size").entries, 10);
}

#[tokio::test]
async fn writes_past_the_capacity_are_counted_as_evictions() {
    let tier = MemoryTier::new(&MemoryConfig::with_max_entries(100)).expect("tier");
    for i in 0..1000 {
        let k = key(i);
        tier.set(&k, entry(&k, Duration::from_secs(60)))
            .await
            .expect("set");
        // Overwrites in between must not add to the count.
        tier.set(&k, entry(&k, Duration::from_secs(60)))
            .await
            .expect("set");
    }
    let held = tier.size().await.expect("size").entries;
    assert!(
        held <= 100,
        "holds {held} entries, over its capacity of 100"
    );
    let stats = tier.stats();
    assert_eq!(
        stats.evictions,
        1000 - held,
        "every entry not held was evicted once"
    );
    assert_eq!(stats.expirations, 0);
}

#[tokio::test]
async fn an_entry_heavier_than_the_tier_is_refused_and_counted() {
    let tier = MemoryTier::new(&MemoryConfig::with_max_bytes(64 * 1024)).expect("tier");
    let small = key(1);
    tier.set(&small, entry(&small, Duration::from_secs(60)))
        .await
        .expect("set");
    let big = key(2);
    let now = Timestamp::now();
    let expires = now.saturating_add(Duration::from_secs(60));
    let heavy = Entry::encode(
        &"x".repeat(256 * 1024),
        Codec::MsgPack,
        &Compression::None,
        EntryMeta::new(&big, 1, now).expiring(expires, expires),
        DecodeLimits::default(),
    )
    .expect("encodes");
    // Written twice: the second write replaces nothing, it is refused again.
    tier.set(&big, heavy.clone()).await.expect("set");
    tier.set(&big, heavy).await.expect("set");
    assert!(tier.get(&big).await.expect("get").is_none());
    assert!(tier.get(&small).await.expect("get").is_some());
    assert_eq!(tier.stats().evictions, 2);
}

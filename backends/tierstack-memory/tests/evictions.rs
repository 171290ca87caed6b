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

/// A byte cap weighs each entry as key + encoded entry + 128 bytes, so
/// many tiny entries cannot hold more than the cap allows; eviction keeps
/// the weighed total within `max_bytes`.
#[tokio::test]
async fn a_byte_cap_weighs_key_entry_and_128_bytes_per_entry() {
    let cap: u64 = 64 * 1024;
    let tier = MemoryTier::new(&MemoryConfig::with_max_bytes(cap)).expect("tier");
    let mut weight = 0;
    for i in 0..2000 {
        let k = key(i);
        let e = entry(&k, Duration::from_secs(60));
        weight = (k.as_str().len() + e.encoded_len()) as u64 + 128;
        tier.set(&k, e).await.expect("set");
    }
    let held = tier.size().await.expect("size").entries;
    // Each shard holds its share of the cap, so the limit is approximate:
    // within 2%. Without the 128 bytes per entry it would hold over twice
    // as many.
    assert!(
        held * weight <= cap + cap / 50,
        "holds {held} entries of {weight} bytes each, over its cap of {cap}"
    );
    // Bytes, not entries, are what is capped: most of the cap is used.
    assert!(
        held * weight > cap / 2,
        "holds only {held} entries of {weight} bytes"
    );
    assert_eq!(tier.stats().evictions, 2000 - held);
}

/// An entry past its retention is never returned by `get` or `scan` nor
/// counted by `size`, is removed when read, and is swept out by `purge`;
/// each such removal counts as an expiration, never as an eviction.
#[tokio::test]
async fn dead_entries_are_hidden_removed_when_read_and_counted_as_expirations() {
    let tier = MemoryTier::new(&MemoryConfig::with_max_entries(1000)).expect("tier");
    let live = key(0);
    tier.set(&live, entry(&live, Duration::from_secs(3600)))
        .await
        .expect("set");
    let dead: Vec<Key> = (1..=10).map(key).collect();
    for k in &dead {
        tier.set(k, entry(k, Duration::from_millis(100)))
            .await
            .expect("set");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tier.get(&dead[0]).await.expect("get").is_none());
    assert_eq!(tier.stats().expirations, 1, "removed when read");
    assert_eq!(tier.size().await.expect("size").entries, 1);
    let page = tier.scan(None, 100).await.expect("scan");
    assert_eq!(page.entries.len(), 1, "scan returns the live entry only");
    assert_eq!(tier.purge().await.expect("purge"), 9);
    let stats = tier.stats();
    assert_eq!((stats.expirations, stats.evictions), (10, 0), "{stats:?}");
    assert!(tier.get(&live).await.expect("get").is_some());
}

/// With neither limit configured the tier holds up to 10,000 entries.
#[tokio::test]
async fn without_a_limit_the_tier_holds_ten_thousand_entries() {
    let tier = MemoryTier::new(&MemoryConfig::default()).expect("tier");
    for i in 0..20_000 {
        let k = key(i);
        tier.set(&k, entry(&k, Duration::from_secs(60)))
            .await
            .expect("set");
    }
    let held = tier.size().await.expect("size").entries;
    // Each shard holds its share: approximate, within 2%.
    assert!(
        (9_800..=10_200).contains(&held),
        "holds {held} entries by default"
    );
}

//! What the redb tier promises about its file and its byte cap: a 0700
//! directory and a 0600 file, symbolic links refused and left alone, two
//! schema versions side by side in one file, and eviction of dead entries
//! first, then of those closest to the end of their life, down to 90%.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tierstack::{Compression, Key, Tier, TieredCache, Ttl};
use tierstack_redb::{RedbConfig, RedbTier};

fn key(group: &str, i: u32) -> Key {
    Key::new("files", [("g", group.to_owned()), ("i", i.to_string())])
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_directory_is_0700_and_the_file_0600() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("nested/cache");
    let path = nested.join("cache.redb");
    let cache = TieredCache::builder()
        .tier(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap())
        .build();
    cache
        .set(&key("p", 1), "private".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    assert_eq!(mode(&dir.path().join("nested")), 0o700);
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlink_is_refused_by_name_and_its_target_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.redb");
    drop(RedbTier::open(&RedbConfig::new(&real), 1).await.unwrap());
    let before = std::fs::read(&real).unwrap();
    let link = dir.path().join("link.redb");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = RedbTier::open(&RedbConfig::new(&link), 1)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("link.redb") && message.contains("symbolic link"),
        "{message}"
    );
    assert_eq!(std::fs::read(&real).unwrap(), before, "target modified");
    // A link to where no file is yet is refused too, and nothing is created.
    let dangling = dir.path().join("dangling.redb");
    std::os::unix::fs::symlink(dir.path().join("nowhere.redb"), &dangling).unwrap();
    let err = RedbTier::open(&RedbConfig::new(&dangling), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!dir.path().join("nowhere.redb").exists());
}

/// redb locks its file, so the two versions take turns; each keeps its own
/// table and finds its entry again after the other wrote the same key.
#[tokio::test]
async fn schema_versions_share_one_file_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.redb");
    let k = key("v", 1);
    let open = |version: u32| {
        let path = path.clone();
        async move {
            TieredCache::builder()
                .tier(
                    RedbTier::open(&RedbConfig::new(&path), version)
                        .await
                        .unwrap(),
                )
                .build()
        }
    };
    {
        let v1 = open(1).await;
        v1.set(&k, "old shape".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
    }
    {
        let v2 = open(2).await;
        assert!(v2.get::<u32>(&k).await.is_none(), "v2 sees v1's entry");
        v2.set(&k, 42_u32, Ttl::TierDefault).await.unwrap();
    }
    let v1 = open(1).await;
    assert_eq!(
        v1.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("old shape"),
        "v2 replaced or removed v1's entry"
    );
    assert_eq!(v1.stats().layers[0].decode_failures, 0);
    drop(v1);
    let v2 = open(2).await;
    assert_eq!(v2.get::<u32>(&k).await.as_deref(), Some(&42));
}

async fn present(tier: &RedbTier, keys: &[Key]) -> BTreeSet<Key> {
    let mut held = BTreeSet::new();
    for k in keys {
        if tier.get(k).await.unwrap().is_some() {
            held.insert(k.clone());
        }
    }
    held
}

/// Entries are written in the reverse of their expiry order (the longest
/// lived first), so that the order of eviction shows it follows expiry,
/// not age. Eviction stops at 90% of the cap, so the first pass may leave
/// some dead entries (unreadable, counted when removed) for the next.
#[tokio::test]
async fn the_byte_cap_evicts_dead_entries_first_then_those_closest_to_expiry_down_to_90_percent() {
    let dir = tempfile::tempdir().unwrap();
    let cap: u64 = 256 * 1024;
    let tier = Arc::new(
        RedbTier::open(
            &RedbConfig::new(dir.path().join("capped.redb")).max_size(cap),
            1,
        )
        .await
        .unwrap(),
    );
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier.clone())
        .build();
    let value = |i: u32| format!("{i:04}{}", "x".repeat(2000));
    let write = |group: &'static str, n: u32, ttl: Duration| {
        let cache = cache.clone();
        async move {
            let keys: Vec<Key> = (0..n).map(|i| key(group, i)).collect();
            for (i, k) in (0..n).zip(&keys) {
                cache.set(k, value(i), ttl).await.unwrap();
            }
            keys
        }
    };
    let week = write("week", 40, Duration::from_secs(7 * 86_400)).await;
    let hour = write("hour", 40, Duration::from_secs(3600)).await;
    let dead = write("dead", 20, Duration::from_millis(100)).await;
    assert_eq!(tier.stats().evictions + tier.stats().expirations, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Fill with day-long entries until the cap is first enforced.
    let mut day = Vec::new();
    while tier.stats().expirations == 0 {
        assert!(day.len() < 200, "no eviction after {} writes", day.len());
        let k = key("day", day.len() as u32);
        cache
            .set(&k, value(day.len() as u32), Duration::from_secs(86_400))
            .await
            .unwrap();
        day.push(k);
    }
    // Dead entries went first, as many as it took to get down to 90%.
    assert_eq!(tier.stats().evictions, 0, "{:?}", tier.stats());
    assert!(present(&tier, &dead).await.is_empty());
    assert_eq!(present(&tier, &hour).await.len(), hour.len());
    let bytes = tier.size().await.unwrap().bytes;
    assert!(bytes <= cap / 10 * 9, "{bytes} bytes after eviction");

    // Then the live entries closest to their expiry: the hour-long ones,
    // never a week-long or a day-long one while an hour-long one is left.
    while tier.stats().evictions == 0 {
        assert!(day.len() < 400, "no eviction after {} writes", day.len());
        let k = key("day", day.len() as u32);
        cache
            .set(&k, value(day.len() as u32), Duration::from_secs(86_400))
            .await
            .unwrap();
        day.push(k);
    }
    assert_eq!(
        tier.stats().expirations,
        20,
        "every dead entry went before the first live one"
    );
    let evicted = tier.stats().evictions as usize;
    let bytes = tier.size().await.unwrap().bytes;
    assert!(bytes <= cap / 10 * 9, "{bytes} bytes after eviction");
    assert!(evicted < hour.len(), "{evicted} evicted");
    assert_eq!(
        present(&tier, &hour).await.len(),
        hour.len() - evicted,
        "the evicted entries are hour-long ones"
    );
    assert_eq!(present(&tier, &week).await.len(), week.len());
    assert_eq!(present(&tier, &day).await.len(), day.len());
}

/// An entry the previous release wrote (entry format 1) is a miss counted
/// as a decode failure, left as it is (never deleted as if it were of an
/// older schema), and replaced when the key is fetched again.
#[tokio::test]
async fn an_entry_of_entry_format_1_is_a_counted_miss_left_alone_until_refetched() {
    use tierstack::{Bytes, Codec, CompressionKind, Entry, EntryMeta, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    drop(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap());
    let k = key("old", 1);
    let body = br#""written by the previous release""#;
    let now = Timestamp::now();
    let expires = now.saturating_add(Duration::from_secs(3600));
    let header = Entry::from_body(
        EntryMeta::new(&k, 1, now).expiring(expires, expires),
        Codec::Json,
        CompressionKind::None,
        0,
        body.len() as u32,
        Bytes::copy_from_slice(body),
    )
    .header;
    let old = tierstack::envelope::v1::encode_for_tests(&header, body);
    let table = redb::TableDefinition::<&str, &[u8]>::new("entries_v1");
    let stored = |path: &Path| -> Option<Vec<u8>> {
        let db = redb::Database::open(path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let table = txn.open_table(table).unwrap();
        redb::ReadableTable::get(&table, k.as_str())
            .unwrap()
            .map(|v| v.value().to_vec())
    };
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(table)
            .unwrap()
            .insert(k.as_str(), old.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    {
        let cache = TieredCache::builder()
            .tier(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap())
            .build();
        assert!(cache.get::<String>(&k).await.is_none());
        let stats = cache.stats();
        assert_eq!(stats.layers[0].decode_failures, 1, "{stats:?}");
        assert_eq!(stats.layers[0].errors, 0, "{stats:?}");
    }
    assert_eq!(stored(&path).as_deref(), Some(old.as_slice()), "left alone");
    {
        let cache = TieredCache::builder()
            .tier(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap())
            .build();
        let fetched = cache
            .get_or_fetch(&k, Ttl::TierDefault, |_| async {
                Ok::<_, std::io::Error>("fetched again".to_string())
            })
            .await
            .unwrap();
        assert_eq!(*fetched, "fetched again");
    }
    assert_ne!(stored(&path).as_deref(), Some(old.as_slice()), "replaced");
    let cache = TieredCache::builder()
        .tier(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap())
        .build();
    assert_eq!(
        cache.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("fetched again")
    );
}

//! Damaged and foreign files: refused by name and left untouched, or read
//! without ever yielding a wrong value.

use std::sync::Arc;

use tierstack::{ErrorKind, Key, MemoryConfig, MemoryTier, TieredCache, Ttl};
use tierstack_redb::{RedbConfig, RedbTier};

fn key(i: u32) -> Key {
    Key::new("faults", [("i", i)])
}

#[tokio::test]
async fn a_foreign_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.redb");
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&path, &noise).unwrap();
    let err = RedbTier::open(&RedbConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("notes.redb") && err.to_string().contains("not a redb database"),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == noise,
        "foreign file modified"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.redb");
    drop(RedbTier::open(&RedbConfig::new(&real), 1).await.unwrap());
    let link = dir.path().join("link.redb");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = RedbTier::open(&RedbConfig::new(&link), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[tokio::test]
async fn a_truncated_file_is_an_error_by_name_or_yields_only_right_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.redb");
    {
        let cache = TieredCache::builder()
            .tier(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap())
            .build();
        for i in 0..300 {
            cache
                .set(&key(i), format!("value {i}"), Ttl::TierDefault)
                .await
                .unwrap();
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    match RedbTier::open(&RedbConfig::new(&path), 1).await {
        Err(e) => assert!(e.to_string().contains("cut.redb"), "{e}"),
        Ok(tier) => {
            let l1 = MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap();
            let cache = TieredCache::builder()
                .tier(l1)
                .shared_tier(Arc::new(tier))
                .build();
            for i in 0..300 {
                if let Some(v) = cache.get::<String>(&key(i)).await {
                    assert_eq!(*v, format!("value {i}"));
                }
            }
            let v = cache
                .get_or_fetch(&key(9999), Ttl::TierDefault, |_| async {
                    Ok::<_, std::io::Error>(1u8)
                })
                .await
                .unwrap();
            assert_eq!(*v, 1);
        }
    }
}

#[tokio::test]
async fn entries_survive_a_restart_and_the_byte_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capped.redb");
    let cap = 256 * 1024;
    {
        let tier = Arc::new(
            RedbTier::open(&RedbConfig::new(&path).max_size(cap), 1)
                .await
                .unwrap(),
        );
        let cache = TieredCache::builder()
            .compression(tierstack::Compression::None)
            .shared_tier(tier.clone())
            .build();
        for i in 0..400 {
            cache
                .set(&key(i), "x".repeat(2000) + &i.to_string(), Ttl::TierDefault)
                .await
                .unwrap();
        }
        let size = tierstack::Tier::size(&*tier).await.unwrap();
        assert!(
            size.bytes <= cap,
            "{} bytes stored for a cap of {cap}",
            size.bytes
        );
        assert!(tierstack::Tier::stats(&*tier).evictions > 0);
    }
    let cache = TieredCache::builder()
        .tier(RedbTier::open(&RedbConfig::new(&path), 1).await.unwrap())
        .build();
    assert_eq!(
        cache.get::<String>(&key(399)).await.as_deref(),
        Some(&("x".repeat(2000) + "399")),
        "the newest entry survives eviction and the restart"
    );
}

//! Foreign paths are refused by name and left untouched; entries survive a
//! restart; dead entries are swept.

use std::time::Duration;

use tierstack::{ErrorKind, Key, TieredCache, Ttl};
use tierstack_sled::{SledConfig, SledTier};

fn key(i: u32) -> Key {
    Key::new("faults", [("i", i)])
}

#[test]
fn a_file_or_a_foreign_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = SledTier::open(&SledConfig::new(&file), 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("needs a directory"), "{err}");

    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    let err = SledTier::open(&SledConfig::new(&foreign), 1).unwrap_err();
    assert!(
        err.to_string().contains("photos") && err.to_string().contains("not a sled database"),
        "{err}"
    );
    let names: Vec<_> = std::fs::read_dir(&foreign)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("cat.jpg")],
        "foreign directory modified"
    );
}

#[tokio::test]
async fn entries_survive_a_restart_and_purge_sweeps_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sled");
    {
        let cache = TieredCache::builder()
            .tier(SledTier::open(&SledConfig::new(&path), 1).unwrap())
            .build();
        cache
            .set(&key(1), "kept".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
        for i in 10..30 {
            cache
                .set(&key(i), "short".to_string(), Duration::from_millis(30))
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tier = SledTier::open(&SledConfig::new(&path), 1).unwrap();
    assert_eq!(tierstack::Tier::purge(&tier).await.unwrap(), 20);
    let cache = TieredCache::builder().tier(tier).build();
    assert_eq!(
        cache
            .get::<String>(&key(1))
            .await
            .as_deref()
            .map(String::as_str),
        Some("kept")
    );
}

//! What the sled tier promises about its directory: created 0700, a
//! symbolic link refused by name and left alone, and two schema versions
//! side by side in one directory.

use std::path::Path;
use std::time::Duration;

use tierstack::{Key, TieredCache, Ttl};
use tierstack_sled::{SledConfig, SledTier};

fn key(i: u32) -> Key {
    Key::new("files", [("i", i)])
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn a_missing_directory_is_created_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/sled");
    let cache = TieredCache::builder()
        .tier(SledTier::open(&SledConfig::new(&path), 1).unwrap())
        .build();
    cache
        .set(&key(1), "private".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    assert_eq!(mode(&dir.path().join("nested")), 0o700);
    assert_eq!(mode(&path), 0o700);
    assert!(path.join("db").is_file(), "sled wrote its files inside");
}

#[cfg(unix)]
#[test]
fn a_symlink_is_refused_by_name_and_its_target_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    drop(SledTier::open(&SledConfig::new(&real), 1).unwrap());
    // sled's I/O threads may still hold the lock a moment after the drop.
    std::thread::sleep(Duration::from_millis(200));
    let listing = |p: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().len())
            })
            .collect();
        names.sort();
        names
    };
    let before = listing(&real);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = SledTier::open(&SledConfig::new(&link), 1).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("link") && message.contains("symbolic link"),
        "{message}"
    );
    assert_eq!(listing(&real), before, "the link's target was modified");
    // A link to a directory that does not exist yet: refused, not created.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let err = SledTier::open(&SledConfig::new(&dangling), 1).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!dir.path().join("nowhere").exists());
}

/// sled locks its directory, so the two versions take turns; each keeps
/// its own tree and finds its entry again after the other wrote the same
/// key.
#[tokio::test]
async fn schema_versions_share_one_directory_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared");
    let k = key(1);
    let open = |version: u32| {
        TieredCache::builder()
            .tier(SledTier::open(&SledConfig::new(&path), version).unwrap())
            .build()
    };
    {
        let v1 = open(1);
        v1.set(&k, "old shape".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
    }
    {
        let v2 = open(2);
        assert!(v2.get::<u32>(&k).await.is_none(), "v2 sees v1's entry");
        v2.set(&k, 42_u32, Ttl::TierDefault).await.unwrap();
    }
    let v1 = open(1);
    assert_eq!(
        v1.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("old shape"),
        "v2 replaced or removed v1's entry"
    );
    assert_eq!(v1.stats().layers[0].decode_failures, 0);
    drop(v1);
    let v2 = open(2);
    assert_eq!(v2.get::<u32>(&k).await.as_deref(), Some(&42));
}

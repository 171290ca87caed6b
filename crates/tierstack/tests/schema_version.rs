//! One schema version: the cache and the tiers it runs over agree on it, or
//! the cache is not built.

use tierstack::{
    ErrorKind, Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl,
};

async fn sqlite(dir: &std::path::Path, file: &str, version: u32) -> SqliteTier {
    SqliteTier::open(&SqliteConfig::new(dir.join(file)), version)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_builder_version_other_than_its_tiers_is_a_build_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = TieredCache::builder()
        .schema_version(2)
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .tier(sqlite(dir.path(), "cache.db", 1).await)
        .try_build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(
        err.to_string(),
        "build failed: schema versions disagree: tier sqlite was opened for schema version 1, \
         the builder's schema_version is 2; open every tier with the version the cache uses"
    );
}

#[tokio::test]
async fn tiers_opened_for_different_versions_are_a_build_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = TieredCache::builder()
        .tier(sqlite(dir.path(), "one.db", 1).await)
        .tier(sqlite(dir.path(), "two.db", 2).await)
        .try_build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("tier sqlite is 1"), "{err}");
}

#[tokio::test]
#[should_panic(expected = "schema versions disagree")]
async fn build_panics_on_a_mismatch_rather_than_writing_into_the_wrong_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let _cache = TieredCache::builder()
        .schema_version(3)
        .tier(sqlite(dir.path(), "cache.db", 1).await)
        .build();
}

#[tokio::test]
async fn without_a_builder_version_the_cache_takes_its_tiers_version() {
    let dir = tempfile::tempdir().unwrap();
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .tier(sqlite(dir.path(), "cache.db", 2).await)
        .build();
    assert_eq!(cache.schema_version(), 2);
    let key = Key::new("audnexus:book", [("asin", "B1")]);
    cache
        .set(&key, "v2 shape".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();
    drop(cache);
    // A version 2 reader that says so explicitly reads what was written.
    let reader = TieredCache::builder()
        .schema_version(2)
        .tier(sqlite(dir.path(), "cache.db", 2).await)
        .try_build()
        .unwrap();
    assert_eq!(
        reader
            .get::<String>(&key)
            .await
            .as_deref()
            .map(String::as_str),
        Some("v2 shape")
    );
}

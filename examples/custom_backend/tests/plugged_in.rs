//! The third-party backend: selected by `kind:` in a config file and listed
//! by the registry (the conformance suite runs in `tests/conformance.rs`).

use tierstack::{Config, Key, TieredCache, Ttl};

#[tokio::test]
async fn a_config_file_selects_the_external_kind() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "cache:\n  tiers:\n    - kind: memory\n    - kind: files\n      dir: \"{}\"\n",
        dir.path().display()
    );
    let config = Config::parse(&yaml, "yaml").unwrap();
    let key = Key::new("audnexus:book", [("asin", "B002V1A0WE")]);
    {
        let cache = TieredCache::from_config(&config).await.unwrap();
        assert_eq!(cache.tiers().nth(1).unwrap().name(), "files");
        cache
            .set(&key, "Dune".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
    }
    let cache = TieredCache::from_config(&config).await.unwrap();
    assert_eq!(
        cache
            .get::<String>(&key)
            .await
            .as_deref()
            .map(String::as_str),
        Some("Dune")
    );
    assert!(
        tierstack::backends().iter().any(|d| d.name == "files"),
        "registry lists the external backend"
    );
}

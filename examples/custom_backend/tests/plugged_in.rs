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
        let files = cache.tiers().nth(1).unwrap();
        assert_eq!(files.name(), "files");
        // Naming the crate also links it, and with it its registration: a
        // test binary that never names it has no `files` kind.
        assert_eq!(files.capabilities(), tierstack_example_files::CAPABILITIES);
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

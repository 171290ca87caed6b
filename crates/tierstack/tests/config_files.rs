//! Config files build real stacks: the RFC's block verbatim, the full form
//! with each compiled backend, YAML/TOML/JSON, and clear errors.

use std::time::Duration;

use tierstack::{Config, ErrorKind, Key, TieredCache, Ttl};

fn key() -> Key {
    Key::new("audnexus:book", [("asin", "B002V1A0WE")])
}

#[tokio::test]
async fn the_rfc_block_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    // The RFC's block, with `location` pointed at a temporary directory.
    let yaml = format!(
        r#"# config.yaml
cache:
  enabled: true
  file_ttl_days: 7
  memory_ttl_seconds: 3600
  max_memory_entries: 1000
  location: "{}"
"#,
        dir.path().display()
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    {
        let cache = TieredCache::from_config(&Config::load(&path).unwrap())
            .await
            .unwrap();
        let names: Vec<&str> = cache.tiers().map(|t| t.name()).collect();
        assert_eq!(names, ["memory", "sqlite"]);
        assert_eq!(
            cache.tiers().next().unwrap().max_ttl(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            cache.tiers().nth(1).unwrap().max_ttl(),
            Some(Duration::from_secs(7 * 86400))
        );
        cache
            .set(&key(), "Dune".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
    }
    // A new cache from the same file finds the value in {location}/metadata.db.
    let cache = TieredCache::from_config(&Config::load(&path).unwrap())
        .await
        .unwrap();
    assert_eq!(
        cache
            .get::<String>(&key())
            .await
            .as_deref()
            .map(String::as_str),
        Some("Dune")
    );
    let db = dir.path().join("metadata.db");
    let table = rusqlite_table(&db)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        table.contains("cache_key TEXT") && table.contains("data JSON"),
        "{table}"
    );
}

fn rusqlite_table(db: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    // The RFC's `data JSON` column holds JSON that SQLite's JSON functions read.
    let title: String = conn
        .query_row(
            "SELECT json_extract(data, '$') FROM metadata_cache WHERE source = 'audnexus:book'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(title, "Dune");
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE name = 'metadata_cache'",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn swapping_the_kind_swaps_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = vec!["sqlite"];
    if cfg!(feature = "redb") {
        kinds.push("redb");
    }
    if cfg!(feature = "sled") {
        kinds.push("sled");
    }
    for kind in kinds {
        let yaml = format!(
            "cache:\n  tiers:\n    - kind: memory\n      max_entries: 100\n    - kind: {kind}\n      path: {}/{kind}-store\n      ttl: 7d\n",
            dir.path().display()
        );
        let config = Config::parse(&yaml, "yaml").unwrap();
        {
            let cache = TieredCache::from_config(&config).await.unwrap();
            assert_eq!(cache.tiers().nth(1).unwrap().name(), kind);
            cache
                .set(&key(), kind.to_string(), Ttl::TierDefault)
                .await
                .unwrap();
        }
        let cache = TieredCache::from_config(&config).await.unwrap();
        assert_eq!(
            cache
                .get::<String>(&key())
                .await
                .as_deref()
                .map(String::as_str),
            Some(kind),
            "{kind}"
        );
    }
}

#[test]
fn toml_and_json_say_the_same() {
    let toml = r#"
[cache]
schema_version = 2
codec = "json"
compression = "none"

[[cache.tiers]]
kind = "memory"
ttl = "1h"
max_bytes = "64MiB"
"#;
    let json = r#"{"cache": {"schema_version": 2, "codec": "json", "compression": "none",
        "tiers": [{"kind": "memory", "ttl": "1h", "max_bytes": "64MiB"}]}}"#;
    for config in [
        Config::parse(toml, "toml").unwrap(),
        Config::parse(json, "json").unwrap(),
    ] {
        assert_eq!(config.cache.schema_version, 2);
        assert_eq!(config.cache.codec, Some(tierstack::Codec::Json));
        assert_eq!(config.cache.tiers.as_ref().unwrap().len(), 1);
    }
}

#[test]
fn typos_unknown_kinds_and_bad_values_are_errors_that_say_where() {
    let typo = Config::parse(
        "cache:\n  tiers:\n    - kind: memory\n      max_entires: 10\n",
        "yaml",
    )
    .unwrap_err();
    assert!(typo.to_string().contains("max_entires"), "{typo}");
    let kind = Config::parse("cache:\n  tiers:\n    - kind: memcached\n", "yaml").unwrap_err();
    assert!(
        kind.to_string().contains("memcached") && kind.to_string().contains("memory"),
        "{kind}"
    );
    let duration = Config::parse(
        "cache:\n  tiers:\n    - kind: memory\n      ttl: soon\n",
        "yaml",
    )
    .unwrap_err();
    assert!(
        duration.to_string().contains("soon") && duration.to_string().contains("expected e.g."),
        "{duration}"
    );
    let top = Config::parse("cach:\n  enabled: true\n", "yaml").unwrap_err();
    assert!(top.to_string().contains("cach"), "{top}");
    let line =
        Config::parse("cache:\n  enabled: true\n  schema_version: many\n", "yaml").unwrap_err();
    // The bad value is on line 3, at column 19: "many".
    assert!(
        line.to_string().contains("line 3 column 19"),
        "the line of the bad value: {line}"
    );
    assert_eq!(line.kind(), ErrorKind::Config);
    println!("{typo}\n{kind}\n{duration}\n{line}");
    let format = Config::parse("", "ini").unwrap_err();
    assert!(format.to_string().contains("ini"), "{format}");
}

#[tokio::test]
async fn a_missing_file_names_the_path() {
    let err = Config::load("/nonexistent/tierstack.yaml").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tierstack.yaml"),
        "{err}"
    );
}

#[tokio::test]
async fn disabled_means_pass_through_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "cache:\n  enabled: false\n  location: \"{}/never\"\n",
        dir.path().display()
    );
    let cache = TieredCache::from_config(&Config::parse(&yaml, "yaml").unwrap())
        .await
        .unwrap();
    assert!(!cache.is_enabled());
    let v = cache
        .get_or_fetch(&key(), Ttl::TierDefault, |_| async {
            Ok::<_, std::io::Error>(1u8)
        })
        .await
        .unwrap();
    assert_eq!(*v, 1);
    assert!(!dir.path().join("never").exists());
}

#[tokio::test]
async fn mixing_both_forms_is_an_error() {
    let yaml = "cache:\n  location: /tmp/x\n  tiers:\n    - kind: memory\n";
    let err = TieredCache::from_config(&Config::parse(yaml, "yaml").unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("either"), "{err}");
}

#[tokio::test]
async fn offline_and_source_policies_come_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "cache:\n  offline: true\n  stale_for: 1h\n  sources:\n    \"audnexus:*\": {{ ttl: 7d }}\n    pathinfo: {{ ttl: 90s, negative_ttl: 10s }}\n  tiers:\n    - kind: sqlite\n      path: \"{}\"\n      ttl: 30d\n",
        dir.path().join("p.db").display()
    );
    let config = Config::parse(&yaml, "yaml").unwrap();
    let cache = TieredCache::from_config(&config).await.unwrap();

    // Offline: a miss never reaches the source.
    let called = std::sync::atomic::AtomicBool::new(false);
    let result = cache
        .get_or_fetch::<String, _, _, std::io::Error>(&key(), Ttl::TierDefault, |_| async {
            called.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok("fetched".to_owned())
        })
        .await;
    assert!(result.is_err());
    assert!(!called.load(std::sync::atomic::Ordering::SeqCst));

    // Each source's TTL applies to writes without an explicit TTL.
    let now = tierstack::Timestamp::now().as_millis();
    let path = Key::new("pathinfo", [("path", "/a")]);
    cache.set(&path, 1_u32, Ttl::TierDefault).await.unwrap();
    cache.set(&key(), 2_u32, Ttl::TierDefault).await.unwrap();
    let expires = |key: Key| {
        let cache = cache.clone();
        async move {
            let inspected = cache.inspect(&key).await;
            let header = inspected[0].1.as_ref().unwrap().unwrap();
            header.expires_at.as_millis() - now
        }
    };
    let path_ttl = expires(path).await;
    assert!((89_000..=91_000).contains(&path_ttl), "{path_ttl}");
    let book_ttl = expires(key()).await;
    assert!(
        (7 * 86_400_000 - 1_000..=7 * 86_400_000 + 1_000).contains(&book_ttl),
        "{book_ttl}"
    );
}

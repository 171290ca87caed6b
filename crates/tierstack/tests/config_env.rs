//! `TIERSTACK_…` environment overrides: nested fields, list items, the RFC
//! block, ignored variables, and errors that name the variable.

use std::collections::BTreeSet;
use std::time::Duration;

use tierstack::{CACHE_FIELDS, Config, EMBEDDED_DEFAULT, TieredCache};

const FULL: &str = "\
cache:
  tiers:
    - kind: memory
      ttl: 1h
      max_entries: 1000
    - kind: sqlite
      path: /nonexistent/never-used.db
      ttl: 7d
";

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn overrides_reach_nested_fields_and_list_items() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-env.db");
    let config = Config::parse_with_env(
        FULL,
        "yaml",
        vars(&[
            ("TIERSTACK_TIERS__1__PATH", db.to_str().unwrap()),
            ("TIERSTACK_TIERS__1__TTL", "2h"),
            ("TIERSTACK_TIERS__0__MAX_ENTRIES", "5"),
            ("TIERSTACK_SCHEMA_VERSION", "7"),
            ("TIERSTACK_SOURCES__PATHINFO__TTL", "15m"),
        ]),
    )
    .unwrap();
    assert_eq!(config.cache.schema_version, 7);
    assert_eq!(
        config.cache.sources["pathinfo"].ttl,
        Some(Duration::from_secs(900))
    );
    assert_eq!(config.overrides.len(), 5, "{:?}", config.overrides);
    let cache = TieredCache::from_config(&config).await.unwrap();
    assert_eq!(cache.schema_version(), 7);
    let tiers: Vec<_> = cache.tiers().collect();
    assert_eq!(tiers[1].max_ttl(), Some(Duration::from_secs(7200)));
    assert!(db.exists(), "the SQLite file is where the override put it");
    let debug: String = format!("{:?}", config.cache)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(debug.contains("max_entries:Some(5)"), "{debug}");
}

#[tokio::test]
async fn enabled_false_from_the_environment_makes_a_pass_through_cache() {
    let config =
        Config::parse_with_env(FULL, "yaml", vars(&[("TIERSTACK_ENABLED", "false")])).unwrap();
    assert!(!config.cache.enabled);
    let cache = TieredCache::from_config(&config).await.unwrap();
    assert!(!cache.is_enabled());
    assert_eq!(cache.tiers().count(), 0, "nothing is opened");
}

#[test]
fn overrides_apply_to_the_rfc_block_too() {
    let rfc = "cache:\n  enabled: true\n  file_ttl_days: 7\n  location: \"~/.cache/mk_torrent\"\n";
    let config = Config::parse_with_env(
        rfc,
        "yaml",
        vars(&[
            ("TIERSTACK_LOCATION", "/tmp/elsewhere"),
            ("TIERSTACK_FILE_TTL_DAYS", "1.5"),
        ]),
    )
    .unwrap();
    assert_eq!(config.cache.location.as_deref(), Some("/tmp/elsewhere"));
    assert_eq!(config.cache.file_ttl_days, Some(1.5));
}

#[test]
fn variables_that_name_no_field_are_left_alone_and_listed() {
    let config = Config::parse_with_env(
        FULL,
        "yaml",
        vars(&[
            ("TIERSTACK_REDIS_URL", "redis://127.0.0.1:1"),
            ("TIERSTACK_CONFIG", "/some/file.yaml"),
            ("TIERSTACK_TEIRS__1__PATH", "/typo"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert!(config.overrides.is_empty());
    let mut ignored = config.ignored_variables.clone();
    ignored.sort();
    // TIERSTACK_CONFIG names the file; it is not an override, nor ignored.
    assert_eq!(ignored, ["TIERSTACK_REDIS_URL", "TIERSTACK_TEIRS__1__PATH"]);
}

#[test]
fn bad_overrides_are_errors_that_name_the_variable() {
    let past_the_end =
        Config::parse_with_env(FULL, "yaml", vars(&[("TIERSTACK_TIERS__5__PATH", "/x")]))
            .unwrap_err();
    let text = past_the_end.to_string();
    assert!(
        text.contains("TIERSTACK_TIERS__5__PATH") && text.contains("2 entries"),
        "{text}"
    );

    let not_an_index = Config::parse_with_env(
        FULL,
        "yaml",
        vars(&[("TIERSTACK_TIERS__SQLITE__PATH", "/x")]),
    )
    .unwrap_err()
    .to_string();
    assert!(not_an_index.contains("must be an index"), "{not_an_index}");

    let bad_value = Config::parse_with_env(
        FULL,
        "yaml",
        vars(&[("TIERSTACK_TIERS__0__MAX_ENTRIES", "lots")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad_value.contains("TIERSTACK_TIERS__0__MAX_ENTRIES"),
        "{bad_value}"
    );

    let unknown_field = Config::parse_with_env(
        FULL,
        "yaml",
        vars(&[("TIERSTACK_TIERS__0__MAX_ENTRIEZ", "5")]),
    )
    .unwrap_err()
    .to_string();
    assert!(unknown_field.contains("max_entriez"), "{unknown_field}");
}

#[test]
fn every_format_takes_overrides() {
    let toml = "[cache]\nschema_version = 1\n[[cache.tiers]]\nkind = \"memory\"\n";
    let json = r#"{"cache": {"tiers": [{"kind": "memory"}]}}"#;
    for (text, format) in [(toml, "toml"), (json, "json")] {
        let config = Config::parse_with_env(
            text,
            format,
            vars(&[
                ("TIERSTACK_TIERS__0__TTL", "10m"),
                ("TIERSTACK_OFFLINE", "true"),
            ]),
        )
        .unwrap();
        assert!(config.cache.offline, "{format}");
        assert!(format!("{:?}", config.cache).contains("600s"), "{format}");
    }
}

/// `CACHE_FIELDS` decides which variables are overrides; it must list
/// exactly the fields serde accepts under `cache:`.
#[test]
fn the_override_field_list_is_the_structs_field_list() {
    let error = Config::parse(r#"{"cache": {"no_such_field": 1}}"#, "json")
        .unwrap_err()
        .to_string();
    let expected = error
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("serde lists the fields: {error}"));
    let from_serde: BTreeSet<&str> = expected
        .split(',')
        .map(|f| {
            f.trim()
                .trim_matches(|c: char| c == '`' || c.is_whitespace())
        })
        .map(|f| f.split('`').next().unwrap())
        .filter(|f| !f.is_empty())
        .collect();
    let listed: BTreeSet<&str> = CACHE_FIELDS.iter().copied().collect();
    assert_eq!(from_serde, listed);
}

#[tokio::test]
async fn the_embedded_default_is_memory_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("default.db");
    let config = Config::parse_with_env(
        EMBEDDED_DEFAULT,
        "yaml",
        vars(&[("TIERSTACK_TIERS__1__PATH", db.to_str().unwrap())]),
    )
    .unwrap();
    let cache = TieredCache::from_config(&config).await.unwrap();
    let names: Vec<&str> = cache.tiers().map(|t| t.name()).collect();
    assert_eq!(names, ["memory", "sqlite"]);
    assert!(db.exists());
}

#[test]
fn a_list_override_on_a_file_without_the_list_says_what_to_use() {
    let rfc = "cache:\n  enabled: true\n  file_ttl_days: 7\n  location: /tmp/x\n";
    let error = Config::parse_with_env(
        rfc,
        "yaml",
        vars(&[("TIERSTACK_TIERS__1__PATH", "/tmp/y.db")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("TIERSTACK_TIERS__1__PATH")
            && error.contains("no `tiers` list")
            && error.contains("TIERSTACK_LOCATION"),
        "{error}"
    );
}

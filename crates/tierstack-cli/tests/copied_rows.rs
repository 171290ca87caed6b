//! A SQLite row copied under another key (by hand, with `sqlite3`) is never
//! that key's value: `get` misses, `inspect` says the entry was written for
//! another key.

mod support;

use support::Sandbox;

#[test]
fn a_row_copied_under_another_key_is_a_miss_that_inspect_explains() {
    let sandbox = Sandbox::new();
    let (config, location) = sandbox.flat_config("cache");
    let config = config.as_str();
    let inspect_json = |key: &str| {
        sandbox
            .run(&["--config", config, "--json", "inspect", key])
            .expect(0)
            .json()
    };
    sandbox
        .run(&[
            "--config",
            config,
            "set",
            "audnexus:book:asin=A",
            r#"{"title":"Dune"}"#,
        ])
        .expect(0);
    let inspect = inspect_json("audnexus:book:asin=A");
    assert_eq!(
        inspect["tiers"][1]["entry"]["bound_to_key"], true,
        "{inspect}"
    );
    rusqlite::Connection::open(location.join("metadata.db"))
        .unwrap()
        .execute(
            "INSERT INTO metadata_cache SELECT 'audnexus:book:asin=B', source, data, expires_at, created_at, \
             schema_version, negative, expires_ms, retain_ms, codec, compression, size, checksum, header, last_access \
             FROM metadata_cache WHERE cache_key = 'audnexus:book:asin=A'",
            [],
        )
        .unwrap();
    let miss = sandbox
        .run(&["--config", config, "get", "audnexus:book:asin=B"])
        .expect(1);
    assert!(miss.stdout.is_empty(), "{miss:?}");
    let inspect = inspect_json("audnexus:book:asin=B");
    assert_eq!(
        inspect["tiers"][1]["entry"]["bound_to_key"], false,
        "{inspect}"
    );
    let human = sandbox
        .run(&["--config", config, "inspect", "audnexus:book:asin=B"])
        .expect(0);
    assert!(
        human.stdout.contains("written for another key"),
        "{human:?}"
    );
    sandbox
        .run(&["--config", config, "get", "audnexus:book:asin=A"])
        .expect(0);
}

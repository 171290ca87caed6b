//! `tierstack compact`: a SQLite file made without incremental auto-vacuum
//! (as earlier releases made them) gives its space back only after a
//! `VACUUM`, which runs when asked for and never implicitly.

mod support;

use support::Sandbox;

fn pages(db: &std::path::Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let pages = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    let auto_vacuum = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .unwrap();
    (pages, auto_vacuum)
}

#[test]
fn compact_gives_back_the_space_of_a_file_without_auto_vacuum() {
    let sandbox = Sandbox::new();
    let (config, location) = sandbox.flat_config("cache");
    let config = config.as_str();
    let big = format!("\"{}\"", "z".repeat(100_000));
    sandbox
        .run(&["--config", config, "set", "k:n=0", "1"])
        .expect(0);
    let db = location.join("metadata.db");
    // Turn auto-vacuum off, as files of earlier releases have it.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    assert_eq!(pages(&db).1, 0);
    for i in 1..40 {
        sandbox
            .run(&["--config", config, "set", &format!("k:n={i}"), &big])
            .expect(0);
    }
    for i in 1..40 {
        sandbox
            .run(&["--config", config, "delete", &format!("k:n={i}")])
            .expect(0);
    }
    sandbox.run(&["--config", config, "purge"]).expect(0);
    let (before, _) = pages(&db);
    let out = sandbox
        .run(&["--config", config, "--json", "compact"])
        .expect(0)
        .json();
    let (after, auto_vacuum) = pages(&db);
    assert_eq!(auto_vacuum, 2, "compact turns incremental auto-vacuum on");
    assert!(after * 10 < before, "{before} pages before, {after} after");
    let sqlite = out["tiers"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .expect("the sqlite tier reported");
    assert!(sqlite["bytes_after"].as_u64() < sqlite["bytes_before"].as_u64());
    // The value that stayed is still there.
    let got = sandbox.run(&["--config", config, "get", "k:n=0"]).expect(0);
    assert_eq!(got.stdout.trim(), "1");
}

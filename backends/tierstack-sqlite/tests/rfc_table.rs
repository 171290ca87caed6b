//! The RFC's table means what its SQL says: `TIMESTAMP` columns that SQLite's
//! date functions and Python's `sqlite3` read, `data` that is JSON in every
//! row, cleanup queries written the RFC's way that delete only what expired,
//! files that give space back, and files of the previous table version
//! migrated in place.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{json_cache, open};
use rusqlite::Connection;
use serde_json::{Value, json};
use tierstack::{
    Bytes, Codec, Compression, CompressionKind, Entry, EntryMeta, Key, Tier, TieredCache,
    Timestamp, Ttl,
};
use tierstack_sqlite::{SqliteConfig, SqliteTier};

fn book(i: u32) -> Key {
    Key::new("audnexus:book", [("asin", format!("B{i:09}"))])
}

/// Stores "not found" for `key` in `tier`, as a cache does after a fetch
/// that found nothing.
async fn set_not_found(tier: &dyn Tier, key: &Key) {
    let meta = EntryMeta::new(key, 1, Timestamp::now());
    tier.set(key, Entry::negative(meta, Codec::Json))
        .await
        .unwrap();
}

/// Ten live entries, one live "not found", five that expire at once.
async fn fill(cache: &TieredCache) {
    for i in 0..10 {
        cache
            .set(
                &book(i),
                json!({"title": format!("t{i}")}),
                Ttl::TierDefault,
            )
            .await
            .unwrap();
    }
    let tier = cache.tiers().next().expect("one tier");
    set_not_found(&**tier, &book(99)).await;
    for i in 100..105 {
        cache
            .set(&book(i), json!(i), Duration::from_millis(1))
            .await
            .unwrap();
    }
    // CURRENT_TIMESTAMP has whole seconds: be past the next one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn timestamps_compare_with_current_timestamp_and_cleanup_deletes_only_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    let cache = json_cache(Arc::new(open(&path).await));
    fill(&cache).await;

    let conn = Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM metadata_cache WHERE expires_at > CURRENT_TIMESTAMP"),
        11
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM metadata_cache WHERE datetime(expires_at) IS NULL OR datetime(created_at) IS NULL"
        ),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM metadata_cache WHERE julianday(expires_at) > julianday('now')"),
        11
    );
    // The RFC's cleanup, as a user would write it.
    let removed = conn
        .execute(
            "DELETE FROM metadata_cache WHERE expires_at < CURRENT_TIMESTAMP",
            [],
        )
        .unwrap();
    assert_eq!(removed, 5);
    for i in 0..10 {
        assert!(cache.get::<Value>(&book(i)).await.is_some(), "row {i} lost");
    }
}

#[tokio::test]
async fn every_row_reads_from_python_as_json_with_parsed_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    let cache = json_cache(Arc::new(open(&path).await));
    fill(&cache).await;
    cache
        .set(&book(200), json!(1.50), Ttl::TierDefault)
        .await
        .unwrap();
    cache
        .set(&book(201), json!("text"), Ttl::TierDefault)
        .await
        .unwrap();
    drop(cache);

    let script = r#"
import datetime, json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], detect_types=sqlite3.PARSE_DECLTYPES)
rows = conn.execute("SELECT cache_key, data, expires_at, created_at, negative FROM metadata_cache").fetchall()
values = {key: json.loads(data) for key, data, _, _, _ in rows}
for _, _, expires_at, created_at, _ in rows:
    assert isinstance(expires_at, datetime.datetime), expires_at
    assert isinstance(created_at, datetime.datetime), created_at
live = conn.execute("SELECT count(*) FROM metadata_cache WHERE expires_at > CURRENT_TIMESTAMP").fetchone()[0]
negatives = [key for key, _, _, _, negative in rows if negative]
print(json.dumps({"rows": len(rows), "live": live, "negatives": negatives,
                  "t0": values["audnexus:book:asin=B000000000"], "n": values["audnexus:book:asin=B000000200"],
                  "missing": values["audnexus:book:asin=B000000099"]}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs (the test suite needs it)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 18);
    assert_eq!(report["live"], 13);
    assert_eq!(
        report["negatives"],
        json!(["audnexus:book:asin=B000000099"])
    );
    assert_eq!(report["t0"], json!({"title": "t0"}));
    assert_eq!(report["n"], json!(1.5));
    assert_eq!(report["missing"], Value::Null);
}

#[tokio::test]
async fn new_files_give_space_back_on_purge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    let tier = Arc::new(open(&path).await);
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier.clone())
        .build();
    let conn = Connection::open(&path).unwrap();
    let auto_vacuum: i64 = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .unwrap();
    assert_eq!(auto_vacuum, 2, "new files use incremental auto-vacuum");
    for i in 0..300 {
        cache
            .set(&book(i), "x".repeat(8000), Duration::from_millis(1))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pages = |conn: &Connection| -> i64 {
        conn.pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap()
    };
    let before = pages(&conn);
    assert_eq!(tier.purge().await.unwrap(), 300);
    let after = pages(&conn);
    assert!(
        after * 4 < before,
        "{before} pages before purge, {after} after"
    );
}

#[tokio::test]
async fn a_byte_cap_smaller_than_a_few_rows_never_panics_and_tiny_caps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for cap in [0, 1, 4096] {
        let err = SqliteTier::open(
            &SqliteConfig::new(dir.path().join("tiny.db")).max_size(cap),
            1,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), tierstack::ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("max_size"), "{err}");
    }
    let tier = Arc::new(
        SqliteTier::open(
            &SqliteConfig::new(dir.path().join("small.db")).max_size(64 * 1024),
            1,
        )
        .await
        .unwrap(),
    );
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier.clone())
        .build();
    // Three rows of 40 KB: over the cap with fewer rows than one eviction takes.
    for i in 0..3 {
        cache
            .set(&book(i), "y".repeat(40_000), Ttl::TierDefault)
            .await
            .unwrap();
    }
    assert!(tier.health().await == tierstack::Health::Healthy);
    assert!(tier.stats().evictions >= 1, "{:?}", tier.stats());
}

/// The table as version 2 created it: integer-millisecond times and
/// envelope-format-1 headers.
const VERSION_2_TABLE: &str = "
CREATE TABLE metadata_cache (
    cache_key      TEXT NOT NULL,
    source         TEXT NOT NULL,
    data           JSON NOT NULL,
    expires_at     TIMESTAMP NOT NULL,
    created_at     TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    schema_version INTEGER NOT NULL,
    stale_until    INTEGER NOT NULL,
    codec          INTEGER NOT NULL,
    compression    INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    checksum       INTEGER NOT NULL,
    header         BLOB NOT NULL,
    last_access    INTEGER NOT NULL,
    PRIMARY KEY (cache_key, schema_version)
);
CREATE INDEX metadata_cache_expires_at ON metadata_cache (expires_at);
PRAGMA user_version = 2;
";

fn insert_version_2_row(conn: &Connection, key: &Key, schema: u32, body: &[u8], negative: bool) {
    let now = Timestamp::now();
    let expires = now.saturating_add(Duration::from_secs(3600));
    let meta = EntryMeta::new(key, schema, now).expiring(expires, expires);
    let mut header = Entry::from_body(
        meta,
        Codec::Json,
        CompressionKind::None,
        0,
        body.len() as u32,
        Bytes::copy_from_slice(body),
    )
    .header;
    if negative {
        header.flags = tierstack::EntryFlags::NEGATIVE;
    }
    let old = tierstack::envelope::v1::encode_for_tests(&header, body);
    let (head, data) = old.split_at(60);
    conn.execute(
        "INSERT INTO metadata_cache VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4, 2, 0, ?7, 0, ?8, ?5)",
        rusqlite::params![
            key.as_str(),
            key.source(),
            data,
            i64::try_from(expires.as_millis()).unwrap(),
            i64::try_from(now.as_millis()).unwrap(),
            schema,
            old.len() as i64,
            head,
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn a_version_2_file_is_migrated_in_place_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(VERSION_2_TABLE).unwrap();
        insert_version_2_row(&conn, &book(1), 1, br#"{"title":"Dune"}"#, false);
        insert_version_2_row(&conn, &book(2), 1, b"", true);
        // A later tool's rows ride along unchanged, for that tool.
        insert_version_2_row(&conn, &book(1), 2, br#"{"title":"Dune v2"}"#, false);
        conn.execute(
            "INSERT INTO metadata_cache VALUES ('audnexus:book:asin=B9', 'audnexus:book', x'00', 0, 0, 1, 0, 2, 0, 1, 0, x'0102', 0)",
            [],
        )
        .unwrap();
    }
    let cache = json_cache(Arc::new(open(&path).await));
    assert_eq!(
        cache.get::<Value>(&book(1)).await.as_deref(),
        Some(&json!({"title": "Dune"}))
    );
    let inspected = cache.inspect(&book(2)).await;
    let header = inspected[0]
        .1
        .as_ref()
        .unwrap()
        .expect("negative row carried over");
    assert!(header.is_negative());
    assert!(header.belongs_to(&book(2)));

    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let rows: Vec<(String, u32, String, String, bool)> = conn
        .prepare("SELECT cache_key, schema_version, CAST(data AS TEXT), expires_at, negative FROM metadata_cache ORDER BY cache_key, schema_version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 3, "the damaged row was dropped: {rows:?}");
    assert_eq!(rows[1].2, "{\"title\":\"Dune v2\"}");
    assert_eq!((rows[2].2.as_str(), rows[2].4), ("null", true));
    assert!(
        rows.iter()
            .all(|r| r.3.len() == 23 && r.3.as_bytes()[10] == b' '),
        "{rows:?}"
    );
    let indexes: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'metadata_cache_%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(indexes, 0);
}

#[tokio::test]
async fn sizes_count_what_a_scan_sees_and_dead_rows_wait_for_purge() {
    let dir = tempfile::tempdir().unwrap();
    let tier = Arc::new(open(&dir.path().join("metadata.db")).await);
    let cache = json_cache(tier.clone());
    for i in 0..6 {
        cache
            .set(&book(i), json!(i), Ttl::TierDefault)
            .await
            .unwrap();
    }
    for i in 10..12 {
        cache
            .set(&book(i), json!(i), Duration::from_millis(1))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let size = tier.size().await.unwrap();
    let scanned = tier.scan(None, 100).await.unwrap().entries.len();
    assert_eq!((size.entries, scanned), (6, 6));
    assert_eq!(tier.purge().await.unwrap(), 2);
    assert_eq!(tier.size().await.unwrap(), size);
}

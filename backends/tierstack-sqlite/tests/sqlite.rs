//! SQLite-specific behaviour on real files: the RFC table, persistence,
//! permissions, refusing foreign files, migrations, group commit, the byte
//! cap, purge, damaged rows and faults.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{json_cache, open};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tierstack::{Compression, ErrorKind, Key, MemoryConfig, MemoryTier, Tier, TieredCache, Ttl};
use tierstack_sqlite::{RFC_TABLE, SqliteConfig, SqliteTier};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
    authors: Vec<String>,
}

fn dune() -> Book {
    Book {
        asin: "B002V1A0WE".into(),
        title: "Dune".into(),
        authors: vec!["Frank Herbert".into()],
    }
}

fn book_key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

#[tokio::test]
async fn the_rfc_table_is_visible_and_json_is_readable_with_json_extract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    let cache = json_cache(Arc::new(open(&path).await));
    cache
        .set(&book_key("B002V1A0WE"), dune(), Ttl::TierDefault)
        .await
        .unwrap();

    let conn = Connection::open(&path).unwrap();
    let columns: Vec<(String, String)> = conn
        .prepare("SELECT name, type FROM pragma_table_info('metadata_cache') ORDER BY cid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for rfc in [
        ("cache_key", "TEXT"),
        ("source", "TEXT"),
        ("data", "JSON"),
        ("expires_at", "TIMESTAMP"),
        ("created_at", "TIMESTAMP"),
    ] {
        assert!(
            columns.iter().any(|(n, t)| n == rfc.0 && t == rfc.1),
            "missing RFC column {rfc:?} in {columns:?}"
        );
    }
    let (key, source, title, author): (String, String, String, String) = conn
        .query_row(
            "SELECT cache_key, source, json_extract(data, '$.title'), json_extract(data, '$.authors[0]') FROM metadata_cache",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(key, "audnexus:book:asin=B002V1A0WE");
    assert_eq!(source, "audnexus:book");
    assert_eq!(title, "Dune");
    assert_eq!(author, "Frank Herbert");

    // The sqlite3 shell sees the same: tests/environment.rs.
}

#[tokio::test]
async fn numbers_survive_the_json_columns_numeric_affinity() {
    let dir = tempfile::tempdir().unwrap();
    let cache = json_cache(Arc::new(open(&dir.path().join("c.db")).await));
    let k = Key::bare("n");
    cache.set(&k, 1.50f64, Ttl::TierDefault).await.unwrap();
    cache
        .set(&Key::bare("s"), "1.50".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    let fresh = json_cache(Arc::new(open(&dir.path().join("c.db")).await));
    assert_eq!(fresh.get::<f64>(&k).await.as_deref(), Some(&1.5));
    assert_eq!(
        fresh
            .get::<String>(&Key::bare("s"))
            .await
            .as_deref()
            .map(String::as_str),
        Some("1.50")
    );
    assert_eq!(fresh.stats().layers[0].decode_failures, 0);
}

#[tokio::test]
async fn entries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.db");
    {
        let cache = TieredCache::builder().tier(open(&path).await).build();
        cache
            .set(&book_key("A"), dune(), Ttl::TierDefault)
            .await
            .unwrap();
    }
    let cache = TieredCache::builder().tier(open(&path).await).build();
    assert_eq!(
        cache.get::<Book>(&book_key("A")).await.as_deref(),
        Some(&dune())
    );
}

#[cfg(unix)]
#[tokio::test]
async fn directory_is_0700_and_files_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("nested/cache");
    let path = nested.join("metadata.db");
    let tier = open(&path).await;
    tier.set(
        &book_key("P"),
        tierstack_conformance::cases::entry(&book_key("P"), &json!(1), None),
    )
    .await
    .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(&path), 0o600);
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        assert!(side.exists(), "{} missing", side.display());
        assert_eq!(mode(&side), 0o600, "{}", side.display());
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlink_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.db");
    let link = dir.path().join("link.db");
    drop(open(&real).await);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = SqliteTier::open(&SqliteConfig::new(&link), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("link.db") && err.to_string().contains("symbolic link"),
        "{err}"
    );
}

#[tokio::test]
async fn a_foreign_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let bytes: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let err = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("notes.db") && err.to_string().contains("not a SQLite database"),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "foreign file modified"
    );
    assert!(!dir.path().join("notes.db-wal").exists());
}

#[tokio::test]
async fn another_applications_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'ada');")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("another application") && err.to_string().contains("users"),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "database of another application modified"
    );
}

#[tokio::test]
async fn tierstack_tables_beside_the_cache_are_accepted_and_any_other_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let cache = TieredCache::builder().tier(open(&path).await).build();
    cache
        .set(&book_key("L"), dune(), Ttl::TierDefault)
        .await
        .unwrap();
    drop(cache);
    // Coordination state lives in tierstack_* tables: the open created
    // this release's, and one a later release may add is accepted too.
    let conn = Connection::open(&path).unwrap();
    let reserved: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'tierstack%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        reserved,
        ["tierstack_circuits", "tierstack_leases", "tierstack_rates"]
    );
    conn.execute_batch("CREATE TABLE tierstack_later (name TEXT PRIMARY KEY, until INTEGER);")
        .unwrap();
    drop(conn);
    let cache = TieredCache::builder().tier(open(&path).await).build();
    assert_eq!(
        cache.get::<Book>(&book_key("L")).await.as_deref(),
        Some(&dune())
    );
    drop(cache);
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE notes (id INTEGER);")
        .unwrap();
    let err = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("another application") && err.to_string().contains("notes"),
        "{err}"
    );
    assert!(!err.to_string().contains("tierstack_"), "{err}");
}

#[tokio::test]
async fn a_newer_table_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.db");
    drop(open(&path).await);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer tierstack"), "{err}");
}

#[tokio::test]
async fn an_unwritable_location_is_a_clear_error_naming_the_path() {
    // /proc refuses new files even to root.
    let path = PathBuf::from("/proc/tierstack-test/cache.db");
    let err = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/proc/tierstack-test"), "{err}");
    assert!(
        matches!(err.kind(), ErrorKind::PermissionDenied | ErrorKind::Io),
        "{err:?}"
    );

    // A read-only directory (as an unprivileged user when run as root):
    // tests/environment.rs.
}

#[tokio::test]
async fn the_rfc_table_of_a_prototype_is_migrated_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(RFC_TABLE).unwrap();
        conn.execute(
            "INSERT INTO metadata_cache (cache_key, source, data, expires_at) VALUES (?1, ?2, ?3, datetime('now', '+7 days'))",
            ("audnexus:book:asin=B002V1A0WE", "audnexus:book", r#"{"asin":"B002V1A0WE","title":"Dune","authors":["Frank Herbert"]}"#),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO metadata_cache (cache_key, source, data, expires_at) VALUES (?1, ?2, ?3, ?4)",
            ("pathinfo:path=/audiobooks/fantasy/dune", "pathinfo", r#"{"series":"Dune"}"#, 4_102_444_800i64),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO metadata_cache (cache_key, source, data, expires_at) VALUES (?1, ?2, ?3, ?4)",
            ("not a key", "x", "{}", "whenever"),
        )
        .unwrap();
    }
    let tier = Arc::new(open(&path).await);
    let cache = TieredCache::builder().shared_tier(tier.clone()).build();
    assert_eq!(
        cache.get::<Book>(&book_key("B002V1A0WE")).await.as_deref(),
        Some(&dune())
    );
    let path_info = cache
        .get::<Value>(&Key::new(
            "pathinfo",
            [("path", "/audiobooks/fantasy/dune")],
        ))
        .await
        .expect("second row carried over");
    assert_eq!(*path_info, json!({"series": "Dune"}));
    assert_eq!(
        tier.size().await.unwrap().entries,
        2,
        "the unreadable row was skipped"
    );
    let version: i64 = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
}

/// With a sync to disk per commit every write goes through the writer
/// thread, so the grouping is what is measured. (With the default, a write
/// that finds the writer idle commits in place on its own thread, so how
/// many transactions 1,000 sets take depends on how many arrive at once:
/// between a handful and a few hundred on a loaded 2-core machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sets_commit_in_a_handful_of_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        SqliteConfig::new(dir.path().join("c.db")).synchronous(tierstack_sqlite::Synchronous::Full);
    let tier = Arc::new(SqliteTier::open(&config, 1).await.unwrap());
    let cache = TieredCache::builder().shared_tier(tier.clone()).build();
    let before = tier.transactions();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .set(&book_key(&i.to_string()), i, Ttl::TierDefault)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let transactions = tier.transactions() - before;
    println!("1000 concurrent sets: {transactions} transactions");
    assert!(
        transactions <= 100,
        "{transactions} transactions for 1000 sets"
    );
    assert_eq!(tier.size().await.unwrap().entries, 1000);
    for i in [0, 499, 999] {
        assert_eq!(
            cache.get::<i32>(&book_key(&i.to_string())).await.as_deref(),
            Some(&i)
        );
    }
}

fn file_bytes(path: &Path) -> u64 {
    let conn = Connection::open(path).unwrap();
    let pages: i64 = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    let size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    u64::try_from(pages * size).unwrap()
}

#[tokio::test]
async fn the_byte_cap_evicts_least_recently_used_and_keeps_the_file_within_ten_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capped.db");
    let cap = 1024 * 1024;
    let tier = Arc::new(
        SqliteTier::open(&SqliteConfig::new(&path).max_size(cap), 1)
            .await
            .unwrap(),
    );
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier.clone())
        .build();
    // 8 MiB of values that do not compress, in batches so the cap is
    // enforced as the file grows.
    let keep = book_key("keep");
    cache
        .set(&keep, "k".repeat(4000), Ttl::TierDefault)
        .await
        .unwrap();
    for i in 0..2000u32 {
        let value: String = (0..4096u32)
            .map(|j| {
                char::from(b'a' + (i.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) % 26) as u8)
            })
            .collect();
        cache
            .set(&book_key(&i.to_string()), value, Ttl::TierDefault)
            .await
            .unwrap();
        if i % 50 == 0 {
            // Reading `keep` often makes it recently used.
            assert!(
                cache.get::<String>(&keep).await.is_some(),
                "keep evicted at {i}"
            );
        }
    }
    let size = file_bytes(&path);
    println!("file {size} bytes for a cap of {cap}");
    assert!(size <= cap + cap / 10, "file is {size} bytes, cap {cap}");
    assert!(tier.stats().evictions > 1000, "{:?}", tier.stats());
    assert!(
        cache.get::<String>(&book_key("1999")).await.is_some(),
        "newest entry evicted"
    );
}

/// Which of `keys` have a row, read with a connection of the test's own so
/// that looking does not make a row recently used.
fn rows_of(path: &Path, keys: &[Key]) -> Vec<Key> {
    let conn = Connection::open(path).unwrap();
    keys.iter()
        .filter(|k| {
            conn.query_row(
                "SELECT count(*) FROM metadata_cache WHERE cache_key = ?1",
                [k.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                == 1
        })
        .cloned()
        .collect()
}

// Fresh rows, one by one, until `until` holds of the tier's counters.
async fn fill(
    cache: &TieredCache,
    tier: &SqliteTier,
    fresh: &mut Vec<Key>,
    until: impl Fn(&tierstack::TierStats) -> bool,
) {
    while !until(&tier.stats()) {
        let n = fresh.len();
        assert!(n < 1000, "the cap was never enforced");
        let k = book_key(&format!("fresh{n}"));
        cache
            .set(&k, format!("{n:05}{}", "v".repeat(3000)), Ttl::TierDefault)
            .await
            .unwrap();
        fresh.push(k);
    }
}

/// Past the cap, dead rows go first (all of them, counted as expirations),
/// then the least recently read or written, down to 90% of the cap.
#[tokio::test]
async fn the_byte_cap_drops_dead_rows_first_then_the_least_recently_used_down_to_90_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capped.db");
    let cap: u64 = 512 * 1024;
    let tier = Arc::new(
        SqliteTier::open(&SqliteConfig::new(&path).max_size(cap), 1)
            .await
            .unwrap(),
    );
    let cache = TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier.clone())
        .build();
    // About 3 KB a row: one page each.
    let value = |i: usize| format!("{i:05}{}", "v".repeat(3000));
    let keys = |group: &str, n: usize| -> Vec<Key> {
        (0..n).map(|i| book_key(&format!("{group}{i}"))).collect()
    };
    let (unread, read, dead) = (keys("unread", 15), keys("read", 15), keys("dead", 40));
    for (i, k) in unread.iter().chain(&read).enumerate() {
        cache.set(k, value(i), Ttl::TierDefault).await.unwrap();
    }
    for (i, k) in dead.iter().enumerate() {
        cache
            .set(k, value(i), Duration::from_millis(100))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Reading makes these recently used; the dead ones, written later,
    // are still the first to go.
    for k in &read {
        assert!(cache.get::<String>(k).await.is_some());
    }
    assert_eq!(tier.stats().evictions + tier.stats().expirations, 0);

    let mut fresh = Vec::new();
    fill(&cache, &tier, &mut fresh, |s| {
        s.expirations + s.evictions > 0
    })
    .await;
    let first = tier.stats();
    assert_eq!(
        (first.expirations, first.evictions),
        (40, 0),
        "dropping the dead rows was enough: {first:?}"
    );
    assert!(rows_of(&path, &dead).is_empty());
    assert_eq!(
        rows_of(&path, &unread).len() + rows_of(&path, &read).len(),
        30
    );

    fill(&cache, &tier, &mut fresh, |s| s.evictions > 0).await;
    let evicted = tier.stats().evictions as usize;
    let size = file_bytes(&path);
    assert!(
        size <= cap / 10 * 9,
        "file is {size} bytes after eviction, cap {cap}"
    );
    let (unread_left, read_left) = (rows_of(&path, &unread), rows_of(&path, &read));
    println!(
        "{evicted} evicted; {} unread and {} read rows left; file {size} bytes, cap {cap}",
        unread_left.len(),
        read_left.len()
    );
    assert_eq!(
        rows_of(&path, &fresh).len(),
        fresh.len(),
        "a recently written row went before older ones"
    );
    assert_eq!(
        unread_left.len() + read_left.len(),
        30 - evicted,
        "only old rows went"
    );
    assert!(
        unread_left.is_empty() || read_left.len() == read.len(),
        "a recently read row went before an unread one: {} unread and {} read rows left",
        unread_left.len(),
        read_left.len()
    );
}

/// The cap is not read after every commit any more; rows another writer
/// added must still be trimmed within the documented 64 commits.
#[tokio::test]
async fn the_byte_cap_trims_what_another_writer_added_within_64_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let cap = 256 * 1024;
    let capped = SqliteTier::open(&SqliteConfig::new(&path).max_size(cap), 1)
        .await
        .unwrap();
    let uncapped = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap();
    let small = |i: u32| {
        tierstack::Entry::from_body(
            tierstack::EntryMeta::new(
                &book_key(&format!("small{i}")),
                1,
                tierstack::Timestamp::now(),
            ),
            tierstack::Codec::Json,
            tierstack::CompressionKind::None,
            0,
            1,
            tierstack::Bytes::from_static(b"1"),
        )
    };
    // One small write, so that the capped tier has measured the file.
    capped.set(&book_key("small0"), small(0)).await.unwrap();
    // 1 MiB written by the other writer, which has no cap.
    let big: Vec<(Key, tierstack::Entry)> = (0..256u32)
        .map(|i| {
            let key = book_key(&format!("big{i}"));
            let body: Vec<u8> = (0..4096u32)
                .map(|j| b'a' + ((i * 7 + j * 13) % 26) as u8)
                .collect();
            let entry = tierstack::Entry::from_body(
                tierstack::EntryMeta::new(&key, 1, tierstack::Timestamp::now()),
                tierstack::Codec::Json,
                tierstack::CompressionKind::None,
                0,
                4096,
                tierstack::Bytes::from(body),
            );
            (key, entry)
        })
        .collect();
    uncapped.set_many(big).await.unwrap();
    assert!(file_bytes(&path) > cap * 3, "{} bytes", file_bytes(&path));
    for i in 1..=65u32 {
        capped
            .set(&book_key(&format!("small{i}")), small(i))
            .await
            .unwrap();
    }
    assert!(capped.stats().evictions > 0, "{:?}", capped.stats());
    let size = file_bytes(&path);
    assert!(size <= cap + cap / 10, "file is {size} bytes, cap {cap}");
}

#[tokio::test]
async fn purge_removes_dead_rows_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tier = Arc::new(open(&dir.path().join("c.db")).await);
    let cache = TieredCache::builder().shared_tier(tier.clone()).build();
    for i in 0..20 {
        cache
            .set(
                &book_key(&format!("short{i}")),
                i,
                Duration::from_millis(50),
            )
            .await
            .unwrap();
    }
    cache
        .set(&book_key("long"), 1, Ttl::TierDefault)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tier.purge().await.unwrap(), 20);
    assert_eq!(tier.size().await.unwrap().entries, 1);
    assert_eq!(tier.stats().expirations, 20);
}

#[tokio::test]
async fn a_damaged_row_is_a_counted_miss_and_a_refetch_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let cache = TieredCache::builder().tier(open(&path).await).build();
    let k = book_key("D");
    cache.set(&k, dune(), Ttl::TierDefault).await.unwrap();
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE metadata_cache SET header = zeroblob(60)", [])
        .unwrap();
    assert!(cache.get::<Book>(&k).await.is_none());
    assert_eq!(cache.stats().layers[0].decode_failures, 1);
    let fetched = cache
        .get_or_fetch(&k, Ttl::TierDefault, |_| async {
            Ok::<_, std::io::Error>(dune())
        })
        .await
        .unwrap();
    assert_eq!(*fetched, dune());
    assert_eq!(cache.get::<Book>(&k).await.as_deref(), Some(&dune()));
}

#[tokio::test]
async fn a_deleted_wal_or_a_truncated_file_never_yields_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let cache = TieredCache::builder().tier(open(&path).await).build();
        for i in 0..200 {
            cache
                .set(
                    &book_key(&i.to_string()),
                    format!("value {i}"),
                    Ttl::TierDefault,
                )
                .await
                .unwrap();
        }
    }
    // The WAL holds recent commits; deleting it loses them, nothing else.
    let _ = std::fs::remove_file(format!("{}-wal", path.display()));
    let _ = std::fs::remove_file(format!("{}-shm", path.display()));
    match SqliteTier::open(&SqliteConfig::new(&path), 1).await {
        Ok(tier) => {
            let cache = TieredCache::builder().tier(tier).build();
            for i in 0..200 {
                if let Some(v) = cache.get::<String>(&book_key(&i.to_string())).await {
                    assert_eq!(*v, format!("value {i}"));
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("c.db"), "{e}"),
    }
    // Cut the file in half: opening or reading fails with an error naming the
    // file, or reads miss; never a wrong value, never a panic.
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    match SqliteTier::open(&SqliteConfig::new(&path), 1).await {
        Ok(tier) => {
            let l1 = MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap();
            let cache = TieredCache::builder().tier(l1).tier(tier).build();
            for i in 0..200 {
                if let Some(v) = cache.get::<String>(&book_key(&i.to_string())).await {
                    assert_eq!(*v, format!("value {i}"));
                }
            }
            // The stack still caches through its working tier.
            let v = cache
                .get_or_fetch(&book_key("new"), Ttl::TierDefault, |_| async {
                    Ok::<_, std::io::Error>(7u8)
                })
                .await
                .unwrap();
            assert_eq!(*v, 7);
        }
        Err(e) => assert!(e.to_string().contains("c.db"), "{e}"),
    }
}

#[tokio::test]
async fn a_file_replaced_by_random_bytes_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(open(&path).await);
    let _ = std::fs::remove_file(format!("{}-wal", path.display()));
    let _ = std::fs::remove_file(format!("{}-shm", path.display()));
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 7) as u8)
        .collect();
    std::fs::write(&path, &noise).unwrap();
    let err = SqliteTier::open(&SqliteConfig::new(&path), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("c.db"), "{err}");
    assert!(std::fs::read(&path).unwrap() == noise, "file modified");
}

#[tokio::test]
async fn schema_versions_share_one_file_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let v1 = TieredCache::builder()
        .schema_version(1)
        .tier(
            SqliteTier::open(&SqliteConfig::new(&path), 1)
                .await
                .unwrap(),
        )
        .build();
    let v2 = TieredCache::builder()
        .schema_version(2)
        .tier(
            SqliteTier::open(&SqliteConfig::new(&path), 2)
                .await
                .unwrap(),
        )
        .build();
    let k = book_key("S");
    v1.set(&k, "old shape".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    v2.set(&k, 42u32, Ttl::TierDefault).await.unwrap();
    assert_eq!(
        v1.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("old shape")
    );
    assert_eq!(v2.get::<u32>(&k).await.as_deref(), Some(&42));
}

/// A set commits on the caller's thread when the writer is idle, but never
/// waits there for another process's lock: it hands over to the writer
/// thread, the runtime goes on, and the set lands once the lock is free.
#[tokio::test(flavor = "current_thread")]
async fn a_set_blocked_by_another_process_waits_off_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let tier = Arc::new(open(&path).await);
    let cache = json_cache(tier.clone());
    let before = tier.transactions();
    for i in 0..10 {
        cache
            .set(&book_key(&i.to_string()), i, Ttl::TierDefault)
            .await
            .unwrap();
    }
    assert_eq!(tier.transactions() - before, 10, "one commit per set");

    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .set(&book_key("blocked"), 42, Ttl::TierDefault)
                .await
                .unwrap();
        })
    };
    // The runtime has one thread: had the set waited on it for SQLite's
    // busy timeout (5 s), this sleep could not end on time.
    let slept = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        slept.elapsed() < Duration::from_secs(3),
        "the runtime was blocked for {:?}",
        slept.elapsed()
    );
    assert!(
        !writer.is_finished(),
        "the set finished while the lock was held"
    );
    other.execute_batch("COMMIT").unwrap();
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the set lands once the lock is free")
        .unwrap();
    assert_eq!(
        cache.get::<i32>(&book_key("blocked")).await.as_deref(),
        Some(&42)
    );
}

/// A renewal (a revalidation making an entry fresh again) rewrites the
/// row's header columns and leaves `data` alone when the row holds that
/// body; over another body it writes the row whole. Shown by changing
/// `data` behind the tier's back: a renewal keeps the change, a write
/// whole replaces it.
#[tokio::test]
async fn a_renewal_rewrites_the_header_columns_and_not_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("renew.db");
    let tier = open(&path).await;
    let cache = json_cache(Arc::new(open(&path).await));
    let key = book_key("B002V1A0WE");
    cache
        .set(&key, dune(), Duration::from_secs(1))
        .await
        .unwrap();
    let stored = tier.get(&key).await.unwrap().unwrap();
    let raw = Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE metadata_cache SET data = '\"left alone\"' WHERE cache_key = ?1",
        [key.as_str()],
    )
    .unwrap();
    let later = tierstack::Timestamp::now().saturating_add(Duration::from_secs(3600));
    let renewed = stored.with_header(stored.header.with_expiry(later));
    tier.renew(&key, renewed).await.unwrap();
    let (data, expires_ms): (String, i64) = raw
        .query_row(
            "SELECT data, expires_ms FROM metadata_cache WHERE cache_key = ?1",
            [key.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(data, "\"left alone\"", "the data was written again");
    assert_eq!(expires_ms, i64::try_from(later.as_millis()).unwrap());
    // Another body (another checksum): the row is written whole.
    let mut other = dune();
    other.title = "Dune Messiah".into();
    let now = tierstack::Timestamp::now();
    let meta = tierstack::EntryMeta::new(&key, 1, now).expiring(later, later);
    let another = tierstack::Entry::encode(
        &other,
        tierstack::Codec::Json,
        &Compression::None,
        meta,
        tierstack::DecodeLimits::default(),
    )
    .unwrap();
    tier.renew(&key, another).await.unwrap();
    let data: String = raw
        .query_row(
            "SELECT data FROM metadata_cache WHERE cache_key = ?1",
            [key.as_str()],
            |row| row.get(0),
        )
        .unwrap();
    assert!(data.contains("Dune Messiah"), "{data}");
}

//! Export and import: every live entry crosses backends byte for byte, bad
//! lines are counted and skipped, foreign or newer streams are refused.

use std::io::Write as _;
use std::time::Duration;

use tierstack::{
    ExportOptions, ImportOptions, Key, MemoryConfig, RedbConfig, SqliteConfig, TieredCache, Ttl,
};

fn book(i: u32) -> Key {
    Key::new("audnexus:book", [("asin", format!("B{i:09}"))])
}

async fn sqlite_cache(dir: &std::path::Path, schema: u32) -> TieredCache {
    TieredCache::builder()
        .schema_version(schema)
        .tier(
            tierstack::SqliteTier::open(&SqliteConfig::new(dir.join("src.db")), schema)
                .await
                .unwrap(),
        )
        .build()
}

async fn redb_cache(dir: &std::path::Path) -> TieredCache {
    TieredCache::builder()
        .tier(tierstack::MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).unwrap())
        .tier(
            tierstack::RedbTier::open(&RedbConfig::new(dir.join("dst.redb")), 1)
                .await
                .unwrap(),
        )
        .build()
}

/// Every entry of a tier, as bytes, by key.
async fn dump(tier: &dyn tierstack::Tier) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = tier.scan(cursor.take(), 100).await.unwrap();
        out.extend(
            page.entries
                .into_iter()
                .map(|(k, e)| (k.as_str().to_owned(), e.to_vec())),
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn export_then_import_into_another_backend_is_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let source = sqlite_cache(dir.path(), 1).await;
    for i in 0..300 {
        let ttl = match i % 3 {
            0 => Ttl::For(Duration::from_secs(3600)),
            1 => Ttl::For(Duration::from_secs(86_400 * 2)),
            _ => Ttl::TierDefault,
        };
        let value = format!("title {i} {}", "x".repeat((i as usize * 37) % 3000));
        source.set(&book(i), value, ttl).await.unwrap();
    }
    // A cached "not found" travels too.
    let missing = Key::new("audnexus:book", [("asin", "NOPE")]);
    let answer = source
        .get_or_fetch_optional::<String, _, _, std::io::Error>(
            &missing,
            Ttl::TierDefault,
            |_| async { Ok(None) },
        )
        .await
        .unwrap();
    assert!(answer.is_none());
    // An entry that has expired is left out.
    source
        .set(&book(9999), "old".to_owned(), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    for file in ["cache.jsonl", "cache.jsonl.zst"] {
        let path = dir.path().join(file);
        let report = source
            .export_file(&path, &ExportOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(report.exported, 301, "{file}");

        let target_dir = tempfile::tempdir().unwrap();
        let target = redb_cache(target_dir.path()).await;
        let imported = target
            .import_file(&path, ImportOptions::default(), |_| {})
            .await
            .unwrap();
        assert_eq!(imported.imported, 301, "{file}");
        assert_eq!(imported.malformed, 0, "{file}");

        let mut expected = dump(source.tiers().next().unwrap().as_ref()).await;
        expected.retain(|(k, _)| k != book(9999).as_str());
        let got = dump(target.tiers().nth(1).unwrap().as_ref()).await;
        assert_eq!(got.len(), expected.len(), "{file}");
        assert!(got == expected, "{file}: the entries differ");
        assert_eq!(
            target
                .get::<String>(&book(7))
                .await
                .as_deref()
                .map(String::as_str),
            source
                .get::<String>(&book(7))
                .await
                .as_deref()
                .map(String::as_str),
        );
        // The "not found" answer is still one.
        let refetched = target
            .get_or_fetch_optional::<String, _, _, std::io::Error>(
                &missing,
                Ttl::TierDefault,
                |_| async { panic!("the imported negative entry answers") },
            )
            .await
            .unwrap();
        assert!(refetched.is_none());
    }
}

#[tokio::test]
async fn a_source_filter_exports_only_that_source() {
    let dir = tempfile::tempdir().unwrap();
    let cache = sqlite_cache(dir.path(), 1).await;
    cache.set(&book(1), 1_u32, Ttl::TierDefault).await.unwrap();
    cache
        .set(
            &Key::new("pathinfo", [("path", "/a/b")]),
            2_u32,
            Ttl::TierDefault,
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let report = cache
        .export(
            &mut out,
            &ExportOptions::default().source("pathinfo"),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.exported, 1);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.lines().nth(1).unwrap().contains("pathinfo:path=/a/b"));
}

/// An export stream with one good record, for damaging.
async fn good_stream(dir: &std::path::Path) -> (String, String) {
    let cache = sqlite_cache(dir, 1).await;
    cache
        .set(&book(1), "kept".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();
    let mut out = Vec::new();
    cache
        .export(&mut out, &ExportOptions::default(), |_| {})
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap().to_owned(),
        lines.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn malformed_lines_are_counted_and_the_import_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (header, good) = good_stream(dir.path()).await;
    let record: serde_json::Value = serde_json::from_str(&good).unwrap();
    let entry = record["entry"].as_str().unwrap();
    // Flip one character of the base64 body: the checksum catches it.
    let mut damaged_entry: Vec<char> = entry.chars().collect();
    let at = damaged_entry.len() - 6;
    damaged_entry[at] = if damaged_entry[at] == 'A' { 'B' } else { 'A' };
    let damaged_entry: String = damaged_entry.into_iter().collect();
    let damaged = good.replace(entry, &damaged_entry);
    let truncated = good.replace(entry, &entry[..40]);
    let bad_key = good.replace("audnexus:book:asin", "no separator here %zz");
    let lines = [
        header.as_str(),
        "this is not json",
        "{\"key\": \"a:b\"}",
        "{\"key\":\"a:b=c\",\"expires_at\":null,\"entry\":\"***not base64***\"}",
        damaged.as_str(),
        truncated.as_str(),
        bad_key.as_str(),
        "",
        good.as_str(),
    ];
    let stream = lines.join("\n");

    let target_dir = tempfile::tempdir().unwrap();
    let target = redb_cache(target_dir.path()).await;
    let report = target
        .import(stream.as_bytes(), ImportOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.imported, 1, "{report:?}");
    assert_eq!(report.malformed, 6, "{report:?}");
    assert_eq!(report.problems.len(), 6);
    assert!(
        report.problems[0].starts_with("line 2:"),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems.iter().any(|p| p.contains("base64")),
        "{:?}",
        report.problems
    );
    assert!(report.problems.iter().any(|p| p.contains("damaged entry")));
    assert_eq!(
        target
            .get::<String>(&book(1))
            .await
            .as_deref()
            .map(String::as_str),
        Some("kept")
    );
}

#[tokio::test]
async fn foreign_newer_or_other_schema_streams_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let (header, good) = good_stream(dir.path()).await;
    let newer = header.replace("\"version\":2", "\"version\":3");
    let other_schema = header.replace("\"schema_version\":1", "\"schema_version\":2");
    let foreign = header.replace("tierstack-export", "something-else");
    let cases = [
        (newer, "newer tierstack"),
        (other_schema, "schema version 2"),
        (foreign, "not a tierstack export"),
        ("{\"no\": \"header\"}".to_owned(), "not a tierstack export"),
        (String::new(), "not a tierstack export"),
    ];
    for (first, expected) in cases {
        let stream = format!("{first}\n{good}\n");
        let target_dir = tempfile::tempdir().unwrap();
        let target = redb_cache(target_dir.path()).await;
        let error = target
            .import(stream.as_bytes(), ImportOptions::default(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(error.kind(), tierstack::ErrorKind::Config);
        assert!(error.to_string().contains(expected), "{error}");
        let held = target.tiers().nth(1).unwrap().size().await.unwrap();
        assert_eq!(held.entries, 0, "nothing written for {expected}");
    }
}

#[tokio::test]
async fn skip_fresh_leaves_fresh_keys_alone_and_expired_records_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let source = sqlite_cache(dir.path(), 1).await;
    for i in 0..10 {
        source
            .set(&book(i), format!("exported {i}"), Ttl::TierDefault)
            .await
            .unwrap();
    }
    let mut stream = Vec::new();
    source
        .export(&mut stream, &ExportOptions::default(), |_| {})
        .await
        .unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = redb_cache(target_dir.path()).await;
    for i in 0..4 {
        target
            .set(&book(i), format!("local {i}"), Ttl::TierDefault)
            .await
            .unwrap();
    }
    let report = target
        .import(
            stream.as_slice(),
            ImportOptions::default().skip_fresh(true),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((report.imported, report.already_fresh), (6, 4));
    assert_eq!(
        target
            .get::<String>(&book(2))
            .await
            .as_deref()
            .map(String::as_str),
        Some("local 2")
    );
    assert_eq!(
        target
            .get::<String>(&book(8))
            .await
            .as_deref()
            .map(String::as_str),
        Some("exported 8")
    );

    // A record that expired between export and import is skipped.
    let short_dir = tempfile::tempdir().unwrap();
    let short = sqlite_cache(short_dir.path(), 1).await;
    short
        .set(&book(1), "brief".to_owned(), Duration::from_millis(50))
        .await
        .unwrap();
    let mut stream = Vec::new();
    short
        .export(&mut stream, &ExportOptions::default(), |_| {})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = redb_cache(empty_dir.path()).await;
    let report = empty
        .import(stream.as_slice(), ImportOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((report.imported, report.expired), (0, 1));
}

#[tokio::test]
async fn an_interrupted_export_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = sqlite_cache(dir.path(), 1).await;
    cache.set(&book(1), 1_u32, Ttl::TierDefault).await.unwrap();
    // A directory where the file should go: the final rename fails.
    let path = dir.path().join("taken");
    std::fs::create_dir(&path).unwrap();
    std::fs::File::create(path.join("inside"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert!(
        cache
            .export_file(&path, &ExportOptions::default(), |_| {})
            .await
            .is_err()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn export_file_replaces_an_export_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cache = sqlite_cache(dir.path(), 1).await;
    cache.set(&book(1), 1_u32, Ttl::TierDefault).await.unwrap();
    let options = ExportOptions::default();
    // The cache's own database, a redb file, someone's notes, a directory.
    let db = dir.path().join("src.db");
    let redb = dir.path().join("dst.redb");
    drop(redb_cache(dir.path()).await);
    let notes = dir.path().join("notes.jsonl");
    std::fs::write(&notes, "mine\n").unwrap();
    let sub = dir.path().join("sub.jsonl");
    std::fs::create_dir(&sub).unwrap();
    for target in [&db, &redb, &notes, &sub] {
        let before = std::fs::read(target).ok();
        let error = cache
            .export_file(target, &options, |_| {})
            .await
            .unwrap_err();
        assert_eq!(error.kind(), tierstack::ErrorKind::Config, "{error}");
        assert!(error.to_string().contains("refusing"), "{error}");
        assert_eq!(std::fs::read(target).ok(), before, "{}", target.display());
    }
    // An earlier export, plain or compressed, is replaced.
    for name in ["e.jsonl", "e.jsonl.zst"] {
        let path = dir.path().join(name);
        for _ in 0..2 {
            let report = cache.export_file(&path, &options, |_| {}).await.unwrap();
            assert_eq!(report.exported, 1);
        }
    }
    // The database still holds its entry.
    assert_eq!(cache.get::<u32>(&book(1)).await.as_deref(), Some(&1));
}

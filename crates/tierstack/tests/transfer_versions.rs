//! Export streams across entry formats: a version-1 stream (format-1
//! entries, as earlier releases wrote them) is upgraded record by record
//! under each record's key; an entry bound to another key than its record's
//! is a malformed line, never stored.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tierstack::{
    Bytes, Codec, CompressionKind, Entry, EntryMeta, ImportOptions, Key, MemoryConfig, MemoryTier,
    TieredCache, Timestamp,
};

fn book(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

fn cache() -> TieredCache {
    TieredCache::builder()
        .codec(Codec::Json)
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap())
        .build()
}

fn json_entry(key: &Key, body: &str) -> Entry {
    let now = Timestamp::now();
    let meta = EntryMeta::new(key, 1, now).expiring(
        now.saturating_add(Duration::from_secs(3600)),
        Timestamp::NEVER,
    );
    Entry::from_body(
        meta,
        Codec::Json,
        CompressionKind::None,
        0,
        body.len() as u32,
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn record(key: &Key, bytes: &[u8]) -> String {
    serde_json::json!({"key": key.as_str(), "expires_at": null, "entry": BASE64.encode(bytes)})
        .to_string()
}

#[tokio::test]
async fn a_version_1_stream_is_upgraded_under_each_records_key() {
    let dune = book("B1");
    let missing = book("B2");
    let entry = json_entry(&dune, r#"{"title":"Dune"}"#);
    let old = tierstack::envelope::v1::encode_for_tests(&entry.header, &entry.body);
    let mut negative =
        Entry::negative(EntryMeta::new(&missing, 1, Timestamp::now()), Codec::Json).header;
    negative.raw_len = 0;
    let old_negative = tierstack::envelope::v1::encode_for_tests(&negative, b"");
    let stream = format!(
        "{{\"format\":\"tierstack-export\",\"version\":1,\"schema_version\":1}}\n{}\n{}\n",
        record(&dune, &old),
        record(&missing, &old_negative)
    );
    let cache = cache();
    let report = cache
        .import(stream.as_bytes(), ImportOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((report.imported, report.malformed), (2, 0), "{report:?}");
    assert_eq!(
        cache.get::<serde_json::Value>(&dune).await.as_deref(),
        Some(&serde_json::json!({"title": "Dune"}))
    );
    let stored = cache.inspect(&missing).await;
    let header = stored[0]
        .1
        .as_ref()
        .unwrap()
        .expect("negative entry stored");
    assert!(header.is_negative() && header.belongs_to(&missing));
}

#[tokio::test]
async fn an_entry_under_another_records_key_is_malformed_and_not_stored() {
    let dune = book("B1");
    let other = book("B9");
    let entry = json_entry(&dune, r#""Dune""#);
    let stream = format!(
        "{{\"format\":\"tierstack-export\",\"version\":2,\"schema_version\":1}}\n{}\n{}\n",
        record(&other, &entry.to_vec()),
        record(&dune, &entry.to_vec()),
    );
    let cache = cache();
    let report = cache
        .import(stream.as_bytes(), ImportOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((report.imported, report.malformed), (1, 1), "{report:?}");
    assert!(report.problems[0].contains("another key"), "{report:?}");
    assert!(cache.get::<String>(&other).await.is_none());
    assert_eq!(
        cache
            .get::<String>(&dune)
            .await
            .as_deref()
            .map(String::as_str),
        Some("Dune")
    );
}

//! The conformance cases. Each takes a [`Harness`] with an empty tier and
//! panics (fails the test) when the tier misbehaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierstack::{
    Bytes, ClearScope, Codec, Compression, DecodeLimits, Dictionaries, Entry, EntryMeta,
    Extensions, Health, Key, MemoryConfig, MemoryTier, Readiness, SetReadiness, Tier, TieredCache,
    Timestamp, Ttl,
};

use crate::Harness;

const SOURCE: &str = "conformance";
/// The cap of [`a_capped_tier_stays_within_its_cap`]: 64 KiB is the SQLite
/// tier's least, and a quarter of what the case writes.
const CAP: u64 = 256 * 1024;
const SCHEMA: u32 = 1;

fn key(name: &str) -> Key {
    Key::new(SOURCE, [("id", name)])
}

fn meta_for(key: &Key, expires_in: Option<Duration>, stale_for: Duration) -> EntryMeta {
    let now = Timestamp::now();
    let expires_at = expires_in.map_or(Timestamp::NEVER, |d| now.saturating_add(d));
    let stale_until = if expires_at.is_never() {
        expires_at
    } else {
        expires_at.saturating_add(stale_for)
    };
    EntryMeta::new(key, SCHEMA, now).expiring(expires_at, stale_until)
}

/// An entry for `key` (bound to it, as the cache writes them) holding
/// `value` as JSON, expiring in `ttl` (never if `None`).
pub fn entry(key: &Key, value: &Value, ttl: Option<Duration>) -> Entry {
    entry_with_meta(value, meta_for(key, ttl, Duration::ZERO))
}

fn entry_with_meta(value: &Value, meta: EntryMeta) -> Entry {
    Entry::encode(
        value,
        Codec::Json,
        &Compression::None,
        meta,
        DecodeLimits::default(),
    )
    .unwrap()
}

/// An entry whose expiry is already past but whose stale window is open.
fn expired_but_stale(key: &Key, value: &Value) -> Entry {
    let now = Timestamp::now().as_millis();
    let m = meta_for(key, None, Duration::ZERO).expiring(
        Timestamp::from_millis(now - 1_000),
        Timestamp::from_millis(now + 60_000),
    );
    entry_with_meta(value, m)
}

fn value_of(entry: &Entry) -> Value {
    entry
        .decode_value(DecodeLimits::default(), &Dictionaries::default())
        .expect("stored entry decodes")
}

async fn read(tier: &dyn Tier, key: &Key) -> Option<Value> {
    tier.get(key)
        .await
        .expect("get works")
        .map(|e| value_of(&e))
}

/// The decoded JSON value of `entry`.
pub(crate) fn json_of(entry: &Entry) -> Result<Value, String> {
    entry
        .decode_value(DecodeLimits::default(), &Dictionaries::default())
        .map_err(|e| e.to_string())
}

/// The key the first process writes in
/// [`a_second_process_sees_a_write_and_writes_back`].
pub(crate) fn written_by_first_process() -> Key {
    key("written-by-the-first-process")
}

/// The key the second process writes back.
pub(crate) fn written_by_second_process() -> Key {
    key("written-by-the-second-process")
}

/// Panics unless the tier declares the capability a gated case proves:
/// run directly (not through the runner, which skips it), a case must not
/// pass on a tier it does not apply to.
fn require(h: &Harness, capability: &str, declared: bool) {
    assert!(
        declared,
        "{} does not declare `{capability}`: this case does not apply to it",
        h.tier.name()
    );
}

fn cache_over(tier: Arc<dyn Tier>, l1: Option<MemoryTier>) -> TieredCache {
    let mut builder = TieredCache::builder()
        .schema_version(SCHEMA)
        .compression(Compression::None);
    if let Some(l1) = l1 {
        builder = builder.tier(l1);
    }
    builder.shared_tier(tier).build()
}

/// Reading a key that was never written gives `None`.
pub async fn get_of_missing_key_is_none(h: Harness) {
    assert!(h.tier.get(&key("missing")).await.unwrap().is_none());
}

/// What was set is what is read: same header, same body.
pub async fn set_then_get_returns_the_entry(h: Harness) {
    let e = entry(
        &key("a"),
        &json!({"title": "Dune", "year": 1965}),
        Some(Duration::from_secs(60)),
    );
    h.tier.set(&key("a"), e.clone()).await.unwrap();
    let got = h.tier.get(&key("a")).await.unwrap().expect("present");
    assert_eq!(got.header, e.header);
    assert_eq!(got.body, e.body);
    assert_eq!(value_of(&got), json!({"title": "Dune", "year": 1965}));
}

/// A renewal (what a revalidation writes: the stored body under a new
/// header and extension area) replaces the header and extensions and keeps
/// the body; over another body, or for a key not held, it stores the entry
/// whole.
pub async fn renew_replaces_the_header_and_keeps_the_body(h: Harness) {
    let k = key("a");
    let old = entry(&k, &json!({"v": 1}), Some(Duration::from_secs(1)));
    h.tier.set(&k, old.clone()).await.unwrap();
    let later = Timestamp::now().saturating_add(Duration::from_secs(600));
    let extensions = old.extensions.with(Extensions::ETAG, b"\"v1\"").unwrap();
    let renewed = old
        .with_header(old.header.with_expiry(later))
        .with_extensions(extensions);
    h.tier.renew(&k, renewed.clone()).await.unwrap();
    let got = h.tier.get(&k).await.unwrap().expect("present");
    assert_eq!(got.header, renewed.header);
    assert_eq!(got.extensions.etag(), Some(&b"\"v1\""[..]));
    assert_eq!(value_of(&got), json!({"v": 1}));
    let other = entry(&k, &json!({"v": 2}), Some(Duration::from_secs(60)));
    h.tier.renew(&k, other).await.unwrap();
    assert_eq!(read(&*h.tier, &k).await, Some(json!({"v": 2})));
    let b = key("b");
    h.tier.renew(&b, entry(&b, &json!(3), None)).await.unwrap();
    assert_eq!(read(&*h.tier, &b).await, Some(json!(3)));
}

/// A second set replaces the first.
pub async fn set_overwrites_previous_value(h: Harness) {
    h.tier
        .set(&key("a"), entry(&key("a"), &json!(1), None))
        .await
        .unwrap();
    h.tier
        .set(&key("a"), entry(&key("a"), &json!(2), None))
        .await
        .unwrap();
    assert_eq!(read(&*h.tier, &key("a")).await, Some(json!(2)));
}

/// Delete removes the entry and reports that it was there.
pub async fn delete_removes_the_entry(h: Harness) {
    h.tier
        .set(&key("a"), entry(&key("a"), &json!(1), None))
        .await
        .unwrap();
    h.tier
        .set(&key("b"), entry(&key("b"), &json!(2), None))
        .await
        .unwrap();
    assert!(h.tier.delete(&key("a")).await.unwrap());
    assert_eq!(read(&*h.tier, &key("a")).await, None);
    assert_eq!(read(&*h.tier, &key("b")).await, Some(json!(2)));
}

/// Deleting a missing key is not an error.
pub async fn delete_of_missing_key_returns_false(h: Harness) {
    assert!(!h.tier.delete(&key("never")).await.unwrap());
}

/// A zero-length body is stored and returned as such.
pub async fn empty_value_round_trips(h: Harness) {
    let e = Entry::from_body(
        meta_for(&key("empty"), None, Duration::ZERO),
        Codec::Json,
        tierstack::CompressionKind::None,
        0,
        0,
        Bytes::new(),
    );
    h.tier.set(&key("empty"), e.clone()).await.unwrap();
    let got = h.tier.get(&key("empty")).await.unwrap().expect("present");
    assert!(got.body.is_empty());
    assert_eq!(got.header, e.header);
}

/// A 1 MiB value is stored and returned intact.
pub async fn one_mib_value_round_trips(h: Harness) {
    let big: String = (0..1024 * 1024)
        .map(|i: u32| char::from(b'a' + (i % 26) as u8))
        .collect();
    h.tier
        .set(&key("big"), entry(&key("big"), &json!(big), None))
        .await
        .unwrap();
    assert_eq!(read(&*h.tier, &key("big")).await, Some(json!(big)));
}

/// Once the stale window has ended, the tier no longer returns the entry.
pub async fn entry_past_its_stale_window_is_not_returned(h: Harness) {
    let e = entry_with_meta(
        &json!("short-lived"),
        meta_for(
            &key("short"),
            Some(Duration::from_millis(150)),
            Duration::from_millis(150),
        ),
    );
    h.tier.set(&key("short"), e).await.unwrap();
    h.tier
        .set(&key("long"), entry(&key("long"), &json!("stays"), None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(read(&*h.tier, &key("short")).await, None);
    assert_eq!(read(&*h.tier, &key("long")).await, Some(json!("stays")));
}

/// An expired entry is kept while its stale window is open, for
/// stale-if-error; the cache, not the tier, decides it is not fresh.
pub async fn expired_entry_within_stale_window_is_kept(h: Harness) {
    let e = expired_but_stale(&key("s"), &json!("stale"));
    h.tier.set(&key("s"), e.clone()).await.unwrap();
    let got = h
        .tier
        .get(&key("s"))
        .await
        .unwrap()
        .expect("kept for its stale window");
    assert!(!got.header.is_fresh(Timestamp::now()));
    assert_eq!(got.header.stale_until, e.header.stale_until);
}

/// Created-at, expires-at and stale-until come back exactly as written,
/// which is what copy-up's remaining TTL is computed from.
pub async fn header_times_are_preserved(h: Harness) {
    let e = entry_with_meta(
        &json!(1),
        meta_for(
            &key("t"),
            Some(Duration::from_secs(10)),
            Duration::from_secs(5),
        ),
    );
    h.tier.set(&key("t"), e.clone()).await.unwrap();
    let got = h.tier.get(&key("t")).await.unwrap().unwrap();
    assert_eq!(got.header.created_at, e.header.created_at);
    assert_eq!(got.header.expires_at, e.header.expires_at);
    assert_eq!(got.header.stale_until, e.header.stale_until);
}

/// `get_many` answers one slot per key, in the order asked, hits and misses
/// mixed, duplicates included.
pub async fn get_many_returns_one_slot_per_key_in_order(h: Harness) {
    h.tier
        .set(&key("1"), entry(&key("1"), &json!(1), None))
        .await
        .unwrap();
    h.tier
        .set(&key("3"), entry(&key("3"), &json!(3), None))
        .await
        .unwrap();
    let keys = [key("1"), key("2"), key("3"), key("1")];
    let got = h.tier.get_many(&keys).await.unwrap();
    let values: Vec<Option<Value>> = got.iter().map(|e| e.as_ref().map(value_of)).collect();
    assert_eq!(
        values,
        vec![Some(json!(1)), None, Some(json!(3)), Some(json!(1))]
    );
}

/// `get_many` of no keys is an empty answer, not an error.
pub async fn get_many_of_no_keys_is_empty(h: Harness) {
    assert!(h.tier.get_many(&[]).await.unwrap().is_empty());
}

/// Entries written by `set_many` are read back by `get_many`.
pub async fn set_many_then_get_many(h: Harness) {
    let entries: Vec<(Key, Entry)> = (0..50)
        .map(|i| {
            (
                key(&i.to_string()),
                entry(&key(&i.to_string()), &json!(i), None),
            )
        })
        .collect();
    let keys: Vec<Key> = entries.iter().map(|(k, _)| k.clone()).collect();
    h.tier.set_many(entries).await.unwrap();
    let got = h.tier.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len(), "one slot per key");
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.as_ref().map(value_of), Some(json!(i)), "slot {i}");
    }
}

/// `set_many` replaces existing entries.
pub async fn set_many_overwrites_existing_entries(h: Harness) {
    h.tier
        .set(&key("x"), entry(&key("x"), &json!("old"), None))
        .await
        .unwrap();
    h.tier
        .set_many(vec![
            (key("x"), entry(&key("x"), &json!("new"), None)),
            (key("y"), entry(&key("y"), &json!("y"), None)),
        ])
        .await
        .unwrap();
    assert_eq!(read(&*h.tier, &key("x")).await, Some(json!("new")));
    assert_eq!(read(&*h.tier, &key("y")).await, Some(json!("y")));
}

/// `clear(All)` removes every entry and says how many.
pub async fn clear_all_removes_everything(h: Harness) {
    for i in 0..10 {
        h.tier
            .set(
                &key(&i.to_string()),
                entry(&key(&i.to_string()), &json!(i), None),
            )
            .await
            .unwrap();
    }
    assert_eq!(h.tier.clear(ClearScope::All).await.unwrap(), 10);
    for i in 0..10 {
        assert_eq!(read(&*h.tier, &key(&i.to_string())).await, None);
    }
    assert_eq!(h.tier.size().await.unwrap().entries, 0);
}

/// `clear(Source)` removes that source's entries and no others, including
/// sources that share a prefix.
pub async fn clear_source_removes_only_that_source(h: Harness) {
    let search = Key::new("audnexus:search", [("q", "dune")]);
    let book = Key::new("audnexus:book", [("asin", "B002V1A0WE")]);
    let book2 = Key::new("audnexus:book", [("asin", "B0000000")]);
    let longer = Key::new("audnexus:bookx", [("asin", "B002V1A0WE")]);
    for k in [&search, &book, &book2, &longer] {
        h.tier
            .set(k, entry(k, &json!(k.as_str()), None))
            .await
            .unwrap();
    }
    let removed = h
        .tier
        .clear(ClearScope::Source("audnexus:book".into()))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(read(&*h.tier, &book).await, None);
    assert_eq!(read(&*h.tier, &book2).await, None);
    assert!(read(&*h.tier, &search).await.is_some());
    assert!(read(&*h.tier, &longer).await.is_some());
}

/// `clear(Expired)` removes entries past their expiry (also those in a stale
/// window) and keeps fresh ones.
pub async fn clear_expired_keeps_fresh_entries(h: Harness) {
    h.tier
        .set(&key("old"), expired_but_stale(&key("old"), &json!("old")))
        .await
        .unwrap();
    h.tier
        .set(
            &key("fresh"),
            entry(
                &key("fresh"),
                &json!("fresh"),
                Some(Duration::from_secs(60)),
            ),
        )
        .await
        .unwrap();
    h.tier
        .set(
            &key("forever"),
            entry(&key("forever"), &json!("forever"), None),
        )
        .await
        .unwrap();
    assert_eq!(h.tier.clear(ClearScope::Expired).await.unwrap(), 1);
    assert_eq!(read(&*h.tier, &key("old")).await, None);
    assert!(read(&*h.tier, &key("fresh")).await.is_some());
    assert!(read(&*h.tier, &key("forever")).await.is_some());
}

/// `size` counts the entries exactly (20 of them, so that a count off by
/// a tenth shows) and a plausible number of bytes.
pub async fn size_counts_entries_and_bytes(h: Harness) {
    assert_eq!(h.tier.size().await.unwrap().entries, 0);
    let value = json!("x".repeat(1000));
    for i in 0..20 {
        h.tier
            .set(
                &key(&i.to_string()),
                entry(&key(&i.to_string()), &value, None),
            )
            .await
            .unwrap();
    }
    let size = h.tier.size().await.unwrap();
    assert_eq!(size.entries, 20);
    assert!(
        size.bytes >= 20_000,
        "{} bytes for 20 entries of 1000+",
        size.bytes
    );
}

/// 32 tasks writing one key at once leave exactly one of their values,
/// intact.
pub async fn concurrent_writers_on_one_key_leave_one_intact_value(h: Harness) {
    let mut tasks = Vec::new();
    for i in 0..32 {
        let tier = Arc::clone(&h.tier);
        tasks.push(tokio::spawn(async move {
            let body = json!({"writer": i, "payload": "p".repeat(2000 + i)});
            tier.set(&key("contended"), entry(&key("contended"), &body, None))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = read(&*h.tier, &key("contended"))
        .await
        .expect("one value survives");
    let writer = got["writer"].as_u64().expect("intact value") as usize;
    assert!(writer < 32);
    assert_eq!(got["payload"].as_str().unwrap().len(), 2000 + writer);
}

/// 32 tasks writing their own keys: every write is visible afterwards.
pub async fn concurrent_writers_on_distinct_keys_are_all_visible(h: Harness) {
    let mut tasks = Vec::new();
    for i in 0..32 {
        let tier = Arc::clone(&h.tier);
        tasks.push(tokio::spawn(async move {
            for j in 0..10 {
                let name = format!("{i}-{j}");
                tier.set(&key(&name), entry(&key(&name), &json!(name), None))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..32 {
        for j in 0..10 {
            let name = format!("{i}-{j}");
            assert_eq!(read(&*h.tier, &key(&name)).await, Some(json!(name)));
        }
    }
}

/// Keys that differ only in reserved characters are different entries.
pub async fn keys_with_reserved_characters_are_distinct(h: Harness) {
    let keys = [
        Key::new(SOURCE, [("a", "1&b=2")]),
        Key::new(SOURCE, [("a", "1"), ("b", "2")]),
        Key::new(SOURCE, [("a", "%26")]),
        Key::new(SOURCE, [("a", "&")]),
        Key::new(SOURCE, [("a", "x:y#z")]),
        Key::new(SOURCE, [("a", "line\nbreak\u{0}")]),
        Key::new(SOURCE, [("a", "*"), ("b", "?[]")]),
        Key::new("con:form:ance", [("a", "1")]),
    ];
    for (i, k) in keys.iter().enumerate() {
        h.tier.set(k, entry(k, &json!(i), None)).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(read(&*h.tier, k).await, Some(json!(i)), "{k}");
    }
}

/// Unicode keys and keys long enough to be hashed work like any other.
pub async fn unicode_and_hashed_keys_round_trip(h: Harness) {
    let unicode = Key::new("pathinfo", [("path", "/audiobooks/Ñandú/日本語/😀")]);
    let long = Key::new("pathinfo", [("path", "/a".repeat(600))]);
    let long2 = Key::new("pathinfo", [("path", format!("{}b", "/a".repeat(600)))]);
    assert!(long.is_hashed());
    for (i, k) in [&unicode, &long, &long2].into_iter().enumerate() {
        h.tier.set(k, entry(k, &json!(i), None)).await.unwrap();
    }
    assert_eq!(read(&*h.tier, &unicode).await, Some(json!(0)));
    assert_eq!(read(&*h.tier, &long).await, Some(json!(1)));
    assert_eq!(read(&*h.tier, &long2).await, Some(json!(2)));
}

/// Paging through `scan` returns every live entry exactly once: no entry
/// lost, none repeated (a cursor one entry off repeats one), in a bounded
/// number of pages. The page size is not checked: `limit` is a hint (the
/// memory tier answers in one page, Redis's `COUNT` is approximate).
pub async fn scan_pages_through_every_entry(h: Harness) {
    require(&h, "scan", h.tier.capabilities().scan);
    for i in 0..25 {
        h.tier
            .set(
                &key(&format!("{i:02}")),
                entry(&key(&format!("{i:02}")), &json!(i), None),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    for pages in 1.. {
        assert!(pages <= 100, "scan did not end after 100 pages of 7");
        let page = h.tier.scan(cursor, 7).await.unwrap();
        for (k, e) in &page.entries {
            seen.push((k.clone(), value_of(e)));
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in seen.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "scan returned an entry twice");
    }
    assert_eq!(seen.len(), 25, "scan returned {} of 25 entries", seen.len());
    for (i, (k, v)) in seen.iter().enumerate() {
        assert_eq!(k, &key(&format!("{i:02}")));
        assert_eq!(v, &json!(i));
    }
}

/// A working tier says so.
pub async fn health_is_reported(h: Harness) {
    assert_eq!(h.tier.health().await, Health::Healthy);
}

/// An entry with 10 s left in the tier lands in an L1 (whose own TTL is 1 h)
/// with at most 10 s, not the L1 default.
pub async fn cache_copies_up_with_the_remaining_ttl(h: Harness) {
    let k = key("copy-up");
    let e = entry(&k, &json!("from below"), Some(Duration::from_secs(10)));
    let expires = e.header.expires_at;
    h.tier.set(&k, e).await.unwrap();
    let l1 = Arc::new(
        MemoryTier::new(&MemoryConfig::with_max_entries(100).ttl(Duration::from_secs(3600)))
            .unwrap(),
    );
    let cache = TieredCache::builder()
        .schema_version(SCHEMA)
        .shared_tier(l1.clone())
        .shared_tier(Arc::clone(&h.tier))
        .build();
    let v = cache.get::<Value>(&k).await.expect("hit in the lower tier");
    assert_eq!(*v, json!("from below"));
    let copied = l1.get(&k).await.unwrap().expect("copied up into L1");
    assert_eq!(copied.header.expires_at, expires);
    let left = copied
        .header
        .expires_at
        .remaining_from(Timestamp::now())
        .unwrap();
    assert!(left <= Duration::from_secs(10), "{left:?} left in L1");
    let stats = cache.stats();
    assert_eq!(stats.layers[1].hits, 1);
    assert_eq!(stats.layers[0].copy_ups, 1);
}

/// Copy-up never gives an upper tier more than its own TTL.
pub async fn cache_caps_copy_up_to_the_upper_tier_ttl(h: Harness) {
    let k = key("capped");
    h.tier
        .set(&k, entry(&k, &json!(1), Some(Duration::from_secs(3600))))
        .await
        .unwrap();
    let l1 = Arc::new(
        MemoryTier::new(&MemoryConfig::with_max_entries(100).ttl(Duration::from_secs(2))).unwrap(),
    );
    let cache = TieredCache::builder()
        .schema_version(SCHEMA)
        .shared_tier(l1.clone())
        .shared_tier(Arc::clone(&h.tier))
        .build();
    assert!(cache.get::<Value>(&k).await.is_some());
    let copied = l1.get(&k).await.unwrap().unwrap();
    let left = copied
        .header
        .expires_at
        .remaining_from(Timestamp::now())
        .unwrap();
    assert!(left <= Duration::from_secs(2), "{left:?} left in L1");
}

/// `TieredCache::set` stores the value in the tier with the TTL asked for.
pub async fn cache_writes_through_to_the_tier(h: Harness) {
    let cache = cache_over(Arc::clone(&h.tier), None);
    let k = key("through");
    let before = Timestamp::now();
    cache
        .set(&k, json!({"n": 7}), Ttl::For(Duration::from_secs(30)))
        .await
        .unwrap();
    let stored = h.tier.get(&k).await.unwrap().expect("written through");
    assert_eq!(value_of(&stored), json!({"n": 7}));
    let ttl = stored.header.expires_at.as_millis() - before.as_millis();
    assert!((29_000..=31_000).contains(&ttl), "ttl {ttl} ms");
    assert_eq!(cache.stats().layers[0].writes, 1);
}

/// A body that does not match its checksum is a miss counted as a decode
/// failure, never an error or a wrong value.
pub async fn damaged_body_is_a_counted_miss(h: Harness) {
    let k = key("damaged");
    let mut e = entry(&k, &json!({"title": "Dune"}), None);
    let mut body = e.body.to_vec();
    body[3] ^= 0x20;
    e.body = Bytes::from(body);
    h.tier.set(&k, e).await.unwrap();
    let cache = cache_over(Arc::clone(&h.tier), None);
    assert!(cache.get::<Value>(&k).await.is_none());
    let layer = &cache.stats().layers[0];
    assert_eq!(layer.decode_failures, 1);
    assert_eq!(layer.hits, 0);
    assert_eq!(layer.errors, 0);
}

/// Entries of an older schema are misses and are removed; entries of a
/// newer schema (a newer tool sharing the store) are misses and stay.
pub async fn other_schema_versions_are_counted_misses(h: Harness) {
    let older = key("older");
    let newer = key("newer");
    // Written into the tier's namespace as an import or a foreign writer
    // would: the header's version is what the reader checks.
    let mut m = meta_for(&older, None, Duration::ZERO);
    m.schema_version = SCHEMA - 1;
    h.tier
        .set(&older, entry_with_meta(&json!("older"), m))
        .await
        .unwrap();
    let mut m = meta_for(&newer, None, Duration::ZERO);
    m.schema_version = SCHEMA + 1;
    h.tier
        .set(&newer, entry_with_meta(&json!("newer"), m))
        .await
        .unwrap();
    let cache = cache_over(Arc::clone(&h.tier), None);
    assert!(cache.get::<Value>(&older).await.is_none());
    assert!(cache.get::<Value>(&newer).await.is_none());
    assert_eq!(cache.stats().layers[0].decode_failures, 2);
    assert!(
        h.tier.get(&older).await.unwrap().is_none(),
        "older entry removed"
    );
    assert!(
        h.tier.get(&newer).await.unwrap().is_some(),
        "newer entry kept"
    );
}

/// Reading a key as a type its value does not fit is a counted miss.
pub async fn value_of_another_type_is_a_miss_not_an_error(h: Harness) {
    let cache = cache_over(Arc::clone(&h.tier), None);
    let k = key("typed");
    cache
        .set(&k, "a string".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    assert!(cache.get::<u64>(&k).await.is_none());
    assert_eq!(
        cache.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("a string")
    );
    assert_eq!(cache.stats().layers[0].decode_failures, 1);
}

/// An entry stored under another key than the one it was written for (a row
/// or value copied by hand) is a counted miss through the cache, never the
/// other key's value; the entry under its own key still reads.
pub async fn entry_under_another_key_is_a_counted_miss(h: Harness) {
    let own = key("own");
    let other = key("other");
    let e = entry(&own, &json!("belongs to own"), None);
    h.tier.set(&own, e.clone()).await.unwrap();
    h.tier.set(&other, e).await.unwrap();
    let cache = cache_over(Arc::clone(&h.tier), None);
    assert!(cache.get::<Value>(&other).await.is_none());
    assert_eq!(cache.stats().layers[0].decode_failures, 1);
    assert_eq!(
        cache.get::<Value>(&own).await.as_deref(),
        Some(&json!("belongs to own"))
    );
}

/// What a tier declares hangs together: a store shared across hosts is
/// shared by processes on one host too (each host runs processes), so the
/// `shared_across_processes` case proves the sharing of both.
pub async fn declared_capabilities_are_consistent(h: Harness) {
    let c = h.tier.capabilities();
    assert!(
        !c.shared_across_hosts || c.shared_across_processes,
        "declares `shared_across_hosts` without `shared_across_processes`: {:?}",
        c.names()
    );
}

/// `persistent`: what was written before the tier was dropped and the
/// store opened again is there, headers and bodies intact; what was
/// deleted stays deleted; the reopened store takes writes.
pub async fn entries_survive_a_reopen(h: Harness) {
    require(&h, "persistent", h.tier.capabilities().persistent);
    let timed = entry(
        &key("timed"),
        &json!({"title": "Dune"}),
        Some(Duration::from_secs(600)),
    );
    let forever = entry(&key("forever"), &json!("forever"), None);
    h.tier.set(&key("timed"), timed.clone()).await.unwrap();
    h.tier.set(&key("forever"), forever.clone()).await.unwrap();
    h.tier
        .set(&key("deleted"), entry(&key("deleted"), &json!(0), None))
        .await
        .unwrap();
    assert!(h.tier.delete(&key("deleted")).await.unwrap());
    let batch: Vec<(Key, Entry)> = (0..20)
        .map(|i| {
            let k = key(&format!("batch-{i}"));
            let e = entry(&k, &json!(i), None);
            (k, e)
        })
        .collect();
    h.tier.set_many(batch).await.unwrap();

    let h = h.reopened().await;
    for (k, written) in [(key("timed"), &timed), (key("forever"), &forever)] {
        let got = h
            .tier
            .get(&k)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{k} lost on reopen"));
        assert_eq!(got.header, written.header, "{k}");
        assert_eq!(got.body, written.body, "{k}");
    }
    assert_eq!(
        read(&*h.tier, &key("deleted")).await,
        None,
        "a deleted entry came back"
    );
    for i in 0..20 {
        assert_eq!(
            read(&*h.tier, &key(&format!("batch-{i}"))).await,
            Some(json!(i)),
            "batch entry {i} after reopen"
        );
    }
    assert_eq!(h.tier.size().await.unwrap().entries, 22);
    h.tier
        .set(&key("after"), entry(&key("after"), &json!("after"), None))
        .await
        .unwrap();
    assert_eq!(read(&*h.tier, &key("after")).await, Some(json!("after")));
}

/// `shared_across_processes`: another process, opening the store from the
/// harness's config while this one holds it open, reads what this one
/// wrote, and this one reads what it wrote back.
pub async fn a_second_process_sees_a_write_and_writes_back(h: Harness) {
    require(
        &h,
        "shared_across_processes",
        h.tier.capabilities().shared_across_processes,
    );
    let config = h.config_json().expect(
        "the tier declares `shared_across_processes`, but the harness has no `Harness::config` for a second process to open it with",
    );
    let value = json!({"written by": "the first process", "n": 18});
    let k = written_by_first_process();
    h.tier.set(&k, entry(&k, &value, None)).await.unwrap();
    let lines = tokio::task::spawn_blocking(move || crate::processes::run_second_process(&config))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = lines.iter().find_map(|l| l.strip_prefix("seen "));
    assert_eq!(
        seen.map(|v| serde_json::from_str::<Value>(v).unwrap()),
        Some(value),
        "the second process did not see the write: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "wrote"), "{lines:?}");
    let back = read(&*h.tier, &written_by_second_process())
        .await
        .expect("the second process's write is visible here");
    assert!(
        back["pid"]
            .as_u64()
            .is_some_and(|pid| pid != u64::from(std::process::id()))
    );
}

/// `size_limit`: a tier capped at 256 KiB that is written 1 MiB (1000
/// entries of about 1 KiB) stays within its cap, checked as it fills and at
/// the end, evicts, and keeps the entry written last.
pub async fn a_capped_tier_stays_within_its_cap(h: Harness) {
    require(&h, "size_limit", h.tier.capabilities().size_limit);
    let tier = h.capped_tier(CAP).await;
    let value = json!("v".repeat(1000));
    for i in 0..1000 {
        let k = key(&format!("capped-{i:04}"));
        tier.set(&k, entry(&k, &value, None)).await.unwrap();
        if i % 250 == 249 {
            let size = tier.size().await.unwrap();
            assert!(
                size.bytes <= CAP,
                "{} bytes in {} entries after {} writes, over the cap of {CAP}",
                size.bytes,
                size.entries,
                i + 1
            );
        }
    }
    let size = tier.size().await.unwrap();
    assert!(
        size.bytes <= CAP,
        "{} bytes, over the cap of {CAP}",
        size.bytes
    );
    assert!(
        size.entries > 0 && size.entries < 1000,
        "{} of 1000 entries kept under a cap of a quarter of them",
        size.entries
    );
    assert!(
        read(&*tier, &key("capped-0999")).await.is_some(),
        "the entry written last was evicted"
    );
}

/// `native_ttl`: the store removes an entry past its retention by itself:
/// it is not counted, not scanned, a purge finds nothing left to remove (a
/// tier that only hides dead entries until a purge or a read removes them
/// does not expire them itself), and it is not read.
pub async fn the_store_expires_entries_itself(h: Harness) {
    let capabilities = h.tier.capabilities();
    require(&h, "native_ttl", capabilities.native_ttl);
    let short = entry_with_meta(
        &json!("short-lived"),
        meta_for(
            &key("short"),
            Some(Duration::from_millis(200)),
            Duration::from_millis(100),
        ),
    );
    h.tier.set(&key("short"), short).await.unwrap();
    h.tier
        .set(&key("stays"), entry(&key("stays"), &json!("stays"), None))
        .await
        .unwrap();
    assert_eq!(h.tier.size().await.unwrap().entries, 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Nothing may touch the dead entry before the purge: a read that
    // removes what it finds dead (as the memory tier's does) would hide a
    // tier that never removes entries by itself.
    assert_eq!(
        h.tier.size().await.unwrap().entries,
        1,
        "the dead entry is still counted"
    );
    if capabilities.scan {
        let mut keys = Vec::new();
        let mut cursor = None;
        for _ in 0..100 {
            let page = h.tier.scan(cursor, 100).await.unwrap();
            keys.extend(page.entries.into_iter().map(|(k, _)| k));
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(keys, vec![key("stays")], "the dead entry is still scanned");
    }
    assert_eq!(
        h.tier.purge().await.unwrap(),
        0,
        "a purge still found the dead entry: the store had not removed it"
    );
    assert_eq!(read(&*h.tier, &key("short")).await, None);
    assert_eq!(read(&*h.tier, &key("stays")).await, Some(json!("stays")));
}

/// `keeps_decoded`: a hit through the cache on a value the cache wrote
/// costs no decode: two reads hand out the very value kept with the entry
/// (one allocation, shared), not two decoded copies.
pub async fn hits_are_served_from_the_kept_decoded_value(h: Harness) {
    require(&h, "keeps_decoded", h.tier.capabilities().keeps_decoded);
    let cache = cache_over(Arc::clone(&h.tier), None);
    let k = key("decoded");
    let value = json!({"title": "Dune", "narrators": ["Scott Brick", "Orlagh Cassidy"]});
    cache
        .set(&k, value.clone(), Ttl::For(Duration::from_secs(60)))
        .await
        .unwrap();
    let first = cache.get::<Value>(&k).await.expect("hit");
    let second = cache.get::<Value>(&k).await.expect("hit");
    assert_eq!(*first, value);
    assert!(
        Arc::ptr_eq(&first, &second),
        "each hit decoded the value again instead of using the kept one"
    );
    assert_eq!(cache.stats().layers[0].hits, 2);
}

/// `answers_without_io`: `get_ready` answers at once, with the entry for a
/// key the tier holds and with `None` for one it does not, and `set_ready`
/// stores at once, so the cache's synchronous hot path is taken.
pub async fn get_ready_and_set_ready_answer_without_io(h: Harness) {
    require(
        &h,
        "answers_without_io",
        h.tier.capabilities().answers_without_io,
    );
    let k = key("ready");
    let e = entry(&k, &json!("ready"), Some(Duration::from_secs(60)));
    h.tier.set(&k, e.clone()).await.unwrap();
    let mut seen = None;
    let started = Instant::now();
    let answered = h
        .tier
        .get_ready(&k, &mut |found| seen = Some(found.map(|f| f.header)));
    assert_eq!(answered, Readiness::Answered, "get_ready of a held key");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(seen, Some(Some(e.header)));

    let mut seen = None;
    let answered = h
        .tier
        .get_ready(&key("not-held"), &mut |found| seen = Some(found.is_some()));
    assert_eq!(answered, Readiness::Answered, "get_ready of a missing key");
    assert_eq!(seen, Some(false));

    let k2 = key("ready-set");
    let e2 = entry(&k2, &json!("set at once"), None);
    match h.tier.set_ready(&k2, e2) {
        SetReadiness::Done(result) => result.unwrap(),
        SetReadiness::NeedsIo(_) => panic!("set_ready handed the entry back"),
    }
    assert_eq!(read(&*h.tier, &k2).await, Some(json!("set at once")));
}

/// `reads_in_place`: `get_ready` answers at once with what `get` reads (the
/// latest write's header and body, `None` for a key the tier does not
/// hold), so the cache can read the tier without a future.
pub async fn get_ready_reads_what_get_reads(h: Harness) {
    require(&h, "reads_in_place", h.tier.capabilities().reads_in_place);
    let k = key("in-place");
    let first = entry(&k, &json!("first"), Some(Duration::from_secs(60)));
    h.tier.set(&k, first).await.unwrap();
    let second = entry(&k, &json!("second"), Some(Duration::from_secs(120)));
    h.tier.set(&k, second.clone()).await.unwrap();
    let mut seen = None;
    let answered = h.tier.get_ready(&k, &mut |found| {
        seen = Some(found.map(|f| (f.header, f.body.clone())));
    });
    assert_eq!(answered, Readiness::Answered, "get_ready of a held key");
    let got = h.tier.get(&k).await.unwrap().expect("get of a held key");
    assert_eq!(seen, Some(Some((got.header, got.body.clone()))));
    assert_eq!(got.header, second.header);

    let mut seen = None;
    let answered = h.tier.get_ready(&key("not-held-in-place"), &mut |found| {
        seen = Some(found.is_some());
    });
    assert_eq!(answered, Readiness::Answered, "get_ready of a missing key");
    assert_eq!(seen, Some(false));
}

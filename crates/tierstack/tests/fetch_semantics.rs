//! Fetch semantics over real tiers (memory over SQLite): stale-if-error,
//! timeouts, offline mode, negative caching, per-source policies and partial
//! batch hits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tierstack::{
    ErrorKind, FetchOptions, Fetched, Key, MemoryConfig, MemoryTier, SourcePolicy, SqliteConfig,
    SqliteTier, TieredCache, Ttl,
};

#[derive(Debug, thiserror::Error)]
#[error("upstream answered 503")]
struct Upstream;

fn key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

async fn stack(
    dir: &std::path::Path,
    builder: impl FnOnce(tierstack::TieredCacheBuilder) -> tierstack::TieredCacheBuilder,
) -> TieredCache {
    let l1 =
        MemoryTier::new(&MemoryConfig::with_max_entries(10_000).ttl(Duration::from_secs(3600)))
            .unwrap();
    let l2 = SqliteTier::open(&SqliteConfig::new(dir.join("cache.db")), 1)
        .await
        .unwrap();
    builder(TieredCache::builder().tier(l1).tier(l2)).build()
}

#[tokio::test]
async fn stale_if_error_serves_the_expired_value_when_the_fetch_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b.stale_for(Duration::from_secs(60))).await;
    let k = key("S");
    cache
        .set(&k, "old".to_string(), Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        cache.get::<String>(&k).await.is_none(),
        "expired values are not plain hits"
    );
    let got = cache
        .get_or_fetch_with::<String, _, _, _>(&k, Ttl::TierDefault, |_| async { Err(Upstream) })
        .await
        .unwrap();
    assert_eq!(got, Fetched::Stale(Arc::new("old".to_string())));
    assert_eq!(cache.stats().sources["audnexus:book"].stale_served, 1);
    // Without a stale value the error reaches the caller.
    let err = cache
        .get_or_fetch::<String, _, _, _>(&key("none"), Ttl::TierDefault, |_| async {
            Err(Upstream)
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fetch);
    // A successful fetch replaces the stale value.
    let fresh = cache
        .get_or_fetch_with(&k, Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>("new".to_string())
        })
        .await
        .unwrap();
    assert_eq!(fresh, Fetched::Fetched(Arc::new("new".to_string())));
    assert_eq!(
        cache.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("new")
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_expired_value_when_the_fetch_is_too_slow() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b.stale_for(Duration::from_secs(60))).await;
    let k = key("T");
    cache
        .set(&k, "old".to_string(), Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let started = std::time::Instant::now();
    let got = cache
        .get_or_fetch_with(
            &k,
            FetchOptions::ttl(Ttl::TierDefault).soft_timeout(Duration::from_millis(100)),
            |_| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, Upstream>("late".to_string())
            },
        )
        .await
        .unwrap();
    assert!(got.is_stale());
    assert_eq!(**got.value(), "old");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    // The hard timeout bounds the wait when there is nothing stale.
    let err = cache
        .get_or_fetch::<String, _, _, _>(
            &key("cold"),
            FetchOptions::ttl(Ttl::TierDefault).hard_timeout(Duration::from_millis(100)),
            |_| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, Upstream>("late".to_string())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

/// A caller that joins another caller's fetch is bound by its own
/// timeouts too: the leader's slow fetch goes on for the leader, the
/// follower gets its stale value at its soft timeout or an error at its
/// hard timeout.
#[tokio::test]
async fn a_caller_waiting_for_another_callers_fetch_keeps_its_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b.stale_for(Duration::from_secs(60))).await;
    let slow = |value: &'static str| {
        move |_| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<_, Upstream>(value.to_string())
        }
    };
    let (cold, expired) = (key("cold-shared"), key("stale-shared"));
    cache
        .set(&expired, "old".to_string(), Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let leader_cold = cache.get_or_fetch::<String, _, _, _>(&cold, Ttl::TierDefault, slow("late"));
    let leader_stale =
        cache.get_or_fetch::<String, _, _, _>(&expired, Ttl::TierDefault, slow("new"));
    let followers = async {
        // Let both leaders start their fetches first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let timed_out = cache
            .get_or_fetch::<String, _, _, _>(
                &cold,
                FetchOptions::ttl(Ttl::TierDefault).hard_timeout(Duration::from_millis(100)),
                |_| async { Ok::<_, Upstream>("never".to_string()) },
            )
            .await
            .unwrap_err();
        let stale = cache
            .get_or_fetch_with::<String, _, _, _>(
                &expired,
                FetchOptions::ttl(Ttl::TierDefault).soft_timeout(Duration::from_millis(100)),
                |_| async { Ok::<_, Upstream>("never".to_string()) },
            )
            .await
            .unwrap();
        (timed_out, stale, started.elapsed())
    };
    let (cold_value, stale_value, (timed_out, stale, took)) =
        tokio::join!(leader_cold, leader_stale, followers);
    assert_eq!(
        timed_out.kind(),
        ErrorKind::Timeout,
        "{}",
        timed_out.report()
    );
    assert!(stale.is_stale());
    assert_eq!(**stale.value(), "old");
    assert!(
        took < Duration::from_secs(1),
        "the followers waited {took:?}"
    );
    // The leaders' own fetches were not cut short by their followers.
    assert_eq!(*cold_value.unwrap(), "late");
    assert_eq!(*stale_value.unwrap(), "new");
    let source = cache.stats().sources["audnexus:book"];
    assert_eq!(source.coalesced, 2);
    assert_eq!(source.stale_served, 1);
}

#[tokio::test]
async fn offline_mode_never_calls_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| {
        b.stale_for(Duration::from_secs(60)).offline(true)
    })
    .await;
    cache
        .set(&key("fresh"), 1u32, Ttl::TierDefault)
        .await
        .unwrap();
    cache
        .set(&key("stale"), 2u32, Duration::from_millis(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = AtomicUsize::new(0);
    let fetch = |_| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Upstream>(99u32)
    };
    assert_eq!(
        *cache
            .get_or_fetch(&key("fresh"), Ttl::TierDefault, fetch)
            .await
            .unwrap(),
        1
    );
    let stale = cache
        .get_or_fetch_with(&key("stale"), Ttl::TierDefault, fetch)
        .await
        .unwrap();
    assert!(stale.is_stale());
    assert_eq!(**stale.value(), 2);
    let err = cache
        .get_or_fetch(&key("unknown"), Ttl::TierDefault, fetch)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let batch = cache
        .get_or_fetch_many(
            &[key("fresh"), key("unknown")],
            Ttl::TierDefault,
            |_, _| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Upstream>(Vec::new())
            },
        )
        .await
        .unwrap();
    assert_eq!(batch[0].as_deref(), Some(&1));
    assert_eq!(batch[1], None);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "offline mode called fetch");
    cache.set_offline(false);
    assert_eq!(
        *cache
            .get_or_fetch(&key("unknown"), Ttl::TierDefault, fetch)
            .await
            .unwrap(),
        99
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn not_found_is_cached_for_the_negative_ttl_only() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b.negative_ttl(Duration::from_millis(200))).await;
    let k = key("B000UNKNOWN");
    let calls = AtomicUsize::new(0);
    let fetch = |_| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<Option<String>, Upstream>(None)
    };
    for _ in 0..5 {
        assert_eq!(
            cache
                .get_or_fetch_optional(&k, Ttl::TierDefault, fetch)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the negative answer was cached"
    );
    assert_eq!(cache.stats().sources["audnexus:book"].negative_hits, 4);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        cache
            .get_or_fetch_optional(&k, Ttl::TierDefault, fetch)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the negative entry expired on its own TTL"
    );
    // A negative entry never satisfies a caller that needs a value.
    let v = cache
        .get_or_fetch(&k, Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>("found later".to_string())
        })
        .await
        .unwrap();
    assert_eq!(*v, "found later");
}

#[tokio::test]
async fn source_policies_set_ttls_by_source() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| {
        b.source_policy(
            "audnexus:*",
            SourcePolicy::ttl(Duration::from_secs(7 * 86400)),
        )
        .source_policy("pathinfo", SourcePolicy::ttl(Duration::from_secs(3600)))
    })
    .await;
    let now = tierstack::Timestamp::now();
    let book = key("P");
    let path = Key::new("pathinfo", [("path", "/audiobooks/fantasy/dune")]);
    cache.set(&book, 1u8, Ttl::TierDefault).await.unwrap();
    cache.set(&path, 2u8, Ttl::TierDefault).await.unwrap();
    let sqlite = cache.tiers().nth(1).unwrap();
    let left = |h: tierstack::Header| h.expires_at.remaining_from(now).unwrap();
    let book_l2 = left(sqlite.get(&book).await.unwrap().unwrap().header);
    let path_l2 = left(sqlite.get(&path).await.unwrap().unwrap().header);
    assert!(book_l2 > Duration::from_secs(7 * 86400 - 60), "{book_l2:?}");
    assert!(
        // `now` was read just before the write, so up to a second more.
        path_l2 <= Duration::from_secs(3601) && path_l2 > Duration::from_secs(3500),
        "{path_l2:?}"
    );
    // L1 caps both at its own hour.
    let l1 = cache.tiers().next().unwrap();
    assert!(left(l1.get(&book).await.unwrap().unwrap().header) <= Duration::from_secs(3601));
}

#[tokio::test]
async fn a_partial_batch_fetches_exactly_the_missing_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let keys: Vec<Key> = (0..100).map(|i| key(&format!("B{i:03}"))).collect();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 5 < 3) {
        cache
            .set(k, format!("cached {i}"), Ttl::TierDefault)
            .await
            .unwrap();
    }
    let mut asked_with_duplicates = keys.clone();
    asked_with_duplicates.push(keys[1].clone());
    asked_with_duplicates.push(keys[4].clone());
    let calls = AtomicUsize::new(0);
    let got = cache
        .get_or_fetch_many(
            &asked_with_duplicates,
            Ttl::TierDefault,
            |missing: Vec<Key>, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                let answer: Vec<(Key, Option<String>)> = missing
                    .iter()
                    .map(|k| {
                        (
                            k.clone(),
                            Some(format!("fetched {}", k.params().unwrap()[0].1)),
                        )
                    })
                    .collect();
                let count = missing.len();
                async move {
                    assert_eq!(
                        count, 40,
                        "fetch_missing must receive exactly the 40 missing keys"
                    );
                    Ok::<_, Upstream>(answer)
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(got.len(), 102);
    for (i, value) in got.iter().take(100).enumerate() {
        let expected = if i % 5 < 3 {
            format!("cached {i}")
        } else {
            format!("fetched B{i:03}")
        };
        assert_eq!(value.as_deref(), Some(&expected));
    }
    assert_eq!(got[100].as_deref().map(String::as_str), Some("cached 1"));
    assert_eq!(
        got[101].as_deref().map(String::as_str),
        Some("fetched B004")
    );
    // The fetched 40 were written through: a second call fetches nothing.
    let again = cache
        .get_or_fetch_many(&keys, Ttl::TierDefault, |missing: Vec<Key>, _| async move {
            assert!(missing.is_empty(), "{missing:?}");
            Ok::<Vec<(Key, Option<String>)>, Upstream>(Vec::new())
        })
        .await
        .unwrap();
    assert!(again.iter().all(Option::is_some));
    // And they reached SQLite: a fresh cache on the same file sees them.
    drop(cache);
    let reopened = stack(dir.path(), |b| b).await;
    assert_eq!(
        reopened
            .get::<String>(&keys[4])
            .await
            .as_deref()
            .map(String::as_str),
        Some("fetched B004")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_fetches_once_for_a_hundred_concurrent_late_hits() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let book = cache
        .cached_fn(
            |asin: &String| key(asin),
            move |asin: String, _| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Upstream>(format!("{asin} v{n}"))
                }
            },
        )
        .ttl(Duration::from_secs(3))
        .refresh_ahead(0.3);
    assert_eq!(*book.call("B1".into()).await.unwrap(), "B1 v1");
    // Past 30% of the TTL (due at 900 ms), far from expiry (3 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let book = book.clone();
        tasks.push(tokio::spawn(async move {
            book.call_with("B1".to_string()).await.unwrap()
        }));
    }
    for t in tasks {
        // Every caller gets the current value at once, not the refresh.
        assert_eq!(
            t.await.unwrap(),
            Fetched::Cached(Arc::new("B1 v1".to_string()))
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one background refresh for 100 late hits"
    );
    assert_eq!(cache.stats().sources["audnexus:book"].refreshes, 1);
    assert_eq!(*book.call("B1".into()).await.unwrap(), "B1 v2");
}

#[tokio::test]
async fn cached_functions_are_one_line_for_the_rfc_integration_points() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let search_books = cache.cached_fn(
        |(q, author): &(String, Option<String>)| {
            Key::new(
                "audnexus:search",
                [("q", Some(q.as_str())), ("author", author.as_deref())],
            )
        },
        move |(q, author): (String, Option<String>), _| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Upstream>(vec![format!("{q}/{}", author.unwrap_or_default())]) }
        },
    );
    let args = ("dune".to_string(), Some("herbert".to_string()));
    assert_eq!(
        search_books.key(&args).as_str(),
        "audnexus:search:author=herbert&q=dune"
    );
    assert_eq!(
        search_books.call(args.clone()).await.unwrap()[0],
        "dune/herbert"
    );
    assert_eq!(search_books.call(args).await.unwrap()[0], "dune/herbert");
    let no_author = ("dune".to_string(), None);
    assert_eq!(
        search_books.key(&no_author).as_str(),
        "audnexus:search:q=dune"
    );
    assert_eq!(search_books.call(no_author).await.unwrap()[0], "dune/");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_skips_fresh_keys_and_respects_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let keys: Vec<Key> = (0..50).map(|i| key(&format!("W{i:02}"))).collect();
    for k in &keys[..10] {
        cache
            .set(k, "already here".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
    }
    let calls = AtomicUsize::new(0);
    let progress_calls = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let report = cache
        .warm(
            keys.clone(),
            tierstack::WarmOptions::default()
                .concurrency(8)
                .rate_per_sec(20),
            |k: Key| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k.as_str().ends_with("W49") {
                        Ok::<_, Upstream>(None)
                    } else if n == 5 {
                        Err(Upstream)
                    } else {
                        Ok(Some(format!("warmed {k}")))
                    }
                }
            },
            |_| {
                progress_calls.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        40,
        "only the 40 missing keys were fetched"
    );
    assert_eq!(report.done, 50);
    assert_eq!(report.fresh, 10);
    assert_eq!(report.not_found, 1);
    assert_eq!(report.failed, 1);
    assert_eq!(report.fetched, 38);
    assert_eq!(progress_calls.load(Ordering::SeqCst), 50);
    // 40 fetches at 20/s with a one-second burst cannot finish before the
    // second batch of 20 tokens refills: a lower bound, robust on slow machines.
    assert!(
        elapsed >= Duration::from_millis(900),
        "rate limit not applied: {elapsed:?}"
    );
    assert!(cache.get::<String>(&keys[20]).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_background_refresh_does_not_block_later_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let book = cache
        .cached_fn(
            |asin: &String| key(asin),
            move |asin: String, _| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    assert!(n != 2, "the first background refresh panics");
                    Ok::<_, Upstream>(format!("{asin} v{n}"))
                }
            },
        )
        .ttl(Duration::from_secs(3))
        .refresh_ahead(0.3);
    assert_eq!(*book.call("B2".into()).await.unwrap(), "B2 v1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    book.call("B2".into()).await.unwrap(); // starts refresh 2, which panics
    // Once the panicked refresh is cleared (after the panic hook has printed,
    // which can take a while), a later hit starts refresh 3.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = book.call("B2".into()).await.unwrap();
        if *value == "B2 v3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refresh after the panicked one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Without a negative TTL of its own, a cache keeps a "not found" answer
/// for 5 minutes, in every tier.
#[tokio::test]
async fn the_default_negative_ttl_is_five_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let k = key("B000MISSING");
    let found = cache
        .get_or_fetch_optional::<String, _, _, Upstream>(&k, Ttl::TierDefault, |_| async {
            Ok(None)
        })
        .await
        .unwrap();
    assert!(found.is_none());
    for tier in cache.tiers() {
        let entry = tier.get(&k).await.unwrap().expect("the answer is cached");
        let header = &entry.header;
        assert!(header.flags.contains(tierstack::EntryFlags::NEGATIVE));
        let ttl = header.expires_at.as_millis() - header.created_at.as_millis();
        assert_eq!(ttl, 5 * 60 * 1000, "{}: {ttl} ms", tier.name());
    }
}

#[test]
fn a_late_hit_outside_a_tokio_runtime_is_answered_and_starts_no_refresh() {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let book = cache
        .cached_fn(
            |asin: &String| key(asin),
            move |asin: String, _| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok::<_, Upstream>(format!("{asin} v{n}")) }
            },
        )
        .ttl(Duration::from_secs(2))
        .refresh_ahead(0.1);
    // Another executor: there is no Tokio runtime to refresh in.
    assert_eq!(
        *pollster::block_on(book.call("B1".into())).unwrap(),
        "B1 v1"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        *pollster::block_on(book.call("B1".into())).unwrap(),
        "B1 v1"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no refresh ran");
    assert_eq!(cache.stats().sources["audnexus:book"].refreshes, 0);
}

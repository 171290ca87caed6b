//! The hot path: a fresh hit in a top tier that answers without I/O
//! allocates nothing, and counters stay exact under concurrent hits.
//!
//! Allocations are counted by `allocation-counter`, which installs a global
//! allocator that counts per thread: other threads (the SQLite tier's
//! writer, the test harness) cannot make the test pass or fail.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl};

/// Allocations made by this thread while `f` runs.
fn allocations_in<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    (out.expect("ran"), info.count_total)
}

/// Polls `future` once: a hit answered without I/O must be ready at once.
fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = pin!(future);
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    title: String,
    pages: u32,
}

async fn memory_over_sqlite(dir: &std::path::Path) -> TieredCache {
    let sqlite = SqliteTier::open(&SqliteConfig::new(dir.join("l2.db")), 1)
        .await
        .expect("sqlite");
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).expect("memory"))
        .tier(sqlite)
        .build()
}

#[tokio::test(flavor = "current_thread")]
async fn a_fresh_l1_hit_with_a_prebuilt_key_allocates_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = memory_over_sqlite(dir.path()).await;
    let key = Key::new("books", [("id", "1")]);
    let book = Book {
        title: "Dune".into(),
        pages: 412,
    };
    cache
        .set(&key, book.clone(), Duration::from_secs(3600))
        .await
        .expect("set");
    // The first hit may set up per-thread state (counter slots, the
    // source's handle for this thread).
    assert!(matches!(
        poll_once(cache.get::<Book>(&key)),
        Poll::Ready(Some(_))
    ));

    let (hits, allocations) = allocations_in(|| {
        (0..1000)
            .filter(|_| matches!(poll_once(cache.get::<Book>(&key)), Poll::Ready(Some(v)) if *v == book))
            .count()
    });
    assert_eq!(hits, 1000, "every get is a hit, answered on its first poll");
    assert_eq!(allocations, 0, "1000 L1 hits allocated {allocations} times");
    assert_eq!(cache.stats().layer("memory").expect("layer").hits, 1001);
}

/// The counting helper itself must see allocations, or the test above
/// proves nothing.
#[test]
fn the_counting_allocator_sees_an_allocation() {
    let ((), allocations) = allocations_in(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(allocations, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_miss_in_l1_is_not_answered_by_the_fast_path() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = memory_over_sqlite(dir.path()).await;
    let key = Key::new("books", [("id", "2")]);
    let book = Book {
        title: "Emma".into(),
        pages: 474,
    };
    // Only the lower tier holds the key: the read goes there and copies up.
    cache.tiers().nth(1).expect("sqlite");
    let l2_only = TieredCache::builder()
        .shared_tier(Arc::clone(cache.tiers().nth(1).expect("sqlite")))
        .build();
    l2_only
        .set(&key, book.clone(), Ttl::For(Duration::from_secs(60)))
        .await
        .expect("set");
    assert_eq!(cache.get::<Book>(&key).await.as_deref(), Some(&book));
    let stats = cache.stats();
    assert_eq!(stats.layer("memory").expect("memory").misses, 1);
    assert_eq!(stats.layer("sqlite").expect("sqlite").hits, 1);
    assert_eq!(stats.layer("memory").expect("memory").copy_ups, 1);
    // Now it is an L1 hit.
    assert!(matches!(
        poll_once(cache.get::<Book>(&key)),
        Poll::Ready(Some(_))
    ));
    assert_eq!(cache.stats().layer("memory").expect("memory").hits, 1);
}

/// SQLite reads in place (ADR 0025): under a memory tier, a hit in it is
/// answered at the first poll, copied up and counted as the async path
/// would, and a key neither tier holds is a miss at the first poll.
#[tokio::test(flavor = "current_thread")]
async fn a_hit_in_sqlite_under_memory_is_answered_and_copied_up_at_the_first_poll() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = memory_over_sqlite(dir.path()).await;
    let l2_only = TieredCache::builder()
        .shared_tier(Arc::clone(cache.tiers().nth(1).expect("sqlite")))
        .build();
    let key = Key::new("books", [("id", "3")]);
    let book = Book {
        title: "Ulysses".into(),
        pages: 730,
    };
    l2_only
        .set(&key, book.clone(), Ttl::For(Duration::from_secs(60)))
        .await
        .expect("set");

    match poll_once(cache.get::<Book>(&key)) {
        Poll::Ready(Some(found)) => assert_eq!(*found, book),
        Poll::Ready(None) => panic!("a hit in SQLite was answered as a miss"),
        Poll::Pending => panic!("a hit in SQLite under memory waited"),
    }
    let stats = cache.stats();
    let memory = stats.layer("memory").expect("memory");
    let sqlite = stats.layer("sqlite").expect("sqlite");
    assert_eq!((memory.misses, memory.hits), (1, 0));
    assert_eq!((sqlite.hits, sqlite.misses), (1, 0));
    assert_eq!((memory.copy_ups, memory.writes), (1, 1));
    assert!(sqlite.bytes_read > 0 && memory.bytes_written > 0);
    // The copy carries the remaining TTL, and is now an L1 hit.
    let l1 = cache.tiers().next().expect("memory");
    let copied = l1.get(&key).await.expect("read").expect("copied up");
    let stored = l2_only.tiers().next().expect("sqlite");
    let original = stored.get(&key).await.expect("read").expect("held");
    assert_eq!(copied.header.expires_at, original.header.expires_at);
    assert!(matches!(poll_once(cache.get::<Book>(&key)), Poll::Ready(Some(v)) if *v == book));
    assert_eq!(cache.stats().layer("memory").expect("memory").hits, 1);
    assert_eq!(cache.stats().sources["books"].hits, 2);

    let absent = Key::new("books", [("id", "absent")]);
    assert!(matches!(
        poll_once(cache.get::<Book>(&absent)),
        Poll::Ready(None)
    ));
    let stats = cache.stats();
    assert_eq!(stats.layer("memory").expect("memory").misses, 2);
    assert_eq!(stats.layer("sqlite").expect("sqlite").misses, 1);
    assert_eq!(stats.sources["books"].misses, 1);
}

/// Hits from two threads at once, through the striped counters: the sums
/// are exact. `TIERSTACK_HOT_PATH_HITS` sets the hits per thread (default
/// 200,000; the figure is 1,000,000).
#[test]
fn counters_stay_exact_after_two_threads_of_hits() {
    let per_thread: u64 = std::env::var("TIERSTACK_HOT_PATH_HITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).expect("memory"))
        .build();
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..100)
            .map(|i| Key::new(if i % 2 == 0 { "even" } else { "odd" }, [("i", i)]))
            .collect(),
    );
    rt.block_on(async {
        for (i, key) in keys.iter().enumerate() {
            cache
                .set(key, i as u64, Duration::from_secs(3600))
                .await
                .expect("set");
        }
    });
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (cache, keys) = (cache.clone(), Arc::clone(&keys));
            std::thread::spawn(move || {
                let mut found = 0u64;
                for n in 0..per_thread {
                    let key = &keys[(n % 100) as usize];
                    if let Poll::Ready(Some(_)) = poll_once(cache.get::<u64>(key)) {
                        found += 1;
                    }
                }
                found
            })
        })
        .collect();
    let found: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(found, 2 * per_thread, "every get was a hit");
    let stats = cache.stats();
    assert_eq!(stats.layer("memory").expect("memory").hits, 2 * per_thread);
    assert_eq!(stats.totals().hits, 2 * per_thread);
    assert_eq!(stats.sources["even"].hits, per_thread);
    assert_eq!(stats.sources["odd"].hits, per_thread);
    assert_eq!(stats.totals().misses, 0);
}

/// Awaiting a future moves it; the lookup machinery lives in a box made
/// only when the top tier has no plain hit, so the future of a hit stays a
/// few pointers.
#[test]
fn the_futures_of_get_and_get_or_fetch_are_small() {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).expect("memory"))
        .build();
    let key = Key::new("a", [("b", "c")]);
    let get = cache.get::<u64>(&key);
    let fetch = cache.get_or_fetch::<u64, _, _, std::convert::Infallible>(
        &key,
        tierstack::FetchOptions::default(),
        |_| async { Ok(1) },
    );
    assert!(
        std::mem::size_of_val(&get) <= 64,
        "get: {} bytes",
        std::mem::size_of_val(&get)
    );
    assert!(
        std::mem::size_of_val(&fetch) <= 256,
        "get_or_fetch: {} bytes",
        std::mem::size_of_val(&fetch)
    );
}

/// The memory tier keeps a value the cache wrote in one form (the decoded
/// value); whoever asks for bytes gets them made again, and a read as
/// another type still decodes.
#[tokio::test]
async fn the_memory_tier_keeps_the_value_alone_and_gives_bytes_back() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct TitleOnly {
        title: String,
    }
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).expect("memory"))
        .build();
    let key = Key::new("books", [("id", "3")]);
    let book = Book {
        title: "Persuasion".into(),
        pages: 249,
    };
    cache
        .set(&key, book.clone(), Duration::from_secs(60))
        .await
        .expect("set");
    let tier = cache.tiers().next().expect("memory");
    let mut kept_body = None;
    let _ = tier.get_ready(&key, &mut |e| kept_body = e.map(|e| e.body.len()));
    assert_eq!(kept_body, Some(0), "the stored entry keeps no bytes");

    let entry = tier.get(&key).await.expect("get").expect("held");
    assert!(!entry.body.is_empty());
    assert_eq!(
        entry
            .decode_value::<Book>(
                tierstack::DecodeLimits::default(),
                &tierstack::Dictionaries::default()
            )
            .expect("the bytes made again decode"),
        book
    );
    let serialised =
        tierstack::Entry::from_bytes(entry.to_vec().into(), tierstack::DecodeLimits::default())
            .expect("a whole entry");
    assert_eq!(serialised.header.body_len as usize, serialised.body.len());

    assert_eq!(
        cache.get::<TitleOnly>(&key).await.as_deref(),
        Some(&TitleOnly {
            title: "Persuasion".into()
        }),
        "another type decodes from the value encoded again"
    );
    let page = tier.scan(None, 10).await.expect("scan");
    assert_eq!(page.entries.len(), 1);
    assert!(!page.entries[0].1.body.is_empty());
}

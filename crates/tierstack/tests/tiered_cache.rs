//! Behaviour of `TieredCache` over real memory tiers: single-flight, failed
//! and panicking fetches, failing tiers, write-through, pass-through mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack::{
    Capabilities, ClearScope, Entry, Error, ErrorKind, Health, Key, MemoryConfig, MemoryTier,
    Result, ScanCursor, ScanPage, Tier, TierSize, TieredCache, Ttl, async_trait,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
}

fn memory(ttl_secs: u64) -> MemoryTier {
    MemoryTier::new(&MemoryConfig::with_max_entries(10_000).ttl(Duration::from_secs(ttl_secs)))
        .unwrap()
}

fn book_key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

#[derive(Debug, thiserror::Error)]
#[error("upstream answered 503")]
struct Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_callers_cause_exactly_one_fetch() {
    let cache = TieredCache::builder().tier(memory(3600)).build();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let cache = cache.clone();
        let fetches = Arc::clone(&fetches);
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch(&book_key("B002V1A0WE"), Ttl::TierDefault, |_| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    // Long enough that every caller arrives while it runs.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, Upstream>(Book {
                        asin: "B002V1A0WE".into(),
                        title: "Dune".into(),
                    })
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().title, "Dune");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let stats = cache.stats().sources["audnexus:book"];
    assert_eq!(stats.fetches, 1);
    // Callers either found the value, waited on the one fetch, or (arriving
    // just after it finished) found it on their second look.
    assert!(stats.coalesced > 0, "{stats:?}");
    assert!(stats.hits + stats.coalesced <= 999, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_is_not_cached_and_every_waiter_gets_the_error() {
    let cache = TieredCache::builder().tier(memory(3600)).build();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let fetches = Arc::clone(&fetches);
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_fetch::<Book, _, _, _>(&book_key("X"), Ttl::TierDefault, |_| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    // Long enough for all 50 callers to join, even on a busy machine.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Err(Upstream)
                })
                .await
        }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fetch);
        assert!(err.source_as::<Upstream>().is_some(), "{err:?}");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert!(cache.get::<Book>(&book_key("X")).await.is_none());
    // The next call fetches again: failures are not cached.
    let book = cache
        .get_or_fetch(&book_key("X"), Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>(Book {
                asin: "X".into(),
                title: "Found".into(),
            })
        })
        .await
        .unwrap();
    assert_eq!(book.title, "Found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_fetch_does_not_wedge_the_key() {
    let cache = TieredCache::builder().tier(memory(3600)).build();
    let started = Arc::new(tokio::sync::Notify::new());
    let leader = {
        let cache = cache.clone();
        let started = Arc::clone(&started);
        tokio::spawn(async move {
            cache
                .get_or_fetch::<Book, _, _, _>(&book_key("P"), Ttl::TierDefault, |_| async move {
                    started.notify_one();
                    // Long enough for the waiter to join, even on a busy machine.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    panic!("fetch bug");
                    #[allow(unreachable_code)]
                    Ok::<_, Upstream>(Book {
                        asin: String::new(),
                        title: String::new(),
                    })
                })
                .await
        })
    };
    started.notified().await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_fetch::<Book, _, _, _>(&book_key("P"), Ttl::TierDefault, |_| async {
                    Ok::<_, Upstream>(Book {
                        asin: "P".into(),
                        title: "second".into(),
                    })
                })
                .await
        })
    };
    assert!(
        leader.await.unwrap_err().is_panic(),
        "the panic reaches the caller that ran the fetch"
    );
    let waited = waiter.await.unwrap();
    assert_eq!(waited.unwrap_err().kind(), ErrorKind::FetchPanicked);
    // The key is usable again at once.
    let book = tokio::time::timeout(
        Duration::from_secs(2),
        cache.get_or_fetch(&book_key("P"), Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>(Book {
                asin: "P".into(),
                title: "third".into(),
            })
        }),
    )
    .await
    .expect("not wedged")
    .unwrap();
    assert_eq!(book.title, "third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let cache = TieredCache::builder().tier(memory(3600)).build();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_fetch::<Book, _, _, _>(&book_key("C"), Ttl::TierDefault, |_| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, Upstream>(Book {
                        asin: "C".into(),
                        title: "never".into(),
                    })
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_fetch::<Book, _, _, _>(&book_key("C"), Ttl::TierDefault, |_| async {
                    Ok::<_, Upstream>(Book {
                        asin: "C".into(),
                        title: "waiter".into(),
                    })
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let book = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("waiter took over")
        .unwrap()
        .unwrap();
    assert_eq!(book.title, "waiter");
}

/// A real memory tier whose operations can be made to fail, standing in for
/// a disk that filled up or a server that went away.
#[derive(Debug)]
struct Failing {
    inner: MemoryTier,
    broken: AtomicBool,
}

impl Failing {
    fn new() -> Self {
        Self {
            inner: memory(3600),
            broken: AtomicBool::new(false),
        }
    }

    fn check(&self) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(Error::new(ErrorKind::Unavailable, "injected failure"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Tier for Failing {
    fn name(&self) -> &'static str {
        "failing"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.check()?;
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        self.check()?;
        self.inner.clear(scope).await
    }
    async fn size(&self) -> Result<TierSize> {
        self.check()?;
        self.inner.size().await
    }
    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        self.check()?;
        self.inner.scan(cursor, limit).await
    }
    async fn health(&self) -> Health {
        match self.check() {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}

/// A real memory tier whose next `get` answers, then holds its answer
/// until released: a caller that looked a moment before another caller's
/// fetch finished.
#[derive(Debug)]
struct Held {
    inner: MemoryTier,
    hold_next: AtomicBool,
    parked: AtomicBool,
    release: tokio::sync::Notify,
}

#[async_trait]
impl Tier for Held {
    fn name(&self) -> &'static str {
        "held"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let found = self.inner.get(key).await;
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.parked.store(true, Ordering::SeqCst);
            self.release.notified().await;
        }
        found
    }
    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        self.inner.clear(scope).await
    }
    async fn size(&self) -> Result<TierSize> {
        self.inner.size().await
    }
    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        self.inner.scan(cursor, limit).await
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// A caller whose lookup missed just before another caller's fetch wrote
/// the value and ended its flight leads a flight of its own, and looks
/// once more before fetching: it reads the value, the source is asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_looks_again_before_fetching_so_a_late_caller_does_not_fetch_twice() {
    let held = Arc::new(Held {
        inner: memory(3600),
        hold_next: AtomicBool::new(true),
        parked: AtomicBool::new(false),
        release: tokio::sync::Notify::new(),
    });
    let cache = TieredCache::builder().shared_tier(held.clone()).build();
    let fetches = Arc::new(AtomicUsize::new(0));
    let k = book_key("LATE");
    let late = {
        let (cache, fetches, k) = (cache.clone(), Arc::clone(&fetches), k.clone());
        tokio::spawn(async move {
            cache
                .get_or_fetch(&k, Ttl::TierDefault, |_| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Upstream>("fetched late".to_string())
                })
                .await
        })
    };
    while !held.parked.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The late caller has missed; meanwhile this one fetches and is done.
    let first = {
        let fetches = Arc::clone(&fetches);
        cache
            .get_or_fetch(&k, Ttl::TierDefault, |_| async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Upstream>("fetched first".to_string())
            })
            .await
            .unwrap()
    };
    assert_eq!(*first, "fetched first");
    held.release.notify_one();
    let late = late.await.unwrap().unwrap();
    assert_eq!(*late, "fetched first", "the late caller fetched again");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_tier_is_skipped_and_counted() {
    let failing = Arc::new(Failing::new());
    let cache = TieredCache::builder()
        .shared_tier(failing.clone())
        .tier(memory(3600))
        .build();
    let k = book_key("F");
    cache
        .set(&k, "v1".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    failing.broken.store(true, Ordering::SeqCst);

    // Reads fall through to the working tier.
    assert_eq!(
        cache.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("v1")
    );
    // Writes succeed for the caller, and reach the working tier.
    cache
        .set(&k, "v2".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    // A fetch is never turned into an error by the broken tier.
    let fetched = cache
        .get_or_fetch(&book_key("G"), Ttl::TierDefault, |_| async {
            Ok::<_, Upstream>(7u32)
        })
        .await
        .unwrap();
    assert_eq!(*fetched, 7);

    let stats = cache.stats();
    let broken = stats.layer("failing").unwrap();
    assert!(broken.errors >= 2, "{broken:?}");
    assert!(broken.write_errors >= 2, "{broken:?}");
    assert_eq!(stats.layer("memory").unwrap().hits, 1);
    // Deleting reports the failure, after deleting where it could.
    let err = cache.delete(&k).await.unwrap_err();
    assert_eq!(err.tier(), Some("failing"));
    failing.broken.store(false, Ordering::SeqCst);
    assert_eq!(
        cache.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("v1"),
        "the failing tier still holds its old copy"
    );
    let health = cache.health().await;
    assert_eq!(health[0].1, Health::Healthy);
}

#[tokio::test]
async fn write_through_gives_each_tier_its_own_ttl() {
    let l1 = Arc::new(memory(3600));
    let l2 = Arc::new(memory(7 * 86400));
    let cache = TieredCache::builder()
        .shared_tier(l1.clone())
        .shared_tier(l2.clone())
        .build();
    let k = book_key("T");
    let now = tierstack::Timestamp::now();
    cache.set(&k, 1u8, Ttl::TierDefault).await.unwrap();
    let in_l1 = l1.get(&k).await.unwrap().unwrap().header.expires_at;
    let in_l2 = l2.get(&k).await.unwrap().unwrap().header.expires_at;
    let hour = in_l1.remaining_from(now).unwrap();
    let week = in_l2.remaining_from(now).unwrap();
    assert!(
        hour <= Duration::from_secs(3601) && hour >= Duration::from_secs(3590),
        "{hour:?}"
    );
    assert!(week >= Duration::from_secs(7 * 86400 - 10), "{week:?}");

    // An explicit TTL is capped by each tier.
    cache
        .set(&k, 2u8, Duration::from_secs(2 * 86400))
        .await
        .unwrap();
    let in_l1 = l1.get(&k).await.unwrap().unwrap().header.expires_at;
    let in_l2 = l2.get(&k).await.unwrap().unwrap().header.expires_at;
    assert!(in_l1.remaining_from(now).unwrap() <= Duration::from_secs(3601));
    let two_days = in_l2.remaining_from(now).unwrap();
    assert!(
        two_days <= Duration::from_secs(2 * 86400 + 1)
            && two_days >= Duration::from_secs(2 * 86400 - 10)
    );
}

#[tokio::test]
async fn an_l1_hit_returns_the_same_allocation_without_decoding() {
    let cache = TieredCache::builder().tier(memory(3600)).build();
    let k = book_key("A");
    let book = Book {
        asin: "A".into(),
        title: "x".repeat(100_000),
    };
    cache.set(&k, book.clone(), Ttl::TierDefault).await.unwrap();
    let first = cache.get::<Book>(&k).await.unwrap();
    let second = cache.get::<Book>(&k).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second), "hits share one Arc");
    assert_eq!(*first, book);
}

#[tokio::test]
async fn copy_up_fills_the_upper_tier_so_the_next_read_hits_it() {
    let l1 = Arc::new(memory(3600));
    let l2 = Arc::new(memory(86400));
    let writer = TieredCache::builder().shared_tier(l2.clone()).build();
    let k = book_key("U");
    writer
        .set(&k, "below".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .shared_tier(l1.clone())
        .shared_tier(l2)
        .build();
    assert!(cache.get::<String>(&k).await.is_some());
    assert!(cache.get::<String>(&k).await.is_some());
    let stats = cache.stats();
    assert_eq!(stats.layers[0].hits, 1, "second read hit L1");
    assert_eq!(stats.layers[1].hits, 1, "first read hit L2");
    assert_eq!(stats.sources["audnexus:book"].hits, 2);
}

/// A stale entry (past its expiry, inside its stale window) is not a hit:
/// the next tier is asked, and its fresh value is served and copied up,
/// by `get` and by `get_or_fetch` (which then does not fetch).
#[tokio::test]
async fn a_stale_l1_entry_over_a_fresh_l2_asks_l2() {
    let window = Duration::from_secs(3600);
    for through_fetch in [false, true] {
        let l1 = Arc::new(memory(3600));
        let l2 = Arc::new(memory(86400));
        let k = book_key("STALE");
        // L1 alone gets "old" for 50 ms plus an hour's stale window ...
        TieredCache::builder()
            .shared_tier(l1.clone())
            .stale_for(window)
            .build()
            .set(&k, "old".to_string(), Duration::from_millis(50))
            .await
            .unwrap();
        // ... and L2 alone a fresh "new".
        TieredCache::builder()
            .shared_tier(l2.clone())
            .build()
            .set(&k, "new".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let cache = TieredCache::builder()
            .shared_tier(l1.clone())
            .shared_tier(l2)
            .stale_for(window)
            .build();
        let got = if through_fetch {
            cache
                .get_or_fetch(&k, Ttl::TierDefault, |_| async {
                    Ok::<_, Upstream>("fetched".to_string())
                })
                .await
                .unwrap()
        } else {
            cache
                .get::<String>(&k)
                .await
                .expect("L2 holds a fresh value")
        };
        assert_eq!(*got, "new", "through_fetch={through_fetch}");
        let stats = cache.stats();
        assert_eq!(stats.layers[0].hits, 0, "{stats:?}");
        assert_eq!(stats.layers[0].expired, 1, "{stats:?}");
        assert_eq!(stats.layers[1].hits, 1, "{stats:?}");
        assert_eq!(stats.sources["audnexus:book"].fetches, 0, "{stats:?}");
        // The fresh value was copied up over the stale one.
        assert_eq!(
            cache.get::<String>(&k).await.as_deref().map(String::as_str),
            Some("new")
        );
        assert_eq!(cache.stats().layers[0].hits, 1);
    }
}

#[tokio::test]
async fn a_disabled_cache_passes_every_call_through() {
    let tier = Arc::new(memory(3600));
    let cache = TieredCache::builder()
        .shared_tier(tier.clone())
        .enabled(false)
        .build();
    let k = book_key("D");
    cache.set(&k, 1u32, Ttl::TierDefault).await.unwrap();
    assert!(tier.get(&k).await.unwrap().is_none(), "nothing written");
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = cache
            .get_or_fetch(&k, Ttl::TierDefault, |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Upstream>(5u32)
            })
            .await
            .unwrap();
        assert_eq!(*v, 5);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(cache.get::<u32>(&k).await.is_none());
}

#[tokio::test]
async fn an_unencodable_value_is_an_encode_error() {
    let cache = TieredCache::builder()
        .tier(memory(3600))
        .codec(tierstack::Codec::Json)
        .build();
    let mut map = std::collections::HashMap::new();
    map.insert((1u8, 2u8), "tuple keys are not JSON".to_string());
    let err = cache
        .set(&book_key("E"), map, Ttl::TierDefault)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode);
}

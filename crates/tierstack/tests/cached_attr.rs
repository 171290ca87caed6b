//! `#[tierstack::cached]`: the RFC's two integration points as one
//! attribute each, every return shape, the ways to name the cache, and
//! the companions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tierstack::{
    Config, ErrorKind, GlobalCache, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier,
    TieredCache, blocking,
};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Book {
    title: String,
}

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("the API answered 503")]
    Upstream,
    #[error(transparent)]
    Cache(#[from] tierstack::Error),
}

fn memory() -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("memory"))
        .build()
}

static SEARCH: GlobalCache = GlobalCache::new();
static SEARCHES: AtomicU32 = AtomicU32::new(0);

/// The RFC's `@cached(ttl=3600)` on `search_books(query, author=None)`.
#[tierstack::cached(cache = SEARCH, source = "audnexus:search", ttl = "1h")]
async fn search_books(q: &str, author: Option<&str>) -> Result<Vec<Book>, ApiError> {
    SEARCHES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(vec![Book {
        title: format!("{q} by {}", author.unwrap_or("anyone")),
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_books_is_one_attribute_with_the_rfc_key_and_one_fetch_for_a_thousand_callers() {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = SqliteTier::open(&SqliteConfig::new(dir.path().join("s.db")), 1)
        .await
        .expect("sqlite");
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).expect("memory"))
        .tier(sqlite)
        .build();
    assert!(SEARCH.set(cache).is_ok(), "set once");
    assert_eq!(
        search_books_key("dune", Some("herbert")).as_str(),
        "audnexus:search:author=herbert&q=dune"
    );
    assert_eq!(
        search_books_key("dune", None).as_str(),
        "audnexus:search:q=dune"
    );

    let calls: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async { search_books("dune", Some("herbert")).await }))
        .collect();
    for call in calls {
        let books = call.await.expect("task").expect("books");
        assert_eq!(books[0].title, "dune by herbert");
    }
    assert_eq!(
        SEARCHES.load(Ordering::SeqCst),
        1,
        "1000 callers, 1 upstream call"
    );
    let stats = SEARCH.get().expect("set").stats();
    assert_eq!(stats.sources["audnexus:search"].fetches, 1);
    assert_eq!(stats.layer("sqlite").expect("sqlite").writes, 1);

    // The companion removes one call's entry: the next call fetches again.
    assert!(
        search_books_invalidate("dune", Some("herbert"))
            .await
            .expect("invalidate")
    );
    search_books("dune", Some("herbert")).await.expect("books");
    assert_eq!(SEARCHES.load(Ordering::SeqCst), 2);
}

static PATHS: GlobalCache<blocking::TieredCache> = GlobalCache::new();
static EXTRACTIONS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct PathInfo {
    genre: String,
    title: String,
}

/// The RFC's synchronous `extract_path_info(path)`, through the blocking
/// API.
#[tierstack::cached(cache = PATHS, source = "pathinfo", ttl = "1h")]
fn extract_path_info(path: &str) -> PathInfo {
    EXTRACTIONS.fetch_add(1, Ordering::SeqCst);
    let mut parts = path.trim_matches('/').split('/').skip(1);
    PathInfo {
        genre: parts.next().unwrap_or_default().to_owned(),
        title: parts.next().unwrap_or_default().to_owned(),
    }
}

#[test]
fn extract_path_info_is_one_attribute_on_a_plain_function() {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = format!(
        "cache:\n  location: {:?}\n",
        dir.path().display().to_string()
    );
    let config = Config::parse(&yaml, "yaml").expect("config");
    let cache = blocking::TieredCache::from_config(&config).expect("cache");
    assert!(PATHS.set(cache).is_ok(), "set once");
    assert_eq!(
        extract_path_info_key("/audiobooks/fantasy/dune").as_str(),
        "pathinfo:path=/audiobooks/fantasy/dune"
    );
    for _ in 0..3 {
        let info = extract_path_info("/audiobooks/fantasy/dune");
        assert_eq!(info.genre, "fantasy");
        assert_eq!(info.title, "dune");
    }
    assert_eq!(EXTRACTIONS.load(Ordering::SeqCst), 1);
    // Threads share one call too.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| extract_path_info("/audiobooks/scifi/emma"));
        }
    });
    assert_eq!(EXTRACTIONS.load(Ordering::SeqCst), 2);
    assert!(extract_path_info_invalidate("/audiobooks/fantasy/dune").expect("invalidate"));
    extract_path_info("/audiobooks/fantasy/dune");
    assert_eq!(EXTRACTIONS.load(Ordering::SeqCst), 3);
}

static LOOKUPS: AtomicU32 = AtomicU32::new(0);

/// `Option<T>` with the cache as a parameter; `None` is cached.
#[tierstack::cached(source = "books", skip(verbose))]
async fn find_book(#[cache] cache: &TieredCache, id: u32, verbose: bool) -> Option<Book> {
    let _ = verbose;
    LOOKUPS.fetch_add(1, Ordering::SeqCst);
    (id < 10).then(|| Book {
        title: format!("book {id}"),
    })
}

#[tokio::test(flavor = "current_thread")]
async fn none_is_cached_and_skipped_parameters_are_not_key_material() {
    let cache = memory();
    assert_eq!(find_book_key(&cache, 3, true).as_str(), "books:id=3");
    assert_eq!(
        find_book(&cache, 3, true).await.expect("found").title,
        "book 3"
    );
    assert_eq!(
        find_book(&cache, 3, false).await.expect("found").title,
        "book 3"
    );
    assert_eq!(find_book(&cache, 42, true).await, None);
    assert_eq!(find_book(&cache, 42, true).await, None);
    assert_eq!(
        LOOKUPS.load(Ordering::SeqCst),
        2,
        "one call per id, None too"
    );
    assert_eq!(cache.stats().sources["books"].negative_hits, 1);
}

static BRIEF_LOOKUPS: AtomicU32 = AtomicU32::new(0);

/// A "not found" kept 100 ms instead of the source's 5 minutes.
#[tierstack::cached(source = "brief", negative_ttl = "100ms")]
async fn brief_lookup(#[cache] cache: &TieredCache, id: u32) -> Option<u32> {
    BRIEF_LOOKUPS.fetch_add(1, Ordering::SeqCst);
    (id == 0).then_some(0)
}

#[tokio::test(flavor = "current_thread")]
async fn a_per_call_negative_ttl_bounds_how_long_none_is_cached() {
    let cache = memory();
    assert_eq!(brief_lookup(&cache, 5).await, None);
    assert_eq!(brief_lookup(&cache, 5).await, None);
    assert_eq!(BRIEF_LOOKUPS.load(Ordering::SeqCst), 1, "None cached");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(brief_lookup(&cache, 5).await, None);
    assert_eq!(
        BRIEF_LOOKUPS.load(Ordering::SeqCst),
        2,
        "asked again after 100 ms"
    );
}

static REFRESHED: GlobalCache = GlobalCache::new();
static VERSIONS: AtomicU32 = AtomicU32::new(0);

#[tierstack::cached(cache = REFRESHED, source = "versions")]
async fn version(name: &str) -> u32 {
    let _ = name;
    VERSIONS.fetch_add(1, Ordering::SeqCst) + 1
}

#[tokio::test(flavor = "current_thread")]
async fn the_refresh_companion_fetches_and_caches_again() {
    assert!(REFRESHED.set(memory()).is_ok(), "set once");
    assert_eq!(version("a").await, 1);
    assert_eq!(version("a").await, 1, "cached");
    assert_eq!(version_refresh("a").await, 2, "fetched again");
    assert_eq!(version("a").await, 2, "the refreshed answer is cached");
}

static FAILING: GlobalCache = GlobalCache::new();
static ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// `Result<Option<Arc<T>>, E>` with a renamed parameter.
#[tierstack::cached(cache = FAILING, source = "audnexus:book", rename(asin_code = "asin"))]
async fn book(asin_code: &str) -> Result<Option<Arc<Book>>, ApiError> {
    let n = ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        return Err(ApiError::Upstream);
    }
    Ok((asin_code != "missing").then(|| {
        Arc::new(Book {
            title: asin_code.to_owned(),
        })
    }))
}

#[tokio::test(flavor = "current_thread")]
async fn errors_are_not_cached_and_come_back_as_the_functions_own() {
    assert!(FAILING.set(memory()).is_ok(), "set once");
    assert_eq!(book_key("B1").as_str(), "audnexus:book:asin=B1");
    let first = book("B1").await;
    assert!(matches!(first, Err(ApiError::Upstream)), "{first:?}");
    let second = book("B1").await.expect("ok").expect("some");
    let third = book("B1").await.expect("ok").expect("some");
    assert!(
        Arc::ptr_eq(&second, &third),
        "an Arc<T> return shares the cached value"
    );
    assert_eq!(book("missing").await.expect("ok"), None);
    assert_eq!(book("missing").await.expect("ok"), None);
    assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 3);

    // The cache's own errors arrive as the function's error type.
    FAILING.get().expect("set").set_offline(true);
    match book("B2").await {
        Err(ApiError::Cache(e)) => assert_eq!(e.kind(), ErrorKind::Unavailable),
        other => panic!("expected the cache's offline error, got {other:?}"),
    }
    FAILING.get().expect("set").set_offline(false);
}

static UNSET: GlobalCache = GlobalCache::new();

#[tierstack::cached(cache = UNSET, source = "unset")]
async fn before_set(n: u32) -> Result<u32, ApiError> {
    Ok(n)
}

#[tierstack::cached(cache = UNSET, source = "unset")]
async fn plain_before_set(n: u32) -> u32 {
    n * 2
}

#[tokio::test(flavor = "current_thread")]
async fn a_global_cache_used_before_it_is_set_is_an_error_or_an_uncached_call() {
    match before_set(1).await {
        Err(ApiError::Cache(e)) => {
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(e.to_string().contains("GlobalCache::set"), "{e}");
        }
        other => panic!("expected a cache error, got {other:?}"),
    }
    assert_eq!(
        plain_before_set(21).await,
        42,
        "a plain function still answers"
    );
}

struct Catalog {
    cache: TieredCache,
    fetched: AtomicU32,
}

impl Catalog {
    /// A method, with the cache in a field.
    #[tierstack::cached(cache = self.cache, source = "catalog", ttl = "10m")]
    async fn title(&self, id: u64) -> String {
        self.fetched.fetch_add(1, Ordering::SeqCst);
        format!("title {id}")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_method_finds_its_cache_in_a_field() {
    let catalog = Catalog {
        cache: memory(),
        fetched: AtomicU32::new(0),
    };
    assert_eq!(catalog.title(7).await, "title 7");
    assert_eq!(catalog.title(7).await, "title 7");
    assert_eq!(catalog.fetched.load(Ordering::SeqCst), 1);
    assert_eq!(catalog.title_key(7).as_str(), "catalog:id=7");
    assert!(catalog.title_invalidate(7).await.expect("invalidate"));
}

static LIFETIMES: GlobalCache = GlobalCache::new();

/// Lifetime parameters are fine, and reach the companions.
#[tierstack::cached(cache = LIFETIMES, source = "lifetimes")]
async fn upper<'a>(text: &'a str) -> Option<String> {
    Some(text.to_uppercase())
}

#[tokio::test(flavor = "current_thread")]
async fn a_function_with_a_lifetime_parameter_is_cached() {
    assert!(LIFETIMES.set(memory()).is_ok(), "set once");
    assert_eq!(upper("dune").await.as_deref(), Some("DUNE"));
    assert_eq!(upper_key("dune").as_str(), "lifetimes:text=dune");
    assert!(upper_invalidate("dune").await.expect("invalidate"));
}

/// A whole key expression.
#[tierstack::cached(
    cache = SEARCH_BY_KEY,
    key = "tierstack::Key::new(\"isbn\", [(\"n\", isbn.replace('-', \"\"))])"
)]
async fn by_isbn(isbn: &str) -> Result<String, ApiError> {
    Ok(format!("book {isbn}"))
}

static SEARCH_BY_KEY: GlobalCache = GlobalCache::new();

#[tokio::test(flavor = "current_thread")]
async fn a_key_expression_replaces_the_parameters() {
    assert!(SEARCH_BY_KEY.set(memory()).is_ok(), "set once");
    assert_eq!(by_isbn_key("978-0441").as_str(), "isbn:n=9780441");
    assert_eq!(by_isbn("978-0441").await.expect("ok"), "book 978-0441");
    // Another spelling of the same ISBN is the same entry.
    assert_eq!(by_isbn("9780441").await.expect("ok"), "book 978-0441");
}

/// Waits, bounded, until `counter` reaches `at_least`.
async fn until(counter: &AtomicU32, at_least: u32) {
    for _ in 0..400 {
        if counter.load(Ordering::SeqCst) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("counter stayed at {}", counter.load(Ordering::SeqCst));
}

/// Waits, bounded, until the cache's memory tier answers `expected` for
/// the key (a refresh stores its answer after the body returned).
async fn until_cached<T: tierstack::CacheValue + PartialEq + std::fmt::Debug>(
    cache: &TieredCache,
    key: &tierstack::Key,
    expected: &T,
) {
    for _ in 0..400 {
        if cache.get::<T>(key).await.as_deref() == Some(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} never held {expected:?}");
}

static AHEAD: AtomicU32 = AtomicU32::new(0);

/// Owned parameters: the body can run again after the call returned.
#[tierstack::cached(source = "ahead", ttl = "2s", refresh_ahead = 0.5)]
async fn ahead(#[cache] cache: &TieredCache, name: String) -> Result<u32, ApiError> {
    let _ = name;
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(AHEAD.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test(flavor = "current_thread")]
async fn refresh_ahead_answers_a_late_hit_at_once_and_refreshes_it_once_in_the_background() {
    let cache = memory();
    let name = || "dune".to_owned();
    assert_eq!(ahead(&cache, name()).await.expect("fetched"), 1);
    assert_eq!(ahead(&cache, name()).await.expect("hit"), 1);
    assert_eq!(
        AHEAD.load(Ordering::SeqCst),
        1,
        "an early hit does not refresh"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A hundred late hits: each answered with the current value, one refresh.
    let late = futures_util::future::join_all((0..100).map(|_| ahead(&cache, name()))).await;
    assert!(late.iter().all(|v| matches!(v, Ok(1))), "{late:?}");
    until(&AHEAD, 2).await;
    until_cached(&cache, &ahead_key(&cache, name()), &2_u32).await;
    assert_eq!(ahead(&cache, name()).await.expect("refreshed"), 2);
    assert_eq!(
        AHEAD.load(Ordering::SeqCst),
        2,
        "one refresh for 100 late hits"
    );
    assert_eq!(cache.stats().sources["ahead"].refreshes, 1);
    assert_eq!(
        cache.stats().sources["ahead"].fetches,
        1,
        "the refresh is not a miss"
    );
}

static VANISHING: AtomicU32 = AtomicU32::new(0);

/// The second answer is `None`: a refresh stores it as a negative entry.
#[tierstack::cached(
    source = "vanishing",
    ttl = "2s",
    negative_ttl = "1h",
    refresh_ahead = 0.5
)]
async fn vanishing(#[cache] cache: &TieredCache, id: u64) -> Option<u64> {
    (VANISHING.fetch_add(1, Ordering::SeqCst) == 0).then_some(id)
}

static FLAKY: AtomicU32 = AtomicU32::new(0);

/// The second answer is an error: the current value stays.
#[tierstack::cached(source = "flaky", ttl = "2s", refresh_ahead = 0.5)]
async fn flaky(#[cache] cache: &TieredCache, id: u64) -> Result<u64, ApiError> {
    if FLAKY.fetch_add(1, Ordering::SeqCst) == 0 {
        Ok(id)
    } else {
        Err(ApiError::Upstream)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_refresh_that_answers_none_stores_it_and_one_that_fails_keeps_the_value() {
    let cache = memory();
    assert_eq!(vanishing(&cache, 7).await, Some(7));
    assert_eq!(flaky(&cache, 7).await.expect("fetched"), 7);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        vanishing(&cache, 7).await,
        Some(7),
        "late hit, current value"
    );
    assert_eq!(flaky(&cache, 7).await.expect("late hit"), 7);
    until(&VANISHING, 2).await;
    until(&FLAKY, 2).await;
    // Both refreshes are done once the flag that lets a key refresh again
    // is down; a negative entry reads as a miss to `get`.
    for _ in 0..400 {
        if cache.get::<u64>(&vanishing_key(&cache, 7)).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(vanishing(&cache, 7).await, None, "the refreshed None");
    assert_eq!(
        VANISHING.load(Ordering::SeqCst),
        2,
        "None is cached, not fetched again"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        flaky(&cache, 7).await.expect("kept"),
        7,
        "the failed refresh kept it"
    );
    // The entry is still late, so that hit tried again.
    assert_eq!(cache.stats().sources["flaky"].refreshes, 2);
}

static PLAIN_AHEAD: AtomicU32 = AtomicU32::new(0);

/// A plain function: its refresh runs on the blocking cache's own runtime.
#[tierstack::cached(source = "plain_ahead", ttl = "2s", refresh_ahead = 0.5)]
fn plain_ahead(#[cache] cache: &blocking::TieredCache, path: String) -> u32 {
    let _ = path;
    PLAIN_AHEAD.fetch_add(1, Ordering::SeqCst) + 1
}

#[test]
fn refresh_ahead_on_a_plain_function_refreshes_without_a_runtime_of_the_callers() {
    let cache = blocking::TieredCache::build(|| async { Ok(memory()) }).expect("cache");
    let path = || "/audiobooks/dune".to_owned();
    assert_eq!(plain_ahead(&cache, path()), 1);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(plain_ahead(&cache, path()), 1, "late hit, current value");
    let key = plain_ahead_key(&cache, path());
    for _ in 0..400 {
        if cache.get::<u32>(&key).as_deref() == Some(&2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        plain_ahead(&cache, path()),
        2,
        "refreshed in the background"
    );
    assert_eq!(PLAIN_AHEAD.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().sources["plain_ahead"].refreshes, 1);
}

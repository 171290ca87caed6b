//! Revalidation against a real HTTP API on loopback that sends ETags and
//! answers `If-None-Match` with `304 Not Modified`: expired entries are
//! made fresh again in every tier without a body, changed ones are
//! fetched, and validators a `304` brings replace the stored ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tierstack::{
    ErrorKind, FetchContext, FetchOptions, Fetched, Key, MemoryConfig, MemoryTier, RedbConfig,
    RedbTier, ResponseMeta, Revalidated, SqliteConfig, SqliteTier, TieredCache, Timestamp,
};

/// What the API did, by kind of answer.
#[derive(Default)]
struct Counts {
    full: AtomicU64,
    not_modified: AtomicU64,
    body_bytes: AtomicU64,
}

/// Each book's version, which its ETag names; a test bumps one to change it.
struct Api {
    base: String,
    counts: Arc<Counts>,
    versions: Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>>,
    /// When set, a 304 carries this version's ETag instead of the stored one.
    rotate_etag_on_304: Arc<std::sync::atomic::AtomicBool>,
}

async fn start_api() -> Api {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    let counts = Arc::new(Counts::default());
    let versions = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let rotate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, v, r) = (
        Arc::clone(&counts),
        Arc::clone(&versions),
        Arc::clone(&rotate),
    );
    let app = axum::Router::new().route(
        "/books/{id}",
        axum::routing::get(
            move |axum::extract::Path(id): axum::extract::Path<u64>, headers: HeaderMap| {
                let (counts, versions, rotate) = (Arc::clone(&c), Arc::clone(&v), Arc::clone(&r));
                async move {
                    let version = *versions.lock().unwrap().entry(id).or_insert(1);
                    let etag = format!("\"{id}-v{version}\"");
                    let sent = headers
                        .get(header::IF_NONE_MATCH)
                        .and_then(|v| v.to_str().ok());
                    if sent == Some(etag.as_str()) {
                        counts.not_modified.fetch_add(1, Ordering::SeqCst);
                        let etag = if rotate.load(Ordering::SeqCst) {
                            format!("\"{id}-v{version}-r\"")
                        } else {
                            etag
                        };
                        return (
                            StatusCode::NOT_MODIFIED,
                            [(header::ETAG, etag)],
                            String::new(),
                        )
                            .into_response();
                    }
                    if sent.is_some_and(|s| s == format!("\"{id}-v{version}-r\"")) {
                        counts.not_modified.fetch_add(1, Ordering::SeqCst);
                        return (
                            StatusCode::NOT_MODIFIED,
                            [(header::ETAG, etag)],
                            String::new(),
                        )
                            .into_response();
                    }
                    let body = format!("book {id} version {version}");
                    counts.full.fetch_add(1, Ordering::SeqCst);
                    counts
                        .body_bytes
                        .fetch_add(body.len() as u64, Ordering::SeqCst);
                    (StatusCode::OK, [(header::ETAG, etag)], body).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Api {
        base,
        counts,
        versions,
        rotate_etag_on_304: rotate,
    }
}

/// The fetch a user writes: a conditional request when the cache holds
/// validators, "not modified" on a 304.
async fn fetch_book(
    http: reqwest::Client,
    url: String,
    context: FetchContext,
) -> Result<Revalidated<String>, reqwest::Error> {
    let mut request = http.get(&url);
    if let Some(etag) = context.kept().and_then(ResponseMeta::etag_bytes) {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await?.error_for_status()?;
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.as_bytes().to_vec());
    let validators = etag.map_or_else(ResponseMeta::none, |e| ResponseMeta::none().etag(e));
    if response.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Revalidated::NotModified(validators));
    }
    Ok(Revalidated::Modified(response.text().await?, validators))
}

fn key(id: u64) -> Key {
    Key::new("books", [("id", id.to_string())])
}

async fn stack(dir: &std::path::Path) -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .tier(
            SqliteTier::open(&SqliteConfig::new(dir.join("books.db")), 1)
                .await
                .unwrap(),
        )
        .tier(
            RedbTier::open(&RedbConfig::new(dir.join("books.redb")), 1)
                .await
                .unwrap(),
        )
        .build()
}

const TTL: Duration = Duration::from_millis(400);

async fn read_all(
    cache: &TieredCache,
    api: &Api,
    http: &reqwest::Client,
    ids: &[u64],
) -> Vec<Fetched<String>> {
    let mut out = Vec::new();
    for &id in ids {
        let url = format!("{}/books/{id}", api.base);
        let http = http.clone();
        out.push(
            cache
                .get_or_revalidate_with(&key(id), FetchOptions::ttl(TTL), |context| {
                    fetch_book(http, url, context)
                })
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_revalidated_with_no_body_and_fresh_again_in_every_tier() {
    const N: u64 = 20;
    let api = start_api().await;
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let ids: Vec<u64> = (0..N).collect();

    let first = read_all(&cache, &api, &http, &ids).await;
    assert!(
        first.iter().all(|f| matches!(f, Fetched::Fetched(_))),
        "{first:?}"
    );
    assert_eq!(api.counts.full.load(Ordering::SeqCst), N);
    let bytes_after_first = api.counts.body_bytes.load(Ordering::SeqCst);

    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    let before = Timestamp::now();
    let second = read_all(&cache, &api, &http, &ids).await;
    for (id, answer) in ids.iter().zip(&second) {
        match answer {
            Fetched::Revalidated(v) => assert_eq!(**v, format!("book {id} version 1")),
            other => panic!("book {id}: {other:?}"),
        }
    }
    assert_eq!(
        api.counts.not_modified.load(Ordering::SeqCst),
        N,
        "N conditional requests, N 304s"
    );
    assert_eq!(
        api.counts.full.load(Ordering::SeqCst),
        N,
        "no second full answer"
    );
    assert_eq!(
        api.counts.body_bytes.load(Ordering::SeqCst),
        bytes_after_first,
        "no body transferred"
    );
    // Fresh again in every tier, made now, with the ETag kept.
    let now = Timestamp::now();
    for tier in cache.tiers() {
        for &id in &ids {
            let entry = tier
                .get(&key(id))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{}: book {id} missing", tier.name()));
            assert!(
                entry.header.is_fresh(now),
                "{}: book {id} not fresh",
                tier.name()
            );
            assert!(
                entry.header.created_at >= before,
                "{}: book {id} not renewed",
                tier.name()
            );
            assert_eq!(
                entry.extensions.etag(),
                Some(format!("\"{id}-v1\"").as_bytes()),
                "{}",
                tier.name()
            );
            // Kept past the stale window for the next revalidation.
            assert!(
                entry.header.retain_until > entry.header.stale_until,
                "{}",
                tier.name()
            );
        }
    }
    let third = read_all(&cache, &api, &http, &ids).await;
    assert!(
        third.iter().all(|f| matches!(f, Fetched::Cached(_))),
        "{third:?}"
    );
    let stats = cache.stats();
    assert_eq!(stats.sources["books"].revalidated, N);
    assert_eq!(stats.sources["books"].fetches, 2 * N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_resource_is_fetched_whole_and_a_new_etag_from_a_304_is_kept() {
    let api = start_api().await;
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    read_all(&cache, &api, &http, &[1, 2]).await;

    // Book 1 changes upstream; book 2's 304 brings a new ETag.
    api.versions.lock().unwrap().insert(1, 2);
    api.rotate_etag_on_304.store(true, Ordering::SeqCst);
    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    let answers = read_all(&cache, &api, &http, &[1, 2]).await;
    assert_eq!(
        answers[0],
        Fetched::Fetched(Arc::new("book 1 version 2".to_owned()))
    );
    assert_eq!(
        answers[1],
        Fetched::Revalidated(Arc::new("book 2 version 1".to_owned()))
    );
    for tier in cache.tiers() {
        let book1 = tier.get(&key(1)).await.unwrap().unwrap();
        assert_eq!(
            book1.extensions.etag(),
            Some(&b"\"1-v2\""[..]),
            "{}",
            tier.name()
        );
        let book2 = tier.get(&key(2)).await.unwrap().unwrap();
        assert_eq!(
            book2.extensions.etag(),
            Some(&b"\"2-v1-r\""[..]),
            "{}",
            tier.name()
        );
    }

    // The rotated ETag is what the next revalidation sends.
    api.rotate_etag_on_304.store(false, Ordering::SeqCst);
    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    let again = read_all(&cache, &api, &http, &[2]).await;
    assert_eq!(
        again[0],
        Fetched::Revalidated(Arc::new("book 2 version 1".to_owned()))
    );
    assert_eq!(api.counts.not_modified.load(Ordering::SeqCst), 2);
    assert_eq!(api.counts.full.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn not_modified_with_nothing_kept_is_an_error_and_no_validators_keep_nothing() {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .build();
    let k = key(9);
    let error = cache
        .get_or_revalidate::<String, _, _, _>(&k, TTL, |context| async move {
            assert!(context.kept().is_none(), "nothing is kept yet");
            Ok::<_, std::io::Error>(Revalidated::NotModified(ResponseMeta::none()))
        })
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Fetch);
    assert!(
        error.to_string().contains("no entry of the key is kept"),
        "{error}"
    );

    // A value stored without validators is not kept past its stale window.
    let short = FetchOptions::ttl(Duration::from_millis(50));
    cache
        .get_or_revalidate::<String, _, _, _>(&k, short, |_| async {
            Ok::<_, std::io::Error>(Revalidated::Modified(
                "plain".to_owned(),
                ResponseMeta::none(),
            ))
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let seen = cache
        .get_or_revalidate::<String, _, _, _>(&k, short, |context| async move {
            Ok::<_, std::io::Error>(Revalidated::Modified(
                format!("validators: {:?}", context.kept()),
                ResponseMeta::none(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(*seen, "validators: None");
}

#[tokio::test(flavor = "current_thread")]
async fn a_retention_of_zero_keeps_nothing_to_revalidate_and_last_modified_is_a_validator() {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .build();
    let at = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let stored = |options: FetchOptions, k: Key| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_revalidate::<String, _, _, _>(&k, options, |_| async move {
                    Ok::<_, std::io::Error>(Revalidated::Modified(
                        "v".to_owned(),
                        ResponseMeta::none().last_modified(at),
                    ))
                })
                .await
                .unwrap();
        }
    };
    let short = FetchOptions::ttl(Duration::from_millis(50));
    stored(short.retain_for(Duration::ZERO), key(1)).await;
    stored(short, key(2)).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    for (id, expected) in [(1, None), (2, Some(at))] {
        let seen = cache
            .get_or_revalidate::<String, _, _, _>(&key(id), short, |context| async move {
                let kept = context.kept().and_then(ResponseMeta::last_modified_at);
                Ok::<_, std::io::Error>(Revalidated::Modified(
                    format!("{kept:?}"),
                    ResponseMeta::none(),
                ))
            })
            .await
            .unwrap();
        assert_eq!(*seen, format!("{expected:?}"), "book {id}");
    }
}

#[test]
fn the_blocking_api_revalidates_with_a_plain_closure() {
    let cache = tierstack::blocking::TieredCache::build(|| async {
        Ok(TieredCache::builder()
            .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10))?)
            .build())
    })
    .unwrap();
    let short = FetchOptions::ttl(Duration::from_millis(50));
    let fetch = |context: FetchContext| -> Result<Revalidated<String>, std::io::Error> {
        Ok(match context.kept().and_then(ResponseMeta::etag_str) {
            Some("\"a\"") => Revalidated::NotModified(ResponseMeta::none()),
            _ => Revalidated::Modified("first".to_owned(), ResponseMeta::none().etag("\"a\"")),
        })
    };
    assert_eq!(
        *cache.get_or_revalidate(&key(1), short, fetch).unwrap(),
        "first"
    );
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(
        *cache.get_or_revalidate(&key(1), short, fetch).unwrap(),
        "first"
    );
    assert_eq!(cache.stats().sources["books"].revalidated, 1);
    // Fresh, but refused: revalidated again.
    let again = cache
        .get_or_revalidate_accepting(&key(1), short, |_: &String, _| false, fetch)
        .unwrap();
    assert!(matches!(again, Fetched::Revalidated(_)), "{again:?}");
    assert_eq!(cache.stats().sources["books"].revalidated, 2);
}

#[test]
fn the_blocking_api_serves_stale_while_a_plain_closure_revalidates_on_a_thread_of_its_own() {
    let cache = tierstack::blocking::TieredCache::build(|| async {
        Ok(TieredCache::builder()
            .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10))?)
            .build())
    })
    .unwrap();
    let options = FetchOptions::ttl(Duration::from_millis(50)).stale_for(Duration::from_secs(60));
    let modified = |value: &str| -> Result<Revalidated<String>, std::io::Error> {
        Ok(Revalidated::Modified(
            value.to_owned(),
            ResponseMeta::none(),
        ))
    };
    let first = cache
        .get_stale_while_revalidate(
            &key(2),
            options,
            |_: &String| None::<fn(FetchContext) -> _>,
            |_| modified("first"),
        )
        .unwrap();
    assert!(matches!(first, Fetched::Fetched(_)));
    std::thread::sleep(Duration::from_millis(80));
    let caller = std::thread::current().id();
    let (ran_on, on_thread) = std::sync::mpsc::channel();
    let stale = cache
        .get_stale_while_revalidate(
            &key(2),
            options,
            |_: &String| {
                Some(move |_| {
                    ran_on.send(std::thread::current().id()).unwrap();
                    modified("second")
                })
            },
            |_| panic!("a stale value was at hand"),
        )
        .unwrap();
    assert!(
        matches!(&stale, Fetched::Stale(v) if **v == "first"),
        "{stale:?}"
    );
    let thread = on_thread.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_ne!(thread, caller);
    let mut now = None;
    for _ in 0..50 {
        now = cache.get::<String>(&key(2));
        if now.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(now.as_deref().map(String::as_str), Some("second"));
}

#[derive(Debug, thiserror::Error)]
#[error("the API is down")]
struct Down;

#[tokio::test(flavor = "current_thread")]
async fn an_answers_own_freshness_wins_and_must_revalidate_is_never_served_stale() {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10)).unwrap())
        .stale_for(Duration::from_secs(3600))
        .build();
    // The call asks for an hour; the answers say 50 ms.
    let hour = FetchOptions::ttl(Duration::from_secs(3600));
    let answer = |meta: ResponseMeta| {
        move |_| async move { Ok::<_, Down>(Revalidated::Modified("v1".to_owned(), meta.etag("\"1\""))) }
    };
    let short = ResponseMeta::none().ttl(Duration::from_millis(50));
    cache
        .get_or_revalidate(&key(1), hour, answer(short.clone()))
        .await
        .unwrap();
    cache
        .get_or_revalidate(&key(2), hour, answer(short.must_revalidate()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let down = |_| async { Err::<Revalidated<String>, _>(Down) };
    // Inside the cache's stale window: book 1 is served stale, book 2 not.
    let stale = cache
        .get_or_revalidate_with(&key(1), hour, down)
        .await
        .unwrap();
    assert_eq!(stale, Fetched::Stale(Arc::new("v1".to_owned())));
    let error = cache
        .get_or_revalidate_with(&key(2), hour, down)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Fetch, "{error}");
    // It is still kept for a revalidation.
    let again = cache
        .get_or_revalidate_with(&key(2), hour, |context| async move {
            assert_eq!(
                context.kept().and_then(ResponseMeta::etag_str),
                Some("\"1\"")
            );
            Ok::<_, Down>(Revalidated::NotModified(ResponseMeta::none()))
        })
        .await
        .unwrap();
    assert_eq!(again, Fetched::Revalidated(Arc::new("v1".to_owned())));
}

#[tokio::test(flavor = "current_thread")]
async fn an_updated_answer_made_from_the_kept_value_replaces_it_and_counts_as_revalidated() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let short = FetchOptions::ttl(Duration::from_millis(50));
    cache
        .get_or_revalidate(&key(1), short, |_| async {
            Ok::<_, Down>(Revalidated::Modified(
                vec!["date: monday".to_owned()],
                ResponseMeta::none().etag("\"1\""),
            ))
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let updated = cache
        .get_or_revalidate_with(&key(1), short, |context| async move {
            let mut kept: Vec<String> = context
                .kept_value::<Vec<String>>()
                .map(|v| (*v).clone())
                .expect("the kept value");
            assert!(context.kept_value::<u64>().is_none(), "another type");
            kept[0] = "date: tuesday".to_owned();
            Ok::<_, Down>(Revalidated::Updated(kept, ResponseMeta::none()))
        })
        .await
        .unwrap();
    assert_eq!(
        updated,
        Fetched::Revalidated(Arc::new(vec!["date: tuesday".to_owned()]))
    );
    assert_eq!(cache.stats().sources["books"].revalidated, 1);
    // Every tier holds the new value, with the ETag kept.
    let now = Timestamp::now();
    for tier in cache.tiers() {
        let entry = tier.get(&key(1)).await.unwrap().unwrap();
        assert!(entry.header.is_fresh(now), "{}", tier.name());
        assert_eq!(
            entry.extensions.etag(),
            Some(&b"\"1\""[..]),
            "{}",
            tier.name()
        );
    }
    let read = cache.get::<Vec<String>>(&key(1)).await.unwrap();
    assert_eq!(read[0], "date: tuesday");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_value_served_while_revalidating_is_made_fresh_in_every_tier_by_one_background_fetch()
 {
    let api = start_api().await;
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let options = FetchOptions::ttl(TTL).stale_for(Duration::from_secs(60));
    let url = format!("{}/books/7", api.base);
    let read = |accept: bool| {
        let (cache, http, url) = (cache.clone(), http.clone(), url.clone());
        async move {
            let background = (http.clone(), url.clone());
            cache
                .get_stale_while_revalidate(
                    &key(7),
                    options,
                    move |_stale: &String| {
                        accept.then_some(move |context| {
                            let (http, url) = background;
                            fetch_book(http, url, context)
                        })
                    },
                    |context| fetch_book(http, url, context),
                )
                .await
                .unwrap()
        }
    };
    assert!(matches!(read(true).await, Fetched::Fetched(_)));
    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    // Declined: revalidated before it is answered.
    assert!(matches!(read(false).await, Fetched::Revalidated(_)));
    assert_eq!(api.counts.not_modified.load(Ordering::SeqCst), 1);
    tokio::time::sleep(TTL + Duration::from_millis(150)).await;
    // Accepted, twice: answered stale at once; one revalidation behind them.
    let before = Timestamp::now();
    for _ in 0..2 {
        match read(true).await {
            Fetched::Stale(v) => assert_eq!(*v, "book 7 version 1"),
            other => panic!("{other:?}"),
        }
    }
    for _ in 0..50 {
        if cache.stats().sources["books"].revalidated == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = cache.stats();
    assert_eq!(stats.sources["books"].revalidated, 2, "{stats:?}");
    assert_eq!(stats.sources["books"].stale_served, 2);
    assert_eq!(api.counts.not_modified.load(Ordering::SeqCst), 2);
    assert_eq!(api.counts.full.load(Ordering::SeqCst), 1, "no body again");
    let now = Timestamp::now();
    for tier in cache.tiers() {
        let entry = tier.get(&key(7)).await.unwrap().unwrap();
        assert!(entry.header.is_fresh(now), "{}", tier.name());
        assert!(entry.header.created_at >= before, "{}", tier.name());
    }
    assert!(matches!(read(true).await, Fetched::Cached(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_value_the_caller_refuses_is_revalidated_in_every_tier_and_one_it_accepts_is_answered()
 {
    let api = start_api().await;
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path()).await;
    let url = format!("{}/books/9", api.base);
    let long = FetchOptions::ttl(Duration::from_secs(600));
    let read = |refuse: bool| {
        let (cache, http, url) = (cache.clone(), http.clone(), url.clone());
        async move {
            cache
                .get_or_revalidate_accepting(
                    &key(9),
                    long,
                    move |value: &String, header: &tierstack::Header| {
                        assert_eq!(value, "book 9 version 1");
                        assert!(header.is_fresh(Timestamp::now()));
                        !refuse
                    },
                    |context| fetch_book(http, url, context),
                )
                .await
                .unwrap()
        }
    };
    assert!(matches!(read(false).await, Fetched::Fetched(_)));
    assert!(matches!(read(false).await, Fetched::Cached(_)));
    let before = Timestamp::now();
    match read(true).await {
        Fetched::Revalidated(v) => assert_eq!(*v, "book 9 version 1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(api.counts.not_modified.load(Ordering::SeqCst), 1);
    assert_eq!(api.counts.full.load(Ordering::SeqCst), 1);
    for tier in cache.tiers() {
        let entry = tier.get(&key(9)).await.unwrap().unwrap();
        assert!(
            entry.header.created_at >= before,
            "{} not renewed",
            tier.name()
        );
    }
}

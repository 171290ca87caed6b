//! RFC 9111 behaviours of the middleware, one named test each, against a
//! real HTTP server on loopback whose answers each test scripts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tierstack::{FetchOptions, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache};
use tierstack_http::{HttpCache, HttpCacheOptions, Override};

/// What the server answers on one path.
#[derive(Clone, Default)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Script {
    fn ok(body: &str, headers: &[(&'static str, &str)]) -> Self {
        Self {
            status: 200,
            headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    /// Full answers and 304s, by path.
    full: HashMap<String, u32>,
    not_modified: HashMap<String, u32>,
}

#[derive(Clone, Default)]
struct Server {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    log: Arc<Mutex<Log>>,
    base: String,
}

impl Server {
    async fn start() -> Self {
        let mut server = Self::default();
        let handler = server.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
            let server = handler.clone();
            async move { server.answer(uri.path(), &headers) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        server.base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn script(&self, path: &str, script: Script) {
        self.scripts.lock().unwrap().insert(path.to_owned(), script);
    }

    fn full(&self, path: &str) -> u32 {
        self.log
            .lock()
            .unwrap()
            .full
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn not_modified(&self, path: &str) -> u32 {
        self.log
            .lock()
            .unwrap()
            .not_modified
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn answer(&self, path: &str, request: &HeaderMap) -> axum::response::Response {
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or(Script {
                status: 404,
                ..Script::default()
            });
        let sent = request.get("if-none-match").and_then(|v| v.to_str().ok());
        let mut headers = HeaderMap::new();
        for (name, value) in &script.headers {
            headers.append(*name, value.parse().unwrap());
        }
        if sent.is_some() && sent == script.header("etag") {
            *self
                .log
                .lock()
                .unwrap()
                .not_modified
                .entry(path.to_owned())
                .or_default() += 1;
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        *self
            .log
            .lock()
            .unwrap()
            .full
            .entry(path.to_owned())
            .or_default() += 1;
        // The body says what the request carried that may select it.
        let who = request
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let encoding = request
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let body = format!("{} [auth {who}] [enc {encoding}]", script.body);
        (StatusCode::from_u16(script.status).unwrap(), headers, body).into_response()
    }
}

/// Answers stored in the top tier (the URL indexes aside).
async fn stored_answers(cache: &HttpCache) -> usize {
    let tier = cache.cache().tiers().next().unwrap();
    let mut count = 0;
    let mut cursor = None;
    loop {
        let page = tier.scan(cursor, 100).await.unwrap();
        count += page
            .entries
            .iter()
            .filter(|(k, _)| !k.source().ends_with(":index"))
            .count();
        match page.next {
            Some(next) => cursor = Some(next),
            None => return count,
        }
    }
}

fn memory() -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .build()
}

fn client(cache: &HttpCache) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build()
}

async fn get(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, HeaderMap) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let served = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let headers = response.headers().clone();
    (status, served, response.text().await.unwrap(), headers)
}

#[tokio::test]
async fn no_store_is_never_stored() {
    let server = Server::start().await;
    server.script(
        "/a",
        Script::ok("a", &[("cache-control", "no-store, max-age=60")]),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    for _ in 0..3 {
        let (status, served, ..) = get(&http, &server.url("/a"), &[]).await;
        assert_eq!((status, served.as_str()), (200, "BYPASS"));
    }
    assert_eq!(server.full("/a"), 3);
    assert_eq!(cache.stats().not_storable, 3);
    assert_eq!(stored_answers(&cache).await, 0, "no answer stored");
}

#[tokio::test]
async fn private_is_not_stored_by_the_shared_cache_and_is_by_a_private_one() {
    let server = Server::start().await;
    server.script(
        "/p",
        Script::ok("p", &[("cache-control", "private, max-age=60")]),
    );
    let shared = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&shared);
    get(&http, &server.url("/p"), &[]).await;
    let (_, served, ..) = get(&http, &server.url("/p"), &[]).await;
    assert_eq!(served, "BYPASS");
    assert_eq!(server.full("/p"), 2);

    let private = HttpCache::new(memory(), HttpCacheOptions::default().private());
    let http = client(&private);
    get(&http, &server.url("/p"), &[]).await;
    let (_, served, ..) = get(&http, &server.url("/p"), &[]).await;
    assert_eq!(served, "HIT");
    assert_eq!(server.full("/p"), 3);
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_in_the_shared_cache_and_not_in_a_private_one() {
    let server = Server::start().await;
    server.script(
        "/s",
        Script::ok("s", &[("cache-control", "max-age=3600, s-maxage=1")]),
    );
    let shared = HttpCache::new(memory(), HttpCacheOptions::default());
    let private = HttpCache::new(memory(), HttpCacheOptions::default().private());
    let (shared_http, private_http) = (client(&shared), client(&private));
    get(&shared_http, &server.url("/s"), &[]).await;
    get(&private_http, &server.url("/s"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, served, ..) = get(&shared_http, &server.url("/s"), &[]).await;
    assert_eq!(served, "MISS", "s-maxage=1 expired for the shared cache");
    let (_, served, ..) = get(&private_http, &server.url("/s"), &[]).await;
    assert_eq!(served, "HIT", "max-age=3600 for the private one");
    assert_eq!(server.full("/s"), 3);
}

#[tokio::test]
async fn vary_accept_encoding_keeps_two_variants() {
    let server = Server::start().await;
    server.script(
        "/v",
        Script::ok(
            "v",
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
        ),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    let first = get(&http, &server.url("/v"), &gzip).await;
    let second = get(&http, &server.url("/v"), &br).await;
    assert!(first.2.contains("[enc gzip]") && second.2.contains("[enc br]"));
    let (_, served, body, _) = get(&http, &server.url("/v"), &gzip).await;
    assert_eq!(
        (served.as_str(), body.contains("[enc gzip]")),
        ("HIT", true)
    );
    let (_, served, body, _) = get(&http, &server.url("/v"), &br).await;
    assert_eq!((served.as_str(), body.contains("[enc br]")), ("HIT", true));
    assert_eq!(server.full("/v"), 2, "one fetch per variant");
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let server = Server::start().await;
    server.script(
        "/m",
        Script::ok("m", &[("cache-control", "max-age=1, must-revalidate")]),
    );
    server.script("/n", Script::ok("n", &[("cache-control", "max-age=1")]));
    // The cache would serve anything stale for an hour when the upstream fails.
    let options = HttpCacheOptions::default()
        .fetch(FetchOptions::default().stale_for(Duration::from_secs(3600)));
    let cache = HttpCache::new(memory(), options);
    let http = client(&cache);
    get(&http, &server.url("/m"), &[]).await;
    get(&http, &server.url("/n"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let failing = Script {
        status: 503,
        ..Script::default()
    };
    server.script("/m", failing.clone());
    server.script("/n", failing);
    let (status, served, ..) = get(&http, &server.url("/m"), &[]).await;
    assert_eq!(
        (status, served.as_str()),
        (503, "BYPASS"),
        "the failure, not the stale answer"
    );
    let (status, served, ..) = get(&http, &server.url("/n"), &[]).await;
    assert_eq!(
        (status, served.as_str()),
        (200, "STALE"),
        "the configured stale window applies to others"
    );
}

#[tokio::test]
async fn stale_if_error_is_honoured() {
    let server = Server::start().await;
    server.script(
        "/e",
        Script::ok("e", &[("cache-control", "max-age=1, stale-if-error=60")]),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    get(&http, &server.url("/e"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script(
        "/e",
        Script {
            status: 500,
            ..Script::default()
        },
    );
    let (status, served, body, _) = get(&http, &server.url("/e"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "STALE"));
    assert!(body.starts_with("e "), "{body}");
    // Without stale-if-error (and no stale window configured), the error.
    server.script("/f", Script::ok("f", &[("cache-control", "max-age=1")]));
    get(&http, &server.url("/f"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script(
        "/f",
        Script {
            status: 500,
            ..Script::default()
        },
    );
    let (status, ..) = get(&http, &server.url("/f"), &[]).await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn age_is_correct() {
    let server = Server::start().await;
    server.script(
        "/age",
        Script::ok("x", &[("cache-control", "max-age=600"), ("age", "100")]),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    let (.., first) = get(&http, &server.url("/age"), &[]).await;
    let age = |h: &HeaderMap| -> u64 { h["age"].to_str().unwrap().parse().unwrap() };
    assert!((100..=101).contains(&age(&first)), "{first:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, served, _, later) = get(&http, &server.url("/age"), &[]).await;
    assert_eq!(served, "HIT");
    assert!((102..=103).contains(&age(&later)), "{later:?}");
}

#[tokio::test]
async fn a_post_invalidates_the_url() {
    let server = Server::start().await;
    server.script(
        "/doc",
        Script::ok(
            "v1",
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-encoding"),
            ],
        ),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    get(&http, &server.url("/doc"), &[("accept-encoding", "gzip")]).await;
    let (_, served, ..) = get(&http, &server.url("/doc"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(served, "HIT");
    server.script(
        "/doc",
        Script::ok(
            "v2",
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-encoding"),
            ],
        ),
    );
    let posted = http.post(server.url("/doc")).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let (_, served, body, _) =
        get(&http, &server.url("/doc"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(served, "MISS");
    assert!(body.starts_with("v2"), "{body}");
}

#[tokio::test]
async fn authorization_requests_are_not_shared_across_clients() {
    let server = Server::start().await;
    server.script(
        "/me",
        Script::ok("me", &[("cache-control", "public, max-age=600")]),
    );
    server.script(
        "/mine",
        Script::ok("mine", &[("cache-control", "max-age=600")]),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    let (_, _, a1, _) = get(&http, &server.url("/me"), &alice).await;
    let (_, served, a2, _) = get(&http, &server.url("/me"), &alice).await;
    assert_eq!(
        (served.as_str(), a1 == a2),
        ("HIT", true),
        "public: stored for alice"
    );
    let (_, served, b, _) = get(&http, &server.url("/me"), &bob).await;
    assert_eq!(served, "MISS");
    assert!(
        b.contains("[auth Bearer bob]"),
        "bob never gets alice's answer: {b}"
    );
    assert_eq!(server.full("/me"), 2);
    // Without `public`, a shared cache stores no answer to an authorised request.
    get(&http, &server.url("/mine"), &alice).await;
    let (_, served, ..) = get(&http, &server.url("/mine"), &alice).await;
    assert_eq!(served, "BYPASS");
    // The credentials are not in what is stored (the body is the API's to
    // echo): no key holds them, no stored request header names them.
    for tier in cache.cache().tiers() {
        let mut cursor = None;
        loop {
            let page = tier.scan(cursor, 100).await.unwrap();
            for (key, entry) in &page.entries {
                assert!(
                    !key.as_str().contains("alice") && !key.as_str().contains("bob"),
                    "{key}"
                );
                let stored = String::from_utf8_lossy(&entry.body).to_lowercase();
                assert!(!stored.contains("authorization"), "{stored}");
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
}

#[tokio::test]
async fn heuristic_freshness_from_last_modified() {
    let server = Server::start().await;
    let ten_days_ago =
        httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10 * 86_400));
    server.script(
        "/h",
        Script::ok("h", &[("last-modified", ten_days_ago.as_str())]),
    );
    server.script("/none", Script::ok("none", &[]));
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    get(&http, &server.url("/h"), &[]).await;
    let (_, served, ..) = get(&http, &server.url("/h"), &[]).await;
    assert_eq!(served, "HIT", "fresh for a tenth of ten days");
    get(&http, &server.url("/none"), &[]).await;
    let (_, served, ..) = get(&http, &server.url("/none"), &[]).await;
    assert_eq!(
        served, "MISS",
        "no freshness without validators or Last-Modified"
    );
}

#[tokio::test]
async fn a_304_updates_stored_headers() {
    let server = Server::start().await;
    server.script(
        "/r",
        Script::ok(
            "r",
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"1\""),
                ("x-version", "1"),
            ],
        ),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    get(&http, &server.url("/r"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script(
        "/r",
        Script::ok(
            "ignored",
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"1\""),
                ("x-version", "2"),
            ],
        ),
    );
    let (status, served, body, headers) = get(&http, &server.url("/r"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "REVALIDATED"));
    assert!(body.starts_with("r "), "the stored body: {body}");
    assert_eq!(headers["x-version"], "2");
    assert_eq!(server.not_modified("/r"), 1);
    // The new max-age came with the 304: fresh for ten minutes now.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, served, _, headers) = get(&http, &server.url("/r"), &[]).await;
    assert_eq!(served, "HIT");
    assert_eq!(headers["x-version"], "2");
    assert_eq!(server.full("/r"), 1);
}

#[tokio::test]
async fn expired_answers_are_revalidated_with_no_body_and_fresh_again_in_every_tier() {
    const N: usize = 20;
    let server = Server::start().await;
    for i in 0..N {
        server.script(
            &format!("/b/{i}"),
            Script::ok(
                &format!("book {i}"),
                &[
                    ("cache-control", "max-age=1"),
                    ("etag", &format!("\"{i}\"")),
                ],
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let stack = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .tier(
            SqliteTier::open(&SqliteConfig::new(dir.path().join("http.db")), 1)
                .await
                .unwrap(),
        )
        .build();
    let cache = HttpCache::new(stack, HttpCacheOptions::default());
    let http = client(&cache);
    for i in 0..N {
        get(&http, &server.url(&format!("/b/{i}")), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for i in 0..N {
        let (_, served, body, _) = get(&http, &server.url(&format!("/b/{i}")), &[]).await;
        assert_eq!(served, "REVALIDATED");
        assert!(body.starts_with(&format!("book {i} ")));
    }
    let not_modified: u32 = (0..N)
        .map(|i| server.not_modified(&format!("/b/{i}")))
        .sum();
    let full: u32 = (0..N).map(|i| server.full(&format!("/b/{i}"))).sum();
    assert_eq!(
        (not_modified, full),
        (N as u32, N as u32),
        "N 304s, no second body"
    );
    let stats = cache.cache().stats();
    assert_eq!(stats.sources["127.0.0.1"].revalidated, N as u64);
    // Fresh in every tier: each answers alone.
    let now = tierstack::Timestamp::now();
    for tier in cache.cache().tiers() {
        let mut fresh = 0;
        let mut cursor = None;
        loop {
            let page = tier.scan(cursor, 100).await.unwrap();
            fresh += page
                .entries
                .iter()
                .filter(|(k, e)| k.as_str().contains("g=") && e.header.is_fresh(now))
                .count();
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(fresh, N, "{}", tier.name());
    }
}

#[tokio::test]
async fn concurrent_requests_for_one_url_make_one_upstream_call() {
    let server = Server::start().await;
    server.script("/c", Script::ok("c", &[("cache-control", "max-age=600")]));
    let cache = HttpCache::new(memory(), HttpCacheOptions::default());
    let http = client(&cache);
    let url = server.url("/c");
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { get(&http, &url, &[]).await })
        })
        .collect();
    for call in calls {
        let (status, _, body, _) = call.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("c "));
    }
    assert_eq!(server.full("/c"), 1);
}

#[tokio::test]
async fn overrides_force_a_ttl_store_no_cache_answers_and_cache_not_found() {
    let server = Server::start().await;
    server.script(
        "/api/books/1",
        Script::ok("b", &[("cache-control", "no-cache")]),
    );
    let options = HttpCacheOptions::default().with_override(
        Override::path("/api/")
            .source("books")
            .ttl(Duration::from_secs(7 * 86_400))
            .ignore_no_cache()
            .cache_not_found(Duration::from_secs(600)),
    );
    let cache = HttpCache::new(memory(), options);
    let http = client(&cache);
    get(&http, &server.url("/api/books/1"), &[]).await;
    let (_, served, ..) = get(&http, &server.url("/api/books/1"), &[]).await;
    assert_eq!(served, "HIT");
    let (status, ..) = get(&http, &server.url("/api/books/404"), &[]).await;
    assert_eq!(status, 404);
    let (status, served, ..) = get(&http, &server.url("/api/books/404"), &[]).await;
    assert_eq!((status, served.as_str()), (404, "HIT"));
    assert_eq!(server.full("/api/books/404"), 1);
    assert!(cache.cache().stats().sources.contains_key("books"));
    // Outside the override, the headers rule.
    server.script("/other", Script::ok("o", &[("cache-control", "no-cache")]));
    get(&http, &server.url("/other"), &[]).await;
    let (_, served, ..) = get(&http, &server.url("/other"), &[]).await;
    assert_ne!(served, "HIT");
}

#[tokio::test]
async fn a_body_over_the_cap_passes_through_whole_and_is_counted() {
    let server = Server::start().await;
    let big = "x".repeat(4096);
    server.script(
        "/big",
        Script::ok(&big, &[("cache-control", "max-age=600")]),
    );
    let cache = HttpCache::new(memory(), HttpCacheOptions::default().max_body(1024));
    let http = client(&cache);
    let (status, served, body, _) = get(&http, &server.url("/big"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "BYPASS"));
    assert!(body.starts_with(&big), "the whole body");
    assert_eq!(cache.stats().too_large, 1);
    get(&http, &server.url("/big"), &[]).await;
    assert_eq!(server.full("/big"), 2, "not stored");
    assert_eq!(stored_answers(&cache).await, 0);
}

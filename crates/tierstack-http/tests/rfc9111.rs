//! RFC 9111 behaviours, one named test each, run twice: through the
//! middleware of a reqwest client, and through `tierstack proxy` in front of
//! the server (`middleware::NAME`, `proxy::NAME`). The server is real HTTP
//! on loopback whose answers each test scripts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tierstack::{FetchOptions, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache};
use tierstack_http::{HttpCache, HttpCacheOptions, Override, Proxy, Route};

mod support;
use support::all_entries;

/// What the server answers on one path.
#[derive(Clone, Default)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Answer a request with `If-Modified-Since` with a 304 without any
    /// header (RFC 9110 lets a 304 leave out what did not change).
    bare_304: bool,
}

impl Script {
    fn ok(body: &str, headers: &[(&'static str, &str)]) -> Self {
        Self {
            status: 200,
            headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
            body: body.to_owned(),
            bare_304: false,
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
    /// A path whose next request is answered `304` with this `ETag`,
    /// whatever it asked.
    force_304: HashMap<String, String>,
    /// Full answers and 304s, by path.
    full: HashMap<String, u32>,
    not_modified: HashMap<String, u32>,
}

#[derive(Clone, Default)]
struct Server {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    log: Arc<Mutex<Log>>,
    /// Every request waits for a read lock: a test holding the write lock
    /// holds the upstream's answers back.
    hold: Arc<tokio::sync::RwLock<()>>,
    base: String,
}

impl Server {
    async fn start() -> Self {
        let mut server = Self::default();
        let handler = server.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
            let server = handler.clone();
            async move {
                let _pass = server.hold.read().await;
                server.answer(uri.path(), &headers)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        server.base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn force_304_once(&self, path: &str, etag: &str) {
        self.log
            .lock()
            .unwrap()
            .force_304
            .insert(path.to_owned(), etag.to_owned());
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
        let forced = self.log.lock().unwrap().force_304.remove(path);
        if let Some(etag) = forced {
            *self
                .log
                .lock()
                .unwrap()
                .not_modified
                .entry(path.to_owned())
                .or_default() += 1;
            return (StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
        }
        if script.bare_304 && request.contains_key("if-modified-since") {
            *self
                .log
                .lock()
                .unwrap()
                .not_modified
                .entry(path.to_owned())
                .or_default() += 1;
            return StatusCode::NOT_MODIFIED.into_response();
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
    all_entries(&**tier)
        .await
        .iter()
        .filter(|(k, _)| !k.source().ends_with(":index"))
        .count()
}

fn memory() -> TieredCache {
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .build()
}

/// Which way a test's requests reach the cache.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A reqwest client with the middleware.
    Middleware,
    /// A plain client pointed at `tierstack proxy` in front of the server.
    Proxy,
}

/// A test's way to the server: its HTTP cache and the client and base URL
/// that reach it.
#[derive(Clone)]
struct Front {
    http: HttpCache,
    client: reqwest_middleware::ClientWithMiddleware,
    base: String,
}

impl Front {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn front(
    kind: Kind,
    server: &Server,
    cache: TieredCache,
    options: HttpCacheOptions,
) -> Front {
    match kind {
        Kind::Middleware => {
            let http = HttpCache::new(cache, options);
            let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(http.clone())
                .build();
            Front {
                http,
                client,
                base: server.base.clone(),
            }
        }
        Kind::Proxy => {
            let routes = vec![Route::new("/", &server.base).unwrap()];
            let proxy = Proxy::new(cache, routes, options);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let served = proxy.clone();
            tokio::spawn(async move { served.serve(listener, std::future::pending()).await });
            let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
            Front {
                http: proxy.http_cache().clone(),
                client,
                base,
            }
        }
    }
}

async fn get(
    front: &Front,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, HeaderMap) {
    let mut request = front.client.get(url);
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

async fn no_store_is_never_stored(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/a",
        Script::ok("a", &[("cache-control", "no-store, max-age=60")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    for _ in 0..3 {
        let (status, served, ..) = get(&http, &http.url("/a"), &[]).await;
        assert_eq!((status, served.as_str()), (200, "BYPASS"));
    }
    assert_eq!(server.full("/a"), 3);
    assert_eq!(http.http.stats().not_storable, 3);
    assert_eq!(stored_answers(&http.http).await, 0, "no answer stored");
}

async fn private_is_not_stored_by_the_shared_cache_and_is_by_a_private_one(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/p",
        Script::ok("p", &[("cache-control", "private, max-age=60")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/p"), &[]).await;
    let (_, served, ..) = get(&http, &http.url("/p"), &[]).await;
    assert_eq!(served, "BYPASS");
    assert_eq!(server.full("/p"), 2);

    let http = front(
        kind,
        &server,
        memory(),
        HttpCacheOptions::default().private(),
    )
    .await;
    get(&http, &http.url("/p"), &[]).await;
    let (_, served, ..) = get(&http, &http.url("/p"), &[]).await;
    assert_eq!(served, "HIT");
    assert_eq!(server.full("/p"), 3);
}

async fn s_maxage_wins_over_max_age_in_the_shared_cache_and_not_in_a_private_one(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/s",
        Script::ok("s", &[("cache-control", "max-age=3600, s-maxage=1")]),
    );
    let shared_http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let private_http = front(
        kind,
        &server,
        memory(),
        HttpCacheOptions::default().private(),
    )
    .await;
    get(&shared_http, &shared_http.url("/s"), &[]).await;
    get(&private_http, &private_http.url("/s"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, served, ..) = get(&shared_http, &shared_http.url("/s"), &[]).await;
    assert_eq!(served, "MISS", "s-maxage=1 expired for the shared cache");
    let (_, served, ..) = get(&private_http, &private_http.url("/s"), &[]).await;
    assert_eq!(served, "HIT", "max-age=3600 for the private one");
    assert_eq!(server.full("/s"), 3);
}

async fn vary_accept_encoding_keeps_two_variants(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/v",
        Script::ok(
            "v",
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
        ),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    let first = get(&http, &http.url("/v"), &gzip).await;
    let second = get(&http, &http.url("/v"), &br).await;
    assert!(first.2.contains("[enc gzip]") && second.2.contains("[enc br]"));
    let (_, served, body, _) = get(&http, &http.url("/v"), &gzip).await;
    assert_eq!(
        (served.as_str(), body.contains("[enc gzip]")),
        ("HIT", true)
    );
    let (_, served, body, _) = get(&http, &http.url("/v"), &br).await;
    assert_eq!((served.as_str(), body.contains("[enc br]")), ("HIT", true));
    assert_eq!(server.full("/v"), 2, "one fetch per variant");
}

async fn must_revalidate_is_never_served_stale(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/m",
        Script::ok("m", &[("cache-control", "max-age=1, must-revalidate")]),
    );
    server.script("/n", Script::ok("n", &[("cache-control", "max-age=1")]));
    // The cache would serve anything stale for an hour when the upstream fails.
    let options = HttpCacheOptions::default()
        .fetch(FetchOptions::default().stale_for(Duration::from_secs(3600)));
    let http = front(kind, &server, memory(), options).await;
    get(&http, &http.url("/m"), &[]).await;
    get(&http, &http.url("/n"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let failing = Script {
        status: 503,
        ..Script::default()
    };
    server.script("/m", failing.clone());
    server.script("/n", failing);
    let (status, served, ..) = get(&http, &http.url("/m"), &[]).await;
    assert_eq!(
        (status, served.as_str()),
        (503, "BYPASS"),
        "the failure, not the stale answer"
    );
    let (status, served, ..) = get(&http, &http.url("/n"), &[]).await;
    assert_eq!(
        (status, served.as_str()),
        (200, "STALE"),
        "the configured stale window applies to others"
    );
}

async fn stale_if_error_is_honoured(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/e",
        Script::ok("e", &[("cache-control", "max-age=1, stale-if-error=60")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/e"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script(
        "/e",
        Script {
            status: 500,
            ..Script::default()
        },
    );
    let (status, served, body, _) = get(&http, &http.url("/e"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "STALE"));
    assert!(body.starts_with("e "), "{body}");
    // Without stale-if-error (and no stale window configured), the error.
    server.script("/f", Script::ok("f", &[("cache-control", "max-age=1")]));
    get(&http, &http.url("/f"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script(
        "/f",
        Script {
            status: 500,
            ..Script::default()
        },
    );
    let (status, ..) = get(&http, &http.url("/f"), &[]).await;
    assert_eq!(status, 500);
}

async fn stale_while_revalidate_serves_stale_at_once_and_revalidates_in_the_background(kind: Kind) {
    let server = Server::start().await;
    let swr = "max-age=1, stale-while-revalidate=60";
    server.script(
        "/swr",
        Script::ok("v1", &[("cache-control", swr), ("etag", "\"v1\"")]),
    );
    server.script("/new", Script::ok("n1", &[("cache-control", swr)]));
    server.script(
        "/short",
        Script::ok(
            "s",
            &[("cache-control", "max-age=1, stale-while-revalidate=1")],
        ),
    );
    server.script(
        "/mr",
        Script::ok(
            "m",
            &[
                (
                    "cache-control",
                    "max-age=1, stale-while-revalidate=60, must-revalidate",
                ),
                ("etag", "\"m\""),
            ],
        ),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    for path in ["/swr", "/new", "/short", "/mr"] {
        get(&http, &http.url(path), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script("/new", Script::ok("n2", &[("cache-control", swr)]));
    // The upstream holds its answers back: a stale answer that arrives
    // meanwhile did not wait for it.
    let held = Arc::clone(&server.hold).write_owned().await;
    for path in ["/swr", "/swr", "/new"] {
        let (status, served, body, _) =
            tokio::time::timeout(Duration::from_secs(5), get(&http, &http.url(path), &[]))
                .await
                .expect("the stale answer waited for the upstream");
        assert_eq!((status, served.as_str()), (200, "STALE"), "{path}");
        let old = if path == "/new" { "n1 " } else { "v1 " };
        assert!(body.starts_with(old), "{path}: {body}");
    }
    drop(held);
    // One revalidation each, in the background; then fresh.
    for (path, body) in [("/swr", "v1 "), ("/new", "n2 ")] {
        let mut last = String::new();
        for _ in 0..50 {
            let (_, served, text, _) = get(&http, &http.url(path), &[]).await;
            if served == "HIT" {
                last = text;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(last.starts_with(body), "{path} fresh again: {last:?}");
    }
    assert_eq!(
        (server.full("/swr"), server.not_modified("/swr")),
        (1, 1),
        "one conditional request, answered 304"
    );
    assert_eq!(server.full("/new"), 2, "one new answer, no more");
    // Past its window, the answer is fetched before it is served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, served, ..) = get(&http, &http.url("/short"), &[]).await;
    assert_eq!(served, "MISS");
    assert_eq!(server.full("/short"), 2);
    // `must-revalidate` wins: never served stale.
    let (_, served, ..) = get(&http, &http.url("/mr"), &[]).await;
    assert_eq!(served, "REVALIDATED");
    assert_eq!(server.not_modified("/mr"), 1);
}

async fn the_requests_own_cache_control_is_honoured(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/rc",
        Script::ok(
            "r",
            &[
                ("cache-control", "max-age=600"),
                ("age", "30"),
                ("etag", "\"r1\""),
            ],
        ),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let url = http.url("/rc");
    let (_, served, ..) = get(&http, &url, &[]).await;
    assert_eq!(served, "MISS");
    // Each demand the stored answer (30 s old, 570 s left) does not meet
    // revalidates it; each it meets is a hit.
    for (name, value, expected) in [
        ("cache-control", "no-cache", "REVALIDATED"),
        ("pragma", "no-cache", "REVALIDATED"),
        ("cache-control", "max-age=10", "REVALIDATED"),
        ("cache-control", "max-age=3600", "HIT"),
        ("cache-control", "min-fresh=700", "REVALIDATED"),
        ("cache-control", "min-fresh=60", "HIT"),
        ("cache-control", "max-stale=60", "HIT"),
    ] {
        let (status, served, body, _) = get(&http, &url, &[(name, value)]).await;
        assert_eq!(
            (status, served.as_str()),
            (200, expected),
            "{name}: {value}"
        );
        assert!(body.starts_with("r "), "{name}: {value}: {body}");
    }
    assert_eq!(
        (server.full("/rc"), server.not_modified("/rc")),
        (1, 4),
        "a conditional request per refusal, no body"
    );
    // only-if-cached: the stored answer, or a 504 without asking.
    let (status, served, ..) = get(&http, &url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!((status, served.as_str()), (200, "HIT"));
    server.script(
        "/never",
        Script::ok("n", &[("cache-control", "max-age=600")]),
    );
    let (status, ..) = get(
        &http,
        &http.url("/never"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(status, 504);
    assert_eq!(server.full("/never"), 0, "the upstream was asked");
}

async fn route_templates_give_each_endpoint_its_own_source(kind: Kind) {
    let server = Server::start().await;
    for path in ["/books/1", "/books/2", "/authors/3/books", "/other"] {
        server.script(path, Script::ok("x", &[("cache-control", "max-age=600")]));
    }
    let options = HttpCacheOptions::default()
        .route("/books/{asin}")
        .unwrap()
        .route("/authors/{id}/books")
        .unwrap();
    let http = front(kind, &server, memory(), options).await;
    for path in [
        "/books/1",
        "/books/2",
        "/books/1",
        "/authors/3/books",
        "/other",
    ] {
        get(&http, &http.url(path), &[]).await;
    }
    let host = server.base.trim_start_matches("http://");
    let sources = http.http.cache().stats().sources;
    let counted = |source: &str| sources.get(source).map(|s| (s.hits, s.misses));
    assert_eq!(
        counted(&format!("{host}/books/{{asin}}")),
        Some((1, 2)),
        "{sources:?}"
    );
    assert_eq!(
        counted(&format!("{host}/authors/{{id}}/books")),
        Some((0, 1))
    );
    assert_eq!(counted(host), Some((0, 1)), "a path no route matches");
}

async fn age_is_correct(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/age",
        Script::ok("x", &[("cache-control", "max-age=600"), ("age", "100")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let (.., first) = get(&http, &http.url("/age"), &[]).await;
    let age = |h: &HeaderMap| -> u64 { h["age"].to_str().unwrap().parse().unwrap() };
    assert!((100..=101).contains(&age(&first)), "{first:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, served, _, later) = get(&http, &http.url("/age"), &[]).await;
    assert_eq!(served, "HIT");
    assert!((102..=103).contains(&age(&later)), "{later:?}");
}

async fn a_post_invalidates_the_url(kind: Kind) {
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
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/doc"), &[("accept-encoding", "gzip")]).await;
    let (_, served, ..) = get(&http, &http.url("/doc"), &[("accept-encoding", "gzip")]).await;
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
    let posted = http.client.post(http.url("/doc")).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let (_, served, body, _) = get(&http, &http.url("/doc"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(served, "MISS");
    assert!(body.starts_with("v2"), "{body}");
}

async fn a_post_invalidates_the_urls_it_names_on_its_origin_only(kind: Kind) {
    let server = Server::start().await;
    for path in ["/books/1", "/books/2", "/books/3"] {
        server.script(path, Script::ok("v1", &[("cache-control", "max-age=600")]));
    }
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let mut created = Script::ok("created", &[("location", "/books/1")]);
    created.status = 201;
    // Absolute, on the same origin.
    created
        .headers
        .push(("content-location", format!("{}/books/2", server.base)));
    server.script("/books", created);
    // The same path on another host: not this answer's to invalidate.
    let mut moved = Script::ok("moved", &[]);
    moved.status = 201;
    moved
        .headers
        .push(("location", format!("http://localhost:{port}/books/3")));
    server.script("/elsewhere", moved);
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    for path in ["/books/1", "/books/2", "/books/3"] {
        get(&http, &http.url(path), &[]).await;
        let (_, served, ..) = get(&http, &http.url(path), &[]).await;
        assert_eq!(served, "HIT", "{path}");
    }
    for path in ["/books", "/elsewhere"] {
        let posted = http.client.post(http.url(path)).send().await.unwrap();
        assert_eq!(posted.status(), 201, "{path}");
    }
    for (path, after) in [
        ("/books/1", "MISS"),
        ("/books/2", "MISS"),
        ("/books/3", "HIT"),
    ] {
        let (_, served, ..) = get(&http, &http.url(path), &[]).await;
        assert_eq!(served, after, "{path}");
    }
}

async fn authorization_requests_are_not_shared_across_clients(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/me",
        Script::ok("me", &[("cache-control", "public, max-age=600")]),
    );
    server.script(
        "/mine",
        Script::ok("mine", &[("cache-control", "max-age=600")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    let (_, _, a1, _) = get(&http, &http.url("/me"), &alice).await;
    let (_, served, a2, _) = get(&http, &http.url("/me"), &alice).await;
    assert_eq!(
        (served.as_str(), a1 == a2),
        ("HIT", true),
        "public: stored for alice"
    );
    let (_, served, b, _) = get(&http, &http.url("/me"), &bob).await;
    assert_eq!(served, "MISS");
    assert!(
        b.contains("[auth Bearer bob]"),
        "bob never gets alice's answer: {b}"
    );
    assert_eq!(server.full("/me"), 2);
    // Without `public`, a shared cache stores no answer to an authorised request.
    get(&http, &http.url("/mine"), &alice).await;
    let (_, served, ..) = get(&http, &http.url("/mine"), &alice).await;
    assert_eq!(served, "BYPASS");
    // The credentials are not in what is stored (the body is the API's to
    // echo): no key holds them, no stored request header names them.
    for tier in http.http.cache().tiers() {
        for (key, entry) in all_entries(&**tier).await {
            assert!(
                !key.as_str().contains("alice") && !key.as_str().contains("bob"),
                "{key}"
            );
            let stored = String::from_utf8_lossy(&entry.body).to_lowercase();
            assert!(!stored.contains("authorization"), "{stored}");
        }
    }
}

async fn private_answers_never_reach_another_client_concurrently_or_in_turn(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/secret",
        Script::ok("s", &[("cache-control", "private, max-age=600")]),
    );
    // A private cache stores them: the case where mixing them up could happen.
    for options in [
        HttpCacheOptions::default().private(),
        HttpCacheOptions::default(),
    ] {
        let http = front(kind, &server, memory(), options).await;
        let url = http.url("/secret");
        let mut clients = Vec::new();
        for i in 0..40 {
            let (http, url) = (http.clone(), url.clone());
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            clients.push(tokio::spawn(async move {
                let bearer = format!("Bearer {who}");
                let (status, _, body, _) = get(&http, &url, &[("authorization", &bearer)]).await;
                (who, status, body)
            }));
        }
        for client in clients {
            let (who, status, body) = client.await.unwrap();
            assert_eq!(status, 200);
            assert!(
                body.contains(&format!("[auth Bearer {who}]")),
                "{who} got {body}"
            );
        }
        for who in ["alice", "bob", "alice", "bob"] {
            let bearer = format!("Bearer {who}");
            let (_, _, body, _) = get(&http, &url, &[("authorization", &bearer)]).await;
            assert!(
                body.contains(&format!("[auth Bearer {who}]")),
                "{who} got {body}"
            );
        }
    }
}

async fn malformed_cache_control_and_a_64_kib_header_are_answered_and_nothing_poisoned(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/odd",
        Script::ok(
            "odd",
            &[(
                "cache-control",
                "max-age=\"soon\", ,,=, no-store=maybe, s-maxage=-5",
            )],
        ),
    );
    let big = "x".repeat(64 * 1024);
    server.script(
        "/big",
        Script::ok(
            "big",
            &[("cache-control", "max-age=600"), ("x-big", big.as_str())],
        ),
    );
    server.script(
        "/plain",
        Script::ok("plain", &[("cache-control", "max-age=600")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    for _ in 0..2 {
        let (status, _, body, _) = get(&http, &http.url("/odd"), &[]).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("odd "), "{body}");
    }
    // A 64 KiB answer header: stored and replayed whole, or refused with a
    // status; never a panic or another URL's body.
    for _ in 0..2 {
        let (status, _, body, headers) = get(&http, &http.url("/big"), &[]).await;
        match status {
            200 => {
                assert!(body.starts_with("big "), "{body}");
                assert_eq!(headers["x-big"].len(), 64 * 1024);
            }
            other => assert!((400..600).contains(&other), "{other}"),
        }
    }
    // A 64 KiB request header: answered with a status.
    let (status, ..) = get(&http, &http.url("/plain"), &[("x-big", big.as_str())]).await;
    assert!(status == 200 || status == 431 || status == 502, "{status}");
    let (status, _, body, _) = get(&http, &http.url("/plain"), &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("plain "), "{body}");
}

async fn offline_answers_come_from_the_cache_alone(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/kept",
        Script::ok("kept", &[("cache-control", "max-age=600")]),
    );
    server.script(
        "/new",
        Script::ok("new", &[("cache-control", "max-age=600")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/kept"), &[]).await;
    http.http.cache().set_offline(true);
    let (status, served, body, _) = get(&http, &http.url("/kept"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "HIT"));
    assert!(body.starts_with("kept "), "{body}");
    match kind {
        Kind::Middleware => {
            let error = http.client.get(http.url("/new")).send().await.unwrap_err();
            assert!(error.to_string().contains("offline"), "{error}");
        }
        Kind::Proxy => {
            let (status, ..) = get(&http, &http.url("/new"), &[]).await;
            assert_eq!(status, 504);
        }
    }
    assert_eq!(server.full("/new"), 0, "offline, the upstream was asked");
}

async fn heuristic_freshness_from_last_modified(kind: Kind) {
    let server = Server::start().await;
    let ten_days_ago =
        httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10 * 86_400));
    server.script(
        "/h",
        Script::ok("h", &[("last-modified", ten_days_ago.as_str())]),
    );
    server.script("/none", Script::ok("none", &[]));
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/h"), &[]).await;
    let (_, served, ..) = get(&http, &http.url("/h"), &[]).await;
    assert_eq!(served, "HIT", "fresh for a tenth of ten days");
    get(&http, &http.url("/none"), &[]).await;
    let (_, served, ..) = get(&http, &http.url("/none"), &[]).await;
    assert_eq!(
        served, "MISS",
        "no freshness without validators or Last-Modified"
    );
}

async fn a_304_updates_stored_headers(kind: Kind) {
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
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/r"), &[]).await;
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
    let (status, served, body, headers) = get(&http, &http.url("/r"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "REVALIDATED"));
    assert!(body.starts_with("r "), "the stored body: {body}");
    assert_eq!(headers["x-version"], "2");
    assert_eq!(server.not_modified("/r"), 1);
    // The new max-age came with the 304: fresh for ten minutes now.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, served, _, headers) = get(&http, &http.url("/r"), &[]).await;
    assert_eq!(served, "HIT");
    assert_eq!(headers["x-version"], "2");
    assert_eq!(server.full("/r"), 1);
}

async fn expired_answers_are_revalidated_with_no_body_and_fresh_again_in_every_tier(kind: Kind) {
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
    let http = front(kind, &server, stack, HttpCacheOptions::default()).await;
    for i in 0..N {
        get(&http, &http.url(&format!("/b/{i}")), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for i in 0..N {
        let (_, served, body, _) = get(&http, &http.url(&format!("/b/{i}")), &[]).await;
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
    let stats = http.http.cache().stats();
    assert_eq!(
        stats.sources[&format!("127.0.0.1:{}", server.base.rsplit(':').next().unwrap())]
            .revalidated,
        N as u64
    );
    // Fresh in every tier: each answers alone.
    let now = tierstack::Timestamp::now();
    for tier in http.http.cache().tiers() {
        let fresh = all_entries(&**tier)
            .await
            .iter()
            .filter(|(k, e)| k.as_str().contains("g=") && e.header.is_fresh(now))
            .count();
        assert_eq!(fresh, N, "{}", tier.name());
    }
}

async fn concurrent_requests_for_one_url_make_one_upstream_call(kind: Kind) {
    let server = Server::start().await;
    server.script("/c", Script::ok("c", &[("cache-control", "max-age=600")]));
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let url = http.url("/c");
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

async fn overrides_force_a_ttl_store_no_cache_answers_and_cache_not_found(kind: Kind) {
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
    let http = front(kind, &server, memory(), options).await;
    get(&http, &http.url("/api/books/1"), &[]).await;
    let (_, served, ..) = get(&http, &http.url("/api/books/1"), &[]).await;
    assert_eq!(served, "HIT");
    let (status, ..) = get(&http, &http.url("/api/books/404"), &[]).await;
    assert_eq!(status, 404);
    let (status, served, ..) = get(&http, &http.url("/api/books/404"), &[]).await;
    assert_eq!((status, served.as_str()), (404, "HIT"));
    assert_eq!(server.full("/api/books/404"), 1);
    assert!(http.http.cache().stats().sources.contains_key("books"));
    // Outside the override, the headers rule.
    server.script("/other", Script::ok("o", &[("cache-control", "no-cache")]));
    get(&http, &http.url("/other"), &[]).await;
    let (_, served, ..) = get(&http, &http.url("/other"), &[]).await;
    assert_ne!(served, "HIT");
}

async fn a_body_over_the_cap_passes_through_whole_and_is_counted(kind: Kind) {
    let server = Server::start().await;
    let big = "x".repeat(4096);
    server.script(
        "/big",
        Script::ok(&big, &[("cache-control", "max-age=600")]),
    );
    let http = front(
        kind,
        &server,
        memory(),
        HttpCacheOptions::default().max_body(1024),
    )
    .await;
    let (status, served, body, _) = get(&http, &http.url("/big"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "BYPASS"));
    assert!(body.starts_with(&big), "the whole body");
    assert_eq!(http.http.stats().too_large, 1);
    get(&http, &http.url("/big"), &[]).await;
    assert_eq!(server.full("/big"), 2, "not stored");
    assert_eq!(stored_answers(&http.http).await, 0);
}

async fn a_304_without_validators_updates_the_one_stored_answer(kind: Kind) {
    let server = Server::start().await;
    let modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
    let mut script = Script::ok(
        "lm",
        &[
            ("cache-control", "max-age=1"),
            ("last-modified", modified.as_str()),
        ],
    );
    script.bare_304 = true;
    server.script("/lm", script);
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/lm"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, served, body, _) = get(&http, &http.url("/lm"), &[]).await;
    assert_eq!(
        (status, served.as_str()),
        (200, "REVALIDATED"),
        "not the bare 304"
    );
    assert!(body.starts_with("lm "), "{body}");
    assert_eq!((server.full("/lm"), server.not_modified("/lm")), (1, 1));
}

async fn a_private_cache_and_a_shared_one_over_the_same_tiers_keep_apart(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/own",
        Script::ok("own", &[("cache-control", "private, max-age=600")]),
    );
    let tiers = memory();
    let private = front(
        kind,
        &server,
        tiers.clone(),
        HttpCacheOptions::default().private(),
    )
    .await;
    let shared = front(kind, &server, tiers, HttpCacheOptions::default()).await;
    get(&private, &private.url("/own"), &[]).await;
    let (_, served, ..) = get(&private, &private.url("/own"), &[]).await;
    assert_eq!(served, "HIT");
    let (_, served, ..) = get(&shared, &shared.url("/own"), &[]).await;
    assert_ne!(
        served, "HIT",
        "a shared cache never serves a private answer"
    );
    assert_eq!(server.full("/own"), 2);
}

async fn an_answer_not_stored_replaces_no_stale_one_and_is_no_fetch_error(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/x",
        Script::ok("old", &[("cache-control", "max-age=1, stale-if-error=600")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/x"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.script("/x", Script::ok("new", &[("cache-control", "no-store")]));
    let (status, served, body, _) = get(&http, &http.url("/x"), &[]).await;
    assert_eq!((status, served.as_str()), (200, "BYPASS"));
    assert!(
        body.starts_with("new "),
        "the new answer, not the stale one: {body}"
    );
    let source = http
        .http
        .cache()
        .stats()
        .sources
        .into_iter()
        .find(|(s, _)| !s.ends_with(":index"))
        .unwrap()
        .1;
    assert_eq!(source.fetch_errors, 0);
    assert_eq!(source.stale_served, 0);
}

async fn a_refused_connection_is_the_clients_own_error_or_a_502(kind: Kind) {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let server = Server {
        base: format!("http://{closed}"),
        ..Server::default()
    };
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    let result = http.client.get(http.url("/gone")).send().await;
    match kind {
        Kind::Middleware => {
            let error = result.unwrap_err();
            assert!(error.is_connect(), "{error:?}");
        }
        Kind::Proxy => assert_eq!(result.unwrap().status(), 502),
    }
}

async fn a_304_naming_another_etag_is_not_taken_for_the_stored_answer(kind: Kind) {
    let server = Server::start().await;
    server.script(
        "/w",
        Script::ok("v1", &[("cache-control", "max-age=1"), ("etag", "\"1\"")]),
    );
    let http = front(kind, &server, memory(), HttpCacheOptions::default()).await;
    get(&http, &http.url("/w"), &[]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // A contradictory server: 304 to If-None-Match "1", naming "2".
    server.script(
        "/w",
        Script::ok("v2", &[("cache-control", "max-age=60"), ("etag", "\"2\"")]),
    );
    server.force_304_once("/w", "\"2\"");
    let (status, served, body, _) = get(&http, &http.url("/w"), &[]).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("v2 "),
        "asked again, not the stored body: {body} ({served})"
    );
}

/// Each case through the middleware and through the proxy.
macro_rules! through_both {
    ($($name:ident),* $(,)?) => {
        mod middleware {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Kind::Middleware).await;
            })*
        }
        mod proxy {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Kind::Proxy).await;
            })*
        }
    };
}

through_both!(
    no_store_is_never_stored,
    private_is_not_stored_by_the_shared_cache_and_is_by_a_private_one,
    s_maxage_wins_over_max_age_in_the_shared_cache_and_not_in_a_private_one,
    vary_accept_encoding_keeps_two_variants,
    must_revalidate_is_never_served_stale,
    stale_if_error_is_honoured,
    stale_while_revalidate_serves_stale_at_once_and_revalidates_in_the_background,
    the_requests_own_cache_control_is_honoured,
    route_templates_give_each_endpoint_its_own_source,
    age_is_correct,
    a_post_invalidates_the_url,
    a_post_invalidates_the_urls_it_names_on_its_origin_only,
    authorization_requests_are_not_shared_across_clients,
    private_answers_never_reach_another_client_concurrently_or_in_turn,
    offline_answers_come_from_the_cache_alone,
    malformed_cache_control_and_a_64_kib_header_are_answered_and_nothing_poisoned,
    heuristic_freshness_from_last_modified,
    a_304_updates_stored_headers,
    expired_answers_are_revalidated_with_no_body_and_fresh_again_in_every_tier,
    concurrent_requests_for_one_url_make_one_upstream_call,
    overrides_force_a_ttl_store_no_cache_answers_and_cache_not_found,
    a_body_over_the_cap_passes_through_whole_and_is_counted,
    a_304_without_validators_updates_the_one_stored_answer,
    a_private_cache_and_a_shared_one_over_the_same_tiers_keep_apart,
    an_answer_not_stored_replaces_no_stale_one_and_is_no_fetch_error,
    a_refused_connection_is_the_clients_own_error_or_a_502,
    a_304_naming_another_etag_is_not_taken_for_the_stored_answer,
);

/// Writes `raw` to the proxy as it is and reads what comes back, until the
/// proxy closes the connection or 2 s pass.
async fn raw_exchange(base: &str, raw: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let address = base.trim_start_matches("http://").to_owned();
    let raw = raw.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream.write_all(&raw).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

/// A request with both `Content-Length` and `Transfer-Encoding` (the
/// request-smuggling shape) never makes the upstream see a second,
/// smuggled request, and an unparsable request target is a `400`; the
/// proxy serves the next request as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_smuggled_requests_and_unparsable_targets() {
    let server = Server::start().await;
    server.script(
        "/plain",
        Script::ok("plain", &[("cache-control", "max-age=600")]),
    );
    server.script(
        "/poison",
        Script::ok("poison", &[("cache-control", "max-age=600")]),
    );
    let http = front(Kind::Proxy, &server, memory(), HttpCacheOptions::default()).await;
    let smuggled = b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /poison HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw_exchange(&http.base, smuggled).await;
    // Refused, or answered as one request (the chunked body, empty) with
    // the connection closed after it, so the rest is never read as a
    // request of its own.
    assert!(
        answer.starts_with("HTTP/1.1 400")
            || (answer.contains("connection: close") && !answer.contains("poison")),
        "{answer}"
    );
    assert_eq!(
        server.full("/poison"),
        0,
        "the smuggled request reached the upstream"
    );
    for target in ["http://[::1/", "/%zz%", "/a b"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(&http.base, raw.as_bytes()).await;
        let status: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // 400 from the proxy's parser, or the upstream's 404 for a path
        // it does not know: a clear status either way.
        assert!((400..500).contains(&status), "{target}: {answer}");
    }
    let (status, _, body, _) = get(&http, &http.url("/plain"), &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("plain "), "{body}");
    // Through the middleware an invalid URL is the client's error, before
    // any request.
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(HttpCache::new(memory(), HttpCacheOptions::default()))
        .build();
    assert!(client.get("http://[::1/").send().await.is_err());
}

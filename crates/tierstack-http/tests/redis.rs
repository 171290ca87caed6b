//! Revalidation through a shared Redis tier: two hosts' caches (memory +
//! the same Redis) behind the middleware; answers one host fetched and
//! that expired are revalidated by the other with a `304`, and are fresh
//! again in its memory and in Redis. The server is real Redis, started on
//! a free port (killed on drop).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use tierstack::{MemoryConfig, MemoryTier, RedisConfig, RedisTier, TieredCache, Timestamp};
use tierstack_conformance::redis_server::RedisServer;
use tierstack_http::{HttpCache, HttpCacheOptions};

mod support;

const N: u64 = 10;

async fn api(full: Arc<AtomicU64>, not_modified: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/b/{id}",
        axum::routing::get(
            move |axum::extract::Path(id): axum::extract::Path<u64>, headers: HeaderMap| {
                let (full, not_modified) = (Arc::clone(&full), Arc::clone(&not_modified));
                async move {
                    let etag = format!("\"{id}\"");
                    let caching = [
                        (header::ETAG, etag.clone()),
                        (header::CACHE_CONTROL, "max-age=1".to_owned()),
                    ];
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .and_then(|v| v.to_str().ok())
                        == Some(etag.as_str())
                    {
                        not_modified.fetch_add(1, Ordering::SeqCst);
                        return (StatusCode::NOT_MODIFIED, caching).into_response();
                    }
                    full.fetch_add(1, Ordering::SeqCst);
                    (caching, format!("book {id}")).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn host(redis: &RedisServer) -> HttpCache {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap())
        .tier(
            RedisTier::open(&RedisConfig::new(redis.url()).prefix("http-test"), 1)
                .await
                .unwrap(),
        )
        .build();
    HttpCache::new(cache, HttpCacheOptions::default())
}

async fn fresh_answers(cache: &TieredCache) -> Vec<(String, usize)> {
    let now = Timestamp::now();
    let mut out = Vec::new();
    for tier in cache.tiers() {
        let fresh = support::all_entries(&**tier)
            .await
            .iter()
            .filter(|(k, e)| !k.source().ends_with(":index") && e.header.is_fresh(now))
            .count();
        out.push((tier.name().to_owned(), fresh));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_another_host_fetched_are_revalidated_through_redis_and_fresh_in_both_tiers() {
    let redis = RedisServer::start();
    let (full, not_modified) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let base = api(Arc::clone(&full), Arc::clone(&not_modified)).await;
    let (first, second) = (host(&redis).await, host(&redis).await);
    let client = |http: &HttpCache| {
        reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(http.clone())
            .build()
    };
    let (one, two) = (client(&first), client(&second));
    for id in 0..N {
        let response = one.get(format!("{base}/b/{id}")).send().await.unwrap();
        assert_eq!(response.headers()["x-cache"], "MISS");
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for id in 0..N {
        let response = two.get(format!("{base}/b/{id}")).send().await.unwrap();
        assert_eq!(response.headers()["x-cache"], "REVALIDATED", "book {id}");
        assert_eq!(response.text().await.unwrap(), format!("book {id}"));
    }
    assert_eq!(full.load(Ordering::SeqCst), N, "no second body");
    assert_eq!(not_modified.load(Ordering::SeqCst), N, "one 304 each");
    let fresh = fresh_answers(second.cache()).await;
    assert!(
        fresh.iter().all(|(_, count)| *count == N as usize),
        "fresh in every tier of the second host: {fresh:?}"
    );
}

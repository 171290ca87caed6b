//! `tierstack proxy` next to what a tool would do without it, in one run,
//! all on loopback with keep-alive connections:
//!
//! - `proxy/get/direct`: a GET straight to the upstream (an axum server
//!   answering at once);
//! - `proxy/get/passthrough`: the same through a plain forwarding proxy
//!   (axum + reqwest, no cache): the floor of any proxy;
//! - `proxy/get/tierstack_hit`: the same through `tierstack proxy` with the
//!   answer cached (`max-age`), over a memory tier.
//!
//! The ratio reported is `tierstack_hit` / `passthrough` (and / `direct`).
//! The upstream answers at once here, so a hit saves only the upstream's
//! own work; against a real API (the load test's 20 ms) a hit saves the
//! whole round trip.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use tierstack::{MemoryConfig, MemoryTier, TieredCache};
use tierstack_http::{HttpCacheOptions, Proxy, Route};

mod common;
use common::runtime;

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

async fn upstream() -> String {
    serve(axum::Router::new().route(
        "/books/{id}",
        axum::routing::get(
            |axum::extract::Path(id): axum::extract::Path<u64>| async move {
                (
                    [("cache-control", "max-age=3600")],
                    format!("{{\"id\":{id},\"title\":\"Book {id}\"}}"),
                )
            },
        ),
    ))
    .await
}

/// A forwarding proxy with no cache: the request's path to `upstream`,
/// the answer back.
async fn passthrough(upstream: String) -> String {
    let client = reqwest::Client::new();
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let response = client
                .get(format!("{upstream}{}", uri.path()))
                .send()
                .await
                .expect("upstream");
            let status = response.status();
            let body = response.bytes().await.expect("body");
            (status, body)
        }
    });
    serve(router).await
}

async fn tierstack(upstream: &str) -> String {
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("memory"))
        .build();
    let routes = vec![Route::new("/", upstream).expect("route")];
    let proxy = Proxy::new(cache, routes, HttpCacheOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { proxy.serve(listener, std::future::pending()).await });
    base
}

fn proxy(c: &mut Criterion) {
    let rt = runtime();
    let (direct, plain, cached) = rt.block_on(async {
        let direct = upstream().await;
        let plain = passthrough(direct.clone()).await;
        let cached = tierstack(&direct).await;
        (direct, plain, cached)
    });
    let client = reqwest::Client::new();
    let get = |base: &str| {
        let (client, url) = (client.clone(), format!("{base}/books/7"));
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client.get(&url).send().await.expect("send");
                assert_eq!(response.status(), 200);
                response.bytes().await.expect("body")
            }
        }
    };
    // Warm: the tierstack proxy holds the answer before it is measured.
    let warm = rt.block_on(get(&cached)());
    assert!(warm.starts_with(b"{\"id\":7"));
    let mut group = c.benchmark_group("proxy/get");
    for (name, base) in [
        ("direct", &direct),
        ("passthrough", &plain),
        ("tierstack_hit", &cached),
    ] {
        let request = get(base);
        group.bench_function(name, |b| b.to_async(&rt).iter(&request));
    }
    group.finish();
}

criterion_group!(benches, proxy);
criterion_main!(benches);

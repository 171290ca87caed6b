//! `tierstack proxy` under load: concurrent clients over many URLs on
//! loopback against an upstream that takes 20 ms per answer. Every answer
//! must be right, none may fail, and the upstream must see each URL once.
//!
//! Small in CI (16 clients × 2 s over 200 URLs); the full size with
//! `TIERSTACK_PROXY_LOAD=full` (64 clients × 10 s over 1,000 URLs). The
//! throughput and p99 it prints are figures, not assertions; the benchmark
//! next to a plain passthrough proxy is `benches/benches/proxy.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tierstack::{MemoryConfig, MemoryTier, TieredCache};
use tierstack_http::{HttpCacheOptions, Proxy, Route};

struct Size {
    clients: usize,
    duration: Duration,
    urls: u64,
}

fn size() -> Size {
    match std::env::var("TIERSTACK_PROXY_LOAD").as_deref() {
        Ok("full") => Size {
            clients: 64,
            duration: Duration::from_secs(10),
            urls: 1000,
        },
        _ => Size {
            clients: 16,
            duration: Duration::from_secs(2),
            urls: 200,
        },
    }
}

async fn start_upstream(calls: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/item/{id}",
        axum::routing::get(move |axum::extract::Path(id): axum::extract::Path<u64>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                ([("cache-control", "max-age=3600")], format!("item {id}"))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// What one load run saw.
struct Report {
    requests: usize,
    p99: Duration,
    errors: u64,
    wrong: u64,
    distinct: u64,
}

impl Report {
    #[allow(clippy::cast_precision_loss)] // a printed rate
    fn rate(&self, size: &Size) -> f64 {
        self.requests as f64 / size.duration.as_secs_f64()
    }
}

/// `size.clients` clients asking `base` for `/item/{id}` until the time is
/// up, each from its own stretch of the URLs.
async fn load(base: &str, size: &Size) -> Report {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + size.duration;
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let asked = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let tasks: Vec<_> = (0..size.clients)
        .map(|client_index| {
            let (client, base) = (client.clone(), base.to_owned());
            let (errors, wrong) = (Arc::clone(&errors), Arc::clone(&wrong));
            let (urls, clients) = (size.urls, size.clients);
            let asked = Arc::clone(&asked);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let start = client_index as u64 * (urls / clients as u64).max(1);
                // Bounded: by time, and by a request count no run reaches.
                for step in 0..1_000_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let id = ((start + step) * 7919) % urls;
                    asked.lock().unwrap().insert(id);
                    let started = Instant::now();
                    match client.get(format!("{base}/item/{id}")).send().await {
                        Ok(response) if response.status() == 200 => match response.text().await {
                            Ok(body) if body == format!("item {id}") => {}
                            _ => {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    latencies.sort_unstable();
    let requests = latencies.len();
    let distinct = asked.lock().unwrap().len() as u64;
    Report {
        requests,
        p99: latencies[requests * 99 / 100],
        errors: errors.load(Ordering::Relaxed),
        wrong: wrong.load(Ordering::Relaxed),
        distinct,
    }
}

/// A forwarding proxy with no cache, the floor any proxy is compared with.
async fn passthrough(upstream: String) -> String {
    let client = reqwest::Client::new();
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            match client.get(format!("{upstream}{}", uri.path())).send().await {
                Ok(response) => {
                    let status = response.status();
                    (status, response.bytes().await.unwrap_or_default())
                }
                Err(_) => (axum::http::StatusCode::BAD_GATEWAY, bytes::Bytes::new()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_under_load_answers_every_request_right_and_fetches_each_url_once() {
    let size = size();
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = start_upstream(Arc::clone(&calls)).await;
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100_000)).unwrap())
        .build();
    let proxy = Proxy::new(
        cache,
        vec![Route::new("/", &upstream).unwrap()],
        HttpCacheOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = proxy.clone();
    tokio::spawn(async move { served.serve(listener, std::future::pending()).await });

    let cached = load(&base, &size).await;
    let upstream_calls = calls.load(Ordering::SeqCst);
    // The same load through a plain forwarding proxy, for the ratio.
    let plain = load(&passthrough(upstream.clone()).await, &size).await;
    println!(
        "{} clients × {:?} over {} URLs, upstream 20 ms per answer:\n  tierstack proxy: {} requests, {:.0}/s, p99 {:?}, {upstream_calls} upstream calls\n  plain passthrough: {} requests, {:.0}/s, p99 {:?}\n  throughput {:.1}× the passthrough's, p99 {:.3}× its",
        size.clients,
        size.duration,
        size.urls,
        cached.requests,
        cached.rate(&size),
        cached.p99,
        plain.requests,
        plain.rate(&size),
        plain.p99,
        cached.rate(&size) / plain.rate(&size),
        cached.p99.as_secs_f64() / plain.p99.as_secs_f64(),
    );
    assert_eq!(
        (cached.errors, cached.wrong),
        (0, 0),
        "errors, wrong bodies"
    );
    assert_eq!(
        (plain.errors, plain.wrong),
        (0, 0),
        "the passthrough's errors, wrong bodies"
    );
    assert_eq!(cached.distinct, size.urls, "every URL was asked for");
    assert_eq!(
        upstream_calls, cached.distinct,
        "one upstream call per distinct URL"
    );
}

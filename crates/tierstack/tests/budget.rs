//! The upstream budget in one process: rate limits that only upstream calls
//! spend, deadlines that turn a wait into a stale answer or a `Throttled`
//! error, rate groups, batch budgets, and the `Retry-After` circuit against
//! a real HTTP server on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tierstack::{
    Config, ErrorKind, FetchError, FetchOptions, Fetched, Key, MemoryConfig, MemoryTier, Rate,
    SourcePolicy, TieredCache, Ttl,
};

fn memory() -> MemoryTier {
    MemoryTier::new(&MemoryConfig::with_max_entries(100_000)).unwrap()
}

fn key(source: &str, n: u64) -> Key {
    Key::new(source, [("n", n.to_string())])
}

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

fn cache_with(pattern: &str, policy: SourcePolicy) -> TieredCache {
    TieredCache::builder()
        .tier(memory())
        .source_policy(pattern, policy)
        .build()
}

#[tokio::test]
async fn hits_never_wait_on_a_spent_budget() {
    let cache = cache_with(
        "api",
        SourcePolicy::default()
            .rate(rate("1/h"))
            .max_wait(Duration::from_millis(20)),
    );
    let calls = AtomicU64::new(0);
    let fetch = |_| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, FetchError>(7u64)
    };
    // The one request of the hour.
    cache
        .get_or_fetch(&key("api", 0), Ttl::TierDefault, fetch)
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..10_000 {
        let v = cache
            .get_or_fetch(&key("api", 0), Ttl::TierDefault, |_| async {
                Ok::<_, FetchError>(0u64)
            })
            .await
            .unwrap();
        assert_eq!(*v, 7);
    }
    // Far less than the one slot's wait (an hour), whatever the machine.
    assert!(started.elapsed() < Duration::from_secs(30));
    let s = cache.stats().sources["api"];
    assert_eq!((s.throttled_waits, s.throttled_rejections), (0, 0));
    assert_eq!(s.hits, 10_000);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A miss now would wait an hour: it fails at once, naming the source
    // and the wait.
    let err = cache
        .get_or_fetch(&key("api", 1), Ttl::TierDefault, fetch)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err:?}");
    assert!(err.is_temporary());
    assert!(err.to_string().contains("api"), "{err}");
    let wait = err.retry_after().unwrap();
    assert!(wait > Duration::from_secs(3500), "{wait:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().sources["api"].throttled_rejections, 1);
}

#[tokio::test]
async fn misses_are_paced_to_the_rate() {
    let cache = cache_with("api", SourcePolicy::default().rate(rate("20/s")));
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let calls = (0..10).map(|n| {
        let (cache, times) = (cache.clone(), Arc::clone(&times));
        tokio::spawn(async move {
            cache
                .get_or_fetch(&key("api", n), Ttl::TierDefault, |_| async move {
                    times.lock().unwrap().push(started.elapsed());
                    Ok::<_, FetchError>(n)
                })
                .await
                .unwrap()
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    let mut times = times.lock().unwrap().clone();
    times.sort();
    // 10 requests at 20/s with a burst of 1: the last no sooner than 9 gaps
    // of 50 ms after the first (a little slack for the clock).
    assert!(
        times[9].saturating_sub(times[0]) >= Duration::from_millis(430),
        "{times:?}"
    );
    let s = cache.stats().sources["api"];
    assert_eq!(s.fetches, 10);
    assert!(s.throttled_waits >= 8, "{s:?}");
}

#[tokio::test]
async fn a_wait_past_the_deadline_serves_the_stale_value() {
    let cache = TieredCache::builder()
        .tier(memory())
        .stale_for(Duration::from_secs(3600))
        .source_policy("api", SourcePolicy::default().rate(rate("1/h")))
        .build();
    let k = key("api", 1);
    cache
        .get_or_fetch(&k, Duration::from_millis(30), |_| async {
            Ok::<_, FetchError>(1u64)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let started = Instant::now();
    let answer = cache
        .get_or_fetch_with(
            &k,
            FetchOptions::ttl(Duration::from_secs(60)).soft_timeout(Duration::from_millis(50)),
            |_| async { Ok::<_, FetchError>(2u64) },
        )
        .await
        .unwrap();
    assert_eq!(answer, Fetched::Stale(Arc::new(1)));
    assert!(started.elapsed() < Duration::from_secs(5));
    let s = cache.stats().sources["api"];
    assert_eq!(
        (s.stale_served, s.throttled_rejections, s.fetches),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_rate_group_is_one_budget_for_its_sources() {
    let cache = TieredCache::builder()
        .tier(memory())
        .source_policy(
            "api:*",
            SourcePolicy::default()
                .rate(rate("1/h"))
                .rate_group("api")
                .max_wait(Duration::ZERO),
        )
        .source_policy(
            "api:search",
            SourcePolicy::default()
                .rate_group("api")
                .max_wait(Duration::ZERO),
        )
        .source_policy("other", SourcePolicy::default().rate(rate("1/h")))
        .build();
    let ok = |v: u64| move |_| async move { Ok::<_, FetchError>(v) };
    cache
        .get_or_fetch(&key("api:book", 1), Ttl::TierDefault, ok(1))
        .await
        .unwrap();
    let err = cache
        .get_or_fetch(&key("api:search", 1), Ttl::TierDefault, ok(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    // Another source has its own budget.
    cache
        .get_or_fetch(&key("other", 1), Ttl::TierDefault, ok(3))
        .await
        .unwrap();
}

#[test]
fn a_rate_group_with_two_rates_is_refused() {
    let err = TieredCache::builder()
        .source_policy(
            "a",
            SourcePolicy::default().rate(rate("1/s")).rate_group("g"),
        )
        .source_policy(
            "b",
            SourcePolicy::default().rate(rate("2/s")).rate_group("g"),
        )
        .try_build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("\"g\""), "{err}");
    assert!(err.to_string().contains("rate_group"), "{err}");
}

#[tokio::test]
async fn a_batch_spends_one_request_and_its_closure_spends_the_others() {
    let cache = cache_with(
        "api",
        SourcePolicy::default()
            .rate(rate("2/h").with_burst(2).unwrap())
            .max_wait(Duration::ZERO),
    );
    let keys: Vec<Key> = (0..4).map(|n| key("api", n)).collect();
    // Two requests: the one the cache spent, and one the closure spends.
    let values = cache
        .get_or_fetch_many(&keys[..2], Ttl::TierDefault, async |missing, ctx| {
            let mut out = Vec::new();
            for (i, k) in missing.iter().enumerate() {
                if i > 0 {
                    ctx.spend(k).await?;
                }
                out.push((k.clone(), Some(1u64)));
            }
            Ok::<_, tierstack::Error>(out)
        })
        .await
        .unwrap();
    assert_eq!(values.len(), 2);
    // The budget is spent: the next batch is turned away before it runs.
    let ran = AtomicU64::new(0);
    let err = cache
        .get_or_fetch_many(&keys[2..], Ttl::TierDefault, async |missing, _| {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, FetchError>(missing.into_iter().map(|k| (k, Some(1u64))).collect())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // A single-key fetch's closure can spend more too, and is refused.
    let err = cache
        .get_or_fetch(&key("api", 9), Ttl::TierDefault, |ctx| async move {
            ctx.spend().await?;
            Ok::<_, tierstack::Error>(1u64)
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err:?}");
}

#[tokio::test]
async fn bad_budget_config_names_the_field() {
    for (yaml, field) in [
        ("rate: ten", "cache.sources.\"api\".rate"),
        ("rate: 0/s", "cache.sources.\"api\".rate"),
        ("rate: 10/s\n      burst: 0", "cache.sources.\"api\".burst"),
        ("burst: 3", "cache.sources.\"api\".burst"),
        ("rate_scope: shared", "cache.sources.\"api\".rate_scope"),
    ] {
        let text =
            format!("cache:\n  tiers:\n    - kind: memory\n  sources:\n    api:\n      {yaml}\n");
        let config = Config::parse(&text, "yaml").unwrap();
        let err = TieredCache::from_config(&config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{yaml}");
        assert!(err.to_string().contains(field), "{yaml}: {err}");
    }
    let ok = "cache:\n  tiers:\n    - kind: memory\n  coordination: local\n  sources:\n    api:\n      rate: 10/s\n      burst: 5\n      rate_group: g\n      max_wait: 2s\n";
    let cache = TieredCache::from_config(&Config::parse(ok, "yaml").unwrap())
        .await
        .unwrap();
    let policy = cache.policy("api");
    assert_eq!(policy.rate, Some(rate("10/s").with_burst(5).unwrap()));
    assert_eq!(policy.max_wait, Some(Duration::from_secs(2)));
    assert_eq!(policy.rate_group.as_deref(), Some("g"));
}

/// `coordination`: `off` lets every concurrent caller of a cold key fetch,
/// `local` (and `shared` without a coordinating tier) keeps one fetch per
/// key in the process; a source's own setting wins over the cache's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_off_lets_every_caller_fetch_and_local_one_per_key() {
    use tierstack::Coordination;
    async fn fetches_for_ten_callers(cache: &TieredCache, source: &str) -> u64 {
        let calls = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, calls, k) = (cache.clone(), Arc::clone(&calls), key(source, 1));
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&k, Ttl::TierDefault, |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, FetchError>(1u64)
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(*task.await.unwrap(), 1);
        }
        calls.load(Ordering::SeqCst)
    }
    for (coordination, expected) in [
        (Coordination::Off, 10),
        (Coordination::Local, 1),
        (Coordination::Shared, 1),
    ] {
        let cache = TieredCache::builder()
            .tier(memory())
            .coordination(coordination)
            .build();
        assert_eq!(
            fetches_for_ten_callers(&cache, "api").await,
            expected,
            "{coordination:?}"
        );
    }
    // Per source: `off` for one source of a cache that coordinates.
    let cache = TieredCache::builder()
        .tier(memory())
        .source_policy(
            "free",
            SourcePolicy::default().coordination(Coordination::Off),
        )
        .build();
    assert_eq!(fetches_for_ten_callers(&cache, "free").await, 10);
    assert_eq!(fetches_for_ten_callers(&cache, "api").await, 1);
}

/// `lease_ttl` below 100 ms and `expected_processes: 0` are refused,
/// naming the field.
#[tokio::test]
async fn bad_coordination_config_names_the_field() {
    for (yaml, field) in [
        ("lease_ttl: 99ms", "cache.lease_ttl"),
        ("expected_processes: 0", "cache.expected_processes"),
    ] {
        let text = format!("cache:\n  tiers:\n    - kind: memory\n  {yaml}\n");
        let err = match Config::parse(&text, "yaml") {
            Err(e) => e,
            Ok(config) => TieredCache::from_config(&config).await.unwrap_err(),
        };
        assert_eq!(err.kind(), ErrorKind::Config, "{yaml}");
        assert!(err.to_string().contains(field), "{yaml}: {err}");
    }
}

// ------------------------------------------------ Retry-After, over HTTP --

/// An API on loopback that answers 429 with `Retry-After: 2` to its first
/// request and 200 to every other, counting requests.
async fn start_api() -> (String, Arc<AtomicU64>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let requests = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&requests);
    let app = axum::Router::new().route(
        "/item/{n}",
        axum::routing::get(move |axum::extract::Path(n): axum::extract::Path<u64>| {
            let counted = Arc::clone(&counted);
            async move {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "2")],
                        String::new(),
                    )
                        .into_response()
                } else {
                    n.to_string().into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, requests)
}

/// The docs' reqwest recipe: a 429 or 503 becomes a `FetchError` with the
/// server's `Retry-After`.
async fn fetch_item(http: &reqwest::Client, url: String) -> Result<u64, FetchError> {
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| FetchError::new(e.to_string()))?;
    let status = response.status();
    if status == 429 || status == 503 {
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(FetchError::parse_retry_after)
            .unwrap_or(Duration::from_secs(60));
        return Err(FetchError::throttled(wait).with_message(format!("{url}: HTTP {status}")));
    }
    let text = response
        .text()
        .await
        .map_err(|e| FetchError::new(e.to_string()))?;
    text.parse().map_err(|_| FetchError::new("not a number"))
}

#[tokio::test]
async fn a_retry_after_stops_every_fetch_of_the_source_serves_stale_then_one_probe() {
    let (base, requests) = start_api().await;
    let http = reqwest::Client::new();
    let cache = TieredCache::builder()
        .tier(memory())
        .stale_for(Duration::from_secs(3600))
        .build();
    let fetch = |n: u64| {
        let (http, url) = (http.clone(), format!("{base}/item/{n}"));
        move |_| async move { fetch_item(&http, url).await }
    };
    // A value that is stale when the upstream says "slow down".
    cache
        .set(&key("api", 1), 100u64, Ttl::For(Duration::from_millis(10)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let first = cache
        .get_or_fetch_with(&key("api", 1), Ttl::TierDefault, fetch(1))
        .await
        .unwrap();
    assert_eq!(first, Fetched::Stale(Arc::new(100)));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let opened = Instant::now();

    // For the next 2 s: stale where there is one, Throttled at once where
    // there is none, and no request.
    while opened.elapsed() < Duration::from_millis(1700) {
        let stale = cache
            .get_or_fetch_with(&key("api", 1), Ttl::TierDefault, fetch(1))
            .await
            .unwrap();
        assert!(stale.is_stale());
        let asked = Instant::now();
        let err = cache
            .get_or_fetch(&key("api", 2), Ttl::TierDefault, fetch(2))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled, "{err:?}");
        assert!(
            asked.elapsed() < Duration::from_millis(200),
            "turned away at once"
        );
        assert!(err.retry_after().unwrap() <= Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1, "no request while open");
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(opened.elapsed()) + Duration::from_millis(100),
    )
    .await;

    // Half-open: of 5 callers at once, one probes; the others are turned away.
    let calls: Vec<_> = (10..15)
        .map(|n| {
            let cache = cache.clone();
            let f = fetch(n);
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("api", n), Ttl::TierDefault, f)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Throttled, "{e:?}");
                // Told to come back soon, not after the whole probe slot.
                assert!(e.retry_after().unwrap() <= Duration::from_secs(1), "{e:?}");
                assert!(e.to_string().contains("probing"), "{e}");
            }
        }
    }
    assert_eq!(ok, 1, "one probe");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // The probe's answer closed the circuit.
    let v = cache
        .get_or_fetch(&key("api", 3), Ttl::TierDefault, fetch(3))
        .await
        .unwrap();
    assert_eq!(*v, 3);
    let s = cache.stats().sources["api"];
    assert!(s.circuit_open >= 10, "{s:?}");
    assert!(s.stale_served >= 2, "{s:?}");
}

#[tokio::test]
async fn a_pass_through_cache_still_keeps_the_budget() {
    let cache = TieredCache::builder()
        .enabled(false)
        .source_policy(
            "api",
            SourcePolicy::default()
                .rate(rate("1/h"))
                .max_wait(Duration::ZERO),
        )
        .build();
    let ok = |_| async { Ok::<_, FetchError>(1u64) };
    cache
        .get_or_fetch(&key("api", 1), Ttl::TierDefault, ok)
        .await
        .unwrap();
    let err = cache
        .get_or_fetch(&key("api", 1), Ttl::TierDefault, ok)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err:?}");
    let s = cache.stats().sources["api"];
    assert_eq!((s.fetches, s.throttled_rejections), (1, 1));
}

#[tokio::test]
async fn a_slow_down_stops_the_calls_already_waiting_for_a_slot_and_is_throttled_itself() {
    let cache = cache_with("api", SourcePolicy::default().rate(rate("10/s")));
    let calls = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..5)
        .map(|n| {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("api", n), Ttl::TierDefault, |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err::<u64, _>(
                            FetchError::throttled(Duration::from_secs(5)).with_message("HTTP 429"),
                        )
                    })
                    .await
            })
        })
        .collect();
    let mut errors = Vec::new();
    for handle in handles {
        errors.push(handle.await.unwrap().unwrap_err());
    }
    // The first request got the 429; the four queued behind the rate limit
    // asked the circuit again after their wait, and none was sent.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for e in &errors {
        assert_eq!(e.kind(), ErrorKind::Throttled, "{e:?}");
        let wait = e.retry_after().unwrap();
        assert!(
            wait <= Duration::from_secs(5) && wait > Duration::from_secs(3),
            "{e:?}"
        );
    }
    // The one whose own request got the 429 says so, with the upstream's error.
    assert!(
        errors
            .iter()
            .any(|e| e.report().to_string().contains("HTTP 429")),
        "{errors:?}"
    );
    let s = cache.stats().sources["api"];
    assert_eq!(
        (s.fetches, s.fetch_errors, s.circuit_open),
        (1, 1, 4),
        "{s:?}"
    );
}

#[test]
fn a_shared_budget_without_a_rate_is_refused_by_the_builder_too() {
    let err = TieredCache::builder()
        .source_policy(
            "api:*",
            SourcePolicy::default().rate_scope(tierstack::RateScope::Shared),
        )
        .try_build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("\"api:*\""), "{err}");
}

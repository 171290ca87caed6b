//! A CI fleet sharing one Redis: several OS processes resolve the same cold
//! keys at once against an API that allows 10 requests a second.
//!
//! A local HTTP server plays the API: a token bucket of 10 requests a second
//! with a burst of 10, HTTP 429 (`Retry-After: 1`) above it; it counts every
//! request per key. This program starts it, then starts `FLEET_PROCESSES`
//! (default 8) copies of itself; each builds memory over the shared Redis,
//! with the API's sources at `rate: 9/s, burst: 1, rate_scope: shared`, and
//! resolves the same `FLEET_KEYS` (default 300) cold keys with 16 concurrent
//! tasks. The cross-process leases make one request per key for the whole
//! fleet, and the shared budget keeps the fleet under the API's limit.
//!
//! It prints the upstream calls, the 429s and the wall time, and exits
//! non-zero when the upstream calls are not exactly one per key, when any
//! 429 was seen, or when any process got a wrong value or an error.
//! `FLEET_COORDINATION=local` shows what the fleet does without leases.
//!
//! Needs a Redis server: `TIERSTACK_REDIS_URL` (default
//! `redis://127.0.0.1:6379`); everything it writes is under a prefix of its
//! own, removed at the end.
//!
//! ```sh
//! cargo run --release --example ci_fleet
//! FLEET_PROCESSES=4 FLEET_KEYS=50 cargo run --example ci_fleet
//! ```

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tierstack::{
    ClearScope, Coordination, FetchError, Key, MemoryConfig, MemoryTier, Rate, RateScope,
    RedisConfig, RedisTier, SourcePolicy, TieredCache, Ttl,
};

const TASKS: usize = 16;
const API_RATE: f64 = 10.0;
const API_BURST: f64 = 10.0;
const LATENCY: Duration = Duration::from_millis(30);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- the API --

/// A token bucket in front of a store of values, counting requests per key.
struct Api {
    bucket: Mutex<(f64, Instant)>,
    requests: Mutex<HashMap<u64, u64>>,
    throttled: Mutex<u64>,
}

impl Api {
    fn new() -> Self {
        Self {
            bucket: Mutex::new((API_BURST, Instant::now())),
            requests: Mutex::default(),
            throttled: Mutex::default(),
        }
    }

    fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * API_RATE;
        *bucket = ((bucket.0 + refill).min(API_BURST), now);
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    async fn item(self: Arc<Self>, n: u64) -> Response {
        if !self.admit() {
            *self
                .throttled
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += 1;
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(n)
            .or_default() += 1;
        tokio::time::sleep(LATENCY).await;
        value(n).into_response()
    }
}

fn value(n: u64) -> String {
    format!("value of item {n}")
}

async fn start_api(api: Arc<Api>) -> std::io::Result<String> {
    let app = axum::Router::new()
        .route(
            "/items/{n}",
            axum::routing::get(|State(api): State<Arc<Api>>, Path(n): Path<u64>| api.item(n)),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

// ------------------------------------------------------------- a process --

async fn fleet_cache(
    redis_url: &str,
    prefix: &str,
    processes: u32,
) -> tierstack::Result<TieredCache> {
    let coordination = match std::env::var("FLEET_COORDINATION").as_deref() {
        Ok("local") => Coordination::Local,
        _ => Coordination::Shared,
    };
    let redis = RedisConfig::new(redis_url)
        .prefix(prefix)
        .ttl(Some(Duration::from_secs(3600)));
    TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000))?)
        .tier(RedisTier::open(&redis, 1).await?)
        .coordination(coordination)
        .expected_processes(processes)
        .source_policy(
            "items",
            SourcePolicy::default()
                .rate(Rate::new(9, Duration::from_secs(1)).expect("9/s is a rate"))
                .rate_scope(RateScope::Shared),
        )
        .try_build()
}

async fn fetch_item(http: &reqwest::Client, base: &str, n: u64) -> Result<String, FetchError> {
    let url = format!("{base}/items/{n}");
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| FetchError::new(e.to_string()))?;
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(FetchError::parse_retry_after)
            .unwrap_or(Duration::from_secs(1));
        return Err(FetchError::throttled(wait).with_message(format!("{url}: HTTP 429")));
    }
    response
        .text()
        .await
        .map_err(|e| FetchError::new(e.to_string()))
}

/// One process of the fleet: resolves every key, prints one `RESULT` line.
async fn worker(base: &str, redis_url: &str, prefix: &str, keys: u64, processes: u32) {
    let cache = match fleet_cache(redis_url, prefix, processes).await {
        Ok(cache) => cache,
        Err(e) => {
            println!("RESULT error {}", e.report());
            return;
        }
    };
    let http = reqwest::Client::new();
    let outcomes: Vec<Result<bool, String>> = futures_util::stream::iter(0..keys)
        .map(|n| {
            let (cache, http) = (&cache, &http);
            async move {
                let key = Key::new("items", [("n", n.to_string())]);
                cache
                    .get_or_fetch(&key, Ttl::TierDefault, |_| fetch_item(http, base, n))
                    .await
                    .map(|v| *v == value(n))
                    .map_err(|e| e.report().to_string())
            }
        })
        .buffer_unordered(TASKS)
        .collect()
        .await;
    let wrong = outcomes.iter().filter(|o| matches!(o, Ok(false))).count();
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    if let Some(first) = errors.first() {
        eprintln!(
            "process {}: {} errors, first: {first}",
            std::process::id(),
            errors.len()
        );
    }
    let s = cache
        .stats()
        .sources
        .get("items")
        .copied()
        .unwrap_or_default();
    println!(
        "RESULT ok wrong={wrong} errors={} fetches={} lease_won={} lease_waited={} takeovers={} fallbacks={}",
        errors.len(),
        s.fetches,
        s.lease_won,
        s.lease_waited,
        s.lease_takeovers,
        s.coordination_fallbacks
    );
}

// ------------------------------------------------------------ the fleet --

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Prints the fleet's figures; returns what went wrong.
fn report(api: &Api, keys: u64, results: &[(bool, String)], wall: Duration) -> Vec<String> {
    let requests = api
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let upstream: u64 = requests.values().sum();
    let distinct = requests.len() as u64;
    let throttled = *api.throttled.lock().unwrap_or_else(PoisonError::into_inner);
    let sum = |name: &str| results.iter().map(|(_, l)| field(l, name)).sum::<u64>();
    println!(
        "{:>9} {:>9} {:>5} {:>8} {:>10} {:>11} {:>9} {:>9} {:>6} {:>6}",
        "upstream",
        "distinct",
        "429s",
        "wall",
        "leases won",
        "lease waits",
        "takeovers",
        "fallbacks",
        "wrong",
        "errors"
    );
    println!(
        "{upstream:>9} {distinct:>9} {throttled:>5} {:>7.1}s {:>10} {:>11} {:>9} {:>9} {:>6} {:>6}",
        wall.as_secs_f64(),
        sum("lease_won"),
        sum("lease_waited"),
        sum("takeovers"),
        sum("fallbacks"),
        sum("wrong"),
        sum("errors"),
    );
    let mut failures = Vec::new();
    if upstream != keys || distinct != keys {
        failures.push(format!(
            "{upstream} upstream calls for {keys} distinct keys ({distinct} keys asked)"
        ));
    }
    if throttled > 0 {
        failures.push(format!("the API answered 429 {throttled} times"));
    }
    if sum("wrong") + sum("errors") > 0 {
        failures.push(format!(
            "{} wrong values, {} errors",
            sum("wrong"),
            sum("errors")
        ));
    }
    for (ok, line) in results {
        if !ok || !line.starts_with("RESULT ok") {
            failures.push(format!("a process failed: {line}"));
        }
    }
    failures
}

#[tokio::main]
async fn main() {
    let redis_url = std::env::var("TIERSTACK_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let processes = u32::try_from(env_number("FLEET_PROCESSES", 8).clamp(1, 64)).unwrap_or(8);
    let keys = u64::try_from(env_number("FLEET_KEYS", 300).clamp(1, 100_000)).unwrap_or(300);
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, base, prefix] = args.as_slice() {
        if flag == "--worker" {
            worker(base, &redis_url, prefix, keys, processes).await;
            return;
        }
    }

    let prefix = format!("tierstack-fleet-{}", std::process::id());
    let probe = match fleet_cache(&redis_url, &prefix, processes).await {
        Ok(cache) => cache,
        Err(e) => {
            eprintln!("cannot open the fleet's cache: {}", e.report());
            std::process::exit(2);
        }
    };
    if let Some((_, tierstack::Health::Unhealthy(why))) = probe.health().await.get(1) {
        eprintln!("Redis at {redis_url} is not usable: {why}");
        eprintln!("start one (redis-server) or set TIERSTACK_REDIS_URL");
        std::process::exit(2);
    }
    let api = Arc::new(Api::new());
    let base = match start_api(Arc::clone(&api)).await {
        Ok(base) => base,
        Err(e) => {
            eprintln!("cannot start the local API: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "{processes} processes x {TASKS} tasks, {keys} cold keys, one Redis at {redis_url}; API: {API_RATE}/s, burst {API_BURST}; fleet budget 9/s shared"
    );
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(std::env::current_exe().expect("this program"))
                .args(["--worker", &base, &prefix])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a process of the fleet")
        })
        .collect();
    let mut results = Vec::new();
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("a process of the fleet");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or("RESULT missing")
            .to_owned();
        results.push((output.status.success(), line));
    }
    let wall = started.elapsed();
    let _ = probe.clear(ClearScope::All).await;

    let failures = report(&api, keys, &results, wall);
    if !failures.is_empty() {
        eprintln!("ci_fleet failed: {}", failures.join("; "));
        std::process::exit(1);
    }
}

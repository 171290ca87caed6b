//! The metadata pipeline of the RFC, end to end, on the embedded default
//! stack (memory 1 h over SQLite 7 days; no server needed).
//!
//! A local HTTP server simulates the metadata API: ~100 ms per request, 10
//! requests per second (HTTP 429 beyond), a catalogue of 3,000 books, 404 for
//! unknown ASINs, a batch endpoint for up to 50 ASINs. A client resolves a
//! Zipf-like mix of book lookups, searches and path parses through the cache,
//! three times:
//!
//! 1. cold: a new cache file;
//! 2. warm: a new `TieredCache` on the same file, as a new process would be;
//! 3. offline: the API server stopped, the cache in offline mode.
//!
//! It prints one row per run and exits non-zero if any answer was wrong, if
//! the warm run called the API or saw a 429, or if the offline run could not
//! answer a lookup seen before.
//!
//! ```sh
//! cargo run --release --example metadata_pipeline          # 2,000 lookups
//! PIPELINE_LOOKUPS=300 cargo run --example metadata_pipeline
//! ```

// Ratios and a random sampler for a printed report: precision loss is fine.
#![allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tierstack::{
    BatchContext, CachedFn, FetchError, FetchOptions, Key, MemoryConfig, MemoryTier, Rate,
    SourcePolicy, SqliteConfig, SqliteTier, TieredCache,
};

const CATALOGUE: u64 = 3_000;
const DISTINCT_BOOKS: u64 = 500;
const RATE_PER_SEC: u64 = 10;
const LATENCY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
    author: String,
    runtime_minutes: u32,
}

fn catalogue_book(n: u64) -> Option<Book> {
    (n < CATALOGUE).then(|| Book {
        asin: asin(n),
        title: format!("Title {n}"),
        author: format!("Author {}", n % 97),
        runtime_minutes: 300 + (n % 700) as u32,
    })
}

fn asin(n: u64) -> String {
    format!("B{n:09}")
}

fn number(asin: &str) -> Option<u64> {
    asin.strip_prefix('B')?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PathInfo {
    genre: String,
    title: String,
}

// ---------------------------------------------------------------- the API --

#[derive(Default)]
struct Api {
    requests: AtomicU64,
    throttled: AtomicU64,
    window: std::sync::Mutex<(u64, u64)>,
}

impl Api {
    /// Fixed one-second windows of `RATE_PER_SEC` requests.
    fn admit(&self) -> bool {
        let second = epoch_secs();
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.0 != second {
            *w = (second, 0);
        }
        w.1 += 1;
        w.1 <= RATE_PER_SEC
    }

    async fn serve<T: Serialize>(&self, answer: impl FnOnce() -> Option<T>) -> Response {
        if !self.admit() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(LATENCY).await;
        match answer() {
            Some(body) => Json(body).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct BatchQuery {
    asins: String,
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
}

async fn start_api(api: Arc<Api>) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route(
            "/books/{asin}",
            get(
                |State(api): State<Arc<Api>>, Path(a): Path<String>| async move {
                    api.serve(|| number(&a).and_then(catalogue_book)).await
                },
            ),
        )
        .route(
            "/books",
            get(
                |State(api): State<Arc<Api>>, Query(q): Query<BatchQuery>| async move {
                    api.serve(|| {
                        let found: Vec<Book> = q
                            .asins
                            .split(',')
                            .filter_map(|a| number(a).and_then(catalogue_book))
                            .collect();
                        Some(found)
                    })
                    .await
                },
            ),
        )
        .route(
            "/search",
            get(
                |State(api): State<Arc<Api>>, Query(q): Query<SearchQuery>| async move {
                    api.serve(|| {
                        let hits: Vec<Book> = (0..CATALOGUE)
                            .filter_map(catalogue_book)
                            .filter(|b| b.title == q.q)
                            .collect();
                        Some(hits)
                    })
                    .await
                },
            ),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, server))
}

// ------------------------------------------------------------- the client --

/// GETs `url`; `None` on 404. A 429 is counted and handed to the cache as
/// the API's "slow down" (its `Retry-After`): the cache paces requests
/// itself, so a 429 means the pacing was wrong, and the run fails on one.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    throttled: &AtomicU64,
) -> Result<Option<T>, FetchError> {
    let failed = |e: reqwest::Error| FetchError::new(e.to_string());
    let response = http.get(url).send().await.map_err(failed)?;
    match response.status() {
        StatusCode::TOO_MANY_REQUESTS => {
            throttled.fetch_add(1, Ordering::Relaxed);
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(FetchError::parse_retry_after)
                .unwrap_or(Duration::from_secs(1));
            Err(FetchError::throttled(wait).with_message(format!("{url}: HTTP 429")))
        }
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => response.json().await.map(Some).map_err(failed),
        s => Err(FetchError::new(format!("{url}: HTTP {s}"))),
    }
}

/// The tool's client of the metadata API: cheap to clone (a connection
/// pool and two shared handles), its methods borrow `&self`.
#[derive(Clone)]
struct MetadataClient {
    http: reqwest::Client,
    base: Arc<str>,
    /// 429 answers seen (and waited out) by every clone.
    throttled: Arc<AtomicU64>,
}

impl MetadataClient {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
            throttled: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn search(&self, n: u64) -> Result<Vec<Book>, FetchError> {
        let url = format!("{}/search?q=Title%20{n}", self.base);
        get_json::<Vec<Book>>(&self.http, &url, &self.throttled)
            .await
            .map(Option::unwrap_or_default)
    }

    /// One request per 50 keys; `None` for ASINs the API does not know.
    /// The cache spent one request of the budget before the call; every
    /// request after the first spends its own.
    async fn books(
        &self,
        keys: &[Key],
        budget: &BatchContext,
    ) -> Result<Vec<(Key, Option<Book>)>, FetchError> {
        let mut answers = Vec::with_capacity(keys.len());
        for (i, group) in keys.chunks(50).enumerate() {
            if i > 0 {
                budget.spend(&group[0]).await.map_err(|e| {
                    FetchError::new("the budget turned a request away").with_source(e)
                })?;
            }
            let asins: Vec<String> = group
                .iter()
                .filter_map(|k| k.params()?.into_iter().next().map(|(_, v)| v))
                .collect();
            let url = format!("{}/books?asins={}", self.base, asins.join(","));
            let found: Vec<Book> = get_json(&self.http, &url, &self.throttled)
                .await?
                .unwrap_or_default();
            let mut by_asin: HashMap<String, Book> =
                found.into_iter().map(|b| (b.asin.clone(), b)).collect();
            for (key, a) in group.iter().zip(asins) {
                answers.push((key.clone(), by_asin.remove(&a)));
            }
        }
        Ok(answers)
    }
}

enum Lookup {
    Book(u64),
    Search(u64),
    Path(u64),
}

/// A deterministic Zipf-like workload over `DISTINCT_BOOKS` books (5% of
/// book lookups ask for ASINs that do not exist).
fn workload(n: usize) -> Vec<Lookup> {
    let weights: Vec<f64> = (1..=DISTINCT_BOOKS)
        .map(|k| 1.0 / (k as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let rank = cumulative.partition_point(|&c| c < next()) as u64;
            // Spread popular ranks over the catalogue.
            let book = rank * 5 % CATALOGUE;
            let kind = next();
            if kind < 0.70 {
                if next() < 0.05 {
                    Lookup::Book(CATALOGUE + rank)
                } else {
                    Lookup::Book(book)
                }
            } else if kind < 0.85 {
                Lookup::Search(book % 60)
            } else {
                Lookup::Path(book)
            }
        })
        .collect()
}

struct Figures {
    upstream: u64,
    throttled: u64,
    wall: Duration,
    l1_hits: f64,
    l2_hits: f64,
    stale: u64,
    errors: u64,
    wrong: u64,
}

async fn open_cache(db: &std::path::Path) -> tierstack::Result<TieredCache> {
    Ok(TieredCache::builder()
        .tier(MemoryTier::new(
            &MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)),
        )?)
        .tier(SqliteTier::open(&SqliteConfig::new(db), 1).await?)
        .source_policy(
            "audnexus:*",
            // Every endpoint of the API spends one budget: 9 requests a
            // second, a 10% margin under the API's 10.
            SourcePolicy::ttl(Duration::from_secs(7 * 86400))
                .stale_for(Duration::from_secs(30 * 86400))
                .rate(Rate::new(9, Duration::from_secs(1)).expect("9/s is a rate"))
                .rate_group("audnexus"),
        )
        .source_policy("pathinfo", SourcePolicy::ttl(Duration::from_secs(3600)))
        .negative_ttl(Duration::from_secs(3600))
        .build())
}

#[allow(clippy::too_many_lines)]
async fn run(cache: &TieredCache, base: &str, lookups: &[Lookup], api: &Api) -> Figures {
    let client = MetadataClient::new(base);
    let requests_before = api.requests.load(Ordering::Relaxed);
    let (mut errors, mut wrong) = (0u64, 0u64);
    let started = Instant::now();

    // Kept and called on every miss: each call's future owns a clone.
    let search: CachedFn<u64, Vec<Book>> = cache.cached_fn(
        |n: &u64| Key::new("audnexus:search", [("q", format!("Title {n}"))]),
        {
            let client = client.clone();
            move |n: u64, _| {
                let client = client.clone();
                async move { client.search(n).await }
            }
        },
    );
    let path_info: CachedFn<u64, PathInfo> = cache.cached_fn(
        |n: &u64| {
            Key::new(
                "pathinfo",
                [("path", format!("/audiobooks/genre{}/Title {n}", n % 7))],
            )
        },
        |n: u64, _| async move {
            Ok::<_, FetchError>(PathInfo {
                genre: format!("genre{}", n % 7),
                title: format!("Title {n}"),
            })
        },
    );

    for chunk in lookups.chunks(100) {
        // Book lookups of the chunk: one batched lookup per tier, then one
        // batch request per 50 missing ASINs.
        let books: Vec<u64> = chunk
            .iter()
            .filter_map(|l| {
                if let Lookup::Book(n) = l {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect();
        let keys: Vec<Key> = books
            .iter()
            .map(|n| Key::new("audnexus:book", [("asin", asin(*n))]))
            .collect();
        let fetched = cache
            .get_or_fetch_many(&keys, FetchOptions::default(), async |missing, ctx| {
                client.books(&missing, &ctx).await
            })
            .await;
        match fetched {
            Ok(values) => {
                for (n, value) in books.iter().zip(values) {
                    if value.as_deref() != catalogue_book(*n).as_ref() {
                        wrong += 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("batch failed: {}", e.report());
                errors += books.len() as u64;
            }
        }
        for lookup in chunk {
            match lookup {
                Lookup::Search(n) => match search.call(*n).await {
                    Ok(hits)
                        if hits.len() == 1 && Some(&hits[0]) == catalogue_book(*n).as_ref() => {}
                    Ok(_) => wrong += 1,
                    Err(e) => {
                        eprintln!("search failed: {}", e.report());
                        errors += 1;
                    }
                },
                Lookup::Path(n) => match path_info.call(*n).await {
                    Ok(info) if info.title == format!("Title {n}") => {}
                    Ok(_) => wrong += 1,
                    Err(_) => errors += 1,
                },
                Lookup::Book(_) => {}
            }
        }
    }
    let stats = cache.stats();
    let ratio = |i: usize| {
        stats
            .layers
            .get(i)
            .map_or(0.0, |l| l.hits as f64 / lookups.len() as f64 * 100.0)
    };
    Figures {
        upstream: api.requests.load(Ordering::Relaxed) - requests_before,
        throttled: client.throttled.load(Ordering::Relaxed),
        wall: started.elapsed(),
        l1_hits: ratio(0),
        l2_hits: ratio(1),
        stale: stats.totals().stale_served,
        errors,
        wrong,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size: usize = std::env::var("PIPELINE_LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let lookups = workload(size);
    let dir = std::env::temp_dir().join(format!("tierstack-pipeline-{}", std::process::id()));
    let db = dir.join("metadata.db");
    let api = Arc::new(Api::default());
    let (base, server) = start_api(Arc::clone(&api)).await?;

    let cold = run(&open_cache(&db).await?, &base, &lookups, &api).await;
    let warm = run(&open_cache(&db).await?, &base, &lookups, &api).await;
    server.abort();
    let _ = server.await;
    let offline_cache = open_cache(&db).await?;
    offline_cache.set_offline(true);
    let offline = run(&offline_cache, "http://127.0.0.1:9", &lookups, &api).await;
    drop(offline_cache);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "{size} lookups ({DISTINCT_BOOKS} distinct books, Zipf-like), API at {RATE_PER_SEC} req/s with {LATENCY:?} latency"
    );
    println!(
        "{:<8} {:>9} {:>5} {:>9} {:>7} {:>7} {:>6} {:>6} {:>6}",
        "run", "upstream", "429s", "wall", "L1 hit", "L2 hit", "stale", "errors", "wrong"
    );
    for (name, f) in [("cold", &cold), ("warm", &warm), ("offline", &offline)] {
        println!(
            "{:<8} {:>9} {:>5} {:>8.1}s {:>6.1}% {:>6.1}% {:>6} {:>6} {:>6}",
            name,
            f.upstream,
            f.throttled,
            f.wall.as_secs_f64(),
            f.l1_hits,
            f.l2_hits,
            f.stale,
            f.errors,
            f.wrong
        );
    }
    let failures: Vec<String> = [
        (
            cold.wrong + warm.wrong + offline.wrong > 0,
            "some answers were wrong".to_string(),
        ),
        (
            cold.errors + warm.errors > 0,
            "lookups failed while the API was up".to_string(),
        ),
        (
            cold.throttled > 0,
            format!(
                "the cold run saw {} 429s: the cache's rate limit did not pace the API's budget",
                cold.throttled
            ),
        ),
        (
            warm.upstream > 0 || warm.throttled > 0,
            format!(
                "the warm run called the API {} times ({} 429s)",
                warm.upstream, warm.throttled
            ),
        ),
        (
            offline.errors > 0,
            format!(
                "offline, {} lookups seen before went unanswered",
                offline.errors
            ),
        ),
    ]
    .into_iter()
    .filter_map(|(failed, why)| failed.then_some(why))
    .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

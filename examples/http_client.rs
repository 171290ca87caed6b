//! Caching an HTTP API with `tierstack-http`: a reqwest client with the
//! cache as middleware, in front of a local API that sends `ETag`s and
//! short lifetimes, and counts what it answers.
//!
//! The first pass fetches every book (200s), a second at once is served
//! from memory, and a third after the answers expired revalidates them:
//! one conditional request each, answered `304 Not Modified` with no body,
//! the answers fresh again in memory and SQLite.
//!
//! `cargo run --release --example http_client`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use tierstack::{MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache};
use tierstack_http::{HttpCache, HttpCacheOptions};

const BOOKS: u64 = 25;

/// What the API answered.
#[derive(Default)]
struct Answered {
    full: AtomicU64,
    not_modified: AtomicU64,
}

async fn start_api(answered: Arc<Answered>) -> Result<String, Box<dyn std::error::Error>> {
    let app = axum::Router::new().route(
        "/books/{id}",
        axum::routing::get(
            move |axum::extract::Path(id): axum::extract::Path<u64>, headers: HeaderMap| {
                let answered = Arc::clone(&answered);
                async move {
                    let etag = format!("\"book-{id}-v1\"");
                    let caching = [
                        (header::ETAG, etag.clone()),
                        (header::CACHE_CONTROL, "max-age=1".to_owned()),
                    ];
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .and_then(|v| v.to_str().ok())
                        == Some(etag.as_str())
                    {
                        answered.not_modified.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::NOT_MODIFIED, caching).into_response();
                    }
                    answered.full.fetch_add(1, Ordering::Relaxed);
                    (caching, format!("{{\"id\":{id},\"title\":\"Book {id}\"}}")).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// Reads every book; returns how each answer was served.
async fn read_all(
    client: &reqwest_middleware::ClientWithMiddleware,
    base: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut served = Vec::new();
    for id in 0..BOOKS {
        let response = client.get(format!("{base}/books/{id}")).send().await?;
        let how = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let body = response.text().await?;
        if !body.contains(&format!("\"id\":{id}")) {
            return Err(format!("book {id}: wrong body {body}").into());
        }
        served.push(how);
    }
    Ok(served)
}

fn count(served: &[String], what: &str) -> usize {
    served.iter().filter(|s| *s == what).count()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let answered = Arc::new(Answered::default());
    let base = start_api(Arc::clone(&answered)).await?;
    let dir = tempfile::tempdir()?;
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000))?)
        .tier(SqliteTier::open(&SqliteConfig::new(dir.path().join("http.db")), 1).await?)
        .build();
    let http = HttpCache::new(cache.clone(), HttpCacheOptions::default());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(http)
        .build();

    let first = read_all(&client, &base).await?;
    let second = read_all(&client, &base).await?;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let third = read_all(&client, &base).await?;

    let full = answered.full.load(Ordering::Relaxed);
    let not_modified = answered.not_modified.load(Ordering::Relaxed);
    println!("first pass:  {} MISS", count(&first, "MISS"));
    println!("second pass: {} HIT", count(&second, "HIT"));
    println!(
        "third pass:  {} REVALIDATED (after the answers expired)",
        count(&third, "REVALIDATED")
    );
    println!("the API sent {full} full answers and {not_modified} 304s");
    // The source is the API's host and port.
    let source = base.trim_start_matches("http://");
    let revalidated = cache.stats().sources[source].revalidated;
    println!("the cache counts {revalidated} revalidations");

    let all = usize::try_from(BOOKS)?;
    let expected = (
        count(&first, "MISS"),
        count(&second, "HIT"),
        count(&third, "REVALIDATED"),
    );
    if expected != (all, all, all) || full != BOOKS || not_modified != BOOKS || revalidated != BOOKS
    {
        return Err("the answers were not served as expected".into());
    }
    Ok(())
}

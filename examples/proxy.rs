//! `tierstack proxy` for a tool in another language: a local API that sends
//! `ETag`s and one-second lifetimes, the caching proxy in front of it, and
//! `examples/proxy_client.py` (Python `requests`) pointed at the proxy
//! instead of the API. The Python tool checks how each answer was served:
//! MISS, then HIT, then, after expiry, REVALIDATED with a `304` upstream.
//!
//! `pip install requests && cargo run --release --example proxy`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use tierstack::{MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache};
use tierstack_http::{HttpCacheOptions, Proxy, Route};

async fn start_api(
    full: Arc<AtomicU64>,
    not_modified: Arc<AtomicU64>,
) -> Result<String, Box<dyn std::error::Error>> {
    let app = axum::Router::new().route(
        "/books/{id}",
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
                        not_modified.fetch_add(1, Ordering::Relaxed);
                        return (StatusCode::NOT_MODIFIED, caching).into_response();
                    }
                    full.fetch_add(1, Ordering::Relaxed);
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (full, not_modified) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let api = start_api(Arc::clone(&full), Arc::clone(&not_modified)).await?;
    let dir = tempfile::tempdir()?;
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000))?)
        .tier(SqliteTier::open(&SqliteConfig::new(dir.path().join("proxy.db")), 1).await?)
        .build();
    let proxy = Proxy::new(
        cache,
        vec![Route::new("/", &api)?],
        HttpCacheOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy_client.py");
    let status = tokio::process::Command::new("python3")
        .arg(&client)
        .arg(format!("http://{address}"))
        .status()
        .await?;
    let _ = stop.send(());
    serving.await??;
    println!(
        "the API sent {} full answers and {} 304s",
        full.load(Ordering::Relaxed),
        not_modified.load(Ordering::Relaxed)
    );
    if !status.success() {
        return Err(format!(
            "the Python client failed ({status}); is `requests` installed? pip install requests"
        )
        .into());
    }
    if full.load(Ordering::Relaxed) != 5 || not_modified.load(Ordering::Relaxed) != 5 {
        return Err("the proxy did not revalidate as expected".into());
    }
    Ok(())
}

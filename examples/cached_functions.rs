//! The RFC's integration points, each cached in one line with `CachedFn`:
//! `search_books(query, author)` against a (simulated) metadata API and
//! `extract_path_info(path)`, on the memory + SQLite stack.
//!
//! ```sh
//! cargo run --release --example cached_functions
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
    author: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PathInfo {
    genre: String,
    title: String,
}

#[derive(Debug)]
struct ApiError(String);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ApiError {}

/// Stands in for the metadata API: 30 ms per call, counted.
async fn search_books(
    query: String,
    author: Option<String>,
    calls: Arc<AtomicUsize>,
) -> Result<Vec<Book>, ApiError> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(vec![Book {
        asin: format!("B{:09}", query.len() * 7919),
        title: query.clone(),
        author: author.unwrap_or_else(|| "unknown".into()),
    }])
}

/// Parses `/audiobooks/{genre}/{title}`.
fn extract_path_info(path: &std::path::Path, calls: &AtomicUsize) -> Result<PathInfo, ApiError> {
    calls.fetch_add(1, Ordering::SeqCst);
    let parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [_, _, genre, title] => Ok(PathInfo {
            genre: genre.clone(),
            title: title.clone(),
        }),
        _ => Err(ApiError(format!("unexpected path {}", path.display()))),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("tierstack-cached-fn-{}", std::process::id()));
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(
            &MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)),
        )?)
        .tier(SqliteTier::open(&SqliteConfig::new(dir.join("metadata.db")), 1).await?)
        .build();
    let api_calls = Arc::new(AtomicUsize::new(0));
    let parse_calls = Arc::new(AtomicUsize::new(0));

    // @cached(ttl=3600) search_books(query, author=None)
    let calls = Arc::clone(&api_calls);
    let search = cache
        .cached_fn(
            |(q, author): &(String, Option<String>)| {
                Key::new(
                    "audnexus:search",
                    [("q", Some(q.as_str())), ("author", author.as_deref())],
                )
            },
            move |(q, author), _| search_books(q, author, Arc::clone(&calls)),
        )
        .ttl(Duration::from_secs(3600));

    // @cached(ttl=3600) extract_path_info(path)
    let calls = Arc::clone(&parse_calls);
    let path_info = cache
        .cached_fn(
            |path: &PathBuf| Key::new("pathinfo", [("path", path)]),
            move |path: PathBuf, _| {
                let result = extract_path_info(&path, &calls);
                async move { result }
            },
        )
        .ttl(Duration::from_secs(3600));

    for _ in 0..3 {
        let books = search.call(("dune".into(), Some("herbert".into()))).await?;
        assert_eq!(books[0].author, "herbert");
        let books = search.call(("dune".into(), None)).await?;
        assert_eq!(books[0].author, "unknown");
        let info = path_info
            .call(PathBuf::from("/audiobooks/fantasy/dune"))
            .await?;
        assert_eq!(
            *info,
            PathInfo {
                genre: "fantasy".into(),
                title: "dune".into()
            }
        );
    }
    println!(
        "key for search_books(\"dune\", \"herbert\"): {}",
        search.key(&("dune".into(), Some("herbert".into())))
    );
    println!(
        "key for extract_path_info(\"/audiobooks/fantasy/dune\"): {}",
        path_info.key(&PathBuf::from("/audiobooks/fantasy/dune"))
    );
    let (api, parses) = (
        api_calls.load(Ordering::SeqCst),
        parse_calls.load(Ordering::SeqCst),
    );
    println!("9 calls: {api} API calls, {parses} path parses (the rest from cache)");
    drop((search, path_info, cache));
    std::fs::remove_dir_all(&dir)?;
    if (api, parses) != (2, 1) {
        return Err(format!("expected 2 API calls and 1 parse, saw {api} and {parses}").into());
    }
    Ok(())
}

//! The RFC's integration points, each cached with one attribute:
//! `search_books(query, author=None)` against a (simulated) metadata API,
//! and the synchronous `extract_path_info(path)`, on the memory + SQLite
//! stack. The RFC's `@cached(ttl=3600)` becomes
//! `#[tierstack::cached(cache = …, source = …, ttl = "1h")]`; the key is
//! the source and the parameters by name, as `generate_cache_key` made it.
//!
//! (`CachedFn` is the same without a macro, for loaders kept in a struct
//! or built at run time: see the crate docs.)
//!
//! ```sh
//! cargo run --release --example cached_functions
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack::{
    GlobalCache, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, blocking,
};

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

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("unexpected path {0}")]
    BadPath(String),
    #[error(transparent)]
    Cache(#[from] tierstack::Error),
}

/// The async cache of the API calls, set at startup.
static API_CACHE: GlobalCache = GlobalCache::new();
/// The blocking cache of the synchronous parser, set at startup.
static PATH_CACHE: GlobalCache<blocking::TieredCache> = GlobalCache::new();

static API_CALLS: AtomicUsize = AtomicUsize::new(0);
static PARSES: AtomicUsize = AtomicUsize::new(0);

/// `@cached(ttl=3600)` on `search_books(query, author=None)`: stands in for
/// the metadata API, 30 ms per call, counted.
#[tierstack::cached(cache = API_CACHE, source = "audnexus:search", ttl = "1h")]
async fn search_books(q: &str, author: Option<&str>) -> Result<Vec<Book>, ApiError> {
    API_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(vec![Book {
        asin: format!("B{:09}", q.len() * 7919),
        title: q.to_owned(),
        author: author.unwrap_or("unknown").to_owned(),
    }])
}

/// `@cached(ttl=3600)` on the synchronous `extract_path_info(path)`:
/// parses `/audiobooks/{genre}/{title}`.
#[tierstack::cached(cache = PATH_CACHE, source = "pathinfo", ttl = "1h")]
fn extract_path_info(path: &Path) -> Result<PathInfo, ApiError> {
    PARSES.fetch_add(1, Ordering::SeqCst);
    let parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [_, _, genre, title] => Ok(PathInfo {
            genre: genre.clone(),
            title: title.clone(),
        }),
        _ => Err(ApiError::BadPath(path.display().to_string())),
    }
}

fn memory() -> tierstack::Result<MemoryTier> {
    MemoryTier::new(&MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("metadata.db");
    let api_cache = TieredCache::builder()
        .tier(memory()?)
        .tier(SqliteTier::open(&SqliteConfig::new(&db), 1).await?)
        .build();
    if API_CACHE.set(api_cache).is_err() {
        return Err("API_CACHE set twice".into());
    }
    // The blocking cache opens its own connection to the same file.
    let db_for_paths = db.clone();
    let path_cache = blocking::TieredCache::build(|| async move {
        TieredCache::builder()
            .tier(memory()?)
            .tier(SqliteTier::open(&SqliteConfig::new(db_for_paths), 1).await?)
            .try_build()
    })?;
    if PATH_CACHE.set(path_cache).is_err() {
        return Err("PATH_CACHE set twice".into());
    }

    for _ in 0..3 {
        let books = search_books("dune", Some("herbert")).await?;
        assert_eq!(books[0].author, "herbert");
        let books = search_books("dune", None).await?;
        assert_eq!(books[0].author, "unknown");
        // A plain function: called from async code here, it blocks this
        // task for the (cached) call, which is what a sync caller does.
        let info = extract_path_info(Path::new("/audiobooks/fantasy/dune"))?;
        assert_eq!(
            info,
            PathInfo {
                genre: "fantasy".into(),
                title: "dune".into()
            }
        );
    }
    // A failed parse is not cached: it is asked again, and fails again.
    for _ in 0..2 {
        assert!(extract_path_info(Path::new("/elsewhere")).is_err());
    }
    println!(
        "key of search_books(\"dune\", Some(\"herbert\")): {}",
        search_books_key("dune", Some("herbert"))
    );
    println!(
        "key of extract_path_info(\"/audiobooks/fantasy/dune\"): {}",
        extract_path_info_key(Path::new("/audiobooks/fantasy/dune"))
    );
    let (api, parses) = (
        API_CALLS.load(Ordering::SeqCst),
        PARSES.load(Ordering::SeqCst),
    );
    println!("11 calls: {api} API calls, {parses} path parses (the rest from cache)");
    if search_books_key("dune", Some("herbert")).as_str() != "audnexus:search:author=herbert&q=dune"
        || extract_path_info_key(Path::new("/audiobooks/fantasy/dune")).as_str()
            != "pathinfo:path=/audiobooks/fantasy/dune"
    {
        return Err("the keys are not the RFC's".into());
    }
    if (api, parses) != (2, 3) {
        return Err(format!("expected 2 API calls and 3 parses, saw {api} and {parses}").into());
    }
    Ok(())
}

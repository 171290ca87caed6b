//! A synchronous program — no `async`, no Tokio runtime of its own — caching
//! a synchronous function with `tierstack::blocking`: the RFC's
//! `extract_path_info(path)`, whose answers are expensive to work out
//! (here: a 20 ms stand-in) and never change for a path.
//!
//! 1. Ten paths, each asked for three times: ten calls of the function.
//! 2. A "restart": a new cache on the same config answers every path from
//!    the SQLite file, with no call.
//!
//! ```sh
//! cargo run --release --example sync_program
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack::{Config, Key, Ttl, blocking};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PathInfo {
    author: String,
    title: String,
}

/// The expensive synchronous function being cached.
fn extract_path_info(path: &str, calls: &AtomicUsize) -> Result<PathInfo, std::io::Error> {
    calls.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    let Some((author, title)) = path.trim_matches('/').split_once('/') else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{path}: not an author/title path"),
        ));
    };
    Ok(PathInfo {
        author: author.replace('_', " "),
        title: title.replace('_', " "),
    })
}

fn path_info(
    cache: &blocking::TieredCache,
    path: &str,
    calls: &AtomicUsize,
) -> tierstack::Result<Arc<PathInfo>> {
    let key = Key::new("pathinfo", [("path", path)]);
    cache.get_or_fetch(&key, Ttl::TierDefault, |_| extract_path_info(path, calls))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    // The RFC's config block, as a user's file would hold it.
    let yaml = format!(
        "cache:\n  enabled: true\n  file_ttl_days: 7\n  memory_ttl_seconds: 3600\n  max_memory_entries: 1000\n  location: {:?}\n",
        home.path().display().to_string()
    );
    let config = Config::parse(&yaml, "yaml")?;
    let paths: Vec<String> = (0..10).map(|i| format!("/Author_{i}/Book_{i}")).collect();
    let calls = AtomicUsize::new(0);

    let cache = blocking::TieredCache::from_config(&config)?;
    for _ in 0..3 {
        for path in &paths {
            let info = path_info(&cache, path, &calls)?;
            assert!(info.title.starts_with("Book"));
        }
    }
    let first_run = calls.load(Ordering::SeqCst);
    println!("first run: 30 lookups of 10 paths, {first_run} calls of extract_path_info");
    drop(cache);

    let cache = blocking::TieredCache::from_config(&config)?;
    for path in &paths {
        path_info(&cache, path, &calls)?;
    }
    let second_run = calls.load(Ordering::SeqCst) - first_run;
    let sqlite_hits = cache.stats().layer("sqlite").map_or(0, |l| l.hits);
    println!("after a restart: 10 lookups, {second_run} calls, {sqlite_hits} answered from SQLite");
    if first_run != 10 || second_run != 0 || sqlite_hits != 10 {
        return Err(format!(
            "expected 10 calls, then 0 calls and 10 SQLite hits; got {first_run}, {second_run}, {sqlite_hits}"
        )
        .into());
    }
    Ok(())
}

static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[derive(Debug)]
struct ApiError;

#[tierstack::cached(cache = CACHE, source = "books")]
async fn book(id: u32) -> Result<String, ApiError> {
    Ok(id.to_string())
}

fn main() {}

static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[tierstack::cached(cache = CACHE, source = "books")]
async fn book<T: ToString>(id: T) -> Option<String> {
    Some(id.to_string())
}

fn main() {}

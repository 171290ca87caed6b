static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[tierstack::cached(cache = CACHE, source = "books", ttl = 3600)]
async fn book(id: u32) -> Option<String> {
    Some(id.to_string())
}

fn main() {}

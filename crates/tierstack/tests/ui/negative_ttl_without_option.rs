static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[tierstack::cached(cache = CACHE, source = "books", negative_ttl = "1m")]
async fn book(id: u32) -> String {
    id.to_string()
}

fn main() {}

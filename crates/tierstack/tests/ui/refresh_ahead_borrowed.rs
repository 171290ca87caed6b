static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[tierstack::cached(cache = CACHE, source = "books", ttl = "1h", refresh_ahead = 0.8)]
async fn title(id: &str) -> Option<String> {
    Some(id.to_owned())
}

#[tierstack::cached(cache = CACHE, source = "books", refresh_ahead = 1.5)]
async fn late(id: String) -> Option<String> {
    Some(id)
}

fn main() {}

struct Api {
    cache: tierstack::TieredCache,
}

impl Api {
    #[tierstack::cached(cache = self.cache, source = "books", refresh_ahead = 0.8)]
    async fn by_id(&self, id: String) -> Option<String> {
        Some(id)
    }
}

static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

struct Client;

#[tierstack::cached(cache = CACHE, source = "books")]
async fn book(client: &Client, id: u32) -> Option<String> {
    let _ = client;
    Some(id.to_string())
}

fn main() {}

static CACHE: tierstack::GlobalCache = tierstack::GlobalCache::new();

#[tierstack::cached(cache = CACHE, source = "pairs")]
async fn sum((a, b): (u32, u32)) -> Option<u32> {
    Some(a + b)
}

fn main() {}
